"""End-to-end batch invariance (docs/ARCHITECTURE.md §6): greedy requests over different adapters, tree
chains, weighted lists and the base model, sent concurrently, return exactly the text each
returns when sent alone — all at once, twice over with duplicates, and staggered so that prompt
chunks share steps with other requests' decode rows."""

import json
import sys
import threading
import time

import e2e
from e2e import BASE_ID, check, eq

suite = e2e.Suite("batch", budget=150)
S = None
N_TOKENS = 20
SLOWF = e2e.SLOW

# (name, path, body): completions and chat, ranks 4/8, f16/bf16, rslora, layer subsets,
# rank/alpha patterns, regex targets, chains of 1-3 nodes, weighted lists, chain + list.
CASES = [
    ("base (no model)", "c", {"prompt": "The capital of France is"}),
    ("base (model id)", "c", {"model": BASE_ID, "prompt": "Once upon a time"}),
    ("fr", "c", {"model": "fr", "prompt": "Debian est"}),
    ("fr/manpages/alice chain", "c", {"model": "fr/manpages/alice", "prompt": "grep :"}),
    ("de/witze chain (bf16)", "c", {"model": "de/witze", "prompt": "Ein Mann"}),
    ("weighted fr:0.5 de:0.5", "c", {"adapters": [{"id": "fr", "scale": 0.5},
                                                  {"id": "de", "scale": 0.5}],
                                     "prompt": "Debian est"}),
    ("chain de + list fr/manpages:0.7", "c", {"model": "de",
                                              "adapters": [{"id": "fr/manpages", "scale": 0.7}],
                                              "prompt": "La commande"}),
    ("fx/qv_r4 + fx/all_rslora_r8", "c", {"adapters": [{"id": "fx/qv_r4", "scale": 1.0},
                                                       {"id": "fx/all_rslora_r8", "scale": 0.8}],
                                          "prompt": "In the beginning"}),
    ("fx/patterns", "c", {"model": "fx/patterns", "prompt": "Linux is"}),
    ("fx/regex_gate_up", "c", {"model": "fx/regex_gate_up", "prompt": "Linux is"}),
    ("chat fr", "chat", {"model": "fr", "messages": [
        {"role": "user", "content": "Qu'est-ce qu'un paquet Debian ?"}]}),
    ("chat base, long prompt", "chat", {"messages": [
        {"role": "system", "content": "You are a helpful assistant who answers briefly. " * 6},
        {"role": "user", "content": "Name three Linux distributions and say what each is "
                                    "known for, in one sentence each."}]}),
]


def setup():
    global S
    reg = e2e.make_registry(suite.tmp)
    S = suite.server(registry=reg, name="server")
    S.start()
    # the base model by the id the server lists (checked against the expected one in clients)
    CASES[1][2]["model"] = e2e.advertised_base_id(S)


def send(case):
    name, kind, body = case
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    r = S.post(path, dict(body, max_tokens=N_TOKENS, temperature=0), timeout=120)
    check(r.status == 200, f"{name}: {r}")
    return e2e.text_of(r.json())


ALONE = {}


@suite.test
def each_alone_twice():
    for case in CASES:
        ALONE[case[0]] = send(case)
    for case in CASES:
        eq(send(case), ALONE[case[0]], f"{case[0]} sent alone a second time")
    distinct = len(set(ALONE.values()))
    check(distinct >= len(CASES) - 3, f"only {distinct} distinct texts over {len(CASES)} cases: "
          "the selections do not seem to apply")


def concurrent(cases, delays=None):
    out = [None] * len(cases)
    errs = []

    def run(i):
        try:
            if delays:
                time.sleep(delays[i])
            out[i] = send(cases[i])
        except BaseException as e:  # reported below
            errs.append(f"{cases[i][0]}: {e}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180 * e2e.SLOW)
    check(not errs, "; ".join(errs))
    return out


def compare(cases, got, what):
    bad = [f"{c[0]}:\n      alone     {ALONE[c[0]]!r}\n      {what:9} {g!r}"
           for c, g in zip(cases, got) if g != ALONE[c[0]]]
    check(not bad, f"{len(bad)} of {len(cases)} differ when {what}:\n    " + "\n    ".join(bad))


@suite.test
def all_at_once():
    check(ALONE, "needs each_alone_twice")
    compare(CASES, concurrent(CASES), "batched")


@suite.test
def all_at_once_with_duplicates():
    check(ALONE, "needs each_alone_twice")
    cases = CASES + CASES[::-1]
    compare(cases, concurrent(cases), "batched")


@suite.test
def staggered():
    check(ALONE, "needs each_alone_twice")
    cases = CASES + CASES[:6]
    delays = [0.03 * SLOWF * ((7 * i) % len(cases)) for i in range(len(cases))]
    compare(cases, concurrent(cases, delays), "staggered")



@suite.test
def logprobs_batched_close_to_alone():
    """Same tokens and logprobs within 1e-3 (docs/ARCHITECTURE.md: logits within 1e-4) in a batch."""
    body = {"model": "fr/manpages/alice", "prompt": "grep :", "max_tokens": 12,
            "temperature": 0, "logprobs": 1}
    alone = S.post("/v1/completions", body).json()["choices"][0]["logprobs"]
    others = [c for c in CASES if c[1] == "c"][:7]
    res = [None]

    def lp():
        time.sleep(0.05 * SLOWF)
        r = S.post("/v1/completions", body)
        check(r.status == 200, f"logprobs request {r}")
        res[0] = r.json()["choices"][0]["logprobs"]

    t = threading.Thread(target=lp, daemon=True)
    t.start()
    concurrent(others)
    t.join(120 * SLOWF)
    check(res[0] is not None, "batched logprobs request did not finish")
    eq(res[0]["tokens"], alone["tokens"], "tokens in a batch")
    d = max(abs(a - b) for a, b in zip(res[0]["token_logprobs"], alone["token_logprobs"]))
    check(d <= 1e-3, f"max |logprob batched - alone| = {d:.3g} > 1e-3")


@suite.test
def same_node_twice_in_a_selection():
    """A selection that names a node twice (a listed duplicate, or the chain plus a listed
    ancestor) is either refused (400) or applied as the sum of its weights; it never fails with a
    5xx, and never breaks the requests it shares a batch with."""
    body = {"prompt": "Bonjour", "max_tokens": 8, "temperature": 0}
    want2 = e2e.text_of(S.post("/v1/completions", dict(body, adapters=[{"id": "fr",
                                                                         "scale": 2.0}])).json())
    other_body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}
    other_want = e2e.text_of(S.post("/v1/completions", other_body).json())
    problems = []
    for sel in [{"adapters": [{"id": "fr"}, {"id": "fr"}]},
                {"model": "fr", "adapters": [{"id": "fr"}]},
                {"model": "fr/manpages", "adapters": [{"id": "fr", "scale": 0.0}]}]:
        first = threading.Event()
        other = e2e.Background(e2e.stream, S.port, "/v1/completions",
                               dict(other_body, stream=True),
                               on_event=lambda i, ev: first.set())
        check(first.wait(60 * SLOWF), "the other request never started")
        r = S.post("/v1/completions", dict(body, **sel))
        if r.status not in (200, 400):
            problems.append(f"{sel} next to another request: {r}")
        st, events, raw = other.result()
        errs = [ev for ev in events if ev != "[DONE]" and "error" in ev]
        if errs or e2e.stream_text(events) != other_want:
            problems.append(f"the request sharing the batch with {sel} was broken: "
                            f"{e2e.stream_text(events)!r} then {errs}")
        r = S.post("/v1/completions", dict(body, **sel))
        if r.status not in (200, 400):
            problems.append(f"{sel} alone: {r}")
        elif r.status == 200 and "manpages" not in json.dumps(sel) and \
                e2e.text_of(r.json()) != want2:
            problems.append(f"{sel} alone: {e2e.text_of(r.json())!r}, fr at scale 2 gives "
                            f"{want2!r}")
    check(not problems, "\n    ".join([""] + problems))


@suite.test
def int8_server_batch_invariant():
    """serve --int8 --kv-f16 (int8 activations on AVX2 or AVX-512 VNNI, K and V cached as f16):
    every case answers 200 and concurrent requests return exactly what each returns alone. On a
    CPU with neither the server must refuse --int8 with a clear message at start-up."""
    global S
    f32 = S
    # --max-step-ms 0: prompt chunks fill the step instead of following the step costs learned
    # at run time, so how a prompt is split (which moves int8 logits by an ulp or so, enough to
    # flip a near tie in 20 greedy tokens) does not depend on the machine's load.
    srv = suite.server(["--int8", "--kv-f16", "--max-step-ms", "0"], registry=f32.registry,
                       name="int8")
    try:
        srv.start()
    except e2e.Fail as e:
        check("AVX2 with FMA and F16C, or AVX-512 VNNI" in str(e),
              f"--int8 failed otherwise than for a missing CPU "
              f"feature: {e}")
        print("    neither AVX2 nor AVX-512 VNNI here: the server refused --int8 as it should")
        return
    check("int8 activations" in srv.log() and "KV cache f16" in srv.log(),
          "the log does not say int8 and the f16 KV cache are on:\n" + srv.log_tail())
    S = srv
    try:
        alone = {c[0]: send(c) for c in CASES}
        cases = CASES + CASES[:6]
        got = concurrent(cases)
        bad = [f"{c[0]}: alone {alone[c[0]]!r}, batched {g!r}"
               for c, g in zip(cases, got) if g != alone[c[0]]]
        check(not bad, f"{len(bad)} differ when batched under --int8 --kv-f16:\n    "
              + "\n    ".join(bad))
        same = sum(alone[c[0]] == ALONE[c[0]] for c in CASES) if ALONE else None
        print(f"    --int8 --kv-f16: {len(cases)} batched = alone; {same}/{len(CASES)} texts equal "
              f"to the f32 server's over {N_TOKENS} tokens")
    finally:
        S = f32
        srv.stop()


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
