#!/usr/bin/env python3
"""Produce the committed PEFT LoRA golden fixtures for Gemma 3 (models/gemma-3-270m-q4_k_m.gguf).

The base is make_gemma_fixtures.py's reference (transformers' Gemma3ForCausalLM built by hand from
the GGUF, fp32, eager attention; imported, not copied). Its q/k rows are the GGUF's, which for
Gemma 3 are Hugging Face's (the converter does not permute them), so these PEFT adapters apply
to adaptree's weights with lora_B as stored -- no q/k row permutation (docs/FORMATS.md §2.6 is
for Llama only).

Adapters (real PeftModel.save_pretrained directories, laid out as a registry tree under
tests/golden/fixtures/gemma_adapters/; seeded A ~ N(0, 1/in), B ~ N(0, std_b^2), values rounded
to the stored dtype):
  all7                 q,k,v,o,gate,up,down r=8 alpha=16, layers 0, 5, 8, 17 (5 and 17 global) bf16
  mlp_rslora           regex '.*\\.(up|down)_proj' r=4 alpha=8 use_rslora, every layer      f16
  tree/fr              q,v r=4 alpha=4, every layer                                         bf16
  tree/fr/legal        o,gate r=4 alpha=8, layers 9-17                                      bf16
  tree/fr/legal/alice  q,k,v r=2 alpha=4, every layer                                       f32
Cases (reference logits from PEFT on the files as saved):
  single_all7, single_mlp_rslora         one adapter (set_adapter)
  chain_fr_legal_alice                   the tree chain at scale 1 (all three active at once, as
                                         make_adapter_fixtures.py does)
  weighted_all7_0.7_mlp_rslora_-0.3      a weighted list: both active, each layer's scale times
                                         its weight (LoraLayer.set_scale)
  mixed_batch                            three 6-token rows, adapter_names=[all7, __base__,
                                         tree/fr/legal/alice's own adapter alone]
Every case is also checked against a hand merge (W += sum w_i s_i B_i A_i in float64, then an fp32
forward), independent of PEFT's code path.

Writes (under tests/golden/fixtures/):
  gemma_adapters/<id>/{adapter_config.json, adapter_model.safetensors}
  gemma_adapters.json           cases: ids, adapter list (id, scale), top-20 [id, logit] at every
                                position (7 significant digits), max |delta| vs base, the
                                hand-merge difference, the sampled last-position file
  gemma_adapters_last_<case>.f32 last-position logits of ids 0, 64, 128, ... (4096 little-endian
                                float32, no header)

Nothing here is run by CI; CI only reads the committed fixtures.
Run:  nice .venv-ref/bin/python tests/reference/make_gemma_adapter_fixtures.py   (~2 min, 1 thread)
"""

import os
import sys

# target_modules lists are saved in set-iteration order: pin the hash seed so the files are
# reproducible byte for byte (as make_adapter_fixtures.py does).
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gemma_fixtures as gem  # noqa: E402  (sets the HF offline variables)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors import safe_open  # noqa: E402

OUT = gem.OUT
ADIR = OUT / "gemma_adapters"
TOPK = 20
STRIDE = 64
N_LAYERS = 18
FLUSH = 2.0 ** -17  # |x| below this becomes 0 (keeps bf16 values exact in f16 too)
BASE_MODEL_ID = "google/gemma-3-270m"

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = [
    dict(name="all7", rel="all7", dtype=torch.bfloat16, seed=3001, std_b=0.02,
         cfg=dict(r=8, lora_alpha=16, target_modules=list(ALL7), layers_to_transform=[0, 5, 8, 17])),
    dict(name="mlp_rslora", rel="mlp_rslora", dtype=torch.float16, seed=3002, std_b=0.01,
         cfg=dict(r=4, lora_alpha=8, use_rslora=True, target_modules=r".*\.(up|down)_proj")),
    dict(name="tree_fr", rel="tree/fr", dtype=torch.bfloat16, seed=3003, std_b=0.03,
         cfg=dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
    dict(name="tree_fr_legal", rel="tree/fr/legal", dtype=torch.bfloat16, seed=3004, std_b=0.02,
         cfg=dict(r=4, lora_alpha=8, target_modules=["o_proj", "gate_proj"],
                  layers_to_transform=list(range(9, 18)))),
    dict(name="tree_fr_legal_alice", rel="tree/fr/legal/alice", dtype=torch.float32, seed=3005,
         std_b=0.03, cfg=dict(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"])),
]
SPEC = {a["name"]: a for a in ADAPTERS}
CHAIN = ["tree_fr", "tree_fr_legal", "tree_fr_legal_alice"]
WEIGHTED = [("all7", 0.7), ("mlp_rslora", -0.3)]
MIXED = [("capital6", "all7"), ("french6", "__base__"), ("code6", "tree_fr_legal_alice")]

PROMPTS = {
    "capital": "The capital of France is",
    "french": "Le petit chat dort sur le canapé pendant que la pluie tombe",
    "capital6": None,  # the first 6 ids of these (no padding in the mixed batch)
    "french6": None,
    "code6": "def fibonacci(n):\n    if n < 2:",
}


def sig7(x):
    return float(f"{float(x):.7g}")


def fmax(t):
    return float(f"{float(t):.4g}")


def logits_of(model, ids, **kw):
    x = ids if isinstance(ids, torch.Tensor) else torch.tensor([ids])
    with torch.no_grad():
        return model(input_ids=x, use_cache=False, **kw).logits


def top20(lg):
    top = torch.topk(lg, TOPK, dim=-1)
    return [[[int(i), sig7(v)] for i, v in zip(top.indices[p].tolist(), top.values[p].tolist())]
            for p in range(lg.shape[0])]


def lora_layers(pm):
    from peft.tuners.lora import LoraLayer
    prefix = "base_model.model."
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer):
            yield name[len(prefix):] if name.startswith(prefix) else name, mod


def read_adapter(d):
    """Our own reading of a saved adapter: {module: dict(A, B fp32, scaling)} (for the hand merge)."""
    cfg = json.loads((d / "adapter_config.json").read_text())
    mods = {}
    with safe_open(str(d / "adapter_model.safetensors"), framework="pt") as f:
        for k in f.keys():
            m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", k)
            assert m, k
            mods.setdefault(m.group(1), {})[m.group(2)] = f.get_tensor(k).to(torch.float32)
    for ab in mods.values():
        r = ab["A"].shape[0]
        assert not cfg["rank_pattern"] and not cfg["alpha_pattern"]
        a = cfg["lora_alpha"]
        ab["scaling"] = a / math.sqrt(r) if cfg["use_rslora"] else a / r
    return cfg, mods


def hand_merged_logits(pm, terms, ids):
    """The PEFT model with its adapters disabled and W += sum w * s * B A (float64 products,
    added in fp32) in the wrapped base layers, run, then restored."""
    params = dict(pm.get_base_model().named_parameters())
    deltas = {}
    for mods, w in terms:
        for name, ab in mods.items():
            d = (w * ab["scaling"]) * (ab["B"].double() @ ab["A"].double())
            deltas[name] = deltas.get(name, 0) + d
    saved = {}
    with torch.no_grad(), pm.disable_adapter():
        for name, d in deltas.items():
            key = name + ".base_layer.weight"
            p = params[key]
            saved[key] = p.detach().clone()
            p.add_(d.to(torch.float32))
        lg = logits_of(pm, ids)[0]
        for key, v in saved.items():
            params[key].copy_(v)
    return lg


def save_adapters(base, ref_params):
    """Creates, fills and saves every adapter; returns (base unchanged, records)."""
    if ADIR.exists():
        shutil.rmtree(ADIR)
    ADIR.mkdir(parents=True)
    records = {}
    for spec in ADAPTERS:
        name = spec["name"]
        cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none",
                         init_lora_weights=False, **spec["cfg"])
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
        sub = d / name  # save_pretrained of a non-"default" adapter writes into dir/<name>/
        if sub.is_dir():
            for f in sub.iterdir():
                shutil.move(str(f), str(d / f.name))
            sub.rmdir()
        for f in d.iterdir():
            if f.is_file() and f.name not in ("adapter_config.json", "adapter_model.safetensors"):
                f.unlink()  # the model card
        base = pm.unload()
        assert all(torch.equal(v, ref_params[k]) for k, v in base.state_dict().items())
        cfg_json, mods = read_adapter(d)
        layers = sorted({int(re.match(r"model\.layers\.(\d+)\.", n).group(1)) for n in mods})
        kinds = sorted({n.rsplit(".", 1)[1] for n in mods}, key=ALL7.index)
        shapes = {k: [list(mods[n]["A"].shape), list(mods[n]["B"].shape)]
                  for k in kinds for n in mods if n.endswith("." + k)}
        size = (d / "adapter_model.safetensors").stat().st_size
        records[name] = {
            "id": spec["rel"], "stored_dtype": str(spec["dtype"]).replace("torch.", ""),
            "config": {k: cfg_json[k] for k in ("r", "lora_alpha", "use_rslora", "target_modules",
                                                "layers_to_transform")},
            "modules": kinds, "layers": layers, "shapes_A_B": shapes,
            "scaling": sorted({ab["scaling"] for ab in mods.values()}),
            "n_tensors": 2 * len(mods), "safetensors_bytes": size,
            "init": f"A ~ N(0, 1/in), B ~ N(0, {spec['std_b']}^2), seed {spec['seed']}",
        }
        print(f"saved {spec['rel']}: {2 * len(mods)} tensors, layers {layers}, {size} B", flush=True)
    return base, records


def main():
    t_start = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("REF_THREADS", "1")))
    ref = gem.load_reference()
    base = ref.model
    assert base.config.num_hidden_layers == N_LAYERS
    ref_params = {k: v.detach().clone() for k, v in base.state_dict().items()}
    ids = {}
    for name, text in PROMPTS.items():
        if text is not None:
            ids[name] = ref.encode(text)
    ids["capital6"] = ids["capital"][:6]
    ids["french6"] = ids["french"][:6]
    ids["code6"] = ids["code6"][:6]
    assert all(len(ids[p]) == 6 for p, _ in MIXED)
    base_logits = {p: logits_of(base, i)[0] for p, i in ids.items()}
    # the imported reference is the one gemma_logits.json was made with
    core_last = torch.from_numpy(np.fromfile(OUT / "gemma_last_capital.f32", dtype="<f4"))
    base_vs_fixture = float((base_logits["capital"][-1][::gem.STRIDE] - core_last).abs().max())
    assert base_vs_fixture < 1e-4, base_vs_fixture

    base, records = save_adapters(base, ref_params)
    first = ADAPTERS[0]
    pm = PeftModel.from_pretrained(base, str(ADIR / first["rel"]), adapter_name=first["name"])
    for spec in ADAPTERS[1:]:
        pm.load_adapter(str(ADIR / spec["rel"]), adapter_name=spec["name"])
    pm.eval()
    disk = {s["name"]: read_adapter(ADIR / s["rel"])[1] for s in ADAPTERS}
    n_checked = 0
    for mname, layer in lora_layers(pm):
        for a in layer.lora_A.keys():
            ab = disk[a][mname]
            assert torch.equal(layer.lora_A[a].weight, ab["A"])
            assert torch.equal(layer.lora_B[a].weight, ab["B"])
            assert layer.scaling[a] == ab["scaling"], (a, mname, layer.scaling[a], ab["scaling"])
            n_checked += 1
    print(f"loaded {len(ADAPTERS)} adapters, {n_checked} lora modules: values and scalings "
          "verified", flush=True)

    cases = []

    def record(name, prompt, items, lg, hand):
        b = base_logits[prompt]
        last = lg[-1].contiguous().numpy().astype("<f4")[::STRIDE].copy()
        fn = f"gemma_adapters_last_{name}.f32"
        (OUT / fn).write_bytes(last.tobytes())
        rec = {"name": name, "prompt": prompt, "ids": ids[prompt],
               "adapters": {"list": [{"id": SPEC[a]["rel"], "scale": w} for a, w in items]},
               "top20": top20(lg),
               "max_abs_delta_vs_base": fmax((lg - b).abs().max()),
               "base_top1_changed_positions": int((lg.argmax(-1) != b.argmax(-1)).sum()),
               "hand_merged_max_abs_diff": fmax((lg - hand).abs().max()),
               "last_logits_file": fn,
               "last_logits_sha256": hashlib.sha256(last.tobytes()).hexdigest()}
        cases.append(rec)
        print(f"case {name:36s} max|d vs base| {rec['max_abs_delta_vs_base']:<8} top1 changed "
              f"{rec['base_top1_changed_positions']}/{len(rec['ids'])} hand-merge diff "
              f"{rec['hand_merged_max_abs_diff']}", flush=True)
        return rec

    # a. single adapters
    for a, prompt in (("all7", "french"), ("mlp_rslora", "capital")):
        pm.set_adapter(a)
        lg = logits_of(pm, ids[prompt])[0]
        record(f"single_{a}", prompt, [(a, 1.0)], lg,
               hand_merged_logits(pm, [(disk[a], 1.0)], ids[prompt]))
    # b. the tree chain: all three active, each at scale 1
    pm.base_model.set_adapter(CHAIN)
    lg = logits_of(pm, ids["french"])[0]
    rec = record("chain_fr_legal_alice", "french", [(a, 1.0) for a in CHAIN], lg,
                 hand_merged_logits(pm, [(disk[a], 1.0) for a in CHAIN], ids["french"]))
    rec["select"] = "tree/fr/legal/alice"
    # c. weighted list: both active, each layer's scale times its weight
    names = [a for a, _ in WEIGHTED]
    pm.base_model.set_adapter(names)
    for _, layer in lora_layers(pm):
        for a, w in WEIGHTED:
            layer.set_scale(a, w)
    lg = logits_of(pm, ids["capital"])[0]
    for _, layer in lora_layers(pm):
        for a in names:
            layer.set_scale(a, 1.0)
    record("weighted_all7_0.7_mlp_rslora_-0.3", "capital", WEIGHTED, lg,
           hand_merged_logits(pm, [(disk[a], w) for a, w in WEIGHTED], ids["capital"]))
    # d. mixed batch (PEFT adapter_names: one adapter or none per row)
    pm.set_adapter("all7")
    batch = torch.tensor([ids[p] for p, _ in MIXED])
    lg_batch = logits_of(pm, batch, adapter_names=[a for _, a in MIXED])
    seqs = []
    for i, (p, a) in enumerate(MIXED):
        lg = lg_batch[i]
        if a == "__base__":
            alone = base_logits[p]
        else:
            pm.set_adapter(a)
            alone = logits_of(pm, ids[p])[0]
        seqs.append({"prompt": p, "ids": ids[p], "adapter": a if a == "__base__" else SPEC[a]["rel"],
                     "top20": top20(lg), "max_abs_delta_vs_base": fmax((lg - base_logits[p]).abs().max()),
                     "max_abs_diff_vs_alone": fmax((lg - alone).abs().max())})
    cases.append({"name": "mixed_batch", "sequences": seqs,
                  "peft": "model(input_ids=[3, 6], adapter_names=[...]) (no padding)"})
    print("case mixed_batch: " + ", ".join(f"{s['adapter']} d vs base {s['max_abs_delta_vs_base']}, "
                                          f"vs alone {s['max_abs_diff_vs_alone']}" for s in seqs))

    fixture = {
        "model": gem.MODEL_PATH.name, "model_sha256": gem.MODEL_SHA256,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "numpy": np.__version__},
        "notes": [
            "Base: make_gemma_fixtures.load_reference() (fp32 Gemma3ForCausalLM from the dequantized "
            f"GGUF); its capital prompt's sampled last logits equal gemma_last_capital.f32 within {base_vs_fixture:.3g}.",
            "Gemma 3's GGUF q/k rows are Hugging Face's: lora_B of q_proj/k_proj applies as stored.",
            "Chain = PEFT multi-adapter stacking (base_model.set_adapter([...]), every node at scale 1); "
            "weighted list = the same with LoraLayer.set_scale(adapter, weight) (scale = weight * "
            "alpha/r, or alpha/sqrt(r) with use_rslora).",
            "hand_merged_max_abs_diff: PEFT vs an fp32 forward with W += sum w_i s_i B_i A_i (float64).",
            f"last_logits_file: last-position logits of ids 0, {STRIDE}, {2 * STRIDE}, ... (float32 LE).",
        ],
        "stride": STRIDE,
        "adapters": records,
        "cases": cases,
    }
    (OUT / "gemma_adapters.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in ADIR.rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in OUT.glob("gemma_adapters*") if p.is_file())
    print(f"fixture bytes {total}; done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
