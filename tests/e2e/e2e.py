"""The end-to-end harness: starts a real `$BUILD/adaptree serve` on a free 127.0.0.1 port, talks
to it with plain http.client (so every byte sent is under the test's control), and runs a list of
test functions with a tiny runner whose last line is "N passed, N failed, N skipped"
(tools/run_tests.sh).

Every suite is bounded: each HTTP call has a timeout, the whole suite has an alarm, and the
server is always stopped (try/finally, plus PR_SET_PDEATHSIG so it dies with the runner even if
the runner is killed). Under a sanitizer build (BUILD contains "asan"/"tsan") every timeout is
multiplied by SLOW. Stopping the server is itself a test: SIGTERM must make it exit 0 without
a sanitizer report.

Environment: BUILD (default build), ADAPTREE_MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf),
E2E_VERBOSE=1 prints the server log of failing suites in full.
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
import traceback

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


# ---- the runner ----------------------------------------------------------------------------


class Suite:
    """Tests run in order; a failing test prints why and the run goes on. The last line is
    "N passed, N failed, N skipped". budget: seconds for the whole suite (times SLOW)."""

    def __init__(self, name, budget=120):
        self.name = name
        self.budget = budget
        self.tests = []
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.servers = []
        self.tmp = tempfile.mkdtemp(prefix=f"adaptree-e2e-{name}-")

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def server(self, *a, **kw):
        s = Server(*a, **kw)
        self.servers.append(s)
        return s

    def record(self, name, ok, detail="", t=0.0):
        if ok:
            self.passed += 1
            print(f"ok   {self.name}: {name} ({t:.1f}s)", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {self.name}: {name}: {detail}", flush=True)

    def run_one(self, fn):
        t0 = time.time()
        try:
            fn()
            self.record(fn.__name__, True, t=time.time() - t0)
        except Skip as e:
            self.skipped += 1
            print(f"skip {self.name}: {fn.__name__}: {e}", flush=True)
        except Fail as e:
            self.record(fn.__name__, False, str(e))
        except Exception as e:  # a test that crashes is a failed test, with its traceback
            self.record(fn.__name__, False,
                        f"{type(e).__name__}: {e}\n" + traceback.format_exc(limit=4))

    def check_shutdown(self, s):
        """SIGTERM exits 0 with no sanitizer report: a test of its own."""
        t0 = time.time()
        if s.proc is None or not s.ready:  # a failed start is the failure of the test that made it
            return
        if s.proc.poll() is not None and s.exit_code is None:
            s.exit_code = s.proc.returncode
            self.record(f"{s.name} still running at the end", False,
                        f"it had exited with {s.exit_code}\n{s.log_tail()}")
            return
        rc = s.stop()
        san = s.sanitizer_report()
        ok = rc == 0 and san is None
        self.record(f"{s.name} exits 0 on SIGTERM, no sanitizer report", ok,
                    f"exit {rc}, sanitizer: {san}\n{s.log_tail(60)}", time.time() - t0)

    def main(self, setup=None):
        """setup() starts the servers (via self.server(...).start()); then every test runs."""

        def on_alarm(signum, frame):
            raise TimeoutError(f"suite budget of {self.budget * SLOW:.0f} s exceeded")

        def on_term(signum, frame):
            raise KeyboardInterrupt("terminated")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.signal(signal.SIGTERM, on_term)
        signal.alarm(int(self.budget * SLOW))
        done = 0
        t0 = time.time()
        try:
            if not os.access(ADAPTREE, os.X_OK):
                raise Fail(f"{ADAPTREE} is missing: build it first (make BUILD={BUILD})")
            if not os.path.exists(MODEL):
                raise Fail(f"{MODEL} is missing: make model")
            if setup:
                setup()
            for fn in self.tests:
                self.run_one(fn)
                done += 1
            for s in self.servers:
                if s.exit_code is None:
                    self.check_shutdown(s)
        except (Fail, TimeoutError, KeyboardInterrupt) as e:
            self.record("suite", False, f"{e}")
            left = len(self.tests) - done
            if left > 0:
                print(f"FAIL {self.name}: {left} test(s) not run", flush=True)
        finally:
            signal.alarm(0)
            bad = self.failed > 0
            n_log = 100000 if os.environ.get("E2E_VERBOSE") else 80
            for s in self.servers:
                if bad and s.log_path:
                    print(f"--- {s.name} log (tail) ---\n{s.log_tail(n_log)}")
                s.cleanup()
            shutil.rmtree(self.tmp, ignore_errors=True)
        print(f"{self.name}: {time.time() - t0:.1f} s")
        print(f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped", flush=True)
        return 0 if self.failed == 0 else 1
