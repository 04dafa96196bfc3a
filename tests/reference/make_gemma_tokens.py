#!/usr/bin/env python3
"""Produce tests/golden/fixtures/gemma_tokens.json: Gemma 3's tokenizer on a battery of texts.

Reference ids: transformers' own GGUF tokenizer loading (AutoTokenizer.from_pretrained(dir,
gguf_file=...): a tokenizers BPE with byte fallback rebuilt from the GGUF's SentencePiece
vocabulary and scores, Gemma's normalizer (spaces to U+2581, no dummy prefix), the special tokens
as added tokens), with one repair: the GGUF's USER_DEFINED tokens (the runs of 2-31 spaces,
newlines and tabs, ids 138-...: non-special added tokens of Google's tokenizer, which llama.cpp's
converter stores with U+2581 turned back into spaces) are added back as what they are in Hugging
Face's tokenizer.json, normalized non-special added tokens, matched leftmost-longest before BPE.
transformers' GGUF loader leaves them to BPE merges instead (40 spaces: 16 + 24 rather than
31 + 9); its plain ids appear as `transformers_gguf_ids` where they differ. The model hubs are
unreachable here, so Google's tokenizer.json is not; the GGUF is the source every tool reads.
Cross-check: llama.cpp's llama-tokenize on the same GGUF (build/llama.cpp,
`tools/build_llamacpp.sh`); a case where it differs carries `llama_cpp_ids`.

The battery is make_core_fixtures.py's (ASCII, digits, whitespace, scripts, emoji, code,
unusual Unicode, control bytes) with Gemma's special tokens in place of ChatML's. Special-token
text is matched (parse_special=true); no BOS is added.

Nothing here is run by CI; CI only reads the committed fixture.
Run:  .venv-ref/bin/python tests/reference/make_gemma_tokens.py     (needs `make gemma`; a few s)
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_core_fixtures import TOKEN_CASES, sha256_file, write_json  # noqa: E402
import gguf  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "gemma-3-270m-q4_k_m.gguf"
LLAMA_TOKENIZE = REPO / "build" / "llama.cpp" / "bin" / "llama-tokenize"
OUT = REPO / "tests" / "golden" / "fixtures" / "gemma_tokens.json"

# ChatML's special-token cases become Gemma's; the rest of the battery is unchanged.
GEMMA_SPECIAL = [
    ("special_chat_turn", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
    ("special_many", "<bos><eos><pad><start_of_turn><end_of_turn>"),
    ("special_glued", "abc<end_of_turn>def"),
    ("special_spaced", " <start_of_turn> model <end_of_turn> "),
    ("special_partial", "<start_of_turn <end_of_turn>> <end_turn> <START_OF_TURN>"),
    ("special_image", "look: <start_of_image> here"),
]
EXTRA = [
    ("ws_long_run", "a" + " " * 40 + "b" + "\n" * 12 + "c" + "\t" * 9),
    ("byte_fallback_private_use", "\ue000\U000f0000 \U0010fffd"),
    ("french", "L'été dernier, nous sommes allés à la mer ; c'était très agréable !"),
    ("german_compound", "Donaudampfschifffahrtsgesellschaftskapitän"),
    ("hindi", "नमस्ते दुनिया, यह एक परीक्षण है।"),
    ("thai", "สวัสดีชาวโลก"),
    ("markdown", "# Title\n\n- item *one*\n- item **two**\n\n```python\nprint('x')\n```\n"),
]


def battery():
    out = [(n, t) for n, t in TOKEN_CASES if not n.startswith("special_")]
    return out + GEMMA_SPECIAL + EXTRA


def llama_cpp_ids(texts):
    """llama-tokenize's ids for each text (no BOS, special tokens parsed), or None without it."""
    if not LLAMA_TOKENIZE.exists():
        return None
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, t in enumerate(texts):
            f = Path(d) / f"{i}.txt"
            f.write_bytes(t.encode("utf-8"))
            r = subprocess.run([str(LLAMA_TOKENIZE), "-m", str(MODEL), "-f", str(f), "--ids",
                                "--no-bos", "--no-escape", "--log-disable"],
                               capture_output=True, text=True, check=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("[")][-1]
            out.append(json.loads(line))
    return out


def main():
    if not MODEL.exists():
        sys.exit(f"{MODEL} is missing: run make gemma")
    with tempfile.TemporaryDirectory() as d:
        os.symlink(MODEL, Path(d) / MODEL.name)
        plain = AutoTokenizer.from_pretrained(d, gguf_file=MODEL.name)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=MODEL.name)
    r = gguf.GGUFReader(str(MODEL))
    f, ty = r.fields["tokenizer.ggml.tokens"], r.fields["tokenizer.ggml.token_type"]
    user = [bytes(f.parts[f.data[i]]).decode("utf-8") for i in range(len(f.data))
            if int(ty.parts[ty.data[i]][0]) == gguf.TokenType.USER_DEFINED]
    tok.backend_tokenizer.add_tokens([AddedToken(u.replace(" ", "\u2581"), normalized=True,
                                                 special=False) for u in user])
    cases = battery()
    lc = llama_cpp_ids([t for _, t in cases])
    out_cases = []
    n_lc_diff = 0
    for i, (name, text) in enumerate(cases):
        ids = tok.encode(text, add_special_tokens=False)
        case = {"name": name, "text": text, "text_utf8_hex": text.encode("utf-8").hex(),
                "parse_special": True, "ids": ids}
        plain_ids = plain.encode(text, add_special_tokens=False)
        if plain_ids != ids:
            case["transformers_gguf_ids"] = plain_ids
        if lc is not None and lc[i] != ids:
            case["llama_cpp_ids"] = lc[i]
            n_lc_diff += 1
        out_cases.append(case)
    doc = {
        "model_file": MODEL.name,
        "model_sha256": sha256_file(MODEL),
        "versions": {"python": platform.python_version(), "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__,
                     "llama_cpp": "llama-cpp-python 0.3.36's vendored llama.cpp" if lc else None},
        "user_defined_tokens": len(user),
        "notes": ("ids: transformers AutoTokenizer.from_pretrained(dir, gguf_file=...) with the GGUF's "
                  "USER_DEFINED tokens added back as normalized non-special added tokens (as in "
                  "Hugging Face's tokenizer.json), .encode(text, add_special_tokens=False); special-"
                  "token text is matched, no BOS. transformers_gguf_ids (the loader as is: space "
                  "runs left to BPE merges) and llama_cpp_ids (llama-tokenize --ids --no-bos --no-escape) appear "
                  "only where they differ from ids."),
        "cases": out_cases,
    }
    write_json(OUT, doc)
    n_plain = sum("transformers_gguf_ids" in c for c in out_cases)
    print(f"{len(user)} user-defined tokens; {len(out_cases)} cases, plain transformers GGUF "
          f"differs on {n_plain}, llama.cpp on {n_lc_diff}"
          f"{'' if lc is not None else ' (llama-tokenize not built: not compared)'} -> {OUT}")


if __name__ == "__main__":
    main()
