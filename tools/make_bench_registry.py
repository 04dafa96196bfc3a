#!/usr/bin/env python3
"""Writes the registry `make bench-server` measures: real PEFT directories
(adapter_config.json + adapter_model.safetensors, F16) with random small LoRA weights that are
valid for the base model (shapes read from its GGUF):

    qv8/a00 .. qv8/a31       rank 8, q_proj + v_proj
    all16/a00 .. all16/a31   rank 16, all 7 linear modules (q, k, v, o, gate, up, down)
    l00/d00/u00 .. l31/d31/u31   three-level chains: l = rank 8 all-linear, d = rank 8 q,k,v,o,
                                 u = rank 4 q,v (every node distinct)

lora_A ~ U(-1/sqrt(in), 1/sqrt(in)), lora_B ~ N(0, 0.01) (non-zero, small: outputs stay sane),
lora_alpha = 2r. Deterministic for a given --seed.

usage: tools/make_bench_registry.py -o DIR [-m MODEL.gguf] [-n 32] [--seed 1]
                                   [--groups qv8,all16,chain]
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTN = ALL[:4]
QV = ["q_proj", "v_proj"]


def gguf_info(path):
    """(metadata scalars {key: value}, tensors [(name, shape)]) of a GGUF file (v2/v3), read
    directly: the gguf package needs sentencepiece just to import."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
              11: "<q", 12: "<d"}
    with open(path, "rb") as f:
        def rd(fmt):
            n = struct.calcsize(fmt)
            return struct.unpack(fmt, f.read(n))[0]

        def rstr():
            return f.read(rd("<Q")).decode("utf-8", "replace")

        def rval(t):
            if t in scalar:
                return rd(scalar[t])
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("<I"), rd("<Q")
                if et in scalar:
                    f.seek(struct.calcsize(scalar[et]) * n, 1)
                else:
                    for _ in range(n):
                        rval(et)
                return None
            raise ValueError(f"{path}: unknown GGUF value type {t}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        rd("<I")
        n_tensors, n_kv = rd("<Q"), rd("<Q")
        kv = {}
        for _ in range(n_kv):
            key = rstr()
            kv[key] = rval(rd("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = rstr()
            shape = [rd("<Q") for _ in range(rd("<I"))]
            rd("<I")
            rd("<Q")
            tensors.append((name, shape))
    return kv, tensors


def model_dims(path):
    """n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim from the GGUF's metadata."""
    dims = dict(n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3, head_dim=64)
    if not path:
        return dims
    kv, _ = gguf_info(path)
    arch = kv["general.architecture"]
    got = dict(n_layer=kv.get(f"{arch}.block_count"), n_embd=kv.get(f"{arch}.embedding_length"),
               n_ff=kv.get(f"{arch}.feed_forward_length"),
               n_head=kv.get(f"{arch}.attention.head_count"),
               n_head_kv=kv.get(f"{arch}.attention.head_count_kv"),
               head_dim=kv.get(f"{arch}.attention.key_length"))
    for k, v in got.items():
        if v is not None:
            dims[k] = int(v)
    if got["head_dim"] is None:
        dims["head_dim"] = dims["n_embd"] // dims["n_head"]
    return dims


def n_params_nonembedding(path):
    """Parameters of every tensor but the token embedding and a separate output head."""
    _, tensors = gguf_info(path)
    total = 0
    for name, shape in tensors:
        if name in ("token_embd.weight", "output.weight"):
            continue
        total += int(np.prod(shape))
    return total


def n_params_head(path):
    """Parameters of the output head: output.weight, or the tied token embedding."""
    _, tensors = gguf_info(path)
    shapes = dict(tensors)
    shape = shapes.get("output.weight", shapes.get("token_embd.weight"))
    return int(np.prod(shape))


def module_shape(d, mod):
    """(in, out) of a linear module."""
    q = d["n_head"] * d["head_dim"]
    kv = d["n_head_kv"] * d["head_dim"]
    return {"q_proj": (d["n_embd"], q), "k_proj": (d["n_embd"], kv), "v_proj": (d["n_embd"], kv),
            "o_proj": (q, d["n_embd"]), "gate_proj": (d["n_embd"], d["n_ff"]),
            "up_proj": (d["n_embd"], d["n_ff"]), "down_proj": (d["n_ff"], d["n_embd"])}[mod]


def write_safetensors(path, tensors):
    """tensors: {name: np.ndarray (float16)} -> a safetensors file (sorted names, 8-aligned)."""
    header, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float16)
        b = a.tobytes()
        header[name] = {"dtype": "F16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_adapter(dirpath, dims, r, modules, rng):
    os.makedirs(dirpath, exist_ok=True)
    tensors = {}
    for layer in range(dims["n_layer"]):
        for mod in modules:
            n_in, n_out = module_shape(dims, mod)
            part = "self_attn" if mod in ATTN else "mlp"
            pre = f"base_model.model.model.layers.{layer}.{part}.{mod}"
            bound = 1.0 / np.sqrt(n_in)
            tensors[pre + ".lora_A.weight"] = rng.uniform(-bound, bound, (r, n_in)).astype(np.float16)
            tensors[pre + ".lora_B.weight"] = rng.normal(0.0, 0.01, (n_out, r)).astype(np.float16)
    write_safetensors(os.path.join(dirpath, "adapter_model.safetensors"), tensors)
    cfg = {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "bias": "none",
           "fan_in_fan_out": False, "inference_mode": True, "lora_alpha": 2 * r,
           "lora_dropout": 0.0, "peft_type": "LORA", "r": r, "target_modules": modules,
           "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False}
    with open(os.path.join(dirpath, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def groups(n):
    """{group name: [(node id, rank, modules), ...]} of the bench registry."""
    return {
        "qv8": [(f"qv8/a{i:02d}", 8, QV) for i in range(n)],
        "all16": [(f"all16/a{i:02d}", 16, ALL) for i in range(n)],
        "chain": [x for i in range(n) for x in ((f"l{i:02d}", 8, ALL),
                                                 (f"l{i:02d}/d{i:02d}", 8, ATTN),
                                                 (f"l{i:02d}/d{i:02d}/u{i:02d}", 4, QV))],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", required=True)
    p.add_argument("-m", "--model", help="GGUF to take the shapes from (default: SmolLM2-135M's)")
    p.add_argument("-n", type=int, default=32, help="adapters per group")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--groups", default="qv8,all16,chain",
                   help="which groups to write (comma-separated), e.g. qv8 alone for -n 256")
    a = p.parse_args(argv)
    want = {g.strip() for g in a.groups.split(",") if g.strip()}
    dims = model_dims(a.model)
    seed = a.seed
    total = count = 0
    for name, nodes in groups(a.n).items():
        if name not in want:
            continue
        for node_id, r, modules in nodes:
            rng = np.random.default_rng(seed)
            seed += 1
            d = os.path.join(a.out, *node_id.split("/"))
            write_adapter(d, dims, r, modules, rng)
            total += os.path.getsize(os.path.join(d, "adapter_model.safetensors"))
            count += 1
    print(f"bench registry: {a.out}: {count} adapters, {total / 1e6:.0f} MB "
          f"(dims {dims})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
