"""The latency scenarios of `make bench-server` (tools/bench_server.py runs them after its
throughput table; `--scenarios latency,flood` runs them alone): how the step budget
(serve --max-step-ms, server/step_budget.h) keeps running streams and newcomers served while
long prompts or many requests arrive. Each starts its own `adaptree serve --no-registry` on a
free 127.0.0.1 port and talks real HTTP to it.

  latency  16 greedy streams (max_tokens 200, SSE, every chunk timestamped); once all of them
           stream, 4 prompts of ~2000 tokens arrive. The running streams' inter-token latency,
           median and p99, with the default budget and with --max-step-ms 0 (the fixed 512-row
           budget). Target: p99 <= 2x median with the default budget.
  flood    client A (user "A") sends 64 requests at once, client B (user "B") one right after:
           B's time to first token against B's on the idle server, default budget and
           --max-step-ms 0. Target: B <= 3x idle with the default budget.
"""

import http.client
import json
import threading
import time

STREAMS = 16
STREAM_TOKENS = 200
LONG_PROMPTS = 4
FLOOD = 64
FLOOD_TOKENS = 32


def long_prompt(k):
    """About 2000 tokens of varied text, different for each k."""
    things = [("apple", "red"), ("stone", "grey"), ("feather", "white"), ("coin", "golden"),
              ("leaf", "green"), ("shell", "pink")]
    parts = [f"Record {k}."]
    for i in range(101):
        w, c = things[(i + k) % len(things)]
        parts.append(f"Entry {i}: the {w} in box {(i * 7 + k) % 13} weighs {i * 3 % 17} grams "
                     f"and is {c}.")
    return " ".join(parts) + " Which entry is the heaviest? Answer:"


def sse(port, body, user=None, timeout=900, on_first=None):
    """One streamed completion: (t_sent, [arrival time of every chunk with text], prompt
    tokens or None, error or None). on_first() is called at the first chunk with text."""
    body = dict(body, stream=True, temperature=0)
    if user:
        body["user"] = user
    t0 = time.time()
    times = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return t0, times, None, f"HTTP {r.status}: {r.read()[:200]!r}"
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if any(c.get("text") for c in ev.get("choices") or []):
                times.append(time.time())
                if on_first and len(times) == 1:
                    on_first()
        return t0, times, None, None
    except (OSError, ValueError) as e:
        return t0, times, None, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def complete(port, body, timeout=900):
    """A plain completion: (seconds, prompt tokens)."""
    t0 = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions",
                     body=json.dumps(dict(body, temperature=0)).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        d = json.loads(r.read())
        return time.time() - t0, d.get("usage", {}).get("prompt_tokens")
    finally:
        conn.close()


def warm(port):
    """A long prompt and a short request: memory touched, first costs learned."""
    complete(port, {"prompt": long_prompt(99), "max_tokens": 4})
    complete(port, {"prompt": "0, 1, 2,", "max_tokens": 16})


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency_run(port, log):
    """16 streams, then 4 long prompts once all of them stream. Returns a result dict."""
    out = [None] * STREAMS
    first = [False] * STREAMS
    threads = []
    for i in range(STREAMS):
        # counting: greedy decoding goes on for hundreds of tokens without an end-of-text
        body = {"prompt": f"{i}, {i + 1}, {i + 2}, {i + 3},", "max_tokens": STREAM_TOKENS}

        def run(i=i, body=body):
            out[i] = sse(port, body, on_first=lambda: first.__setitem__(i, True))

        threads.append(threading.Thread(target=run, daemon=True))
    for t in threads:
        t.start()
    deadline = time.time() + 300
    while time.time() < deadline and not all(first):
        time.sleep(0.05)
    time.sleep(0.5)
    longs = [None] * LONG_PROMPTS
    lthreads = []
    for k in range(LONG_PROMPTS):
        def run(k=k):
            longs[k] = complete(port, {"prompt": long_prompt(k), "max_tokens": 4})

        lthreads.append(threading.Thread(target=run, daemon=True))
    t_long = time.time()
    for t in lthreads:
        t.start()
    for t in threads + lthreads:
        t.join(900)
    errors = [o[3] for o in out if o and o[3]]
    gaps = []
    during = []  # gaps that end while the long prompts are in flight
    t_long_end = t_long + max((lg[0] for lg in longs if lg), default=0)
    for o in out:
        if not o:
            continue
        ts = o[1]
        for a, b in zip(ts, ts[1:]):
            gaps.append(1e3 * (b - a))
            if t_long <= b <= t_long_end:
                during.append(1e3 * (b - a))
    if errors:
        log(f"bench: latency: {len(errors)} stream errors, e.g. {errors[0]}")
    return {"itl_p50": pct(gaps, 0.5), "itl_p99": pct(gaps, 0.99), "itl_max": max(gaps or [0]),
            "during_p50": pct(during, 0.5), "during_p99": pct(during, 0.99),
            "gaps": len(gaps), "long_s": [lg[0] for lg in longs if lg],
            "long_tokens": [lg[1] for lg in longs if lg], "errors": len(errors)}


def flood_run(port, log):
    """B alone three times (idle TTFT: the median), then A's 64 and B's one right after."""
    idle = []
    for _ in range(3):
        t0, ts, _, err = sse(port, {"prompt": "B asks: what is the capital of France?",
                                    "max_tokens": 8}, user="B")
        if ts:
            idle.append(1e3 * (ts[0] - t0))
    a_out = [None] * FLOOD
    threads = []
    for i in range(FLOOD):
        def run(i=i):
            a_out[i] = sse(port, {"prompt": f"Request {i} from A: once upon a time, there was",
                                  "max_tokens": FLOOD_TOKENS}, user="A")

        threads.append(threading.Thread(target=run, daemon=True))
    for t in threads:
        t.start()
    time.sleep(0.05)
    t0, ts, _, err = sse(port, {"prompt": "B asks: what is the capital of France?",
                                "max_tokens": 8}, user="B")
    for t in threads:
        t.join(900)
    a_ttft = [1e3 * (o[1][0] - o[0]) for o in a_out if o and o[1]]
    errors = [o[3] for o in a_out if o and o[3]] + ([err] if err else [])
    if errors:
        log(f"bench: flood: {len(errors)} errors, e.g. {errors[0]}")
    return {"idle_ms": pct(idle, 0.5), "b_ms": 1e3 * (ts[0] - t0) if ts else None,
            "a_ttft_p50": pct(a_ttft, 0.5), "a_ttft_max": max(a_ttft or [0]),
            "errors": len(errors)}
