#!/usr/bin/env python3
"""`make bench-peer`, speed: llama.cpp and adaptree one after the other on the same GGUF with
the same thread count, and the ratios.

llama.cpp: `llama-bench -p 128,512 -n 128 -r 3` (prefill 128 and 512 tokens, one stream
generating 128) and `llama-batched-bench -npp 128 -ntg 128 -npl 16` (16 sequences through
llama.cpp's own batched API: 16 prompts of 128 tokens in one decode call, then 128 steps of 16
tokens, logits for each). adaptree: `bench_core --peer`, the same five scenarios on core_forward,
with f32 activations (the default, exact) and with int8 ones (`serve --int8`), each the median of
three runs. Both are built by `make bench-peer` (llama.cpp once, tools/build_llamacpp.sh).

Prints one table per model and writes everything to BENCH_DIR/<date>-<cpu>-peer.json. On an
AVX-512 host, `ADAPTREE_CPU=avx2 tools/peer_bench.py --llamacpp build/llama.cpp-avx2` (that
llama.cpp built with LLAMACPP_ISA=avx2 tools/build_llamacpp.sh build/llama.cpp-avx2) compares
both sides' AVX2 kernels, as on an AVX2-only CPU.

usage: tools/peer_bench.py [--build build] [--llamacpp build/llama.cpp] [-m MODEL]... [--out F]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench_machine  # noqa: E402

SCENARIOS = [  # key, label
    ("pp128", "prefill 128"),
    ("pp512", "prefill 512"),
    ("tg128", "one stream, 128 tokens"),
    ("pp128_x16", "16 sequences: prefill 16 x 128"),
    ("tg128_x16", "16 sequences: 128 steps of 16"),
]


def run(cmd, what):
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"peer_bench: {what} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def llamacpp(bindir, model, threads):
    """tok/s per scenario: llama-bench's avg_ts, batched-bench's speed_pp and speed_tg."""
    out = {}
    rows = json.loads(run([os.path.join(bindir, "llama-bench"), "-m", model, "-p", "128,512",
                           "-n", "128", "-t", str(threads), "-r", "3", "-o", "json"],
                          "llama-bench"))
    for r in rows:
        if r.get("n_prompt") and not r.get("n_gen"):
            out[f"pp{r['n_prompt']}"] = r["avg_ts"]
        elif r.get("n_gen") and not r.get("n_prompt"):
            out[f"tg{r['n_gen']}"] = r["avg_ts"]
    text = run([os.path.join(bindir, "llama-batched-bench"), "-m", model, "-c", "4096",
                "-b", "2048", "-ub", "512", "-npp", "128", "-ntg", "128", "-npl", "16",
                "-t", str(threads), "--output-format", "jsonl"], "llama-batched-bench")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            r = json.loads(line)
            out["pp128_x16"] = r["speed_pp"]
            out["tg128_x16"] = r["speed_tg"]
            out["batched_api"] = "llama-batched-bench (llama_batch, one llama_decode per step)"
    if "tg128_x16" not in out:
        print("peer_bench: llama-batched-bench printed no result line; 16 sequences not measured",
              file=sys.stderr)
    return out


def adaptree(build, model, jpath):
    run([os.path.join(build, "bench_core"), "-m", model, "--peer", "--json", jpath],
        "bench_core --peer")
    with open(jpath) as f:
        doc = json.load(f)
    out = {"f32": {}, "int8": {}, "machine": doc.get("machine", {})}
    for r in doc.get("peer", []):
        out[r["mode"]][r["scenario"]] = r["tok_s"]
    return out


def table(name, peer, ours):
    print(f"\n{name}: tok/s, and adaptree over llama.cpp")
    print(f"| {'scenario':32} | {'llama.cpp':>9} | {'adaptree f32':>12} | {'ratio':>6} |"
          f" {'--int8':>9} | {'ratio':>6} |")
    print(f"| {'-' * 32} | {'-' * 8}: | {'-' * 11}: | {'-' * 5}: | {'-' * 8}: | {'-' * 5}: |")
    for key, label in SCENARIOS:
        p, f, i = peer.get(key), ours["f32"].get(key), ours["int8"].get(key)

        def cell(v, w):
            return f"{v:{w}.1f}" if v else f"{'-':>{w}}"

        def ratio(v):
            return f"{v / p:5.2f}x" if v and p else f"{'-':>6}"

        print(f"| {label:32} | {cell(p, 9)} | {cell(f, 12)} | {ratio(f)} | {cell(i, 9)} |"
              f" {ratio(i)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--llamacpp", default="build/llama.cpp")
    ap.add_argument("-m", "--model", action="append")
    ap.add_argument("--out", help="JSON file (default build/bench/<date>-<cpu>-peer.json)")
    a = ap.parse_args()
    models = a.model or [os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")]
    threads = os.cpu_count() or 1
    bindir = os.path.join(a.llamacpp, "bin")
    for tool in ("llama-bench", "llama-batched-bench"):
        if not os.access(os.path.join(bindir, tool), os.X_OK):
            sys.exit(f"peer_bench: {bindir}/{tool} is missing (tools/build_llamacpp.sh)")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = -1
    machine = bench_machine.cpu_info()
    doc = {"schema": "adaptree-bench-peer/1", "cpu": machine["cpu_pretty"], "threads": threads,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "load_average_1m_before": load, "llamacpp_dir": a.llamacpp,
           "adaptree_cpu": os.environ.get("ADAPTREE_CPU", "detected"), "models": []}
    os.makedirs(os.path.join(a.build, "bench"), exist_ok=True)
    print(f"peer_bench: {doc['cpu']}, {threads} threads on both sides, load {load:.2f}; "
          f"llama.cpp from {a.llamacpp}, adaptree kernels {doc['adaptree_cpu']} (ADAPTREE_CPU)")
    for model in models:
        name = os.path.basename(model)
        peer = llamacpp(bindir, model, threads)
        ours = adaptree(a.build, model, os.path.join(a.build, "bench", "peer-adaptree.json"))
        table(name, peer, ours)
        doc["models"].append({"model": name, "llama.cpp": peer, "adaptree_f32": ours["f32"],
                              "adaptree_int8": ours["int8"], "machine": ours["machine"]})
    out = a.out
    if not out:
        name = f"{doc['date'][:10]}-{machine['cpu_slug']}-peer.json"
        out = os.path.join(a.build, "bench", name)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\npeer_bench: wrote {out}")


if __name__ == "__main__":
    main()
