#!/usr/bin/env python3
"""Produce the committed core golden fixtures for adaptree from the local SmolLM2 GGUF.

Writes (all under tests/golden/fixtures/):
  core_tokens.json   tokenizer battery (reference ids from a Hugging Face `tokenizers.Tokenizer`
                     built from the GGUF vocab/merges), cross-checked against transformers'
                     own GGUF tokenizer and llama.cpp (llama-cpp-python); chat-template renders.
  core_logits.json   fp32 transformers forward passes: top-20 logits at every position,
                     greedy continuations with top-2 gaps, config, layer probe.
  logits_<name>.f32  full last-position logits (49152 little-endian float32) for 3 prompts.

Nothing here is run by CI; CI only reads the committed fixtures.
Run:  .venv-ref/bin/python tests/reference/make_core_fixtures.py [--no-llama-cpp]
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_PATH = MODEL_DIR / MODEL_NAME
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
OUT = REPO / "tests" / "golden" / "fixtures"

N_SPECIAL = 17  # ids 0..16 are CONTROL / special added tokens
EOS_ID = 2
TOPK = 20
GREEDY_STEPS = 32

# --------------------------------------------------------------------------------------------
# Tokenizer battery. (name, text). Order is the fixture order.
# --------------------------------------------------------------------------------------------
TOKEN_CASES = [
    # docs/FORMATS.md §4.4 smoke strings
    ("smoke_capital_france", "The capital of France is"),
    ("smoke_hello_we_can_use", "Hello, we can use"),
    ("smoke_newline", "\n"),
    ("smoke_hello_world_123", "Hello world! 123"),
    ("smoke_multiple_spaces", "  multiple   spaces"),
    ("smoke_cafe", "Café déjà vu."),
    ("smoke_system_prompt", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    # plain ASCII
    ("ascii_pangram", "The quick brown fox jumps over the lazy dog."),
    ("ascii_mixed_case", "HELLO World hElLo wORLD"),
    ("ascii_leading_space_word", " hello"),
    # digits
    ("digits_pi", "3.14159"),
    ("digits_million", "1000000"),
    ("digits_in_sentence", "In 2024, prices rose 15% to $1,299.99 (room 101)."),
    ("digits_unicode", "Arabic-Indic \u0663\u0664\u0665, fullwidth \uff11\uff12\uff13, superscript x\u00b2\u00b3, roman \u216b, fractions \u00bd \u00be"),
    ("digits_after_space_runs", "x  1  22   333"),
    ("digits_indented", "    42"),
    ("digits_after_newline_indent", "a\n  1"),
    ("digits_after_tabs", "\t\t7"),
    ("digits_mixed_alnum", "v1.2.3 a1b2 (7) 1\u00a0 2"),
    # whitespace
    ("ws_trailing_spaces", "trailing spaces   "),
    ("ws_only_spaces", "     "),
    ("ws_single_space", " "),
    ("ws_empty", ""),
    ("ws_newlines_triple", "\n\n\n"),
    ("ws_blank_lines", "line one\n\nline two\n"),
    ("ws_crlf", "a\r\nb\r\n"),
    ("ws_tabs", "\tindented\twith\ttabs"),
    ("ws_mixed", "\t \n x"),
    ("ws_spaces_before_newline", "end of line   \nnext"),
    ("ws_space_newline_space", "a \n\n b \n "),
    # accents / scripts
    ("latin_german", "Größe, Übermaß und Straße"),
    ("cjk_chinese", "你好，世界！这是一个测试。"),
    ("cjk_japanese", "日本語のテキストとカタカナ、ひらがな。"),
    ("cjk_korean", "안녕하세요, 세계! 한국어 텍스트입니다."),
    ("cyrillic_russian", "Привет, мир! Как дела?"),
    ("rtl_arabic", "مرحبا بالعالم"),
    ("rtl_hebrew", "שלום עולם"),
    ("rtl_mixed", "Hello שלום 123 مرحبا!"),
    # emoji
    ("emoji_simple", "I love 🍕 and 🎉!"),
    ("emoji_zwj_family", "Family: 👨\u200d👩\u200d👧\u200d👦 done"),
    ("emoji_skin_tone_heart", "thumbs 👍🏽 heart ❤️ ok"),
    ("emoji_flags", "Flags: 🇺🇸🇫🇷🇯🇵"),
    # contractions
    ("contractions", "I'm, you're, they'll, it's, DON'T"),
    ("contractions_more", "We've he'd she's can't won't Y'ALL'LL 'tis"),
    ("apostrophe_curly", "it\u2019s \u2018quoted\u2019 \u201cdouble\u201d"),
    # special-token text
    ("special_chat_turn", "<|im_start|>user\nHi<|im_end|>\n"),
    ("special_many", "<|endoftext|><repo_name>x<file_sep><empty_output>"),
    ("special_glued", "abc<|im_end|>def"),
    ("special_spaced", " <|im_start|> assistant <|im_end|> "),
    ("special_partial", "<|im_start| <|im_end|>> <im_end> <|IM_END|>"),
    # code
    ("code_python", "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"),
    ("code_c", "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}"),
    ("code_json", "{\"key\": [1, 2.5, true, null], \"s\": \"a\\\"b\"}"),
    ("code_url", "https://example.com/path?q=1&r=two#frag"),
    # paragraph / punctuation
    ("paragraph",
     "Well... what now?! The committee (after much debate) decided: \"No more delays\" -- "
     "effective immediately; see section 4.2(b) [draft] & {appendix}. Questions? E-mail "
     "info@example.org or call +1-555-0100."),
    ("punct_runs", "Wait!!! ??? ... --- <tag/> @user #hash ~~~ ``` ***"),
    ("repeated_letters", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    # unusual unicode
    ("unicode_combining", "e\u0301 a\u0308 n\u0303 Z\u0335\u0322a\u0336lgo"),
    ("unicode_nbsp", "100\u00a0km and\u00a0more"),
    ("unicode_ideographic_space", "全角\u3000スペース\u3000end"),
    ("unicode_zero_width", "zero\u200bwidth\u200djoiner\ufeffbom"),
    ("unicode_math", "x\u00b2 + y\u00b2 = z\u00b2, \u2211\u1d62 a\u1d62 \u2264 \u221e"),
    ("unicode_control", "bell\x07 esc\x1b[0m del\x7f end"),
    # bytes whose byte-level symbol is NOT in the vocab (0x04 0x06 0x13 0x14 0x16 0x1d 0xc0 0xc1 0xf1 0xf2
    # 0xf5-0xff): silently dropped by both HF (before merging) and llama.cpp (after merging)
    ("missing_byte_controls", "a\x04b =\x04= \x13\x14\x16\x1d!"),
    ("missing_byte_plane4", "\U00042019\U00042019"),
]
# cases whose text contains bytes with no vocab symbol: decode(ids) cannot reproduce the text
NO_ROUNDTRIP = {"missing_byte_controls", "missing_byte_plane4"}

CHAT_RENDER_CASES = [
    ("one_turn_gen", [{"role": "user", "content": "Hi"}], True),
    ("one_turn_nogen", [{"role": "user", "content": "Hi"}], False),
    ("capital_question_gen", [{"role": "user", "content": "What is the capital of France?"}], True),
    ("with_system_gen", [{"role": "system", "content": "You are a terse assistant."},
                         {"role": "user", "content": "Name a prime number."}], True),
    ("multi_turn_gen", [{"role": "user", "content": "Hello!"},
                        {"role": "assistant", "content": "Hi! How can I help you today?"},
                        {"role": "user", "content": "Tell me a joke."}], True),
    ("multi_turn_system_nogen", [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}], False),
    ("content_with_special_text_gen", [{"role": "user", "content": "Say <|im_end|> please\n"}], True),
    ("empty_user_gen", [{"role": "user", "content": ""}], True),
]

PARAGRAPH_PROMPT = (
    "The history of astronomy is one of the oldest of the natural sciences. Early cultures "
    "identified celestial objects with gods and spirits, and related these objects and their "
    "movements to phenomena such as rain, drought, seasons, and tides. It is generally believed"
)

LOGIT_PROMPTS = [
    # name, text (or None = chat render), save full last logits, greedy
    ("capital", "The capital of France is", True, True),
    ("paragraph", PARAGRAPH_PROMPT, True, False),
    ("french", "Le chat est assis sur le tapis et regarde la pluie tomber dehors.", False, False),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n    return",
     False, True),
    ("chat", None, True, True),
]
CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f7(x):
    """float rounded to 7 significant digits (shortest repr afterwards)."""
    return float(f"{float(x):.7g}")


def compact_dumps(obj, indent=1, level=0):
    """JSON with indentation, but lists of scalars / lists of short scalar lists on one line."""
    pad = " " * (indent * level)
    pad1 = " " * (indent * (level + 1))

    def scalar(v):
        return not isinstance(v, (dict, list))

    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {compact_dumps(v, indent, level + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(scalar(v) for v in obj) or all(isinstance(v, list) and all(scalar(x) for x in v) for v in obj):
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        items = [pad1 + compact_dumps(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path, obj):
    text = compact_dumps(obj) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def versions(llama_cpp_version):
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "numpy": np.__version__,
        "llama_cpp_python": llama_cpp_version,
    }


def _dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# GGUF reading and the reference tokenizer
# --------------------------------------------------------------------------------------------
def read_gguf_tokenizer_fields(reader):
    f = reader.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    merges = f["tokenizer.ggml.merges"].contents()
    token_type = f["tokenizer.ggml.token_type"].contents()
    meta = {}
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"):
        if key in f:
            meta[key] = f[key].contents()
    return tokens, merges, token_type, meta


def build_reference_tokenizer(tokens, merges, token_type):
    """SmolLM2's tokenizer.json structure rebuilt from the GGUF vocab + merges:
    no normalizer; pre_tokenizer = Sequence[Digits(individual), ByteLevel(no prefix, regex)];
    BPE (no byte fallback, no unk needed for a full byte alphabet); ByteLevel decoder;
    ids 0..16 as special added tokens (normalized=False, no lstrip/rstrip)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token strings in GGUF vocab"
    pairs = []
    for m in merges:
        a, b = m.split(" ")
        pairs.append((a, b))
    bpe = models.BPE(vocab=vocab, merges=pairs, byte_fallback=False, unk_token=None,
                     dropout=None, fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = []
    for i in range(N_SPECIAL):
        assert token_type[i] == 3, f"id {i} is not CONTROL in GGUF"
        specials.append(AddedToken(tokens[i], special=True, normalized=False, lstrip=False,
                                   rstrip=False, single_word=False))
    tok.add_special_tokens(specials)
    for i in range(N_SPECIAL):
        assert tok.token_to_id(tokens[i]) == i, f"special {tokens[i]!r} did not keep id {i}"
    assert all(t == 1 for t in token_type[N_SPECIAL:]), "unexpected non-NORMAL token type past id 16"
    assert tok.get_vocab_size(with_added_tokens=True) == len(tokens)
    return tok


def build_reference_tokenizer_ignore_merges(tokens, merges):
    """Side check only: same as reference but BPE(ignore_merges=True)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, byte_fallback=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in range(N_SPECIAL)])
    return tok


def sweep():
    """Exploratory, writes nothing: every code point U+0001..U+10FFFF (no surrogates) in the probe
    'a' c 'b ' c ' ' c '1 ' c c '\\n', reference tokenizer vs llama.cpp. ~3 min on 2 cores."""
    import llama_cpp
    import unicodedata
    reader = gguf.GGUFReader(str(MODEL_PATH))
    tokens, merges, token_type, _ = read_gguf_tokenizer_fields(reader)
    ref = build_reference_tokenizer(tokens, merges, token_type)
    llm = llama_cpp.Llama(model_path=str(MODEL_PATH), vocab_only=True, verbose=False)
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    bad = []
    for i in range(0, len(cps), 20000):
        chunk = cps[i:i + 20000]
        texts = ["a" + chr(c) + "b " + chr(c) + " " + chr(c) + "1 " + chr(c) + chr(c) + "\n" for c in chunk]
        for c, t, e in zip(chunk, texts, ref.encode_batch(texts, add_special_tokens=False)):
            if llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) != e.ids:
                bad.append(c)
    planes = {}
    for c in bad:
        planes[c >> 16] = planes.get(c >> 16, 0) + 1
    cats = {}
    for c in bad:
        k = unicodedata.category(chr(c))
        cats[k] = cats.get(k, 0) + 1
    print(f"code points probed: {len(cps)}; disagreeing: {len(bad)}")
    print(f"by plane: {planes}; by category (python unicodedata {unicodedata.unidata_version}): {cats}")
    print("first few:", [hex(c) for c in bad[:10]])


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip the llama-cpp-python cross-check")
    ap.add_argument("--sweep", action="store_true",
                    help="only run the exhaustive code-point sweep (reference vs llama.cpp), write nothing")
    args = ap.parse_args()
    if args.sweep:
        return sweep()

    t_start = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic summation order regardless of the machine's core count
    torch.use_deterministic_algorithms(True)

    print(f"model: {MODEL_PATH}")
    sha = sha256_file(MODEL_PATH)
    if sha != MODEL_SHA256:
        sys.exit(f"sha256 mismatch: {sha} != {MODEL_SHA256}")

    reader = gguf.GGUFReader(str(MODEL_PATH))
    tokens, merges, token_type, tmeta = read_gguf_tokenizer_fields(reader)
    chat_template = tmeta["tokenizer.chat_template"]
    assert tmeta["tokenizer.ggml.model"] == "gpt2" and tmeta["tokenizer.ggml.pre"] == "smollm"
    ref = build_reference_tokenizer(tokens, merges, token_type)
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    _b2u = bytes_to_unicode()
    _tokset = set(tokens)
    missing_bytes = [b for b in range(256) if _b2u[b] not in _tokset]
    ref_im = build_reference_tokenizer_ignore_merges(tokens, merges)

    # transformers' own GGUF tokenizer
    from transformers import AutoTokenizer, AutoModelForCausalLM
    hf_tok = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_NAME)
    hf_pre = str(hf_tok.backend_tokenizer.pre_tokenizer)
    assert hf_tok.chat_template == chat_template

    # llama.cpp
    llama_cpp_version = None
    llm = None
    if not args.no_llama_cpp:
        import llama_cpp
        llama_cpp_version = llama_cpp.__version__
        llm = llama_cpp.Llama(model_path=str(MODEL_PATH), vocab_only=True, verbose=False)

    def ref_ids(text):
        return ref.encode(text, add_special_tokens=False).ids

    # ---------------------------------------------------------------- token cases
    cases = []
    disagreements = []
    names = set()
    for name, text in TOKEN_CASES:
        assert name not in names, name
        names.add(name)
        enc = ref.encode(text, add_special_tokens=False)
        ids = enc.ids
        case = {"name": name, "text": text, "text_utf8_hex": text.encode("utf-8").hex(),
                "parse_special": True, "ids": ids, "pieces": enc.tokens}
        # round trip
        dec = ref.decode(ids, skip_special_tokens=False)
        if name in NO_ROUNDTRIP:
            assert dec != text
            case["decode_roundtrip"] = False
            case["decoded"] = dec
        else:
            assert dec == text, f"{name}: decode round trip failed: {dec!r} != {text!r}"
        hf_ids = hf_tok.encode(text, add_special_tokens=False)
        if hf_ids != ids:
            case["transformers_gguf_ids"] = hf_ids
            disagreements.append(("transformers_gguf", name, text, ids, hf_ids))
        im_ids = ref_im.encode(text, add_special_tokens=False).ids
        if im_ids != ids:
            disagreements.append(("ignore_merges_variant", name, text, ids, im_ids))
        if llm is not None:
            lc_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if lc_ids != ids:
                case["llama_cpp_ids"] = lc_ids
                disagreements.append(("llama_cpp", name, text, ids, lc_ids))
        notes = []
        if "transformers_gguf_ids" in case:
            notes.append("transformers_gguf_ids is wrong: transformers 5.24 builds the GGUF 'smollm' tokenizer with "
                         "the plain GPT-2 ByteLevel pre-tokenizer (no Digits split), so a whitespace run or a "
                         "non-ASCII byte-level prefix before a digit is merged differently")
        if "llama_cpp_ids" in case:
            notes.append("llama_cpp_ids is wrong: a byte with no vocab symbol is dropped; HF drops it before BPE "
                         "merging (neighbours can merge across it), llama.cpp merges first and drops it after")
        if notes:
            case["note"] = "; ".join(notes)
        cases.append(case)

    # smoke vectors from docs/FORMATS.md §4.4 (third-party; reproduced exactly, see NOTES.md)
    smoke_expected = {
        "smoke_capital_france": [504, 3575, 282, 4649, 314],
        "smoke_hello_we_can_use": [19556, 28, 392, 416, 722],
        "smoke_newline": [198],
        "smoke_hello_world_123": [19556, 905, 17, 216, 33, 34, 35],
        "smoke_multiple_spaces": [216, 2701, 256, 5600],
        "smoke_cafe": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
        "smoke_system_prompt": [2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018,
                                411, 407, 19712, 8182],
    }
    smoke_mismatch = {c["name"]: c["ids"] for c in cases
                      if c["name"] in smoke_expected and smoke_expected[c["name"]] != c["ids"]}

    # ---------------------------------------------------------------- chat renders
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    jenv = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    jtmpl = jenv.from_string(chat_template)
    chat_renders = []
    chat_notes = []
    for name, messages, gen in CHAT_RENDER_CASES:
        rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        plain = jtmpl.render(messages=messages, add_generation_prompt=gen)
        assert rendered == plain, f"chat render {name}: transformers != plain jinja2"
        ids = ref_ids(rendered)
        hf_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
        if hasattr(hf_ids, "keys"):
            hf_ids = hf_ids["input_ids"]
        hf_ids = list(hf_ids)
        entry = {"name": name, "messages": messages, "add_generation_prompt": gen,
                 "rendered": rendered, "ids": ids}
        if hf_ids != ids:
            entry["transformers_apply_chat_template_ids"] = hf_ids
            chat_notes.append(f"{name}: apply_chat_template(tokenize=True) ids differ from reference")
        if llm is not None:
            lc = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
            if lc != ids:
                entry["llama_cpp_ids"] = lc
                chat_notes.append(f"{name}: llama.cpp ids differ from reference")
        chat_renders.append(entry)

    # ---------------------------------------------------------------- model
    print("loading model (fp32, dequantized by transformers) ...")
    model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_NAME,
                                                 dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    rope_theta = None
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rope_theta = rp.get("rope_theta")
    if rope_theta is None:
        rope_theta = getattr(cfg, "rope_theta", None)
    config_rec = {
        "model_type": cfg.model_type,
        "architectures_class": type(model).__name__,
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
        "vocab_size": cfg.vocab_size,
        "rope_theta": rope_theta,
        "rope_scaling": rp.get("rope_type") if isinstance(rp, dict) else getattr(cfg, "rope_scaling", None),
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": cfg.hidden_act,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "dtype": str(next(model.parameters()).dtype),
        "attn_implementation": model.config._attn_implementation,
    }
    expect = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
              "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
    for k, v in expect.items():
        assert config_rec[k] == v, f"config {k}={config_rec[k]} expected {v}"
    assert rope_theta == 100000.0, rope_theta
    assert abs(cfg.rms_norm_eps - 1e-5) < 1e-9, cfg.rms_norm_eps
    assert config_rec["dtype"] == "torch.float32"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"

    # weight checks: transformers' tensors == gguf dequant (+ reverse permutation of q/k rows)
    tens = {t.name: t for t in reader.tensors}

    def deq(name):
        t = tens[name]
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), t.tensor_type.name

    def unpermute(w, n_head):
        # GGUF row h*d + 2j + s  <-  HF row h*d + s*half + j
        out_f, in_f = w.shape
        d = out_f // n_head
        return w.reshape(n_head, d // 2, 2, in_f).transpose(1, 2).reshape(out_f, in_f)

    weight_checks = {}
    sd = model.state_dict()
    for layer in (0, 17, 29):
        wq, tq = deq(f"blk.{layer}.attn_q.weight")
        wk, tk = deq(f"blk.{layer}.attn_k.weight")
        wv, tv = deq(f"blk.{layer}.attn_v.weight")
        hq = sd[f"model.layers.{layer}.self_attn.q_proj.weight"]
        hk = sd[f"model.layers.{layer}.self_attn.k_proj.weight"]
        hv = sd[f"model.layers.{layer}.self_attn.v_proj.weight"]
        assert torch.equal(hq, unpermute(wq, 9)), f"q_proj layer {layer} != unpermuted GGUF"
        assert torch.equal(hk, unpermute(wk, 3)), f"k_proj layer {layer} != unpermuted GGUF"
        assert not torch.equal(hq, wq), "q_proj equals the *permuted* GGUF rows?!"
        assert torch.equal(hv, wv)
        weight_checks[f"layer{layer}"] = {"q": tq, "k": tk, "v": tv}
    we, te = deq("token_embd.weight")
    assert torch.equal(sd["model.embed_tokens.weight"], we)
    wn, tn = deq("output_norm.weight")
    assert torch.equal(sd["model.norm.weight"], wn)
    weight_checks["token_embd"] = te
    weight_checks["summary"] = ("q_proj/k_proj (layers 0,17,29) are bit-equal to gguf.quants.dequantize() of "
                                "attn_q/attn_k with rows reverse-permuted (HF row h*64+s*32+j = GGUF row "
                                "h*64+2j+s); v_proj, token_embd and output_norm bit-equal to the dequantized "
                                "GGUF tensors; lm_head shares storage with embed_tokens.")

    # ---------------------------------------------------------------- logits
    print("fp32 forward passes ...")
    model64 = None
    chat_text = hf_tok.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True, tokenize=False)

    def forward_logits(m, ids):
        with torch.no_grad():
            out = m(input_ids=torch.tensor([ids]), use_cache=False)
        return out.logits[0]

    def greedy(ids, steps):
        """Manual greedy loop with the KV cache, argmax over raw fp32 logits, never stopping at EOS."""
        out_ids, gaps, top_logits = [], [], []
        with torch.no_grad():
            res = model(input_ids=torch.tensor([ids]), use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1]
            for step in range(steps):
                top2 = torch.topk(logits, 2)
                nxt = int(top2.indices[0])
                out_ids.append(nxt)
                gaps.append(f7(top2.values[0] - top2.values[1]))
                top_logits.append([[int(top2.indices[0]), f7(top2.values[0])],
                                   [int(top2.indices[1]), f7(top2.values[1])]])
                if step == steps - 1:
                    break
                res = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1]
        return out_ids, gaps, top_logits

    def greedy_nocache(ids, steps):
        cur = list(ids)
        outs = []
        with torch.no_grad():
            for _ in range(steps):
                lg = model(input_ids=torch.tensor([cur]), use_cache=False).logits[0, -1]
                nxt = int(torch.argmax(lg))
                outs.append(nxt)
                cur.append(nxt)
        return outs

    prompts_out = []
    logit_files = {}
    greedy_summary = []
    for name, text, save_full, do_greedy in LOGIT_PROMPTS:
        if text is None:
            text = chat_text
        ids = ref_ids(text)
        assert 4 <= len(ids) <= 64, (name, len(ids))
        hf_ids = hf_tok.encode(text, add_special_tokens=False)
        assert hf_ids == ids, f"prompt {name}: transformers tokenizer disagrees with reference"
        logits = forward_logits(model, ids)
        assert logits.dtype == torch.float32 and logits.shape == (len(ids), 49152)
        assert torch.isfinite(logits).all()
        top = torch.topk(logits, TOPK, dim=-1)
        top20 = [[[int(i), f7(v)] for i, v in zip(top.indices[p].tolist(), top.values[p].tolist())]
                 for p in range(len(ids))]
        lsm = torch.log_softmax(logits.double(), dim=-1)
        rec = {"name": name, "text": text, "ids": ids, "n_tokens": len(ids)}
        if name == "chat":
            rec["messages"] = CHAT_MESSAGES
            rec["add_generation_prompt"] = True
        rec["argmax"] = [int(x) for x in torch.argmax(logits, dim=-1).tolist()]
        rec["argmax_logprob"] = [f7(lsm[p, rec["argmax"][p]]) for p in range(len(ids))]
        rec["top20"] = top20
        last = logits[-1].contiguous().numpy().astype("<f4")
        rec["last_logits_stats"] = {"min": f7(last.min()), "max": f7(last.max()),
                                    "mean": f7(last.astype(np.float64).mean()),
                                    "l2": f7(np.sqrt((last.astype(np.float64) ** 2).sum()))}
        if save_full:
            fname = f"logits_{name}.f32"
            (OUT / fname).write_bytes(last.tobytes())
            logit_files[fname] = len(last.tobytes())
            rec["last_logits_file"] = fname
            rec["last_logits_sha256"] = hashlib.sha256(last.tobytes()).hexdigest()
        # fp64 comparison (informational: how far fp32 itself is from exact arithmetic on the same weights)
        if model64 is None:
            import copy
            model64 = copy.deepcopy(model).to(torch.float64)
            model64.eval()
        l64 = forward_logits(model64, ids)
        rec["fp32_vs_fp64_max_abs_logit_diff"] = f7((logits.double() - l64).abs().max())
        rec["fp32_vs_fp64_last_max_abs_logit_diff"] = f7((logits[-1].double() - l64[-1]).abs().max())
        if do_greedy:
            g_ids, gaps, g_top = greedy(ids, GREEDY_STEPS)
            g_nc = greedy_nocache(ids, GREEDY_STEPS)
            # transformers' generate() up to its own EOS stop must be a prefix of ours
            with torch.no_grad():
                gen = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=GREEDY_STEPS,
                                     pad_token_id=EOS_ID, eos_token_id=EOS_ID)[0, len(ids):].tolist()
            eos_pos = [i for i, t in enumerate(g_ids) if t == EOS_ID]
            first_eos = eos_pos[0] if eos_pos else None
            upto = g_ids[: first_eos + 1] if first_eos is not None else g_ids
            rec["greedy"] = {
                "n_new": GREEDY_STEPS,
                "method": "manual loop, KV cache, argmax of raw fp32 logits, does not stop at EOS",
                "ids": g_ids,
                "eos_positions": eos_pos,
                "first_eos": first_eos,
                "text_until_eos": ref.decode(upto[:-1] if first_eos is not None else upto,
                                             skip_special_tokens=False),
                "text_full": ref.decode(g_ids, skip_special_tokens=False),
                "top2_gap": gaps,
                "top2": g_top,
                "matches_no_cache_recompute": g_nc == g_ids,
                "generate_ids": gen,
                "generate_is_prefix": g_ids[: len(gen)] == gen,
            }
            if g_nc != g_ids:
                rec["greedy"]["no_cache_ids"] = g_nc
            greedy_summary.append((name, rec["greedy"]))
        prompts_out.append(rec)

    # layer probe for the short prompt (hidden states at the last position)
    probe_ids = prompts_out[0]["ids"]
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([probe_ids]), output_hidden_states=True, use_cache=False).hidden_states
    probe = []
    for li, h in enumerate(hs):
        v = h[0, -1]
        probe.append({"index": li, "l2": f7(v.norm()), "first8": [f7(x) for x in v[:8].tolist()]})

    # sanity: chat greedy should mention Paris
    chat_g = [g for n, g in greedy_summary if n == "chat"][0]
    cap_g = [g for n, g in greedy_summary if n == "capital"][0]
    sane = "paris" in chat_g["text_until_eos"].lower() and "paris" in cap_g["text_full"].lower()

    # ---------------------------------------------------------------- write
    ver = versions(llama_cpp_version)
    tok_notes = (
        "ids come from a Hugging Face tokenizers.Tokenizer rebuilt from the GGUF's tokenizer.ggml.tokens/merges "
        "with SmolLM2's tokenizer.json pipeline: no normalizer, pre_tokenizer Sequence[Digits(individual_digits="
        "true), ByteLevel(add_prefix_space=false, trim_offsets=true, use_regex=true)], BPE (byte_fallback=false, "
        "ignore_merges=false), ByteLevel decoder, ids 0-16 as special AddedTokens (normalized=false, no "
        "lstrip/rstrip). Special-token text is always matched (parse_special=true); no BOS is added. "
        "'pieces' are the byte-level token strings; 'text_utf8_hex' is the exact input. "
        "'llama_cpp_ids' (llama-cpp-python Llama(vocab_only=True).tokenize(add_bos=False, special=True)) and "
        "'transformers_gguf_ids' (AutoTokenizer.from_pretrained(dir, gguf_file=...)) appear only where they "
        "differ from 'ids'; the reference 'ids' are ground truth in every such case (see NOTES.md). "
        "chat_renders come from transformers' apply_chat_template with the GGUF's tokenizer.chat_template "
        "(checked equal to a plain jinja2 render); their 'ids' are reference-tokenizer ids of 'rendered'. "
        "vocab_missing_byte_symbols lists the byte values whose byte-level symbol is absent from the vocab: HF "
        "BPE (unk_token=None) silently drops such a symbol before merging, so decode(ids) != text for those "
        "cases (decode_roundtrip=false)."
    )
    core_tokens = {
        "model_sha256": MODEL_SHA256,
        "model_file": MODEL_NAME,
        "versions": ver,
        "notes": tok_notes,
        "gguf_tokenizer_metadata": {k: v for k, v in tmeta.items()},
        "special_tokens": [[i, tokens[i]] for i in range(N_SPECIAL)],  # [id, text], all CONTROL
        "vocab_missing_byte_symbols": missing_bytes,
        "cases": cases,
        "chat_renders": chat_renders,
    }
    core_logits = {
        "model_sha256": MODEL_SHA256,
        "model_file": MODEL_NAME,
        "versions": ver,
        "notes": (
            "transformers AutoModelForCausalLM.from_pretrained(models/, gguf_file=..., dtype=float32, "
            "attn_implementation='eager'): every GGUF tensor is dequantized to fp32 with gguf-py "
            "(Q4_1: (d*q)+m, Q8_0: q*d, both in fp32, no FMA) and attn_q/attn_k rows are reverse-permuted to the HF "
            "rotate-half layout. CPU, torch.set_num_threads(1), deterministic algorithms, no BOS. Logits are "
            "rounded to 7 significant digits in JSON; logits_<name>.f32 hold the exact fp32 last-position "
            "logits (49152 little-endian float32, row of the last prompt token). 'fp32_vs_fp64_*' = max abs "
            "difference between this fp32 run and a float64 run of the same weights: a floor for how closely "
            "any fp32 implementation can be expected to agree. greedy.top2_gap = top1 - top2 logit at each "
            "generated step (small gaps = near-ties where a different summation order may flip the token). "
            "layer_probe: hidden_states[i] at the last position of prompt 'capital' (i=0 embedding output, "
            "i=1..29 after decoder layer i-1, i=30 = after layer 29 AND the final RMSNorm, as HF returns it)."
        ),
        "config": config_rec,
        "weight_checks": weight_checks,
        "prompts": prompts_out,
        "layer_probe": {"prompt": "capital", "position": len(probe_ids) - 1, "hidden_states": probe},
        "sanity": {"chat_greedy_mentions_paris": sane},
    }
    n_tok = write_json(OUT / "core_tokens.json", core_tokens)
    n_log = write_json(OUT / "core_logits.json", core_logits)

    # ---------------------------------------------------------------- summary
    print()
    print("=== summary ===")
    print("versions:", json.dumps(ver))
    print("config:", json.dumps(config_rec))
    print(f"token cases: {len(cases)}, chat renders: {len(chat_renders)}")
    by_kind = {}
    for kind, name, *_ in disagreements:
        by_kind.setdefault(kind, []).append(name)
    for kind in ("transformers_gguf", "llama_cpp", "ignore_merges_variant"):
        print(f"disagreements vs reference [{kind}]: {by_kind.get(kind, []) or 'none'}")
    for kind, name, text, a, b in disagreements:
        print(f"  {kind} {name} {text!r}\n    ref   {a}\n    other {b}")
    if chat_notes:
        print("chat render notes:", chat_notes)
    print("docs/FORMATS.md §4.4 smoke vectors:", "all match" if not smoke_mismatch else f"MISMATCH {smoke_mismatch}")
    for name, g in greedy_summary:
        print(f"greedy[{name}]: first_eos={g['first_eos']} min_gap={min(g['top2_gap'])} "
              f"nocache_match={g['matches_no_cache_recompute']} generate_prefix={g['generate_is_prefix']}")
        print(f"   until EOS: {g['text_until_eos']!r}")
        print(f"   full 32  : {g['text_full']!r}")
    for p in prompts_out:
        print(f"prompt {p['name']}: {p['n_tokens']} tokens, fp32-vs-fp64 max|dlogit| "
              f"{p['fp32_vs_fp64_max_abs_logit_diff']}, last argmax {p['argmax'][-1]}")
    print("sanity (Paris):", sane)
    print(f"wrote core_tokens.json {n_tok} B, core_logits.json {n_log} B, "
          + ", ".join(f"{k} {v} B" for k, v in logit_files.items()))
    print(f"total {n_tok + n_log + sum(logit_files.values())} B in {time.time() - t_start:.0f} s")
    if not sane:
        sys.exit("sanity check failed: greedy continuation does not mention Paris")


if __name__ == "__main__":
    main()
