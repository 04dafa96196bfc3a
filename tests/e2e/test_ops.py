"""End-to-end: the operations side of a real server: `adaptree --version` and GET /version (the
build and the kernels in use), adaptree_build_info and process_* in /metrics; settings from a
--config file, the environment and flags (flag > env > file > default) as --print-config shows
them and as the server listens; CORS with --cors-origin (answers and preflights) and without."""

import json
import os
import re
import signal
import subprocess
import time

import e2e
from e2e import check, eq

suite = e2e.Suite("ops", budget=180)
KEY = "ops-key"
S = None  # --api-key KEY --cors-origin ORIGIN
T = None  # no flags: no CORS
R = None  # a registry: the latency histograms by adapter
ORIGIN = "http://app.example:3000"
STARTED = 0.0


def setup():
    global S, T, R, STARTED
    STARTED = time.time()
    S = suite.server(["--api-key", KEY, "--cors-origin", ORIGIN, "--cors-origin",
                      "https://other.example"], name="server")
    S.start()
    T = suite.server([], name="nocors")
    T.start()
    R = suite.server([], registry=e2e.make_registry(suite.tmp, fixtures=False), name="registry")
    R.start()


def version_lines(args):
    out = subprocess.run([e2e.ADAPTREE] + args, capture_output=True, text=True, timeout=30,
                         check=True).stdout
    first, *rest = out.splitlines()
    fields = dict(line.split(": ", 1) for line in rest)
    return first, fields


@suite.test
def version_command():
    first, f = version_lines(["--version"])
    check(first.startswith("adaptree "), f"first line {first!r}")
    for k in ("commit", "compiler", "optimization", "sanitizers", "cflags", "kernels"):
        check(f.get(k), f"--version has no {k}: {f}")
    check("OpenBLAS" in f["kernels"], f"kernels {f['kernels']!r}")
    eq(version_lines(["version"]), (first, f), "adaptree version")


@suite.test
def version_route():
    r = S.req("GET", "/version")
    eq(r.status, 401, "GET /version without the key (a key is needed as for /metrics)")
    r = S.req("GET", "/version", key=KEY)
    eq(r.status, 200, "GET /version")
    j = r.json()
    first, f = version_lines(["--version"])
    eq(j["version"], first.split()[1], "version")
    for k in ("commit", "compiler", "optimization", "cflags"):
        eq(j[k] or "none", f[k], k)
    eq(",".join(j["sanitizers"]) or "none", f["sanitizers"], "sanitizers")
    eq(j["kernels"], f["kernels"], "kernels")
    check(j["cpu"] in ("none", "AVX2", "AVX-512", "AVX-512 VNNI"), f"cpu {j['cpu']!r}")
    check(j["kernels"].startswith(j["cpu"] + ", OpenBLAS "), f"kernels {j['kernels']!r}")


def lint_exposition(text):
    """What promtool's parser would refuse, for the exposition we write: every sample after its
    family's HELP and TYPE, each family declared once, counters named *_total, values numbers."""
    helped, typed = set(), {}
    for line in text.splitlines():
        m = re.match(r"# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$", line)
        if m:
            kind, name, rest = m.groups()
            seen = helped if kind == "HELP" else typed
            check(name not in seen, f"{kind} twice for {name}")
            if kind == "HELP":
                helped.add(name)
            else:
                check(rest in ("counter", "gauge", "histogram"), f"type of {name}: {rest}")
                check(rest != "counter" or name.endswith("_total"), f"counter {name} not *_total")
                typed[name] = rest
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$', line)
        check(m, f"bad line {line!r}")
        name = m.group(1)
        fam = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        check(fam in typed and fam in helped, f"sample before its HELP/TYPE: {line!r}")
        float(m.group(3))


@suite.test
def metrics_build_info_and_process():
    r = S.req("GET", "/metrics", key=KEY)
    eq(r.status, 200, "GET /metrics")
    text = r.data.decode()
    lint_exposition(text)
    v = S.req("GET", "/version", key=KEY).json()
    m = e2e.metrics(S, key=KEY)
    info = [labels for (name, labels), val in m.items() if name == "adaptree_build_info"]
    eq(len(info), 1, "adaptree_build_info series")
    eq(dict(info[0]), {"version": v["version"], "commit": v["commit"], "kernels": v["kernels"]},
       "adaptree_build_info labels")
    eq(m[("adaptree_build_info", info[0])], 1.0, "adaptree_build_info value")
    p = {name: val for (name, labels), val in m.items() if name.startswith("process_")}
    eq(sorted(p), ["process_cpu_seconds_total", "process_max_fds", "process_open_fds",
                   "process_resident_memory_bytes", "process_start_time_seconds",
                   "process_virtual_memory_bytes"], "process_* families")
    # the model is mapped: more than 50 MB resident, more virtual than resident
    check(p["process_resident_memory_bytes"] > 50e6, f"rss {p['process_resident_memory_bytes']}")
    check(p["process_virtual_memory_bytes"] >= p["process_resident_memory_bytes"], f"{p}")
    check(3 <= p["process_open_fds"] <= p["process_max_fds"], f"{p}")
    check(p["process_cpu_seconds_total"] > 0, f"{p}")
    check(STARTED - 5 <= p["process_start_time_seconds"] <= time.time(),
          f"start {p['process_start_time_seconds']}, spawned at {STARTED}")


@suite.test
def latency_histograms_by_bounded_adapter_label():
    """TTFT, inter-token latency, queue time and duration by adapter label: the node id of
    "model", "base", and "_list_" for any weighted list whatever its ids and weights (a client
    cannot make series); the step time histogram counts every step."""
    sels = [({"model": "base"}, "base"), ({"model": "fr/manpages"}, "fr/manpages"),
            ({"adapters": [{"id": "fr", "scale": 0.5}, {"id": "de", "scale": 0.5}]}, "_list_"),
            ({"adapters": [{"id": "de", "scale": 0.3}]}, "_list_")]
    for sel, _ in sels:
        body = {"prompt": "Bonjour", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
        body.update(sel)
        r = R.post("/v1/completions", body)
        eq(r.status, 200, f"completion with {sel}")
    # a request is observed once its answer is out: wait for the last one
    def observed():
        m = e2e.metrics(R)
        n = sum(v for (name, _), v in m.items() if name == "adaptree_request_duration_seconds_count")
        return m if n == len(sels) else None
    m = e2e.wait_until(observed, 10, "the four requests observed")
    lint_exposition(R.req("GET", "/metrics").data.decode())

    def val(name, adapter, le=None):
        labels = (("adapter", adapter),) if le is None else (("adapter", adapter), ("le", le))
        return m.get((name, labels))

    ids = {dict(lab).get("adapter") for (name, lab) in m
           if name.startswith(("adaptree_time_to_first_token", "adaptree_inter_token_latency",
                               "adaptree_queue_time", "adaptree_request_duration"))}
    eq(ids, {"base", "fr/manpages", "_list_"}, "adapter labels of the latency histograms")
    for _, lab in sels[:2]:
        eq(val("adaptree_time_to_first_token_seconds_count", lab), 1.0, f"TTFT count of {lab}")
        eq(val("adaptree_queue_time_seconds_count", lab), 1.0, f"queue count of {lab}")
        eq(val("adaptree_request_duration_seconds_count", lab), 1.0, f"duration count of {lab}")
        # 5 tokens: 4 gaps, each inside the request's time
        eq(val("adaptree_inter_token_latency_seconds_count", lab), 4.0, f"ITL count of {lab}")
        eq(val("adaptree_inter_token_latency_seconds_bucket", lab, "+Inf"), 4.0,
           f"ITL +Inf bucket of {lab}")
        check(0 < val("adaptree_inter_token_latency_seconds_sum", lab)
              < val("adaptree_request_duration_seconds_sum", lab), f"ITL sum of {lab}")
    eq(val("adaptree_time_to_first_token_seconds_count", "_list_"), 2.0, "TTFT count of lists")
    eq(val("adaptree_inter_token_latency_seconds_count", "_list_"), 8.0, "ITL count of lists")
    reqs = {dict(lab)["adapter"] for (name, lab) in m
            if name == "adaptree_adapter_requests_total"}
    eq(reqs, {"base", "fr/manpages", "_list_"}, "adaptree_adapter_requests_total labels")
    steps = m.get(("adaptree_steps_total", ()))
    eq(m.get(("adaptree_step_duration_seconds_count", ())), steps, "step histogram count")
    eq(m.get(("adaptree_step_duration_seconds_bucket", (("le", "+Inf"),))), steps,
       "step histogram +Inf bucket")


def exported_names(text):
    """Every series name the exposition can hold: each family, with _bucket/_sum/_count for
    histograms."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)$", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
    return names


@suite.test
def grafana_dashboard_valid_and_uses_exported_metrics():
    """deploy/grafana/adaptree.json is JSON Grafana imports (panels with unique ids, a grid
    position, targets with PromQL) and every metric name it queries is one the server exports."""
    path = os.path.join(e2e.ROOT, "deploy", "grafana", "adaptree.json")
    with open(path) as f:
        dash = json.load(f)
    check(dash.get("title") and dash.get("uid") and isinstance(dash.get("panels"), list),
          "dashboard title, uid, panels")
    ids, exprs = set(), []
    for p in dash["panels"]:
        check(p.get("id") not in ids, f"panel id {p.get('id')} repeated")
        ids.add(p.get("id"))
        check(all(k in p.get("gridPos", {}) for k in "xywh"), f"panel {p.get('title')} gridPos")
        if p["type"] == "row":
            continue
        check(p.get("targets"), f"panel {p.get('title')} has no target")
        for t in p["targets"]:
            exprs.append(t["expr"])
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            exprs.append(v["definition"])
    for e in exprs:
        for a, b in ("()", "{}", "[]"):
            eq(e.count(a), e.count(b), f"balanced {a}{b} in {e}")
    used = set()
    for e in exprs:
        e = re.sub(r'"[^"]*"', '""', e)  # label values are not metric names
        used.update(re.findall(r"\b((?:adaptree|process)_[a-z0-9_]+)\b", e))
    check(len(used) >= 25, f"only {len(used)} metric names in the dashboard")
    text = R.req("GET", "/metrics").data.decode()
    missing = sorted(used - exported_names(text))
    eq(missing, [], "metric names the dashboard queries that /metrics does not export")
    print(f"  dashboard: {len(dash['panels'])} panels, {len(exprs)} queries over "
          f"{len(used)} metric names, all exported")


@suite.test
def make_install_destdir():
    """make install with PREFIX and DESTDIR puts the binary (which runs), the templates, the
    dashboard and the docs under the staging root; make uninstall takes them away again."""
    dest = os.path.join(suite.tmp, "stage")
    mk = ["make", "--no-print-directory", "-C", e2e.ROOT, f"BUILD={e2e.BUILD}", "PREFIX=/usr",
          f"DESTDIR={dest}", "-o", os.path.join(e2e.BUILD, "adaptree")]
    r = subprocess.run(mk + ["install"], capture_output=True, text=True, timeout=120)
    eq(r.returncode, 0, f"make install ({r.stdout}{r.stderr})")
    for f in ("usr/bin/adaptree", "usr/share/adaptree/templates/gemma-3.jinja",
              "usr/share/adaptree/grafana/adaptree.json", "usr/share/doc/adaptree/LICENSE",
              "usr/share/doc/adaptree/README.md"):
        check(os.path.isfile(os.path.join(dest, f)), f"{f} installed")
    binary = os.path.join(dest, "usr/bin/adaptree")
    check(os.access(binary, os.X_OK), "the installed binary is executable")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    eq(out.returncode, 0, "installed adaptree --version")
    check(out.stdout.startswith("adaptree "), f"--version says {out.stdout!r}")
    r = subprocess.run(mk + ["uninstall"], capture_output=True, text=True, timeout=60)
    eq(r.returncode, 0, f"make uninstall ({r.stdout}{r.stderr})")
    left = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs]
    eq(left, [], "files left after make uninstall")


def serve_env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTREE_")}
    env.update(extra)
    return env


def print_config(args, env):
    r = subprocess.run([e2e.ADAPTREE, "serve", "--print-config"] + args, capture_output=True,
                       text=True, timeout=30, env=serve_env(env), cwd=e2e.ROOT)
    eq(r.returncode, 0, f"--print-config exit status ({r.stderr})")
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"(\S+) += (.*?) +# (.*)$", line)
        check(m, f"--print-config line {line!r}")
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


@suite.test
def config_precedence(tmp_path):
    p_file, p_env, p_flag = e2e.free_port(), e2e.free_port(), e2e.free_port()
    conf = str(tmp_path / "adaptree.conf")
    with open(conf, "w") as f:
        f.write(f"# ops test\nport = {p_file}\nmax-seqs = 3\nqueue-limit = 7\n"
                f"model = {e2e.MODEL}\nno-registry = true\n")
    env = {"ADAPTREE_PORT": str(p_env), "ADAPTREE_MAX_SEQS": "5"}
    c = print_config(["--config", conf, "--port", str(p_flag)], env)
    eq(c["port"], (str(p_flag), "flag"), "port")
    eq(c["max-seqs"], ("5", "env ADAPTREE_MAX_SEQS"), "max-seqs")
    eq(c["queue-limit"], ("7", f"file {conf}:4"), "queue-limit")
    eq(c["prefill-chunk"], ("256", "default"), "prefill-chunk")
    c = print_config(["--config", conf], env)
    eq(c["port"], (str(p_env), "env ADAPTREE_PORT"), "port without the flag")
    # the real server: the environment's port beats the file's
    log = open(tmp_path / "precedence.log", "wb")
    proc = subprocess.Popen([e2e.ADAPTREE, "serve", "--config", conf, "--host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=e2e.ROOT, env=serve_env(env))
    try:
        def healthy():
            check(proc.poll() is None, f"serve exited with {proc.returncode}")
            try:
                return e2e.request(p_env, "GET", "/health", timeout=2).status == 200
            except OSError:
                return False

        e2e.wait_until(healthy, 60, "the server on the environment's port")
        try:
            e2e.request(p_file, "GET", "/health", timeout=2)
            raise e2e.Fail(f"something answers on the file's port {p_file}")
        except OSError:
            pass
        proc.send_signal(signal.SIGTERM)
        eq(proc.wait(30 * e2e.SLOW), 0, "exit status on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@suite.test
def config_refusals_name_their_source(tmp_path):
    conf = str(tmp_path / "bad.conf")
    with open(conf, "w") as f:
        f.write("port = 80\n\nmax-seqs = many\n")
    for args, env, want in (
            (["--config", conf], {}, f"serve: {conf}:3: bad value 'many' for --max-seqs"),
            ([], {"ADAPTREE_PORT": "abc"}, "serve: ADAPTREE_PORT=abc: bad value 'abc' for --port"),
            (["--port", "abc"], {}, "serve: bad value 'abc' for --port")):
        r = subprocess.run([e2e.ADAPTREE, "serve", "--print-config"] + args, capture_output=True,
                           text=True, timeout=30, env=serve_env(env), cwd=e2e.ROOT)
        eq(r.returncode, 2, f"exit status of {args} {env}")
        check(r.stderr.startswith(want), f"stderr {r.stderr!r} does not start with {want!r}")


PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


@suite.test
def cors_answers():
    for path, key, status in (("/version", KEY, 200), ("/version", None, 401),
                              ("/health", None, 200)):
        r = S.req("GET", path, key=key, headers={"Origin": ORIGIN})
        eq(r.status, status, f"GET {path}")
        eq(r.headers.get("access-control-allow-origin"), ORIGIN, f"ACAO of GET {path}")
        check("origin" in r.headers.get("vary", "").lower(), f"Vary of GET {path}: {r.headers}")
    r = S.req("GET", "/health", headers={"Origin": "https://evil.example"})
    check("access-control-allow-origin" not in r.headers, f"ACAO for another origin: {r.headers}")
    r = S.req("GET", "/health")
    check("access-control-allow-origin" not in r.headers, f"ACAO without Origin: {r.headers}")
    # a completion from the page, as a browser's fetch sends it after the preflight
    r = S.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key=KEY,
               headers={"Origin": "https://other.example"})
    eq(r.status, 200, "POST /v1/completions")
    eq(r.headers.get("access-control-allow-origin"), "https://other.example", "ACAO")
    check("x-request-id" in r.headers.get("access-control-expose-headers", "").lower(),
          f"the page may read X-Request-Id: {r.headers}")


@suite.test
def cors_preflight():
    for path, method in (("/v1/completions", "POST"), ("/v1/chat/completions", "POST"),
                         ("/metrics", "GET"), ("/v1/models/base", "GET")):
        r = S.req("OPTIONS", path, headers=PREFLIGHT)  # no key: browsers send none
        eq(r.status, 204, f"OPTIONS {path}")
        eq(r.data, b"", f"body of OPTIONS {path}")
        eq(r.headers.get("access-control-allow-origin"), ORIGIN, f"ACAO of OPTIONS {path}")
        methods = [m.strip() for m in r.headers.get("access-control-allow-methods", "").split(",")]
        check(method in methods and "OPTIONS" in methods, f"Allow-Methods of {path}: {methods}")
        hdrs = r.headers.get("access-control-allow-headers", "").lower()
        for h in ("authorization", "content-type", "x-request-id"):
            check(h in hdrs, f"Allow-Headers of {path} lacks {h}: {hdrs}")
        check(int(r.headers.get("access-control-max-age", "0")) > 0, f"Max-Age: {r.headers}")
    r = S.req("OPTIONS", "/v1/completions", headers=dict(PREFLIGHT, Origin="https://evil.example"))
    check("access-control-allow-origin" not in r.headers, f"preflight of another origin: {r.headers}")
    eq(S.req("OPTIONS", "/nowhere", headers=PREFLIGHT).status, 404, "OPTIONS of an unknown path")


@suite.test
def no_cors_without_the_flag():
    r = T.req("GET", "/health", headers={"Origin": ORIGIN})
    eq(r.status, 200, "GET /health")
    check(not any(k.startswith("access-control-") for k in r.headers), f"{r.headers}")
    r = T.req("OPTIONS", "/v1/completions", headers=PREFLIGHT)
    eq(r.status, 405, "OPTIONS without --cors-origin (as before)")
    eq(r.headers.get("allow"), "POST", "Allow")
    check(not any(k.startswith("access-control-") for k in r.headers), f"{r.headers}")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
