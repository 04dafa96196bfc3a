#!/usr/bin/env python3
"""Plots of saved `make bench` and `make bench-server` outputs: the figures of docs/PERF.md.

usage: tools/plot_bench.py FILE... -o DIR
       (`make plots` runs it on docs/perf/data/*.json and *.txt; `make bench` and `make
       bench-server` on their own run's build/bench/<date>-<cpu>-bench*.json)

A FILE ending in .json is a document `make bench` (tests/bench/bench_core.c --json, schema
"adaptree-bench-core/1") or `make bench-server` (tools/bench_server.py --json,
"adaptree-bench-server/1", with tools/bench_kv.py's part under "kv") wrote; its 'date' and
'machine' (CPU name, family, model) tell the machine, whatever the file's name. A bench_core
document of another model than the default (make bench's Gemma run) gets its own tok/s figure.

Any other FILE is the text output of one run, named <date>-<cpu>-bench.txt or <date>-<cpu>-bench-
server.txt (anything may follow "bench-server", e.g. -int8); what it holds is told by its content,
not its name. Lines starting with '#' are comments; '# cpu: NAME' names the CPU in the titles
(otherwise the <cpu> part of the name does). Understood formats:

  make bench          bench_core's output (tests/bench/bench_core.c), and the shorter form
                      README.md used to show (no [rows/step], LoRA lines abridged to
                      "1 distinct: +1.2%  8 distinct: ..." or one "LoRA, ... 32 distinct
                      adapters: rank-8 q,v +6.0%, ..." line)
  make bench-server   tools/bench_server.py's output (one mode: f32, or --int8 with
                      BENCH_ARGS=--int8), and the two-column f32 / --int8 summary README.md used
                      to show

Written into DIR, per machine (date + cpu): bench-tokps-<date>-<cpu>.png (tok/s per scenario, f32
and int8 activations), server-ratios-<date>-<cpu>.png (bench-server scenarios over the no-adapter
run, with the targets) and lora-overhead-<date>-<cpu>.png (LoRA step overhead against the number of
distinct adapters), adapters-tokps-<date>-<cpu>.png (aggregate tok/s against the number of distinct
adapters in the batch, core and server), adapter-overhead-<date>-<cpu>.png (overhead by rank and
target modules), f32-int8-<date>-<cpu>.png (int8 over f32 tok/s) and, for JSON runs with the latency
sweep, latency-concurrency-<date>-<cpu>.png (TTFT and inter-token latency p50/p95 against the number
of streams); across machines server-ratios-all.png and lora-overhead-all.png (ratios carry across
hosts, tok/s do not). Targets are drawn only as a file states them (the PASS/MISS lines of bench-
server, "target <= N%" of bench); a file that states none (the README summaries) gets the thresholds
another input file states, and the figure says which.

A file that cannot be parsed stops the tool with the file, the line and the reason (exit 1);
nothing is ever plotted from a guess.
"""

import argparse
import json
import textwrap
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_machine  # noqa: E402


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
    out = {"rows": {}, "lora": {}, "lora_targets": {}, "peak": None, "bw": None, "blas": None,
           "lora_tokps": {}, "lora_meta": {}, "lora_base_tokps": {}, "lora_rows": None,
           "model": None, "load": None}
    kind = None
    for n, line in src.lines:
        if not line.strip():
            continue
        m = re.match(r"^LoRA \(f16 adapters, (\d+) rows per decode step", line)
        if m:
            out["lora_rows"] = int(m.group(1))
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
            if out["lora_rows"]:  # aggregate tok/s of the step: its rows over its time
                tk = out["lora_tokps"].setdefault(kind, {})
                tk[int(m.group("n"))] = out["lora_rows"] * 1e3 / float(m.group("t"))
                tk.setdefault(0, out["lora_rows"] * 1e3 / float(m.group("b")))
                out["lora_base_tokps"].setdefault(kind, {})[int(m.group("n"))] = \
                    out["lora_rows"] * 1e3 / float(m.group("b"))
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


# --- JSON (make bench / make bench-server since issue 17) --------------------------------------

JSON_TOOLS = ("bench_core", "bench_server", "bench_kv")


def json_machine(path, doc):
    """(date, slug, cpu title) of a JSON document, from its 'date' and 'machine'."""
    mc = doc.get("machine")
    date = str(doc.get("date", ""))[:10]
    if not isinstance(mc, dict) or not mc.get("cpu") or not re.fullmatch(r"\d{4}-\d{2}-\d{2}",
                                                                          date):
        raise ParseError(f"{path}: no 'date' (YYYY-MM-DD...) or no 'machine' with a 'cpu'")
    fam, mod = mc.get("cpu_family"), mc.get("cpu_model")
    fam = int(fam) if isinstance(fam, (int, float)) else None
    mod = int(mod) if isinstance(mod, (int, float)) else None
    cpu = bench_machine.pretty(mc["cpu"], fam, mod)
    if mc.get("online_cpus"):
        cpu += f", {mc['online_cpus']} vCPU"
    return date, bench_machine.slug(mc["cpu"], fam, mod), cpu


def need(path, obj, key, kind=(int, float)):
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, kind) or isinstance(v, bool) and kind != bool:
        raise ParseError(f"{path}: '{key}' missing or not a {getattr(kind, '__name__', kind)} in "
                         f"{json.dumps(obj)[:120]}")
    return v


def parse_bench_json(path, doc):
    """A bench_core document into parse_bench's form (and the LoRA kinds' rank, targets and
    aggregate tok/s)."""
    mc = doc["machine"]
    out = {"rows": {}, "lora": {}, "lora_targets": {}, "peak": mc.get("sgemm_gflops"),
           "bw": mc.get("read_gbs"), "blas": mc.get("openblas_core"), "lora_tokps": {},
           "lora_meta": {}, "lora_base_tokps": {}, "lora_rows": None,
           "model": doc.get("model_path"),
           "load": mc.get("load_average_1m")}
    if out["peak"] is None or out["bw"] is None:
        raise ParseError(f"{path}: no machine.sgemm_gflops / machine.read_gbs")
    for r in doc.get("forward", []):
        sc, mode = need(path, r, "scenario", str), need(path, r, "mode", str)
        tps = need(path, r, "tok_s")
        if sc == "prefill":
            key = f"prefill\n1 x {need(path, r, 'rows_per_step')}"
        elif sc == "decode_1_stream":
            key = "decode\n1 stream"
        elif sc == "batched_decode":
            key = f"batch {need(path, r, 'sequences')}"
        elif sc == "long_context":
            key = (f"{need(path, r, 'rows_per_step')} rows,\npos {need(path, r, 'position')},"
                   f"\n{need(path, r, 'kv', str)} KV")
        else:
            raise ParseError(f"{path}: unknown forward scenario {sc!r}")
        if (mode, key) in out["rows"]:
            raise ParseError(f"{path}: a second {mode} {sc} row: {r.get('label')!r}")
        row = {"tps": tps}
        if "gflops" in r:
            row["gflops"], row["pct_peak"] = r["gflops"], r.get("pct_of_peak")
        if "step_ms" in r:
            row["ms_step"] = r["step_ms"]
        out["rows"][(mode, key)] = row
    lora = doc.get("lora")
    if lora:
        out["lora_rows"] = need(path, lora, "rows_per_step")
        for k in need(path, lora, "kinds", list):
            kind = need(path, k, "kind", str)
            out["lora_meta"][kind] = {"rank": k.get("rank"),
                                      "targets": k.get("target_modules") or []}
            if k.get("target_pct") is not None:
                out["lora_targets"][kind] = (k["target_pct"], k.get("target_at_distinct", 32))
            pts, tk, base = {}, {}, {}
            for d in need(path, k, "distinct", list):
                n = need(path, d, "adapters")
                pts[n] = need(path, d, "overhead_pct")
                tk[n] = need(path, d, "tok_s")
                base[n] = need(path, d, "base_tok_s")
                tk.setdefault(0, base[n])
            out["lora"][kind], out["lora_tokps"][kind] = pts, tk
            out["lora_base_tokps"][kind] = base
    if not out["rows"] and not out["lora"]:
        raise ParseError(f"{path}: a bench_core document with neither 'forward' rows nor 'lora'")
    out["lora"] = {k: v for k, v in out["lora"].items() if v}
    return out


def parse_server_json(path, doc):
    """A bench_server document into {mode: run} (parse_server's form), with the latency sweep
    ('sweep': [levels]) and bench_kv's part ('kv') when present."""
    mode = need(path, doc, "mode", str) + (" kv-f16" if doc.get("kv_cache") == "f16" else "")
    run = new_run()
    tp = doc.get("throughput")
    if tp:
        for r in need(path, tp, "results", list):
            label = need(path, r, "label", str)
            run["rows"][label] = {"tps": need(path, r, "tok_per_s"),
                                  "ratio": need(path, r, "ratio"),
                                  "errors": r.get("errors", 0),
                                  "distinct": r.get("distinct_adapters"),
                                  "kind": r.get("adapter_kind"),
                                  "sequential": bool(r.get("sequential"))}
            run["order"].append(label)
            if r.get("ratios") and label != "no adapter" and not r.get("sequential"):
                run["rounds"][label] = r["ratios"]
        run["speedup"] = tp.get("speedup")
        run["sgemm"] = tp.get("sgemm_gflops")
        run["ceiling"] = tp.get("ceiling_tok_per_s")
        step = (tp.get("decode_step") or {}).get("ceiling_fraction")
        run["step_pct"] = None if step is None else 100 * step
        e2e = tp.get("end_to_end_ceiling_fraction")
        run["e2e_pct"] = None if e2e is None else 100 * e2e
        if tp.get("load_average_before") is not None:
            run["load"] = (tp["load_average_before"], tp.get("load_average_after"))
        for t in tp.get("targets", []):
            what = norm_target(need(path, t, "what", str).split(" >=")[0])
            run["targets"][what] = (t["op"], t["threshold"], t["unit"])
            run["verdicts"][what] = (t["verdict"], t["value"])
        if "no adapter" not in run["rows"]:
            raise ParseError(f"{path}: throughput results without a 'no adapter' row ({mode})")
    sw = doc.get("sweep")
    run["sweep"] = sorted(sw.get("levels", []), key=lambda r: r["concurrency"]) if sw else []
    run["sweep_tokens"] = sw.get("max_tokens") if sw else None
    run["kv"] = doc.get("kv")
    run["many"] = doc.get("many")
    run["start_load"] = (doc.get("machine") or {}).get("load_average_1m")
    if not run["rows"] and not run["sweep"] and not run["many"]:
        raise ParseError(f"{path}: a bench_server document with neither 'throughput', 'sweep' "
                         "nor 'many' results")
    return {mode: run}


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


def plot_tokps(plt, machine, bench, out_dir, written, model=None):
    """model: a model other than the default (make bench's Gemma run): its own file."""
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
    ax.set_title(f"make bench: tokens/s per scenario{', ' + model if model else ''}\n"
                 f"{title_of(machine)}", fontsize=11)
    note = (f"sgemm peak {bench['peak']:.1f} GFLOP/s, read bandwidth {bench['bw']:.1f} GB/s "
            f"(this machine's own probes)"
            + (f"; OpenBLAS core {bench['blas']}" if bench["blas"] else "")
            + ". Prefill: one 128-token prompt; batch N: N sequences decoding together; "
            "the last groups: 32 rows decoding at position 1024 over random KV caches."
            + load_note(bench.get("load")))
    fig.text(0.01, -0.02, note, fontsize=8, wrap=True, va="top")
    mslug = ("-" + re.sub(r"[^a-z0-9]+", "-", model.lower().split(".")[0]).strip("-")
             if model else "")
    save(fig, out_dir, f"bench-tokps-{machine['date']}-{machine['slug']}{mslug}.png", written)
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
    top = max([v for _, _, _, vals in series for v in vals.values()] + [1.0])
    ax.set_ylim(0, max(1.22, top * 1.1))  # a ratio above 1 (a drifting machine) stays in view
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


def is_busy(load):
    return load is not None and load >= 1.0


def left_out_note(runs):
    if not runs:
        return ""
    return (" Left out, started on a busy machine (load average >= 1 on 2 vCPUs): "
            + "; ".join(runs) + ".")


def plot_server_all(plt, machines, borrowed, out_dir, written, note=""):
    labels, series = [], []
    hatches = [None, "//", "..", "xx", "\\\\"]
    for mi, (mach, runs) in enumerate(machines):
        for md in sorted(runs, key=lambda m: list(MODE_COLOR).index(m) if m in MODE_COLOR else 9):
            for lab in runs[md]["order"]:
                if lab not in labels:
                    labels.append(lab)
            series.append((f"{short_cpu(mach['cpu'])} ({mach['date']}), {md}"
                           + busy_tag(runs[md].get("start_load")),
                           MODE_COLOR.get(md, "0.5"), hatches[mi % len(hatches)],
                           {lab: r["ratio"] for lab, r in runs[md]["rows"].items()}))
    fig, ax = plt.subplots(figsize=(12, 5.8))
    ratio_axes(ax, labels, series, borrowed["targets"])
    ax.legend(loc="upper right", fontsize=7.5)
    cpus = ", ".join(f"{short_cpu(m['cpu'])} ({m['date']})" for m, _ in machines)
    ax.set_title("make bench-server ratios (no adapter = 1.0) across machines\n" + cpus,
                 fontsize=10.5)
    fig.text(0.01, -0.02, ("Ratios compare across hosts; tok/s do not. Targets as "
                           f"{borrowed['source']} states them." if borrowed["targets"] else
                           "Ratios compare across hosts; tok/s do not.") + note, fontsize=8,
             va="top", wrap=True)
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


def plot_lora_all(plt, machines, borrowed, out_dir, written, note=""):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = ["-", "--", ":", "-."]
    series = []
    for i, (mach, bench) in enumerate(machines):
        for k, pts in bench["lora"].items():
            series.append((k, MACHINE_MARK[i % len(MACHINE_MARK)], styles[i % len(styles)],
                           f", {short_cpu(mach['cpu'])} ({mach['date']})"
                           + busy_tag(bench.get("load")), pts))
    lora_axes(ax, series, borrowed["lora_targets"], values=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    cpus = ", ".join(f"{short_cpu(m['cpu'])} ({m['date']})" for m, _ in machines)
    ax.set_title("make bench: LoRA overhead across machines\n" + cpus, fontsize=10.5)
    if borrowed["lora_targets"] or note:
        fig.text(0.01, -0.02, (f"targets as {borrowed['lora_source']} states them."
                               if borrowed["lora_targets"] else "") + note, fontsize=8,
                 va="top", wrap=True)
    save(fig, out_dir, "lora-overhead-all.png", written)
    plt.close(fig)


def load_note(load, several=False):
    """A footnote sentence for a run that recorded the machine's load average."""
    if load is None:
        return ""
    busy = " (other work shared the cores: every number is lower than on a quiet machine)" \
        if load >= 0.5 else ""
    when = "at the start of the busiest run plotted" if several else "when the run started"
    return f" Load average {load:.2f} {when}{busy}."


def machine_load(machine):
    """The highest load average any run of this machine and date recorded at its start."""
    loads = [machine["bench"].get("load")] if machine["bench"] else []
    loads += [r.get("start_load") for r in machine["server"].values()]
    loads = [x for x in loads if x is not None]
    return max(loads) if loads else None


def busy_tag(load):
    """A legend suffix for a run that started with the machine busy (JSON runs record it)."""
    return f", shared cores (load {load:.1f})" if load is not None and load >= 1.0 else ""


DISTINCT_X = {0: 0, 1: 1, 8: 2, 32: 3}


def distinct_pos(n):
    """x position of a number of distinct adapters (0, 1, 8, 32 evenly; others in between)."""
    if n in DISTINCT_X:
        return DISTINCT_X[n]
    import math
    return 1 + math.log(n, 8) if n > 0 else 0


def server_points(run):
    """{kind: {distinct: tok/s}} of a bench-server run (the sequential row left out)."""
    base = run["rows"].get("no adapter", {}).get("tps")
    pts = {}
    for label, r in run["rows"].items():
        if r.get("sequential") or label.endswith("one at a time") or label == "no adapter":
            continue
        kind, n = r.get("kind"), r.get("distinct")
        if kind is None:  # text files: from the label
            m = re.match(r"^(\d+) different (.+)$", label)
            if label.startswith("all on one adapter"):
                kind, n = "rank-16 all-linear", 1
            elif m:
                kind, n = m.group(2), int(m.group(1))
            else:
                continue
        if kind.startswith("three-level chain") or kind.endswith("chains"):
            kind, n = "three-level chains", int(re.match(r"^(\d+)", label).group(1))
        pts.setdefault(kind, {0: base} if base else {})[n] = r["tps"]
    many = run.get("many")
    if many and many.get("many"):  # scenario "many": N distinct rank-8 q,v adapters, 32 streams
        pts.setdefault("rank-8 q,v", {0: base} if base else {})[many["adapters"]] = \
            many["many"]["tok_per_s"]
    return pts


def plot_adapters_tokps(plt, machine, out_dir, written):
    """Aggregate tok/s against the number of distinct adapters in the batch: the core's 32-row
    decode step (make bench) and the server's 32 streams (make bench-server), per kind."""
    bench = machine["bench"]
    core = bench["lora_tokps"] if bench and bench.get("lora_tokps") else {}
    server = {md: server_points(r) for md, r in machine["server"].items()
              if r["rows"] or r.get("many")}
    if not core and not any(server.values()):
        return
    panels = (["core"] if core else []) + (["server"] if any(server.values()) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        series = []
        if panel == "core":
            series = [(k, "f32", pts) for k, pts in core.items()]
            ax.set_title(f"make bench: one decode step of {bench['lora_rows']} rows (core only)",
                         fontsize=9.5)
        else:
            series = [(k, md, pts) for md, kinds in server.items() for k, pts in kinds.items()]
            ax.set_title("make bench-server: 32 streams end to end", fontsize=9.5)
        for kind, base in (bench.get("lora_base_tokps") or {}).items() if panel == "core" else []:
            ns = sorted(base)
            ax.plot([distinct_pos(n) for n in ns], [base[n] for n in ns], marker=".", ls=":",
                    color=KIND_COLOR.get(kind, "#ccbb44"), lw=1,
                    label=f"{kind}: its paired no-adapter steps")
        for kind, md, pts in series:
            ns = sorted(pts)
            style = "-" if md.startswith("f32") else "--"
            ax.plot([distinct_pos(n) for n in ns], [pts[n] for n in ns], marker="o", ls=style,
                    color=KIND_COLOR.get(kind, "#ccbb44"), label=f"{kind}, {md}")
            for n in ns:
                ax.annotate(f"{pts[n]:.0f}", (distinct_pos(n), pts[n]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        ticks = sorted({n for _, _, pts in series for n in pts})
        ax.set_xticks([distinct_pos(n) for n in ticks], [str(n) for n in ticks])
        ax.set_xlabel("distinct adapters in the batch (0: no adapter)")
        ax.set_ylabel("aggregate tokens/s (this machine only)")
        ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left")
    fig.suptitle(f"Aggregate tok/s against the number of distinct adapters\n{title_of(machine)}",
                 fontsize=11)
    note = ("f16 adapters. Core: base-only and adapter steps alternate, the median of 5 paired "
            "runs (dotted: the paired no-adapter steps, showing the machine's drift). Server: a "
            "chain counts its 3 distinct nodes per stream; the x position is the "
            "number of streams with their own chain.")
    fig.text(0.01, -0.02, note + load_note(machine_load(machine), several=True), fontsize=8,
             va="top", wrap=True)
    fig.tight_layout()
    save(fig, out_dir, f"adapters-tokps-{machine['date']}-{machine['slug']}.png", written)
    plt.close(fig)


def kind_label(kind, meta):
    """'rank-8 q,v' + its target modules -> 'rank 8\nq_proj, v_proj'."""
    if not meta or not meta.get("targets"):
        return kind
    t = meta["targets"]
    mods = "all 7 linear" if len(t) == 7 else ", ".join(x.replace("_proj", "") for x in t)
    return f"rank {meta['rank']}\n{mods}"


def plot_adapter_overhead(plt, machine, out_dir, written):
    """Step overhead by kind (rank and target modules) and number of distinct adapters (make
    bench), next to the server's end-to-end cost (1 - ratio) at 32 distinct."""
    bench = machine["bench"]
    if not bench or not bench["lora"]:
        return
    kinds = list(bench["lora"])
    ns = sorted({n for pts in bench["lora"].values() for n in pts})
    srv = [(md, r) for md, r in sorted(machine["server"].items()) if r["rows"]]
    nbar = len(ns) + len(srv)
    w = 0.8 / nbar
    fig, ax = plt.subplots(figsize=(8, 5))
    shades = ["#bbddaa", "#77bb66", "#228833", "#115511"]
    for j, kind in enumerate(kinds):
        bars = [(f"make bench, {n} distinct", shades[min(i, 3)], None, bench["lora"][kind].get(n))
                for i, n in enumerate(ns)]
        for md, r in srv:
            ratio = next((x["ratio"] for lab, x in r["rows"].items()
                          if re.fullmatch(r"\d+ different " + re.escape(kind), lab)), None)
            bars.append((f"make bench-server {md}, 32 distinct (1 / ratio - 1)",
                         MODE_COLOR.get(md, "0.5"), "//",
                         None if not ratio else 100 * (1 / ratio - 1)))
        for i, (leg, color, hatch, v) in enumerate(bars):
            if v is None:
                continue
            x = j - 0.4 + w * (i + 0.5)
            ax.bar(x, v, w, color=color, hatch=hatch, edgecolor="white", label=leg)
            ax.text(x, v + 0.4 if v >= 0 else v - 0.4, f"{v:+.1f}%", ha="center",
                    va="bottom" if v >= 0 else "top", fontsize=7.5)
        t = bench["lora_targets"].get(kind)
        if t:
            ax.hlines(t[0], j - 0.45, j + 0.45, colors="black", linestyles="--", lw=1.3)
            ax.text(j - 0.45, t[0] + 0.5, f"target ≤ {t[0]:g}% at {t[1]}", ha="left",
                    fontsize=7.5)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7.5, loc="upper left",
              bbox_to_anchor=(1.01, 1))
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.08 * (hi - lo))  # room for the value labels
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(kinds)), [kind_label(k, bench["lora_meta"].get(k)) for k in kinds])
    ax.set_ylabel("time over the no-adapter step / run (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Adapter overhead by rank and target modules (f16 adapters)\n"
                 f"{title_of(machine)}", fontsize=10.5)
    fig.text(0.01, -0.02, f"make bench: a {bench['lora_rows'] or 32}-row decode step, median of 5 "
             "paired runs; make bench-server: 32 streams, the time the same tokens take over the "
             "no-adapter run's (1 / its tok/s ratio - 1)."
             + load_note(machine_load(machine), several=True), fontsize=8, va="top", wrap=True)
    save(fig, out_dir, f"adapter-overhead-{machine['date']}-{machine['slug']}.png", written)
    plt.close(fig)


def plot_latency(plt, machine, out_dir, written):
    """TTFT and inter-token latency (p50, p95) against the number of concurrent streams."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    loads = []
    modes = [md for md, run in machine["server"].items() if run.get("sweep")]
    for md, run in sorted(machine["server"].items()):
        lv = run.get("sweep") or []
        if not lv:
            continue
        cs = [r["concurrency"] for r in lv]
        color = MODE_COLOR.get(md, "0.5")
        for ax, key, name in ((axes[0], "ttft", "TTFT"), (axes[1], "itl", "ITL")):
            for q, ls in (("p50", "-"), ("p95", "--")):
                ys = [r.get(f"{key}_ms_{q}") for r in lv]
                ax.plot(cs, ys, marker="o", ls=ls, color=color, label=f"{md} {q}")
            for c, y in zip(cs, [r.get(f"{key}_ms_p50") for r in lv]):
                if y is not None and len(modes) == 1:  # two modes' labels would overlap
                    ax.annotate(f"{y:.0f}", (c, y), textcoords="offset points", xytext=(3, -10),
                                fontsize=7)
        axes[2].plot(cs, [r["tok_per_s"] for r in lv], marker="o", color=color, label=md)
        if run.get("start_load") is not None:
            loads.append(run["start_load"])
    for ax, title, ylab in ((axes[0], "time to first token", "ms"),
                            (axes[1], "inter-token latency", "ms"),
                            (axes[2], "aggregate throughput", "tokens/s (this machine only)")):
        ax.set_xscale("log", base=2)
        ticks = sorted({r["concurrency"] for run in machine["server"].values()
                        for r in run.get("sweep") or []})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrent streams (no adapter)")
        ax.set_ylabel(ylab)
        ax.set_title(title, fontsize=9.5)
        ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    toks = next((r.get("sweep_tokens") for r in machine["server"].values() if r.get("sweep")),
                None)
    fig.suptitle(f"make bench-server: latency against concurrency\n{title_of(machine)}",
                 fontsize=11)
    fig.text(0.01, -0.02, f"Closed-loop streaming requests, max_tokens {toks}, greedy, two "
             "requests per stream (at least 8 per level); p50 solid, p95 dashed."
             + load_note(max(loads) if loads else None, several=len(loads) > 1), fontsize=8,
             va="top", wrap=True)
    fig.tight_layout()
    save(fig, out_dir, f"latency-concurrency-{machine['date']}-{machine['slug']}.png", written)
    plt.close(fig)


def plot_f32_int8(plt, machine, out_dir, written):
    """int8 activations over f32 ones: make bench's scenarios and, when both were run, make
    bench-server's."""
    bench = machine["bench"]
    core = []
    if bench:
        for (md, sc), r in bench["rows"].items():
            f = bench["rows"].get(("f32", sc))
            if md == "int8" and f and f["tps"]:
                core.append((sc, r["tps"] / f["tps"]))
    srv = machine["server"]
    both = "f32" in srv and "int8" in srv and srv["f32"]["rows"] and srv["int8"]["rows"]
    server = [(short_label(lab), srv["int8"]["rows"][lab]["tps"] / r["tps"])
              for lab, r in srv["f32"]["rows"].items()
              if lab in srv["int8"]["rows"] and r["tps"]] if both else []
    sweep = []
    if "f32" in srv and "int8" in srv:
        i8 = {r["concurrency"]: r for r in srv["int8"].get("sweep") or []}
        sweep = [(f"{r['concurrency']} stream{'s' if r['concurrency'] > 1 else ''}",
                  i8[r["concurrency"]]["tok_per_s"] / r["tok_per_s"])
                 for r in srv["f32"].get("sweep") or []
                 if r["concurrency"] in i8 and r["tok_per_s"]]
    panels = [p for p in (("make bench (core)", core), ("make bench-server, 32 streams", server),
                          ("make bench-server, latency sweep", sweep)) if p[1]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 4.8), squeeze=False)
    for ax, (title, vals) in zip(axes[0], panels):
        xs = range(len(vals))
        ax.bar(xs, [v for _, v in vals], color=MODE_COLOR["int8"])
        for x, (_, v) in zip(xs, vals):
            ax.text(x, v + 0.02, f"{v:.2f}x", ha="center", va="bottom", fontsize=7.5)
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
        ax.set_xticks(list(xs), [textwrap.fill(lab.replace("\n", " "), 11,
                                                 break_on_hyphens=False) for lab, _ in vals],
                      fontsize=7.5)
        ax.set_ylabel("int8 tok/s over f32 tok/s")
        ax.set_title(title, fontsize=9.5)
        ax.grid(axis="y", alpha=0.3)
    missing = [] if server or sweep else ["No make bench-server --int8 run for this date and CPU"
                                          if srv else "No make bench-server run"]
    fig.suptitle(f"int8 activations (serve --int8) against f32\n{title_of(machine)}", fontsize=11)
    fig.text(0.01, -0.02, ". ".join(missing + ["Ratios of two runs on one machine"])
             + "." + load_note(machine_load(machine), several=True), fontsize=8, va="top",
             wrap=True)
    fig.tight_layout()
    save(fig, out_dir, f"f32-int8-{machine['date']}-{machine['slug']}.png", written)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------

DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def collect_json(machines, p):
    try:
        with open(p, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ParseError(f"{p}: cannot read as JSON: {e}")
    tool = doc.get("tool") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and doc.get("schema") == "adaptree-bench-spec/1":
        print(f"plot_bench: {p}: speculative decoding (bench_spec): a table, not plotted",
              file=sys.stderr)
        return
    if tool not in JSON_TOOLS:
        raise ParseError(f"{p}: not a bench document (its 'tool' is {tool!r}, not one of "
                         f"{', '.join(JSON_TOOLS)})")
    date, slug, cpu = json_machine(p, doc)
    m = machines.setdefault((date, slug), {"cpu": cpu, "date": date, "slug": slug, "bench": None,
                                           "server": {}, "files": {}, "other": []})
    name = os.path.basename(p)
    if tool == "bench_core":
        bench = parse_bench_json(p, doc)
        model = os.path.basename(bench["model"] or DEFAULT_MODEL)
        if model != DEFAULT_MODEL or doc.get("parts") == "forward" and m["bench"]:
            m["other"].append((model, bench, name))  # e.g. make bench's Gemma run
            return
        if m["bench"] is not None:
            raise ParseError(f"{p}: a second `make bench` document for {date} {slug} (the "
                             f"first: {m['files']['bench']})")
        m["bench"], m["files"]["bench"] = bench, name
    elif tool == "bench_server":
        for mode, run in parse_server_json(p, doc).items():
            if mode in m["server"]:
                raise ParseError(f"{p}: a second {mode} `make bench-server` document for {date} "
                                 f"{slug} (the first: {m['files']['server ' + mode]})")
            m["server"][mode], m["files"]["server " + mode] = run, name
    else:
        warn(f"{p}: a bench_kv document alone: nothing of it is plotted")


def collect(paths):
    machines = {}  # key -> {'cpu', 'date', 'slug', 'bench', 'server': {mode: run}, files, other}
    for p in paths:
        if p.endswith(".json"):
            collect_json(machines, p)
            continue
        src = Source(p)
        kind = src.kind()
        m = machines.setdefault(src.key, {"cpu": src.cpu, "date": src.date, "slug": src.slug,
                                          "bench": None, "server": {}, "files": {}, "other": []})
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
    """The thresholds the input files state, newest first wins (a run on a busy machine only if
    no other states them): for files that state none."""
    b = {"targets": {}, "source": None, "lora_targets": {}, "lora_source": None}
    order = sorted(machines, reverse=True)
    servers = [(k, md) for k in order for md in sorted(machines[k]["server"])]
    servers.sort(key=lambda x: is_busy(machines[x[0]]["server"][x[1]].get("start_load")))
    for key, mode in servers:
        m, run = machines[key], machines[key]["server"][mode]
        if run["targets"] and not b["targets"]:
            b["targets"], b["source"] = run["targets"], m["files"]["server " + mode]
        for what, t in run["targets"].items():
            if b["targets"].get(what) != t:
                warn(f"{m['files']['server ' + mode]} states '{what} {t[0]} {t[1]:g}{t[2]}', "
                     f"{b['source']} '{b['targets'].get(what)}'; plots of files without "
                     "targets use the latter")
    benches = [k for k in order if machines[k]["bench"] and machines[k]["bench"]["lora_targets"]]
    benches.sort(key=lambda k: is_busy(machines[k]["bench"].get("load")))
    if benches:
        m = machines[benches[0]]
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
        for model, bench, _ in m["other"]:
            plot_tokps(plt, m, bench, a.out, written, model=model)
        runs = {md: r for md, r in m["server"].items() if r["rows"]}
        if runs:
            plot_server(plt, m, runs, b, a.out, written)
        plot_adapters_tokps(plt, m, a.out, written)
        plot_adapter_overhead(plt, m, a.out, written)
        if any(r.get("sweep") for r in m["server"].values()):
            plot_latency(plt, m, a.out, written)
        plot_f32_int8(plt, m, a.out, written)
    # The figures across machines leave out the runs that started on a busy machine (the JSON
    # ones record the load average): their ratios say more about the other work than the code.
    out_s, out_l = [], []
    with_server = []
    for k in keys:
        m, runs = machines[k], {}
        for md, r in m["server"].items():
            if r["rows"] and is_busy(r.get("start_load")):
                out_s.append(f"{short_cpu(m['cpu'])} ({m['date']}) {md}, "
                             f"load {r['start_load']:.1f}")
            elif r["rows"]:
                runs[md] = r
        if runs:
            with_server.append((m, runs))
    if len(with_server) > 1:
        plot_server_all(plt, with_server, b, a.out, written, left_out_note(out_s))
    for k in keys:
        m = machines[k]
        if m["bench"] and m["bench"]["lora"] and is_busy(m["bench"].get("load")):
            out_l.append(f"{short_cpu(m['cpu'])} ({m['date']}), load {m['bench']['load']:.1f}")
    with_lora = [(machines[k], machines[k]["bench"]) for k in keys
                 if not (machines[k]["bench"] and is_busy(machines[k]["bench"].get("load")))]
    with_lora = [(m, bench) for m, bench in with_lora if bench and bench["lora"]]
    if len(with_lora) > 1:
        plot_lora_all(plt, with_lora, b, a.out, written, left_out_note(out_l))
    if not written:
        print("plot_bench: nothing to plot", file=sys.stderr)
        return 1
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
