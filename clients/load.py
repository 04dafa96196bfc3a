#!/usr/bin/env python3
"""Load generator for adaptree: N concurrent streams (asyncio + httpx) for a number of requests
or a duration, each request on an adapter selection; prints aggregate generated tokens/s, time
to first token (TTFT) and inter-token latency percentiles, and errors. --json prints one JSON
object instead (tools/bench_server.sh reads it).

    python3 clients/load.py -c 32 -r 64 -n 64                       # base model
    python3 clients/load.py -c 32 -r 64 --model fr/manpages/alice    # everyone on one chain
    python3 clients/load.py -c 32 -r 64 --model 'qv8/a{i:02d}' --n-models 32   # 32 adapters
    python3 clients/load.py -c 8 -d 30 --adapters fr:0.5,de:0.5 --model base --chat

Selections: each --model value (repeatable; "{i}" expands over range(--n-models)) and each
--adapters list (repeatable; "ID:SCALE,ID:SCALE") is one selection; request j uses selection
j mod count, so with -c equal to the count every stream keeps its own selection. No selection
means the base model. Timing: TTFT is send -> first chunk with text; inter-token latency is the
gap between consecutive chunks with text (the server sends one chunk per released token);
aggregate tok/s is the completion tokens of all successful requests over the wall time from the
first send to the last answer.
"""

import argparse
import asyncio
import json
import math
import os
import sys
import time

import httpx


def percentile(xs, q):
    """Linear-interpolated percentile (q in [0, 100]) of a list; None if empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def parse_adapters(spec):
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            i, s = part.rsplit(":", 1)
            out.append({"id": i, "scale": float(s)})
        else:
            out.append({"id": part})
    return out


def selections(models, n_models, adapter_lists):
    """[(label, body fields), ...]; at least one (the base). One plain --model together with
    --adapters lists means each list added to that model's chain."""
    lists = []
    for spec in adapter_lists or []:
        lst = parse_adapters(spec)
        lists.append(("+".join(f"{x['id']}:{x.get('scale', 1)}" for x in lst), lst))
    if lists and models and len(models) == 1 and "{i" not in models[0]:
        m = models[0]
        base = {} if m in ("", "-") else {"model": m}
        return [(f"{m}+{lbl}", {**base, "adapters": lst}) for lbl, lst in lists]
    sels = []
    for m in models or []:
        if "{i" in m:
            for i in range(n_models):
                mid = m.format(i=i)
                sels.append((mid, {"model": mid}))
        else:
            sels.append((m, {} if m in ("", "-") else {"model": m}))
    sels += [(lbl, {"adapters": lst}) for lbl, lst in lists]
    return sels or [("base", {})]


class Result:
    __slots__ = ("sel", "start", "end", "first", "chunks", "tokens", "status", "error", "finish")

    def __init__(self, sel):
        self.sel, self.start, self.end, self.first = sel, 0.0, 0.0, None
        self.chunks, self.tokens, self.status, self.error, self.finish = [], 0, 0, None, None


async def one_request(client, a, sel_label, sel_body, j):
    r = Result(sel_label)
    body = dict(sel_body)
    body.update(max_tokens=a.max_tokens, temperature=a.temperature)
    if a.seed is not None:
        body["seed"] = a.seed
    if a.top_p is not None:
        body["top_p"] = a.top_p
    if a.chat:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": a.prompt}]
    else:
        path = "/v1/completions"
        body["prompt"] = a.prompt
    if not a.no_stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    r.start = time.perf_counter()
    try:
        if a.no_stream:
            resp = await client.post(path, json=body)
            r.status = resp.status_code
            r.end = time.perf_counter()
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                return r
            d = resp.json()
            r.tokens = d.get("usage", {}).get("completion_tokens", 0)
            r.first = r.end
            r.finish = d["choices"][0].get("finish_reason")
            return r
        async with client.stream("POST", path, json=body) as resp:
            r.status = resp.status_code
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                r.end = time.perf_counter()
                return r
            n_text, usage, done = 0, None, False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                ch = json.loads(data)
                if ch.get("usage"):
                    usage = ch["usage"]
                for c in ch.get("choices") or []:
                    piece = c.get("text")
                    if piece is None:
                        piece = (c.get("delta") or {}).get("content")
                    if piece:
                        t = time.perf_counter()
                        if r.first is None:
                            r.first = t
                        r.chunks.append(t)
                        n_text += 1
                    if c.get("finish_reason"):
                        r.finish = c["finish_reason"]
            r.end = time.perf_counter()
            r.tokens = usage["completion_tokens"] if usage else n_text
            if not done:
                r.error = "stream ended without [DONE]"
            elif r.finish is None:
                r.error = "stream ended without a finish_reason"
    except (httpx.HTTPError, OSError, ValueError, KeyError) as e:
        r.end = time.perf_counter()
        r.error = f"{type(e).__name__}: {e}"
    return r


async def run(a):
    sels = selections(a.model, a.n_models, a.adapters)
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    limits = httpx.Limits(max_connections=a.concurrency, max_keepalive_connections=a.concurrency)
    timeout = httpx.Timeout(a.timeout, connect=a.timeout)
    results = []
    async with httpx.AsyncClient(base_url=a.url, headers=headers, limits=limits,
                                 timeout=timeout) as client:
        if a.warmup:
            # One short request per selection, a.concurrency at a time: loads the adapters.
            saved = a.max_tokens
            a.max_tokens = 1
            sem = asyncio.Semaphore(a.concurrency)

            async def warm(lbl, b):
                async with sem:
                    return await one_request(client, a, lbl, b, 0)

            w = await asyncio.gather(*(warm(lbl, b) for lbl, b in sels))
            a.max_tokens = saved
            bad = [x for x in w if x.error]
            if bad:
                print(f"load: warm-up: {len(bad)} of {len(w)} failed, first: {bad[0].sel}: "
                      f"{bad[0].error}", file=sys.stderr)
        counter = iter(range(1 << 62))
        t_begin = time.perf_counter()
        deadline = t_begin + a.duration if a.duration else None

        async def worker():
            while True:
                j = next(counter)
                if a.requests is not None and j >= a.requests:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                lbl, b = sels[j % len(sels)]
                results.append(await one_request(client, a, lbl, b, j))

        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
    return sels, results


def summarize(a, sels, results):
    ok = [r for r in results if not r.error]
    errs = [r for r in results if r.error]
    wall = (max(r.end for r in results) - min(r.start for r in results)) if results else 0.0
    tokens = sum(r.tokens for r in ok)
    ttft = [(r.first - r.start) * 1e3 for r in ok if r.first is not None]
    itl = [(b - a_) * 1e3 for r in ok for a_, b in zip(r.chunks, r.chunks[1:])]
    lat = [(r.end - r.start) * 1e3 for r in ok]
    tpot = [((r.end - r.first) * 1e3 / (r.tokens - 1)) for r in ok
            if r.first is not None and r.tokens > 1]
    statuses = {}
    for r in results:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    finish = {}
    for r in ok:
        finish[str(r.finish)] = finish.get(str(r.finish), 0) + 1
    return {
        "label": a.label,
        "concurrency": a.concurrency,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errs),
        "error_samples": [f"{r.sel}: {r.error}" for r in errs[:5]],
        "statuses": statuses,
        "finish_reasons": finish,
        "selections": len(sels),
        "stream": not a.no_stream,
        "max_tokens": a.max_tokens,
        "wall_s": wall,
        "generated_tokens": tokens,
        "tok_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p95": percentile(ttft, 95),
        "ttft_ms_p99": percentile(ttft, 99),
        "itl_ms_p50": percentile(itl, 50),
        "itl_ms_p95": percentile(itl, 95),
        "itl_ms_p99": percentile(itl, 99),
        "tpot_ms_mean": sum(tpot) / len(tpot) if tpot else None,
        "latency_ms_p50": percentile(lat, 50),
        "latency_ms_p99": percentile(lat, 99),
    }


def fmt(x, unit=""):
    return "-" if x is None else f"{x:.1f}{unit}"


def main(argv=None):
    p = argparse.ArgumentParser(description="adaptree load generator",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    url = os.environ.get("ADAPTREE_URL", "http://127.0.0.1:8080").rstrip("/")
    p.add_argument("--url", default=url[:-3] if url.endswith("/v1") else url)
    p.add_argument("--api-key", default=os.environ.get("ADAPTREE_API_KEY"))
    p.add_argument("-c", "--concurrency", type=int, default=8, help="concurrent streams")
    p.add_argument("-r", "--requests", type=int, help="total requests (default: one per stream)")
    p.add_argument("-d", "--duration", type=float, help="seconds: start requests until then")
    p.add_argument("-n", "--max-tokens", type=int, default=64)
    p.add_argument("-p", "--prompt", default="Once upon a time, in a small village by the sea,")
    p.add_argument("--chat", action="store_true", help="/v1/chat/completions (prompt = user)")
    p.add_argument("--model", action="append", help="selection: a model/node id ({i} pattern)")
    p.add_argument("--n-models", type=int, default=1, help="range for {i} in --model")
    p.add_argument("--adapters", action="append", help='selection: "ID:SCALE,ID:SCALE"')
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--warmup", action="store_true", help="one 1-token request per selection first")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--label", default="")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.requests is None and a.duration is None:
        a.requests = a.concurrency
    if a.concurrency < 1 or (a.requests is not None and a.requests < 0):
        p.error("concurrency must be >= 1 and requests >= 0")
    sels, results = asyncio.run(run(a))
    s = summarize(a, sels, results)
    if a.json:
        print(json.dumps(s))
    else:
        print(f"load: {a.concurrency} streams, {s['requests']} requests on {len(sels)} "
              f"selection(s), max_tokens {a.max_tokens}, {'stream' if s['stream'] else 'no stream'}")
        print(f"  requests   {s['ok']} ok, {s['errors']} errors; statuses {s['statuses']}; "
              f"finish {s['finish_reasons']}")
        print(f"  throughput {s['generated_tokens']} tokens in {s['wall_s']:.2f} s = "
              f"{s['tok_per_s']:.1f} tok/s aggregate")
        print(f"  TTFT       p50 {fmt(s['ttft_ms_p50'], ' ms')}  p99 {fmt(s['ttft_ms_p99'], ' ms')}")
        print(f"  inter-tok  p50 {fmt(s['itl_ms_p50'], ' ms')}  p99 {fmt(s['itl_ms_p99'], ' ms')}"
              f"  (mean per-token {fmt(s['tpot_ms_mean'], ' ms')})")
        for e in s["error_samples"]:
            print(f"  error: {e}")
    return 1 if s["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
