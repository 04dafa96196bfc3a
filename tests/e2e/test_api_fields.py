"""End-to-end: the OpenAI / vLLM request fields logit_bias, presence_penalty, frequency_penalty,
min_tokens, ignore_eos, stop_token_ids and metadata through the OpenAI Python SDK (extra_body
for the non-standard ones), on /v1/completions and /v1/chat/completions, streamed and not, on
the base model and with adapters; POST /tokenize and /detokenize; max_model_len in
/v1/models/{id}."""

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("api_fields", budget=240)
S = None
C = None
# The selections every field is tried with: the base model, a registry node, a mix by extra_body.
SELS = [("base", None), ("fr/manpages", None), ("base", [{"id": "de", "scale": 1.0}])]


def setup():
    global S, C
    import openai

    reg = e2e.make_registry(suite.tmp, fixtures=False)
    S = suite.server([], registry=reg, name="server")
    S.start()
    C = openai.OpenAI(base_url=S.url() + "/v1", api_key="none", max_retries=0,
                      timeout=60 * e2e.SLOW)


def cmpl(model, adapters, prompt, stream=False, **kw):
    """A greedy completion through the SDK: (text, finish_reason, completion_tokens)."""
    extra = dict(kw.pop("extra_body", {}))
    if adapters:
        extra["adapters"] = adapters
    args = dict(model=model, prompt=prompt, temperature=0, extra_body=extra, **kw)
    if not stream:
        r = C.completions.create(**args)
        return r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens
    text, finish, usage = "", None, None
    for ch in C.completions.create(stream=True, stream_options={"include_usage": True}, **args):
        if ch.choices:
            text += ch.choices[0].text
            finish = ch.choices[0].finish_reason or finish
        usage = ch.usage or usage
    return text, finish, usage.completion_tokens


def chat(model, adapters, content, stream=False, **kw):
    """A greedy chat completion: (text, finish_reason, completion_tokens, prompt_tokens)."""
    extra = dict(kw.pop("extra_body", {}))
    if adapters:
        extra["adapters"] = adapters
    args = dict(model=model, messages=[{"role": "user", "content": content}], temperature=0,
                extra_body=extra, **kw)
    if not stream:
        r = C.chat.completions.create(**args)
        u = r.usage
        return (r.choices[0].message.content, r.choices[0].finish_reason, u.completion_tokens,
                u.prompt_tokens)
    text, finish, usage = "", None, None
    for ch in C.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                        **args):
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
        usage = ch.usage or usage
    return text, finish, usage.completion_tokens, usage.prompt_tokens


def tokenize(body):
    r = S.post("/tokenize", body)
    check(r.status == 200, f"/tokenize {body}: {r}")
    return r.json()


def detokenize(ids):
    r = S.post("/detokenize", {"tokens": ids})
    check(r.status == 200, f"/detokenize {ids}: {r}")
    return r.json()["prompt"]


def ids_of(text):
    return tokenize({"prompt": text, "add_special_tokens": False})["tokens"]


PROMPT = "The capital of France is"


@suite.test
def logit_bias_forces_and_forbids():
    target = ids_of(" banana")
    eq(len(target), 1, "' banana' is one token")
    for model, ad in SELS:
        for stream in (False, True):
            what = f"{model} {ad} stream={stream}"
            # +100 on one token: greedy emits it at every step.
            t, _, _ = cmpl(model, ad, PROMPT, stream, max_tokens=3,
                           logit_bias={str(target[0]): 100})
            eq(t, " banana" * 3, f"+100 on ' banana' ({what})")
            # -100 on the greedy token: the first token changes.
            g, _, _ = cmpl(model, ad, PROMPT, stream, max_tokens=1)
            gid = ids_of(g)
            eq(len(gid), 1, f"greedy token {g!r} is one token")
            t, _, _ = cmpl(model, ad, PROMPT, stream, max_tokens=1, logit_bias={str(gid[0]): -100})
            check(t != g, f"-100 on the greedy token {g!r} left it ({what})")
            # The chat route too.
            t, _, _, _ = chat(model, ad, "Name a fruit.", stream, max_tokens=2,
                              logit_bias={str(target[0]): 100})
            eq(t, " banana" * 2, f"chat +100 ({what})")


@suite.test
def penalties_reduce_repetition():
    prompt = "one two one two one two one two one two"

    def max_repeat(text):  # occurrences of the most frequent token
        ids = ids_of(text) if text else []
        return max((ids.count(t) for t in set(ids)), default=0)

    for model, ad in SELS:
        base, _, _ = cmpl(model, ad, prompt, max_tokens=24)
        check(max_repeat(base) >= 4, f"{model} {ad}: the baseline is not repetitive: {base!r}")
        for field in ("frequency_penalty", "presence_penalty"):
            for stream in (False, True):
                t, _, _ = cmpl(model, ad, prompt, stream, max_tokens=24, **{field: 2.0})
                check(t != base and max_repeat(t) < max_repeat(base),
                      f"{field}=2 ({model} {ad} stream={stream}): {t!r} vs {base!r}")
            # Chat takes them too; a negative one is accepted.
            chat(model, ad, "Count: one two one two", False, max_tokens=4, **{field: -1.5})


@suite.test
def min_tokens_and_ignore_eos():
    q = "Reply with one word: yes or no?"
    for model, ad in SELS:
        t0, f0, n0, _ = chat(model, ad, q, max_tokens=200)
        eq(f0, "stop", f"{model} {ad}: the reply {t0!r} ends by itself")
        check(n0 < 150, f"{model} {ad}: the reply is short ({n0} tokens)")
        for stream in (False, True):
            what = f"{model} {ad} stream={stream}"
            _, f, n, _ = chat(model, ad, q, stream, max_tokens=200,
                              extra_body={"min_tokens": n0 + 10})
            check(n >= n0 + 10, f"min_tokens {n0 + 10}: got {n} tokens ({what})")
            _, f, n, _ = chat(model, ad, q, stream, max_tokens=n0 + 15,
                              extra_body={"ignore_eos": True})
            eq((f, n), ("length", n0 + 15), f"ignore_eos runs to max_tokens ({what})")
            _, f, n = cmpl(model, ad, PROMPT, stream, max_tokens=9,
                           extra_body={"ignore_eos": True, "min_tokens": 9})
            eq((f, n), ("length", 9), f"completions ignore_eos + min_tokens ({what})")
            # A stop string that would end the text early waits for min_tokens too.
            base, _, _ = cmpl(model, ad, PROMPT, stream, max_tokens=8)
            stop = base.strip()[:3]
            check(len(stop) == 3, f"baseline {base!r}")
            t, f, _ = cmpl(model, ad, PROMPT, stream, max_tokens=8, stop=[stop])
            eq(f, "stop", f"stop {stop!r} ends {base!r} early ({what})")
            t, f, n = cmpl(model, ad, PROMPT, stream, max_tokens=8, stop=[stop],
                           extra_body={"min_tokens": 8})
            eq((t, f, n), (base, "length", 8), f"min_tokens holds off stop {stop!r} ({what})")


@suite.test
def stop_token_ids_end_the_request():
    for model, ad in SELS:
        base, _, n_base = cmpl(model, ad, PROMPT, max_tokens=12)
        ids = ids_of(base)
        check(len(ids) >= 4, f"baseline {base!r} too short")
        stop = ids[3]
        for stream in (False, True):
            what = f"{model} {ad} stream={stream}"
            t, f, n = cmpl(model, ad, PROMPT, stream, max_tokens=12,
                           extra_body={"stop_token_ids": [stop]})
            eq(f, "stop", f"finish_reason with stop_token_ids ({what})")
            check(base.startswith(t) and len(t) < len(base) and n < n_base,
                  f"stops before the token: {t!r} vs {base!r} ({what})")
            check(detokenize([stop]) not in t[len(detokenize(ids[:3])):] or not t,
                  f"the stop token is not emitted: {t!r} ({what})")
            # Chat: the same field stops a chat reply.
            c0, _, _, _ = chat(model, ad, "Say hello.", False, max_tokens=12)
            cid = ids_of(c0)
            if len(cid) >= 3:
                c, f, _, _ = chat(model, ad, "Say hello.", stream, max_tokens=12,
                                  extra_body={"stop_token_ids": [cid[2]]})
                eq(f, "stop", f"chat stop_token_ids ({what})")
                check(c0.startswith(c) and len(c) < len(c0), f"chat: {c!r} vs {c0!r} ({what})")


@suite.test
def user_and_metadata_accepted():
    r = C.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi"}],
                                  max_tokens=2, user="alice",
                                  extra_body={"metadata": {"run": "e2e", "team": "api"}})
    check(r.choices[0].message.content is not None, "chat with user and metadata")
    r = C.completions.create(model="fr", prompt="x", max_tokens=1, user="bob\nadaptree: forged",
                             extra_body={"metadata": {"k": "v\"\n"}})
    eq(r.choices[0].finish_reason in ("stop", "length"), True, "completion with metadata")
    # both are logged, as JSON: a newline in them cannot make a line of its own
    with open(S.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    check(': user "alice", metadata {"run":"e2e","team":"api"}' in log, "user and metadata logged")
    check(': user "bob\\nadaptree: forged", metadata {"k":"v\\"\\n"}' in log,
          "escaped user and metadata logged")
    check("\nadaptree: forged" not in log, "a forged log line")


@suite.test
def tokenize_detokenize_round_trip():
    text = "Debian est un système d'exploitation libre. <|im_end|>"
    d = tokenize({"prompt": text})
    check(d["count"] == len(d["tokens"]) and d["count"] > 5, f"tokenize: {d}")
    check(d["max_model_len"] > 0, f"max_model_len {d}")
    eq(detokenize(d["tokens"]), text, "detokenize(tokenize(text))")
    plain = tokenize({"prompt": text, "add_special_tokens": False})
    check(plain["count"] <= d["count"], f"add_special_tokens false: {plain} vs {d}")
    # A completion's prompt_tokens is the tokenize count.
    r = C.completions.create(model="base", prompt=text, max_tokens=1)
    eq(r.usage.prompt_tokens, d["count"], "completion prompt_tokens = /tokenize count")
    # Chat messages: the template as /v1/chat/completions applies it.
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    t = tokenize({"messages": msgs})
    for model, ad in SELS:
        extra = {"adapters": ad} if ad else {}
        r = C.chat.completions.create(model=model, messages=msgs, max_tokens=1, extra_body=extra)
        eq(r.usage.prompt_tokens, t["count"], f"chat prompt_tokens = /tokenize count ({model})")
    t2 = tokenize({"messages": msgs, "add_generation_prompt": False})
    check(t2["count"] < t["count"] and t["tokens"][:t2["count"]] == t2["tokens"],
          f"without the generation prompt: {t2['count']} vs {t['count']}")
    check("<|im_start|>assistant" in detokenize(t["tokens"]), "the rendered template")


@suite.test
def token_endpoints_refuse_bad_input():
    for path, body, param in [
            ("/tokenize", {}, "prompt"),
            ("/tokenize", {"prompt": 5}, "prompt"),
            ("/tokenize", {"prompt": [1, 2]}, "prompt"),
            ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens"),
            ("/tokenize", {"messages": "hi"}, "messages"),
            ("/detokenize", {}, "tokens"),
            ("/detokenize", {"tokens": "1 2"}, "tokens"),
            ("/detokenize", {"tokens": [1, -1]}, "tokens[1]"),
            ("/detokenize", {"tokens": [1, 10 ** 9]}, "tokens[1]"),
            ("/detokenize", {"tokens": [1.5]}, "tokens[0]"),
            ("/detokenize", {"tokens": ["1"]}, "tokens[0]"),
            ("/detokenize", {"tokens": list(range(65537))}, "tokens")]:
        e = check_error(S.post(path, body), 400, what=f"{path} {str(body)[:60]}")
        eq(e.get("param"), param, f"{path} {str(body)[:60]} param")
    check_error(S.req("POST", "/tokenize", None), 400, what="/tokenize without a body")


@suite.test
def generation_fields_refuse_bad_input():
    import openai

    for kw, param in [({"logit_bias": {"999999": 1}}, "logit_bias.999999"),
                      ({"logit_bias": {"x": 1}}, "logit_bias"),
                      ({"logit_bias": {"5": 101}}, "logit_bias.5"),
                      ({"presence_penalty": 3}, "presence_penalty"),
                      ({"frequency_penalty": -2.5}, "frequency_penalty"),
                      ({"extra_body": {"min_tokens": 5}, "max_tokens": 2}, "min_tokens"),
                      ({"extra_body": {"stop_token_ids": [10 ** 7]}}, "stop_token_ids[0]"),
                      ({"extra_body": {"ignore_eos": "yes"}}, "ignore_eos"),
                      ({"extra_body": {"metadata": "x"}}, "metadata"),
                      ({"extra_body": {"metadata": {"k": ["x"]}}}, "metadata"),
                      ({"extra_body": {"metadata": {f"k{i}": "v" for i in range(17)}}},
                       "metadata"),
                      ({"extra_body": {"metadata": {"k" * 65: "v"}}}, "metadata")]:
        kw = dict(kw)
        kw.setdefault("max_tokens", 4)
        for route in ("completions", "chat"):
            try:
                if route == "chat":
                    C.chat.completions.create(model="base",
                                              messages=[{"role": "user", "content": "x"}], **kw)
                else:
                    C.completions.create(model="base", prompt="x", **kw)
                raise e2e.Fail(f"{route} {kw} was accepted")
            except openai.BadRequestError as e:
                eq(e.status_code, 400, f"{route} {kw}")
                eq((e.body or {}).get("param"), param, f"{route} {kw} param")
    # min_tokens past the completions default max_tokens (16), max_tokens not given.
    try:
        C.completions.create(model="base", prompt="x", extra_body={"min_tokens": 17})
        raise e2e.Fail("min_tokens 17 without max_tokens was accepted")
    except openai.BadRequestError as e:
        eq((e.status_code, (e.body or {}).get("param")), (400, "min_tokens"),
           "min_tokens over the default max_tokens")


@suite.test
def models_report_max_model_len():
    n = tokenize({"prompt": "x"})["max_model_len"]
    for mid in ("base", e2e.BASE_ID, "fr/manpages"):
        r = S.req("GET", "/v1/models/" + mid)
        eq(r.status, 200, f"GET /v1/models/{mid}")
        eq(r.json().get("max_model_len"), n, f"max_model_len of {mid}")
    for m in S.req("GET", "/v1/models").json()["data"]:
        eq(m.get("max_model_len"), n, f"max_model_len of {m['id']} in the list")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
