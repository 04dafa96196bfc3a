"""End-to-end Gemma 3 with its PEFT registry: `adaptree serve -m models/gemma-3-270m-q4_k_m.gguf
--registry <copy of registry-gemma/>` answers with an adapter, with a tree chain (the same tokens
and logprobs as the chain's nodes listed explicitly), and with the OpenAI SDK, each different from
the base; an adapter trained for SmolLM2 (registry/fr, copied in as smol/fr) is refused with a
message naming the shape mismatch, and the server keeps serving. The chat route renders Gemma 3's
template (templates/gemma-3.jinja, --chat-template: the base GGUF has none) exactly as a completion
of the rendered text sees it. Few tokens: fast."""

import os
import shutil
import sys

import e2e
from e2e import check, check_error, eq

GEMMA = os.path.join(e2e.ROOT, "models", "gemma-3-270m-q4_k_m.gguf")
GEMMA_REGISTRY = os.path.join(e2e.ROOT, "registry-gemma")
GEMMA_TEMPLATE = os.path.join(e2e.ROOT, "templates", "gemma-3.jinja")

suite = e2e.Suite("gemma", budget=240)
S = None
N = 8  # tokens per request


def setup():
    global S
    if not os.path.exists(GEMMA):
        raise e2e.Fail(f"{GEMMA} is missing: make gemma")
    reg = os.path.join(suite.tmp, "reg")
    shutil.copytree(GEMMA_REGISTRY, reg, ignore=shutil.ignore_patterns("*.md"))
    shutil.copytree(os.path.join(e2e.REGISTRY, "fr"), os.path.join(reg, "smol", "fr"),
                    ignore=shutil.ignore_patterns("manpages"))
    S = suite.server(["--chat-template", GEMMA_TEMPLATE], registry=reg, model=GEMMA, name="gemma")
    S.start(timeout=120)


def complete(**body):
    body = dict({"prompt": "Debian est", "max_tokens": N, "temperature": 0, "logprobs": 1}, **body)
    r = S.post("/v1/completions", body, timeout=120)
    eq(r.status, 200, f"completion {body}: {r}")
    c = r.json()["choices"][0]
    return c["text"], c["logprobs"]


BASE = {}


@suite.test
def models_lists_the_gemma_registry():
    d = S.req("GET", "/v1/models").json()
    ids = {m["id"] for m in d["data"]}
    for node in ("fr", "fr/manpages", "de", "smol/fr"):
        check(node in ids, f"/v1/models lacks {node}: {sorted(ids)}")
    base = e2e.advertised_base_id(S)
    check("gemma" in base.lower(), f"the base model is listed as {base!r}")
    BASE["id"] = base


@suite.test
def adapter_differs_from_base():
    BASE["text"], BASE["lp"] = complete()
    text, lp = complete(model="fr")
    eq(len(lp["tokens"]), N, "tokens with fr")
    d = max(abs(a - b) for a, b in zip(lp["token_logprobs"], BASE["lp"]["token_logprobs"]))
    check(text != BASE["text"] or d > 1e-2,
          f"fr gives the base's output: {text!r}, logprobs differ by {d:.3g}")
    # a request naming the base applies nothing
    t2, lp2 = complete(model=BASE["id"])
    eq(t2, BASE["text"], "the base by name")


@suite.test
def chain_equals_its_nodes_listed():
    text, lp = complete(model="fr/manpages", prompt="La commande")
    listed, lp2 = complete(adapters=[{"id": "fr", "scale": 1.0}, {"id": "fr/manpages", "scale": 1.0}],
                           prompt="La commande")
    eq(listed, text, "chain fr/manpages vs [fr, fr/manpages] listed")
    d = max(abs(a - b) for a, b in zip(lp["token_logprobs"], lp2["token_logprobs"]))
    check(d <= 1e-4, f"chain vs listed logprobs differ by {d:.3g}")
    fr_only, lp3 = complete(adapters=[{"id": "fr", "scale": 1.0}], prompt="La commande")
    d = max(abs(a - b) for a, b in zip(lp["token_logprobs"], lp3["token_logprobs"]))
    check(text != fr_only or d > 1e-3, "fr/manpages adds nothing to fr")


@suite.test
def openai_sdk_with_an_adapter():
    import openai
    c = openai.OpenAI(base_url=S.url() + "/v1", api_key="none", max_retries=0, timeout=120)
    r = c.completions.create(model="de", prompt="Die", max_tokens=N, temperature=0)
    base = c.completions.create(model=BASE["id"], prompt="Die", max_tokens=N, temperature=0)
    check(r.choices[0].text and r.choices[0].text != base.choices[0].text,
          f"de {r.choices[0].text!r} vs base {base.choices[0].text!r}")


@suite.test
def smollm2_adapter_refused_with_shape_mismatch():
    r = S.post("/v1/adapters/load", {"id": "smol/fr"}, timeout=60)
    e = check_error(r, 422, "adapter_load_failed", "loading SmolLM2's fr on Gemma")
    msg = e["message"]
    check("shape" in msg and "expected" in msg and "another base model" in msg,
          f"the refusal does not name the shape mismatch: {msg!r}")
    r = S.post("/v1/completions", {"model": "smol/fr", "prompt": "x", "max_tokens": 1}, timeout=60)
    check(400 <= r.status < 600 and r.status != 500, f"a request on smol/fr: {r}")
    check_error(r, r.status, what="a request on smol/fr")
    text, _ = complete()
    eq(text, BASE["text"], "the base after the refusal")


@suite.test
def chat_renders_gemma3_template():
    msgs = [{"role": "system", "content": "Réponds en français."},
            {"role": "user", "content": "  Qu'est-ce que Debian ?  "}]
    r = S.post("/v1/chat/completions", {"model": "fr", "messages": msgs, "max_tokens": N,
                                        "temperature": 0}, timeout=120)
    eq(r.status, 200, f"chat: {r}")
    chat = r.json()
    # The template's text (the BOS is the tokenizer's, as for every completion prompt).
    prompt = ("<start_of_turn>user\nRéponds en français.\n\nQu'est-ce que Debian ?<end_of_turn>\n"
              "<start_of_turn>model\n")
    text, _ = complete(model="fr", prompt=prompt)
    eq(chat["choices"][0]["message"]["content"], text, "chat vs the rendered prompt completed")
    r = S.post("/v1/completions", {"model": "fr", "prompt": prompt, "max_tokens": 1}, timeout=120)
    eq(chat["usage"]["prompt_tokens"], r.json()["usage"]["prompt_tokens"], "prompt tokens")
    r = S.post("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x"}],
                                        "max_tokens": 1}, timeout=120)
    e = check_error(r, 400, what="a conversation starting with the model")
    check("alternate" in e["message"], f"raise_exception's message: {e['message']!r}")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
