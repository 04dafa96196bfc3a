#!/usr/bin/env python3
"""Produce the committed LoRA-adapter golden fixtures for adaptree.

Real Hugging Face PEFT adapters (written by PeftModel.save_pretrained) on top of the local SmolLM2 GGUF
(loaded by transformers in fp32, eager attention, exactly as make_core_fixtures.py does), and reference
logits computed by PEFT from the files as saved (bf16/f16 values upcast to fp32 in an fp32 model).

Writes (all under tests/golden/fixtures/):
  adapters/<name>/adapter_config.json, adapter_model.safetensors   7 PEFT adapters (incl. the tree chain
                                                                 adapters/tree/fr, tree/fr/legal, tree/fr/legal/alice)
  adapters/qv_r4.gguf                 adapters/qv_r4 converted by llama.cpp's own convert_lora_to_gguf.py (f16)
  adapters.json                       cases: single adapters, the tree chain, a weighted list, a mixed batch, base
  adapters_logits_<case>.f32          full last-position logits (49152 little-endian float32) for 3 cases
  ADAPTERS_NOTES.md                   how it was made, what was checked, PEFT pitfalls found

Nothing here is run by CI; CI only reads the committed fixtures.
Run:  .venv-ref/bin/python tests/reference/make_adapter_fixtures.py [--llama-cpp-dir DIR] [--no-gguf] [--no-llama-cpp-run]
  --llama-cpp-dir: the vendor/llama.cpp directory of the llama-cpp-python==0.3.36 sdist. If omitted, the sdist
  is fetched with `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` into a temp dir.
"""

import os
import sys

# set iteration order of str sets (PEFT stores target_modules as a set and saves it as a list) depends on
# the hash seed: pin it so adapter_config.json is byte-for-byte reproducible.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_core_fixtures as core  # noqa: E402  (sets HF offline env vars, shared helpers)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

REPO = core.REPO
OUT = core.OUT
ADIR = OUT / "adapters"
MODEL_PATH = core.MODEL_PATH
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098"  # llama-cpp-python 0.3.36 CHANGELOG: "update llama.cpp to ggml-org/llama.cpp@0c1e57098"
TOPK = 20
N_LAYERS = 30
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
FLUSH = 2.0 ** -17  # |x| below this is set to 0 before the cast (keeps bf16 values exactly representable in f16)

# name (PEFT adapter name), relative dir, stored dtype, seed, std of B, LoraConfig kwargs.
# A ~ N(0, 1/in_features), B ~ N(0, std_b^2); std_b chosen so each adapter moves logits by ~1-5.
ADAPTERS = [
    dict(name="qv_r4", rel="qv_r4", dtype=torch.bfloat16, seed=1001, std_b=0.045,
         cfg=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    dict(name="all_rslora_r8", rel="all_rslora_r8", dtype=torch.float16, seed=1002, std_b=0.012,
         # "all-linear" + layers_to_transform is rejected by LoraConfig in PEFT 0.21.2 (see notes); PEFT expands
         # "all-linear" to exactly these 7 suffixes for Llama and saves the expanded list anyway.
         cfg=dict(r=8, lora_alpha=16, use_rslora=True, target_modules=list(ALL7), layers_to_transform=[1, 7, 15, 28])),
    dict(name="patterns", rel="patterns", dtype=torch.bfloat16, seed=1003, std_b=0.03,
         cfg=dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj", "down_proj"],
                  rank_pattern={"k_proj": 2, "down_proj": 6}, alpha_pattern={"o_proj": 32},
                  layers_to_transform=list(range(10)))),
    dict(name="regex_gate_up", rel="regex_gate_up", dtype=torch.float32, seed=1004, std_b=0.06,
         cfg=dict(r=2, lora_alpha=4, target_modules=r".*\.(gate|up)_proj")),
    dict(name="tree_fr", rel="tree/fr", dtype=torch.bfloat16, seed=1005, std_b=0.035,
         cfg=dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], layers_to_transform=list(range(15)))),
    dict(name="tree_fr_legal", rel="tree/fr/legal", dtype=torch.bfloat16, seed=1006, std_b=0.06,
         cfg=dict(r=8, lora_alpha=8, target_modules=["o_proj", "gate_proj"], layers_to_transform=list(range(10, 30)))),
    dict(name="tree_fr_legal_alice", rel="tree/fr/legal/alice", dtype=torch.bfloat16, seed=1007, std_b=0.035,
         cfg=dict(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"])),
]
SPEC = {a["name"]: a for a in ADAPTERS}
CHAIN = ["tree_fr", "tree_fr_legal", "tree_fr_legal_alice"]
MIXED_NAMES = ["qv_r4", "__base__", "patterns"]
FULL_LOGITS_CASES = {"single_qv_r4": "adapters_logits_qv_r4.f32",
                     "single_patterns": "adapters_logits_patterns.f32",
                     "chain_fr_legal_alice": "adapters_logits_chain.f32"}

f7 = core.f7


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def fmax(t):
    return float(f"{float(t):.4g}")


# --------------------------------------------------------------------------------------------
# Our own reading of a PEFT adapter directory (what the C server has to do), used for the hand checks
# --------------------------------------------------------------------------------------------
def pattern_key(pattern_keys, module_name):
    """First key K (dict order) such that the full module name matches (.*\\.)?(K)$ (PEFT get_pattern_key)."""
    for k in pattern_keys:
        if re.fullmatch(rf"(.*\.)?({k})", module_name):
            return k
    return None


def targeted(cfg, module_name):
    """PEFT check_target_module_exists for our cases: string -> re.fullmatch; list -> exact or '.'-suffix,
    then layers_to_transform on the first numeric path component after a named component."""
    tm = cfg["target_modules"]
    if isinstance(tm, str):
        return re.fullmatch(tm, module_name) is not None
    if module_name in tm:
        return True
    if not any(module_name.endswith("." + t) for t in tm):
        return False
    ltt = cfg.get("layers_to_transform")
    if ltt is None or ltt == []:
        return True
    m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module_name)
    if not m:
        return False
    idx = int(m.group("idx"))
    return idx == ltt if isinstance(ltt, int) else idx in ltt


def read_adapter_dir(d):
    """-> (config dict, {module_name: dict(A=fp32 [r,in], B=fp32 [out,r], r, alpha, scaling, rule)}, file info)"""
    cfg = json.loads((d / "adapter_config.json").read_text())
    mods = {}
    dtypes = set()
    keys = []
    with safe_open(str(d / "adapter_model.safetensors"), framework="pt") as f:
        for k in f.keys():
            keys.append(k)
            t = f.get_tensor(k)
            dtypes.add(str(t.dtype).replace("torch.", ""))
            m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", k)
            assert m, f"unexpected key {k}"
            mods.setdefault(m.group(1), {})[m.group(2)] = t.to(torch.float32)
    for name, ab in mods.items():
        A, B = ab["A"], ab["B"]
        r = A.shape[0]
        assert B.shape[1] == r
        rk = pattern_key(cfg["rank_pattern"].keys(), name)
        assert r == (cfg["rank_pattern"][rk] if rk else cfg["r"]), (name, r)
        ak = pattern_key(cfg["alpha_pattern"].keys(), name)
        alpha = cfg["alpha_pattern"][ak] if ak else cfg["lora_alpha"]
        if cfg["use_rslora"]:
            s, rule = alpha / math.sqrt(r), "alpha/sqrt(r)"
        else:
            s, rule = alpha / r, "alpha/r"
        ab.update(r=r, alpha=alpha, scaling=s, rule=rule, rank_key=rk, alpha_key=ak)
    return cfg, mods, {"keys": keys, "dtypes": sorted(dtypes)}


def summarize_modules(mods):
    """compact per-module-type table: module -> layers, shapes, r, alpha, scaling."""
    by = {}
    for name, ab in mods.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)", name)
        assert m, name
        layer, mod = int(m.group(1)), m.group(3)
        e = by.setdefault(mod, {"module": mod, "layers": [], "r": ab["r"], "alpha": ab["alpha"],
                                "scaling": ab["scaling"], "rule": ab["rule"],
                                "A_shape": list(ab["A"].shape), "B_shape": list(ab["B"].shape),
                                "rank_pattern_key": ab["rank_key"], "alpha_pattern_key": ab["alpha_key"]})
        assert (e["r"], e["alpha"], e["scaling"]) == (ab["r"], ab["alpha"], ab["scaling"])
        e["layers"].append(layer)
    out = []
    for mod in ALL7:
        if mod in by:
            by[mod]["layers"].sort()
            out.append(by[mod])
    return out


def layers_compact(ls):
    if ls == list(range(ls[0], ls[-1] + 1)):
        return f"{ls[0]}-{ls[-1]}"
    return ",".join(map(str, ls))


# --------------------------------------------------------------------------------------------
# helpers on the model
# --------------------------------------------------------------------------------------------
def logits_of(model, ids, **kw):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]) if not isinstance(ids, torch.Tensor) else ids,
                    use_cache=False, **kw)
    return out.logits


def top20(lg):
    top = torch.topk(lg, TOPK, dim=-1)
    return [[[int(i), f7(v)] for i, v in zip(top.indices[p].tolist(), top.values[p].tolist())]
            for p in range(lg.shape[0])]


def hand_merged_logits(ref_model, terms, ids):
    """ref_model: pristine fp32 HF model. terms: list of (mods dict, weight). Adds Σ w·s·B·A to the weights
    (computed in float64, added in fp32), runs, restores. Returns logits [T, V]."""
    sd = dict(ref_model.named_parameters())
    deltas = {}
    for mods, w in terms:
        for name, ab in mods.items():
            d = (w * ab["scaling"]) * (ab["B"].double() @ ab["A"].double())
            deltas[name] = deltas.get(name, 0) + d
    saved = {}
    with torch.no_grad():
        for name, d in deltas.items():
            p = sd[name + ".weight"]
            saved[name] = p.detach().clone()
            p.add_(d.to(torch.float32))
        lg = logits_of(ref_model, ids)[0]
        for name, v in saved.items():
            sd[name + ".weight"].copy_(v)
    return lg


def lora_layers(pm):
    from peft.tuners.lora import LoraLayer
    prefix = "base_model.model."
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer):
            yield name[len(prefix):] if name.startswith(prefix) else name, mod


# --------------------------------------------------------------------------------------------
# GGUF-LoRA conversion with llama.cpp's convert_lora_to_gguf.py
# --------------------------------------------------------------------------------------------
def fetch_llama_cpp(tmp):
    sd = tmp / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(sd)], check=True)
    tgz = next(sd.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers()
                   if "/vendor/llama.cpp/" in m.name and ("/conversion/" in m.name or "/gguf-py/" in m.name
                                                          or m.name.endswith("convert_lora_to_gguf.py")
                                                          or m.name.endswith("convert_hf_to_gguf.py"))]
        tf.extractall(tmp / "src", members=members, filter="data")
    return next((tmp / "src").glob("llama_cpp_python-*/vendor/llama.cpp"))


def base_config_from_gguf(reader):
    """A classic HF config.json for SmolLM2-135M-Instruct built from the GGUF llama.* metadata."""
    f = reader.fields

    def v(k):
        return f[k].contents()

    assert v("general.architecture") == "llama"
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": v("llama.embedding_length"),
        "intermediate_size": v("llama.feed_forward_length"),
        "num_hidden_layers": v("llama.block_count"),
        "num_attention_heads": v("llama.attention.head_count"),
        "num_key_value_heads": v("llama.attention.head_count_kv"),
        "head_dim": v("llama.rope.dimension_count"),
        "rms_norm_eps": f7(v("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": f7(v("llama.rope.freq_base")),
        "max_position_embeddings": v("llama.context_length"),
        "vocab_size": len(f["tokenizer.ggml.tokens"].contents()),
        "tie_word_embeddings": "output.weight" not in {t.name for t in reader.tensors},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": v("tokenizer.ggml.bos_token_id"),
        "eos_token_id": v("tokenizer.ggml.eos_token_id"),
        "pad_token_id": v("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "bfloat16",
    }


def permute_rows(w, n_head):
    """docs/FORMATS.md §2.6: GGUF row h*d + 2j + s <- HF row h*d + s*half + j."""
    out_f = w.shape[0]
    d = out_f // n_head
    half = d // 2
    idx = torch.empty(out_f, dtype=torch.long)
    for h in range(n_head):
        for j in range(half):
            for s in range(2):
                idx[h * d + 2 * j + s] = h * d + s * half + j
    return w[idx]


def convert_and_check_gguf(llama_dir, reader, tmp, run_llama_cpp, peft_qv_logits, base_logits_french, french_ids):
    info = {}
    base_dir = tmp / "base_config"
    base_dir.mkdir()
    bcfg = base_config_from_gguf(reader)
    (base_dir / "config.json").write_text(json.dumps(bcfg, indent=2))
    out = ADIR / "qv_r4.gguf"
    cmd = [sys.executable, str(llama_dir / "convert_lora_to_gguf.py"), "--outtype", "f16",
           "--base", str(base_dir), "--outfile", str(out), str(ADIR / "qv_r4")]
    print("running:", " ".join(cmd))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stdout, res.stderr)
        raise SystemExit("convert_lora_to_gguf.py failed")
    info["command"] = ("python <sdist>/vendor/llama.cpp/convert_lora_to_gguf.py --outtype f16 --base <dir with "
                       "config.json> --outfile tests/golden/fixtures/adapters/qv_r4.gguf tests/golden/fixtures/adapters/qv_r4")
    info["base_config_json"] = bcfg
    info["converter"] = {"llama_cpp_python_sdist": LLAMA_CPP_PYTHON_VERSION, "llama_cpp_commit": LLAMA_CPP_COMMIT,
                         "gguf_py": "vendored gguf-py of that commit (pyproject version "
                                    + re.search(r'^version = "([^"]+)"', (llama_dir / "gguf-py" / "pyproject.toml")
                                                .read_text(), re.M).group(1) + ")"}
    data = out.read_bytes()
    info["file"] = {"path": "adapters/qv_r4.gguf", "bytes": len(data), "sha256": sha256_bytes(data)}

    r = gguf.GGUFReader(str(out))
    meta = {}
    for k, fld in r.fields.items():
        if k.startswith("GGUF."):
            continue
        meta[k] = fld.contents()
    info["metadata"] = meta
    assert meta["general.type"] == "adapter", meta
    assert meta["general.architecture"] == "llama"
    assert meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 8.0
    tens = {t.name: t for t in r.tensors}
    names = sorted(tens)
    assert len(names) == 4 * N_LAYERS, len(names)
    for L in range(N_LAYERS):
        for m in ("attn_q", "attn_v"):
            for ab in ("lora_a", "lora_b"):
                assert f"blk.{L}.{m}.weight.{ab}" in tens
    types = sorted({t.tensor_type.name for t in r.tensors})
    info["tensor_types"] = types
    t0a, t0b, t0vb = tens["blk.0.attn_q.weight.lora_a"], tens["blk.0.attn_q.weight.lora_b"], tens["blk.0.attn_v.weight.lora_b"]
    info["tensor_examples"] = {
        n: {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape]}
        for n, t in (("blk.0.attn_q.weight.lora_a", t0a), ("blk.0.attn_q.weight.lora_b", t0b),
                     ("blk.0.attn_v.weight.lora_a", tens["blk.0.attn_v.weight.lora_a"]),
                     ("blk.0.attn_v.weight.lora_b", t0vb))}
    # numerical checks against the PEFT file
    _, mods, _ = read_adapter_dir(ADIR / "qv_r4")
    exact_a = exact_b_perm = exact_v = True
    q_b_equals_unpermuted = 0
    for L in range(N_LAYERS):
        for m, hf, nh in (("attn_q", "q_proj", 9), ("attn_v", "v_proj", None)):
            ab = mods[f"model.layers.{L}.self_attn.{hf}"]
            ga = torch.from_numpy(np.array(tens[f"blk.{L}.{m}.weight.lora_a"].data, dtype=np.float32))
            gb = torch.from_numpy(np.array(tens[f"blk.{L}.{m}.weight.lora_b"].data, dtype=np.float32))
            # numpy view of a GGUF tensor is [ne1, ne0] = PyTorch layout
            exact_a &= torch.equal(ga, ab["A"])
            if nh is None:
                exact_v &= torch.equal(gb, ab["B"])
            else:
                exact_b_perm &= torch.equal(gb, permute_rows(ab["B"], nh))
                q_b_equals_unpermuted += int(torch.equal(gb, ab["B"]))
    assert exact_a and exact_b_perm and exact_v and q_b_equals_unpermuted == 0
    info["checks"] = {
        "lora_a_equals_peft_A_exactly": exact_a,
        "q_lora_b_equals_permuted_peft_B_exactly (FORMATS 2.6, H=9)": exact_b_perm,
        "q_lora_b_equals_unpermuted_peft_B (layers)": q_b_equals_unpermuted,
        "v_lora_b_equals_peft_B_exactly": exact_v,
        "f16_lossless": "yes: adapter values are bf16 with |x| >= 2^-17 or 0, all exactly representable in f16",
    }
    if run_llama_cpp:
        try:
            import llama_cpp
            # control: the same adapter with the q lora_b rows NOT permuted (i.e. PEFT order), written with gguf-py
            ctrl = tmp / "qv_r4_unpermuted_q.gguf"
            wr = gguf.GGUFWriter(str(ctrl), "llama")
            wr.add_type("adapter")
            wr.add_string("adapter.type", "lora")
            wr.add_float32("adapter.lora.alpha", 8.0)
            for t in r.tensors:
                a = np.array(t.data)
                if t.name.endswith("attn_q.weight.lora_b"):
                    a = a.reshape(9, 32, 2, a.shape[1]).transpose(0, 2, 1, 3).reshape(a.shape)  # inverse of §2.6
                wr.add_tensor(t.name, np.ascontiguousarray(a))
            wr.write_header_to_file()
            wr.write_kv_data_to_file()
            wr.write_tensors_to_file()
            wr.close()
            n = len(french_ids)
            res = {}
            for label, lora in (("base", None), ("qv_r4.gguf", str(out)), ("control", str(ctrl))):
                kw = dict(model_path=str(MODEL_PATH), n_ctx=64, n_batch=64, logits_all=True, n_threads=2,
                          verbose=False, seed=0)
                if lora:
                    kw["lora_path"] = lora
                llm = llama_cpp.Llama(**kw)
                llm.eval(french_ids)
                res[label] = torch.from_numpy(np.array(llm.scores[:n], dtype=np.float32))
                del llm
            delta_pf = peft_qv_logits - base_logits_french

            def corr(x):
                return float(f"{float(torch.corrcoef(torch.stack([x.flatten(), delta_pf.flatten()]))[0, 1]):.4f}")

            agree = int((res["qv_r4.gguf"].argmax(-1) == peft_qv_logits.argmax(-1)).sum())
            info["llama_cpp_run"] = {
                "what": "llama-cpp-python 0.3.36 Llama(lora_path=qv_r4.gguf) on prompt 'french', all 21 positions, vs "
                        "PEFT fp32. llama.cpp quantizes activations (Q8_1 for Q4_1 weights), so its base logits already "
                        "differ from transformers by ~1: informational only, not a precision reference.",
                "base_max_abs_diff_vs_transformers": fmax((res["base"] - base_logits_french).abs().max()),
                "lora_max_abs_diff_vs_peft": fmax((res["qv_r4.gguf"] - peft_qv_logits).abs().max()),
                "adapter_delta_max_abs (PEFT)": fmax(delta_pf.abs().max()),
                "correlation of adapter deltas (llama.cpp lora-base vs PEFT lora-base)":
                    corr(res["qv_r4.gguf"] - res["base"]),
                "same, control GGUF with q lora_b left in PEFT row order": corr(res["control"] - res["base"]),
                "argmax_agreement_positions (lora vs PEFT)": f"{agree}/{n}",
            }
        except Exception as e:  # informational only
            info["llama_cpp_run"] = {"error": f"{type(e).__name__}: {e}"}
    return info


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp-dir", type=Path, help="vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist")
    ap.add_argument("--no-gguf", action="store_true", help="skip the GGUF-LoRA conversion")
    ap.add_argument("--no-llama-cpp-run", action="store_true", help="skip running llama-cpp-python with the GGUF LoRA")
    args = ap.parse_args()
    t_start = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tmp = Path(tempfile.mkdtemp(prefix="adapter_fixtures_"))
    surprises = []

    sha = core.sha256_file(MODEL_PATH)
    if sha != core.MODEL_SHA256:
        sys.exit(f"sha256 mismatch: {sha} != {core.MODEL_SHA256}")
    reader = gguf.GGUFReader(str(MODEL_PATH))
    tokens, merges, token_type, _ = core.read_gguf_tokenizer_fields(reader)
    ref_tok = core.build_reference_tokenizer(tokens, merges, token_type)

    def ids_of(text):
        return ref_tok.encode(text, add_special_tokens=False).ids

    core_logits = json.loads((OUT / "core_logits.json").read_text())
    core_prompts = {p["name"]: p for p in core_logits["prompts"]}
    PROMPTS = {}
    for n in ("capital", "french"):
        assert ids_of(core_prompts[n]["text"]) == core_prompts[n]["ids"]
        PROMPTS[n] = {"text": core_prompts[n]["text"], "ids": core_prompts[n]["ids"]}
    # three 6-token prompts for the mixed batch (no padding needed)
    mixed_texts = [("capital_paris6", "The capital of France is Paris"),
                   ("french6", None),
                   ("fox6", "The quick brown fox jumps over")]
    for n, t in mixed_texts:
        if t is None:
            ids = core_prompts["french"]["ids"][:6]
            t = ref_tok.decode(ids)
            assert ids_of(t) == ids
        PROMPTS[n] = {"text": t, "ids": ids_of(t)}
        assert len(PROMPTS[n]["ids"]) == 6, (n, PROMPTS[n]["ids"])
    assert PROMPTS["capital_paris6"]["ids"][:5] == PROMPTS["capital"]["ids"]

    # ---------------------------------------------------------------- base model
    print("loading model (fp32, dequantized by transformers) ...")
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(str(core.MODEL_DIR), gguf_file=core.MODEL_NAME,
                                                dtype=torch.float32, attn_implementation="eager")
    base.eval()
    assert base.config.num_hidden_layers == N_LAYERS
    ref_model = copy.deepcopy(base)  # never touched by PEFT; used for base logits and hand-merged checks
    ref_model.eval()
    ref_params = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
    base_logits = {n: logits_of(ref_model, p["ids"])[0] for n, p in PROMPTS.items()}
    core_last = torch.from_numpy(np.fromfile(OUT / "logits_capital.f32", dtype="<f4"))
    base_vs_core = float((base_logits["capital"][-1] - core_last).abs().max())
    assert base_vs_core < 1e-4, f"base logits differ from core fixture logits_capital.f32 by {base_vs_core}"

    # ---------------------------------------------------------------- create and save the adapters
    if ADIR.exists():
        shutil.rmtree(ADIR)
    ADIR.mkdir(parents=True)
    adapter_records = {}
    for spec in ADAPTERS:
        name = spec["name"]
        cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", init_lora_weights=False,
                         **spec["cfg"])
        pm = get_peft_model(base, cfg, adapter_name=name)
        g = torch.Generator().manual_seed(spec["seed"])
        with torch.no_grad():
            for pname, p in sorted(pm.named_parameters()):
                if ".lora_A." in pname:
                    v = torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[1])
                elif ".lora_B." in pname:
                    v = torch.randn(p.shape, generator=g, dtype=torch.float64) * spec["std_b"]
                else:
                    continue
                v[v.abs() < FLUSH] = 0.0
                p.copy_(v.to(spec["dtype"]).to(torch.float32))
            for _, layer in lora_layers(pm):
                layer.lora_A[name].to(spec["dtype"])
                layer.lora_B[name].to(spec["dtype"])
        pm.peft_config[name].base_model_name_or_path = BASE_MODEL_ID
        d = ADIR / spec["rel"]
        d.mkdir(parents=True, exist_ok=True)
        pm.save_pretrained(str(d))
        # PeftModel.save_pretrained(dir) with a non-"default" adapter name writes into dir/<adapter_name>/
        sub = d / name
        if sub.is_dir():
            for f in sub.iterdir():
                shutil.move(str(f), str(d / f.name))
            sub.rmdir()
        extra = sorted(f.name for f in d.iterdir() if f.is_file() and f.name not in
                       ("adapter_config.json", "adapter_model.safetensors"))
        for f in extra:
            (d / f).unlink()  # the model card README.md save_pretrained also writes
        base = pm.unload()
        assert all(torch.equal(v, ref_params[k]) for k, v in base.state_dict().items()), "unload changed the base"
        cfg_json, mods, finfo = read_adapter_dir(d)
        assert finfo["dtypes"] == [str(spec["dtype"]).replace("torch.", "")], finfo["dtypes"]
        for k in finfo["keys"]:
            assert re.fullmatch(r"base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight", k), k
        # module set == our own reading of target_modules / layers_to_transform on the base's module names
        expect = {n for n, _ in ref_model.named_modules() if n.startswith("model.layers.") and targeted(cfg_json, n)}
        assert expect == set(mods), (name, sorted(expect ^ set(mods))[:5])
        files = {}
        for fn in ("adapter_config.json", "adapter_model.safetensors"):
            b = (d / fn).read_bytes()
            files[fn] = {"bytes": len(b), "sha256": sha256_bytes(b)}
        adapter_records[name] = {
            "id": spec["rel"], "path": f"adapters/{spec['rel']}",
            "stored_dtype": finfo["dtypes"][0], "n_tensors": len(finfo["keys"]),
            "n_params": int(sum(ab["A"].numel() + ab["B"].numel() for ab in mods.values())),
            "init": f"A ~ N(0, 1/in_features), B ~ N(0, {spec['std_b']}^2), float64 torch.Generator seed "
                    f"{spec['seed']} (sorted parameter names), |x| < 2^-17 -> 0, cast to {finfo['dtypes'][0]}",
            "config": {k: cfg_json[k] for k in ("r", "lora_alpha", "use_rslora", "target_modules",
                                                "layers_to_transform", "rank_pattern", "alpha_pattern")},
            "modules": [dict(m, layers=layers_compact(m["layers"])) for m in summarize_modules(mods)],
            "files": files,
            "save_pretrained_extra_files_removed": extra,
        }
        print(f"saved {spec['rel']}: {len(finfo['keys'])} tensors {finfo['dtypes']}, "
              f"{files['adapter_model.safetensors']['bytes']} B")

    qv_config_full = json.loads((ADIR / "qv_r4" / "adapter_config.json").read_text())
    pat_cfg = json.loads((ADIR / "patterns" / "adapter_config.json").read_text())
    assert list(SPEC["patterns"]["cfg"]["rank_pattern"]) == ["k_proj", "down_proj"]
    assert list(pat_cfg["rank_pattern"]) == ["down_proj", "k_proj"], pat_cfg["rank_pattern"]
    assert list(qv_config_full) == sorted(qv_config_full)
    surprises.append("adapter_config.json is written with json.dumps(indent=2, sort_keys=True), so every dict is "
                     "sorted, including rank_pattern/alpha_pattern: patterns' rank_pattern given as {'k_proj': 2, "
                     "'down_proj': 6} is saved as {'down_proj': 6, 'k_proj': 2}. PEFT's 'first matching key in dict "
                     "order' therefore means first in the file's order once the config is loaded back (lists such as "
                     "target_modules keep their set-iteration order).")

    # ---------------------------------------------------------------- "all-linear" behaviour (not saved)
    all_linear = {}
    try:
        LoraConfig(r=8, target_modules="all-linear", layers_to_transform=[1, 7, 15, 28])
        all_linear["with_layers_to_transform"] = "accepted"
    except ValueError as e:
        all_linear["with_layers_to_transform"] = f"ValueError: {e}"
    pm = get_peft_model(base, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"), adapter_name="al")
    tm = pm.peft_config["al"].target_modules
    all_linear["expanded_target_modules"] = sorted(tm)
    all_linear["expanded_type"] = type(tm).__name__
    all_linear["lm_head_targeted"] = any(n.endswith("lm_head") for n, _ in lora_layers(pm))
    base = pm.unload()
    assert sorted(tm) == sorted(ALL7) and not all_linear["lm_head_targeted"]
    surprises.append("LoraConfig(target_modules='all-linear', layers_to_transform=[...]) raises ValueError in PEFT "
                     "0.21.2 ('`layers_to_transform` cannot be used when `target_modules` is a str.'). all_rslora_r8 "
                     "therefore lists the 7 suffixes explicitly; that is exactly what PEFT expands 'all-linear' to for "
                     "Llama (lm_head excluded) and what it writes to adapter_config.json for an 'all-linear' adapter "
                     "(a list of suffixes, in set order), so a saved config never contains the string 'all-linear'.")

    # ---------------------------------------------------------------- load everything from disk into one PeftModel
    first = ADAPTERS[0]
    pm = PeftModel.from_pretrained(base, str(ADIR / first["rel"]), adapter_name=first["name"])
    for spec in ADAPTERS[1:]:
        pm.load_adapter(str(ADIR / spec["rel"]), adapter_name=spec["name"])
    pm.eval()
    disk = {s["name"]: read_adapter_dir(ADIR / s["rel"])[1] for s in ADAPTERS}
    # loaded parameters == stored values upcast to fp32; PEFT's r / scaling == our resolution of the config
    n_checked = 0
    for mname, layer in lora_layers(pm):
        for aname in layer.lora_A.keys():
            ab = disk[aname][mname]
            assert layer.lora_A[aname].weight.dtype == torch.float32
            assert torch.equal(layer.lora_A[aname].weight, ab["A"]) and torch.equal(layer.lora_B[aname].weight, ab["B"])
            assert layer.r[aname] == ab["r"] and layer.scaling[aname] == ab["scaling"], (aname, mname)
            assert layer.lora_alpha[aname] == ab["alpha"]
            n_checked += 1
    assert n_checked == sum(len(m) for m in disk.values())
    print(f"loaded {len(ADAPTERS)} adapters, {n_checked} lora modules: weights and scalings verified")

    cases = []

    def record(name, prompt, adapters_desc, lg, hand_lg=None, extra=None):
        b = base_logits[prompt]
        rec = {"name": name, "prompt": prompt, "ids": PROMPTS[prompt]["ids"], "adapters": adapters_desc,
               "top20": top20(lg),
               "base_top1_changed_positions": int((lg.argmax(-1) != b.argmax(-1)).sum()),
               "max_abs_delta_vs_base": fmax((lg - b).abs().max()),
               "last_max_abs_delta_vs_base": fmax((lg[-1] - b[-1]).abs().max())}
        if hand_lg is not None:
            rec["hand_merged_max_abs_diff"] = fmax((lg - hand_lg).abs().max())
        if extra:
            rec.update(extra)
        if name in FULL_LOGITS_CASES:
            last = lg[-1].contiguous().numpy().astype("<f4")
            fn = FULL_LOGITS_CASES[name]
            (OUT / fn).write_bytes(last.tobytes())
            rec["last_logits_file"] = fn
            rec["last_logits_sha256"] = sha256_bytes(last.tobytes())
        cases.append(rec)
        print(f"case {name:28s} max|d vs base| {rec['max_abs_delta_vs_base']:<8} top1 changed "
              f"{rec['base_top1_changed_positions']}/{len(rec['ids'])}"
              + (f"  hand-merge diff {rec['hand_merged_max_abs_diff']}" if hand_lg is not None else ""))
        return rec

    # ---------------------------------------------------------------- a. single adapters on "french"
    singles = {}
    for spec in ADAPTERS[:4]:
        pm.set_adapter(spec["name"])
        lg = logits_of(pm, PROMPTS["french"]["ids"])[0]
        singles[spec["name"]] = lg
        hand = hand_merged_logits(ref_model, [(disk[spec["name"]], 1.0)], PROMPTS["french"]["ids"])
        record(f"single_{spec['name']}", "french",
               {"combination": "single", "list": [{"id": spec["rel"], "scale": 1.0}],
                "peft": f"PeftModel.set_adapter('{spec['name']}')"}, lg, hand)

    # ---------------------------------------------------------------- b. the tree chain
    chain_ids = [SPEC[n]["rel"] for n in CHAIN]
    combo = {}
    # b1: literally as asked: add_weighted_adapter(cat) -> fails in PEFT 0.21.2
    try:
        pm.add_weighted_adapter(CHAIN, [1.0, 1.0, 1.0], "chain_cat_literal", combination_type="cat")
        combo["chain_literal_cat"] = "succeeded"
    except ValueError as e:
        combo["chain_literal_cat"] = f"ValueError: {e}"
    if "chain_cat_literal" in pm.peft_config:
        pm.delete_adapter("chain_cat_literal")
    # b2: PEFT's own multi-adapter stacking: every active adapter adds s_i * B_i A_i x (reference)
    pm.base_model.set_adapter(CHAIN)
    lg_chain = logits_of(pm, PROMPTS["french"]["ids"])[0]
    # b1': an order whose first adapter's layers_to_transform leaves no hole succeeds -- and silently drops modules
    order2 = ["tree_fr_legal", "tree_fr", "tree_fr_legal_alice"]
    try:
        pm.add_weighted_adapter(order2, [1.0, 1.0, 1.0], "chain_cat_legal_first", combination_type="cat")
        pm.set_adapter("chain_cat_legal_first")
        lg2 = logits_of(pm, PROMPTS["french"]["ids"])[0]
        inj = sorted({int(re.match(r"model\.layers\.(\d+)\.", n).group(1)) for n, layer in lora_layers(pm)
                      if "chain_cat_legal_first" in layer.lora_A})
        combo["chain_cat_legal_first"] = {
            "call": "add_weighted_adapter(['tree_fr_legal','tree_fr','tree_fr_legal_alice'], [1,1,1], combination_type='cat')",
            "result": "succeeded", "new_layers_to_transform (copied from tree_fr_legal)":
                layers_compact(list(pm.peft_config["chain_cat_legal_first"].layers_to_transform)),
            "layers_injected": layers_compact(inj),
            "max_abs_logit_diff_vs_reference": fmax((lg2 - lg_chain).abs().max()),
            "meaning": "silently wrong: tree_fr's q/v in layers 0-9 and alice's q/k/v in layers 0-9 are dropped"}
        pm.delete_adapter("chain_cat_legal_first")
    except ValueError as e:
        combo["chain_cat_legal_first"] = {"result": f"ValueError: {e}"}
        if "chain_cat_legal_first" in pm.peft_config:
            pm.delete_adapter("chain_cat_legal_first")
    pm.base_model.set_adapter(CHAIN)
    # b3: cat made possible with a zero-weight filler adapter that covers every (layer, module) of the union
    pm.add_adapter("filler", LoraConfig(r=1, lora_alpha=1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj"], init_lora_weights=False))
    pm.add_weighted_adapter(["filler"] + CHAIN, [0.0, 1.0, 1.0, 1.0], "chain_cat", combination_type="cat")
    pm.set_adapter("chain_cat")
    lg_chain_cat = logits_of(pm, PROMPTS["french"]["ids"])[0]
    cat_scalings = {layer.scaling["chain_cat"] for _, layer in lora_layers(pm) if "chain_cat" in layer.scaling}
    cat_cfg = pm.peft_config["chain_cat"]
    pm.delete_adapter("chain_cat")
    pm.delete_adapter("filler")
    hand = hand_merged_logits(ref_model, [(disk[n], 1.0) for n in CHAIN], PROMPTS["french"]["ids"])
    combo["chain"] = {
        "reference": "PEFT multi-adapter stacking: model.base_model.set_adapter(['tree_fr','tree_fr_legal','tree_fr_legal_alice'])",
        "cat_with_zero_weight_filler": {
            "how": "add_adapter('filler', r=1, q/k/v/o/gate, all layers) then add_weighted_adapter(['filler', "
                   "'tree_fr', 'tree_fr_legal', 'tree_fr_legal_alice'], [0, 1, 1, 1], combination_type='cat')",
            "new_r": cat_cfg.r, "new_lora_alpha": cat_cfg.lora_alpha, "new_scalings": sorted(cat_scalings),
            "max_abs_logit_diff_vs_reference": fmax((lg_chain_cat - lg_chain).abs().max())},
        "hand_merged_max_abs_diff": fmax((lg_chain - hand).abs().max()),
    }
    record("chain_fr_legal_alice", "french",
           {"combination": "tree chain (model = 'tree/fr/legal/alice')",
            "list": [{"id": i, "scale": 1.0} for i in chain_ids],
            "peft": "base_model.set_adapter([tree_fr, tree_fr_legal, tree_fr_legal_alice]) == cat at weights [1,1,1] "
                    "(see combination_checks.chain)"}, lg_chain, hand,
           {"cat_max_abs_diff": combo["chain"]["cat_with_zero_weight_filler"]["max_abs_logit_diff_vs_reference"]})
    surprises.append(
        "add_weighted_adapter(['tree_fr','tree_fr_legal','tree_fr_legal_alice'], [1,1,1], combination_type='cat') "
        f"fails in PEFT 0.21.2: {combo['chain_literal_cat'].rstrip('.')}. The new adapter's config is a copy of the FIRST "
        "adapter's config (r = lora_alpha = Σr, patterns cleared, target_modules = union of the suffix sets, but "
        "layers_to_transform copied from adapters[0]); it is injected into every (layer, module) that config "
        "matches, and a matched module that none of the source adapters has (e.g. o_proj in layers 0-9: only "
        "tree_fr_legal has o_proj, in layers 10-29) raises. Worse, an order whose first adapter leaves no such hole "
        "succeeds and is SILENTLY WRONG: with tree_fr_legal first the merged adapter inherits layers_to_transform "
        "10-29 and drops every layer-0..9 contribution of tree_fr and alice (combination_checks.chain_cat_legal_first). "
        "The reference uses "
        "PEFT's multi-adapter stacking (all three active); cat was made to run by prepending a zero-weight filler "
        "adapter covering every module of the union, and agrees.")

    # ---------------------------------------------------------------- c. weighted list (cat) on "capital"
    wl = ["qv_r4", "regex_gate_up"]
    ww = [0.5, 1.5]
    try:
        pm.add_weighted_adapter(wl, ww, "wlist_literal", combination_type="cat")
        combo["weighted_list_literal_cat"] = "succeeded"
    except ValueError as e:
        combo["weighted_list_literal_cat"] = f"ValueError: {e}"
    if "wlist_literal" in pm.peft_config:
        pm.delete_adapter("wlist_literal")
    # workaround: give regex_gate_up the equivalent suffix set (it matched exactly the gate_proj/up_proj modules)
    rx_mods = {n for n, layer in lora_layers(pm) if "regex_gate_up" in layer.lora_A}
    assert rx_mods == {n for n in rx_mods if n.endswith((".gate_proj", ".up_proj"))} and len(rx_mods) == 2 * N_LAYERS
    saved_tm = pm.peft_config["regex_gate_up"].target_modules
    pm.peft_config["regex_gate_up"].target_modules = {"gate_proj", "up_proj"}
    pm.add_weighted_adapter(wl, ww, "wlist_cat", combination_type="cat")
    pm.peft_config["regex_gate_up"].target_modules = saved_tm
    pm.set_adapter("wlist_cat")
    lg_wl = logits_of(pm, PROMPTS["capital"]["ids"])[0]
    new_cfg = pm.peft_config["wlist_cat"]
    # weight-level check: B_new A_new * s_new == Σ w_i s_i B_i A_i for every module
    wdiff, wmax, new_scalings = 0.0, 0.0, set()
    for mname, layer in lora_layers(pm):
        if "wlist_cat" not in layer.lora_A:
            continue
        s_new = layer.scaling["wlist_cat"]
        new_scalings.add(s_new)
        got = s_new * (layer.lora_B["wlist_cat"].weight.detach().double() @ layer.lora_A["wlist_cat"].weight.detach().double())
        want = 0
        for a, w in zip(wl, ww):
            if mname in disk[a]:
                ab = disk[a][mname]
                want = want + w * ab["scaling"] * (ab["B"].double() @ ab["A"].double())
        wdiff = max(wdiff, float((got - want).abs().max()))
        wmax = max(wmax, float(want.abs().max()))
    pm.delete_adapter("wlist_cat")
    # independent PEFT path: both adapters active, each layer's scaling multiplied by the weight (set_scale)
    pm.base_model.set_adapter(wl)
    for _, layer in lora_layers(pm):
        for a, w in zip(wl, ww):
            layer.set_scale(a, w)
    lg_wl_active = logits_of(pm, PROMPTS["capital"]["ids"])[0]
    for _, layer in lora_layers(pm):
        for a in wl:
            layer.set_scale(a, 1.0)
    hand = hand_merged_logits(ref_model, [(disk[a], w) for a, w in zip(wl, ww)], PROMPTS["capital"]["ids"])
    combo["weighted_list"] = {
        "request": "add_weighted_adapter(['qv_r4', 'regex_gate_up'], weights=[0.5, 1.5], combination_type='cat')",
        "literal_result": combo["weighted_list_literal_cat"],
        "workaround": "peft_config['regex_gate_up'].target_modules temporarily set to {'gate_proj','up_proj'} (the "
                      "regex matched exactly those 60 modules), then the same call",
        "new_r": new_cfg.r, "new_lora_alpha": new_cfg.lora_alpha, "new_use_rslora": new_cfg.use_rslora,
        "new_scalings": sorted(new_scalings),
        "rule": "A_new = concat_rows(w_i * s_i * A_i), B_new = concat_cols(B_i), s_new = new_alpha/new_r = 1 -> "
                "delta W = Σ w_i s_i B_i A_i (qv_r4: s=8/4=2 -> 0.5*2 = 1.0; regex_gate_up: s=4/2=2 -> 1.5*2 = 3.0)",
        "weight_level_max_abs_diff (s_new B_new A_new vs Σ w_i s_i B_i A_i, float64 products)": float(f"{wdiff:.3g}"),
        "weight_level_max_abs_delta": fmax(wmax),
        "logits_max_abs_diff_vs_hand_merged": fmax((lg_wl - hand).abs().max()),
        "logits_max_abs_diff_vs_multi_active_set_scale": fmax((lg_wl - lg_wl_active).abs().max()),
    }
    assert new_scalings == {1.0} and wdiff < 1e-6
    record("weighted_qv_r4_0.5_regex_gate_up_1.5", "capital",
           {"combination": "weighted list (additive, no ancestors)",
            "list": [{"id": "qv_r4", "scale": 0.5}, {"id": "regex_gate_up", "scale": 1.5}],
            "peft": "add_weighted_adapter(['qv_r4','regex_gate_up'], [0.5,1.5], combination_type='cat') + set_adapter "
                    "(with the target_modules-type workaround, see combination_checks.weighted_list)"},
           lg_wl, hand)
    surprises.append(
        "add_weighted_adapter(['qv_r4','regex_gate_up'], ..., 'cat') fails in PEFT 0.21.2: "
        f"{combo['weighted_list_literal_cat']} (qv_r4's target_modules is a set, regex_gate_up's a regex string). "
        "Worked around by giving regex_gate_up the equivalent suffix set; the cat result then has r = lora_alpha = 6, "
        "scaling 1, and equals W + Σ w_i·s_i·B_i·A_i (see combination_checks.weighted_list).")

    # rslora pitfall (informational): a single-adapter combination copies use_rslora=True with r=lora_alpha=r
    pm.add_weighted_adapter(["all_rslora_r8"], [1.0], "rs_single", combination_type="cat")
    rs_cfg = pm.peft_config["rs_single"]
    rs_ratio = None
    for mname, layer in lora_layers(pm):
        if "rs_single" in layer.lora_A:
            got = layer.scaling["rs_single"] * (layer.lora_B["rs_single"].weight.detach().double()
                                                @ layer.lora_A["rs_single"].weight.detach().double())
            ab = disk["all_rslora_r8"][mname]
            want = ab["scaling"] * (ab["B"].double() @ ab["A"].double())
            rs_ratio = float((got.norm() / want.norm()))
            rs_scaling = layer.scaling["rs_single"]
            break
    pm.delete_adapter("rs_single")
    combo["rslora_single_adapter_pitfall"] = {
        "call": "add_weighted_adapter(['all_rslora_r8'], [1.0], combination_type='cat')  (one adapter -> PEFT uses 'linear')",
        "new_r": rs_cfg.r, "new_lora_alpha": rs_cfg.lora_alpha, "new_use_rslora": rs_cfg.use_rslora,
        "new_scaling": rs_scaling,
        "norm_ratio_new_delta_over_original_delta": float(f"{rs_ratio:.6g}"),
        "meaning": "the combined adapter keeps use_rslora=True with r = lora_alpha = 8, so its scaling is "
                   "8/sqrt(8) = 2.83 instead of 1: the merged delta is sqrt(8)x too large (docs/FORMATS.md §7 pitfall, "
                   "still present in 0.21.2). adaptree never builds merged adapters, it applies Σ w_i s_i B_i A_i.",
    }

    # ---------------------------------------------------------------- d. mixed batch with adapter_names
    mixed_prompts = ["capital_paris6", "french6", "fox6"]
    batch = torch.tensor([PROMPTS[p]["ids"] for p in mixed_prompts])
    pm.set_adapter("qv_r4")
    lg_batch = logits_of(pm, batch, adapter_names=MIXED_NAMES)
    seqs = []
    alone_diffs = []
    for i, (p, a) in enumerate(zip(mixed_prompts, MIXED_NAMES)):
        if a == "__base__":
            alone = base_logits[p]
            hand = base_logits[p]
        else:
            pm.set_adapter(a)
            alone = logits_of(pm, PROMPTS[p]["ids"])[0]
            hand = hand_merged_logits(ref_model, [(disk[a], 1.0)], PROMPTS[p]["ids"])
        lg = lg_batch[i]
        dd = fmax((lg - alone).abs().max())
        alone_diffs.append(dd)
        b = base_logits[p]
        seqs.append({"prompt": p, "text": PROMPTS[p]["text"], "ids": PROMPTS[p]["ids"],
                     "adapter": a if a == "__base__" else SPEC[a]["rel"],
                     "top20": top20(lg),
                     "base_top1_changed_positions": int((lg.argmax(-1) != b.argmax(-1)).sum()),
                     "max_abs_delta_vs_base": fmax((lg - b).abs().max()),
                     "max_abs_diff_vs_alone": dd,
                     "hand_merged_max_abs_diff": fmax((lg - hand).abs().max())})
    # the __base__ row must equal a batch run with adapters disabled
    with pm.disable_adapter():
        lg_nob = logits_of(pm, batch)
    cases.append({
        "name": "mixed_batch", "prompt": mixed_prompts, "ids": [PROMPTS[p]["ids"] for p in mixed_prompts],
        "adapters": {"combination": "mixed batch, one adapter (or none) per sequence",
                     "adapter_names": MIXED_NAMES,
                     "peft": "model(input_ids=[3,6] batch, adapter_names=['qv_r4','__base__','patterns']) (no padding)"},
        "sequences": seqs,
        "base_row_vs_batched_disable_adapter_max_abs_diff": fmax((lg_batch[1] - lg_nob[1]).abs().max()),
        "max_abs_delta_vs_base": max(s["max_abs_delta_vs_base"] for s in seqs),
        "base_top1_changed_positions": sum(s["base_top1_changed_positions"] for s in seqs),
    })
    print(f"case mixed_batch: per-sequence max|d vs base| {[s['max_abs_delta_vs_base'] for s in seqs]}, "
          f"diff vs alone {alone_diffs}")

    # ---------------------------------------------------------------- e. base
    for p in ["capital", "french"] + mixed_prompts:
        lg = base_logits[p]
        cases.append({"name": f"base_{p}", "prompt": p, "ids": PROMPTS[p]["ids"],
                      "adapters": {"combination": "none"}, "top20": top20(lg),
                      "base_top1_changed_positions": 0, "max_abs_delta_vs_base": 0.0})

    # ---------------------------------------------------------------- GGUF LoRA
    gguf_info = None
    if not args.no_gguf:
        llama_dir = args.llama_cpp_dir or fetch_llama_cpp(tmp)
        gguf_info = convert_and_check_gguf(llama_dir, reader, tmp, not args.no_llama_cpp_run, singles["qv_r4"],
                                           base_logits["french"], PROMPTS["french"]["ids"])

    # ---------------------------------------------------------------- write
    ver = {
        "python": core.platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "gguf": core._dist_version("gguf"),
        "numpy": np.__version__,
        "llama_cpp_python_sdist_converter": LLAMA_CPP_PYTHON_VERSION,
        "llama_cpp_commit": LLAMA_CPP_COMMIT,
    }
    notes = [
        "Base: transformers AutoModelForCausalLM.from_pretrained(models/, gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf, "
        "dtype=float32, attn_implementation='eager'), HF_HUB_OFFLINE=1, CPU, torch.set_num_threads(1), deterministic "
        "algorithms, no BOS (same as core_logits.json; max abs diff of the base last logits vs logits_capital.f32: "
        f"{base_vs_core}). q_proj/k_proj "
        "are in the HF (rotate-half) row order, so PEFT lora_B of q/k applies unpermuted here; a server keeping the "
        "GGUF row order must permute q/k lora_B rows (docs/FORMATS.md §2.6), as qv_r4.gguf shows.",
        "Adapters: get_peft_model(base, LoraConfig(task_type=CAUSAL_LM, lora_dropout=0, init_lora_weights=False, ...)), "
        "A/B overwritten with seeded random values, rounded to the stored dtype and the lora_A/lora_B modules cast to "
        "it, base_model_name_or_path set to HuggingFaceTB/SmolLM2-135M-Instruct, PeftModel.save_pretrained(dir); the "
        "README.md model card it also writes is deleted. Reference logits come from PeftModel.from_pretrained / "
        "load_adapter of those files into the fp32 model: the stored bf16/f16 values are upcast exactly to fp32 "
        "(checked bit-equal) and the LoRA path runs in fp32: y = W x + s * B (A x).",
        "Scaling per module: s = alpha/r, or alpha/sqrt(r) with use_rslora; r = rank_pattern[K] (= lora_A rows in the "
        "file), alpha = alpha_pattern[K] where K is the first key in dict order such that the full module name (e.g. "
        "'model.layers.3.self_attn.k_proj') matches the regex '(.*\\.)?(K)$' (PEFT get_pattern_key, re.match anchored "
        "at the start + '$'); otherwise r / lora_alpha. Verified: PEFT's per-layer r, lora_alpha and scaling equal this "
        f"resolution for all {n_checked} loaded modules, and the saved module sets equal our own reading of target_modules "
        "(list: exact name or '.'+suffix; string: re.fullmatch on the full name) and layers_to_transform (index = first "
        "numeric component after a named component).",
        "Every case also has hand_merged_max_abs_diff: PEFT logits vs a plain fp32 forward of the base with W += "
        "Σ w_i·s_i·B_i·A_i (computed in float64 from the files, added in fp32) -- independent confirmation of the "
        "scaling rules; differences are fp32 rounding only.",
        "top20 logits are rounded to 7 significant digits; adapters_logits_<case>.f32 hold the exact fp32 last-position "
        "logits (49152 little-endian float32).",
        "Mixed batch: three 6-token prompts, no padding, model(input_ids, adapter_names=[...]) -- PEFT runs the base "
        "layer on all rows and adds each adapter's s·B(Ax) to its own rows; '__base__' = no adapter.",
    ] + surprises
    fixture = {
        "model_sha256": core.MODEL_SHA256,
        "model_file": core.MODEL_NAME,
        "versions": ver,
        "notes": notes,
        "prompts": {n: {"text": p["text"], "ids": p["ids"]} for n, p in PROMPTS.items()},
        "adapters": adapter_records,
        "peft_adapter_config_example": {"adapter": "qv_r4", "adapter_config.json": qv_config_full},
        "all_linear": all_linear,
        "gguf_lora": gguf_info,
        "combination_checks": combo,
        "cases": cases,
    }
    n_json = core.write_json(OUT / "adapters.json", fixture)
    write_notes(fixture)

    # ---------------------------------------------------------------- summary
    print()
    print("=== summary ===")
    print("versions:", json.dumps(ver))
    total = 0
    for p in sorted(ADIR.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(OUT)}  {p.stat().st_size} B")
    for fn in FULL_LOGITS_CASES.values():
        total += (OUT / fn).stat().st_size
    notes_size = (OUT / "ADAPTERS_NOTES.md").stat().st_size
    total += n_json + notes_size
    print(f"  adapters.json {n_json} B, ADAPTERS_NOTES.md {notes_size} B, logits files "
          f"{sum((OUT / f).stat().st_size for f in FULL_LOGITS_CASES.values())} B")
    print(f"total fixture bytes {total}")
    print("combination checks:", json.dumps(combo, indent=1)[:3000])
    if gguf_info:
        print("gguf:", json.dumps({k: gguf_info[k] for k in ("checks", "tensor_types", "llama_cpp_run") if k in gguf_info}, indent=1))
    print(f"done in {time.time() - t_start:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)


def write_notes(fx):
    L = []
    w = L.append
    w("# Adapter fixtures (PEFT LoRA) — how they were made and what was checked\n")
    w("Generated by `tests/reference/make_adapter_fixtures.py` (do not edit by hand; rerun the script). "
      "CI only reads these files.\n")
    w("## Versions\n")
    for k, v in fx["versions"].items():
        w(f"- {k}: {v}")
    w("")
    w("## Files\n")
    w("| adapter (registry id) | stored dtype | r / alpha / rule | modules (layers) | safetensors bytes |")
    w("|---|---|---|---|---|")
    for name, a in fx["adapters"].items():
        mods = "; ".join(f"{m['module']} r={m['r']} α={m['alpha']} s={m['scaling']:.6g} ({m['layers']})" for m in a["modules"])
        c = a["config"]
        w(f"| `{a['id']}` | {a['stored_dtype']} | r={c['r']} α={c['lora_alpha']} "
          f"{'rslora α/√r' if c['use_rslora'] else 'α/r'} | {mods} | {a['files']['adapter_model.safetensors']['bytes']} |")
    w("")
    w("Each directory holds exactly `adapter_config.json` + `adapter_model.safetensors` as written by "
      "`PeftModel.save_pretrained` (the model-card `README.md` it also writes was removed). Tensor keys are "
      "`base_model.model.model.layers.N.{self_attn,mlp}.<m>_proj.lora_{A,B}.weight` — no adapter name, no "
      "`.default`. lora_A is [r, in], lora_B is [out, r], in the stored dtype; no other tensors.\n")
    w("### adapter_config.json written by PEFT 0.21.2 (qv_r4, every field)\n")
    w("```json")
    w(json.dumps(fx["peft_adapter_config_example"]["adapter_config.json"], indent=2))
    w("```\n")
    w("`target_modules` given as a list is saved as a list in set-iteration order (the script pins PYTHONHASHSEED=0 "
      "so the files are reproducible); a regex string is saved unchanged (`regex_gate_up`). "
      "`layers_to_transform`, `rank_pattern`, `alpha_pattern` are saved as given.\n")
    w("## Scaling and pattern rules (verified against PEFT 0.21.2 for every loaded module)\n")
    for n in fx["notes"][2:4]:
        w(f"- {n}")
    w("")
    w("`patterns`: k_proj → r=2 (rank_pattern), α=8 → s=4; down_proj → r=6, α=8 → s=4/3; o_proj → r=4, α=32 "
      "(alpha_pattern) → s=8; q_proj → r=4, α=8 → s=2. `all_rslora_r8`: s = 16/√8 = 5.657 for all 7 modules. "
      "(PEFT warns when use_rslora is combined with rank/alpha patterns; not done here.)\n")
    w("## \"all-linear\"\n")
    for k, v in fx["all_linear"].items():
        w(f"- {k}: {v}")
    w("")
    w("## PEFT 0.21.2 surprises (config writing, all-linear, add_weighted_adapter)\n")
    for n in fx["notes"][6:]:
        w(f"- {n}")
    w("")
    w("```json")
    w(json.dumps(fx["combination_checks"], indent=1))
    w("```\n")
    g = fx["gguf_lora"]
    if g:
        w("## GGUF-LoRA version of qv_r4 (`adapters/qv_r4.gguf`)\n")
        w(f"Made with llama.cpp's own converter from the llama-cpp-python {g['converter']['llama_cpp_python_sdist']} "
          f"sdist (`pip download --no-deps --no-binary :all: llama-cpp-python=={g['converter']['llama_cpp_python_sdist']}`, "
          f"vendor/llama.cpp = ggml-org/llama.cpp@{g['converter']['llama_cpp_commit']}, {g['converter']['gguf_py']}):\n")
        w("```")
        w(g["command"])
        w("```\n")
        w("`--base` is a temp dir holding only this config.json, built from the GGUF's llama.* metadata "
          "(no hub access; `--base-model-id` would need the hub):\n")
        w("```json")
        w(json.dumps(g["base_config_json"], indent=1))
        w("```\n")
        w(f"File: {g['file']['bytes']} B, sha256 {g['file']['sha256']}. Tensor types: {g['tensor_types']}. "
          "(`--outtype f16` is lossless here: every stored bf16 value is 0 or has |x| >= 2^-17, hence exactly "
          "representable in f16.) The file sits at the adapters root as a plain file, not as a registry node "
          "(a node would be a directory holding `adapter.gguf`); copy it into such a directory for registry tests.\n")
        w("Metadata:\n")
        w("```json")
        w(json.dumps({k: v for k, v in g["metadata"].items()}, indent=1))
        w("```\n")
        w("Tensors (GGUF ne order): " + ", ".join(f"`{k}` {v['type']} ne={v['ne']}" for k, v in g["tensor_examples"].items())
          + " — 120 tensors, `blk.N.attn_{q,v}.weight.lora_{a,b}` for N = 0..29.\n")
        w("Checks (exact equality against the PEFT safetensors):\n")
        for k, v in g["checks"].items():
            w(f"- {k}: {v}")
        if "llama_cpp_run" in g:
            w("")
            w("llama.cpp run (informational):\n")
            for k, v in g["llama_cpp_run"].items():
                w(f"- {k}: {v}")
        w("")
    w("## Cases (adapters.json `cases`)\n")
    w("| case | prompt | adapters | max abs Δ vs base | top1 changed | vs hand-merged |")
    w("|---|---|---|---|---|---|")
    for c in fx["cases"]:
        ad = c["adapters"]
        desc = ad.get("combination")
        if "list" in ad:
            desc += ": " + ", ".join(f"{x['id']}×{x['scale']}" for x in ad["list"])
        if "adapter_names" in ad:
            desc += ": " + ", ".join(ad["adapter_names"])
        hm = c.get("hand_merged_max_abs_diff")
        if "sequences" in c:
            hm = max(s["hand_merged_max_abs_diff"] for s in c["sequences"])
        w(f"| {c['name']} | {c['prompt'] if isinstance(c['prompt'], str) else ', '.join(c['prompt'])} | {desc} | "
          f"{c['max_abs_delta_vs_base']} | {c['base_top1_changed_positions']} | {hm if hm is not None else '—'} |")
    w("")
    mb = [c for c in fx["cases"] if c["name"] == "mixed_batch"][0]
    w("Mixed batch: per-sequence max abs diff vs running each sequence alone: "
      + ", ".join(f"{s['prompt']} ({s['adapter']}) {s['max_abs_diff_vs_alone']}" for s in mb["sequences"])
      + f"; `__base__` row vs a batched run with adapters disabled: {mb['base_row_vs_batched_disable_adapter_max_abs_diff']}.\n")
    w("Full last-position logits: " + ", ".join(f"`{v}` ({k})" for k, v in FULL_LOGITS_CASES.items()) + ".\n")
    w("## Notes\n")
    for n in fx["notes"][:2] + fx["notes"][4:6]:
        w(f"- {n}")
    w("")
    (OUT / "ADAPTERS_NOTES.md").write_text("\n".join(L), encoding="utf-8")


if __name__ == "__main__":
    main()
