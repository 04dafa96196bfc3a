#!/usr/bin/env python3
"""Produce the committed Gemma 3 golden fixtures from models/gemma-3-270m-q4_k_m.gguf (`make gemma`).

The reference is transformers' Gemma3ForCausalLM built by hand: a text-only Gemma3TextConfig
filled from the GGUF metadata (and transformers' / llama.cpp's defaults for what the GGUF does not
carry), every weight dequantized from the GGUF by the gguf package (Q4_K, Q5_0, Q6_K, Q8_0) to
fp32, the norm weights minus 1 (llama.cpp's converter stored 1 + w; transformers computes
x * (1 + w)), q/k rows as stored (Gemma 3 is not permuted). fp32, eager attention, CPU.

No tokenizer is involved: the prompts are fixed token ids (picked from the GGUF vocabulary by a
greedy longest match on the text; not necessarily what Gemma's SentencePiece would produce, which
does not matter for a forward pass), each starting with BOS (2).

Writes (under tests/golden/fixtures/):
  gemma_logits.json        config, per prompt: ids, `checked` positions with the top-20 [id, logit]
                           at each (logits rounded to 7 significant digits), the sha256 and name of
                           the sampled last-position file, greedy continuations (16 argmax tokens,
                           each from a full forward pass over prompt + tokens so far, not a cache)
                           with their top-2 gaps.
  gemma_last_<name>.f32    last-position logits of ids 0, 16, 32, ... (262144 / 16 = 16384
                           little-endian float32, no header): a sample of the whole vocabulary.

Nothing here is run by CI; CI only reads the committed fixtures.
Run:  .venv-ref/bin/python tests/reference/make_gemma_fixtures.py        (~3 min on 2 cores)
"""

import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402
import transformers  # noqa: E402
from transformers import Gemma3ForCausalLM, Gemma3TextConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL_PATH = REPO / "models" / "gemma-3-270m-q4_k_m.gguf"
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
OUT = REPO / "tests" / "golden" / "fixtures"

BOS = 2
TOPK = 20
GREEDY_STEPS = 16
STRIDE = 16  # the sampled last-position logits: ids 0, STRIDE, 2 * STRIDE, ...

LONG_TEXT = (
    "The river starts in the mountains, where snow melts in the spring and runs down the rocks "
    "into small streams. The streams meet in the valley and become a river that flows past "
    "farms, villages and old stone bridges. Fishermen wait on the banks in the morning, and "
    "children swim in the warm shallow water in the summer. "
)

PROMPTS = [
    # (name, text, positions checked: "all" or "tail")
    ("capital", "The capital of France is", "all"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return", "all"),
    ("story", "Once upon a time, there was a little girl who lived in a village near the", "all"),
    # longer than the 512-position sliding window: the local layers must forget the start
    ("long", LONG_TEXT * 9 + "In the evening the river", "tail"),
]


def sig7(x):
    """float rounded to 7 significant digits (shortest repr afterwards)."""
    return float(f"{float(x):.7g}")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.parts[f.data[0]]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(v).decode("utf-8")
    return v.item() if hasattr(v, "item") and v.size == 1 else v


def encode(text, piece_to_id, max_len):
    """Greedy longest match of the text ('▁' for spaces) on the vocabulary."""
    s = text.replace(" ", "\u2581")
    ids, i = [BOS], 0
    while i < len(s):
        for j in range(min(len(s), i + max_len), i, -1):
            if s[i:j] in piece_to_id:
                ids.append(piece_to_id[s[i:j]])
                i = j
                break
        else:
            raise SystemExit(f"no piece for {s[i]!r}")
    return ids


class Reference:
    """The hand-built fp32 Gemma3ForCausalLM and what was read to build it (load_reference)."""


def load_reference():
    """Builds the reference model from MODEL_PATH. Returns a Reference with: model (fp32, eval),
    cfg, tokens (the GGUF vocabulary), tensor_types, norm_stats, encode(text) -> ids (BOS first).
    Also used by make_gemma_adapter_fixtures.py and tools/train_registry.py --model gemma."""
    assert sha256_file(MODEL_PATH) == MODEL_SHA256, "wrong model file (run make gemma)"
    r = gguf.GGUFReader(str(MODEL_PATH))
    arch = field(r, "general.architecture")
    assert arch == "gemma3", arch

    def meta(k):
        return field(r, f"gemma3.{k}")

    for k in ("attn_logit_softcapping", "final_logit_softcapping", "rope.scaling.type",
              "rope.freq_base_swa", "attention.sliding_window_pattern"):
        assert meta(k) is None, f"gemma3.{k} present: the config below would need it"
    tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", "replace")
              for i in r.fields["tokenizer.ggml.tokens"].data]
    tensors = {t.name: t for t in r.tensors}
    n_vocab = int(tensors["token_embd.weight"].shape[1])
    assert len(tokens) == n_vocab and "output.weight" not in tensors
    cfg = Gemma3TextConfig(
        vocab_size=n_vocab,
        hidden_size=meta("embedding_length"),
        intermediate_size=meta("feed_forward_length"),
        num_hidden_layers=meta("block_count"),
        num_attention_heads=meta("attention.head_count"),
        num_key_value_heads=meta("attention.head_count_kv"),
        head_dim=meta("attention.key_length"),
        max_position_embeddings=meta("context_length"),
        rms_norm_eps=float(np.float32(meta("attention.layer_norm_rms_epsilon"))),
        sliding_window=meta("attention.sliding_window"),
        query_pre_attn_scalar=meta("attention.key_length"),  # llama.cpp's rule for all but 27B
        rope_parameters={
            "full_attention": {"rope_type": "default",
                               "rope_theta": float(meta("rope.freq_base"))},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        bos_token_id=BOS,
        eos_token_id=1,
        pad_token_id=0,
    )
    assert meta("attention.value_length") == cfg.head_dim
    cfg._attn_implementation = "eager"
    model = Gemma3ForCausalLM(cfg).to(torch.float32).eval()

    def deq(name):
        t = tensors[name]
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape.tolist())]  # GGUF ne: input features first
        return torch.from_numpy(np.ascontiguousarray(a.reshape(shape)))

    norm_stats = {}

    def norm(name):
        w = deq(name)
        norm_stats[name] = [float(w.min()), float(w.max())]
        return w - 1.0

    sd = {"model.embed_tokens.weight": deq("token_embd.weight"),
          "model.norm.weight": norm("output_norm.weight")}
    mods = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    norms = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
             "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    types = {}
    for layer in range(cfg.num_hidden_layers):
        for g, h in mods.items():
            name = f"blk.{layer}.{g}.weight"
            sd[f"model.layers.{layer}.{h}.weight"] = deq(name)
            types[tensors[name].tensor_type.name] = types.get(tensors[name].tensor_type.name, 0) + 1
        for g, h in norms.items():
            sd[f"model.layers.{layer}.{h}.weight"] = norm(f"blk.{layer}.{g}.weight")
    want = model.state_dict()
    for k, v in sd.items():
        assert want[k].shape == v.shape, (k, want[k].shape, v.shape)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # llama.cpp's converter stored 1 + w: 1 + (stored - 1) must give the stored value back, so
    # both sides multiply by the same numbers
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.attn_q_norm.weight"):
        s = deq(name)
        assert torch.equal(1.0 + (s - 1.0), s), name

    piece_to_id = {}
    for i, p in enumerate(tokens):
        piece_to_id.setdefault(p, i)
    max_len = max(len(p) for p in tokens[:n_vocab] if p)
    ref = Reference()
    ref.model, ref.cfg, ref.tokens, ref.tensor_types = model, cfg, tokens, types
    ref.norm_stats = norm_stats
    ref.encode = lambda text: encode(text, piece_to_id, max_len)
    return ref


def main():
    t0 = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("REF_THREADS", "2")))
    ref = load_reference()
    model, cfg, tokens, types, norm_stats = (ref.model, ref.cfg, ref.tokens, ref.tensor_types,
                                             ref.norm_stats)

    def logits_of(ids):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), use_cache=False)
        return out.logits[0]

    fixture = {
        "model": MODEL_PATH.name, "model_sha256": MODEL_SHA256,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "gguf": getattr(gguf, "__version__", "?"),
                     "numpy": np.__version__},
        "config": {k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
            "sliding_window", "query_pre_attn_scalar", "layer_types", "rope_parameters",
            "hidden_activation")},
        "weight_types": types,
        "stored_norm_ranges": {k: norm_stats[k] for k in list(norm_stats)[:7]},
        "stride": STRIDE,
        "prompts": [],
    }
    for name, text, which in PROMPTS:
        ids = ref.encode(text)
        lg = logits_of(ids)
        n = len(ids)
        checked = list(range(n)) if which == "all" else [cfg.sliding_window - 2, cfg.sliding_window - 1, cfg.sliding_window, cfg.sliding_window + 1] + list(range(n - 4, n))
        checked = sorted(set(p for p in checked if 0 <= p < n))
        top = []
        for p in checked:
            v, i = torch.topk(lg[p], TOPK)
            top.append([[int(a), sig7(b)] for a, b in zip(i.tolist(), v.tolist())])
        last = lg[n - 1].numpy().astype("<f4")[::STRIDE].copy()
        fname = f"gemma_last_{name}.f32"
        (OUT / fname).write_bytes(last.tobytes())
        # greedy: a full pass over prompt + tokens so far at every step
        seq, gen, gaps = list(ids), [], []
        row = lg[n - 1]
        for _ in range(GREEDY_STEPS):
            v, i = torch.topk(row, 2)
            gen.append(int(i[0]))
            gaps.append(sig7(v[0] - v[1]))
            seq.append(int(i[0]))
            row = logits_of(seq)[-1]
        text_out = "".join(tokens[t] for t in gen).replace("\u2581", " ")
        fixture["prompts"].append({
            "name": name, "text": text, "ids": ids, "checked": checked, "top20": top,
            "last_logits_file": fname,
            "last_logits_sha256": hashlib.sha256(last.tobytes()).hexdigest(),
            "last_stats": {"max": sig7(lg[n - 1].max()), "min": sig7(lg[n - 1].min()),
                           "mean": sig7(lg[n - 1].mean())},
            "greedy": {"ids": gen, "top2_gap": gaps, "text": text_out},
        })
        print(f"{name}: {n} tokens, greedy -> {text_out!r}, min gap {min(gaps):.4g}",
              flush=True)
    (OUT / "gemma_logits.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"done in {time.time() - t0:.0f} s: torch {torch.__version__}, transformers "
          f"{transformers.__version__}, weights {types}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
