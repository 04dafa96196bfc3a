"""End-to-end limits and shutdown: 429 (+ Retry-After, JSON) when a tiny --max-seqs and
--queue-limit 1 are full; a request queued behind the only slot (--max-seqs 1) is served when
the slot frees; SIGTERM with requests in flight (one streaming, one not) finishes them with the
text they would have had, refuses new work meanwhile, and exits 0; requests still running at
--drain-timeout get an error (an error event and [DONE] in a stream) and the exit code is 3."""

import sys
import threading
import time

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("limits", budget=150)
FULL = None
ONE = None
TERM = None
SMALL = None
CUT = None
FOUR = None


def setup():
    global FULL, ONE, TERM, SMALL, CUT, FOUR
    # Each registry adapter is ~1.9-2.5 MB: a 4 MB budget holds one chain member or two nodes.
    SMALL = suite.server(["--adapter-cache-mb", "4"], registry=e2e.make_registry(suite.tmp),
                         name="server-cache4mb")
    SMALL.start()
    FULL = suite.server(["--max-seqs", "2", "--queue-limit", "1"], name="server-seqs2-q1")
    FULL.start()
    ONE = suite.server(["--max-seqs", "1", "--queue-limit", "4"], name="server-seqs1")
    ONE.start()
    TERM = suite.server(name="server-sigterm")
    TERM.start()
    CUT = suite.server(["--drain-timeout", "2"], name="server-drain2s")
    CUT.start()
    FOUR = suite.server(["--max-seqs", "4", "--queue-limit", "4"], name="server-seqs4-q4")
    FOUR.start()


BODY = {"prompt": "Count from 1 to 1000: 1, 2, 3, 4, 5,", "max_tokens": 24, "temperature": 0}


@suite.test
def queue_full_429():
    res = [None] * 8

    def run(i):
        try:
            if i % 2:
                st, ev, raw = e2e.stream(FULL.port, "/v1/completions", dict(BODY, stream=True),
                                         timeout=30)
                res[i] = e2e.Resp(st, {}, raw) if st != 200 else ("stream", ev)
            else:
                res[i] = FULL.post("/v1/completions", BODY, timeout=30)
        except OSError as e:
            res[i] = e

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(res))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120 * e2e.SLOW)
    ok = [r for r in res if isinstance(r, tuple) or (isinstance(r, e2e.Resp) and r.status == 200)]
    full = [r for r in res if isinstance(r, e2e.Resp) and r.status == 429]
    other = [r for r in res if r not in ok and r not in full]
    eq(other, [], "answers other than 200 and 429")
    check(len(ok) >= 1 and len(full) >= 1, f"{len(ok)} ok, {len(full)} x 429 out of {len(res)}")
    for r in ok:
        if isinstance(r, tuple):
            eq(r[1][-1], "[DONE]", "stream admitted next to 429s ends with [DONE]")
    for r in full:
        check_error(r, 429, what="queue full")
    # the non-stream 429s carry Retry-After (the streaming ones went through e2e.stream)
    direct = [r for i, r in enumerate(res) if i % 2 == 0 and isinstance(r, e2e.Resp)
              and r.status == 429]
    for r in direct:
        check("retry-after" in r.headers, f"429 without Retry-After: {r.headers}")
    e2e.wait_until(lambda: FULL.post("/v1/completions", dict(BODY, max_tokens=2)).status == 200,
                   20, "a request to succeed once the queue drained")


@suite.test
def queue_full_429_has_retry_after():
    """Both slots busy with streams, one request waiting: the next one gets 429. The streams
    ask for far more tokens than the test needs and hang up once it is done, so their length
    does not depend on how fast the machine is."""
    release = threading.Event()
    ended = threading.Event()
    started = [threading.Event(), threading.Event()]

    class HangUp(Exception):
        pass

    def on_event(k, ev):
        started[k].set()
        if release.is_set():
            raise HangUp()

    def long_stream(k):
        try:
            e2e.stream(FULL.port, "/v1/completions", dict(BODY, max_tokens=1500, stream=True),
                       on_event=lambda i, ev: on_event(k, ev), timeout=60)
        except (HangUp, OSError):
            pass
        if not release.is_set():
            ended.set()

    ts = [threading.Thread(target=long_stream, args=(k,), daemon=True) for k in range(2)]
    for t in ts:
        t.start()
        time.sleep(0.1)
    try:
        for ev in started:
            check(ev.wait(60 * e2e.SLOW), "the two streams never started")
        t2 = threading.Thread(target=lambda: FULL.post("/v1/completions", BODY, timeout=60),
                              daemon=True)
        t2.start()   # waits in the queue (limit 1)
        e2e.wait_until(lambda: b'"waiting":1' in
                       FULL.req("GET", "/health").data.replace(b" ", b""),
                       10, "the third request to wait in the queue")
        if ended.is_set():
            raise e2e.Fail("a 1500-token stream ended before the queue filled; cannot test")
        r = FULL.post("/v1/completions", BODY)
        check_error(r, 429, what="a request with both slots running and one waiting")
        check("retry-after" in r.headers, f"429 without Retry-After: {r.headers}")
        ra = r.headers["retry-after"]
        check(ra.strip().isdigit(), f"Retry-After {ra!r} is not a number of seconds")
    finally:
        release.set()   # the streams hang up at their next event: the queued request runs
    for t in ts + [t2]:
        t.join(120 * e2e.SLOW)


@suite.test
def admission_holds_max_seqs_plus_queue_limit_exactly():
    """--max-seqs 4 --queue-limit 4 and a burst of 12 requests that each run for seconds: 4 run,
    4 wait, and exactly 4 get 429 (the engine used to count requests not yet moved into a free
    slot as waiting, and admitted 5)."""
    body = {"prompt": "Count from 1 to 1000: 1, 2, 3,", "max_tokens": 120, "temperature": 0}
    go = threading.Event()
    res = [None] * 12

    def run(i):
        go.wait(10)
        try:
            res[i] = FOUR.post("/v1/completions", body, timeout=120).status
        except OSError as e:
            res[i] = repr(e)

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(res))]
    for t in ts:
        t.start()
    go.set()
    for t in ts:
        t.join(180 * e2e.SLOW)
    counts = {s: res.count(s) for s in set(res)}
    print(f"    12 requests at once: {counts}")
    eq(counts, {200: 8, 429: 4}, "answers to a burst of 12 with 4 slots and a queue of 4")
    m = e2e.metrics(FOUR)
    eq(e2e.metric_sum(m, lambda n: n == "adaptree_queue_rejected_total"), 4, "rejected counter")


@suite.test
def request_queued_behind_the_only_slot_is_served():
    """--max-seqs 1: a request that arrives while the slot is busy runs when it frees."""
    first = threading.Event()
    a = e2e.Background(e2e.stream, ONE.port, "/v1/completions", dict(BODY, stream=True),
                       on_event=lambda i, ev: first.set(), timeout=30)
    check(first.wait(30 * e2e.SLOW), "the first request never started")
    try:
        r = ONE.post("/v1/completions", BODY, timeout=30)
    except OSError as e:
        raise e2e.Fail(f"the queued request got no answer in {30 * e2e.SLOW:.0f} s ({e}); "
                       f"/health: {ONE.req('GET', '/health').data!r}")
    eq(r.status, 200, "queued request")
    st, events, raw = a.result()
    eq(st, 200, "the first request")
    e2e.wait_until(lambda: b'"waiting":0' in ONE.req("GET", "/health").data.replace(b" ", b""),
                   10, "/health waiting back to 0")


@suite.test
def sigterm_finishes_requests_in_flight_then_exits_0():
    sbody = {"prompt": "Count from 1 to 1000: 1, 2, 3,", "max_tokens": 40, "temperature": 0}
    nbody = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
    want_s = e2e.text_of(TERM.post("/v1/completions", sbody).json())
    want_n = e2e.text_of(TERM.post("/v1/completions", nbody).json())
    first = threading.Event()

    def on_event(i, ev):
        first.set()

    st = e2e.Background(e2e.stream, TERM.port, "/v1/completions", dict(sbody, stream=True),
                        on_event=on_event)
    nt = e2e.Background(TERM.post, "/v1/completions", nbody)
    check(first.wait(60 * e2e.SLOW), "the stream never started")
    e2e.wait_until(lambda: e2e.running_gauge(e2e.metrics(TERM)) == 2, 20,
                   "both requests running", interval=0.02)
    TERM.proc.send_signal(15)
    time.sleep(0.05)
    try:
        r = TERM.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, timeout=10)
        if TERM.alive() and st.t.is_alive():
            check_error(r, 503, what="a new request while draining")
    except OSError:
        pass   # the listener may already be closed: refusing connections is fine too
    status, events, raw = st.result()
    eq(status, 200, f"stream in flight at SIGTERM ({raw[:200]!r})")
    eq(events[-1], "[DONE]", "stream in flight ends with [DONE]")
    eq(e2e.stream_text(events), want_s, "stream in flight finishes its text")
    r = nt.result()
    eq(r.status, 200, f"non-stream request in flight at SIGTERM: {r}")
    eq(e2e.text_of(r.json()), want_n, "non-stream request in flight finishes its text")
    try:
        TERM.proc.wait(30 * e2e.SLOW)
    except Exception:
        raise e2e.Fail("server still running 30 s after SIGTERM with nothing in flight")
    TERM.exit_code = TERM.proc.returncode
    eq(TERM.exit_code, 0, "exit code after SIGTERM")
    eq(TERM.sanitizer_report(), None, "sanitizer report")


@suite.test
def requests_cut_by_the_drain_timeout_get_an_error_and_exit_is_3():
    """--drain-timeout 2, a stream and a plain request that each need far longer: at SIGTERM +
    2 s the stream ends with an error event (code shutting_down) and [DONE], the plain request
    gets a 503 with the same code, and the server exits 3 (not 0: requests were cut)."""
    body = {"prompt": "Count from 1 to 1000: 1, 2, 3,", "max_tokens": 1900, "temperature": 0}
    first = threading.Event()
    st = e2e.Background(e2e.stream, CUT.port, "/v1/completions", dict(body, stream=True),
                        on_event=lambda i, ev: first.set(), timeout=60)
    nt = e2e.Background(CUT.post, "/v1/completions", body, timeout=60)
    check(first.wait(60 * e2e.SLOW), "the stream never started")
    e2e.wait_until(lambda: e2e.running_gauge(e2e.metrics(CUT)) == 2, 20,
                   "both requests running", interval=0.02)
    t0 = time.time()
    CUT.proc.send_signal(15)
    status, events, raw = st.result()
    dt = time.time() - t0
    eq(status, 200, f"the stream ({raw[:200]!r})")
    eq(events[-1], "[DONE]", "the cut stream ends with [DONE]")
    err = events[-2] if len(events) >= 2 else None
    check(isinstance(err, dict) and isinstance(err.get("error"), dict),
          f"the event before [DONE] is not an error object: {err!r}")
    eq(err["error"].get("code"), "shutting_down", "the cut stream's error code")
    check("--drain-timeout" in err["error"].get("message", ""), f"message: {err['error']!r}")
    check(len(e2e.stream_text(events)) > 0, "the stream had sent text before it was cut")
    print(f"    stream cut {dt:.2f} s after SIGTERM (--drain-timeout 2): {err['error']['message']!r}")
    check(1.5 <= dt <= 10 * e2e.SLOW, f"the stream was cut {dt:.2f} s after SIGTERM")
    r = nt.result()
    check_error(r, 503, "shutting_down", "a plain request cut by the drain time-out")
    try:
        CUT.proc.wait(30 * e2e.SLOW)
    except Exception:
        raise e2e.Fail("server still running 30 s after SIGTERM")
    CUT.exit_code = CUT.proc.returncode
    eq(CUT.exit_code, 3, "exit code after a drain that cut requests")
    eq(CUT.sanitizer_report(), None, "sanitizer report")


@suite.test
def tiny_adapter_cache_evicts_but_serves_exactly():
    """--adapter-cache-mb 4 with selections that need far more: every request is served, with the
    text it has alone; adapters get evicted; a pinned one stays."""
    eq(SMALL.post("/v1/adapters/pin", {"id": "fx/qv_r4", "pin": True}).status, 200, "pin fx/qv_r4")
    cases = [{"model": "fr/manpages/alice"}, {"model": "de/witze"}, {"model": "fr"},
             {"adapters": [{"id": "de", "scale": 0.5}, {"id": "fr/manpages", "scale": 0.5}]},
             {"model": "fx/all_rslora_r8"}, {"model": "fx/qv_r4"}]
    body = {"prompt": "Die", "max_tokens": 10, "temperature": 0}

    def run(c):
        r = SMALL.post("/v1/completions", dict(body, **c))
        check(r.status == 200, f"{c}: {r}")
        return e2e.text_of(r.json())

    alone = [run(c) for c in cases]
    res = [e2e.Background(run, c) for c in cases + cases]
    got = [b.result() for b in res]
    eq(got, alone + alone, "texts under cache pressure, concurrent vs alone")
    m = e2e.metrics(SMALL)
    ev = e2e.metric_sum(m, lambda n: n == "adaptree_adapter_evictions_total")
    if ev is None:
        ev = sum(v for (n, lbl), v in m.items() if n == "adaptree_adapter_evictions_total")
    check(ev and ev > 0, f"no evictions counted with a 4 MB cache (adaptree_adapter_evictions_total "
          f"= {ev})")
    n = e2e.find_node(SMALL.req("GET", "/v1/adapters").json(), "fx/qv_r4")
    check(n and n.get("state") == "ready" and n.get("pinned"), f"pinned fx/qv_r4 evicted: {n}")
    # Eviction runs at acquire time: once the burst is over, one more request brings the
    # resident bytes back under the budget.
    run({"model": "fx/qv_r4"})
    m = e2e.metrics(SMALL)
    resident = e2e.metric_sum(m, lambda x: x == "adaptree_adapter_cache_bytes")
    check(resident is not None, "no adaptree_adapter_cache_bytes in /metrics")
    check(resident <= 4 * 2 ** 20, f"resident adapter bytes {resident:.0f} over the 4 MiB budget "
          "after the burst and one more request")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
