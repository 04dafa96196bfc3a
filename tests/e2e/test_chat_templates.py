"""End-to-end chat templates: the chat route renders the GGUF's template (SmolLM2's ChatML) and a
--chat-template FILE exactly as a completion of the expected text would see it (same greedy
tokens, same prompt token count); a template's raise_exception is a 400 with its message; an
unreadable or unsupported --chat-template stops the start-up with the reason."""

import os
import subprocess
import sys

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("chat_templates", budget=150)
GGUF = None     # the model's own template
CUSTOM = None   # --chat-template FILE

# a template with filters, a namespace, loop variables and a raise; its rendering is easy to
# write by hand (expected() below)
CUSTOM_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' -%}
    {{- raise_exception('System role not supported by this template') -}}
{%- endif -%}
{%- set ns = namespace(turns=0) -%}
{%- for message in messages -%}
    {{ message.role | upper }} {{ loop.index }}: {{ message['content'] | trim }}{{ '\n' }}
    {%- set ns.turns = ns.turns + 1 -%}
{%- endfor -%}
{% if add_generation_prompt %}ASSISTANT {{ ns.turns + 1 }}:{% endif %}
"""

SMOL_SYS = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n")


def expected_custom(msgs):
    lines = "".join(f"{m['role'].upper()} {i + 1}: {m['content'].strip()}\n"
                    for i, m in enumerate(msgs))
    return lines + f"ASSISTANT {len(msgs) + 1}:"


def expected_chatml(msgs):
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    sys_turn = "" if msgs and msgs[0]["role"] == "system" else SMOL_SYS
    return sys_turn + turns + "<|im_start|>assistant\n"


def write(name, text):
    path = os.path.join(suite.tmp, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def setup():
    global GGUF, CUSTOM
    GGUF = suite.server(name="gguf-template").start()
    CUSTOM = suite.server(["--chat-template", write("custom.jinja", CUSTOM_TEMPLATE)],
                          name="custom-template").start()


def same_as_completion(server, msgs, prompt):
    """The chat answer equals the completion of prompt: same greedy text, same prompt tokens."""
    body = {"max_tokens": 8, "temperature": 0}
    chat = server.post("/v1/chat/completions", dict(body, messages=msgs))
    eq(chat.status, 200, f"chat {chat}")
    cmpl = server.post("/v1/completions", dict(body, prompt=prompt))
    eq(cmpl.status, 200, f"completion {cmpl}")
    c, p = chat.json(), cmpl.json()
    eq(c["usage"]["prompt_tokens"], p["usage"]["prompt_tokens"], "prompt tokens, chat vs text")
    eq(e2e.text_of(c), e2e.text_of(p), "greedy text, chat vs text")


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "  Hi  "}, {"role": "assistant", "content": "Hello! "},
     {"role": "user", "content": "Grüße 🌍, {{ not a tag }}"}],
]


@suite.test
def gguf_template_renders_chatml():
    for msgs in CONVERSATIONS + [[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi"}]]:
        same_as_completion(GGUF, msgs, expected_chatml(msgs))


@suite.test
def chat_template_file_renders():
    for msgs in CONVERSATIONS:
        same_as_completion(CUSTOM, msgs, expected_custom(msgs))


@suite.test
def raise_exception_is_a_400_with_its_message():
    r = CUSTOM.post("/v1/chat/completions", {"max_tokens": 4, "messages": [
        {"role": "system", "content": "x"}, {"role": "user", "content": "y"}]})
    check_error(r, 400, what="a template that raises")
    msg = r.json()["error"]["message"]
    check("System role not supported by this template" in msg, f"message {msg!r}")
    eq(CUSTOM.post("/v1/chat/completions", {"max_tokens": 1, "messages": CONVERSATIONS[0]}).status,
       200, "still serving after a refusal")


def refused_start(args, want):
    cmd = [e2e.ADAPTREE, "serve", "--host", "127.0.0.1", "--port", "0", "--no-registry",
           "-m", e2e.MODEL] + args
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=60 * e2e.SLOW, cwd=e2e.ROOT)
    except subprocess.TimeoutExpired:
        raise e2e.Fail(f"{args}: still running after 60 s, expected a refusal")
    err = p.stderr.decode("utf-8", "replace")
    check(p.returncode != 0, f"{args}: exit {p.returncode}, expected a failure")
    check(want in err, f"{args}: stderr {err[-400:]!r} lacks {want!r}")


@suite.test
def bad_chat_template_refused_at_start_up():
    missing = os.path.join(suite.tmp, "missing.jinja")
    refused_start(["--chat-template", missing],
                  f"--chat-template {missing}: cannot read it: No such file or directory")
    bad = write("bad.jinja", "{% for m in messages %}\n{{ m.content | wordcount }}\n{% endfor %}")
    refused_start(["--chat-template", bad], f"--chat-template {bad}: chat template not "
                  "supported: line 2: unsupported filter '|wordcount'")
    refused_start(["--chat-template", write("call.jinja", "{% call m() %}{% endcall %}")],
                  "line 1: unsupported statement {% call %}")


@suite.test
def help_documents_the_flag():
    p = subprocess.run([e2e.ADAPTREE, "serve", "--help"], capture_output=True, timeout=10)
    check(b"--chat-template FILE" in p.stdout, "serve --help mentions --chat-template FILE")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
