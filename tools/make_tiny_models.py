#!/usr/bin/env python3
"""Writes the tiny random-weight models of the architecture tests into models/tiny/<family>.gguf.

Each family is a row of FAMILIES: an architecture at a tiny size (2-3 layers, n_embd 64-128)
with the real vocabulary of a model of that family and every tokenizer.* key copied from the
matching llama.cpp test vocabulary (models/vocab, `make vocab`), and weights laid out as
llama.cpp's convert_hf_to_gguf.py would write them: for the llama architecture the q and k rows
permuted (LlamaModel.permute), for Llama 3 the rope_freqs tensor of its rope scaling
(LlamaModel.generate_extra_tensors), for qwen2 the q/k/v biases, for qwen3 the per-head q/k
norms. The weights are drawn from numpy's PCG64 with the row's seed, in Hugging Face's layout,
so the same script gives byte-identical files; tests/golden/fixtures/tiny.json records the sha256
of each file and the C test (tests/golden/test_tiny_models.c) refuses a file that differs.

The reference logits come from tests/reference/make_tiny_fixtures.py, which reads these files
back with the gguf package and builds the transformers model from them.

Needs numpy and gguf (tools/requirements-test.txt, the CI venv); no torch.
Run:  .venv/bin/python tools/make_tiny_models.py [--out models/tiny] [FAMILY...]   (`make tiny`)
"""

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path

import numpy as np

import gguf

REPO = Path(__file__).resolve().parents[1]
VOCAB_DIR = REPO / "models" / "vocab"

# One row per family. Keys:
#   arch        general.architecture
#   vocab       models/vocab/<file>: the tokenizer (every tokenizer.* key) and the vocabulary size
#   hf          the transformers class of the reference (tests/reference/make_tiny_fixtures.py)
#   n_layer, n_embd, n_head, n_head_kv, n_ff, head_dim (None: n_embd / n_head)
#   rope_theta, rms_eps, n_ctx
#   tied        no output.weight: the head is token_embd (as Llama 3.2 1B, Qwen2.5 0.5B)
#   permute_qk  llama.cpp's llama converter permutes the q and k rows
#   qkv_bias    q, k and v have biases (Qwen2)
#   qk_norm     per-head RMSNorm of q and k before RoPE (Qwen3)
#   rope_scaling  Hugging Face's rope_scaling; "llama3" becomes rope_freqs.weight
#   wtype       the type of the layers' matrices (and of output.weight); embd_type: token_embd's
#   seed        numpy.random.default_rng(seed)
FAMILIES = {
    "llama3": dict(
        arch="llama", vocab="ggml-vocab-llama-bpe.gguf", hf="LlamaForCausalLM",
        n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, head_dim=None,
        rope_theta=500000.0, rms_eps=1e-5, n_ctx=2048, tied=True, permute_qk=True,
        qkv_bias=False, qk_norm=False,
        # Llama 3.2's factors, around a tiny original context (64, not 8192) so that the prompts'
        # positions turn the three kinds of frequencies (kept, smoothed, divided by 32) by
        # angles that matter
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        wtype="F16", embd_type="F16", seed=1),
    "mistral": dict(
        arch="llama", vocab="ggml-vocab-llama-spm.gguf", hf="MistralForCausalLM",
        n_layer=3, n_embd=128, n_head=8, n_head_kv=2, n_ff=256, head_dim=None,
        rope_theta=1000000.0, rms_eps=1e-5, n_ctx=32768, tied=False, permute_qk=True,
        qkv_bias=False, qk_norm=False, rope_scaling=None,
        wtype="Q8_0", embd_type="F16", seed=2),
    "qwen2": dict(
        arch="qwen2", vocab="ggml-vocab-qwen2.gguf", hf="Qwen2ForCausalLM",
        n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=160, head_dim=None,
        rope_theta=1000000.0, rms_eps=1e-6, n_ctx=32768, tied=True, permute_qk=False,
        qkv_bias=True, qk_norm=False, rope_scaling=None,
        wtype="F32", embd_type="F16", seed=5),
    "qwen3": dict(
        arch="qwen3", vocab="ggml-vocab-qwen35.gguf", hf="Qwen3ForCausalLM",
        n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, head_dim=32,
        rope_theta=1000000.0, rms_eps=1e-6, n_ctx=40960, tied=False, permute_qk=False,
        qkv_bias=False, qk_norm=True, rope_scaling=None,
        wtype="BF16", embd_type="F16", seed=4),
}

# Standard deviations of the random weights: matrices N(0, 1/sqrt(fan_in)) keep the residual
# stream O(1); embeddings of 0.25 give logits of spread ~2 through a tied head (n_embd 64).
EMBD_STD = 0.25
NORM_STD = 0.1  # norm weights 1 + N(0, NORM_STD)
BIAS_STD = 0.2


def head_dim(f):
    return f["head_dim"] or f["n_embd"] // f["n_head"]


def llama3_rope_factors(f):
    """rope_freqs.weight as LlamaModel.generate_extra_tensors computes it (in float32, as its
    torch tensors are): 1 for short wavelengths, factor for long ones, smoothed between."""
    rs, dim = f["rope_scaling"], head_dim(f)
    freqs = np.float32(1.0) / (np.float32(f["rope_theta"]) **
                               (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = np.float32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(np.float32(1))
        elif wavelen > low_wavelen:
            out.append(np.float32(factor))
        else:
            smooth = (np.float32(old) / wavelen - np.float32(low)) / np.float32(high - low)
            out.append(np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def permute(w, n_head, n_head_kv):
    """llama.cpp's LlamaModel.permute: q/k rows from Hugging Face's rotate_half order to
    adjacent pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_weights(f, n_vocab):
    """The weights in Hugging Face's names and layout, (out, in), float32, drawn in a fixed
    order."""
    rng = np.random.default_rng(f["seed"])
    e, hd, ff = f["n_embd"], head_dim(f), f["n_ff"]
    q_dim, kv_dim = f["n_head"] * hd, f["n_head_kv"] * hd

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) *
                np.float32(1 / math.sqrt(cols)))

    def norm(n):
        return np.float32(1) + rng.standard_normal(n, dtype=np.float32) * np.float32(NORM_STD)

    def bias(n):
        return rng.standard_normal(n, dtype=np.float32) * np.float32(BIAS_STD)

    w = {"model.embed_tokens.weight":
         rng.standard_normal((n_vocab, e), dtype=np.float32) * np.float32(EMBD_STD)}
    for layer in range(f["n_layer"]):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = norm(e)
        w[p + "self_attn.q_proj.weight"] = mat(q_dim, e)
        w[p + "self_attn.k_proj.weight"] = mat(kv_dim, e)
        w[p + "self_attn.v_proj.weight"] = mat(kv_dim, e)
        if f["qkv_bias"]:
            w[p + "self_attn.q_proj.bias"] = bias(q_dim)
            w[p + "self_attn.k_proj.bias"] = bias(kv_dim)
            w[p + "self_attn.v_proj.bias"] = bias(kv_dim)
        if f["qk_norm"]:
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "self_attn.o_proj.weight"] = mat(e, q_dim)
        w[p + "post_attention_layernorm.weight"] = norm(e)
        w[p + "mlp.gate_proj.weight"] = mat(ff, e)
        w[p + "mlp.up_proj.weight"] = mat(ff, e)
        w[p + "mlp.down_proj.weight"] = mat(e, ff)
    w["model.norm.weight"] = norm(e)
    if not f["tied"]:
        w["lm_head.weight"] = (rng.standard_normal((n_vocab, e), dtype=np.float32) *
                               np.float32(EMBD_STD))
    return w


# Hugging Face name (after "model.layers.N.") -> GGUF name (after "blk.N."), llama.cpp's mapping.
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf_name(hf):
    if hf in TOP_NAMES:
        return TOP_NAMES[hf]
    parts = hf.split(".", 3)  # model, layers, N, rest
    return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"


def add_tensor(writer, name, a, type_name):
    """a (float32) stored as type_name: F32, F16, BF16 or Q8_0 (gguf.quants)."""
    qt = gguf.GGMLQuantizationType[type_name]
    if qt == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    elif qt == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, a.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)


def copy_tokenizer(writer, vocab_path):
    """Every tokenizer.* key of the vocabulary file, with its own value types. Returns the
    number of tokens."""
    r = gguf.GGUFReader(str(vocab_path))
    n_vocab = None
    for key, field in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        if key == "tokenizer.ggml.tokens":
            n_vocab = len(field.data)
    if not n_vocab:
        raise SystemExit(f"{vocab_path}: no tokenizer.ggml.tokens")
    return n_vocab


def write_family(name, f, out_dir):
    vocab_path = VOCAB_DIR / f["vocab"]
    if not vocab_path.exists():
        raise SystemExit(f"{vocab_path} is missing (run make vocab)")
    path = out_dir / f"{name}.gguf"
    tmp = path.with_suffix(f".gguf.{os.getpid()}.tmp")  # runs in parallel do not collide
    a = f["arch"]
    w = gguf.GGUFWriter(str(tmp), a)
    w.add_name(f"adaptree tiny {name}")
    w.add_uint32(f"{a}.block_count", f["n_layer"])
    w.add_uint32(f"{a}.context_length", f["n_ctx"])
    w.add_uint32(f"{a}.embedding_length", f["n_embd"])
    w.add_uint32(f"{a}.feed_forward_length", f["n_ff"])
    w.add_uint32(f"{a}.attention.head_count", f["n_head"])
    w.add_uint32(f"{a}.attention.head_count_kv", f["n_head_kv"])
    w.add_float32(f"{a}.rope.freq_base", f["rope_theta"])
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", f["rms_eps"])
    if f["head_dim"]:
        w.add_uint32(f"{a}.attention.key_length", f["head_dim"])
        w.add_uint32(f"{a}.attention.value_length", f["head_dim"])
    if a == "llama":
        w.add_uint32(f"{a}.rope.dimension_count", head_dim(f))
    n_vocab = copy_tokenizer(w, vocab_path)
    if a == "llama":
        w.add_uint32(f"{a}.vocab_size", n_vocab)
    w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)

    weights = hf_weights(f, n_vocab)
    rs = f["rope_scaling"]
    if rs and rs["rope_type"] == "llama3":
        add_tensor(w, "rope_freqs.weight", llama3_rope_factors(f), "F32")
    elif rs:
        raise SystemExit(f"{name}: rope_scaling {rs['rope_type']} has no GGUF form here")
    for hf, a32 in weights.items():
        g = gguf_name(hf)
        if f["permute_qk"] and g.endswith("attn_q.weight"):
            a32 = permute(a32, f["n_head"], f["n_head"])
        elif f["permute_qk"] and g.endswith("attn_k.weight"):
            a32 = permute(a32, f["n_head"], f["n_head_kv"])
        if a32.ndim == 1:
            t = "F32"  # norms and biases, as llama.cpp keeps them
        elif g == "token_embd.weight":
            t = f["embd_type"]
        else:
            t = f["wtype"]
        add_tensor(w, g, a32, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    h = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {n_vocab} tokens, "
          f"{path.stat().st_size >> 10} KiB, sha256 {h}")
    return h


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "models" / "tiny"))
    ap.add_argument("families", nargs="*", help=f"default: all of {', '.join(FAMILIES)}")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.families or FAMILIES:
        if name not in FAMILIES:
            raise SystemExit(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
        write_family(name, FAMILIES[name], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
