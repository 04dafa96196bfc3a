"""End-to-end connection limits and deadlines against a real server: 600 slow connections from
one address (one header byte a second each, reconnecting whenever the server closes one) while
/health and a keyed completion keep answering within 1 s; a request head that trickles in is cut
at --header-timeout however many bytes come; a late body gets 408 at --body-timeout; every
ordinary connection busy: the reserve serves /health and keyed requests only; one address at its
--max-connections-per-ip cap evicts its own waiting connections, not another address's; past the
reserve a connection gets 503 and is closed."""

import socket
import sys
import threading
import time

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("conns", budget=240)
KEY = "conns-key"
BODY = {"prompt": "Count from 1 to 1000: 1, 2, 3, 4, 5,", "max_tokens": 2, "temperature": 0}
FLOOD = None   # --api-key, --header-timeout 4
DEAD = None    # short deadlines
SMALL = None   # --max-connections 3, no per-address cap, no key
KEYED = None   # --max-connections 3, no per-address cap, --api-key
PERIP = None   # --max-connections-per-ip 4


def setup():
    global FLOOD, DEAD, SMALL, KEYED, PERIP
    FLOOD = suite.server(["--api-key", KEY, "--header-timeout", "4"], name="server-flood").start()
    DEAD = suite.server(["--header-timeout", "2", "--body-timeout", "2"],
                        name="server-deadlines").start()
    SMALL = suite.server(["--max-connections", "3", "--max-connections-per-ip", "0",
                          "--max-seqs", "16"], name="server-maxconn3").start()
    KEYED = suite.server(["--max-connections", "3", "--max-connections-per-ip", "0",
                          "--max-seqs", "16", "--api-key", KEY],
                         name="server-maxconn3-keyed").start()
    PERIP = suite.server(["--max-connections-per-ip", "4", "--max-seqs", "16"],
                         name="server-perip4").start()


def connect(port, src="127.0.0.1", blocking=True):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    if blocking:
        s.settimeout(10 * e2e.SLOW)
        s.connect(("127.0.0.1", port))
    else:
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
    return s


def closed_by_server(s, wait):
    """True when the server closes s (EOF or reset) within wait seconds; the bytes it sent
    before closing are ignored."""
    s.settimeout(0.1)
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            if s.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def read_answer(s, wait):
    """Everything the server sends on s until it closes it (or wait seconds pass)."""
    s.settimeout(0.2)
    buf = b""
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            b = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not b:
            break
        buf += b
    return buf


class Flood:
    """n connections from one address that each send one byte of a request head per second
    (half of them send nothing at all); those the server closed are reopened after each round's
    scan, not during it: the server evicts the oldest, which the scan would otherwise reach and
    reopen in the same round, each reopening evicting the next, until no connection lived long
    enough to meet the header timeout (a flake: every close "evicted", none "header_timeout")."""

    HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000000

    def __init__(self, port, n):
        self.port, self.n = port, n
        self.reopened = 0
        self.stop = threading.Event()
        self.socks = [[connect(port, blocking=False), 0] for _ in range(n)]
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            t0 = time.time()
            closed = []
            for k, e in enumerate(self.socks):
                s, sent = e
                try:
                    if k % 2:
                        s.send(self.HEAD[sent:sent + 1])
                        e[1] += 1
                    elif s.recv(1, socket.MSG_PEEK) == b"":
                        raise ConnectionResetError
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed.append(e)
            for e in closed:
                e[0].close()
                self.reopened += 1
                e[0], e[1] = connect(self.port, blocking=False), 0
            self.stop.wait(max(0.0, 1.0 - (time.time() - t0)))

    def close(self):
        self.stop.set()
        self.t.join(10)
        for s, _ in self.socks:
            s.close()


def timed(fn):
    t0 = time.time()
    r = fn()
    return r, time.time() - t0


@suite.test
def slow_connections_do_not_lock_out_health_and_keyed_requests():
    """600 slow connections from 127.0.0.1 (more than the per-address cap of 512, and enough to
    have filled the old fixed limit of 512): for 12 s, /health and a keyed completion from the
    same address answer 200 within 1 s, every time."""
    flood = Flood(FLOOD.port, 600)
    worst = {"health": 0.0, "completion": 0.0}
    try:
        time.sleep(2)   # every flood connection is open and trickling
        t_end = time.time() + 12
        n = 0
        while time.time() < t_end:
            r, dt = timed(lambda: FLOOD.req("GET", "/health", timeout=5))
            eq(r.status, 200, "/health during the flood")
            worst["health"] = max(worst["health"], dt)
            r, dt = timed(lambda: FLOOD.post("/v1/completions", BODY, key=KEY, timeout=5))
            eq(r.status, 200, f"keyed completion during the flood: {r}")
            worst["completion"] = max(worst["completion"], dt)
            n += 1
            time.sleep(0.3)
    finally:
        flood.close()
    m = e2e.metrics(FLOOD, key=KEY)
    closed = {lbl: v for (name, lbl), v in m.items() if name == "adaptree_connections_closed_total"}
    got = {dict(lbl).get("reason"): v for lbl, v in closed.items()}
    print(f"    {n} rounds; slowest /health {worst['health'] * 1e3:.0f} ms, slowest keyed "
          f"completion {worst['completion'] * 1e3:.0f} ms (limit 1000 ms); the server closed "
          f"{flood.reopened} flood connections, by reason {got}")
    for what, dt in worst.items():
        check(dt < 1.0 * e2e.SLOW, f"slowest {what} took {dt:.3f} s during the flood")
    check(flood.reopened >= 88, f"the server closed only {flood.reopened} of the 600 slow "
          "connections (88 over the per-address cap, and the rest at --header-timeout 4)")
    check(got.get("evicted", 0) > 0 and got.get("header_timeout", 0) > 0,
          f"adaptree_connections_closed_total by reason: {got}")


@suite.test
def a_trickling_head_is_cut_at_the_header_timeout():
    """--header-timeout 2: a connection that sends a header byte every 0.2 s (which would reset
    an idle timer forever) is closed 2 s after it opened; an idle one too."""
    trickle = connect(DEAD.port)
    idle = connect(DEAD.port)
    t0 = time.time()
    trickle.settimeout(0.2)
    gone = None
    for i, b in enumerate(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100):
        try:
            trickle.send(bytes([b]))
            if trickle.recv(1) == b"":
                gone = time.time() - t0
                break
        except socket.timeout:
            continue
        except OSError:
            gone = time.time() - t0
            break
    check(gone is not None, "the trickling connection was never closed")
    print(f"    trickling head closed after {gone:.2f} s (--header-timeout 2)")
    check(1.9 <= gone <= 3.5 * e2e.SLOW, f"closed after {gone:.2f} s")
    check(closed_by_server(idle, 2 * e2e.SLOW), "the idle connection was not closed")
    idle.close()
    trickle.close()
    eq(DEAD.req("GET", "/health").status, 200, "/health afterwards")


@suite.test
def a_late_body_gets_408_at_the_body_timeout():
    s = connect(DEAD.port)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 200\r\n\r\n{\"prompt\": \"")
    t0 = time.time()
    buf = b""
    s.settimeout(0.25)
    while time.time() - t0 < 6 * e2e.SLOW:
        try:
            s.send(b"a")   # a byte every 0.25 s: never idle, never complete
            b = s.recv(65536)
            if not b:
                break
            buf += b
            if b"\r\n\r\n" in buf and b"}}" in buf:
                break
        except socket.timeout:
            continue
        except OSError:
            break
    dt = time.time() - t0
    s.close()
    print(f"    answered after {dt:.2f} s: {buf[:60]!r}")
    check(buf.startswith(b"HTTP/1.1 408"), f"a late body: {buf[:300]!r}")
    check(b'"code":"request_timeout"' in buf, f"408 without its error object: {buf!r}")
    check(1.9 <= dt <= 4 * e2e.SLOW, f"408 after {dt:.2f} s (--body-timeout 2)")
    eq(DEAD.req("GET", "/health").status, 200, "/health afterwards")


def busy_streams(server, n, key=None, src="127.0.0.1"):
    """n streaming completions that keep their connections busy until released. Returns
    (release, threads)."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def run():
        s = connect(server.port, src)
        try:
            body = ('{"prompt": "Count from 1 to 1000: 1, 2,", "max_tokens": 1500, '
                    '"temperature": 0, "stream": true}').encode()
            h = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n")
            if key:
                h += f"Authorization: Bearer {key}\r\n"
            s.sendall(h.encode() + b"\r\n" + body)
            s.settimeout(60 * e2e.SLOW)
            first = s.recv(65536)
            if first.startswith(b"HTTP/1.1 200"):
                started.release()
            release.wait(120)
        except OSError:
            pass
        finally:
            s.close()

    ts = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    for _ in range(n):
        check(started.acquire(timeout=60 * e2e.SLOW), f"{n} streams did not all start")
    return release, ts


def finish(release, ts):
    release.set()
    for t in ts:
        t.join(30)


@suite.test
def the_reserve_serves_health_only_when_every_connection_is_busy():
    """--max-connections 3, three streams running: /health still answers (through the reserve),
    a completion gets 503 too_many_connections instead of waiting; once the streams end,
    completions are served again."""
    release, ts = busy_streams(SMALL, 3)
    try:
        r = SMALL.req("GET", "/health", timeout=5)
        eq(r.status, 200, f"/health with every connection busy: {r}")
        r = SMALL.post("/v1/completions", BODY, timeout=5)
        check_error(r, 503, "too_many_connections", "a completion with every connection busy")
        r = SMALL.req("GET", "/v1/models", timeout=5)
        check_error(r, 503, "too_many_connections", "/v1/models with every connection busy")
    finally:
        finish(release, ts)
    e2e.wait_until(lambda: SMALL.post("/v1/completions", BODY).status == 200, 20,
                   "a completion once the streams ended")


@suite.test
def the_reserve_serves_keyed_requests_and_refuses_past_it():
    """--max-connections 3 --api-key: with 3 streams running a keyed completion is served
    through the reserve; with the reserve (8) busy too, a new connection gets 503 and is
    closed."""
    release, ts = busy_streams(KEYED, 3, key=KEY)
    more = None
    try:
        r = KEYED.post("/v1/completions", BODY, key=KEY, timeout=10)
        eq(r.status, 200, f"a keyed completion through the reserve: {r}")
        more = busy_streams(KEYED, 8, key=KEY)
        s = connect(KEYED.port)
        got = read_answer(s, 5 * e2e.SLOW)
        s.close()
        check(got.startswith(b"HTTP/1.1 503"), f"a connection past the reserve: {got[:200]!r}")
        check(b'"code":"too_many_connections"' in got, f"503 without its error: {got!r}")
    finally:
        if more:
            finish(*more)
        finish(release, ts)
    e2e.wait_until(lambda: KEYED.req("GET", "/health").status == 200, 20, "/health afterwards")


@suite.test
def one_address_at_its_cap_evicts_its_own_waiting_connections():
    """--max-connections-per-ip 4: four idle connections from 127.0.0.1 and two from 127.0.0.2;
    a fifth from 127.0.0.1 closes the oldest of its own address, none of 127.0.0.2's. With four
    streams busy from 127.0.0.1, its completions get 503 while 127.0.0.2 is served."""
    mine = []
    for _ in range(4):
        mine.append(connect(PERIP.port))
        time.sleep(0.05)
    other = [connect(PERIP.port, "127.0.0.2") for _ in range(2)]
    time.sleep(0.2)
    fifth = connect(PERIP.port)
    try:
        check(closed_by_server(mine[0], 3 * e2e.SLOW), "the oldest idle connection of 127.0.0.1 "
              "stayed open when a fifth came from the same address")
        for s in mine[1:] + other + [fifth]:
            check(not closed_by_server(s, 0.3), "a connection other than the oldest was closed")
    finally:
        for s in mine + other + [fifth]:
            s.close()
    release, ts = busy_streams(PERIP, 4)
    try:
        r = PERIP.post("/v1/completions", BODY, timeout=10)
        check_error(r, 503, "too_many_connections", "a fifth busy request from 127.0.0.1")
        s = connect(PERIP.port, "127.0.0.2")
        body = b'{"prompt": "Hi", "max_tokens": 2}'
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        got = read_answer(s, 20 * e2e.SLOW)
        s.close()
        check(got.startswith(b"HTTP/1.1 200"), f"a completion from 127.0.0.2: {got[:300]!r}")
    finally:
        finish(release, ts)


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
