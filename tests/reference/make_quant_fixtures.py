#!/usr/bin/env python3
"""Reference dequantization vectors for tests/unit/core/kernels/test_dequant.c.

For each tensor type the C code dequantizes (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q4_K, Q5_K, Q6_K) this makes a few blocks of random bytes whose f16 scale fields are overwritten with
finite, sane values (|d| <= 0.1, plus one subnormal scale per type), and dequantizes them with
gguf.quants.dequantize from the `gguf` Python package (llama.cpp's own gguf-py: an implementation
independent of ours, in numpy float32). F16/BF16/F32 inputs also include the special values
(+-0, subnormals, +-inf, NaN, largest finite).

Output: tests/golden/fixtures/quant_vectors.bin, all integers little-endian:

    char     magic[4]        "AQV1"
    uint32   n_cases
    char     gguf_version[16] version of the gguf package used, NUL-padded
    n_cases times:
        uint32  type         ggml type id
        uint32  n            number of elements
        uint32  nbytes       bytes of raw block data
        uint8   raw[nbytes]
        float32 expected[n]

Run:  python3 -m venv /tmp/venv-quant && /tmp/venv-quant/bin/pip install gguf numpy
      /tmp/venv-quant/bin/python tests/reference/make_quant_fixtures.py
Generated with gguf 0.19.0, numpy 2.4.6 (the versions are also stored in the file).
"""
import os
import struct
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(__file__), "..", "golden", "fixtures", "quant_vectors.bin")

# type -> (number of blocks, byte offsets of f16 scale fields inside a block)
CASES = [
    (T.F32, 64, []),
    (T.F16, 64, []),
    (T.BF16, 64, []),
    (T.Q4_0, 8, [0]),
    (T.Q4_1, 8, [0, 2]),
    (T.Q5_0, 8, [0]),
    (T.Q5_1, 8, [0, 2]),
    (T.Q8_0, 8, [0]),
    (T.Q4_K, 4, [0, 2]),
    (T.Q6_K, 4, [208]),
    (T.Q5_K, 4, [0, 2]),  # last: the cases above keep the bytes they had before it was added
]

F16_SPECIALS = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF,
                0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x3C00, 0x3555]
BF16_SPECIALS = [0x0000, 0x8000, 0x0001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x7F80,
                 0xFF80, 0x7FC0, 0x7F81, 0x3F80, 0x3EAB]


def make_raw(rng, qtype, nblocks, scale_offsets):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        vals = rng.standard_normal(nblocks).astype(np.float32) * np.float32(10)
        vals[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-40, 3.4e38]  # includes an f32 subnormal
        return vals.tobytes()
    if qtype in (T.F16, T.BF16):
        specials = F16_SPECIALS if qtype == T.F16 else BF16_SPECIALS
        bits = rng.integers(0, 1 << 16, size=nblocks, dtype=np.uint16)
        bits[:len(specials)] = specials
        return bits.astype("<u2").tobytes()
    raw = bytearray(rng.integers(0, 256, size=nblocks * block_bytes, dtype=np.uint8).tobytes())
    for b in range(nblocks):
        for off in scale_offsets:
            if b == nblocks - 1:
                d = np.float16(rng.uniform(-1, 1) * 6e-5)  # a subnormal f16 scale
            else:
                d = np.float16(rng.uniform(-0.1, 0.1))
            raw[b * block_bytes + off:b * block_bytes + off + 2] = d.tobytes()
    return bytes(raw)


def main():
    rng = np.random.default_rng(20241129)
    gver = version("gguf")
    out = bytearray()
    out += b"AQV1" + struct.pack("<I", len(CASES)) + gver.encode().ljust(16, b"\0")
    for qtype, nblocks, offs in CASES:
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        raw = make_raw(rng, qtype, nblocks, offs)
        assert len(raw) == nblocks * block_bytes
        ref = dequantize(np.frombuffer(raw, dtype=np.uint8), qtype)
        ref = np.asarray(ref, dtype=np.float32).reshape(-1)
        n = nblocks * block_elems
        assert ref.size == n, (qtype.name, ref.size, n)
        out += struct.pack("<III", int(qtype), n, len(raw)) + raw + ref.astype("<f4").tobytes()
        print(f"{qtype.name:5s} {n:5d} elements, {len(raw):5d} bytes", file=sys.stderr)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "wb") as f:
        f.write(out)
    print(f"wrote {os.path.normpath(OUT)} ({len(out)} bytes, gguf {gver}, numpy {np.__version__})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
