#!/usr/bin/env python3
"""Reference safetensors files for tests/unit/core/format/test_safetensors.c.

Good files are written by the `safetensors` package itself (the Hugging Face reference
implementation, Rust underneath) from numpy arrays, bfloat16 via ml_dtypes. They cover F32, F16
and BF16 tensors of several ranks, a scalar, zero-size tensors, "__metadata__" ({"format": "pt"}
as PEFT writes it, plus non-ASCII values), PEFT-style LoRA key names, dtypes core cannot use
(F64, I32, U8, BOOL, I64) and a name the writer must escape.

Bad files (bad/*.safetensors) are small hand-made corruptions; this script checks that the
reference implementation rejects every one of them, so the C reader is held to be at least as
strict as the reference on each.

Sidecar tests/golden/fixtures/st/expected.txt, tab-separated, strings as hex of their UTF-8
bytes (a readable form may follow as a last, ignored field):

    file    FILE  N_TENSORS  N_META
    tensor  FILE  NAME_HEX  DTYPE  SHAPE  NUMEL  NBYTES  FNV1A64  SUM  WSUM  FIRST  LAST
    meta    FILE  KEY_HEX  VALUE_HEX
    bad     FILE  (the reference's error message)

SHAPE is "d0,d1,..." ("-" for a scalar); FNV1A64 is the 64-bit FNV-1a hash of the tensor's bytes.
SUM and WSUM are float64 sums, left to right, of the values as f32 (x_i) and of (i + 1) * x_i;
FIRST and LAST are the f32 bit patterns (hex) of the first and last element. These four are
"-" for dtypes core does not convert and for empty tensors.

The writer keeps "__metadata__" in a hash map, so the order of the three keys in
mixed.safetensors (and hence its bytes) changes from run to run; nothing depends on it.

Run:  python3 -m venv /tmp/venv-st && /tmp/venv-st/bin/pip install safetensors numpy ml_dtypes
      /tmp/venv-st/bin/python tests/reference/make_st_fixtures.py
Generated with safetensors 0.8.0, numpy 2.4.6, ml_dtypes 0.6.0.
"""
import json
import os
import struct
from importlib.metadata import version

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, deserialize
from safetensors.numpy import save

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "fixtures", "st")
BF16 = ml_dtypes.bfloat16
rng = np.random.default_rng(20240611)


def good_files():
    f16 = (rng.standard_normal((5, 7)) * 4).astype(np.float16)
    # +-0, the smallest subnormal, the largest finite values
    f16.flat[:5] = np.array([0.0, -0.0, 2.0**-24, 65504.0, -65504.0], dtype=np.float16)
    bf16 = (rng.standard_normal((6, 10)) * 3).astype(BF16)
    bf16.flat[:4] = np.array([1e30, -1e-30, 0.1, -0.0], dtype=np.float32).astype(BF16)
    peft = {}
    for layer in range(2):
        for mod in ("q_proj", "v_proj"):
            base = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            peft[base + ".lora_A.weight"] = (rng.standard_normal((4, 32)) * 0.02).astype(np.float32)
            peft[base + ".lora_B.weight"] = (rng.standard_normal((32, 4)) * 0.01).astype(np.float32)
    return {
        "f32.safetensors": ({
            "a.weight": rng.standard_normal((8, 16)).astype(np.float32),
            "b.bias": rng.standard_normal(16).astype(np.float32),
            "c": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 8 - 1,
        }, None),
        "f16.safetensors": ({"h": f16, "h2": np.array([1.5, -2.25, 1e-3], np.float16)}, None),
        "bf16.safetensors": ({"w": bf16, "w.scale": np.array([0.5, 3.0], np.float32).astype(BF16)},
                             None),
        "scalar_zero.safetensors": ({
            "scalar": np.array(3.25, np.float32),
            "scalar_bf16": np.array(-7.5, np.float32).astype(BF16),
            "empty": np.zeros((0, 4), np.float32),
            "empty_h": np.zeros((0,), np.float16),
            "x": np.array([1.0, -1.0], np.float32),
        }, None),
        "peft.safetensors": (peft, {"format": "pt"}),
        "mixed.safetensors": ({
            "d": np.array([1.0, -2.5, 1e300], np.float64),
            "i": np.array([[1, -2], [3, 2**31 - 1]], np.int32),
            "u": np.arange(5, dtype=np.uint8),
            "b": np.array([True, False, True]),
            "l": np.array([-(2**62), 5], np.int64),
            "f": np.array([0.25, 4.0], np.float32),
            'we"ird\\name\n\x01.é': np.array([2.0], np.float32),
        }, {"format": "pt", "note": "h\u00e9llo \u2713 \U0001F600", "empty": ""}),
    }


def header_file(header, body=b"", n=None):
    """A file from a header given as a str/dict (JSON-encoded) or bytes."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if n is None else n) + header + body


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def bad_files(valid):
    return {
        "truncated": valid[:40],
        "len_past_eof": header_file({"a": t("F32", [1], 0, 4)}, b"\0" * 4, n=1000),
        "len_huge": header_file("{}", n=2**62),
        "not_object": header_file("[1,2]"),
        "trailing_garbage": header_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}x',
                                        b"\0" * 4),
        "bad_utf8": header_file(b'{"a\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                                b"\0" * 4),
        "bad_escape": header_file('{"a\\q":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                                  b"\0" * 4),
        "lone_surrogate": header_file(
            '{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        "unknown_dtype": header_file({"a": t("F128", [1], 0, 16)}, b"\0" * 16),
        "negative_dim": header_file('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
                                    b"\0" * 4),
        "float_dim": header_file('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}',
                                 b"\0" * 4),
        "missing_offsets": header_file('{"a":{"dtype":"F32","shape":[1]}}', b"\0" * 4),
        "wrong_size": header_file({"a": t("F32", [2, 3], 0, 20)}, b"\0" * 20),
        "hole": header_file({"a": t("F32", [1], 0, 4), "b": t("F32", [1], 8, 12)}, b"\0" * 12),
        "overlap": header_file({"a": t("F32", [2], 0, 8), "b": t("F32", [1], 4, 8)}, b"\0" * 8),
        "past_body": header_file({"a": t("F32", [2], 0, 8)}, b"\0" * 4),
        "uncovered_tail": header_file({"a": t("F32", [1], 0, 4)}, b"\0" * 8),
        "end_before_begin": header_file({"a": t("F32", [0], 4, 0)}, b"\0" * 4),
        "shape_overflow": header_file({"a": t("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4),
        "meta_not_string": header_file('{"__metadata__":{"k":1}}'),
    }


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def tensor_line(fname, name, arr, dtype_name):
    raw = arr.tobytes()
    shape = ",".join(str(d) for d in arr.shape) or "-"
    sums = ["-"] * 4
    if dtype_name in ("F32", "F16", "BF16") and arr.size:
        v = arr.astype(np.float32).ravel()
        s = w = 0.0
        for i, x in enumerate(v):
            s += float(x)
            w += (i + 1) * float(x)
        bits = v.view(np.uint32)
        sums = [repr(s), repr(w), f"{bits[0]:08x}", f"{bits[-1]:08x}"]
    return "\t".join(["tensor", fname, name.encode().hex(), dtype_name, shape, str(arr.size),
                      str(len(raw)), f"{fnv1a64(raw):016x}", *sums, repr(name)])


def main():
    os.makedirs(os.path.join(OUT, "bad"), exist_ok=True)
    lines = ["# made by tests/reference/make_st_fixtures.py: "
             f"safetensors {version('safetensors')}, numpy {version('numpy')}, "
             f"ml_dtypes {version('ml_dtypes')}"]
    valid = None
    for fname, (tensors, meta) in good_files().items():
        data = save(tensors, metadata=meta)
        with open(os.path.join(OUT, fname), "wb") as f:
            f.write(data)
        valid = valid or data
        header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
        # the reader must see exactly what the reference wrote
        assert {k for k in header if k != "__metadata__"} == set(tensors), fname
        lines.append(f"file\t{fname}\t{len(tensors)}\t{len(meta or {})}")
        for name, arr in tensors.items():
            assert tuple(header[name]["shape"]) == arr.shape, (fname, name)
            lines.append(tensor_line(fname, name, arr, header[name]["dtype"]))
        for k, v in (meta or {}).items():
            lines.append(f"meta\t{fname}\t{k.encode().hex()}\t{v.encode().hex()}")
    for name, data in bad_files(valid).items():
        try:
            deserialize(data)
        except SafetensorError as e:
            msg = str(e).replace("\t", " ").replace("\n", " ")
        else:
            raise SystemExit(f"reference accepted bad/{name}")
        with open(os.path.join(OUT, "bad", name + ".safetensors"), "wb") as f:
            f.write(data)
        lines.append(f"bad\tbad/{name}.safetensors\t{msg}")
    with open(os.path.join(OUT, "expected.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
