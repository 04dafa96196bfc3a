#!/usr/bin/env python3
"""Seed corpus for tests/fuzz/fuzz_gguf.c, written to tests/fuzz/corpus/fuzz_gguf/.

Valid files come from gguf-py's GGUFWriter (llama.cpp's own writer), so the fuzzer starts from
real layouts: every metadata value type, nested arrays, a custom alignment, and tensors of every
type core/format/types.c and core/kernels/dequant.c dequantizes plus a few it only sizes. Broken files are copies with one field
changed. The first 4 KB of the real model is added when models/ has it. Total stays < 200 KB.

Run:  /tmp/venv-quant/bin/python tests/fuzz/make_corpus_gguf.py   (gguf + numpy in the venv)
"""
import os
import struct
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus", "fuzz_gguf")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def write(build, arch="llama"):
    with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
        path = f.name
    w = GGUFWriter(path, arch)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def raw_tensor(w, rng, name, qtype, shape):
    """Random bytes for a quantized tensor of shape (rows, cols), with sane f16 scales."""
    be, bb = GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    nb = rows * cols // be
    raw = rng.integers(0, 256, size=nb * bb, dtype=np.uint8)
    scale_off = {T.Q6_K: [208], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q2_K: [80, 82]}.get(qtype, [0])
    for b in range(nb):
        for off in scale_off:
            raw[b * bb + off:b * bb + off + 2] = np.frombuffer(
                np.float16(rng.uniform(-0.1, 0.1)).tobytes(), dtype=np.uint8)
    w.add_tensor(name, raw.reshape(rows, cols // be * bb), raw_dtype=qtype)


def tiny_llama(w):
    rng = np.random.default_rng(1)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(3)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<s>", "</s>", "a", "b", "ab", "\u0120c"])
    w.add_token_types([3, 3, 1, 1, 1, 1])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_quantization_version(2)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    w.add_tensor("token_embd.weight", quantize(x, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    q = rng.standard_normal((64, 64)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", quantize(q, T.Q4_1), raw_dtype=T.Q4_1)
    w.add_tensor("blk.0.attn_k.weight", quantize(q[:32], T.Q4_0), raw_dtype=T.Q4_0)
    w.add_tensor("blk.0.attn_v.weight", quantize(q[:32], T.Q5_0), raw_dtype=T.Q5_0)
    w.add_tensor("blk.0.attn_output.weight", quantize(q, T.Q5_1), raw_dtype=T.Q5_1)
    w.add_tensor("output_norm.weight", np.full(64, 0.5, dtype=np.float16))


def all_types(w):
    rng = np.random.default_rng(2)
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 70000)
    w.add_int32("t.i32", -7)
    w.add_float32("t.f32", 1.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "h\u00e9llo \"world\"\n")
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 0.25)
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_array("t.deep", [[[["x"]]]])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.floats", [0.5, -1.0])
    raw_tensor(w, rng, "k4", T.Q4_K, (2, 256))
    raw_tensor(w, rng, "k6", T.Q6_K, (1, 256))
    raw_tensor(w, rng, "k5", T.Q5_K, (2, 256))
    raw_tensor(w, rng, "k2", T.Q2_K, (1, 256))
    bf = (rng.standard_normal(32).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("bf", bf.view(np.uint8), raw_dtype=T.BF16)
    w.add_tensor("f4d", np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2))


def minimal(w):
    w.add_tensor("w", np.zeros(8, dtype=np.float32))


def set_u32(data, off, v):
    return data[:off] + struct.pack("<I", v) + data[off + 4:]


def set_u64(data, off, v):
    return data[:off] + struct.pack("<Q", v) + data[off + 8:]


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {
        "tiny_llama.gguf": write(tiny_llama),
        "all_types_align64.gguf": write(all_types, arch="test"),
        "minimal.gguf": write(minimal, arch="test"),
    }
    tiny = files["tiny_llama.gguf"]
    files["bad_version1.gguf"] = set_u32(tiny, 4, 1)
    files["ok_version2.gguf"] = set_u32(tiny, 4, 2)  # valid: v2 has the same layout
    files["bad_huge_n_tensors.gguf"] = set_u64(tiny, 8, 1 << 60)
    files["bad_huge_n_kv.gguf"] = set_u64(tiny, 16, 100000)
    files["bad_key_len.gguf"] = set_u64(tiny, 24, 1 << 40)
    files["bad_truncated.gguf"] = tiny[:len(tiny) - 100]
    # tensor offset past the end: the last 8 bytes before the data section padding of 'minimal'
    mini = files["minimal.gguf"]
    name = mini.find(b"w\x01\x00\x00\x00")  # name "w", n_dims 1
    files["bad_offset.gguf"] = set_u64(mini, name + 1 + 4 + 8 + 4, 1 << 20)
    files["bad_type.gguf"] = set_u32(mini, name + 1 + 4 + 8, 16)
    files["bad_dims.gguf"] = set_u64(mini, name + 1 + 4, 0)
    if os.path.exists(MODEL):
        with open(MODEL, "rb") as f:
            files["smollm2_head4k.gguf"] = f.read(4096)
    total = 0
    for fname, data in files.items():
        with open(os.path.join(OUT, fname), "wb") as f:
            f.write(data)
        total += len(data)
        print(f"{fname:28s} {len(data):6d} bytes")
    print(f"total {total} bytes in {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
