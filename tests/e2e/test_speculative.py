"""End-to-end: speculative decoding by prompt lookup. A server started with --spec-k 8 drafts
for every request that does not choose; "speculative": false turns it off for one request and
{"k", "ngram"} sets it. Drafting changes nothing a client sees: greedy text and logprobs, seeded
sampled text, streamed text, with adapters and without, and several requests in one batch are
the same as plain decoding; on a copy task most drafts are accepted (counted on /metrics); a bad
"speculative" is refused naming its field."""

import threading

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("speculative", budget=240)
S = None
TEXT = ("Adapters are small low-rank matrices added to the frozen weights of a base model. The "
        "server keeps one base model in memory and loads many adapters from a tree. Every "
        "request names its adapters, and all requests share one matrix product per layer.")
COPY = "Copy this text exactly, word for word:\n\n" + TEXT
SELS = [{}, {"model": "fr/manpages"}, {"adapters": [{"id": "fr", "scale": 0.5},
                                                     {"id": "de", "scale": 0.5}]}]


def setup():
    global S
    S = suite.server(["--spec-k", "8"], registry=e2e.make_registry(suite.tmp, fixtures=False),
                     name="server")
    S.start()


def chat(sel, spec, **kw):
    body = {"messages": [{"role": "user", "content": kw.pop("content", COPY)}],
            "max_tokens": kw.pop("max_tokens", 60), "temperature": 0}
    body.update(sel)
    body.update(kw)
    if spec is not None:
        body["speculative"] = spec
    r = S.post("/v1/chat/completions", body)
    eq(r.status, 200, f"chat with {sel} speculative {spec}: {r.data[:200]!r}")
    return r.json()


def spec_counts():
    m = e2e.metrics(S)
    return (m.get(("adaptree_spec_draft_tokens_total", ()), 0),
            m.get(("adaptree_spec_accepted_tokens_total", ()), 0))


@suite.test
def greedy_same_text_and_logprobs():
    d0, a0 = spec_counts()
    for sel in SELS:
        off = chat(sel, False, logprobs=True, top_logprobs=2)
        for spec in (None, {"k": 4, "ngram": 2}, {"k": 16}):
            on = chat(sel, spec, logprobs=True, top_logprobs=2)
            eq(e2e.text_of(on), e2e.text_of(off), f"text with {sel}, speculative {spec}")
            lo = [t["logprob"] for t in off["choices"][0]["logprobs"]["content"]]
            ln = [t["logprob"] for t in on["choices"][0]["logprobs"]["content"]]
            eq(len(ln), len(lo), "logprob count")
            worst = max((abs(a - b) for a, b in zip(lo, ln)), default=0.0)
            check(worst <= 1e-4, f"logprobs moved by {worst:.2e} (tolerance 1e-4)")
    d1, a1 = spec_counts()
    print(f"  drafts: {d1 - d0:.0f} verified, {a1 - a0:.0f} accepted")
    check(d1 > d0 and (a1 - a0) * 2 > (d1 - d0), f"accepted {a1 - a0} of {d1 - d0} drafts")


@suite.test
def seeded_sampling_same_text():
    for sel in SELS[:2]:
        kw = dict(temperature=0.9, top_p=0.95, seed=1234, max_tokens=48,
                  content="Write a short story about a cat. " + TEXT)
        off = chat(sel, False, **kw)
        on = chat(sel, {"k": 8, "ngram": 1}, **kw)
        eq(e2e.text_of(on), e2e.text_of(off), f"seeded text with {sel}")


@suite.test
def streamed_same_text():
    body = {"messages": [{"role": "user", "content": COPY}], "max_tokens": 60, "temperature": 0,
            "stream": True}
    st, ev_on, _ = e2e.stream(S.port, "/v1/chat/completions", dict(body, speculative=True))
    eq(st, 200, "stream with drafts")
    st, ev_off, _ = e2e.stream(S.port, "/v1/chat/completions", dict(body, speculative=False))
    eq(st, 200, "stream without")
    eq(e2e.stream_text(ev_on), e2e.stream_text(ev_off), "streamed text")
    eq(e2e.stream_finish(ev_on), e2e.stream_finish(ev_off), "finish reason")


@suite.test
def batched_requests_same_text():
    want = [e2e.text_of(chat(sel, False)) for sel in SELS]
    got = [None] * (2 * len(SELS))
    def run(i):
        got[i] = e2e.text_of(chat(SELS[i % len(SELS)], None))
    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(got))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120 * e2e.SLOW)
    for i, g in enumerate(got):
        eq(g, want[i % len(SELS)], f"request {i} of {len(got)} at once")


@suite.test
def bad_speculative_refused():
    for spec, param in ((3, "speculative"), ({"k": 17}, "speculative.k"),
                        ({"ngram": 0}, "speculative.ngram"), ({"draft": 2}, "speculative.draft")):
        r = S.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                            "speculative": spec})
        check_error(r, 400, what=f"speculative {spec}")
        eq(r.json()["error"].get("param"), param, f"param of speculative {spec}")
    eq(S.req("GET", "/health").status, 200, "still serving")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
