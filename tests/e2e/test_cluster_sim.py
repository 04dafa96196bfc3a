"""Self-check of tools/cluster_sim.py, the simulation of many replicas behind HAProxy (no server
needed): small configurations, a few seconds in all, and properties that must hold whatever the
measured parameters are:

- with more adapters than one replica's cache holds but fewer than the cluster's, consistent
  hashing hits the cache more often than round robin (each replica sees only its share);
- under a hot adapter (Zipf popularity), plain consistent hashing sends its replica more than
  hash-balance-factor/100 of the mean load, while bounded loads keep the busiest replica at most
  BALANCE_TOL above that bound (the bound is on requests in flight; the check is on requests
  served, which follows it);
- a fixed seed gives the same output, byte for byte; another seed another one;
- bad flags exit 2 with a message that names the flag, never a traceback.
"""

import json
import os
import subprocess
import sys

import e2e
from e2e import check, eq

SIM = os.path.join(e2e.ROOT, "tools", "cluster_sim.py")
BALANCE_TOL = 0.05  # busiest/mean may exceed factor/100 by this much (served vs in flight)
suite = e2e.Suite("cluster_sim", budget=60)


def sim(*args, expect=0):
    """Runs the simulator with --json; returns {policy: result} (or the process on failure)."""
    p = subprocess.run([sys.executable, SIM, "--json", "--requests", "20000", *args],
                       capture_output=True, text=True, timeout=60, cwd=e2e.ROOT)
    eq(p.returncode, expect, f"exit status of cluster_sim.py {' '.join(args)} (stderr: "
       f"{p.stderr[-800:]})")
    if expect:
        return p
    return {d["policy"]: d for d in map(json.loads, p.stdout.splitlines())}, p.stdout


@suite.test
def hash_hits_more_than_round_robin():
    # 400 adapters, 150 per replica, 4 replicas: one replica cannot hold them, the cluster can.
    r, _ = sim("-R", "4", "-A", "400", "--budget", "150", "--zipf", "0.8")
    rr, ch, bd = r["rr"]["hit_rate"], r["chash"]["hit_rate"], r["bounded"]["hit_rate"]
    check(ch > rr + 0.10, f"consistent hash hit rate {ch:.3f} not clearly above round robin's "
          f"{rr:.3f}")
    check(bd > rr, f"bounded-load hit rate {bd:.3f} not above round robin's {rr:.3f}")
    check(ch > 0.99, f"consistent hash hit rate {ch:.3f}: every adapter fits its replica")
    check(r["chash"]["loads_per_min"] < r["rr"]["loads_per_min"],
          f"consistent hash loads more often than round robin: {r['chash']['loads_per_min']:.0f}"
          f" vs {r['rr']['loads_per_min']:.0f} a minute")


@suite.test
def bounded_load_caps_the_busiest_replica():
    # 8 replicas, Zipf s = 1 over 1000 adapters: the top adapter alone is 13% of the traffic.
    r, _ = sim("-R", "8", "-A", "1000", "--policy", "chash")
    ch = r["chash"]["busiest_over_mean"]
    check(ch > 1.25 + BALANCE_TOL,
          f"plain consistent hash busiest/mean {ch:.3f}: expected above 1.25 under a hot adapter")
    for factor in (125, 150):
        r, _ = sim("-R", "8", "-A", "1000", "--policy", "bounded", "--balance-factor", str(factor))
        bd = r["bounded"]["busiest_over_mean"]
        check(bd <= factor / 100 + BALANCE_TOL,
              f"bounded load (factor {factor}) busiest/mean {bd:.3f} over {factor / 100} + "
              f"{BALANCE_TOL}")
        eq(r["bounded"]["rejected"], 0.0, f"share of 429s with bounded load (factor {factor})")


@suite.test
def deterministic_with_a_seed():
    args = ("-R", "4", "-A", "300", "--budget", "60", "--base-share", "0.2", "--requests", "8000")
    _, a = sim(*args, "--seed", "7")
    _, b = sim(*args, "--seed", "7")
    eq(a, b, "output of two runs with --seed 7")
    _, c = sim(*args, "--seed", "8")
    check(c != a, "--seed 8 gave the same output as --seed 7")
    for line in a.splitlines():
        d = json.loads(line)
        for key in ("hit_rate", "rejected"):
            check(0 <= d[key] <= 1, f"{d['policy']}: {key} = {d[key]} out of [0, 1]")
        check(d["p50_ms"] <= d["p99_ms"], f"{d['policy']}: p50 {d['p50_ms']} > p99 {d['p99_ms']}")
        check(d["busiest_over_mean"] >= 1, f"{d['policy']}: busiest/mean below 1")


@suite.test
def bad_flags_are_refused_clearly():
    cases = [
        (["-R", "0"], "--replicas"),
        (["--adapters", "ten"], "--adapters"),
        (["--zipf", "-1"], "--zipf"),
        (["--util", "0"], "--util"),
        (["--util", "nan"], "--util"),
        (["--base-share", "1"], "--base-share"),
        (["--balance-factor", "99"], "--balance-factor"),
        (["--policy", "random"], "--policy"),
        (["--budget", "0"], "--budget"),
        (["--load-ms", "-5"], "--load-ms"),
        (["--table", "-R", "8"], "--table"),
        (["--table", "--policy", "rr"], "--table"),
        (["--long"], "--long"),
        (["--no-such-flag"], "--no-such-flag"),
    ]
    for args, name in cases:
        p = sim(*args, expect=2)
        check(name in p.stderr, f"{args}: the message does not name {name}: {p.stderr!r}")
        check("Traceback" not in p.stderr, f"{args}: a traceback: {p.stderr[-400:]}")
        eq(p.stdout, "", f"{args}: stdout")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
