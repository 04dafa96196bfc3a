#!/usr/bin/env python3
"""`make bench-server`, KV part: the prefix cache and the paged KV pool under load.

1. Shared system prompt: 32 concurrent streams on 8 adapters (4 each), every prompt the same
   ~600-token system prompt plus its own question; TTFT p50/p99 and aggregate tok/s with the
   prefix cache (after one warm-up request per adapter) and with --no-prefix-cache.
   Target: TTFT p50 with the cache >= 5x better, throughput not lower.
2. KV memory at 32 streams x 256 positions (distinct prompts, no sharing): the server's RSS
   growth and adaptree_kv_bytes at the peak, against what the contiguous per-sequence caches
   before paging allocated for the same load (capacity doubling from 64 positions per sequence,
   computed from the same bytes per position).
3. The largest number of concurrent 1k-token streams whose KV fits in 1 GB: blocks of 16
   positions from the server's own block size, f32 and f16.

It writes a small registry (tools/make_bench_registry.py shapes, 8 rank-8 q,v adapters), starts
`$BUILD/adaptree serve` on free 127.0.0.1 ports and stops it after each scenario.

--json F writes the results as JSON (schema "adaptree-bench-kv/1"); when F already holds a
tools/bench_server.py document (`make bench-server` gives both the same file), they go into it
under "kv" instead, the rest of it kept.

usage: tools/bench_kv.py [--build build] [-m MODEL] [--json F] [serve flags, e.g. --int8]
"""

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench_machine  # noqa: E402
import bench_server as bs  # noqa: E402
import make_bench_registry as mbr  # noqa: E402

SYSTEM = ("You are the support assistant of a Linux distribution. Answer in a friendly, precise "
          "and short way; when a command is involved, show it on its own line, explain each "
          "option it uses and warn about anything destructive. Never invent package names; if "
          "you are unsure, say so and suggest how to find out with apt-cache search or the "
          "distribution's web site. ")


def stream_one(url, body, out):
    """POSTs a streaming completion; out gets (ttft s, total s, completion tokens)."""
    data = json.dumps(dict(body, stream=True, stream_options={"include_usage": True})).encode()
    req = urllib.request.Request(url + "/v1/completions", data=data,
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    ttft, toks = None, 0
    with urllib.request.urlopen(req, timeout=1200) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and ev["choices"][0].get("text") and ttft is None:
                ttft = time.time() - t0
            if ev.get("usage"):
                toks = ev["usage"]["completion_tokens"]
    out.append((ttft if ttft is not None else time.time() - t0, time.time() - t0, toks))


def concurrent(url, bodies):
    out, ts = [], []
    t0 = time.time()
    for b in bodies:
        t = threading.Thread(target=stream_one, args=(url, b, out))
        t.start()
        ts.append(t)
    for t in ts:
        t.join()
    return out, time.time() - t0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def metric(url, name):
    st, body = bs.http(url + "/metrics", timeout=30)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def shared_prompt(a, reg, ids):
    system = SYSTEM * 8  # 608 tokens with SmolLM2's tokenizer
    res = {}
    for label, extra in (("prefix cache", []), ("--no-prefix-cache", ["--no-prefix-cache"])):
        srv = bs.Server(a.build, a.model, reg, ["--max-seqs", "32"] + extra + a.serve_args)
        try:
            bs.preload(srv, ids)
            warm = [{"model": i, "prompt": system + "Question: hello?\nAnswer:",
                     "max_tokens": 4, "temperature": 0} for i in ids]
            concurrent(srv.url, warm)
            warm_rows = metric(srv.url, "adaptree_prompt_tokens_total")
            bodies = [{"model": ids[k % len(ids)],
                       "prompt": f"{system}Question {k}: how do I list the files of package "
                                 f"number {k}? Explain in detail, step by step.\nAnswer: First,",
                       "max_tokens": a.max_tokens, "temperature": 0} for k in range(32)]
            out, wall = concurrent(srv.url, bodies)
            ptoks = metric(srv.url, "adaptree_prompt_tokens_total") - warm_rows
            ttft = [o[0] for o in out]
            toks = sum(o[2] for o in out)
            res[label] = {"ttft_p50": statistics.median(ttft), "ttft_p99": pct(ttft, 0.99),
                          "tok_s": toks / wall, "wall": wall, "prompt_rows": ptoks}
            bs.log(f"bench-kv: {label}: {res[label]}")
        finally:
            srv.stop()
    return res


def memory(a, reg):
    """32 streams of distinct ~200-token prompts + 56 generated tokens."""
    srv = bs.Server(a.build, a.model, reg, ["--max-seqs", "32", "--ctx", "512",
                                            "--no-prefix-cache"] + a.serve_args)
    try:
        idle = rss_mb(srv.proc.pid)
        words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
        bodies = []
        for k in range(32):
            text = " ".join(words[(k + i) % len(words)] + str(k) for i in range(90))
            bodies.append({"prompt": text, "max_tokens": 56, "temperature": 0})
        peak = {"rss": 0.0, "kv": 0.0}
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak["rss"] = max(peak["rss"], rss_mb(srv.proc.pid) or 0)
                kv = metric(srv.url, "adaptree_kv_bytes") or 0
                peak["kv"] = max(peak["kv"], kv)
                time.sleep(0.05)

        t = threading.Thread(target=sample)
        t.start()
        out, _ = concurrent(srv.url, bodies)
        done.set()
        t.join()
        block = metric(srv.url, "adaptree_kv_block_bytes")
        per_pos = block / 16
        # what each sequence would have allocated before paging: capacity 64, doubled as needed
        st, body = bs.http(srv.url + "/v1/completions",
                           {"prompt": bodies[0]["prompt"], "max_tokens": 1, "echo": False})
        n_prompt = json.loads(body)["usage"]["prompt_tokens"] if st == 200 else 200
        positions = [n_prompt + o[2] for o in out]
        before = 0
        for n in positions:
            cap = 64
            while cap < n:
                cap *= 2
            before += cap * per_pos
        paged = sum(math.ceil(n / 16) * block for n in positions)
        r = {"positions_mean": statistics.mean(positions), "rss_growth_mb": peak["rss"] - idle,
             "kv_peak_mb": peak["kv"] / 2**20, "paged_mb": paged / 2**20,
             "contiguous_mb": before / 2**20, "block_bytes": block}
        bs.log(f"bench-kv: memory: {r}")
        return r
    finally:
        srv.stop()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.environ.get("BUILD", "build"))
    p.add_argument("-m", "--model", default=os.environ.get(
        "MODEL", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")))
    p.add_argument("-n", "--max-tokens", type=int, default=32)
    p.add_argument("--json", help="also write the results to this file")
    a, a.serve_args = p.parse_known_args(argv)  # the rest: `serve` flags (e.g. --int8)
    tmp = tempfile.mkdtemp(prefix="adaptree-bench-kv-")
    try:
        reg = os.path.join(tmp, "reg")
        dims = mbr.model_dims(a.model)
        import numpy as np
        ids = [f"a{i}" for i in range(8)]
        for k, i in enumerate(ids):
            mbr.write_adapter(os.path.join(reg, i), dims, 8, mbr.QV, np.random.default_rng(k + 1))
        cpu = "unknown CPU"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        sp = shared_prompt(a, reg, ids)
        mem = memory(a, reg)
        block = mem["block_bytes"]
        fit = {kind: int(2**30 // (math.ceil(1024 / 16) * block * f)) for kind, f in
               (("f32", 1), ("f16", 0.5))}
        on, off = sp["prefix cache"], sp["--no-prefix-cache"]
        ratio = off["ttft_p50"] / on["ttft_p50"]
        print(f"\nKV and prefix cache ({cpu}, {os.cpu_count()} cores)")
        print(f"{'shared 608-token system prompt, 32 streams on 8 adapters':<58}"
              f"{'TTFT p50':>10}{'TTFT p99':>10}{'tok/s':>8}{'rows computed':>15}")
        for label, r in sp.items():
            print(f"  {label:<56}{r['ttft_p50'] * 1e3:>8.0f}ms{r['ttft_p99'] * 1e3:>8.0f}ms"
                  f"{r['tok_s']:>8.1f}{r['prompt_rows']:>15.0f}")
        print(f"  TTFT p50 {ratio:.1f}x better with the cache (target >= 5x): "
              f"{'PASS' if ratio >= 5 else 'MISS'}; throughput {on['tok_s'] / off['tok_s']:.2f}x "
              f"(target >= 1): {'PASS' if on['tok_s'] >= off['tok_s'] * 0.97 else 'MISS'}")
        print(f"KV memory, 32 streams x {mem['positions_mean']:.0f} positions: paged "
              f"{mem['paged_mb']:.0f} MB (adaptree_kv_bytes peak {mem['kv_peak_mb']:.0f} MB, "
              f"server RSS +{mem['rss_growth_mb']:.0f} MB) vs {mem['contiguous_mb']:.0f} MB allocated "
              f"by contiguous per-sequence caches (before paging; resident only where written)")
        print(f"1k-token streams whose KV fits in 1 GB: {fit['f32']} (f32 KV), {fit['f16']} "
              f"(--kv-f16); blocks of 16 positions, {block / 1024:.0f} KB each at f32")
        if a.json:
            ttft_ok, tps_ok = ratio >= 5, on["tok_s"] >= off["tok_s"] * 0.97
            kv = {"schema": "adaptree-bench-kv/1", "tool": "bench_kv",
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": dict(bench_machine.cpu_info(), load_average_1m=os.getloadavg()[0]),
                  "mode": "int8" if "--int8" in a.serve_args else "f32",
                  "kv_cache": "f16" if "--kv-f16" in a.serve_args else "f32",
                  "serve_flags": a.serve_args, "cpu": cpu, "shared_prompt": sp, "memory": mem,
                  "fit_1gb": fit, "ttft_p50_ratio": ratio,
                  "targets": [bs.target("TTFT p50 with the prefix cache >= 5x better", ttft_ok,
                                        ratio, ">=", 5, "x"),
                              bs.target("throughput with the prefix cache >= without", tps_ok,
                                        on["tok_s"] / off["tok_s"], ">=", 1, "x")]}
            doc = kv
            try:
                with open(a.json) as f:
                    old = json.load(f)
                if isinstance(old, dict) and old.get("tool") == "bench_server":
                    doc = dict(old, kv=kv)
            except (OSError, ValueError):
                pass
            bs.write_json(a.json, doc)
            print(f"bench-kv: wrote {a.json}" + (" (under \"kv\")" if doc is not kv else ""))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
