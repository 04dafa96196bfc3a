#!/usr/bin/env python3
"""Produce tests/golden/fixtures/chat_templates.json: real chat templates rendered by jinja2 the
way Hugging Face transformers' apply_chat_template renders them, for the C interpreter
(core/text/jinja_*.c) to match byte for byte (tests/golden/test_chat_templates_golden.c).

Templates: the files of llama.cpp's collection that `make vocab` puts in models/vocab/templates
(not committed; the fixture records each file's sha256), SmolLM2's from the default model's GGUF
metadata, the Llama 2 chat template (below; ggml-vocab-llama-spm.gguf carries none) and Gemma 3's
(templates/gemma-3.jinja in this repository: the Gemma 3 270M base GGUF carries none, and
llama.cpp's collection has Gemma 2's and Gemma 4's only).

The environment is transformers' (chat_template_utils.py, _compile_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
its tojson filter (json.dumps with ensure_ascii=False), raise_exception and strftime_now globals,
and render(messages=..., tools=None, documents=None, add_generation_prompt=..., bos_token=...,
eos_token=...). strftime_now reads a fixed clock (NOW, UTC) so the fixture is reproducible.

Needs only Jinja2 (pinned in requirements.txt):
  python3 -m venv /tmp/venv-jinja && /tmp/venv-jinja/bin/pip install Jinja2==3.1.6
  make vocab && /tmp/venv-jinja/bin/python tests/reference/make_chat_fixtures.py
"""

import hashlib
import json
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "models" / "vocab" / "templates"
SMOLLM2 = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = REPO / "tests" / "golden" / "fixtures" / "chat_templates.json"
NOW = 1741910400  # 2025-03-14 00:00:00 UTC, strftime_now's clock

# The Llama 2 chat template, as published in meta-llama/Llama-2-7b-chat-hf's
# tokenizer_config.json (transcribed here, not fetched: the same text appears verbatim in many
# projects that pin it). Mistral 7B Instruct's [INST] format is the same family.
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# name, where the text comes from, bos_token, eos_token (the families' tokenizer_config values)
TARGETS = [
    ("SmolLM2-135M-Instruct", "gguf", "<|im_start|>", "<|im_end|>"),
    ("meta-llama-Llama-3.1-8B-Instruct", "file", "<|begin_of_text|>", "<|eot_id|>"),
    ("meta-llama-Llama-3.2-3B-Instruct", "file", "<|begin_of_text|>", "<|eot_id|>"),
    ("Qwen-Qwen2.5-7B-Instruct", "file", None, "<|im_end|>"),
    ("microsoft-Phi-3.5-mini-instruct", "file", "<s>", "<|endoftext|>"),
    ("mistralai-Mistral-Nemo-Instruct-2407", "file", "<s>", "</s>"),
    ("google-gemma-2-2b-it", "file", "<bos>", "<eos>"),
    ("HuggingFaceTB-SmolLM3-3B", "file", None, "<|im_end|>"),
    ("Llama-2-chat", "inline", "<s>", "</s>"),
    ("gemma-3", "repo", "<bos>", "<eos>"),
]


def m(role, content):
    return {"role": role, "content": content}


# name, messages, add_generation_prompt
CASES = [
    ("system_user", [m("system", "You are terse."), m("user", "What is 2+2?")], True),
    ("system_user_nogen", [m("system", "You are terse."), m("user", "What is 2+2?")], False),
    ("user_only", [m("user", "Hello!")], True),
    ("user_only_nogen", [m("user", "Hello!")], False),
    ("multi_turn", [m("user", "Hi"), m("assistant", "Hello! How can I help?"),
                    m("user", "Tell me a joke.")], True),
    ("multi_turn_system", [m("system", "Be kind."), m("user", "Hi"), m("assistant", "Hello."),
                           m("user", "Bye"), m("assistant", "Goodbye!")], False),
    ("long", [m("user", f"question {i}") if i % 2 == 0 else m("assistant", f"answer {i}")
              for i in range(9)], True),
    ("unicode", [m("system", "Réponds en français. 日本語も。"),
                 m("user", "Grüße 🌍 — naïve café\u00a0"), m("assistant", "ça va ✓"),
                 m("user", "\u3000ok?\u2003")], True),
    ("empty_content", [m("user", "")], True),
    ("empty_system", [m("system", ""), m("user", "hi")], True),
    ("whitespace", [m("system", "  padded system \n"), m("user", "\n\n  spaced out  \n"),
                    m("assistant", "\tanswer\n"), m("user", " x ")], True),
    ("specials", [m("user", "quotes ' \" backslash \\ braces {{ x }} {% if %} <|im_end|> </s>"),
                  m("assistant", "json {\"a\": [1, 2]}\nline2"), m("user", "tab\there")], True),
    ("consecutive_users", [m("user", "one"), m("user", "two")], True),
    ("assistant_first", [m("assistant", "I start."), m("user", "ok")], True),
    ("system_only", [m("system", "Only a system prompt.")], True),
    ("tool_turns", [m("user", "Weather in Paris?"), m("assistant", "Let me check."),
                    m("tool", "{\"temp\": 21}"), m("tool", "sunny"),
                    m("user", "Thanks")], True),
    ("unknown_role", [m("user", "hi"), m("developer", "be brief"), m("user", "ok")], True),
    ("think_switch", [m("system", "Be brief. /no_think"), m("user", "2+2?"),
                      m("assistant", "\n\n4")], True),
    ("no_messages", [], True),
]


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.fromtimestamp(NOW, tz=timezone.utc).strftime(fmt)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def gguf_string(path, key):
    """One string value of a GGUF's metadata (the few types the header walk needs)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        magic, version, _, n_kv = struct.unpack("<4sIQQ", f.read(24))
        assert magic == b"GGUF" and version >= 2, path

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n)

        def skip(t):
            if t == 8:
                string()
            elif t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                for _ in range(n):
                    skip(et)
            else:
                f.read(sizes[t])

        for _ in range(n_kv):
            k = string().decode()
            (t,) = struct.unpack("<I", f.read(4))
            if k == key and t == 8:
                return string().decode()
            skip(t)
    raise KeyError(key)


def source(name, kind):
    if kind == "gguf":
        return gguf_string(SMOLLM2, "tokenizer.chat_template"), str(SMOLLM2.relative_to(REPO))
    if kind == "inline":
        return LLAMA2_CHAT, None
    if kind == "repo":
        path = REPO / "templates" / f"{name}.jinja"
        return path.read_text(encoding="utf-8"), str(path.relative_to(REPO))
    path = TEMPLATES / f"{name}.jinja"
    return path.read_text(encoding="utf-8"), str(path.relative_to(REPO))


def render(env, text, bos, eos, msgs, gen):
    kwargs = {"messages": msgs, "tools": None, "documents": None, "add_generation_prompt": gen}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    try:
        return {"expected": env.from_string(text).render(**kwargs)}
    except jinja2.exceptions.UndefinedError as e:
        return {"error": str(e), "raised": False}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e), "raised": True}
    except (TypeError, ValueError, IndexError) as e:
        return {"error": f"{type(e).__name__}: {e}", "raised": False}


def main():
    env = environment()
    templates, cases = [], []
    for name, kind, bos, eos in TARGETS:
        text, path = source(name, kind)
        t = {"name": name, "sha256": hashlib.sha256(text.encode()).hexdigest(),
             "bos_token": bos, "eos_token": eos}
        if kind == "inline":
            t["text"] = text
        else:
            t["path"] = path
        templates.append(t)
        for case, msgs, gen in CASES:
            c = {"template": name, "case": case, "messages": msgs, "add_generation_prompt": gen}
            c.update(render(env, text, bos, eos, msgs, gen))
            cases.append(c)
    doc = {"generator": "tests/reference/make_chat_fixtures.py", "jinja2": jinja2.__version__,
           "now": NOW, "templates": templates, "cases": cases}
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for t in templates:
        mine = [c for c in cases if c["template"] == t["name"]]
        errs = [c["case"] for c in mine if "error" in c]
        print(f"{t['name']}: {len(mine)} cases, errors in {errs}")
    print(f"wrote {OUT.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
