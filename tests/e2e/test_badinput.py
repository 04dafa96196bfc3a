"""End-to-end hostile and broken input against a server with a small context (--ctx 256) and a
small body cap (--max-body-kb 64): every refusal is a JSON error with the right status, nothing
crashes, nothing hangs, abrupt disconnects free their sequences, and the server keeps serving."""

import json
import os
import shutil
import socket
import struct
import sys
import threading
import time

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("badinput", budget=150)
S = None
CTX = 256
BODY_KB = 64


def setup():
    global S
    reg = e2e.make_registry(suite.tmp, fixtures=False)
    outside = os.path.join(suite.tmp, "outside")
    shutil.copytree(os.path.join(e2e.FIXTURES, "qv_r4"), os.path.join(outside, "evil"))
    os.symlink("../outside/evil", os.path.join(reg, "esc"))       # a node escaping the root
    os.symlink(outside, os.path.join(reg, "escns"))                # a namespace escaping it
    os.symlink("/etc", os.path.join(reg, "fr", "etc"))             # under a real node
    S = suite.server(["--ctx", str(CTX), "--max-body-kb", str(BODY_KB)], registry=reg,
                     name="server")
    S.start()


def cmpl(body, **kw):
    return S.post("/v1/completions", body, **kw)


def chat(body, **kw):
    return S.post("/v1/chat/completions", body, **kw)


def raw(data, read=True, timeout=30):
    """Sends raw bytes on a new connection; returns (status or None, response bytes)."""
    s = socket.create_connection(("127.0.0.1", S.port), timeout=timeout * e2e.SLOW)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # the server answered (or gave up) before reading everything
        if not read:
            return None, b""
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                    if cl and len(rest) >= int(cl[0].split(b":")[1]):
                        break
        except (ConnectionResetError, socket.timeout):
            pass
        status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.") else None
        return status, buf
    finally:
        s.close()


def post_head(path, length=None, chunked=False, extra=""):
    h = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if chunked:
        h += "Transfer-Encoding: chunked\r\n"
    elif length is not None:
        h += f"Content-Length: {length}\r\n"
    return (h + extra + "Connection: close\r\n\r\n").encode()


def healthy():
    eq(S.req("GET", "/health").status, 200, "GET /health")
    r = cmpl({"prompt": "Hi", "max_tokens": 2})
    eq(r.status, 200, f"a normal request afterwards: {r}")


# ---- bodies ----------------------------------------------------------------------------------


@suite.test
def inspect_does_not_hang_on_a_fifo():
    """`adaptree inspect` on an adapter whose adapter_config.json is a FIFO answers at once."""
    import subprocess

    d = os.path.join(suite.tmp, "fifo_adapter")
    os.makedirs(d)
    shutil.copyfile(os.path.join(e2e.REGISTRY, "fr", "adapter_model.safetensors"),
                    os.path.join(d, "adapter_model.safetensors"))
    os.mkfifo(os.path.join(d, "adapter_config.json"))
    try:
        p = subprocess.run([e2e.ADAPTREE, "inspect", d, "--model", e2e.MODEL],
                           capture_output=True, text=True, timeout=20 * e2e.SLOW)
    except subprocess.TimeoutExpired:
        raise e2e.Fail("adaptree inspect hung on a FIFO adapter_config.json")
    eq(p.returncode, 1, f"inspect's exit status (stderr {p.stderr[-300:]!r})")
    check("not a regular file" in p.stdout + p.stderr, f"no reason given: {p.stdout + p.stderr!r}")


@suite.test
def malformed_json():
    for body in [b"{", b"not json", b'{"prompt": "x",}', b"[]", b'"x"', b"", b"null",
                 b'{"prompt": "x"} {"prompt": "y"}', b'{"prompt": "x" "max_tokens": 1}',
                 b'{"prompt": \'x\'}', b'{"prompt": "x", "max_tokens": 01}', b"{" * 5000,
                 b'{"prompt": NaN}', b'{"prompt": "tab\there"}']:
        check_error(cmpl(body), 400, what=f"completions {body[:40]!r}")
        check_error(chat(body), 400, what=f"chat {body[:40]!r}")
    healthy()


@suite.test
def wrong_types_and_ranges():
    bad = [({"prompt": 5}, "prompt"), ({"prompt": {"a": 1}}, "prompt"),
           ({"prompt": "x", "max_tokens": "8"}, "max_tokens"),
           ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
           ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
           ({"prompt": "x", "temperature": "hot"}, "temperature"),
           ({"prompt": "x", "temperature": -1}, "temperature"),
           ({"prompt": "x", "temperature": 3}, "temperature"),
           ({"prompt": "x", "top_p": 2}, "top_p"), ({"prompt": "x", "stream": "yes"}, "stream"),
           ({"prompt": "x", "seed": "s"}, "seed"), ({"prompt": "x", "stop": 5}, "stop"),
           ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
           ({"prompt": "x", "n": 17}, "n"), ({"prompt": "x", "logprobs": 10}, "logprobs"),
           ({"prompt": "x", "model": 7}, "model"), ({"prompt": "x", "adapters": "fr"}, "adapters"),
           ({"prompt": "x", "adapters": [{"scale": 1}]}, None),
           ({"prompt": "x", "adapters": [{"id": "fr", "scale": "x"}]}, None),
           ({"prompt": "x", "adapters": [{"id": "fr", "scale": float("inf")}]}, None),
           ({"prompt": "x", "adapters": [{"id": "fr"}] * 40}, None), ({"max_tokens": 1}, None)]
    for body, param in bad:
        try:
            data = json.dumps(body, allow_nan=True)
        except ValueError:
            continue
        e = check_error(cmpl(data), 400, what=f"completions {data[:80]}")
        if param:
            check(e.get("param") == param or param in e.get("message", ""),
                  f"{data[:60]}: error names neither param nor field {param!r}: {e}")
    for body in [{"messages": "hi"}, {"messages": []}, {"messages": [{"role": "wizard",
                                                                       "content": "x"}]},
                 {"messages": [{"content": "x"}]}, {"messages": [{"role": "user", "content": 5}]},
                 {"messages": [{"role": "user", "content": "x"}], "max_tokens": "1"}]:
        check_error(chat(body), 400, what=f"chat {json.dumps(body)[:80]}")
    eq(cmpl({"prompt": "x", "max_tokens": 1, "some_unknown_field": {"a": [1]}}).status, 200,
       "unknown fields are ignored")
    healthy()


@suite.test
def huge_bodies_413():
    big = json.dumps({"prompt": "x" * (BODY_KB * 1024 + 10), "max_tokens": 1})
    check_error(cmpl(big), 413, what=f"a {len(big)}-byte body")
    # 8 MB announced and sent: the server may answer before reading it all.
    n = 8 << 20
    st, resp = raw(post_head("/v1/completions", n) + b'{"prompt": "' + b"y" * (n - 13) + b'"}')
    check(st in (413, None), f"8 MB body: {resp[:300]!r}")
    if st == 413:
        check(b'"error"' in resp, f"413 without a JSON error: {resp[:300]!r}")
    # Only announced (no body follows): must not wait for 1 GB.
    st, resp = raw(post_head("/v1/completions", 1 << 30), timeout=10)
    eq(st, 413, f"Content-Length 1 GiB: {resp[:300]!r}")
    # Chunked, without a Content-Length.
    chunk = b"z" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(BODY_KB // 8 + 4))
    st, resp = raw(post_head("/v1/completions", chunked=True) + b"d\r\n{\"prompt\": \"a\r\n" +
                   body + b"0\r\n\r\n")
    check(st in (413, 400), f"chunked body over the cap: {resp[:300]!r}")
    healthy()


@suite.test
def huge_max_tokens():
    r = cmpl({"prompt": "Count: 1, 2, 3,", "max_tokens": 1000000, "temperature": 0})
    if r.status == 200:
        u = r.json()["usage"]
        check(u["prompt_tokens"] + u["completion_tokens"] <= CTX, f"past the context: {u}")
        eq(r.json()["choices"][0]["finish_reason"] in ("length", "stop"), True, "finish_reason")
    else:
        check_error(r, 400, what="max_tokens 1e6 with --ctx 256")
    for mt in (2 ** 31, 2 ** 63, 10 ** 30):
        check_error(cmpl({"prompt": "x", "max_tokens": mt}), 400, what=f"max_tokens {mt}")
    healthy()


@suite.test
def unknown_adapters_404():
    for body in [{"model": "nope"}, {"model": "fr/nope"}, {"model": "fr/manpages/alice/bob"},
                 {"adapters": [{"id": "nope"}]}, {"model": "fr", "adapters": [{"id": "de/x"}]}]:
        check_error(cmpl(dict(body, prompt="x", max_tokens=1)), 404, "model_not_found",
                    what=f"unknown adapter {body}")
    check_error(chat({"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404,
                "model_not_found", what="chat on an unknown adapter")


HOSTILE = ["../x", "/etc", "/etc/passwd", "fr/../de", "fr//manpages", "./fr", "fr/.", "..", "/",
           "fr/", "a" * 300, "x" * 65, "/".join("abcdefghij"), "fr\\manpages", "fr manpages",
           "fr\x00x", "fr\nde", "%2e%2e/x", "été", "fr/*", "~root"]


@suite.test
def hostile_ids_400():
    got = []
    for hid in HOSTILE:
        for body in [{"model": hid}, {"adapters": [{"id": hid}]}]:
            r = cmpl(dict(body, prompt="x", max_tokens=1))
            if r.status != 400:
                got.append(f"{json.dumps(body)[:60]} -> {r.status}")
            else:
                check_error(r, 400, what=json.dumps(body)[:60])
    check(not got, "malformed ids not refused with 400 (docs/ARCHITECTURE.md §4):\n    " + "\n    ".join(got))
    healthy()


@suite.test
def symlinks_escaping_the_root():
    ids = [m["id"] for m in S.req("GET", "/v1/models").json()["data"]]
    for hid in ("esc", "escns", "escns/evil", "fr/etc", "fr/etc/passwd"):
        check(hid not in ids, f"{hid} (a symlink out of the registry) listed in /v1/models")
        for body in [{"model": hid}, {"adapters": [{"id": hid}]}]:
            r = cmpl(dict(body, prompt="x", max_tokens=1))
            check(r.status in (400, 404), f"{body}: expected 400/404, got {r}")
            check_error(r, r.status, what=str(body))
        r = S.post("/v1/adapters/load", {"id": hid})
        check(r.status in (400, 404), f"load {hid}: expected 400/404, got {r}")
    healthy()


@suite.test
def invalid_utf8_and_empty():
    for b in [b'{"prompt": "\xff\xfe", "max_tokens": 1}', b'{"prompt": "\xc0\xaf", "max_tokens": 1}',
              b'{"prompt": "ab\xe2\x82", "max_tokens": 1}', b'{"prompt": "\\ud800", "max_tokens": 1}',
              b'{"prompt": "\xed\xa0\x80", "max_tokens": 1}',
              b'{"messages": [{"role": "user", "content": "\xf8\x88\x80\x80\x80"}]}']:
        r = chat(b) if b"messages" in b else cmpl(b)
        check_error(r, 400, what=f"invalid UTF-8 {b[:40]!r}")
    check_error(cmpl({"prompt": "", "max_tokens": 1}), 400, what="empty prompt")
    check_error(cmpl({"prompt": [], "max_tokens": 1}), 400, what="empty prompt list")
    check_error(chat({"messages": [], "max_tokens": 1}), 400, what="no messages")
    healthy()


@suite.test
def prompt_longer_than_context():
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 120   # ~1200 tokens
    e = check_error(cmpl({"prompt": long_prompt, "max_tokens": 4}), 400,
                    what=f"a ~1200-token prompt with --ctx {CTX}")
    check("context" in e["message"].lower() or e.get("code") == "context_length_exceeded",
          f"error does not say it is the context: {e}")
    check_error(chat({"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4}),
                400, what="a ~1200-token chat message")
    # Prompt fits, prompt + explicit max_tokens does not: refused, or cut at the context.
    mid = "The quick brown fox jumps over the lazy dog. " * 15   # ~150 tokens
    r = cmpl({"prompt": mid, "max_tokens": 200, "temperature": 0})
    if r.status == 200:
        u = r.json()["usage"]
        check(u["prompt_tokens"] + u["completion_tokens"] <= CTX, f"past the context: {u}")
    else:
        check_error(r, 400, what="prompt + max_tokens over the context")
    healthy()


@suite.test
def wrong_method_and_route():
    r = S.req("GET", "/v1/completions")
    check(r.status in (404, 405), f"GET /v1/completions: {r}")
    check_error(r, r.status, what="GET /v1/completions")
    check_error(S.req("POST", "/v1/nope", {"a": 1}), 404, what="POST /v1/nope")
    check_error(S.req("GET", "/../../etc/passwd"), 404, what="GET /../../etc/passwd",
                statuses=(400, 404))


# ---- connections -----------------------------------------------------------------------------


def running():
    return e2e.running_gauge(e2e.metrics(S))


def generated():
    m = e2e.metrics(S)
    return e2e.metric_sum(m, lambda n: n.startswith("adaptree_") and "generated" in n
                          and "token" in n)


@suite.test
def abrupt_disconnects_free_sequences():
    check(running() is not None, "no adaptree_*running* gauge in /metrics")
    e2e.wait_until(lambda: running() == 0, 10, "running 0 before the test")
    g0 = generated()
    body = json.dumps({"prompt": "Count from 1 to 1000: 1, 2, 3, 4, 5,", "max_tokens": 220,
                       "temperature": 0, "stream": True}).encode()
    socks = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", S.port), timeout=60 * e2e.SLOW)
        s.sendall(post_head("/v1/completions", len(body)) + body)
        socks.append(s)
    for s in socks:  # wait for the first token of each
        buf = b""
        while b"data:" not in buf:
            chunk = s.recv(4096)
            check(chunk, f"stream closed before the first token: {buf[:300]!r}")
            buf += chunk
    # a non-streaming request dropped right after it was sent, and a half-sent body
    body2 = json.dumps({"prompt": "Count from 1 to 1000: 1, 2,", "max_tokens": 220,
                        "temperature": 0}).encode()
    s2 = socket.create_connection(("127.0.0.1", S.port))
    s2.sendall(post_head("/v1/completions", len(body2)) + body2)
    s3 = socket.create_connection(("127.0.0.1", S.port))
    s3.sendall(post_head("/v1/completions", len(body2)) + body2[:20])
    time.sleep(0.2)
    for s in socks + [s2, s3]:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        s.close()
    e2e.wait_until(lambda: running() == 0, 15, "running back to 0 after the disconnects")
    g1 = generated()
    if g0 is not None and g1 is not None:
        # 5 requests of 220 tokens would add ~1100; cancelled at the next step, far fewer.
        check(g1 - g0 < 400, f"{g1 - g0:.0f} tokens generated for disconnected clients: "
              "sequences were not freed at the next step")
    healthy()


@suite.test
def stalled_clients_do_not_block_others():
    socks = []
    for i in range(6):
        s = socket.create_connection(("127.0.0.1", S.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le" if i % 2 else
                  post_head("/v1/completions", 1000) + b'{"prompt": "')
        socks.append(s)
    t0 = time.time()
    healthy()
    check(time.time() - t0 < 20 * e2e.SLOW, "a normal request waited behind stalled clients")
    for s in socks:
        s.close()


@suite.test
def odd_methods_long_headers_many_connections():
    for method, path in [("OPTIONS", "/v1/completions"), ("HEAD", "/health"),
                         ("DELETE", "/v1/models"), ("PUT", "/v1/adapters/load"),
                         ("PATCH", "/metrics")]:
        r = S.req(method, path)
        check(r.status < 500, f"{method} {path}: {r}")
    st, resp = raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 +
                   b"\r\nConnection: close\r\n\r\n", timeout=10)
    check(st is None or 400 <= st < 500, f"a 200 KB header: {resp[:200]!r}")
    st, resp = raw(b"BREW /pot HTCPCP/1.0\r\n\r\n", timeout=10)
    check(st is None or 400 <= st < 600, f"garbage request line: {resp[:200]!r}")
    socks = []
    try:
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", S.port), timeout=10))
        t0 = time.time()
        healthy()
        check(time.time() - t0 < 20 * e2e.SLOW, "a request waited behind 200 idle connections")
    finally:
        for x in socks:
            x.close()
    healthy()


@suite.test
def many_bad_requests_concurrently():
    bodies = [b"{", b'{"prompt": 1}', b'{"model": "../x", "prompt": "a"}',
              json.dumps({"prompt": "x" * (BODY_KB * 1024 + 1)}).encode(),
              b'{"prompt": "\xff"}', b'{"model": "nope", "prompt": "a"}']
    errs = []

    def worker(i):
        try:
            for j in range(6):
                r = cmpl(bodies[(i + j) % len(bodies)])
                if r.status < 400 or r.status >= 500:
                    errs.append(f"{bodies[(i + j) % len(bodies)][:30]!r} -> {r.status}")
        except OSError as e:
            errs.append(str(e))

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60 * e2e.SLOW)
    eq(errs, [], "bad requests answered outside 4xx")
    healthy()
    e2e.wait_until(lambda: running() == 0, 10, "running back to 0 at the end")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
