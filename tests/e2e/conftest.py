"""pytest plumbing of the e2e suites (tests/e2e/test_*.py; e2e.py's docstring says how a suite is
written, README "Tests" how to run one).

- Collection: the functions a module registered with @suite.test, in that order, and nothing
  else (pytest.ini collects nothing by name); after them, in every module that has a setup(),
  one more test, `servers_exit_0_on_sigterm`, kept whatever -k selects.
- The module fixture `e2e_suite` (autouse) arms the suite's budget and runs setup() once: a
  setup that fails fails every test of the module, e2e.Skip in it skips them. Its teardown
  stops whatever is still running and keeps the last lines of every server log when a test of
  the module failed, printed after the failures (E2E_VERBOSE=1: whole logs).
- The budget: SIGALRM after suite.budget * SLOW seconds raises TimeoutError in the test (or
  setup, or teardown) running then; the tests left fail as not run (their bodies are not called;
  the suite's shutdown test still runs). If the run is still not done 60 * SLOW seconds later,
  it prints its counts and exits 1 (the servers die with it: PR_SET_PDEATHSIG). SIGTERM interrupts the run like ^C (teardowns still run).
- e2e.Skip in a test is a pytest skip; e2e.Fail an ordinary failure with its message.
- Fixtures: registry / registry_factory (a private copy of registry/ for one test) and
  server_factory (servers for one test, stopped and checked at its teardown).
- The last line of the output is "N passed, N failed, N skipped" (tools/run_tests.sh reads it):
  a test counts once, as failed if any of its phases failed (a teardown error too); a module
  that cannot be imported and an interrupted run count as one failure each.
"""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402

SHUTDOWN = "servers_exit_0_on_sigterm"


class _State:
    def __init__(self):
        self.outcome = {}  # nodeid -> "passed" | "failed" | "skipped"
        self.failed_files = set()  # node ids of the modules with a failed test
        self.logs = []  # (title, text) printed in the terminal summary
        self.suites = []  # every suite set up, swept at the end
        self.suite = None  # the suite whose budget runs
        self.in_phase = False  # a test's setup, call or teardown is running
        self.exitstatus = 0  # pytest's, at the end of the session
        self.config = None

    def counts(self):
        vals = list(self.outcome.values())
        return vals.count("passed"), vals.count("failed"), vals.count("skipped")

    def last_line(self, extra_failed=0):
        p, f, s = self.counts()
        return f"{p} passed, {f + extra_failed} failed, {s} skipped"


STATE = _State()


# ---- signals: the budget and SIGTERM ------------------------------------------------------------


def _grace():
    return int(60 * e2e.SLOW)


def _on_alarm(signum, frame):
    suite = STATE.suite
    if suite is not None and not suite.expired:
        suite.expired = True
        signal.alarm(_grace())  # the backstop, if even that does not end it
        if STATE.in_phase:
            raise TimeoutError(f"suite {suite.name}: budget of {suite.budget * e2e.SLOW:.0f} s "
                               "exceeded")
        return
    # Past the budget and its grace: whatever hangs will not come back. Give up on the run,
    # on the real stdout (pytest's capture holds fd 1 while a test runs), what was captured first.
    capman = STATE.config.pluginmanager.getplugin("capturemanager") if STATE.config else None
    if capman is not None:
        try:
            capman.suspend_global_capture(in_=True)
            out, err = capman.read_global_capture()
            sys.stdout.write(out + err)
        except Exception:  # noqa: BLE001 - the exit below matters more
            pass
    sys.stdout.write(f"\nFAIL e2e: suite {suite.name if suite else '?'} still running "
                     f"{_grace()} s after its budget ran out: giving up\n")
    for s in suite.servers if suite else []:
        if getattr(s, "log_path", None):
            sys.stdout.write(f"--- {suite.name}: {s.name} log (tail) ---\n{s.log_tail(80)}\n")
    sys.stdout.write(STATE.last_line(extra_failed=1) + "\n")
    sys.stdout.flush()
    os._exit(1)  # the servers get SIGKILL with it (PR_SET_PDEATHSIG)


def _on_term(signum, frame):
    raise KeyboardInterrupt("terminated (SIGTERM)")


def pytest_configure(config):
    STATE.config = config
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)


# ---- collection ---------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector, name, obj):
    if isinstance(collector, pytest.Module) and getattr(obj, "_e2e_test", False) \
            and callable(obj):
        return pytest.Function.from_parent(collector, name=name)
    return None


def _suite_of(module_node):
    suite = getattr(module_node.obj, "suite", None)
    return suite if isinstance(suite, e2e.Suite) else None


def _servers_exit_0_on_sigterm(e2e_suite, record_property):
    """SIGTERM makes every server still running exit 0, with no sanitizer report (each one's
    result is also a property of this test in the JUnit XML)."""
    bad = []
    for s in e2e_suite.servers:
        if not isinstance(s, e2e.Server):
            continue  # e.g. the cluster suite's HAProxy: stopped at the teardown
        r = e2e.shutdown_check(s)
        if r is None:
            continue
        ok, what = r
        print(("ok   " if ok else "FAIL ") + what.splitlines()[0], flush=True)
        record_property(s.name, "ok" if ok else what.splitlines()[0])
        if not ok:
            bad.append(what)
    if bad:
        raise e2e.Fail("\n".join(bad))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Appends each module's shutdown test after its last selected test (after -k: it is kept
    whenever anything of its module runs, since it stops that module's servers)."""
    out = []
    for i, item in enumerate(items):
        out.append(item)
        mod = item.getparent(pytest.Module)
        nxt = items[i + 1].getparent(pytest.Module) if i + 1 < len(items) else None
        if mod is not None and nxt is not mod and _suite_of(mod) is not None \
                and callable(getattr(mod.obj, "setup", None)):
            out.append(pytest.Function.from_parent(mod, name=SHUTDOWN,
                                                   callobj=_servers_exit_0_on_sigterm))
    items[:] = out


# ---- the suite fixture --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def e2e_suite(request):
    """The module's e2e.Suite, its setup() run once under the suite's budget."""
    mod = request.module
    suite = getattr(mod, "suite", None)
    if not isinstance(suite, e2e.Suite):
        yield None
        return
    STATE.suite = suite
    STATE.suites.append(suite)
    suite.expired = False
    signal.alarm(max(1, int(suite.budget * e2e.SLOW)))
    try:
        setup = getattr(mod, "setup", None)
        if callable(setup):
            try:
                setup()
            except e2e.Skip as e:
                pytest.skip(f"{suite.name}: {e}")
        yield suite
    finally:
        signal.alarm(0)
        if request.node.nodeid in STATE.failed_files:
            n = 100000 if os.environ.get("E2E_VERBOSE") else 80
            for s in suite.servers:
                if getattr(s, "log_path", None):
                    STATE.logs.append((f"{suite.name}: {s.name} log (tail)", s.log_tail(n)))
        suite.cleanup()
        STATE.suite = None


@pytest.fixture
def registry_factory(tmp_path):
    """registry_factory(fixtures=False): a new private copy of registry/ (fr, fr/manpages,
    fr/manpages/alice, de, de/witze; with fixtures=True also the golden PEFT fixtures under fx/)
    in this test's temporary directory."""
    n = [0]

    def make(fixtures=False):
        n[0] += 1
        d = tmp_path / f"registry-{n[0]}"
        d.mkdir()
        return e2e.make_registry(str(d), fixtures=fixtures)

    return make


@pytest.fixture
def registry(registry_factory):
    """A private copy of registry/ for this test (no golden fixtures)."""
    return registry_factory()


@pytest.fixture
def server_factory(request, e2e_suite):
    """server_factory(args=(), registry=None, name="server", env=None, model=None, timeout=60):
    starts an e2e.Server for this test and returns it once /health answers. At the test's
    teardown every one still running gets SIGTERM and must exit 0 with no sanitizer report (a
    teardown failure of the test otherwise); its log is printed if the suite fails."""
    made = []

    def start(args=(), registry=None, name="server", env=None, model=None, timeout=60):
        s = e2e.Server(args, registry=registry, name=name, env=env, model=model)
        if e2e_suite is not None:
            e2e_suite.servers.append(s)  # log printed on failure, killed at the suite's end
        made.append(s)
        return s.start(timeout=timeout)

    yield start
    bad = []
    for s in made:
        r = e2e.shutdown_check(s)
        if r is not None and not r[0]:
            bad.append(r[1])
        if e2e_suite is None:
            s.cleanup()
    if bad:
        pytest.fail("\n".join(bad), pytrace=False)


# ---- running ------------------------------------------------------------------------------------


# Each phase of a test (setup, call, teardown) is marked as running: a budget running out then
# raises in it; between tests pytest's own code is never interrupted.
def _phase():
    STATE.in_phase = True
    try:
        return (yield)
    finally:
        STATE.in_phase = False


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    return (yield from _phase())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    suite = STATE.suite
    if suite is not None and suite.expired and item.name != SHUTDOWN \
            and _suite_of(item.getparent(pytest.Module)) is suite:
        pytest.fail(f"not run: the budget of suite {suite.name} "
                    f"({suite.budget * e2e.SLOW:.0f} s) ran out", pytrace=False)
    return (yield from _phase())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _phase())


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    try:
        return (yield)
    except e2e.Skip as e:
        raise pytest.skip.Exception(str(e), _use_item_location=True) from None


def pytest_runtest_logreport(report):
    nid, was = report.nodeid, STATE.outcome.get(report.nodeid)
    if report.failed:
        STATE.outcome[nid] = "failed"
        STATE.failed_files.add(nid.split("::")[0])
    elif report.skipped and was != "failed":
        STATE.outcome[nid] = "skipped"
    elif report.when == "call" and report.passed and was is None:
        STATE.outcome[nid] = "passed"


def pytest_collectreport(report):
    if report.failed:
        STATE.outcome[report.nodeid or "<collection>"] = "failed"


def pytest_terminal_summary(terminalreporter):
    for title, text in STATE.logs:
        terminalreporter.section(title, sep="-")
        terminalreporter.line(text)


def pytest_sessionfinish(session, exitstatus):
    STATE.exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    for suite in STATE.suites:  # an interrupted run: nothing outlives it
        suite.cleanup()
    if config.option.collectonly:
        return
    # Interrupted (SIGTERM, ^C) or an internal error: that is one failure more.
    broken = STATE.exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
    sys.stdout.write(STATE.last_line(extra_failed=int(broken)) + "\n")
    sys.stdout.flush()
