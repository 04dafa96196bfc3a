#!/usr/bin/env python3
"""`make bench-peer`, numerics: the last-position logits of llama.cpp and of adaptree (f32 and
int8 activations) on the golden prompts that have full transformers fp32 logits committed
(tests/golden/fixtures/logits_{capital,paragraph,chat}.f32, core_logits.json), each against
them: max |logit difference|, mean |difference| and whether the argmax agrees; then every
position of the five golden prompts at the reference's top-20 ids there (core_logits.json):
mean / p99 / max |difference| and argmax agreement.

Both sides evaluate the same token ids in one batch on the same GGUF: llama.cpp through
tools/peer/llamacpp_logits.c (linked to the static libraries tools/build_llamacpp.sh built),
adaptree through tools/peer/adaptree_logits.c (core_forward). The two programs are compiled
here into BUILD/peer/ when missing or older than their sources.

usage: tools/peer_numerics.py [--build build] [--llamacpp build/llama.cpp] [-m MODEL]
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIX = os.path.join(ROOT, "tests", "golden", "fixtures")


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"peer_numerics: {' '.join(cmd[:3])} ... failed:\n{r.stderr[-2000:]}")
    return r.stdout


def pkg_libs():
    try:
        return sh(["pkg-config", "--libs", "openblas", "libcjson", "libuv", "libpcre2-8",
                   "libmicrohttpd"]).split()
    except (SystemExit, FileNotFoundError):
        return ["-lopenblas", "-lcjson", "-luv", "-lpcre2-8", "-lmicrohttpd"]


def stale(binary, *sources):
    """True when binary is missing or older than one of its sources."""
    if not os.path.exists(binary):
        return True
    t = os.path.getmtime(binary)
    return any(os.path.getmtime(x) > t for x in sources if os.path.exists(x))


def build_tools(build, lc):
    out = os.path.join(build, "peer")
    os.makedirs(out, exist_ok=True)
    at, lcb = os.path.join(out, "adaptree_logits"), os.path.join(out, "llamacpp_logits")
    peer = os.path.join(ROOT, "tools", "peer")
    if stale(at, os.path.join(peer, "adaptree_logits.c"), os.path.join(build, "libadaptree.a")):
        sh(["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-I" + ROOT,
            os.path.join(ROOT, "tools", "peer", "adaptree_logits.c"),
            os.path.join(build, "libadaptree.a")] + pkg_libs() + ["-lm", "-lpthread", "-o", at])
    if stale(lcb, os.path.join(peer, "llamacpp_logits.c")):
        cm = os.path.join(lc, "cmake")
        libs = [os.path.join(cm, "src", "libllama.a")] + [
            os.path.join(cm, "ggml", "src", f"libggml{s}.a") for s in ("", "-cpu", "-base")]
        if not all(os.path.exists(x) for x in libs):
            raise SystemExit(f"peer_numerics: llama.cpp's libraries are missing under {cm}: run "
                             "tools/build_llamacpp.sh (make bench-peer does)")
        obj = lcb + ".o"
        sh(["g++", "-x", "c", "-O2", "-c", os.path.join(ROOT, "tools", "peer", "llamacpp_logits.c"),
            "-I" + os.path.join(lc, "src", "include"),
            "-I" + os.path.join(lc, "src", "ggml", "include"), "-o", obj])
        sh(["g++", obj] + libs + ["-fopenmp", "-lpthread", "-lm", "-o", lcb])
    return at, lcb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default="build")
    p.add_argument("--llamacpp", default="build/llama.cpp")
    p.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    a = p.parse_args(argv)
    build = os.path.join(ROOT, a.build) if not os.path.isabs(a.build) else a.build
    lc = os.path.join(ROOT, a.llamacpp) if not os.path.isabs(a.llamacpp) else a.llamacpp
    at, lcb = build_tools(build, lc)
    with open(os.path.join(FIX, "core_logits.json")) as f:
        fx = json.load(f)
    sides = [("llama.cpp", [lcb]), ("adaptree f32", [at]), ("adaptree --int8", [at, "--int8"])]
    # Every position's logits, once per prompt and side; the last row is the last position's
    # (the same bits as asking for it alone, on both sides).
    logits = {}
    for pr in fx["prompts"]:
        ids = [str(i) for i in pr["ids"]]
        for name, cmd in sides:
            out = os.path.join(build, "peer", f"{pr['name']}-{name.split()[-1].strip('-')}-all.f32")
            sh(cmd[:1] + ["--all"] + cmd[1:] + [a.model, out] + ids)
            logits[pr["name"], name] = np.fromfile(out, dtype="<f4").reshape(len(ids), -1)

    print(f"numerics against transformers fp32 (tests/golden/fixtures), last position, {a.model}:")
    print(f"{'prompt':10} {'tokens':>6}  " + "  ".join(f"{s:>26}" for s, _ in sides))
    print(f"{'':10} {'':>6}  " + "  ".join(f"{'max |d| / mean |d| / top1':>26}" for _ in sides))
    worst = {s: 0.0 for s, _ in sides}
    for pr in fx["prompts"]:
        if not pr.get("last_logits_file"):
            continue
        ref = np.fromfile(os.path.join(FIX, pr["last_logits_file"]), dtype="<f4")
        cells = []
        for name, _ in sides:
            got = logits[pr["name"], name][-1]
            d = np.abs(got.astype(np.float64) - ref)
            worst[name] = max(worst[name], float(d.max()))
            top1 = "same" if got.argmax() == ref.argmax() else "DIFF"
            cells.append(f"{d.max():8.4f} / {d.mean():7.4f} / {top1}")
        print(f"{pr['name']:10} {pr['n_tokens']:6d}  " + "  ".join(f"{c:>26}" for c in cells))
    print("worst max |d|: " + ", ".join(f"{s} {v:.4f}" for s, v in worst.items()))

    # Every position of every prompt, at the reference's top-20 ids there (core_logits.json):
    # many more samples than three last positions, so that the sides' errors can be told apart.
    diffs = {s: [] for s, _ in sides}
    agree = {s: 0 for s, _ in sides}
    npos = 0
    for pr in fx["prompts"]:
        for name, _ in sides:
            got = logits[pr["name"], name]
            for p, top in enumerate(pr["top20"]):
                tid = np.array([t[0] for t in top])
                tv = np.array([t[1] for t in top], dtype=np.float64)
                diffs[name].append(np.abs(got[p, tid].astype(np.float64) - tv))
                agree[name] += int(got[p].argmax() == tid[0])
        npos += len(pr["top20"])
    print(f"\nevery position ({npos} positions of {len(fx['prompts'])} prompts), at the "
          "reference's top-20 ids: |logit difference| mean / p99 / max, argmax agreement")
    for name, _ in sides:
        d = np.concatenate(diffs[name])
        print(f"  {name:16} {d.mean():.4f} / {np.percentile(d, 99):.4f} / {d.max():.4f}   "
              f"argmax {agree[name]}/{npos}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
