"""The end-to-end harness: helpers for the pytest suites tests/e2e/test_*.py. A Server starts a
real `$BUILD/adaptree serve` on a free 127.0.0.1 port; request() and stream() talk to it with plain
http.client (so every byte sent is under the test's control); check(), eq(), wait_until() and
friends fail a test with a message (Fail); Skip skips it.

A suite module makes `suite = e2e.Suite("name", budget=...)`, may define setup() that starts its
shared servers with suite.server([...]).start() into module globals, and registers its tests in
order with @suite.test. tests/e2e/conftest.py turns that into pytest: the registered functions
(only those) are collected in their order, so -k selects them and --junitxml reports them; a
module fixture runs setup() once (a setup that fails fails every test of the module; Skip in it
skips them), arms the suite's budget, and one more test per module that has a setup(),
`servers_exit_0_on_sigterm`, checks that SIGTERM makes every server still running exit 0 without
a sanitizer report. Tests may also take the fixtures `registry`, `registry_factory` and
`server_factory` (a server started for that test alone, checked the same way at its teardown).
The run's last line is "N passed, N failed, N skipped" (tools/run_tests.sh sums it).

Every suite is bounded: each HTTP call has a timeout, the whole suite has an alarm (the test
running then fails, the ones left fail as not run; past a further grace the run exits), and every
server is always stopped (fixture teardown, plus PR_SET_PDEATHSIG so it dies with the runner even
if the runner is killed). Under a sanitizer build (BUILD contains "asan"/"tsan") every timeout is
multiplied by SLOW.

Run one suite: sh tests/e2e/run_NAME.sh [pytest args, e.g. -k expr] (or E2E_K=expr), or
.venv/bin/python -m pytest tests/e2e/test_NAME.py; the run_*.sh scripts write JUnit XML to
$BUILD/e2e-junit/NAME.xml. `python tests/e2e/test_NAME.py` runs that file under pytest too.

Environment: BUILD (default build), ADAPTREE_MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf),
E2E_VERBOSE=1 prints the server logs of failing suites in full (else their last 80 lines).
"""

import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")
BUILD_DIR = BUILD if os.path.isabs(BUILD) else os.path.join(ROOT, BUILD)
ADAPTREE = os.path.join(BUILD_DIR, "adaptree")
MODEL = os.environ.get("ADAPTREE_MODEL",
                       os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
REGISTRY = os.path.join(ROOT, "registry")
FIXTURES = os.path.join(ROOT, "tests", "golden", "fixtures", "adapters")
CLIENTS = os.path.join(ROOT, "clients")
SLOW = 5.0 if any(s in BUILD for s in ("asan", "tsan")) else 1.0
BASE_ID = "SmolLM2-135M-Instruct"

sys.path.insert(0, CLIENTS)


class Fail(AssertionError):
    pass


class Skip(Exception):
    """Raised by a test that cannot run on this machine (a CPU feature it needs is missing)."""


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def eq(got, want, what):
    if got != want:
        raise Fail(f"{what}: expected {want!r}, got {got!r}")


# ---- the server ----------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: the server gets SIGKILL if the test runner dies.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def advertised_base_id(server, key=None):
    """The base model's id as /v1/models lists it (the entry that is not a registry node)."""
    d = server.req("GET", "/v1/models", key=key).json()
    for m in d.get("data", []):
        if not m.get("parent") and "rank" not in m and "state" not in m:
            return m["id"]
    return BASE_ID


def make_registry(tmp, fixtures=True):
    """A private copy of registry/ (fr, fr/manpages, fr/manpages/alice, de, de/witze) plus the
    golden PEFT fixtures under fx/ (qv_r4, all_rslora_r8, patterns, regex_gate_up)."""
    reg = os.path.join(tmp, "reg")
    shutil.copytree(REGISTRY, reg, ignore=shutil.ignore_patterns("*.md"))
    if fixtures:
        os.makedirs(os.path.join(reg, "fx"))
        for name in ("qv_r4", "all_rslora_r8", "patterns", "regex_gate_up"):
            shutil.copytree(os.path.join(FIXTURES, name), os.path.join(reg, "fx", name))
    return reg


class Server:
    def __init__(self, args=(), registry=None, name="server", env=None, model=None):
        self.args = list(args)
        self.model = model or MODEL
        self.registry = registry
        self.name = name
        self.env = env
        self.port = None
        self.proc = None
        self.log_path = None
        self.exit_code = None
        self.ready = False  # answered /health once; a server refused at start-up never is

    def start(self, timeout=60, port=None):
        """Starts the server (on port, e.g. its old one for a restart; else a free one) and waits
        for /health."""
        if not os.access(ADAPTREE, os.X_OK):
            raise Fail(f"{ADAPTREE} is missing: build it first (make BUILD={BUILD})")
        if not os.path.exists(self.model):
            raise Fail(f"{self.model} is missing: make model")
        self.port = port or free_port()
        self.exit_code = None
        fd, self.log_path = tempfile.mkstemp(prefix=f"adaptree-e2e-{self.name}-", suffix=".log")
        cmd = [ADAPTREE, "serve", "--host", "127.0.0.1", "--port", str(self.port), "-m", self.model]
        cmd += ["--registry", self.registry] if self.registry else ["--no-registry"]
        cmd += self.args
        env = {k: v for k, v in os.environ.items()
               if k not in ("ADAPTREE_API_KEY", "ADAPTREE_ADMIN_KEY")}  # serve reads them
        env.update(self.env or {})
        with os.fdopen(fd, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                                         preexec_fn=_die_with_parent)
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Fail(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                           + self.log_tail())
            try:
                r = request(self.port, "GET", "/health", timeout=2)
                if r.status == 200:
                    self.ready = True
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise Fail(f"{self.name} not healthy after {timeout * SLOW:.0f} s:\n" + self.log_tail())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals the server and waits; SIGKILL after the timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = "killed after timeout"
                return self.exit_code
        self.exit_code = self.proc.returncode
        return self.exit_code

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, n=40):
        return "\n".join("    | " + l for l in self.log().splitlines()[-n:])

    def sanitizer_report(self):
        for pat in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer"):
            if pat in self.log():
                return pat
        return None

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log_path and os.path.exists(self.log_path):
            os.unlink(self.log_path)

    # shorthands
    def req(self, method, path, body=None, **kw):
        return request(self.port, method, path, body, **kw)

    def post(self, path, body, **kw):
        return request(self.port, "POST", path, body, **kw)

    def url(self):
        return f"http://127.0.0.1:{self.port}"


# ---- HTTP ----------------------------------------------------------------------------------


class Resp:
    def __init__(self, status, headers, data):
        self.status = status
        self.headers = headers
        self.data = data

    def json(self):
        try:
            return json.loads(self.data)
        except ValueError:
            raise Fail(f"HTTP {self.status}: body is not JSON: {self.data[:300]!r}")

    def __repr__(self):
        return f"<HTTP {self.status} {self.data[:300]!r}>"


def request(port, method, path, body=None, headers=None, key=None, timeout=60):
    """One request; body may be bytes/str (sent as is) or an object (sent as JSON)."""
    h = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    if body is not None:
        h.setdefault("Content-Type", "application/json")
    if key:
        h["Authorization"] = "Bearer " + key
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLOW)
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def stream(port, path, body, key=None, timeout=60, on_event=None):
    """A streaming request. Returns (status, events, raw) where events are the decoded JSON
    chunks plus the string "[DONE]"; on_event(i, event) is called as each arrives."""
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLOW)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=h)
        r = conn.getresponse()
        if r.status != 200:
            return r.status, [], r.read()
        ctype = r.getheader("Content-Type") or ""
        check("text/event-stream" in ctype, f"stream Content-Type {ctype!r}")
        events = []
        import client as _c  # clients/client.py: the SSE reader

        for data in _c.iter_sse(r):
            ev = data if data == "[DONE]" else json.loads(data)
            events.append(ev)
            if on_event:
                on_event(len(events) - 1, ev)
            if ev == "[DONE]":
                break
        return 200, events, b""
    finally:
        conn.close()


def stream_text(events):
    out = []
    for ev in events:
        if ev == "[DONE]":
            continue
        for c in ev.get("choices") or []:
            piece = c.get("text")
            if piece is None:
                piece = (c.get("delta") or {}).get("content")
            if piece:
                out.append(piece)
    return "".join(out)


def stream_finish(events):
    fin = None
    for ev in events:
        if ev != "[DONE]":
            for c in ev.get("choices") or []:
                fin = c.get("finish_reason") or fin
    return fin


def text_of(resp_json):
    c = resp_json["choices"][0]
    return c["text"] if "text" in c else c["message"]["content"]


def check_error(r, status, code=None, what="", statuses=None):
    """r is an HTTP error with OpenAI's error object {"error": {"message", "type", ...}}."""
    ok = (r.status in statuses) if statuses else (r.status == status)
    check(ok, f"{what}: expected HTTP {statuses or status}, got {r}")
    d = r.json()
    check(isinstance(d, dict) and isinstance(d.get("error"), dict),
          f"{what}: no error object: {d!r}")
    e = d["error"]
    check(isinstance(e.get("message"), str) and e["message"], f"{what}: empty message: {e!r}")
    check(isinstance(e.get("type"), str) and e["type"], f"{what}: no type: {e!r}")
    if code is not None:
        eq(e.get("code"), code, f"{what}: error.code")
    return e


def metrics(server, key=None):
    import client as _c

    r = server.req("GET", "/metrics", key=key)
    check(r.status == 200, f"/metrics: {r}")
    return _c.parse_metrics(r.data.decode())


def metric_sum(m, pred):
    """Sum of unlabelled series whose name satisfies pred(name); None if there is none."""
    vals = [v for (name, labels), v in m.items() if not labels and pred(name)]
    return sum(vals) if vals else None


def running_gauge(m):
    return metric_sum(m, lambda n: n.startswith("adaptree_") and ("running" in n))


def adapter_node(server, node_id, key=None, must_exist=True):
    """The node's entry in the server's GET /v1/adapters (key: the admin key when it has one). A
    node not listed fails the test, or is None when must_exist is False."""
    r = server.req("GET", "/v1/adapters", key=key)
    eq(r.status, 200, "GET /v1/adapters")
    n = find_node(r.json(), node_id)
    check(n is not None or not must_exist,
          f"{node_id} not in /v1/adapters: {r.data[:400]!r}")
    return n


def find_node(obj, node_id):
    """The object with "id" == node_id anywhere in a JSON tree (lists, dicts, children)."""
    if isinstance(obj, dict):
        if obj.get("id") == node_id:
            return obj
        for v in obj.values():
            f = find_node(v, node_id)
            if f is not None:
                return f
    elif isinstance(obj, list):
        for v in obj:
            f = find_node(v, node_id)
            if f is not None:
                return f
    return None


def wait_until(fn, timeout, what, interval=0.2):
    """Polls fn() until it returns a truthy value; returns it, or fails with what."""
    deadline = time.time() + timeout * SLOW
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise Fail(f"timed out after {timeout * SLOW:.0f} s waiting for {what} (last: {last!r})")


class Background:
    """Runs fn in a thread; .result() re-raises its exception."""

    def __init__(self, fn, *args, **kw):
        self.value, self.exc = None, None

        def run():
            try:
                self.value = fn(*args, **kw)
            except BaseException as e:  # noqa: B902 - handed to the test thread
                self.exc = e

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def result(self, timeout=120):
        self.t.join(timeout * SLOW)
        if self.t.is_alive():
            raise Fail("background call did not finish")
        if self.exc:
            raise self.exc
        return self.value


# ---- the suite ---------------------------------------------------------------------------


def shutdown_check(s):
    """SIGTERM must make a server exit 0 with no sanitizer report. Returns None when there is
    nothing to check (never started, refused at start-up: that is the failure of the test that
    started it; already stopped by its test), else (ok, what it found)."""
    if s.proc is None or not s.ready or s.exit_code is not None:
        return None
    if s.proc.poll() is not None:
        s.exit_code = s.proc.returncode
        return False, f"{s.name} is not running at the end: it had exited with {s.exit_code}\n" \
            + s.log_tail()
    rc = s.stop()
    san = s.sanitizer_report()
    if rc == 0 and san is None:
        return True, f"{s.name} exits 0 on SIGTERM, no sanitizer report"
    return False, f"{s.name}: exit {rc} on SIGTERM, sanitizer: {san}\n{s.log_tail(60)}"


class Suite:
    """One suite module's state: its name, its budget (seconds for the whole suite, times SLOW),
    its tests in order (@suite.test), the servers it started (suite.server: their logs are
    printed when a test fails, and they are stopped at the end) and a temporary directory
    (suite.tmp, made on first use, removed at the end). tests/e2e/conftest.py runs it."""

    def __init__(self, name, budget=120):
        self.name = name
        self.budget = budget
        self.tests = []
        self.servers = []
        self._tmp = None
        self.expired = False  # the budget ran out: the tests left fail as not run

    @property
    def tmp(self):
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix=f"adaptree-e2e-{self.name}-")
        return self._tmp

    def test(self, fn):
        """Registers fn as the suite's next test: pytest collects it (by its name) in this order."""
        fn._e2e_test = True
        self.tests.append(fn)
        return fn

    def server(self, *a, **kw):
        s = Server(*a, **kw)
        self.servers.append(s)
        return s

    def cleanup(self):
        """Kills what is still running, removes the logs and the temporary directory."""
        for s in self.servers:
            s.cleanup()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def run_file(path):
    """`python tests/e2e/test_x.py [pytest args]`: runs that one file under pytest."""
    import pytest

    return pytest.main([path, "-v", *sys.argv[1:]])
