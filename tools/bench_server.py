#!/usr/bin/env python3
"""`make bench-server`: the server's aggregate decode throughput with many different adapters
in one batch, next to the same load without adapters and to this machine's compute ceiling.

It writes a temporary registry (tools/make_bench_registry.py: 32 rank-8 q,v adapters, 32 rank-16
all-linear ones, 32 three-level chains, all F16), starts `$BUILD/adaptree serve` on a free
127.0.0.1 port, pre-loads and pins every adapter a scenario uses and warms it up, then measures
each scenario with clients/load.py (32 concurrent greedy streams, fixed prompt and max_tokens):

    no adapter | all on one adapter | 32 different rank-8 q,v | 32 different rank-16 all-linear |
    32 different three-level chains | the no-adapter requests one at a time (sequential)

and prints a table (aggregate tok/s, ratio to no-adapter, TTFT and inter-token p50/p99), the
concurrency speed-up, and the compute ceiling ratio: the 32-stream no-adapter decode step's tok/s
(rows / seconds of the server's decode-only steps, from its adaptree_decode_* counters; the
end-to-end tok/s, which also pays for prefill and the client sharing the cores, is printed beside
it) over sgemm GFLOP/s / (2 x (non-embedding + output-head parameters)) tokens/s (what make bench
uses), with
the sgemm peak the best of `$BUILD/bench_core --sgemm-only` runs before and after the load (and,
when OPENBLAS_CORETYPE is set, with OpenBLAS's own choice of kernel too). Targets are printed as PASS/MISS; the exit status is 0 unless
something failed to run (a MISS is a measurement, not an error).

With --int8 the server runs with int8 activations (serve --int8); the ceiling is still the f32
sgemm one, so its ratio there says how far int8 gets past what f32 arithmetic could reach.

Then the latency sweep (scenario "sweep"): a server without adapters, closed-loop streams at
concurrency 1, 2, 4, 8, 16 and 32 (each stream sends its next request when one ends, two waves:
max(8, 2 x concurrency) requests of --sweep-tokens tokens), TTFT and inter-token latency p50 and
p95 and the aggregate tok/s at each level.

After that, tools/bench_step.py's latency scenarios (16 running streams + 4 arriving
2000-token prompts: inter-token latency; a flood of 64 requests from one client and one from
another: the other's time to first token), each with the default step budget and with
--max-step-ms 0. --scenarios picks among throughput, sweep, many, latency and flood.

Scenario "many": --many (256) distinct resident rank-8 q,v adapters, every request another one,
32 streams (each decode step holds 32 distinct adapters), against the same load on one adapter:
the target is >= 0.8x; it prints the adapter bytes such a step reads.

--json F writes every result as one JSON document (schema "adaptree-bench-server/1": machine,
mode f32/int8, and one section per scenario that ran; rewritten after each scenario, so an
interrupted run keeps what it measured). tools/bench_kv.py --json F adds its part under "kv".

usage: tools/bench_server.py [--build build] [-m MODEL] [-c 32] [-n 64] [--rounds 3] [--int8]
                             [--kv-f16] [--json F] [--sweep 1,2,4,8,16,32] [--sweep-tokens 32]
                             [--many 256] [--scenarios throughput,sweep,many,latency,flood]
"""

import argparse
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench_machine  # noqa: E402
import bench_step as bs  # noqa: E402
import make_bench_registry as mbr  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def http(url, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


DECODE_COUNTERS = ("adaptree_decode_steps_total", "adaptree_decode_rows_total",
                   "adaptree_decode_step_seconds_total")


def decode_counters(srv):
    """The server's decode-only step counters (steps, rows, seconds) from /metrics."""
    status, body = http(srv.url + "/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    vals = dict.fromkeys(DECODE_COUNTERS, 0.0)
    for line in body.decode().splitlines():
        name, _, val = line.partition(" ")
        if name in vals:
            vals[name] = float(val)
    return [vals[k] for k in DECODE_COUNTERS]


def sgemm_peak(build, model, env=None):
    """GFLOP/s from bench_core --sgemm-only (or the 'machine:' line of a full run)."""
    exe = os.path.join(build, "bench_core")
    if not os.access(exe, os.X_OK):
        return None, f"{exe} missing (make BUILD={build} {exe})"
    p = subprocess.run([exe, "-m", model, "--sgemm-only"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("sgemm_gflops"):
            return float(line.split()[1]), "bench_core --sgemm-only"
    # Older bench_core without the flag: read its first lines and stop it.
    q = subprocess.Popen([exe, "-m", model], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                         preexec_fn=die_with_parent, env=env)
    try:
        for line in q.stdout:
            if line.startswith("machine: sgemm peak"):
                return float(line.split()[3]), "bench_core (machine line)"
    finally:
        q.kill()
        q.wait()
    return None, "bench_core printed no sgemm peak"


def machine_peak(build, model, runs):
    """The machine's sgemm peak: the best of bench_core --sgemm-only runs, appended to runs
    (a list of (label, GFLOP/s)). A peak is a limit, so the best run is the measurement; other
    work on the machine only lowers a run. When OPENBLAS_CORETYPE is set, OpenBLAS's own choice
    of kernel is measured too: a core forced to an older kernel (Haswell on an AVX-512 CPU) would
    otherwise halve the ceiling and flatter every ratio to it."""
    envs = [("as configured", None)]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        envs[0] = (f"OPENBLAS_CORETYPE={forced}", None)
        own = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        envs.append(("OPENBLAS_CORETYPE unset", own))
    src = None
    for label, env in envs:
        g, src = sgemm_peak(build, model, env)
        if g:
            runs.append((label, g))
    if not runs:
        return None, src
    best = max(runs, key=lambda r: r[1])
    desc = "best of bench_core --sgemm-only: " + ", ".join(f"{g:.0f} ({lab})" for lab, g in runs)
    return best[1], desc


class Server:
    def __init__(self, build, model, registry, args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logf = tempfile.NamedTemporaryFile(prefix="adaptree-bench-", suffix=".log",
                                                delete=False)
        cmd = [os.path.join(build, "adaptree"), "serve", "--host", "127.0.0.1", "--port",
               str(self.port), "-m", model] + (["--registry", registry] if registry
                                                else ["--no-registry"]) + args
        log("$ " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT,
                                     preexec_fn=die_with_parent)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n" + self.tail())
            try:
                if http(self.url + "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not healthy after 120 s:\n" + self.tail())

    def tail(self, n=30):
        try:
            with open(self.logf.name, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.logf.name)


def find_node(obj, node_id):
    if isinstance(obj, dict):
        if obj.get("id") == node_id:
            return obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            f = find_node(v, node_id)
            if f is not None:
                return f
    return None


def preload(srv, ids, timeout=600):
    """POST /v1/adapters/load with pin for every node (without waiting, so the loads run on the
    server's pool side by side), then waits until /v1/adapters shows each one ready. Returns the
    seconds it took."""
    t0 = time.time()
    bad = []
    for i in ids:
        st, body = http(srv.url + "/v1/adapters/load", {"id": i, "pin": True, "wait": False})
        if st not in (200, 202):
            bad.append(f"{i}: {st} {body[:200]!r}")
    if bad:
        log(f"bench: pre-load refused for {len(bad)} nodes, first: {bad[0]} (the warm-up pass "
            "loads them instead)")
    pending = [i for i in ids if not any(b.startswith(i + ":") for b in bad)]
    while pending and time.time() - t0 < timeout:
        st, body = http(srv.url + "/v1/adapters")
        if st != 200:
            log(f"bench: GET /v1/adapters: {st}; not waiting for the loads")
            break
        tree = json.loads(body)
        states = {i: (find_node(tree, i) or {}).get("state") for i in pending}
        failed = [i for i, s in states.items() if s == "failed"]
        if failed:
            raise RuntimeError(f"adapters failed to load: {failed[:5]}")
        pending = [i for i, s in states.items() if s != "ready"]
        if pending:
            time.sleep(0.1)
    if pending:
        log(f"bench: {len(pending)} nodes still not ready, e.g. {pending[:3]}")
    return time.time() - t0


def proc_cpu_s(pid):
    """User + system CPU seconds of a process so far (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load_py(srv, a, label, concurrency, requests, extra, max_tokens=None):
    """Runs clients/load.py --json; adds the server's and the client's CPU use (cores) over the
    run, since both share this machine's cores."""
    srv0, cli0, t0 = proc_cpu_s(srv.proc.pid), children_cpu_s(), time.time()
    cmd = [sys.executable, os.path.join(ROOT, "clients", "load.py"), "--url", srv.url, "-c",
           str(concurrency), "-r", str(requests), "-n", str(max_tokens or a.max_tokens), "-p",
           PROMPT,
           "--temperature", "0", "--json", "--label", label] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.time() - t0
    try:
        d = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"load.py failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-1500:]}")
    srv1 = proc_cpu_s(srv.proc.pid)
    d["server_cores"] = (srv1 - srv0) / wall if srv0 is not None and srv1 is not None else None
    d["client_cores"] = (children_cpu_s() - cli0) / wall
    if d["errors"]:
        log(f"bench: {label}: {d['errors']} errors, e.g. {d['error_samples'][:2]}")
    return d


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def latency(a, build):
    """bench_step's latency scenario with the default budget and with --max-step-ms 0."""
    res = {}
    for label, extra in (("default budget", []), ("--max-step-ms 0", ["--max-step-ms", "0"])):
        srv = Server(build, a.model, None, ["--max-seqs", "32", "--ctx", "2304",
                                            "--log-level", "warn"] + step_args(a) + extra)
        try:
            log(f"bench: latency, {label} ...")
            bs.warm(srv.port)
            res[label] = bs.latency_run(srv.port, log)
            res[label]["metrics"] = step_metrics(srv)
        finally:
            srv.stop()
    print()
    print(f"{bs.STREAMS} running streams (max_tokens {bs.STREAM_TOKENS}, SSE) + "
          f"{bs.LONG_PROMPTS} arriving prompts of "
          f"{res['default budget']['long_tokens'][0] if res['default budget']['long_tokens'] else '?'}"
          f" tokens; machine load average {os.getloadavg()[0]:.2f}")
    print(f"{'budget':18} {'ITL p50':>8} {'p99':>8} {'max':>8} {'p99/p50':>8} "
          f"{'during p50':>11} {'p99':>8} {'long prompts s':>16} {'steps>target':>13} "
          f"{'target ms':>10} {'row ms':>7}")
    for label, r in res.items():
        m = r["metrics"]
        ratio = r["itl_p99"] / r["itl_p50"] if r["itl_p50"] else None
        longs = "/".join(f"{x:.0f}" for x in sorted(r["long_s"]))
        print(f"{label:18} {fmt(r['itl_p50']):>8} {fmt(r['itl_p99']):>8} {fmt(r['itl_max']):>8} "
              f"{fmt(ratio, '.2f'):>8} {fmt(r['during_p50']):>11} {fmt(r['during_p99']):>8} "
              f"{longs:>16} {m.get('adaptree_steps_over_target_total', 0):13.0f} "
              f"{m.get('adaptree_step_target_ms', 0):10.1f} {m.get('adaptree_prompt_row_ms', 0):7.2f}")
    print("(inter-token latency of the running streams in ms over their whole run; 'during': the "
          "gaps that end while the long prompts are in flight; long prompts: seconds each took)")
    d = res["default budget"]
    ok = d["itl_p50"] and d["itl_p99"] <= 2 * d["itl_p50"]
    print(f"{'PASS' if ok else 'MISS'}  running streams' ITL p99 <= 2x median with the default "
          f"budget: {fmt(d['itl_p99'])} vs {fmt(d['itl_p50'])} ms")
    res = {"budgets": res, "targets": [target(
        "running streams' ITL p99 <= 2x median with the default budget", bool(ok),
        d["itl_p99"] / d["itl_p50"] if d["itl_p50"] else None, "<=", 2, "x")]}
    return (1 if any(r["errors"] for r in res["budgets"].values()) else 0), res


def flood(a, build):
    """bench_step's flood scenario with the default budget and with --max-step-ms 0."""
    res = {}
    for label, extra in (("default budget", []), ("--max-step-ms 0", ["--max-step-ms", "0"])):
        srv = Server(build, a.model, None, ["--max-seqs", str(bs.FLOOD + 8), "--queue-limit",
                                            "256", "--log-level", "warn"] + step_args(a) + extra)
        try:
            bs.warm(srv.port)
            runs = []
            for rnd in range(FLOOD_ROUNDS):
                log(f"bench: flood, {label}, round {rnd + 1}/{FLOOD_ROUNDS} ...")
                runs.append(bs.flood_run(srv.port, log))
            # one B request per flood: the round with the median B TTFT stands for the runs
            runs.sort(key=lambda r: r["b_ms"] if r["b_ms"] is not None else float("inf"))
            res[label] = dict(runs[len(runs) // 2], all_b=[r["b_ms"] for r in runs],
                              errors=sum(r["errors"] for r in runs))
        finally:
            srv.stop()
    print()
    print(f"flood: client A sends {bs.FLOOD} requests at once (max_tokens {bs.FLOOD_TOKENS}), "
          f"client B one 50 ms later; --max-seqs {bs.FLOOD + 8} (every request gets a slot: the "
          f"steps are measured, not the slots); machine load average {os.getloadavg()[0]:.2f}")
    print(f"{'budget':18} {'B idle TTFT':>12} {'B TTFT':>8} {'ratio':>6} {'A TTFT p50':>11} "
          f"{'A max':>8}  B TTFT of each round")
    for label, r in res.items():
        ratio = r["b_ms"] / r["idle_ms"] if r["b_ms"] and r["idle_ms"] else None
        print(f"{label:18} {fmt(r['idle_ms']):>12} {fmt(r['b_ms']):>8} {fmt(ratio, '.1f'):>6} "
              f"{fmt(r['a_ttft_p50']):>11} {fmt(r['a_ttft_max']):>8}  "
              + " ".join(fmt(x, ".0f") for x in r["all_b"]))
    print(f"(times to first token in ms; the round with the median B TTFT of {FLOOD_ROUNDS}; B "
          f"idle: the median of 3 on the idle server before that round)")
    d = res["default budget"]
    ok = d["b_ms"] is not None and d["idle_ms"] and d["b_ms"] <= 3 * d["idle_ms"]
    print(f"{'PASS' if ok else 'MISS'}  B's TTFT under A's flood <= 3x idle with the default "
          f"budget: {fmt(d['b_ms'])} vs {fmt(d['idle_ms'])} ms")
    res = {"budgets": res, "targets": [target(
        "B's TTFT under A's flood <= 3x idle with the default budget", bool(ok),
        d["b_ms"] / d["idle_ms"] if d["b_ms"] and d["idle_ms"] else None, "<=", 3, "x")]}
    return (1 if any(r["errors"] for r in res["budgets"].values()) else 0), res


def target(what, ok, value, op, threshold, unit):
    """One PASS/MISS target as the JSON holds it."""
    return {"what": what, "pass": ok, "verdict": "PASS" if ok else "MISS", "value": value,
            "op": op, "threshold": threshold, "unit": unit}


SWEEP_KEYS = ("tok_per_s", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "itl_ms_p50",
              "itl_ms_p95", "itl_ms_p99", "requests", "errors", "generated_tokens", "wall_s",
              "server_cores", "client_cores")


def sweep(a, build):
    """TTFT and inter-token latency against the number of concurrent streams, no adapter."""
    levels = [int(x) for x in a.sweep.split(",") if x.strip()]
    srv = Server(build, a.model, None, ["--max-seqs", str(max(levels + [32])), "--queue-limit",
                                        str(4 * max(levels)), "--log-level", "warn"]
                 + step_args(a))
    rows = []
    try:
        load_py(srv, a, "sweep warm-up", 1, 1, ["--warmup"])
        for c in levels:
            n = max(8, 2 * c)
            log(f"bench: sweep, concurrency {c}, {n} requests ...")
            d = load_py(srv, a, f"concurrency {c}", c, n, [], max_tokens=a.sweep_tokens)
            rows.append(dict({k: d.get(k) for k in SWEEP_KEYS}, concurrency=c))
    finally:
        srv.stop()
    print()
    print(f"latency against concurrency: adaptree serve{flags_text(a)}, no adapter, closed-loop "
          f"streams (max(8, 2 x c) requests of max_tokens {a.sweep_tokens}), greedy; machine "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'streams':>7} {'tok/s':>8} {'TTFT p50':>9} {'p95':>8} {'ITL p50':>8} {'p95':>8} "
          f"{'requests':>8} {'err':>4} {'srv CPU':>7} {'cli CPU':>7}")
    for r in rows:
        print(f"{r['concurrency']:7d} {r['tok_per_s']:8.1f} {fmt(r['ttft_ms_p50']):>9} "
              f"{fmt(r['ttft_ms_p95']):>8} {fmt(r['itl_ms_p50']):>8} {fmt(r['itl_ms_p95']):>8} "
              f"{r['requests']:8d} {r['errors']:4d} {fmt(r['server_cores'], '.2f'):>7} "
              f"{fmt(r['client_cores'], '.2f'):>7}")
    print("(latencies in ms: TTFT from send to the first token, ITL the gaps between streamed "
          "tokens; CPU in cores used during the level)")
    res = {"max_tokens": a.sweep_tokens, "prompt": PROMPT, "levels": rows}
    return (1 if any(r["errors"] for r in rows) else 0), res


def flags_text(a):
    return f"{' --int8' if a.int8 else ''}{' --kv-f16' if a.kv_f16 else ''}"


def write_json(path, doc):
    """Writes doc to path through a temporary file renamed into place."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def build_commit(build):
    try:
        p = subprocess.run([os.path.join(build, "adaptree"), "--version"], capture_output=True,
                           text=True, timeout=30)
        return next((ln.split(":", 1)[1].strip() for ln in p.stdout.splitlines()
                     if ln.startswith("commit:")), None)
    except (OSError, subprocess.SubprocessError):
        return None


def step_args(a):
    out = []
    if a.threads:
        out += ["--threads", str(a.threads)]
    if a.int8:
        out += ["--int8"]
    if a.kv_f16:
        out += ["--kv-f16"]
    return out


FLOOD_ROUNDS = 3

STEP_METRICS = ("adaptree_steps_over_target_total", "adaptree_step_target_ms",
                "adaptree_prompt_row_ms", "adaptree_steps_total")


def step_metrics(srv):
    status, body = http(srv.url + "/metrics", timeout=30)
    vals = {}
    for line in body.decode().splitlines() if status == 200 else []:
        name, _, val = line.partition(" ")
        if name in STEP_METRICS:
            vals[name] = float(val)
    return vals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.environ.get("BUILD", "build"))
    p.add_argument("-m", "--model", default=os.environ.get(
        "MODEL", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")))
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("-n", "--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3,
                   help="times each scenario is measured (one request per stream each time)")
    p.add_argument("--threads", type=int, default=0, help="--threads for the server (0: default)")
    p.add_argument("--int8", action="store_true",
                   help="serve --int8 (int8 activations; the ceiling stays the f32 sgemm one)")
    p.add_argument("--kv-f16", action="store_true", help="serve --kv-f16 (f16 KV cache)")
    p.add_argument("--keep-registry", help="write the registry here and keep it")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--sweep", default="1,2,4,8,16,32",
                   help="the concurrency levels of the latency sweep")
    p.add_argument("--sweep-tokens", type=int, default=32, help="max_tokens in the sweep")
    p.add_argument("--many", type=int, default=256,
                   help="distinct adapters of the 'many' scenario")
    p.add_argument("--scenarios", default="throughput,sweep,many,latency,flood",
                   help="comma-separated; they run in this order whatever the order given: "
                        "throughput (the adapter table), "
                        "sweep (TTFT and ITL against concurrency), many (--many distinct "
                        "adapters, one per request, against one), latency (16 streams + 4 long "
                        "prompts), flood (64 requests of A, one of B); tools/bench_step.py")
    a = p.parse_args(argv)
    build = a.build if os.path.isabs(a.build) else os.path.join(ROOT, a.build)
    which = [w.strip() for w in a.scenarios.split(",") if w.strip()]
    bad = [w for w in which if w not in SCENARIOS]
    if bad:
        p.error(f"unknown scenario {bad[0]!r}")
    which = [w for w in SCENARIOS if w in which]  # always in this order
    doc = {"schema": "adaptree-bench-server/1", "tool": "bench_server",
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": build_commit(build), "model_path": os.path.relpath(a.model, ROOT),
           "machine": dict(bench_machine.cpu_info(), load_average_1m=os.getloadavg()[0]),
           "mode": "int8" if a.int8 else "f32", "kv_cache": "f16" if a.kv_f16 else "f32",
           "serve_flags": step_args(a),
           "config": {"concurrency": a.concurrency, "max_tokens": a.max_tokens,
                      "rounds": a.rounds, "prompt": PROMPT, "scenarios": which}}
    rc = 0
    for w in which:
        r, doc[w] = SCENARIOS[w](a, build)
        rc |= r
        if a.json:
            doc["machine"]["load_average_1m_end"] = os.getloadavg()[0]
            write_json(a.json, doc)
    if a.json:
        print(f"bench: wrote {a.json}")
    return rc


QV, ALL = ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                  "down_proj"]
# What each throughput scenario (in their order) puts in the batch, for the JSON.
SCENARIO_ADAPTERS = [
    lambda n: {"distinct_adapters": 0, "adapter_kind": None},
    lambda n: {"distinct_adapters": 1, "adapter_kind": "rank-16 all-linear", "rank": 16,
               "target_modules": ALL},
    lambda n: {"distinct_adapters": n, "adapter_kind": "rank-8 q,v", "rank": 8,
               "target_modules": QV},
    lambda n: {"distinct_adapters": n, "adapter_kind": "rank-16 all-linear", "rank": 16,
               "target_modules": ALL},
    lambda n: {"distinct_adapters": 3 * n, "distinct_chains": n,
               "adapter_kind": "three-level chain (rank-8 all-linear / rank-8 q,k,v,o / "
                               "rank-4 q,v)"},
]


def throughput(a, build):
    """The adapter throughput table; 0 unless a request failed."""
    n = a.concurrency

    load_before = os.getloadavg()[0]
    peak_runs = []
    peak, peak_src = machine_peak(build, a.model, peak_runs)
    n_params = mbr.n_params_nonembedding(a.model)
    n_head = mbr.n_params_head(a.model)  # every generated token also runs the output head
    tmp = tempfile.mkdtemp(prefix="adaptree-bench-")
    reg = a.keep_registry or os.path.join(tmp, "reg")
    srv = None
    try:
        t0 = time.time()
        mbr.main(["-o", reg, "-m", a.model, "-n", str(n)])
        log(f"bench: registry written in {time.time() - t0:.1f} s")
        args = ["--max-seqs", str(max(n, 32)), "--adapter-cache-mb", "8192",
                "--queue-limit", str(4 * n), "--log-level", "warn"]
        if a.threads:
            args += ["--threads", str(a.threads)]
        if a.int8:
            args += ["--int8"]
        if a.kv_f16:
            args += ["--kv-f16"]
        srv = Server(build, a.model, reg, args)
        groups = mbr.groups(n)
        chains = [g[0] for g in groups["chain"] if g[0].count("/") == 2]
        scenarios = [
            ("no adapter", [], []),
            ("all on one adapter (rank-16 all-linear)", ["all16/a00"],
             ["--model", "all16/a00"]),
            (f"{n} different rank-8 q,v", [g[0] for g in groups["qv8"]],
             ["--model", "qv8/a{i:02d}", "--n-models", str(n)]),
            (f"{n} different rank-16 all-linear", [g[0] for g in groups["all16"]],
             ["--model", "all16/a{i:02d}", "--n-models", str(n)]),
            (f"{n} different three-level chains", [g[0] for g in groups["chain"]],
             ["--model", "l{i:02d}/d{i:02d}/u{i:02d}", "--n-models", str(n)]),
        ]
        assert len(chains) == n
        # Pre-load (and pin) every scenario's adapters and warm each selection once, then
        # measure the scenarios in turn, a.rounds times over: the VM's speed drifts by 10-20%
        # between minutes, so each ratio is the median of ratios taken within one round.
        load_py(srv, a, "warm-up", n, n, ["--warmup"])
        for label, ids, extra in scenarios:
            if ids:
                dt = preload(srv, ids)
                log(f"bench: {label}: pre-loaded and pinned {len(ids)} nodes in {dt:.1f} s")
            load_py(srv, a, label + " (warm-up)", n, n, extra + ["--warmup"])
        runs = {label: [] for label, _, _ in scenarios}
        dec = [0.0, 0.0, 0.0]  # the no-adapter runs' decode-only steps: steps, rows, seconds
        for rnd in range(a.rounds):
            for label, ids, extra in scenarios:
                log(f"bench: round {rnd + 1}/{a.rounds}: {label} ...")
                c0 = decode_counters(srv) if not ids else None
                runs[label].append(load_py(srv, a, label, n, n, extra))
                if c0:
                    dec = [d + c1 - c for d, c, c1 in zip(dec, c0, decode_counters(srv))]
        results = []
        for label, _, _ in scenarios:
            rs = sorted(runs[label], key=lambda r: r["tok_per_s"])
            med = dict(rs[len(rs) // 2])
            ratios = sorted(r["tok_per_s"] / b["tok_per_s"]
                            for r, b in zip(runs[label], runs[scenarios[0][0]]))
            med["ratio"] = ratios[len(ratios) // 2]
            med["ratios"] = ratios
            med.update(SCENARIO_ADAPTERS[scenarios.index(next(x for x in scenarios
                                                             if x[0] == label))](n))
            results.append(med)
        log("bench: measuring the sequential baseline ...")
        seq = load_py(srv, a, f"{n} no-adapter requests one at a time", 1, n, [])
        seq["ratio"] = seq["tok_per_s"] / results[0]["tok_per_s"]
        seq.update(distinct_adapters=0, adapter_kind=None, sequential=True)
    finally:
        if srv:
            srv.stop()
        if not a.keep_registry:
            shutil.rmtree(tmp, ignore_errors=True)

    base = results[0]["tok_per_s"] or float("nan")
    rows = results + [seq]
    print()
    print(f"adaptree serve{' --int8' if a.int8 else ''}{' --kv-f16' if a.kv_f16 else ''}, "
          f"{n} concurrent greedy streams, "
          f"max_tokens {a.max_tokens}, prompt {PROMPT!r}")
    print(f"machine: {os.cpu_count()} cores, load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other work on the machine skews every number below)")
    print(f"{'scenario':44} {'tok/s':>8} {'ratio':>6} {'TTFT p50':>9} {'p99':>8} "
          f"{'ITL p50':>8} {'p99':>8} {'tokens':>7} {'err':>4} {'srv CPU':>7} {'cli CPU':>7}")
    for r in rows:
        print(f"{r['label']:44} {r['tok_per_s']:8.1f} {r['ratio']:6.3f} "
              f"{fmt(r['ttft_ms_p50']):>9} {fmt(r['ttft_ms_p99']):>8} "
              f"{fmt(r['itl_ms_p50']):>8} {fmt(r['itl_ms_p99']):>8} "
              f"{r['generated_tokens']:7d} {r['errors']:4d} {fmt(r['server_cores'], '.2f'):>7} "
              f"{fmt(r['client_cores'], '.2f'):>7}")
    print(f"(median of {a.rounds} rounds; ratio = the median of per-round tok/s over the same "
          f"round's no-adapter run; latencies in ms; CPU in cores used during the run, of "
          f"{os.cpu_count()}: the client shares the machine)")
    for r in results[1:]:
        print(f"  {r['label']}: per-round ratios " + ", ".join(f"{x:.3f}" for x in r["ratios"]))
    peak, peak_src = machine_peak(build, a.model, peak_runs)  # again, after the load
    speedup = base / seq["tok_per_s"] if seq["tok_per_s"] else None
    print(f"concurrency speed-up ({n} streams / one at a time, no adapter): {fmt(speedup, '.2f')}x")
    ceiling = peak * 1e9 / (2.0 * (n_params + n_head)) if peak else None
    frac = base / ceiling if ceiling else None
    step_rate = dec[1] / dec[2] if dec[2] > 0 else None
    step_frac = step_rate / ceiling if ceiling and step_rate else None
    if peak:
        print(f"compute ceiling: sgemm {peak:.1f} GFLOP/s ({peak_src})\n"
              f"  / (2 x ({n_params / 1e6:.1f} M "
              f"non-embedding + {n_head / 1e6:.1f} M head) params) = {ceiling:.0f} tok/s; "
              f"no-adapter end to end reaches {100 * frac:.1f}%")
    else:
        print(f"compute ceiling: unknown ({peak_src})")
    if step_rate:
        print(f"no-adapter decode step (server's adaptree_decode_* counters over the no-adapter "
              f"runs): {dec[0]:.0f} steps, {dec[1] / dec[0]:.1f} rows per step, "
              f"{1e3 * dec[2] / dec[0]:.1f} ms per step = {step_rate:.0f} tok/s"
              + (f" = {100 * step_frac:.1f}% of the ceiling" if step_frac else ""))
    r8, r16 = results[2]["ratio"], results[3]["ratio"]
    targets = [("rank-8 q,v >= 0.9x no-adapter", r8 >= 0.9, f"{r8:.3f}x"),
               ("rank-16 all-linear >= 0.7x no-adapter", r16 >= 0.7, f"{r16:.3f}x"),
               ("concurrency speed-up >= 6x", speedup is not None and speedup >= 6,
                f"{fmt(speedup, '.2f')}x"),
               ("no-adapter decode step >= 50% of the compute ceiling",
                step_frac is not None and step_frac >= 0.5,
                f"{fmt(None if step_frac is None else 100 * step_frac)}% "
                f"(end to end {fmt(None if frac is None else 100 * frac)}%)")]
    for what, ok, val in targets:
        print(f"{'PASS' if ok else 'MISS'}  {what}: {val}")
    errors = sum(r["errors"] for r in rows)
    tvals = [("x", r8, 0.9), ("x", r16, 0.7), ("x", speedup, 6),
             ("%", None if step_frac is None else 100 * step_frac, 50)]
    res = {"results": rows, "sgemm_gflops": peak, "sgemm_source": peak_src,
           "sgemm_runs": [{"label": lab, "gflops": g} for lab, g in peak_runs],
           "n_params_nonembedding": n_params, "n_params_head": n_head,
           "ceiling_tok_per_s": ceiling, "end_to_end_ceiling_fraction": frac,
           "speedup": speedup, "load_average_before": load_before,
           "load_average_after": os.getloadavg()[0],
           "decode_step": {"steps": dec[0], "rows": dec[1], "seconds": dec[2],
                           "tok_per_s": step_rate, "ceiling_fraction": step_frac},
           "targets": [target(w, bool(ok), v, ">=", thr, unit)
                       for (w, ok, _), (unit, v, thr) in zip(targets, tvals)]}
    if errors:
        print(f"bench: {errors} requests failed (see above)")
        return 1, res
    return 0, res


def resident_bytes(srv, node):
    """adaptree_adapter_resident_bytes of one node, from /metrics (None if absent)."""
    st, body = http(srv.url + "/metrics")
    if st != 200:
        return None
    want = f'adaptree_adapter_resident_bytes{{adapter="{node}"}} '
    for line in body.decode().splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return None


def many(a, build):
    """Many adapters: a.many distinct resident rank-8 q,v adapters, every request another one,
    a.concurrency streams (so every decode step holds as many distinct adapters as rows),
    against the same load on one adapter; and the adapter bytes such a step reads."""
    n, c = a.many, a.concurrency
    tmp = tempfile.mkdtemp(prefix="adaptree-bench-many-")
    reg = os.path.join(tmp, "reg")
    srv = None
    try:
        t0 = time.time()
        mbr.main(["-o", reg, "-m", a.model, "-n", str(n), "--groups", "qv8"])
        log(f"bench: {n}-adapter registry written in {time.time() - t0:.1f} s")
        srv = Server(build, a.model, reg, ["--max-seqs", str(c), "--adapter-cache-mb", "8192",
                                           "--queue-limit", str(4 * n), "--log-level", "warn"]
                     + (["--threads", str(a.threads)] if a.threads else [])
                     + (["--int8"] if a.int8 else []) + (["--kv-f16"] if a.kv_f16 else []))
        ids = [g[0] for g in mbr.groups(n)["qv8"]]
        dt = preload(srv, ids)
        log(f"bench: pre-loaded and pinned {n} adapters in {dt:.1f} s")
        one = ["--model", ids[0]]
        every = ["--model", "qv8/a{i:02d}", "--n-models", str(n)]
        load_py(srv, a, "warm-up", c, c, one + ["--warmup"])
        load_py(srv, a, "warm-up", c, n, every + ["--warmup"])
        runs = {"one": [], "many": []}
        for rnd in range(a.rounds):
            log(f"bench: round {rnd + 1}/{a.rounds}: one adapter, then {n} ...")
            runs["one"].append(load_py(srv, a, "one adapter", c, n, one))
            runs["many"].append(load_py(srv, a, f"{n} adapters", c, n, every))
        per = resident_bytes(srv, ids[0])
    finally:
        if srv:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = sorted(m["tok_per_s"] / o["tok_per_s"] for m, o in zip(runs["many"], runs["one"]))
    ratio = ratios[len(ratios) // 2]
    med = {k: sorted(runs[k], key=lambda r: r["tok_per_s"])[len(runs[k]) // 2] for k in runs}
    step_bytes = per * c if per else None
    base_bytes = 96e6  # the default model's stored blocks a step reads (make bench)
    print()
    print(f"many adapters: adaptree serve{flags_text(a)}, {c} concurrent greedy streams, "
          f"{n} requests a run, max_tokens {a.max_tokens}")
    print(f"  one rank-8 q,v adapter:           {med['one']['tok_per_s']:8.1f} tok/s")
    print(f"  {n} different rank-8 q,v adapters: {med['many']['tok_per_s']:8.1f} tok/s  "
          f"ratio {ratio:.3f} (median of per-round ratios " +
          ", ".join(f"{x:.3f}" for x in ratios) + ")")
    if per:
        print(f"  adapter bytes a {c}-row decode step reads: {c} adapters x {per / 1e3:.0f} KB "
              f"= {step_bytes / 1e6:.1f} MB (the base weights: {base_bytes / 1e6:.0f} MB)")
    ok = ratio >= 0.8
    print(f"  {'PASS' if ok else 'MISS'}  {n} distinct adapters >= 0.8x one adapter")
    res = {"adapters": n, "concurrency": c, "one": med["one"], "many": med["many"],
           "ratio": ratio, "ratios": ratios, "adapter_bytes": per,
           "adapter_bytes_per_step": step_bytes,
           "targets": [target(f"{n} distinct adapters / one adapter", ok, ratio, ">=", 0.8,
                              "ratio")]}
    errors = med["one"]["errors"] + med["many"]["errors"]
    return (1 if errors else 0), res


SCENARIOS = {"throughput": throughput, "sweep": sweep, "many": many, "latency": latency,
             "flood": flood}

if __name__ == "__main__":
    sys.exit(main())
