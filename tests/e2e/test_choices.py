"""End-to-end: OpenAI's `n` (several choices per request) on /v1/completions and
/v1/chat/completions through the OpenAI Python SDK, streamed and not, on the base model and with
adapters: choice i is the generation seeded seed + i (choice 0 is the n=1 answer), usage counts
the prompt once, each streamed choice has its own finish chunk, the usage chunk and [DONE] come
once at the end; the prompt is prefilled once for all choices (counted on /metrics, with the
prefix cache off); n outside 1..16 is refused; a client that leaves cancels every choice."""

import socket
import json

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("choices", budget=300)
S = None  # registry, prefix cache on (the default)
P = None  # no registry, --no-prefix-cache: the prefill count
C = None
SELS = [("base", None), ("fr/manpages", None), ("base", [{"id": "de", "scale": 1.0}])]
PROMPT = "Once upon a time, in a small village by the sea,"
CHAT = "Tell me a short story about a cat."


def setup():
    global S, P, C
    import openai

    reg = e2e.make_registry(suite.tmp, fixtures=False)
    S = suite.server([], registry=reg, name="server")
    S.start()
    P = suite.server(["--no-prefix-cache"], name="noprefix")
    P.start()
    C = openai.OpenAI(base_url=S.url() + "/v1", api_key="none", max_retries=0,
                      timeout=60 * e2e.SLOW)


def extra(adapters, **kw):
    e = dict(kw)
    if adapters:
        e["adapters"] = adapters
    return e


def cmpl(model, adapters, n, stream=False, client=None, **kw):
    """A completion with n choices: ([(text, finish)] by index, usage)."""
    args = dict(model=model, prompt=kw.pop("prompt", PROMPT), n=n,
                extra_body=extra(adapters, **kw.pop("extra_body", {})), **kw)
    cl = client or C
    if not stream:
        r = cl.completions.create(**args)
        eq([c.index for c in r.choices], list(range(n)), "choice indexes")
        return [(c.text, c.finish_reason) for c in r.choices], r.usage
    return collect(cl.completions.create(stream=True, stream_options={"include_usage": True},
                                         **args), n, chat=False)


def chat(model, adapters, n, stream=False, **kw):
    args = dict(model=model, messages=[{"role": "user", "content": CHAT}], n=n,
                extra_body=extra(adapters, **kw.pop("extra_body", {})), **kw)
    if not stream:
        r = C.chat.completions.create(**args)
        eq([c.index for c in r.choices], list(range(n)), "choice indexes")
        return [(c.message.content, c.finish_reason) for c in r.choices], r.usage
    return collect(C.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                             **args), n, chat=True)


def collect(chunks, n, chat):
    """Assembles a stream of n choices; checks each has one finish chunk, nothing after it, and
    the usage chunk last, after every finish."""
    text = [""] * n
    finish = [None] * n
    roles = [0] * n
    usage = None
    for ch in chunks:
        check(usage is None, "a chunk after the usage chunk")
        if ch.usage is not None:
            eq(ch.choices, [], "choices of the usage chunk")
            check(all(f is not None for f in finish), f"usage before every finish: {finish}")
            usage = ch.usage
            continue
        eq(len(ch.choices), 1, "choices per chunk")
        c = ch.choices[0]
        check(0 <= c.index < n, f"choice index {c.index}")
        check(finish[c.index] is None, f"choice {c.index}: a chunk after its finish chunk")
        if chat:
            roles[c.index] += c.delta.role == "assistant"
            text[c.index] += c.delta.content or ""
        else:
            text[c.index] += c.text or ""
        finish[c.index] = c.finish_reason
    check(usage is not None, "no usage chunk")
    if chat:
        eq(roles, [1] * n, "role chunks per choice")
    return list(zip(text, finish)), usage


@suite.test
def completions_seeds_and_usage():
    for model, ad in SELS:
        what = f"{model} {ad}"
        choices, u = cmpl(model, ad, 3, max_tokens=12, temperature=1, seed=7)
        one, u1 = cmpl(model, ad, 1, max_tokens=12, temperature=1, seed=7)
        eq(choices[0], one[0], f"choice 0 vs n=1 with the same seed ({what})")
        ntok = u1.completion_tokens
        for i in (1, 2):
            alone, ua = cmpl(model, ad, 1, max_tokens=12, temperature=1, seed=7 + i)
            eq(choices[i], alone[0], f"choice {i} vs n=1 with seed + {i} ({what})")
            ntok += ua.completion_tokens
        check(len({t for t, _ in choices}) > 1, f"3 choices at temperature 1 are equal: {choices}")
        eq(u.prompt_tokens, u1.prompt_tokens, f"prompt_tokens counted once ({what})")
        eq(u.completion_tokens, ntok, f"completion_tokens: the sum over the choices ({what})")
        eq(u.total_tokens, u.prompt_tokens + u.completion_tokens, "total_tokens")
        # the stream gives the same choices
        streamed, us = cmpl(model, ad, 3, stream=True, max_tokens=12, temperature=1, seed=7)
        eq(streamed, choices, f"streamed choices ({what})")
        eq((us.prompt_tokens, us.completion_tokens), (u.prompt_tokens, u.completion_tokens),
           f"streamed usage ({what})")


def e2e_ids(text):
    if not text:
        return []
    r = S.post("/tokenize", {"prompt": text, "add_special_tokens": False})
    check(r.status == 200, f"/tokenize: {r}")
    return r.json()["tokens"]


@suite.test
def chat_seeds_streamed_and_not():
    for model, ad in SELS:
        what = f"{model} {ad}"
        choices, u = chat(model, ad, 3, max_tokens=10, temperature=1, seed=11)
        one, u1 = chat(model, ad, 1, max_tokens=10, temperature=1, seed=11)
        eq(choices[0], one[0], f"chat choice 0 vs n=1 ({what})")
        check(len({t for t, _ in choices}) > 1, f"chat choices at temperature 1 equal: {choices}")
        eq(u.prompt_tokens, u1.prompt_tokens, "chat prompt_tokens once")
        streamed, us = chat(model, ad, 3, stream=True, max_tokens=10, temperature=1, seed=11)
        eq(streamed, choices, f"streamed chat choices ({what})")
        eq(us.completion_tokens, u.completion_tokens, "streamed chat completion_tokens")


@suite.test
def greedy_choices_are_equal():
    choices, u = cmpl("base", None, 3, max_tokens=8, temperature=0)
    eq(len({c for c in choices}), 1, f"greedy choices {choices}")
    one, _ = cmpl("base", None, 1, max_tokens=8, temperature=0)
    eq(choices[0], one[0], "greedy n=3 vs n=1")


@suite.test
def token_fields_apply_to_every_choice():
    banana = e2e_ids(" banana")
    eq(len(banana), 1, "' banana' is one token")
    for stream in (False, True):
        choices, _ = cmpl("fr/manpages", None, 3, stream=stream, max_tokens=3, temperature=1,
                          seed=3, logit_bias={str(banana[0]): 100})
        eq(choices, [(" banana" * 3, "length")] * 3, f"logit_bias in every choice ({stream})")
        choices, _ = cmpl("base", None, 2, stream=stream, max_tokens=40, temperature=0,
                          prompt="1, 2, 3, 4, 5,", stop=[" 8"])
        for t, f in choices:
            eq(f, "stop", f"stop string ends each choice ({t!r})")
            check(" 8" not in t and t.rstrip().endswith("7,"), f"text before the stop: {t!r}")
    # logprobs per choice
    r = C.completions.create(model="base", prompt=PROMPT, n=2, max_tokens=4, temperature=1,
                             seed=5, logprobs=2)
    for c in r.choices:
        check(c.logprobs is not None and len(c.logprobs.tokens) >= 1, f"logprobs: {c}")
        eq("".join(c.logprobs.tokens), c.text, f"choice {c.index}: logprob tokens vs text")
    r = C.chat.completions.create(model="base", messages=[{"role": "user", "content": CHAT}],
                                  n=2, max_tokens=4, temperature=1, seed=5, logprobs=True,
                                  top_logprobs=1)
    for c in r.choices:
        eq("".join(t.token for t in c.logprobs.content), c.message.content,
           f"chat choice {c.index}: logprob tokens vs text")


@suite.test
def echo_in_every_choice():
    for stream in (False, True):
        choices, u = cmpl("base", None, 2, stream=stream, max_tokens=4, temperature=1, seed=9,
                          echo=True)
        for t, _ in choices:
            check(t.startswith(PROMPT) and len(t) > len(PROMPT), f"echo ({stream}): {t!r}")
    # with logprobs: the prompt's scores in each choice
    r = C.completions.create(model="base", prompt=PROMPT, n=2, max_tokens=2, temperature=1,
                             seed=9, echo=True, logprobs=1)
    n = r.usage.prompt_tokens
    for c in r.choices:
        eq(c.logprobs.token_logprobs[0], None, "first prompt token's logprob")
        eq(len(c.logprobs.tokens), n + 2, f"choice {c.index}: prompt + 2 tokens")
    eq(r.choices[0].logprobs.token_logprobs[:n], r.choices[1].logprobs.token_logprobs[:n],
       "the prompt's scores are the same in both choices")


@suite.test
def n_out_of_range_is_refused():
    import openai

    for n in (0, 17):
        for route, body in (("/v1/completions", {"prompt": "x"}),
                            ("/v1/chat/completions",
                             {"messages": [{"role": "user", "content": "x"}]})):
            r = S.post(route, dict(body, n=n))
            e = check_error(r, 400, what=f"n={n} on {route}")
            eq(e.get("param"), "n", "param")
    try:
        C.completions.create(model="base", prompt="x", n=17, max_tokens=1)
        check(False, "n=17 through the SDK was accepted")
    except openai.BadRequestError as ex:
        check("n" in str(ex), f"message: {ex}")
    r = S.post("/v1/completions", {"prompt": "x", "n": 2, "best_of": 3})
    eq(check_error(r, 400, what="best_of").get("param"), "best_of", "best_of still refused")


def metric(server, name):
    m = e2e.metrics(server)
    return e2e.metric_sum(m, lambda k: k == name) or 0


@suite.test
def prefill_is_shared():
    """n=4 on a ~300-token prompt computes about one prompt, not four (prefix cache off)."""
    text = ("The river runs through the old town, past the mill and the market square, where "
            "traders have sold bread, cheese and wool for centuries. ") * 10
    r = P.post("/tokenize", {"prompt": text})
    n_prompt = r.json()["count"]
    check(250 <= n_prompt <= 400, f"prompt of {n_prompt} tokens")
    before = metric(P, "adaptree_prompt_tokens_total")
    shared0 = metric(P, "adaptree_shared_prompt_tokens_total")
    r = P.post("/v1/completions", {"prompt": text, "n": 4, "max_tokens": 4, "temperature": 1,
                                   "seed": 1})
    check(r.status == 200, f"n=4: {r}")
    eq(r.json()["usage"]["prompt_tokens"], n_prompt, "usage.prompt_tokens")
    computed = metric(P, "adaptree_prompt_tokens_total") - before
    shared = metric(P, "adaptree_shared_prompt_tokens_total") - shared0
    print(f"    n=4 on {n_prompt} prompt tokens: {computed:.0f} computed, {shared:.0f} shared")
    eq(computed, n_prompt + 3, "prompt tokens computed for n=4 (one prompt + 3 last positions)")
    eq(shared, 3 * (n_prompt - 1), "prompt tokens shared from the first choice")
    # the same on the chat route, streamed
    before = metric(P, "adaptree_prompt_tokens_total")
    st, events, _ = e2e.stream(P.port, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": text}], "n": 4, "max_tokens": 3,
        "stream": True, "stream_options": {"include_usage": True}})
    eq(st, 200, "chat stream status")
    eq(events.count("[DONE]"), 1, "[DONE] once")
    n_chat = [e for e in events if e != "[DONE]" and e.get("usage")][-1]["usage"]["prompt_tokens"]
    eq(metric(P, "adaptree_prompt_tokens_total") - before, n_chat + 3,
       "chat: prompt tokens computed for n=4")


@suite.test
def more_choices_than_slots():
    """n=4 on --max-seqs 1 --queue-limit 1: taken on an idle server (a group larger than the
    queue would never fit), the choices run one after another (those whose leader has ended
    compute the prompt themselves) and give what they give with room for all."""
    q = suite.server(["--max-seqs", "1", "--queue-limit", "1"], name="small")
    q.start()
    body = {"prompt": PROMPT, "n": 4, "max_tokens": 6, "temperature": 1, "seed": 3}
    r = q.post("/v1/completions", body)
    check(r.status == 200, f"n=4 on one slot: {r}")
    want = P.post("/v1/completions", body)
    eq([c["text"] for c in r.json()["choices"]], [c["text"] for c in want.json()["choices"]],
       "choices on one slot vs on many")
    eq(r.json()["usage"], want.json()["usage"], "usage")


@suite.test
def disconnect_cancels_every_choice():
    key = ("adaptree_jobs_total", (("result", "cancelled"),))
    cancelled0 = e2e.metrics(S).get(key, 0)
    body = json.dumps({"prompt": PROMPT, "n": 3, "max_tokens": 400, "ignore_eos": True,
                       "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", S.port), timeout=30 * e2e.SLOW)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 6:
        d = s.recv(4096)
        check(d, "the stream ended early")
        got += d
    s.close()
    e2e.wait_until(lambda: e2e.metrics(S).get(key, 0) - cancelled0 >= 3, 30,
                   "the 3 choices cancelled")
    e2e.wait_until(lambda: e2e.running_gauge(e2e.metrics(S)) == 0, 30, "no running sequence")
    eq(e2e.metrics(S).get(key, 0) - cancelled0, 3, "cancelled jobs")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
