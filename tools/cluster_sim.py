#!/usr/bin/env python3
"""cluster_sim: a discrete-event simulation of R adaptree replicas behind HAProxy serving
A LoRA adapters, to compare three ways of routing requests by adapter id: round robin, consistent
hashing, and consistent hashing with bounded loads (HAProxy's `hash-type consistent` +
`hash-balance-factor`). Pure Python + numpy (.venv, `make venv`).

What is simulated
-----------------
* Requests arrive as one Poisson process whose rate loads the cluster to --util of its
  capacity (R x one replica's full-batch throughput with 32 different rank-16 adapters, below).
  Each picks adapter k (k = 1..A, id "adapter-k") with Zipf probability ~ 1/k^s (--zipf), or,
  with probability --base-share, no adapter (the base model).
* Routing, as HAProxy does it (src/lb_chash.c, src/backend.c):
  - rr: `balance roundrobin` over the replicas.
  - chash: `hash-type consistent`: every replica has 16 x weight points on a 32-bit ring
    (BE_WEIGHT_SCALE 16; --weight, HAProxy's server weight, default 100 as in
    deploy/haproxy/haproxy.cfg) at full_hash(puid * 4096 + i) (HAProxy's full_hash: Bob
    Jenkins' integer hash times 3221225473); the key is sdbm(adapter id), passed through
    full_hash too with the `avalanche` modifier (--key-hash, default avalanche: without it,
    sdbm of ids that differ only in their last character land next to each other on the ring);
    a key goes to the closest point on either side.
  - bounded: the same ring plus `hash-balance-factor F` (--balance-factor, default 150 as in
    deploy/haproxy/haproxy.cfg): a replica is eligible only while its requests in flight < its
    share of ceil((all in flight + 1) x F / 100) (chash_server_is_eligible: a whole share per
    weight, the remainder spread by cumulative weight, never 0); otherwise the next point on
    the ring is tried.
  Base-model requests go to a second backend, `balance leastconn` (fewest base requests in
  flight, ties in turn), under every policy. Each backend counts only its own requests in flight
  (separate server objects), so the bounded-load check does not see base requests.
* Each replica is one `adaptree serve` with the server's own rules (server/scheduler.c,
  adapters/registry.c):
  - up to --max-seqs (32) requests run at once and share the replica's throughput: each
    generates T(n)/n tokens/s while n run (continuous batching as processor sharing), slowed by
    the adapters in the batch (below); a request needs --tokens (64);
  - more wait, up to --queue-limit (256) beyond the running ones; past that a request gets 429
    and is counted as rejected (nothing retries it);
  - waiting requests are admitted round-robin over their adapter groups (one client: HAProxy)
    when a slot frees, and only then is the adapter acquired: a request whose adapter is not
    resident starts its load at that moment (no prefetch on arrival), its group is skipped while
    the load runs, and runs once it is done;
  - loads run on libuv's thread pool, at most --load-workers (4) at once; a load's median time
    grows with the requests running on the replica (the loader competes with the compute
    threads for the 2 cores): --load-ms-idle (21.1 ms) at 0, --load-ms (196 ms) at 16, linear
    in between and beyond (the 32-stream median, 364 ms, is within 2% of that line), times a
    ratio drawn from the measured loads' spread around their median (--no-load-spread: none);
  - the adapter cache holds --budget adapters, least recently used out first (used: acquired by
    a request, or loaded); eviction runs at each acquire and never drops an adapter a running
    request uses (a waiting request holds no reference: its adapter can be evicted and loaded
    again before it runs).
* Warm start: every replica's cache starts in its steady state, drawn with Che's approximation
  of LRU from the rate at which each adapter reaches it (rr: 1/R of every adapter's; chash: all
  of the adapters it owns; bounded: measured by a 40000-request pilot run, per adapter for those
  with >= 100 requests in it, else the pooled share going to the 1st, 2nd, ... replica of the
  adapter's ring walk). Then the first --warmup share (20%) of the requests is not counted.
  --cold-start starts from empty caches instead. (A plain warm-up is too slow for bounded loads
  at 64 replicas: copies of spilled adapters kept accumulating for 600000 requests, 42 simulated
  minutes.) Checked against --cold-start runs of 2000000 requests, the last half counted: within
  0.3 points of hit rate (bounded at A = 10k, R = 64; all three policies at 100k x 64).

Parameters, and where each figure comes from (this repository's measurements on its Intel Xeon,
family 6 model 167, 2 vCPU, f32, 2026-12-06: docs/PERF.md §2.1; tok/s do not carry across hosts):
  T(32) = 425.6 tok/s   `make bench-server`, "no adapter" (32 streams, 64 tokens each after a
                        14-token prompt, prefill included): a replica's full-batch throughput.
  T(1)  = 152.4 tok/s   `make bench-server`, "32 no-adapter requests one at a time".
  T(n) in between       the shape of `make bench` "batched decode, batch 1/8/32/64" = 171.2 /
                        545.3 / 527.4 / 530.6 tok/s (flat from 8 rows: the step is bound by
                        arithmetic), scaled to the two server figures (x0.890 at 1, x0.807 at
                        32, log-interpolated): 152 / 258 / 360 / 458 / 442 / 426 tok/s at
                        1 / 2 / 4 / 8 / 16 / 32 running.
  adapters in a batch   step time x (1 + o(d) x adapter rows / rows), d distinct adapters
                        running: o(1) = 1/0.936 - 1 (`make bench-server` "all on one adapter
                        (rank-16 all-linear)" 0.936), o(32) = 1/0.794 - 1 ("32 different rank-16
                        all-linear" 0.794), in between the shape of `make bench`'s LoRA line,
                        +9.3% / +14.3% / +33.2% at 1 / 8 / 32 distinct (o(8) = 0.109).
  capacity              T(32) x 0.794 / 64 tokens = 5.28 requests/s per replica (base requests
                        count at 1.0); --util 0.7 of R times that: 14.8 requests/s at R = 4.
  --budget 879          adapters per replica. The server's own default, --adapter-cache-mb 0, is
                        unlimited, so the default takes the budget `make bench-server` runs with,
                        --adapter-cache-mb 8192 (PERF.md §1.2), over one rank-16 all-linear f16
                        adapter, 9768960 bytes (weight_bytes in /v1/models; PERF.md §2.1 "9.77
                        MB"): floor(8192 MiB / 9768960 B) = 879 (--cache-mb, --adapter-bytes).
  --load-ms 196         measured on this host, 2026-12-06: 48 x `POST /v1/adapters/load` of a
  --load-ms-idle 21.1   rank-16 all-linear adapter (tools/make_bench_registry.py's all16/a00..a07,
                        each unloaded first with `POST /v1/adapters/unload`), on
                        `build/adaptree serve -m models/SmolLM2-135M-Instruct.Q4_1.gguf
                        --registry REG --port P --no-watch`, with 0 / 16 / 32 base-model streams
                        (64 tokens, bench-server's prompt) decoding meanwhile: median 21.1 ms
                        (20.7-34.2) / 196 ms (137-784) / 364 ms (230-1421); the samples are in
                        LOAD_SAMPLES_*. An earlier run (20 loads each, curl -w '%{time_total}'):
                        27 ms idle, 208 ms with 16 streams; 31 ms idle with the files dropped
                        from the page cache (posix_fadvise DONTNEED). `de` from registry/ (rank
                        4 all-linear, 2.4 MB; the registry has no rank-16 adapter): 7.2 ms idle;
                        a rank-8 q,v adapter: 3.0 ms. (`make bench`: 21.8 ms, best of 32.)
  --load-workers 4      libuv's default thread pool (the server does not set UV_THREADPOOL_SIZE);
                        measured: 8 loads at once while 16 streams decode take 404-439 ms, two
                        rounds of four at ~200 ms.
  --max-seqs 32, --queue-limit 256   `adaptree serve`'s defaults (README, "Command line").
  --tokens 64           bench-server's max_tokens, with which T(n) was measured.

Not modelled: the decode time a load takes from the compute threads (decode speed is kept as
measured without loads), prefill apart from decode (folded into the tok/s above), network and
HAProxy time, HAProxy queueing (no maxconn), health checks, failures, retries of 429s.

Output per run: hit rate (adapter requests whose adapter was resident on their replica when they
arrived), adapter loads per minute (whole cluster, reloads included), busiest / mean replica load
(requests served in the measured window), p50 / p99 queueing delay (arrival to start of service:
waiting for a slot and for the adapter's load; served requests only), and the share rejected
with 429 (then the queue of that replica is full: the cell is overloaded, and p99 says how long
its queue is, not how long the run was).

--table runs A = 1k / 10k / 100k x R = 4 / 16 / 64 for the three policies with --requests
requests per cell (default 300000, of which 240000 are counted) and prints a markdown table
(three values per cell, one per policy; --long: a row per policy) with the command line at the
top: 42-43 s on this 2-vCPU machine (68 s while other work ran on it).
Seeds 1 and 2 agree in every cell to within 0.2 points of hit rate, 3.1% of loads per minute
where there are over 100 a minute (one a minute below), 0.02 of busiest/mean, 5% of p99 in
cells without 429s (6.3% in the overloaded ones), and 0.4 points of 429s; p50 is identical.

usage: tools/cluster_sim.py [-R 16] [-A 10000] [--policy rr|chash|bounded|all] [--zipf 1.0]
                            [--util 0.7] [--base-share 0] [--balance-factor 150] [--seed 1]
                            [--requests N] [--budget N] [--json] [--table]
"""

import argparse
import collections
import heapq
import json
import math
import os
import random
import shlex
import sys
import time

try:
    import numpy as np
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("cluster_sim: numpy is missing: run it with .venv/bin/python (make venv)")

# ---- measured parameters (docs/PERF.md §2.1, Intel Xeon, 2026-12-06; see the header) ---------
BENCH_DECODE = {1: 171.2, 8: 545.3, 32: 527.4, 64: 530.6}  # make bench, batched decode, f32 tok/s
SERVER_T1 = 152.4     # make bench-server, 32 no-adapter requests one at a time, tok/s
SERVER_T32 = 425.6    # make bench-server, 32 streams no adapter, tok/s
R16_ONE = 0.936       # make bench-server, all 32 streams on one rank-16 all-linear adapter
R16_32 = 0.794        # make bench-server, 32 different rank-16 all-linear adapters
BENCH_R16_OVER = {1: 0.093, 8: 0.143, 32: 0.332}  # make bench LoRA rank-16, +% over base, 32 rows
ADAPTER_BYTES = 9768960  # rank-16 all-linear f16 adapter, weight_bytes in /v1/models (9.77 MB)
CACHE_MB = 8192       # make bench-server's --adapter-cache-mb (the server default 0 = unlimited)
# Measured 2026-12-06 on this host (see the header): 48 x POST /v1/adapters/load of a rank-16
# all-linear adapter (unloaded before each), ms, sorted, with 0 / 16 / 32 base-model streams
# decoding on the same server.
LOAD_SAMPLES_IDLE = [21] * 39 + [24, 25, 26, 27, 29, 29, 30, 31, 34]
LOAD_SAMPLES_16 = [137, 138, 141, 145, 149, 176, 182, 184, 185, 185, 187, 187, 188, 189, 189, 191,
                   191, 192, 193, 194, 194, 195, 196, 196, 196, 196, 196, 197, 198, 199, 199, 201,
                   201, 201, 202, 204, 211, 215, 216, 217, 219, 228, 236, 240, 251, 255, 723, 784]
LOAD_SAMPLES_32 = [230, 245, 250, 251, 252, 254, 256, 257, 258, 258, 259, 263, 266, 266, 287, 337,
                   349, 352, 352, 354, 357, 359, 360, 364, 364, 366, 367, 369, 371, 373, 374, 374,
                   375, 376, 377, 378, 379, 379, 380, 383, 384, 385, 405, 412, 416, 474, 1405, 1421]
LOAD_MS_IDLE = 21.1   # median of LOAD_SAMPLES_IDLE
LOAD_MS_BUSY = 196.0  # median of LOAD_SAMPLES_16: the load time at 16 running requests
LOAD_WORKERS = 4      # libuv's default thread pool
MAX_SEQS = 32
QUEUE_LIMIT = 256
TOKENS = 64

# ---- HAProxy's hashing (src/lb_chash.c, include/haproxy/intops.h, src/hash.c) ---------------
BE_WEIGHT_SCALE = 16
SRV_EWGHT_RANGE = 256 * BE_WEIGHT_SCALE
M32 = 0xFFFFFFFF


def full_hash(a):
    """HAProxy's full_hash on a numpy uint64 array holding 32-bit values (wraps at 2^32)."""
    a = a.astype(np.uint64) & M32
    a = ((a + 0x7ED55D16) + (a << 12)) & M32
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & M32
    a = ((a + 0x165667B1) + (a << 5)) & M32
    a = ((a + 0xD3A2646C) ^ (a << 9)) & M32
    a = ((a + 0xFD7046C5) + (a << 3)) & M32
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & M32
    return (a * 3221225473) & M32


def sdbm(ids):
    """HAProxy's hash_sdbm of each string, vectorised over the characters."""
    raw = [s.encode() for s in ids]
    width = max(len(b) for b in raw)
    buf = np.zeros((len(raw), width), dtype=np.uint64)
    lens = np.array([len(b) for b in raw])
    for i, b in enumerate(raw):
        buf[i, :len(b)] = np.frombuffer(b, dtype=np.uint8)
    h = np.zeros(len(raw), dtype=np.uint64)
    for j in range(width):
        nh = (buf[:, j] + (h << 6) + (h << 16) - h) & M32
        h = np.where(j < lens, nh, h)
    return h


class Ring:
    """The consistent-hash ring of R equal-weight servers, and each adapter's starting point."""

    def __init__(self, replicas, n_adapters, weight, key_hash):
        pts = BE_WEIGHT_SCALE * weight
        puid = np.repeat(np.arange(1, replicas + 1, dtype=np.uint64), pts)
        node = np.tile(np.arange(pts, dtype=np.uint64), replicas)
        keys = full_hash(puid * SRV_EWGHT_RANGE + node)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.owner = (puid[order] - 1).astype(np.int64).tolist()
        self.n_points = len(self.keys)
        h = sdbm([f"adapter-{k}" for k in range(1, n_adapters + 1)])
        if key_hash == "avalanche":
            h = full_hash(h)
        nxt = np.searchsorted(self.keys, h, side="left") % self.n_points  # eb32_lookup_ge
        prv = (nxt - 1) % self.n_points
        dp = (h - self.keys[prv]) & M32
        dn = (self.keys[nxt] - h) & M32
        start = np.where(dp <= dn, prv, nxt)
        self.start = start.astype(np.int64).tolist()
        self.server = [self.owner[i] for i in self.start]
        # servers' eweight, total weight and cumulative weight (list order = puid order)
        self.ew = BE_WEIGHT_SCALE * weight
        self.tot_w = self.ew * replicas
        self.cum = [self.ew * s for s in range(replicas)]
        self._walks = {}

    def walks(self, depth):
        """(A, depth) array: the first `depth` distinct servers on each adapter's ring walk."""
        if depth not in self._walks:
            owner, P = self.owner, self.n_points
            out = np.empty((len(self.start), depth), dtype=np.int64)
            for k, i in enumerate(self.start):
                seen = []
                while len(seen) < depth:
                    s = owner[i]
                    if s not in seen:
                        seen.append(s)
                    i = i + 1 if i + 1 < P else 0
                out[k] = seen
            self._walks[depth] = out
        return self._walks[depth]


# ---- one replica's speed -----------------------------------------------------------------------


def _interp_log2(points, x):
    """Piecewise-linear interpolation in log2(x) through {x: y}; clamped at both ends."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]]
    if x >= xs[-1]:
        return points[xs[-1]]
    for a, b in zip(xs, xs[1:]):
        if a <= x <= b:
            f = (math.log2(x) - math.log2(a)) / (math.log2(b) - math.log2(a))
            return points[a] + f * (points[b] - points[a])
    raise AssertionError


def throughput(n):
    """A replica's aggregate tok/s with n requests running, no adapter."""
    scale = _interp_log2({1: SERVER_T1 / BENCH_DECODE[1], 32: SERVER_T32 / BENCH_DECODE[32]}, n)
    return _interp_log2(BENCH_DECODE, n) * scale


def adapter_overhead(d):
    """Extra step time with d distinct rank-16 adapters among the rows of a full step."""
    if d <= 0:
        return 0.0
    k = _interp_log2({1: (1 / R16_ONE - 1) / BENCH_R16_OVER[1],
                      32: (1 / R16_32 - 1) / BENCH_R16_OVER[32]}, d)
    if d <= 32:
        return _interp_log2(BENCH_R16_OVER, d) * k
    slope = (BENCH_R16_OVER[32] - BENCH_R16_OVER[8]) / 24  # more distinct adapters: more reads
    return (BENCH_R16_OVER[32] + slope * (d - 32)) * k


# ---- the simulation ----------------------------------------------------------------------------

BASE = -1


class Replica:
    __slots__ = ("i", "V", "rate", "t_last", "fin", "n_run", "run_ad", "n_ad_rows", "version",
                 "groups", "rr", "loading_groups", "cache", "loading", "load_q", "n_loads",
                 "active", "ad_inflight", "base_inflight", "served")

    def __init__(self, i):
        self.i = i
        self.V = 0.0            # tokens every running request has generated since the start
        self.rate = 0.0         # dV/dt
        self.t_last = 0.0
        self.fin = []           # heap of (V at which the job is done, seq, job)
        self.n_run = 0
        self.run_ad = {}        # adapter -> running requests using it (the references)
        self.n_ad_rows = 0
        self.version = 0        # invalidates older completion events
        self.groups = {}        # adapter (or BASE) -> deque of waiting jobs
        self.rr = collections.deque()   # groups to scan, in round-robin order
        self.loading_groups = set()     # groups skipped until their adapter's load ends
        self.cache = collections.OrderedDict()  # resident adapters, oldest first
        self.loading = set()    # adapters being loaded or queued for a load worker
        self.load_q = collections.deque()
        self.n_loads = 0        # loads running on workers
        self.active = 0         # requests in the replica (running + waiting), for 429
        self.ad_inflight = 0    # adapter requests in flight (the hash backend's `served`)
        self.base_inflight = 0  # base requests in flight (the leastconn backend's `served`)
        self.served = 0         # requests completed in the measured window


def _ratios(samples):
    med = float(np.median(samples))
    return [x / med for x in samples]


LOAD_SPREAD_IDLE = _ratios(LOAD_SAMPLES_IDLE)
LOAD_SPREAD_BUSY = _ratios(LOAD_SAMPLES_16) + _ratios(LOAD_SAMPLES_32)


def arrival_rate(a):
    """Requests/s that load the cluster to --util of its capacity: full batches of distinct
    adapters (base requests at the no-adapter speed)."""
    mix = a.base_share + (1 - a.base_share) * (1 + adapter_overhead(a.max_seqs))
    return a.util * a.replicas * throughput(a.max_seqs) / (a.tokens * mix)


def popularity(a):
    w = np.arange(1, a.adapters + 1, dtype=np.float64) ** -a.zipf
    return w / w.sum()


def che_fill(keys, rates, budget, rng):
    """What an LRU cache of `budget` entries holds in steady state when `keys` are requested
    independently at `rates` (Che's approximation: key i is resident with probability
    1 - exp(-rate_i T), T the cache's characteristic time), oldest first."""
    keep = rates > 0
    keys, rates = keys[keep], rates[keep]
    if len(keys) <= budget:  # never full: everything ever requested is resident
        inc = np.ones(len(keys), dtype=bool)
        cap = np.ones(len(keys))
    else:
        lo, hi = 1e-9, 1.0
        while np.sum(-np.expm1(-rates * hi)) < budget:
            hi *= 4
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            if np.sum(-np.expm1(-rates * mid)) < budget:
                lo = mid
            else:
                hi = mid
        cap = -np.expm1(-rates * hi)
        inc = rng.random(len(keys)) < cap
    keys, rates, cap = keys[inc], rates[inc], cap[inc]
    # age of the last request, given that it is within the characteristic time
    age = -np.log1p(-rng.random(len(keys)) * cap) / rates
    order = np.argsort(-age, kind="stable")[-budget:]
    return keys[order].tolist()


def warm_caches(a, policy, ring, rng, routes=None):
    """Each replica's steady-state cache contents (oldest first), from the rate at which each
    adapter reaches each replica under the policy: rr 1/R of every adapter; chash all of the
    adapters it owns; bounded as measured by a pilot run (`routes`: (adapter, replica) of every
    request routed): per adapter for those with >= 100 requests in it, else the pooled share of
    requests that went to the 1st, 2nd, ... distinct replica on the adapter's ring walk."""
    R, A = a.replicas, a.adapters
    lam = arrival_rate(a) * (1 - a.base_share) * popularity(a)
    keys = np.arange(A)
    if policy == "rr":
        return [che_fill(keys, lam / R, a.budget, rng) for _ in range(R)]
    if policy == "chash":
        srv = np.array(ring.server)
        return [che_fill(keys[srv == r], lam[srv == r], a.budget, rng) for r in range(R)]
    rk, rs = routes
    n_k = np.bincount(rk, minlength=A)
    hot = n_k >= 100
    walk = ring.walks(min(R, 12))
    J = walk.shape[1]
    tail = ~hot[rk]
    depth = np.argmax(walk[rk[tail]] == rs[tail][:, None], axis=1)
    found = (walk[rk[tail]] == rs[tail][:, None]).any(axis=1)
    q = np.bincount(depth[found], minlength=J)[:J].astype(np.float64)
    q /= max(q.sum(), 1)
    cold = np.nonzero(~hot)[0]
    s_l = [walk[cold, j] for j in range(J)]
    k_l = [cold] * J
    r_l = [lam[cold] * q[j] for j in range(J)]
    for k in np.nonzero(hot)[0]:
        c = np.bincount(rs[rk == k], minlength=R)
        srv = np.nonzero(c)[0]
        s_l.append(srv)
        k_l.append(np.full(len(srv), k))
        r_l.append(lam[k] * c[srv] / n_k[k])
    s_all, k_all, r_all = np.concatenate(s_l), np.concatenate(k_l), np.concatenate(r_l)
    order = np.argsort(s_all, kind="stable")
    cuts = np.searchsorted(s_all[order], np.arange(R + 1))
    return [che_fill(k_all[order][cuts[r]:cuts[r + 1]], r_all[order][cuts[r]:cuts[r + 1]],
                     a.budget, rng) for r in range(R)]


def run(a, policy, ring=None):
    """One run: warm the caches (for bounded, from a pilot run), then simulate."""
    if ring is None:
        ring = Ring(a.replicas, a.adapters, a.weight, a.key_hash)
    if a.cold_start:
        return simulate(a, policy, ring)
    rng = np.random.default_rng([a.seed, 7])
    routes = None
    if policy == "bounded":
        pilot = argparse.Namespace(**vars(a))
        pilot.requests = min(a.requests, 40000)
        pilot.seed = a.seed + 1000003
        pilot.warmup = 0.0
        routes = []
        simulate(pilot, "bounded", ring, warm=warm_caches(a, "chash", ring, rng), record=routes)
        routes = (np.array(routes[0::2], dtype=np.int64), np.array(routes[1::2], dtype=np.int64))
    return simulate(a, policy, ring, warm=warm_caches(a, policy, ring, rng, routes))


def simulate(a, policy, ring, warm=None, record=None):
    """One run from the given cache contents (per replica, oldest first); returns a dict of
    results. record: a list that gets adapter, replica of every adapter request routed."""
    R, A = a.replicas, a.adapters
    rng = np.random.default_rng(a.seed)
    n = a.requests
    lam = arrival_rate(a)
    arrivals = np.cumsum(rng.exponential(1 / lam, n)).tolist()
    cdf = np.cumsum(popularity(a))
    pick = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), A - 1)
    if a.base_share > 0:
        pick = np.where(rng.random(n) < a.base_share, BASE, pick)
    pick = pick.tolist()
    n_warm = int(n * a.warmup)

    per_stream = [0.0] + [throughput(k) / k for k in range(1, a.max_seqs + 1)]
    over = [adapter_overhead(d) for d in range(a.max_seqs + 1)]
    load_idle = a.load_ms_idle / 1000
    load_slope = (a.load_ms - a.load_ms_idle) / 1000 / 16
    spread = random.Random(a.seed * 7919 + 17)
    spread_idle = LOAD_SPREAD_IDLE if a.load_spread else [1.0]
    spread_busy = LOAD_SPREAD_BUSY if a.load_spread else [1.0]
    reps = [Replica(i) for i in range(R)]
    if warm is not None:
        for r, ks in zip(reps, warm):
            for k in ks:
                r.cache[k] = None

    events = []  # (time, seq, kind, replica, payload); kind 1 completion, 2 load done
    seq = 0
    delays = []
    stats = dict(hits=0, ad_reqs=0, loads=0, rejected=0, measured=0)
    halves = [[0, 0], [0, 0]]  # [hits, adapter requests] in each half of the measured window
    n_half = n_warm + (n - n_warm) // 2
    t_meas0 = arrivals[n_warm] if n_warm < n else arrivals[-1]
    t_meas1 = arrivals[-1]
    rr_next = 0
    lc_next = 0
    tot_ad_inflight = 0
    max_active = a.max_seqs + a.queue_limit
    factor = a.balance_factor
    owner, start_pt, n_pts = (ring.owner, ring.start, ring.n_points) if ring else (None, None, 0)

    def advance(r, t):
        if r.n_run:
            r.V += r.rate * (t - r.t_last)
        r.t_last = t

    def reschedule(r, t):
        nonlocal seq
        r.version += 1
        if r.n_run:
            r.rate = per_stream[r.n_run] / (1 + over[len(r.run_ad)] * r.n_ad_rows / r.n_run)
            seq += 1
            dt = (r.fin[0][0] - r.V) / r.rate
            heapq.heappush(events, (t + (dt if dt > 0 else 0.0), seq, 1, r, r.version))
        else:
            r.rate = 0.0

    def begin_load(r, k, t):
        nonlocal seq
        r.n_loads += 1
        if t >= t_meas0 and t <= t_meas1:
            stats["loads"] += 1
        seq += 1
        m = r.n_run
        dur = (load_idle + load_slope * m) * spread.choice(spread_busy if m else spread_idle)
        heapq.heappush(events, (t + dur, seq, 2, r, k))

    def start_load(r, k, t):
        r.loading.add(k)
        if r.n_loads < a.load_workers:
            begin_load(r, k, t)
        else:
            r.load_q.append(k)

    def evict(r):
        cache = r.cache
        while len(cache) > a.budget:
            victim = None
            for k in cache:
                if k not in r.run_ad:
                    victim = k
                    break
            if victim is None:
                return
            del cache[victim]

    def admit(r, t):
        """Fills free slots, round-robin over the waiting groups; True if any started."""
        nonlocal seq
        started = False
        while r.n_run < a.max_seqs and r.rr:
            key = r.rr.popleft()
            q = r.groups[key]
            if key != BASE:
                if key not in r.cache:  # acquire -> -EAGAIN: load it, skip the group
                    if key not in r.loading:
                        start_load(r, key, t)
                    r.loading_groups.add(key)
                    continue
                r.cache.move_to_end(key)
            job = q.popleft()
            if q:
                r.rr.append(key)
            else:
                del r.groups[key]
            if job[2]:
                delays.append(t - job[0])
            r.n_run += 1
            if key != BASE:
                r.run_ad[key] = r.run_ad.get(key, 0) + 1
                r.n_ad_rows += 1
                evict(r)
            seq += 1
            heapq.heappush(r.fin, (r.V + a.tokens, seq, job))
            started = True
        return started

    def route(k):
        nonlocal rr_next, lc_next
        if k == BASE:  # leastconn on the base backend's own counts, ties in turn
            best, bi = None, 0
            for j in range(R):
                s = (lc_next + j) % R
                c = reps[s].base_inflight
                if best is None or c < best:
                    best, bi = c, s
            lc_next = (bi + 1) % R
            return bi
        if policy == "rr":
            s = rr_next
            rr_next = (rr_next + 1) % R
            return s
        if policy == "chash":
            return ring.server[k]
        # bounded: walk the ring from the key's point to the first eligible server
        tot_slots = ((tot_ad_inflight + 1) * factor + 99) // 100
        spw, rem = divmod(tot_slots, ring.tot_w)
        ew, tot_w = ring.ew, ring.tot_w
        i = start_pt[k]
        loops = 0
        while True:
            s = owner[i]
            c = ring.cum[s]
            slots = ew * spw + ((c + ew) * rem) // tot_w - (c * rem) // tot_w
            if reps[s].ad_inflight < (slots if slots else 1):
                return s
            i += 1
            if i == n_pts:
                i = 0
                loops += 1
                if loops > 1:  # HAProxy's protection against a loop: take this one
                    return s

    idx = 0
    inf = float("inf")
    while idx < n or events:
        t_arr = arrivals[idx] if idx < n else inf
        if events and events[0][0] <= t_arr:
            t, _, kind, r, payload = heapq.heappop(events)
            if kind == 1:
                if payload != r.version:
                    continue
                advance(r, t)
                fin = r.fin
                eps = 1e-9 * a.tokens
                while fin and fin[0][0] <= r.V + eps:
                    _, _, job = heapq.heappop(fin)
                    k = job[1]
                    r.n_run -= 1
                    r.active -= 1
                    if k == BASE:
                        r.base_inflight -= 1
                    else:
                        r.ad_inflight -= 1
                        tot_ad_inflight -= 1
                        c = r.run_ad[k] - 1
                        if c:
                            r.run_ad[k] = c
                        else:
                            del r.run_ad[k]
                        r.n_ad_rows -= 1
                    if job[2]:
                        r.served += 1
                admit(r, t)
                reschedule(r, t)
            else:  # a load is done
                k = payload
                r.n_loads -= 1
                r.loading.discard(k)
                r.cache[k] = None
                r.cache.move_to_end(k)  # the newest: load_done sets last_used
                if k in r.loading_groups:
                    r.loading_groups.discard(k)
                    r.rr.append(k)
                if r.load_q:
                    begin_load(r, r.load_q.popleft(), t)
                advance(r, t)
                if admit(r, t):
                    reschedule(r, t)
            continue
        # an arrival
        t = t_arr
        k = pick[idx]
        measured = idx >= n_warm
        idx += 1
        s = route(k)
        r = reps[s]
        if record is not None and k != BASE:
            record.append(k)
            record.append(s)
        if r.active >= max_active:
            if measured:
                stats["rejected"] += 1
                stats["measured"] += 1
            continue
        if measured:
            stats["measured"] += 1
        r.active += 1
        if k == BASE:
            r.base_inflight += 1
        else:
            r.ad_inflight += 1
            tot_ad_inflight += 1
            if measured:
                stats["ad_reqs"] += 1
                h = halves[idx > n_half]
                h[1] += 1
                if k in r.cache:
                    stats["hits"] += 1
                    h[0] += 1
        job = (t, k, measured)
        q = r.groups.get(k)
        if q is not None:
            q.append(job)
        else:
            r.groups[k] = collections.deque((job,))
            if k in r.loading:
                r.loading_groups.add(k)
            else:
                r.rr.append(k)
        if r.n_run < a.max_seqs:
            advance(r, t)
            if admit(r, t):
                reschedule(r, t)

    served = [r.served for r in reps]
    mean = sum(served) / R
    d = np.array(delays) if delays else np.zeros(1)
    minutes = max(t_meas1 - t_meas0, 1e-9) / 60
    return dict(
        policy=policy, replicas=R, adapters=A, zipf=a.zipf, util=a.util, seed=a.seed,
        requests=n, measured=stats["measured"], sim_seconds=t_meas1,
        rate_per_s=lam, budget=a.budget,
        hit_rate=stats["hits"] / max(stats["ad_reqs"], 1),
        loads_per_min=stats["loads"] / minutes,
        busiest_over_mean=(max(served) / mean) if mean else 0.0,
        p50_ms=float(np.percentile(d, 50)) * 1e3,
        p99_ms=float(np.percentile(d, 99)) * 1e3,
        rejected=stats["rejected"] / max(stats["measured"], 1),
        hit_rate_halves=[h[0] / max(h[1], 1) for h in halves],
    )


# ---- command line ------------------------------------------------------------------------------

POLICIES = ("rr", "chash", "bounded")
NAMES = {"rr": "round robin", "chash": "consistent hash",
         "bounded": "consistent hash, bounded load"}


def positive_int(name, lo=1, hi=None):
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}")
        if v < lo or (hi is not None and v > hi):
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{name} must be {rng}, got {v}")
        return v
    return conv


def bounded_float(name, lo, hi, lo_open=False, hi_open=False):
    def conv(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}")
        bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo)
               or (hi_open and v == hi))
        if bad:
            rng = ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
            raise argparse.ArgumentTypeError(f"{name} must be in {rng}, got {s}")
        return v
    return conv


def parse_args(argv):
    doc = __doc__
    p = argparse.ArgumentParser(
        prog="cluster_sim.py",
        description=doc[:doc.index("\n\n")].replace("cluster_sim: ", "", 1),
        epilog=doc[doc.index("Parameters, and where"):doc.index("usage:")].rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-R", "--replicas", type=positive_int("--replicas", 1, 4095),
                   help="replicas behind HAProxy (default 16)")
    p.add_argument("-A", "--adapters", type=positive_int("--adapters", 1, 10_000_000),
                   help="distinct adapters (default 10000)")
    p.add_argument("--policy", choices=POLICIES + ("all",),
                   help="routing of adapter requests (default all three)")
    p.add_argument("--zipf", type=bounded_float("--zipf", 0, 5), default=1.0,
                   help="Zipf exponent s of adapter popularity, p(k) ~ 1/k^s (default 1.0)")
    p.add_argument("--util", type=bounded_float("--util", 0, 1.5, lo_open=True), default=0.7,
                   help="offered load over the cluster's capacity (default 0.7)")
    p.add_argument("--base-share", type=bounded_float("--base-share", 0, 1, hi_open=True),
                   default=0.0, help="share of base-model requests (default 0)")
    p.add_argument("--balance-factor", type=positive_int("--balance-factor", 100, 100000),
                   default=150, help="HAProxy hash-balance-factor for 'bounded' (default 150, as "
                   "deploy/haproxy/haproxy.cfg)")
    p.add_argument("--weight", type=positive_int("--weight", 1, 256), default=100,
                   help="HAProxy server weight: 16 x weight ring points per replica (default 100, "
                   "as deploy/haproxy/haproxy.cfg)")
    p.add_argument("--key-hash", choices=("avalanche", "sdbm"), default="avalanche",
                   help="HAProxy hash of the adapter id: sdbm with or without the avalanche "
                        "modifier (default avalanche)")
    p.add_argument("--requests", type=positive_int("--requests", 100), default=300000,
                   help="requests simulated per run (default 300000)")
    p.add_argument("--warmup", type=bounded_float("--warmup", 0, 0.9), default=0.2,
                   help="share of the requests, from the start, not counted (default 0.2)")
    p.add_argument("--seed", type=positive_int("--seed", 0), default=1)
    p.add_argument("--tokens", type=positive_int("--tokens", 1), default=TOKENS,
                   help=f"generated tokens per request (default {TOKENS}, as bench-server)")
    p.add_argument("--max-seqs", type=positive_int("--max-seqs", 1, 4096), default=MAX_SEQS,
                   help=f"serve --max-seqs (default {MAX_SEQS})")
    p.add_argument("--queue-limit", type=positive_int("--queue-limit", 1), default=QUEUE_LIMIT,
                   help=f"serve --queue-limit (default {QUEUE_LIMIT})")
    p.add_argument("--cache-mb", type=positive_int("--cache-mb", 1), default=CACHE_MB,
                   help=f"serve --adapter-cache-mb the budget derives from (default {CACHE_MB})")
    p.add_argument("--adapter-bytes", type=positive_int("--adapter-bytes", 1),
                   default=ADAPTER_BYTES,
                   help=f"bytes of one resident adapter (default {ADAPTER_BYTES}, rank-16 "
                        "all-linear)")
    p.add_argument("--budget", type=positive_int("--budget", 1),
                   help="adapters each replica's cache holds (default: cache-mb MiB / "
                        "adapter-bytes = 879)")
    p.add_argument("--load-ms", type=bounded_float("--load-ms", 0, 1e6), default=LOAD_MS_BUSY,
                   help="median adapter load time with 16 requests running (default "
                        f"{LOAD_MS_BUSY:g}); linear in the running requests from --load-ms-idle")
    p.add_argument("--load-ms-idle", type=bounded_float("--load-ms-idle", 0, 1e6),
                   default=LOAD_MS_IDLE,
                   help=f"median adapter load time on an idle replica (default {LOAD_MS_IDLE:g})")
    p.add_argument("--no-load-spread", dest="load_spread", action="store_false",
                   help="every load takes exactly its median (default: times the ratio of a "
                        "measured load to its median, drawn from the measurements)")
    p.add_argument("--load-workers", type=positive_int("--load-workers", 1, 1024),
                   default=LOAD_WORKERS, help=f"loads at once per replica (default {LOAD_WORKERS})")
    p.add_argument("--cold-start", action="store_true", help="start with empty caches")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per run, one a line (with --table: on stderr)")
    p.add_argument("--table", action="store_true",
                   help="A = 1k/10k/100k x R = 4/16/64 x the three policies: a markdown table")
    p.add_argument("--long", action="store_true",
                   help="with --table: one row per policy instead of three values per cell")
    a = p.parse_args(argv)
    if a.budget is None:
        a.budget = max(1, (a.cache_mb << 20) // a.adapter_bytes)
    if a.table and (a.replicas is not None or a.adapters is not None or a.policy is not None):
        p.error("--table sets --replicas, --adapters and --policy itself; leave them out")
    if a.long and not a.table:
        p.error("--long goes with --table")
    if a.policy is None:
        a.policy = "all"
    if a.replicas is None:
        a.replicas = 16
    if a.adapters is None:
        a.adapters = 10000
    return a


def fmt_ms(v):
    return "0" if v == 0 else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


TABLE_COLUMNS = (
    lambda r: f"{100 * r['hit_rate']:.1f}",
    lambda r: f"{r['loads_per_min']:.0f}",
    lambda r: f"{r['busiest_over_mean']:.2f}",
    lambda r: fmt_ms(r["p50_ms"]),
    lambda r: fmt_ms(r["p99_ms"]),
    lambda r: f"{100 * r['rejected']:.1f}",
)


def print_run(res, out):
    print(f"{NAMES[res['policy']]:<30} hit {100 * res['hit_rate']:5.1f}%  "
          f"loads/min {res['loads_per_min']:8.0f}  busiest/mean {res['busiest_over_mean']:.2f}  "
          f"queueing p50 {fmt_ms(res['p50_ms'])} ms p99 {fmt_ms(res['p99_ms'])} ms  "
          f"429 {100 * res['rejected']:.1f}%", file=out, flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    out = sys.stdout
    t0 = time.time()
    if a.table:
        cmd = "tools/cluster_sim.py " + " ".join(shlex.quote(x) for x in argv)
        print(f"`{cmd}`", file=out)
        print(file=out)
        print(f"Zipf s = {a.zipf:g}, load {100 * a.util:g}% of capacity, base share "
              f"{a.base_share:g}, budget {a.budget} adapters per replica, "
              f"hash-balance-factor {a.balance_factor}, {a.requests} requests per cell "
              f"({100 * a.warmup:g}% warm-up not counted), seed {a.seed}.", file=out)
        print(file=out)
        if a.long:
            print("| A | R | policy | hit rate | loads/min | busiest/mean | queueing p50 (ms) "
                  "| p99 (ms) | 429 |", file=out)
            print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |", file=out,
                  flush=True)
        else:
            print("Each cell: round robin / consistent hash / consistent hash with bounded load.",
                  file=out)
            print(file=out)
            print("| A | R | hit rate (%) | loads/min | busiest/mean | queueing p50 (ms) "
                  "| p99 (ms) | 429 (%) |", file=out)
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", file=out,
                  flush=True)
        for A in (1000, 10000, 100000):
            for R in (4, 16, 64):
                a.adapters, a.replicas = A, R
                ring = Ring(R, A, a.weight, a.key_hash)
                rs = []
                for pol in POLICIES:
                    res = run(a, pol, ring)
                    rs.append(res)
                    if a.json:
                        print(json.dumps(res), file=sys.stderr, flush=True)
                    if a.long:
                        print(f"| {A // 1000}k | {R} | {NAMES[pol]} "
                              f"| {100 * res['hit_rate']:.1f}% | {res['loads_per_min']:.0f} "
                              f"| {res['busiest_over_mean']:.2f} | {fmt_ms(res['p50_ms'])} "
                              f"| {fmt_ms(res['p99_ms'])} | {100 * res['rejected']:.1f}% |",
                              file=out, flush=True)
                if not a.long:
                    print(f"| {A // 1000}k | {R} | " + " | ".join(
                        " / ".join(f(r) for r in rs) for f in TABLE_COLUMNS) + " |",
                        file=out, flush=True)
        print(file=out)
        print(f"({time.time() - t0:.0f} s)", file=out)
        return 0
    ring = Ring(a.replicas, a.adapters, a.weight, a.key_hash)
    pols = POLICIES if a.policy == "all" else (a.policy,)
    if not a.json:
        print(f"R = {a.replicas} replicas, A = {a.adapters} adapters, Zipf s = {a.zipf:g}, load "
              f"{100 * a.util:g}%, base share {a.base_share:g}, budget {a.budget} adapters per "
              f"replica, {a.requests} requests ({100 * a.warmup:g}% warm-up), seed {a.seed}",
              file=out)
    for pol in pols:
        res = run(a, pol, ring)
        if a.json:
            print(json.dumps(res), file=out, flush=True)
        else:
            print_run(res, out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
