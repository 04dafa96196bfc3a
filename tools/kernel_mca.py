#!/usr/bin/env python3
"""Static throughput of a kernel's inner loops: llvm-mca on the loops of one function, as the
compiler emitted them into an object file.

    python3 tools/kernel_mca.py build/obj/core/kernels/qmatmul.o core__gemv8_avx2_q4_1
    python3 tools/kernel_mca.py build/obj/core/kernels/qmatmul.o gemv_avx512 --min-fma 24

Lists every loop of the function (a backward jump and the instructions from its target to it)
that holds at least --min-fma vector FMAs, then runs llvm-mca on each for every --mcpu model and
prints the cycles per iteration and the pressure on each execution port. docs/PERF.md §2.0.2
uses it to show that the exact one-row kernel is bound by its vector ports, not by memory.
Needs objdump (binutils) and llvm-mca (Debian's llvm-14, which `make deps` installs with clang).
llvm-mca 14's models: icelake-server fits the Intel hosts; its znver3 issues one 256-bit FMA a
cycle where Zen 3 issues two, so it is no stand-in for the Zen 3 host (and it knows no znver4).
"""
import argparse
import re
import shutil
import subprocess
import sys

LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
JUMP = re.compile(r"^j\w+$")


def function_lines(obj, func):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], check=True,
                         capture_output=True, text=True).stdout
    lines, inside = [], False
    for ln in out.splitlines():
        if ln.endswith(f"<{func}>:"):
            inside = True
            continue
        if inside:
            if not ln.strip():
                break
            m = LINE.match(ln)
            if m:
                lines.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return lines


def loops(lines, min_fma):
    at = {a: i for i, (a, _, _) in enumerate(lines)}
    for i, (a, op, args) in enumerate(lines):
        if not JUMP.match(op):
            continue
        target = args.split()[0] if args else ""
        try:
            t = int(target, 16)
        except ValueError:
            continue
        if t >= a or t not in at:
            continue
        body = lines[at[t]:i]  # the jump itself left out: llvm-mca wants straight-line code
        fmas = sum(1 for _, o, _ in body if o.startswith("vfmadd") or o.startswith("vfnmadd"))
        if fmas >= min_fma and not any(JUMP.match(o) for _, o, _ in body):
            yield t, a, body, fmas


def mca(body, mcpu):
    text = "\n".join(f"{o} {re.sub(r'<[^>]*>', '', x)}".strip() for _, o, x in body) + "\n"
    r = subprocess.run(["llvm-mca", f"-mcpu={mcpu}", "-iterations=500"], input=text,
                       capture_output=True, text=True)
    if r.returncode:
        return None, r.stderr.strip().splitlines()[-1:]
    cycles = re.search(r"Total Cycles:\s+(\d+)", r.stdout)
    lines = r.stdout.splitlines()
    ports = []
    for k, ln in enumerate(lines):
        if ln.startswith("Resource pressure per iteration"):
            ports = [lines[k + 1], lines[k + 2]]
            break
    names = {}
    for ln in lines:
        m = re.match(r"^\[(\d+(?:\.\d+)?)\]\s+-\s+(\S+)", ln)
        if m:
            names[m.group(1)] = m.group(2)
    return int(cycles.group(1)) / 500 if cycles else None, (ports, names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("object")
    ap.add_argument("function")
    ap.add_argument("--min-fma", type=int, default=8, help="loops with at least this many FMAs")
    ap.add_argument("--mcpu", default="icelake-server",
                    help="llvm-mca CPU models, comma-separated")
    a = ap.parse_args()
    for tool in ("objdump", "llvm-mca"):
        if not shutil.which(tool):
            sys.exit(f"kernel_mca: {tool} not found (apt-get install binutils llvm)")
    lines = function_lines(a.object, a.function)
    if not lines:
        sys.exit(f"kernel_mca: no function {a.function} in {a.object}")
    found = False
    for t, end, body, fmas in loops(lines, a.min_fma):
        found = True
        ops = {}
        for _, o, _ in body:
            ops[o] = ops.get(o, 0) + 1
        mix = ", ".join(f"{n} {o}" for o, n in sorted(ops.items(), key=lambda kv: -kv[1])[:10])
        print(f"loop {t:#x}..{end:#x}: {len(body)} instructions, {fmas} FMAs ({mix})")
        for cpu in a.mcpu.split(","):
            cyc, info = mca(body, cpu)
            if cyc is None:
                print(f"  {cpu}: llvm-mca refused the loop: "
                      f"{' '.join(info)}")
                continue
            ports, names = info
            print(f"  {cpu}: {cyc:.1f} cycles per iteration")
            if ports:
                heads = ports[0].split()
                vals = ports[1].split()
                busy = [f"{names.get(h.strip('[]'), h)} {v}" for h, v in zip(heads, vals)
                        if v != "-"]
                print(f"    port pressure per iteration: {', '.join(busy)}")
    if not found:
        sys.exit(f"kernel_mca: no loop with {a.min_fma} FMAs or more in {a.function}")


if __name__ == "__main__":
    main()
