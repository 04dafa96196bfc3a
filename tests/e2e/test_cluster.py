"""End-to-end scale-out: three real replicas on 127.0.0.1 behind a real HAProxy running
deploy/haproxy/haproxy.cfg (the policy Docker Compose and Kubernetes run too), twelve real PEFT
adapters. What a user of the cluster relies on:
  - affinity: each adapter is loaded on exactly one replica (read from the replicas' own
    GET /v1/adapters), where round robin loads it everywhere (both counts printed);
  - a hot adapter (80% of the requests) spills over: the busiest replica's share of requests stays
    within what hash-balance-factor allows;
  - --drain-delay: a replica told to stop leaves HAProxy's rotation while it still serves;
  - rolling restart under streaming load (SIGTERM a replica, wait for it to exit, start it again,
    one at a time): every request completes and every greedy text equals a single server's;
  - crash (kill -9) under load: requests in flight on it fail with a clear status or a cut
    stream, counted, never a hang; every request sent after HAProxy marked it down succeeds; once
    back, its adapters go to it again.
Needs haproxy on PATH (make deps); skipped without it, except under CI where it is a failure."""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import e2e
from e2e import Fail, check, eq

suite = e2e.Suite("cluster", budget=420)
N_REPLICAS = 3
N_ADAPTERS = 12
DRAIN_DELAY = 3  # s of /health 503 before a replica refuses anything; HAProxy needs 2 checks, 1 s apart
FACTOR = 150  # hash-balance-factor: a replica takes at most 150% of the mean load in flight
ADAPTERS = [f"user{i:02d}" for i in range(N_ADAPTERS)]
PROMPTS = ["The capital of France is", "Once upon a time", "def fib(n):"]
REPLICAS = []
PROXY = None
REG = None
OWNER = {}  # adapter -> replica name, learnt by the affinity test


class HAProxy:
    """haproxy -W -db with deploy/haproxy/haproxy.cfg and a replicas file for servers."""

    def __init__(self, servers, cfg=None, name="haproxy"):
        self.servers, self.name = servers, name
        self.cfg = cfg or os.path.join(e2e.ROOT, "deploy", "haproxy", "haproxy.cfg")
        self.proc, self.port, self.stats_port = None, None, None
        self.log_path = os.path.join(suite.tmp, f"{name}.log")
        self.exit_code = "not an adaptree server"  # the suite's shutdown check skips it
        suite.servers.append(self)  # its log is printed when a test fails; cleanup() stops it

    def start(self):
        self.port, self.stats_port = e2e.free_port(), e2e.free_port()
        rfile = os.path.join(suite.tmp, f"{self.name}-replicas.cfg")
        subprocess.run([os.path.join(e2e.ROOT, "tools", "cluster.sh"), "--write-replicas", rfile]
                       + [f"{s.args[s.args.index('--replica-name') + 1]}=127.0.0.1:{s.port}"
                          for s in self.servers], check=True)
        env = dict(os.environ, ADAPTREE_LISTEN=f"127.0.0.1:{self.port}",
                   ADAPTREE_STATS=f"127.0.0.1:{self.stats_port}",
                   ADAPTREE_BALANCE_FACTOR=str(FACTOR))
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["haproxy", "-W", "-db", "-f", self.cfg, "-f", rfile],
                                     stdout=log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, preexec_fn=e2e._die_with_parent)
        log.close()
        self.wait_state({n: "UP" for n in self.names()}, 30)
        return self

    def names(self):
        return [s.args[s.args.index("--replica-name") + 1] for s in self.servers]

    def states(self):
        """{server name: status} of the hash backend, from the stats CSV."""
        try:
            r = e2e.request(self.stats_port, "GET", "/;csv", timeout=5)
        except OSError:
            return {}
        out = {}
        for line in r.data.decode().splitlines():
            f = line.split(",")
            if len(f) > 17 and f[0] == "by_adapter" and f[1] not in ("FRONTEND", "BACKEND"):
                out[f[1]] = f[17].split()[0]
        return out

    def idle(self):
        """True when HAProxy holds no request on any backend (stats CSV, scur)."""
        r = e2e.request(self.stats_port, "GET", "/;csv", timeout=5)
        for line in r.data.decode().splitlines():
            f = line.split(",")
            if len(f) > 4 and f[1] == "BACKEND" and f[0] in ("by_adapter", "least_loaded"):
                if f[4] != "0":
                    return False
        return True

    def retries(self):
        """Retries and redispatches HAProxy has made on the hash backend (stats CSV)."""
        r = e2e.request(self.stats_port, "GET", "/;csv", timeout=5)
        head = r.data.decode().splitlines()[0].lstrip("# ").split(",")
        for line in r.data.decode().splitlines()[1:]:
            f = line.split(",")
            if f[0] == "by_adapter" and f[1] == "BACKEND":
                return int(f[head.index("wretr")] or 0) + int(f[head.index("wredis")] or 0)
        return 0

    def wait_state(self, want, timeout):
        return e2e.wait_until(lambda: all(self.states().get(k) == v for k, v in want.items()),
                              timeout, f"HAProxy to see {want} (log {self.log_path})")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n=40):
        try:
            lines = open(self.log_path, errors="replace").read().splitlines()
        except OSError:
            return ""
        return "\n".join("    | " + line for line in lines[-n:])

    def cleanup(self):
        self.stop()


def setup():
    global PROXY, REG
    if not shutil.which("haproxy"):
        if not os.environ.get("CI"):  # CI has it (make deps): there its absence is a failure
            raise e2e.Skip("haproxy is not installed (make deps installs it)")
        raise Fail("haproxy is not installed (make deps installs it)")
    sys.path.insert(0, os.path.join(e2e.ROOT, "tools"))
    import numpy as np
    import make_bench_registry as mbr

    REG = os.path.join(suite.tmp, "reg")
    dims = mbr.model_dims(e2e.MODEL)
    rng = np.random.default_rng(20261206)
    for a in ADAPTERS:
        mbr.write_adapter(os.path.join(REG, a), dims, 8, mbr.QV, rng)
    for i in range(N_REPLICAS):
        s = suite.server(["--replica-name", f"replica-{i + 1}", "--max-connections-per-ip", "0",
                          "--threads", "1", "--drain-timeout", "30", "--drain-delay",
                          str(DRAIN_DELAY)], registry=REG,
                         name=f"replica-{i + 1}")
        REPLICAS.append(s.start())
    PROXY = HAProxy(REPLICAS).start()


def replica_of(r):
    return r.headers.get("x-adaptree-replica")


def body(model, prompt, n=8, stream=False):
    b = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": stream}
    if model:
        b["model"] = model
    return b


def resident(server):
    """{adapter id: loads} of the adapters ready on one replica (its own GET /v1/adapters)."""
    d = server.req("GET", "/v1/adapters").json()
    return {n["id"]: n.get("loads", 0) for n in d["data"]
            if n["id"] in ADAPTERS and n.get("state") == "ready"}


def loads(server):
    d = server.req("GET", "/v1/adapters").json()
    return sum(n.get("loads", 0) for n in d["data"] if n["id"] in ADAPTERS)


def unload_all():
    for s in REPLICAS:
        for a in ADAPTERS:
            r = s.post("/v1/adapters/unload", {"id": a})
            check(r.status == 200, f"unload {a} on {s.name}: {r}")


def affinity_run(proxy):
    """Every adapter 3 times through proxy, one request at a time; returns ({adapter: {replicas
    that answered}}, loads it caused on all replicas together). One at a time means HAProxy has
    let go of the previous one: a request that arrives while HAProxy still counts the last one
    as in flight on the owner may spill (bounded load at 1 in flight leaves one slot a
    replica; README, Scale out)."""
    before = sum(loads(s) for s in REPLICAS)
    seen = {a: set() for a in ADAPTERS}
    for a in ADAPTERS:
        for rep in range(3):
            e2e.wait_until(proxy.idle, 5, "HAProxy to let go of the previous request", 0.01)
            r = e2e.request(proxy.port, "POST", "/v1/completions", body(a, PROMPTS[rep], 2))
            check(r.status == 200, f"{a} through HAProxy: {r}")
            eq(r.json().get("system_fingerprint"), replica_of(r), "system_fingerprint vs header")
            seen[a].add(replica_of(r))
    return seen, sum(loads(s) for s in REPLICAS) - before


@suite.test
def affinity_each_adapter_on_one_replica():
    unload_all()
    seen, n_hash = affinity_run(PROXY)
    where = {a: [s.name for s in REPLICAS if a in resident(s)] for a in ADAPTERS}
    for a in ADAPTERS:
        eq(len(seen[a]), 1, f"replicas that answered {a} (hash)")
        eq(where[a], sorted(seen[a]), f"replicas where {a} is resident")
        OWNER[a] = where[a][0]
    used = sorted(set(OWNER.values()))
    eq(len(used), N_REPLICAS, f"replicas the {N_ADAPTERS} adapters hashed to")
    # The other ways to name an adapter reach the same owner: the first "adapters" id, and the
    # admin actions on an id. The base model goes to whichever replica is least loaded.
    for a in ADAPTERS[:4]:
        e2e.wait_until(PROXY.idle, 5, "HAProxy to let go of the previous request", 0.01)
        r = e2e.request(PROXY.port, "POST", "/v1/completions",
                        {"prompt": "x", "max_tokens": 1,
                         "adapters": [{"id": a, "scale": 0.5}, {"id": ADAPTERS[-1], "scale": 0.5}]})
        check(r.status == 200, f"adapters=[{a}, ...]: {r}")
        eq(replica_of(r), OWNER[a], f"replica for adapters=[{a}, ...]")
        for action, extra in (("pin", {"pin": True}), ("pin", {"pin": False}), ("load", {})):
            e2e.wait_until(PROXY.idle, 5, "HAProxy to let go of the previous request", 0.01)
            r = e2e.request(PROXY.port, "POST", f"/v1/adapters/{action}", dict(id=a, **extra))
            check(r.status == 200, f"{action} {a} through HAProxy: {r}")
            eq(replica_of(r), OWNER[a], f"replica for POST /v1/adapters/{action} {a}")
    base = set()
    for i in range(6):
        r = e2e.request(PROXY.port, "POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        check(r.status == 200, f"base chat through HAProxy: {r}")
        base.add(replica_of(r))
    check(len(base) >= 2, f"6 base-model requests all went to {base}")
    # The same load with round robin: the policy file with only its balance line changed.
    cfg = open(PROXY.cfg).read()
    check("balance hash var(txn.adapter)" in cfg, "haproxy.cfg no longer hashes on the adapter")
    rr_cfg = os.path.join(suite.tmp, "haproxy-rr.cfg")
    with open(rr_cfg, "w") as f:
        f.write(cfg.replace("balance hash var(txn.adapter)", "balance roundrobin"))
    unload_all()
    rr = HAProxy(REPLICAS, cfg=rr_cfg, name="haproxy-rr").start()
    try:
        seen_rr, n_rr = affinity_run(rr)
    finally:
        rr.stop()
    spread = sum(sum(a in resident(s) for s in REPLICAS) for a in ADAPTERS)
    print(f"     loads for {N_ADAPTERS} adapters x 3 requests on {N_REPLICAS} replicas: "
          f"consistent hash {n_hash} (each adapter on 1 replica; replicas used: "
          f"{', '.join(f'{n}: {list(OWNER.values()).count(n)}' for n in used)}), "
          f"round robin {n_rr} ({spread} adapter copies resident)", flush=True)
    eq(n_hash, N_ADAPTERS, "loads under consistent hashing")
    check(n_rr > n_hash, f"round robin loaded {n_rr}, no more than hashing's {n_hash}")


def max_share_allowed(concurrency, n, factor):
    """The most requests in flight HAProxy 2.6 lets one of n equal-weight replicas hold when
    `concurrency` are in flight (chash_server_is_eligible: ceil((in flight + 1) * factor / 100)
    slots, split by weight), as a multiple of the mean."""
    tot = ((concurrency + 1) * factor + 99) // 100
    w = 16  # BE_WEIGHT_SCALE x weight 1
    slots = [((i + 1) * w * tot) // (n * w) - (i * w * tot) // (n * w) for i in range(n)]
    return max(slots) / (concurrency / n)


@suite.test
def hot_adapter_spills_within_the_balance_factor():
    check(OWNER, "needs the affinity test's owners")
    hot = ADAPTERS[0]
    rng = random.Random(7)
    n_req, conc = 240, 24
    jobs = [hot if rng.random() < 0.8 else rng.choice(ADAPTERS[1:]) for _ in range(n_req)]
    counts = {s.name: 0 for s in REPLICAS}
    errors = []
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not jobs:
                    return
                a = jobs.pop()
            r = e2e.request(PROXY.port, "POST", "/v1/completions", body(a, PROMPTS[0], 8))
            with lock:
                if r.status == 200:
                    counts[replica_of(r)] += 1
                else:
                    errors.append(r)

    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120 * e2e.SLOW)
    check(not errors, f"{len(errors)} requests failed: {errors[:3]}")
    mean = n_req / N_REPLICAS
    busiest = max(counts.values())
    allowed = max_share_allowed(conc, N_REPLICAS, FACTOR)
    print(f"     {n_req} requests, 80% on {hot} (owner {OWNER[hot]}), {conc} in flight: "
          f"{counts}; busiest/mean {busiest / mean:.2f}, factor {FACTOR / 100:.2f}, HAProxy's "
          f"bound at {conc} in flight {allowed:.2f} (without bounded load the owner would take "
          f"~{0.8 + 0.2 / N_REPLICAS:.0%} = {(0.8 + 0.2 / N_REPLICAS) * N_REPLICAS:.2f}x)",
          flush=True)
    check(busiest / mean <= allowed + 0.05,
          f"busiest replica took {busiest / mean:.2f}x the mean, over the bound {allowed:.2f}")
    check(min(counts.values()) > 0, f"a replica took nothing: {counts}")


class Load:
    """Clients sending greedy requests through the proxy until stopped; each records what it
    sent, when, what came back and from where."""

    def __init__(self, n_clients, stream=True, seed=1):
        self.done, self.stop_flag = [], threading.Event()
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.stream = stream
        self.ts = [threading.Thread(target=self.client, args=(i,), daemon=True)
                   for i in range(n_clients)]

    def pick(self):
        with self.lock:
            model = self.rng.choice(ADAPTERS + [None, None])
            return model, self.rng.choice(PROMPTS), self.stream or self.rng.random() < 0.5

    def client(self, i):
        while not self.stop_flag.is_set():
            model, prompt, stream = self.pick()
            t0 = time.time()
            rec = {"model": model, "prompt": prompt, "t0": t0, "ok": False, "text": None,
                   "replica": None, "error": None}
            try:
                if stream:
                    st, events, raw = e2e.stream(PROXY.port, "/v1/completions",
                                                 body(model, prompt, 16, True), timeout=60)
                    if st != 200:
                        rec["error"] = f"HTTP {st} {raw[:120]!r}"
                    elif not events or events[-1] != "[DONE]":
                        rec["error"] = "stream cut before [DONE]"
                    elif any(isinstance(ev, dict) and ev.get("error") for ev in events):
                        rec["error"] = f"error event {events}"
                    else:
                        rec.update(ok=True, text=e2e.stream_text(events),
                                   replica=events[0].get("system_fingerprint"))
                else:
                    r = e2e.request(PROXY.port, "POST", "/v1/completions",
                                    body(model, prompt, 16), timeout=60)
                    if r.status != 200:
                        rec["error"] = f"HTTP {r.status} {r.data[:120]!r}"
                    else:
                        rec.update(ok=True, text=e2e.text_of(r.json()), replica=replica_of(r))
            except Exception as e:  # noqa: B902 - a failed request is data here
                rec["error"] = f"{type(e).__name__}: {e}"
            rec["t1"] = time.time()
            with self.lock:
                self.done.append(rec)

    def __enter__(self):
        for t in self.ts:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.ts:
            t.join(90 * e2e.SLOW)
        check(not any(t.is_alive() for t in self.ts), "a client hung (no answer in 60 s)")


REFERENCE = {}


def reference(model, prompt):
    """The greedy text of one request on a single server (replica-1 directly, no proxy)."""
    k = (model, prompt)
    if k not in REFERENCE:
        r = REPLICAS[0].post("/v1/completions", body(model, prompt, 16))
        check(r.status == 200, f"reference {k}: {r}")
        REFERENCE[k] = e2e.text_of(r.json())
    return REFERENCE[k]


def restart(s):
    port = s.port
    t0 = time.time()
    rc = s.stop(signal.SIGTERM)
    eq(rc, 0, f"{s.name}'s exit code after its drain")
    t1 = time.time()
    s.start(port=port)
    PROXY.wait_state({s.args[s.args.index("--replica-name") + 1]: "UP"}, 30)
    return t1 - t0, time.time() - t1


@suite.test
def drain_delay_leaves_rotation_before_refusing():
    s = REPLICAS[2]
    name = s.args[s.args.index("--replica-name") + 1]
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    h = e2e.wait_until(lambda: s.req("GET", "/health").status == 503, 2,
                       "/health to answer 503 after SIGTERM")
    eq(s.req("GET", "/health").json().get("status"), "draining", "/health status")
    r = s.post("/v1/completions", body(ADAPTERS[0], PROMPTS[0], 2))
    eq(r.status, 200, "a request sent straight to the replica during --drain-delay")
    PROXY.wait_state({name: "DOWN"}, DRAIN_DELAY + 5)
    t_down = time.time() - t0
    r = s.post("/v1/completions", body(ADAPTERS[0], PROMPTS[0], 2))
    still = r.status
    s.proc.wait(60 * e2e.SLOW)
    t_exit = time.time() - t0
    eq(s.proc.returncode, 0, f"{name}'s exit code")
    s.exit_code = None
    print(f"     SIGTERM {name}: /health 503 at once, HAProxy marked it down after {t_down:.1f} s "
          f"while it still served (HTTP {still}), exit 0 after {t_exit:.1f} s "
          f"(--drain-delay {DRAIN_DELAY})", flush=True)
    check(h, "no 503")
    check(t_down < DRAIN_DELAY, f"HAProxy took {t_down:.1f} s, longer than --drain-delay")
    eq(still, 200, "a request straight to the replica once HAProxy had marked it down")
    s.start(port=s.port)
    PROXY.wait_state({name: "UP"}, 30)


@suite.test
def rolling_restart_loses_nothing():
    for a in ADAPTERS + [None]:
        for p in PROMPTS:
            reference(a, p)
    times = []
    retries0 = PROXY.retries()
    with Load(6, stream=True) as load:
        time.sleep(2)
        for s in REPLICAS:
            times.append(restart(s))
            time.sleep(1)
        time.sleep(1)
    bad = [r for r in load.done if not r["ok"]]
    wrong = [r for r in load.done if r["ok"] and r["text"] != reference(r["model"], r["prompt"])]
    by = {}
    for r in load.done:
        by[r["replica"]] = by.get(r["replica"], 0) + 1
    print(f"     {len(load.done)} streams during 3 restarts (drain, restart, HAProxy sees it up: "
          f"{', '.join(f'{d:.1f}+{u:.1f}s' for d, u in times)}); served by {by}; "
          f"{len(bad)} failed, {len(wrong)} differ from a single server; HAProxy retried "
          f"{PROXY.retries() - retries0}", flush=True)
    check(len(load.done) >= 30, f"only {len(load.done)} requests ran")
    check(not bad, f"{len(bad)} requests failed: {[r['error'] for r in bad[:3]]}")
    check(not wrong, f"{len(wrong)} texts differ, e.g. {wrong[:1]}")


@suite.test
def crash_fails_only_what_was_in_flight():
    check(OWNER, "needs the affinity test's owners")
    victim = REPLICAS[1]
    vname = victim.args[victim.args.index("--replica-name") + 1]
    owned = [a for a in ADAPTERS if OWNER[a] == vname]
    with Load(6, stream=False, seed=2) as load:
        time.sleep(2)
        t_kill = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        victim.exit_code = "killed by the test"
        PROXY.wait_state({vname: "DOWN"}, 20)
        t_down = time.time()
        time.sleep(3)
        port = victim.port
        victim.start(port=port)
        PROXY.wait_state({vname: "UP"}, 30)
        time.sleep(1)
    inflight = [r for r in load.done if r["t0"] < t_kill < r["t1"]]
    failed = [r for r in load.done if not r["ok"]]
    after = [r for r in load.done if r["t0"] > t_down]
    print(f"     {len(load.done)} requests; kill -9 {vname}: {len(inflight)} in flight at the "
          f"kill, {len(failed)} failed ({sorted(set(r['error'][:40] for r in failed))}); "
          f"marked down {t_down - t_kill:.1f}s later; {len(after)} sent after that, "
          f"{sum(not r['ok'] for r in after)} failed", flush=True)
    for r in failed:
        check(r["t0"] <= t_down, f"a request sent after {vname} was marked down failed: {r}")
        check(r["t0"] < t_kill + 0.5 and r["t1"] > t_kill,
              f"a request that was not in flight at the kill failed: {r}")
    check(len(after) >= 6, f"only {len(after)} requests were sent after the mark-down")
    wrong = [r for r in load.done if r["ok"] and r["text"] != reference(r["model"], r["prompt"])]
    check(not wrong, f"{len(wrong)} texts differ, e.g. {wrong[:1]}")
    # Back up: its adapters go to it again.
    for a in owned:
        e2e.wait_until(PROXY.idle, 10, "HAProxy to let go of the previous request", 0.01)
        r = e2e.request(PROXY.port, "POST", "/v1/completions", body(a, PROMPTS[0], 2))
        check(r.status == 200, f"{a} after the restart: {r}")
        eq(replica_of(r), vname, f"replica serving {a} once {vname} is back")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
