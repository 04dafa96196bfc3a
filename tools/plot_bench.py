#!/usr/bin/env python3
"""Plots of saved `make bench` and `make bench-server` outputs: the figures of docs/PERF.md.

usage: tools/plot_bench.py FILE... -o DIR        (`make plots` runs it on docs/perf/data/*.txt)

Each FILE is the output of one run, named <date>-<cpu>-bench.txt or <date>-<cpu>-bench-server.txt
(anything may follow "bench-server", e.g. -int8); what it holds is told by its content, not its
name. Lines starting with '#' are comments; '# cpu: NAME' names the CPU in the titles (otherwise
the <cpu> part of the name does). Understood formats:

  make bench          bench_core's output (tests/bench/bench_core.c), and the shorter form
                      README.md used to show (no [rows/step], LoRA lines abridged to
                      "1 distinct: +1.2%  8 distinct: ..." or one "LoRA, ... 32 distinct
                      adapters: rank-8 q,v +6.0%, ..." line)
  make bench-server   tools/bench_server.py's output (one mode: f32, or --int8 with
                      BENCH_ARGS=--int8), and the two-column f32 / --int8 summary README.md used
                      to show

Written into DIR, per machine (date + cpu): bench-tokps-<date>-<cpu>.png (tok/s per scenario,
f32 and int8 activations), server-ratios-<date>-<cpu>.png (bench-server scenarios over the
no-adapter run, with the targets) and lora-overhead-<date>-<cpu>.png (LoRA step overhead against
the number of distinct adapters); across machines server-ratios-all.png and lora-overhead-all.png
(ratios carry across hosts, tok/s do not). Targets are drawn only as a file states them (the
PASS/MISS lines of bench-server, "target <= N%" of bench); a file that states none (the README
summaries) gets the thresholds another input file states, and the figure says which.

A file that cannot be parsed stops the tool with the file, the line and the reason (exit 1);
nothing is ever plotted from a guess.
"""

import argparse
import os
import re
import sys


class ParseError(Exception):
    pass


def warn(msg):
    print(f"plot_bench: {msg}", file=sys.stderr)


NUM = r"\d+(?:\.\d+)?"
SNUM = r"[+-]?\d+(?:\.\d+)?"


# --- input files -------------------------------------------------------------------------------

class Source:
    """One input file: its lines (comments removed, numbered from 1), its machine and kind."""

    NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<cpu>.+?)-bench(?:-server)?"
                      r"(?:-[^/]*)?\.txt$")

    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ParseError(f"{path}: cannot read: {e}")
        self.meta = {}
        self.lines = []
        for i, line in enumerate(raw, 1):
            if line.startswith("#"):
                m = re.match(r"^#\s*(cpu|date):\s*(.+?)\s*$", line)
                if m:
                    self.meta[m.group(1)] = m.group(2)
                continue
            self.lines.append((i, line.rstrip()))
        m = self.NAME.match(self.name)
        date = self.meta.get("date") or (m and m.group("date"))
        slug = m.group("cpu") if m else None
        if not date or not (slug or self.meta.get("cpu")):
            raise ParseError(f"{path}: cannot tell the machine: name the file "
                             "<YYYY-MM-DD>-<cpu>-bench.txt or <YYYY-MM-DD>-<cpu>-bench-server.txt, "
                             "or put '# cpu: NAME' and '# date: YYYY-MM-DD' lines at its top")
        slug = slug or re.sub(r"[^a-z0-9]+", "-", self.meta["cpu"].lower()).strip("-")
        self.date = date
        self.slug = slug
        self.cpu = self.meta.get("cpu") or pretty_cpu(slug)
        self.key = (date, slug)

    def err(self, lineno, msg):
        return ParseError(f"{self.path}:{lineno}: {msg}")

    def kind(self):
        text = [line for _, line in self.lines]
        if any(line.startswith("machine: sgemm peak") for line in text):
            return "bench"
        if any(re.match(r"^adaptree serve\b.*concurrent", line) for line in text) or \
                any(re.match(r"^scenario\s+tok/s\s+ratio\b", line) for line in text):
            return "server"
        raise ParseError(f"{self.path}: neither `make bench` output (no 'machine: sgemm peak' "
                         "line) nor `make bench-server` output (no 'adaptree serve ...' header, "
                         "no 'scenario  tok/s  ratio' table)")


def pretty_cpu(slug):
    """'amd-zen5' -> 'AMD Zen 5', 'intel-xeon' -> 'Intel Xeon'."""
    words = []
    for w in slug.split("-"):
        if w.lower() in ("amd", "arm", "ibm"):
            words.append(w.upper())
            continue
        m = re.match(r"^([a-z]+)(\d+)$", w, re.I)
        words.append(f"{m.group(1).capitalize()} {m.group(2)}" if m else w.capitalize())
    return " ".join(words)


# --- make bench --------------------------------------------------------------------------------

BENCH_ROW = re.compile(
    r"^(?P<what>prefill, 1 x (?P<plen>\d+) tokens|decode, 1 stream|batched decode, batch "
    r"(?P<batch>\d+)|decode (?P<lrows>\d+) rows at pos (?P<pos>\d+), (?P<kv>f32|f16) KV)"
    r"(?P<int8> \(int8\))?\s+(?P<tps>" + NUM + r") tok/s\b(?P<rest>.*)$")
LORA_KIND = re.compile(r"^\s+(?P<kind>rank-\d+ \S+)\s+load (?P<load>" + NUM + r") ms, "
                       r"(?P<mb>" + NUM + r") MB resident per adapter")
LORA_RAW = re.compile(r"^\s*(?P<n>\d+) distinct: step (?P<t>" + NUM + r") ms \(base (?P<b>" + NUM +
                      r") ms\), (?P<pct>" + SNUM + r")% over base .*?target <= (?P<target>" + NUM +
                      r")% at (?P<at>\d+)")
LORA_SHORT = re.compile(r"(?P<n>\d+) distinct: (?P<pct>" + SNUM + r")%")
LORA_ONE_LINE = re.compile(r"^LoRA, (?P<rows>\d+) rows per decode step, (?P<n>\d+) distinct "
                           r"adapters: (?P<rest>.+)$")
BENCH_QUIET = re.compile(r"^(openblas core:|model:|a step reads|int8 activations|LoRA \(|\(|"
                         r"kernels: |  (q\d_[01k]|f16|bf16) |"
                         r"cc |build/bench_core |make(\[\d+\])?:)")


def parse_bench(src):
    """{'peak', 'bw', 'blas', 'rows': {(mode, scenario): {...}}, 'lora': {kind: {n: pct}},
    'lora_targets': {kind: (pct, at)}}"""
    out = {"rows": {}, "lora": {}, "lora_targets": {}, "peak": None, "bw": None, "blas": None}
    kind = None
    for n, line in src.lines:
        if not line.strip():
            continue
        m = re.match(r"^machine: sgemm peak (" + NUM + r") GFLOP/s, read bandwidth (" + NUM +
                     r") GB/s", line)
        if m:
            out["peak"], out["bw"] = float(m.group(1)), float(m.group(2))
            continue
        m = re.match(r"^openblas core: (\S+?),", line)
        if m:
            out["blas"] = m.group(1)
            continue
        m = BENCH_ROW.match(line)
        if m:
            mode = "int8" if m.group("int8") else "f32"
            if m.group("plen"):
                scen = f"prefill\n1 x {m.group('plen')}"
            elif m.group("batch"):
                scen = f"batch {m.group('batch')}"
            elif m.group("pos"):
                scen = f"{m.group('lrows')} rows,\npos {m.group('pos')},\n{m.group('kv')} KV"
            else:
                scen = "decode\n1 stream"
            if (mode, scen) in out["rows"]:
                raise src.err(n, f"a second '{m.group('what')}' line ({mode})")
            row = {"tps": float(m.group("tps"))}
            rest = m.group("rest")
            g = re.search(r"(" + NUM + r") GFLOP/s \(\s*(\d+)% of peak\)", rest)
            if g:
                row["gflops"], row["pct_peak"] = float(g.group(1)), int(g.group(2))
            g = re.search(r"(" + NUM + r") ms/step", rest)
            if g:
                row["ms_step"] = float(g.group(1))
            out["rows"][(mode, scen)] = row
            continue
        m = LORA_KIND.match(line)
        if m:
            kind = m.group("kind")
            out["lora"].setdefault(kind, {})
            continue
        m = LORA_RAW.match(line)
        if m:
            if kind is None:
                raise src.err(n, "a LoRA 'distinct' line before any 'rank-N ... load' line")
            out["lora"][kind][int(m.group("n"))] = float(m.group("pct"))
            out["lora_targets"][kind] = (float(m.group("target")), int(m.group("at")))
            continue
        if re.match(r"^\s*\d+ distinct: [+-]", line):
            if kind is None:
                raise src.err(n, "a LoRA 'distinct' line before any 'rank-N ... load' line")
            for g in LORA_SHORT.finditer(line):
                out["lora"][kind][int(g.group("n"))] = float(g.group("pct"))
            t = re.search(r"target <= (" + NUM + r")%", line)
            if t:  # the README's short form states it for the 32-distinct case
                out["lora_targets"][kind] = (float(t.group(1)), max(out["lora"][kind]))
            continue
        m = LORA_ONE_LINE.match(line)
        if m:
            found = re.findall(r"(rank-\d+ \S+) (" + SNUM + r")%", m.group("rest"))
            if not found:
                raise src.err(n, "a 'LoRA, ... distinct adapters:' line with no 'rank-N ... +X%'")
            for k, pct in found:
                out["lora"].setdefault(k, {})[int(m.group("n"))] = float(pct)
            continue
        if BENCH_QUIET.match(line):
            continue
        if "tok/s" in line or "distinct" in line:
            raise src.err(n, f"a measurement line this tool does not know: {line.strip()!r}")
        warn(f"{src.path}:{n}: line ignored: {line.strip()[:100]!r}")
    if out["peak"] is None:
        raise ParseError(f"{src.path}: no 'machine: sgemm peak ... GFLOP/s, read bandwidth ... "
                         "GB/s' line")
    if not out["rows"]:
        raise ParseError(f"{src.path}: `make bench` output with no scenario line "
                         "('prefill, ...', 'decode, 1 stream', 'batched decode, batch N ...')")
    out["lora"] = {k: v for k, v in out["lora"].items() if v}
    return out


# --- make bench-server -------------------------------------------------------------------------

SERVER_RAW_ROW = re.compile(
    r"^(?P<label>\S.*?)\s+(?P<tps>" + NUM + r")\s+(?P<ratio>" + NUM + r")\s+(?P<ttft>\S+)\s+\S+"
    r"\s+\S+\s+\S+\s+(?P<tokens>\d+)\s+(?P<errs>\d+)\s+\S+\s+\S+$")
SERVER_SUM_ROW = re.compile(
    r"^(?P<label>\S.*?)" + (r"\s+(" + NUM + r")") * 6 + r"$")
TARGET = re.compile(r"^(?P<verdict>PASS|MISS)\s+(?P<what>.+?) (?P<op>>=|<=) (?P<thr>" + NUM +
                    r")(?P<unit>x|%)[^:]*: (?P<val>" + NUM + r")(?:x|%)")
VERDICT = re.compile(r"(?P<verdict>PASS|MISS) (?P<what>[a-z][a-z0-9 ,.-]*?) (?P<val>" + NUM +
                     r")(?:x|%)")
SERVER_QUIET = re.compile(r"^(bench( registry)?: |\$ |\(|make(\[\d+\])?:|BUILD=|\s+/ \(2 x)")


def norm_target(what):
    """The target names of bench_server.py's PASS/MISS lines, from the summaries' short ones."""
    w = what.strip()
    if w.startswith("rank-8"):
        return "rank-8 q,v"
    if w.startswith("rank-16"):
        return "rank-16 all-linear"
    if "speed-up" in w:
        return "concurrency speed-up"
    if w.endswith("step") or w.startswith("decode step"):
        return "no-adapter decode step"
    return w


def new_run():
    return {"rows": {}, "order": [], "speedup": None, "step_pct": None, "e2e_pct": None,
            "ceiling": None, "sgemm": None, "targets": {}, "verdicts": {}, "load": None,
            "rounds": {}}


def parse_server(src):
    """{mode: run}; run = new_run() filled. Raw output has one mode, the summaries two."""
    if any(re.match(r"^\s+--- .+? ---\s+--- .+? ---", line) for _, line in src.lines):
        return parse_server_summary(src)
    run, mode = new_run(), None
    in_table = False
    for n, line in src.lines:
        if not line.strip():
            continue
        m = re.match(r"^adaptree serve(?P<flags>[^,]*), \d+ concurrent", line)
        if m:
            flags = m.group("flags").split()
            mode = ("int8" if "--int8" in flags else "f32") + \
                (" kv-f16" if "--kv-f16" in flags else "")
            continue
        m = re.match(r"^machine: \d+ cores, load average (" + NUM + r") before, (" + NUM +
                     r") after", line)
        if m:
            run["load"] = (float(m.group(1)), float(m.group(2)))
            continue
        if re.match(r"^scenario\s+tok/s\s+ratio\b", line):
            in_table = True
            continue
        if in_table:
            m = SERVER_RAW_ROW.match(line)
            if m:
                label = m.group("label")
                run["rows"][label] = {"tps": float(m.group("tps")),
                                      "ratio": float(m.group("ratio")),
                                      "errors": int(m.group("errs"))}
                run["order"].append(label)
                continue
            in_table = False
        m = re.match(r"^\s+(?P<label>.+): per-round ratios (?P<r>.+)$", line)
        if m:
            run["rounds"][m.group("label")] = [float(x) for x in m.group("r").split(",")]
            continue
        m = re.match(r"^concurrency speed-up .*?: (" + NUM + r")x", line)
        if m:
            run["speedup"] = float(m.group(1))
            continue
        m = re.match(r"^compute ceiling: sgemm (" + NUM + r") GFLOP/s", line)
        if m:
            run["sgemm"] = float(m.group(1))
            continue
        m = re.search(r"= (\d+) tok/s; no-adapter end to end reaches (" + NUM + r")%", line)
        if m:
            run["ceiling"], run["e2e_pct"] = float(m.group(1)), float(m.group(2))
            continue
        m = re.match(r"^no-adapter decode step .*= (" + NUM + r") tok/s = (" + NUM +
                     r")% of the ceiling", line)
        if m:
            run["step_pct"] = float(m.group(2))
            continue
        m = TARGET.match(line)
        if m:
            what = m.group("what")
            run["targets"][what] = (m.group("op"), float(m.group("thr")), m.group("unit"))
            run["verdicts"][what] = (m.group("verdict"), float(m.group("val")))
            continue
        if re.match(r"^(PASS|MISS)\b", line):
            raise src.err(n, f"a PASS/MISS line without a threshold: {line.strip()!r}")
        if SERVER_QUIET.match(line):
            continue
        if "tok/s" in line:
            raise src.err(n, f"a measurement line this tool does not know: {line.strip()!r}")
        warn(f"{src.path}:{n}: line ignored: {line.strip()[:100]!r}")
    if mode is None:
        raise ParseError(f"{src.path}: no 'adaptree serve[ --int8], N concurrent greedy "
                         "streams, ...' header: cannot tell f32 from --int8")
    check_server_run(src, mode, run)
    return {mode: run}


def parse_server_summary(src):
    """The two-column f32 / --int8 tables README.md showed (see the module doc)."""
    modes, runs = None, None
    section = None  # the multi-line items: 'ceiling', 'step', 'verdicts'
    vmode = None
    for n, line in src.lines:
        if not line.strip():
            section = None if section != "verdicts" else section
            continue
        m = re.match(r"^\s+--- (.+?) ---\s+--- (.+?) ---", line)
        if m:
            modes = ["int8" if "int8" in x else "f32" for x in m.groups()]
            if len(set(modes)) != 2:
                raise src.err(n, f"two columns of the same mode: {line.strip()!r}")
            runs = {md: new_run() for md in modes}
            continue
        if runs is None:
            raise src.err(n, "a line before the '--- f32 (default) ---  --- --int8 ---' header")
        if re.match(r"^scenario\s+tok/s\s+ratio\b", line):
            continue
        m = SERVER_SUM_ROW.match(line)
        if m and section is None:
            v = [float(x) for x in m.groups()[1:]]
            for i, md in enumerate(modes):
                runs[md]["rows"][m.group("label")] = {"tps": v[3 * i], "ratio": v[3 * i + 1],
                                                      "errors": 0}
                runs[md]["order"].append(m.group("label"))
            continue
        m = re.match(r"^concurrency speed-up\s+(" + NUM + r")x\s+(" + NUM + r")x", line)
        if m:
            for i, md in enumerate(modes):
                runs[md]["speedup"] = float(m.group(i + 1))
            continue
        if line.startswith("compute ceiling"):
            section, found = "ceiling", re.findall(r"(\d+) tok/s", line)
        elif line.startswith("no-adapter decode step"):
            section, found = "step", re.findall(r"tok/s = (" + NUM + r")%", line)
        elif line.startswith("no-adapter end to end"):
            section, found = "e2e", re.findall(r"(" + NUM + r")%", line)
        elif line.startswith(" ") and section in ("ceiling", "step"):
            found = re.findall(r"(\d+) tok/s" if section == "ceiling"
                               else r"tok/s = (" + NUM + r")%", line)
        elif re.match(r"^(f32|--int8):", line) or (line.startswith(" ") and section == "verdicts"):
            section = "verdicts"
            mm = re.match(r"^(f32|--int8):", line)
            if mm:
                vmode = "int8" if "int8" in mm.group(1) else "f32"
            for v in VERDICT.finditer(line):
                runs[vmode]["verdicts"][norm_target(v.group("what"))] = \
                    (v.group("verdict"), float(v.group("val")))
            continue
        elif line.startswith("("):
            section = None
            continue
        else:
            if "tok/s" in line or re.search(NUM + r"(x|%)", line):
                raise src.err(n, f"a measurement line this tool does not know: {line.strip()!r}")
            warn(f"{src.path}:{n}: line ignored: {line.strip()[:100]!r}")
            continue
        field = {"ceiling": "ceiling", "step": "step_pct", "e2e": "e2e_pct"}[section]
        for x in found:
            md = next((md for md in modes if runs[md][field] is None), None)
            if md is None:
                raise src.err(n, f"more than two values for '{section}': {line.strip()!r}")
            runs[md][field] = float(x)
    if runs is None:
        raise ParseError(f"{src.path}: no '--- f32 (default) ---  --- --int8 ---' header")
    for md, run in runs.items():
        check_server_run(src, md, run)
    return runs


def check_server_run(src, mode, run):
    if not run["rows"]:
        raise ParseError(f"{src.path}: `make bench-server` output ({mode}) with no scenario row "
                         "under the 'scenario  tok/s  ratio ...' header")
    if "no adapter" not in run["rows"]:
        raise ParseError(f"{src.path}: no 'no adapter' row ({mode}): the ratios have no base")


# --- figures -----------------------------------------------------------------------------------

MODE_COLOR = {"f32": "#4477aa", "int8": "#ee6677", "f32 kv-f16": "#66ccee",
              "int8 kv-f16": "#aa3377"}
KIND_COLOR = {"rank-8 q,v": "#228833", "rank-16 all-linear": "#cc6677"}
MACHINE_MARK = ["o", "s", "^", "D", "v", "P", "X"]


def mode_label(mode):
    return {"f32": "f32 activations (default)", "int8": "int8 activations (--int8)"}.get(mode, mode)


def short_cpu(cpu):
    """'Intel Xeon (family 6, model 167), 2 vCPU, ...' -> 'Intel Xeon'."""
    return re.sub(r"\s*\(.*?\)", "", cpu).split(",")[0].strip()


def title_of(machine):
    return f"{machine['cpu']} — {machine['date']}"


def save(fig, out_dir, name, written):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    written.append(path)


def plot_tokps(plt, machine, bench, out_dir, written):
    scen = []  # in the order of the output, f32 and int8 merged
    for (_, s) in bench["rows"]:
        if s not in scen:
            scen.append(s)
    order = ["prefill", "decode\n1 stream", "batch", "rows,"]
    scen.sort(key=lambda s: (next(i for i, p in enumerate(order) if p in s),
                             int(re.search(r"(\d+)", s).group(1)) if "batch" in s else 0))
    modes = [m for m in ("f32", "int8") if any(k[0] == m for k in bench["rows"])]
    fig, ax = plt.subplots(figsize=(11, 5.2))
    w = 0.8 / len(modes)
    top = max(r["tps"] for r in bench["rows"].values())
    for i, md in enumerate(modes):
        for j, s in enumerate(scen):
            x = j - 0.4 + w * (i + 0.5)
            r = bench["rows"].get((md, s))
            if r is None:
                ax.text(x, top * 0.01, "not\nrun", ha="center", va="bottom", fontsize=7,
                        color="0.4")
                continue
            ax.bar(x, r["tps"], w, color=MODE_COLOR[md])
            ax.text(x, r["tps"] + top * 0.01, f"{r['tps']:.0f}", ha="center", va="bottom",
                    fontsize=7.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=MODE_COLOR[m]) for m in modes]
    ax.legend(handles, [mode_label(m) for m in modes], loc="upper right")
    ax.set_xticks(range(len(scen)), scen, fontsize=8.5)
    ax.set_ylabel("tokens/s (this machine only)")
    ax.set_ylim(0, top * 1.12)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"make bench: tokens/s per scenario\n{title_of(machine)}", fontsize=11)
    note = (f"sgemm peak {bench['peak']:.1f} GFLOP/s, read bandwidth {bench['bw']:.1f} GB/s "
            f"(this machine's own probes)"
            + (f"; OpenBLAS core {bench['blas']}" if bench["blas"] else "")
            + ". Prefill: one 128-token prompt; batch N: N sequences decoding together; "
            "the last groups: 32 rows decoding at position 1024 over random KV caches.")
    fig.text(0.01, -0.02, note, fontsize=8, wrap=True, va="top")
    save(fig, out_dir, f"bench-tokps-{machine['date']}-{machine['slug']}.png", written)
    plt.close(fig)


def target_of(label, targets):
    """(y, text) of the stated target that applies to a scenario row, or None."""
    for what, (op, thr, unit) in targets.items():
        if unit == "x" and what.startswith("rank-") and \
                re.fullmatch(r"\d+ different " + re.escape(what), label):
            return thr, f"target {op} {thr:g}x"
        if what == "concurrency speed-up" and unit == "x" and op == ">=" and \
                label.endswith("one at a time"):
            return 1.0 / thr, f"target: speed-up {op} {thr:g}x,\nso ratio <= {1 / thr:.3f}"
    return None


def short_label(label):
    label = label.replace("all on one adapter (rank-16 all-linear)",
                          "all on one adapter\n(rank-16 all-linear)")
    label = re.sub(r"^(\d+) different ", r"\1 different\n", label)
    label = label.replace("requests one at a time", "requests\none at a time")
    return label


def ratio_axes(ax, labels, series, targets):
    """series: [(legend, color, hatch, {label: ratio})]; targets: the stated ones."""
    n = len(series)
    w = 0.8 / n
    for i, (leg, color, hatch, vals) in enumerate(series):
        first = next(lb for lb in labels if lb in vals)
        for j, lab in enumerate(labels):
            if lab not in vals:
                continue
            x = j - 0.4 + w * (i + 0.5)
            ax.bar(x, vals[lab], w, color=color, hatch=hatch, edgecolor="white",
                   label=leg if lab == first else None)
            ax.text(x, vals[lab] + 0.01, f"{vals[lab]:.2f}", ha="center", va="bottom",
                    fontsize=6.5 if n > 3 else 7.5, rotation=90 if n > 3 else 0)
    ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
    ticks, drawn = [], False
    for j, lab in enumerate(labels):
        t = target_of(lab, targets)
        ticks.append(short_label(lab) + (f"\n({t[1]})" if t else ""))
        if t:
            ax.hlines(t[0], j - 0.46, j + 0.46, colors="black", linestyles="--", lw=1.5,
                      label=None if drawn else "target (as stated; see the tick labels)")
            drawn = True
    ax.set_xticks(range(len(labels)), ticks, fontsize=8.5)
    ax.set_ylabel("tok/s over the no-adapter run (ratio)")
    ax.set_ylim(0, 1.22)
    ax.grid(axis="y", alpha=0.3)


def stated_or_borrowed(run, borrowed):
    """The run's own targets, else those another file states; and a note saying which."""
    if run["targets"]:
        return run["targets"], "targets: as this run's PASS/MISS lines state them"
    if borrowed["targets"]:
        return borrowed["targets"], ("targets: this file states none; drawn as "
                                     f"{borrowed['source']} states them")
    return {}, "targets: no input file states them (none drawn)"


def plot_server(plt, machine, runs, borrowed, out_dir, written):
    modes = sorted(runs, key=lambda m: list(MODE_COLOR).index(m) if m in MODE_COLOR else 9)
    labels = []
    for md in modes:
        for lab in runs[md]["order"]:
            if lab not in labels:
                labels.append(lab)
    fig, ax = plt.subplots(figsize=(11, 5.4))
    series = [(mode_label(md), MODE_COLOR.get(md, "0.5"), None,
               {lab: r["ratio"] for lab, r in runs[md]["rows"].items()}) for md in modes]
    targets, tnote = stated_or_borrowed(runs[modes[0]], borrowed)
    ratio_axes(ax, labels, series, targets)
    ax.legend(loc="upper right", fontsize=8.5)
    lines = []
    for md in modes:
        r = runs[md]
        parts = [f"{md}: no adapter {r['rows']['no adapter']['tps']:.0f} tok/s"]
        if r["speedup"] is not None:
            parts.append(f"speed-up {r['speedup']:.2f}x")
        if r["step_pct"] is not None:
            parts.append(f"decode step {r['step_pct']:.1f}% of the compute ceiling"
                         + (f" ({r['ceiling']:.0f} tok/s)" if r["ceiling"] else ""))
        if r["load"]:
            parts.append(f"load average {r['load'][0]:.2f} before the run")
        lines.append(", ".join(parts))
    step_t = targets.get("no-adapter decode step")
    if step_t:
        lines.append(f"decode step target {step_t[0]} {step_t[1]:g}% of the ceiling")
    lines.append(tnote)
    fig.text(0.01, -0.02, "\n".join(lines), fontsize=8, va="top")
    ax.set_title("make bench-server: 32 streams, tok/s over the no-adapter run\n"
                 + title_of(machine), fontsize=11)
    save(fig, out_dir, f"server-ratios-{machine['date']}-{machine['slug']}.png", written)
    plt.close(fig)


def plot_server_all(plt, machines, borrowed, out_dir, written):
    labels, series = [], []
    hatches = [None, "//", "..", "xx", "\\\\"]
    for mi, (mach, runs) in enumerate(machines):
        for md in sorted(runs, key=lambda m: list(MODE_COLOR).index(m) if m in MODE_COLOR else 9):
            for lab in runs[md]["order"]:
                if lab not in labels:
                    labels.append(lab)
            series.append((f"{short_cpu(mach['cpu'])} ({mach['date']}), {md}",
                           MODE_COLOR.get(md, "0.5"), hatches[mi % len(hatches)],
                           {lab: r["ratio"] for lab, r in runs[md]["rows"].items()}))
    fig, ax = plt.subplots(figsize=(12, 5.8))
    ratio_axes(ax, labels, series, borrowed["targets"])
    ax.legend(loc="upper right", fontsize=7.5)
    cpus = ", ".join(f"{short_cpu(m['cpu'])} ({m['date']})" for m, _ in machines)
    ax.set_title("make bench-server ratios (no adapter = 1.0) across machines\n" + cpus,
                 fontsize=10.5)
    fig.text(0.01, -0.02, "Ratios compare across hosts; tok/s do not. Targets as "
             f"{borrowed['source']} states them." if borrowed["targets"] else
             "Ratios compare across hosts; tok/s do not.", fontsize=8, va="top")
    save(fig, out_dir, "server-ratios-all.png", written)
    plt.close(fig)


def lora_axes(ax, series, targets, values=True):
    """series: [(kind, marker, linestyle, legend suffix, {n: pct})]"""
    xs = set()
    for kind, marker, ls, suffix, pts in series:
        n = sorted(pts)
        xs.update(n)
        ax.plot(n, [pts[k] for k in n], marker=marker, ls=ls, color=KIND_COLOR.get(kind, "0.4"),
                label=f"{kind}{suffix}")
        for k in n if values else []:
            ax.annotate(f"{pts[k]:+.1f}%", (k, pts[k]), textcoords="offset points",
                        xytext=(6, 4), fontsize=7.5)
    for kind, (pct, at) in targets.items():
        ax.axhline(pct, color=KIND_COLOR.get(kind, "0.4"), ls="--", lw=1)
        ax.text(2, pct + 0.6, f"{kind} target ≤ {pct:g}% at {at} distinct", fontsize=7.5,
                color=KIND_COLOR.get(kind, "0.4"))
    ax.axhline(0, color="0.3", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ticks = sorted(xs | {1, 8, 32})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlim(0.8, max(ticks) * 1.5)
    ax.set_xlabel("distinct adapters among the step's 32 rows")
    ax.set_ylabel("step time over the base-only step (%)")
    ax.grid(alpha=0.3)


def plot_lora(plt, machine, bench, borrowed, out_dir, written):
    fig, ax = plt.subplots(figsize=(8, 5))
    series = [(k, "o", "-", "", pts) for k, pts in bench["lora"].items()]
    if bench["lora_targets"]:
        targets, note = bench["lora_targets"], "targets: as this file states them"
    elif borrowed["lora_targets"]:
        targets = borrowed["lora_targets"]
        note = f"targets: this file states none; drawn as {borrowed['lora_source']} states them"
    else:
        targets, note = {}, "targets: no input file states them (none drawn)"
    lora_axes(ax, series, targets)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8.5)
    ax.set_title(f"make bench: LoRA overhead, 32-row decode step (f16 adapters)\n"
                 f"{title_of(machine)}", fontsize=10.5)
    only = [k for k, pts in bench["lora"].items() if len(pts) == 1]
    if only:
        note += "; this run reports only the 32-distinct case"
    fig.text(0.01, -0.02, note, fontsize=8, va="top")
    save(fig, out_dir, f"lora-overhead-{machine['date']}-{machine['slug']}.png", written)
    plt.close(fig)


def plot_lora_all(plt, machines, borrowed, out_dir, written):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = ["-", "--", ":", "-."]
    series = []
    for i, (mach, bench) in enumerate(machines):
        for k, pts in bench["lora"].items():
            series.append((k, MACHINE_MARK[i % len(MACHINE_MARK)], styles[i % len(styles)],
                           f", {short_cpu(mach['cpu'])} ({mach['date']})", pts))
    lora_axes(ax, series, borrowed["lora_targets"], values=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    cpus = ", ".join(f"{short_cpu(m['cpu'])} ({m['date']})" for m, _ in machines)
    ax.set_title("make bench: LoRA overhead across machines\n" + cpus, fontsize=10.5)
    if borrowed["lora_targets"]:
        fig.text(0.01, -0.02, f"targets as {borrowed['lora_source']} states them", fontsize=8,
                 va="top")
    save(fig, out_dir, "lora-overhead-all.png", written)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------

def collect(paths):
    machines = {}  # key -> {'cpu', 'date', 'slug', 'bench', 'server': {mode: run}, files}
    for p in paths:
        src = Source(p)
        kind = src.kind()
        m = machines.setdefault(src.key, {"cpu": src.cpu, "date": src.date, "slug": src.slug,
                                          "bench": None, "server": {}, "files": {}})
        if src.meta.get("cpu") and m["cpu"] != src.cpu:
            if m["cpu"] == pretty_cpu(src.slug):
                m["cpu"] = src.cpu
            else:
                raise ParseError(f"{p}: '# cpu: {src.cpu}' but another file of {src.date} "
                                 f"{src.slug} says '{m['cpu']}'")
        if kind == "bench":
            if m["bench"] is not None:
                raise ParseError(f"{p}: a second `make bench` output for {src.date} {src.slug} "
                                 f"(the first: {m['files']['bench']})")
            m["bench"] = parse_bench(src)
            m["files"]["bench"] = src.name
        else:
            for mode, run in parse_server(src).items():
                if mode in m["server"]:
                    raise ParseError(f"{p}: a second {mode} `make bench-server` output for "
                                     f"{src.date} {src.slug} (the first: "
                                     f"{m['files']['server ' + mode]})")
                m["server"][mode] = run
                m["files"]["server " + mode] = src.name
    return machines


def borrowed_targets(machines):
    """The thresholds the input files state, newest first wins: for files that state none."""
    b = {"targets": {}, "source": None, "lora_targets": {}, "lora_source": None}
    for key in sorted(machines, reverse=True):
        m = machines[key]
        for mode, run in sorted(m["server"].items()):
            if run["targets"] and not b["targets"]:
                b["targets"], b["source"] = run["targets"], m["files"]["server " + mode]
            for what, t in run["targets"].items():
                if b["targets"].get(what) != t:
                    warn(f"{m['files']['server ' + mode]} states '{what} {t[0]} {t[1]:g}{t[2]}', "
                         f"{b['source']} '{b['targets'].get(what)}'; plots of files without "
                         "targets use the latter")
        if m["bench"] and m["bench"]["lora_targets"] and not b["lora_targets"]:
            b["lora_targets"], b["lora_source"] = m["bench"]["lora_targets"], m["files"]["bench"]
    return b


def check_verdicts(machines, b):
    """A summary's PASS/MISS words against the borrowed thresholds: they must agree."""
    ops = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t}
    for m in machines.values():
        for mode, run in m["server"].items():
            if run["targets"]:
                continue
            for what, (verdict, val) in run["verdicts"].items():
                t = b["targets"].get(what)
                if t and (verdict == "PASS") != ops[t[0]](val, t[1]):
                    warn(f"{m['files']['server ' + mode]}: {mode} says {verdict} {what} {val:g}, "
                         f"but {b['source']} states the target as {t[0]} {t[1]:g}{t[2]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="saved make bench / bench-server output")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="where the PNGs go")
    a = p.parse_args(argv)
    try:
        machines = collect(a.files)
    except ParseError as e:
        print(f"plot_bench: cannot parse {e}", file=sys.stderr)
        return 1
    b = borrowed_targets(machines)
    check_verdicts(machines, b)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "savefig.facecolor": "white"})

    os.makedirs(a.out, exist_ok=True)
    written = []
    keys = sorted(machines)
    for key in keys:
        m = machines[key]
        if m["bench"]:
            plot_tokps(plt, m, m["bench"], a.out, written)
            if m["bench"]["lora"]:
                plot_lora(plt, m, m["bench"], b, a.out, written)
            else:
                warn(f"{m['files']['bench']}: no LoRA lines, no LoRA plot")
        if m["server"]:
            plot_server(plt, m, m["server"], b, a.out, written)
    with_server = [(machines[k], machines[k]["server"]) for k in keys if machines[k]["server"]]
    if len(with_server) > 1:
        plot_server_all(plt, with_server, b, a.out, written)
    with_lora = [(machines[k], machines[k]["bench"]) for k in keys
                 if machines[k]["bench"] and machines[k]["bench"]["lora"]]
    if len(with_lora) > 1:
        plot_lora_all(plt, with_lora, b, a.out, written)
    if not written:
        print("plot_bench: nothing to plot", file=sys.stderr)
        return 1
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
