#!/usr/bin/env python3
"""Produce the committed fixtures of the architecture tests from the tiny models of `make tiny`.

For each family of tools/make_tiny_models.py (llama3, mistral, qwen2, qwen3, ...) the reference is
transformers' own class for it (FAMILIES below: LlamaForCausalLM with Llama 3's rope scaling,
MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM) built by hand: the config filled from the
GGUF metadata (and, for the rope scaling, from the generator's table, whose factors the GGUF's
rope_freqs.weight must match), every weight dequantized from the GGUF by the gguf package (F32,
F16, BF16, Q8_0) to fp32, the q/k rows of the llama architecture un-permuted as transformers'
GGUF loader does. fp32, eager attention, CPU, no cache (greedy steps recompute the sequence).

Then a PEFT LoRA adapter per family (rank 4, lora_alpha 12, all seven linear modules, A and B
seeded random values rounded to the stored dtype) saved with save_pretrained, and the logits
with it applied.

No tokenizer: the prompt ids come from a greedy longest match of the text on the GGUF
vocabulary ("Ġ" or "▁" for spaces), with the family's BOS when it adds one.

Writes (under tests/golden/fixtures/):
  tiny.json              per family: the GGUF's sha256 and metadata, the transformers config, the
                         adapter's files, and per prompt: ids, top-20 [id, logit] at every
                         position (7 significant digits), the sampled last-position files, greedy
                         continuations (8 argmax tokens, top-2 gaps) -- each for the base and with
                         the adapter.
  tiny/<family>/adapter/ adapter_config.json, adapter_model.safetensors (a registry node)
  tiny/<family>/{base,lora}_<prompt>.f32
                         last-position logits of ids 0, 16, 32, ... (little-endian float32)

It first writes the models again with tools/make_tiny_models.py into a temporary directory and
checks that they are byte-identical to models/tiny (this venv's numpy against CI's).
Nothing here is run by CI; CI only reads the committed fixtures.
Run:  make tiny && .venv-ref/bin/python tests/reference/make_tiny_fixtures.py [FAMILY...]
      (~1 min on 2 cores)
"""

import os
import sys

# PEFT saves target_modules in set order: a fixed hash seed makes adapter_config.json stable.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny"
OUT = REPO / "tests" / "golden" / "fixtures"

spec = importlib.util.spec_from_file_location("make_tiny_models", REPO / "tools" / "make_tiny_models.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

TOPK = 20
GREEDY_STEPS = 8
STRIDE = 16  # the sampled last-position logits: ids 0, STRIDE, 2 * STRIDE, ...
MIN_GAP = 0.0025  # a greedy step's top-2 gap: above twice the C test's tolerance (1e-3), so that
# logits within it must pick the same token
B_STD = 0.03  # lora_B: the adapters move logits by a few units

PROMPTS = [
    ("capital", "The capital of France is"),
    ("story", "Once upon a time, there was a little girl who lived in a village near the forest. "
              "Every morning she walked down to the river to fetch water for her mother, and"),
]

LORA = dict(r=4, lora_alpha=12, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"])


# Per family: the transformers classes and the config fields beyond the common ones; a new
# family adds a row here and one in tools/make_tiny_models.py.
FAMILIES = {
    "llama3": dict(model=transformers.LlamaForCausalLM, config=transformers.LlamaConfig,
                   extra=lambda m, f: dict(
                       rope_parameters=dict(f["rope_scaling"], rope_theta=m("rope.freq_base")),
                       attention_bias=False, mlp_bias=False, hidden_act="silu"),
                   bos=128000, adapter_dtype=torch.float32, seed=101),
    "mistral": dict(model=transformers.MistralForCausalLM, config=transformers.MistralConfig,
                    extra=lambda m, f: dict(
                        rope_parameters={"rope_type": "default", "rope_theta": m("rope.freq_base")},
                        sliding_window=None, hidden_act="silu"),
                    bos=1, adapter_dtype=torch.bfloat16, seed=102),
    "qwen2": dict(model=transformers.Qwen2ForCausalLM, config=transformers.Qwen2Config,
                  extra=lambda m, f: dict(
                      rope_parameters={"rope_type": "default", "rope_theta": m("rope.freq_base")},
                      use_sliding_window=False, hidden_act="silu"),
                  bos=None, adapter_dtype=torch.float16, seed=103),
    "qwen3": dict(model=transformers.Qwen3ForCausalLM, config=transformers.Qwen3Config,
                  extra=lambda m, f: dict(
                      rope_parameters={"rope_type": "default", "rope_theta": m("rope.freq_base")},
                      use_sliding_window=False, attention_bias=False, hidden_act="silu"),
                  bos=None, adapter_dtype=torch.float32, seed=104),
}


def sig7(x):
    return float(f"{float(x):.7g}")


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reverse_permute(w, n_head, n_head_kv):
    """transformers' GGUF loader (reverse_permute_weights): the inverse of llama.cpp's permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def encode(text, piece_to_id, max_len, space, bos):
    """Greedy longest match of the text on the vocabulary, space -> the vocabulary's marker."""
    s = text.replace(" ", space)
    if space == "\u2581":
        s = space + s  # SentencePiece's dummy prefix
    ids, i = ([bos] if bos is not None else []), 0
    while i < len(s):
        for j in range(min(len(s), i + max_len), i, -1):
            if s[i:j] in piece_to_id:
                ids.append(piece_to_id[s[i:j]])
                i = j
                break
        else:
            raise SystemExit(f"no piece for {s[i]!r}")
    return ids


def build(name, f, fam, path):
    """transformers model of the family from the GGUF (fp32, eager), and what was read."""
    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    assert arch == f["arch"], (arch, f["arch"])

    def m(k):
        fld = r.fields.get(f"{arch}.{k}")
        return None if fld is None else fld.contents()

    tensors = {t.name: t for t in r.tensors}
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    n_vocab = int(tensors["token_embd.weight"].shape[1])
    assert len(tokens) == n_vocab
    n_head, n_head_kv = m("attention.head_count"), m("attention.head_count_kv")
    hd = m("attention.key_length") or m("embedding_length") // n_head
    cfg = fam["config"](
        vocab_size=n_vocab,
        hidden_size=m("embedding_length"),
        intermediate_size=m("feed_forward_length"),
        num_hidden_layers=m("block_count"),
        num_attention_heads=n_head,
        num_key_value_heads=n_head_kv,
        head_dim=hd,
        max_position_embeddings=m("context_length"),
        rms_norm_eps=float(np.float32(m("attention.layer_norm_rms_epsilon"))),
        tie_word_embeddings="output.weight" not in tensors,
        **fam["extra"](m, f))
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = fam["model"](cfg).to(torch.float32).eval()

    def deq(tname):
        t = tensors[tname]
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        return np.ascontiguousarray(a.reshape(shape))

    names = {v: k for k, v in gen.TOP_NAMES.items()}
    sd, types = {}, {}
    for tname, t in tensors.items():
        if tname == "rope_freqs.weight":
            continue
        if tname in names:
            hf = names[tname]
        else:
            _, layer, rest = tname.split(".", 2)
            hf = f"model.layers.{layer}." + {v: k for k, v in gen.LAYER_NAMES.items()}[rest]
        a = deq(tname)
        if f["permute_qk"] and tname.endswith("attn_q.weight"):
            a = reverse_permute(a, n_head, n_head)
        elif f["permute_qk"] and tname.endswith("attn_k.weight"):
            a = reverse_permute(a, n_head, n_head_kv)
        sd[hf] = torch.from_numpy(a)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    want = model.state_dict()
    for k, v in sd.items():
        assert k in want and want[k].shape == v.shape, (k, v.shape)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or cfg.tie_word_embeddings), missing
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # the weights the generator drew, through the GGUF and back: the un-permutation is right
    hf = gen.hf_weights(f, n_vocab)
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        d = float(np.abs(sd[k].numpy() - hf[k]).max())
        assert d < 0.05, (k, d)  # the stored type's rounding only
    rope_check = None
    if "rope_freqs.weight" in tensors:
        factors = deq("rope_freqs.weight")
        inv = model.model.rotary_emb.inv_freq.double()
        base = 1.0 / (m("rope.freq_base") ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        rel = ((base / torch.from_numpy(factors).double()) / inv - 1).abs().max().item()
        assert rel < 1e-5, f"rope_freqs.weight disagrees with transformers' llama3 inv_freq ({rel})"
        rope_check = {"factors": [sig7(x) for x in factors], "max_rel_diff_vs_transformers": rel}
    return model, cfg, tokens, types, rope_check


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def run_prompt(model, ids, stem, tokens, fdir):
    lg = logits_of(model, ids)
    n = len(ids)
    top = []
    for p in range(n):
        v, i = torch.topk(lg[p], TOPK)
        top.append([[int(a), sig7(b)] for a, b in zip(i.tolist(), v.tolist())])
    last = lg[n - 1].numpy().astype("<f4")[::STRIDE].copy()
    (fdir / f"{stem}.f32").write_bytes(last.tobytes())
    seq, gen_ids, gaps = list(ids), [], []
    row = lg[n - 1]
    for _ in range(GREEDY_STEPS):
        v, i = torch.topk(row, 2)
        gen_ids.append(int(i[0]))
        gaps.append(sig7(v[0] - v[1]))
        seq.append(int(i[0]))
        row = logits_of(model, seq)[-1]
    assert min(gaps) >= MIN_GAP, f"{stem}: a greedy top-2 gap of {min(gaps)}: pick another seed"
    return lg, {
        "top20": top,
        "last_logits_file": f"tiny/{fdir.name}/{stem}.f32",
        "last_logits_sha256": hashlib.sha256(last.tobytes()).hexdigest(),
        "greedy": {"ids": gen_ids, "top2_gap": gaps, "pieces": [tokens[t] for t in gen_ids]},
    }


def make_adapter(model, name, fam, adir):
    """A PEFT LoRA on every linear module, A ~ N(0, 1/in), B ~ N(0, B_STD^2) from a seeded
    generator, rounded to the stored dtype; saved, then loaded back with from_pretrained."""
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none",
                     init_lora_weights=False, **LORA)
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(fam["seed"])
    with torch.no_grad():
        for pname, p in sorted(pm.named_parameters()):
            if ".lora_A." in pname:
                v = torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[1])
            elif ".lora_B." in pname:
                v = torch.randn(p.shape, generator=g, dtype=torch.float64) * B_STD
            else:
                continue
            p.copy_(v.to(fam["adapter_dtype"]).to(torch.float32))
        for mod in pm.modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                mod.lora_A["default"].to(fam["adapter_dtype"])
                mod.lora_B["default"].to(fam["adapter_dtype"])
    pm.peft_config["default"].base_model_name_or_path = f"adaptree/tiny-{name}"
    if adir.exists():
        shutil.rmtree(adir)
    adir.mkdir(parents=True)
    pm.save_pretrained(str(adir))
    for extra in adir.iterdir():
        if extra.name not in ("adapter_config.json", "adapter_model.safetensors"):
            extra.unlink()  # the model card README.md
    base = pm.unload()
    loaded = PeftModel.from_pretrained(base, str(adir)).eval()
    files = {fn: {"bytes": (adir / fn).stat().st_size, "sha256": sha256_file(adir / fn)}
             for fn in ("adapter_config.json", "adapter_model.safetensors")}
    return loaded, files


def check_regenerated(families):
    """The generator run again here (this venv's numpy) writes the same bytes."""
    with tempfile.TemporaryDirectory() as d:
        for name in families:
            h = gen.write_family(name, gen.FAMILIES[name], Path(d))
            have = sha256_file(TINY / f"{name}.gguf")
            assert h == have, f"{name}: models/tiny differs from a fresh generation ({have} vs {h})"


def main():
    t0 = time.time()
    torch.set_num_threads(int(os.environ.get("REF_THREADS", "2")))
    torch.use_deterministic_algorithms(True)
    families = sys.argv[1:] or list(FAMILIES)
    for name in families:
        if not (TINY / f"{name}.gguf").exists():
            raise SystemExit(f"models/tiny/{name}.gguf is missing (run make tiny)")
    check_regenerated(families)
    fx_path = OUT / "tiny.json"
    fixture = json.loads(fx_path.read_text()) if fx_path.exists() else {}
    fixture.update({
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "gguf": getattr(gguf, "__version__", "?"), "numpy": np.__version__},
        "stride": STRIDE, "topk": TOPK, "greedy_steps": GREEDY_STEPS,
        "lora": dict(LORA, init="A ~ N(0, 1/in_features), B ~ N(0, 0.03^2), float64 "
                     "torch.Generator(seed) over the sorted parameter names, cast to the stored "
                     "dtype"),
    })
    fams = fixture.setdefault("families", {})
    for name in families:
        f, fam = gen.FAMILIES[name], FAMILIES[name]
        path = TINY / f"{name}.gguf"
        model, cfg, tokens, types, rope_check = build(name, f, fam, path)
        space = "\u2581" if "\u2581" in "".join(tokens[:2000]) else "\u0120"
        piece_to_id = {}
        for i, p in enumerate(tokens):
            piece_to_id.setdefault(p, i)
        max_len = max(len(p) for p in tokens if p)
        fdir = OUT / "tiny" / name
        fdir.mkdir(parents=True, exist_ok=True)
        rec = {
            "arch": f["arch"], "model": f"models/tiny/{name}.gguf", "model_sha256": sha256_file(path),
            "hf_class": fam["model"].__name__, "weight_types": types,
            "config": {k: getattr(cfg, k, None) for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "rope_parameters", "tie_word_embeddings", "max_position_embeddings")},
            "prompts": [],
        }
        if rope_check:
            rec["rope_freqs"] = rope_check
        base_last = {}
        for pname, text in PROMPTS:
            ids = encode(text, piece_to_id, max_len, space, fam["bos"])
            lg, r = run_prompt(model, ids, f"base_{pname}", tokens, fdir)
            base_last[pname] = lg
            rec["prompts"].append({"name": pname, "text": text, "ids": ids, "base": r})
        if rope_check:  # how much the scaling matters at these positions
            plain = transformers.LlamaConfig(**{**cfg.to_dict(), "rope_parameters": {
                "rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}})
            plain._attn_implementation = "eager"
            pm = transformers.LlamaForCausalLM(plain).eval()
            pm.load_state_dict(model.state_dict())
            ids = rec["prompts"][-1]["ids"]
            rope_check["unscaled_max_abs_logit_change"] = sig7(
                (logits_of(pm, ids) - base_last[PROMPTS[-1][0]]).abs().max())
        lora_model, files = make_adapter(model, name, fam, fdir / "adapter")
        rec["adapter"] = {"id": "adapter", "dir": f"tiny/{name}/adapter",
                          "dtype": str(fam["adapter_dtype"]).replace("torch.", ""),
                          "seed": fam["seed"], "files": files}
        for p in rec["prompts"]:
            lg, r = run_prompt(lora_model, p["ids"], f"lora_{p['name']}", tokens, fdir)
            r["max_abs_delta_vs_base"] = sig7((lg - base_last[p["name"]]).abs().max())
            assert r["max_abs_delta_vs_base"] > 0.1, r["max_abs_delta_vs_base"]
            p["lora"] = r
        fams[name] = rec
        size = sum(x.stat().st_size for x in fdir.rglob("*") if x.is_file())
        gaps = [min(p[k]["greedy"]["top2_gap"]) for p in rec["prompts"] for k in ("base", "lora")]
        print(f"{name}: {fam['model'].__name__}, {types}, {len(rec['prompts'])} prompts, "
              f"min greedy gap {min(gaps):.3g}, adapter moves logits by up to "
              f"{max(p['lora']['max_abs_delta_vs_base'] for p in rec['prompts']):.3g}, "
              f"{size >> 10} KiB of files" + (f", rope scaling moves logits by "
                                              f"{rope_check['unscaled_max_abs_logit_change']}"
                                              if rope_check else ""), flush=True)
    fixture["families"] = {k: fams[k] for k in sorted(fams)}
    fx_path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"done in {time.time() - t0:.0f} s: torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
