"""End-to-end HTTP framing against a real server, byte by byte over raw sockets: requests whose
length a proxy could read differently (two Content-Length headers, Content-Length with
Transfer-Encoding, a coding other than chunked) get 400 and a closed connection (RFC 9112 §6,
request smuggling); then a seeded fuzz of framings: valid requests split at random points,
pipelined, chunked with random chunk sizes, extensions and trailers, each of which must come
back whole (the echoed prompt equals the one sent); and broken ones (bad chunk sizes, short
bodies, bad Content-Length values, garbage), each of which must get a 4xx or a closed
connection, never a 2xx, a hang or a crash."""

import json
import random
import socket
import sys
import time

import e2e
from e2e import check, eq

suite = e2e.Suite("framing", budget=180)
S = None
SEED = 20261206


def setup():
    global S
    S = suite.server(["--max-body-kb", "64", "--header-timeout", "2", "--body-timeout", "2"],
                     name="server-framing").start()


def exchange(pieces, n_answers=1, delay=0.0, timeout=15, see_close=True):
    """Sends pieces (bytes each) on one new connection, delay seconds apart; returns the list of
    (status, headers, body) answers read before the server closes (or n_answers arrived), and
    whether the server closed the connection (with see_close, waiting up to 0.3 s for it after
    the last answer)."""
    s = socket.create_connection(("127.0.0.1", S.port), timeout=timeout * e2e.SLOW)
    answers, closed, buf = [], False, b""
    try:
        for p in pieces:
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break
            if delay:
                time.sleep(delay)
        deadline = time.time() + timeout * e2e.SLOW
        while len(answers) < n_answers and time.time() < deadline:
            parsed = parse_answer(buf)
            if parsed:
                answers.append(parsed[0])
                buf = parsed[1]
                continue
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            buf += b
        if len(answers) == n_answers and not closed and see_close:
            s.settimeout(0.3)
            try:
                closed = s.recv(1) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
    finally:
        s.close()
    return answers, closed


def parse_answer(buf):
    """One complete HTTP answer at the start of buf (Content-Length or chunked): ((status,
    headers, body), rest), or None when more bytes are needed."""
    if b"\r\n\r\n" not in buf:
        return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    hdr = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        hdr[k.strip().lower().decode()] = v.strip().decode()
    if "content-length" in hdr:
        n = int(hdr["content-length"])
        return ((status, hdr, rest[:n]), rest[n:]) if len(rest) >= n else None
    if hdr.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(rest[pos:eol].split(b";")[0], 16)
            if size == 0:
                end = rest.find(b"\r\n\r\n", eol)
                return ((status, hdr, body), rest[end + 4:]) if end >= 0 else None
            if len(rest) < eol + 2 + size + 2:
                return None
            body += rest[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    return (status, hdr, rest), b""


def head(length=None, extra=b"", chunked=False):
    h = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if length is not None:
        h += b"Content-Length: %d\r\n" % length
    if chunked:
        h += b"Transfer-Encoding: chunked\r\n"
    return h + extra + b"\r\n"


def body_for(prompt):
    return json.dumps({"prompt": prompt, "max_tokens": 0, "echo": True}).encode()


def echoed(answer):
    status, _, body = answer
    if status != 200:
        return None
    return json.loads(body)["choices"][0]["text"]


# ---- conflicting framing: 400 and the connection closed ---------------------------------------


@suite.test
def conflicting_framing_gets_400_and_a_closed_connection():
    b = body_for("x")
    cases = {
        "two different Content-Length": head(extra=b"Content-Length: %d\r\nContent-Length: 5\r\n"
                                                   % len(b)) + b,
        "the same Content-Length twice": head(extra=b"Content-Length: %d\r\nContent-Length: %d\r\n"
                                                    % (len(b), len(b))) + b,
        "Content-Length and chunked": head(len(b), chunked=True) + b"%x\r\n%s\r\n0\r\n\r\n"
                                      % (len(b), b),
        "chunked and Content-Length": head(extra=b"Transfer-Encoding: chunked\r\nContent-Length: "
                                                 b"%d\r\n" % len(b)) + b,
        "Transfer-Encoding gzip": head(extra=b"Transfer-Encoding: gzip\r\n") + b,
        "Transfer-Encoding gzip, chunked": head(extra=b"Transfer-Encoding: gzip, chunked\r\n") + b,
        "Transfer-Encoding twice": head(extra=b"Transfer-Encoding: chunked\r\nTransfer-Encoding: "
                                              b"chunked\r\n") + b"%x\r\n%s\r\n0\r\n\r\n"
                                   % (len(b), b),
    }
    for what, data in cases.items():
        answers, closed = exchange([data])
        check(answers, f"{what}: no answer")
        status, _, body = answers[0]
        eq(status, 400, f"{what}: status ({body[:200]!r})")
        eq(json.loads(body)["error"]["code"], "bad_framing", f"{what}: error code")
        check(closed, f"{what}: the connection stayed open after a 400 for broken framing")
    # The refusal comes from the headers alone: the same body with one Content-Length is fine.
    answers, _ = exchange([head(len(b)) + b])
    eq(echoed(answers[0]), "x", "one Content-Length")


# ---- the fuzz ---------------------------------------------------------------------------------


def split_randomly(rng, data):
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def chunked(rng, b, ext=False, trailer=False, upper=False):
    out, pos = b"", 0
    while pos < len(b):
        n = rng.randint(1, max(1, len(b) - pos))
        size = b"%x" % n
        out += (size.upper() if upper else b"0" * rng.randint(0, 2) + size)
        out += b";name=value" if ext and rng.random() < 0.5 else b""
        out += b"\r\n" + b[pos:pos + n] + b"\r\n"
        pos += n
    out += b"0\r\n" + (b"X-Trailer: yes\r\n" if trailer else b"") + b"\r\n"
    return out


def random_prompt(rng):
    alphabet = "abcdefghij KLMNOP 0123 éàü 漢字 \n\t\"\\{}"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200)))


def valid_case(rng):
    """(description, list of raw requests on one connection, prompts expected back)."""
    k = rng.choice(["length", "chunked", "pipelined"])
    if k == "pipelined":
        ps = [random_prompt(rng) for _ in range(rng.randint(2, 3))]
        return k, b"".join(head(len(body_for(p))) + body_for(p) for p in ps), ps
    p = random_prompt(rng)
    b = body_for(p)
    if k == "length":
        return k, head(len(b)) + b, [p]
    data = head(chunked=True) + chunked(rng, b, ext=rng.random() < 0.5,
                                        trailer=rng.random() < 0.3, upper=rng.random() < 0.3)
    return k, data, [p]


def broken_cases(rng):
    """[(description, raw bytes)]: requests whose framing is wrong."""
    b = body_for(random_prompt(rng))
    cases = [
        ("chunk size not hex", head(chunked=True) + b"zz\r\n" + b + b"\r\n0\r\n\r\n"),
        ("negative chunk size", head(chunked=True) + b"-5\r\nabcde\r\n0\r\n\r\n"),
        ("chunk size overflowing 64 bits",
         head(chunked=True) + b"1" + b"0" * 20 + b"\r\n" + b + b"\r\n0\r\n\r\n"),
        ("chunk longer than its size",
         head(chunked=True) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(b) - 3, b)),
        ("chunk without CRLF", head(chunked=True) + b"%x\r\n%s0\r\n\r\n" % (len(b), b)),
        ("Content-Length not a number", head(extra=b"Content-Length: 12a\r\n") + b),
        ("Content-Length negative", head(extra=b"Content-Length: -1\r\n") + b),
        ("Content-Length with a sign", head(extra=b"Content-Length: +%d\r\n" % len(b)) + b),
        ("Content-Length as a list", head(extra=b"Content-Length: %d, %d\r\n"
                                                % (len(b), len(b))) + b),
        ("body shorter than its length, then the client waits", head(len(b) + 50) + b),
        ("chunk size line of 10 kB", head(chunked=True) + b"1" * 10000 + b"\r\n"),
        ("garbage request line", b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"),
        ("header without a colon", b"POST /v1/completions HTTP/1.1\r\nHost x\r\n\r\n"),
        ("body over --max-body-kb chunked",
         head(chunked=True) + b"".join(b"%x\r\n%s\r\n" % (4096, b"a" * 4096) for _ in range(20))
         + b"0\r\n\r\n"),
    ]
    return cases


@suite.test
def fuzzed_valid_framings_come_back_whole():
    rng = random.Random(SEED)
    kinds = {}
    for i in range(150):
        what, data, prompts = valid_case(rng)
        pieces = split_randomly(rng, data)
        answers, _ = exchange(pieces, n_answers=len(prompts),
                              delay=0.002 if rng.random() < 0.2 else 0.0, see_close=False)
        eq(len(answers), len(prompts), f"case {i} ({what}, {len(pieces)} pieces): answers")
        for a, p in zip(answers, prompts):
            eq(echoed(a), p, f"case {i} ({what}, {len(pieces)} pieces): the prompt echoed back")
        kinds[what] = kinds.get(what, 0) + 1
    print(f"    150 valid framings (seed {SEED}): {kinds}, every prompt echoed back whole")


@suite.test
def fuzzed_broken_framings_never_get_a_2xx():
    rng = random.Random(SEED + 1)
    seen = {}
    cases = [c for _ in range(3) for c in broken_cases(rng)]
    for i, (what, data) in enumerate(cases):
        pieces = split_randomly(rng, data)
        t0 = time.time()
        answers, closed = exchange(pieces, timeout=8)
        dt = time.time() - t0
        status = answers[0][0] if answers else None
        check(status is None or 400 <= status < 500,
              f"case {i} ({what}): got {answers[0][:2] if answers else None}")
        check(answers or closed or dt < 9 * e2e.SLOW, f"case {i} ({what}): hung")
        seen.setdefault(what, set()).add(status)
    print(f"    {len(cases)} broken framings:", {k: sorted(v, key=str) for k, v in sorted(seen.items())})
    eq(S.req("GET", "/health").status, 200, "/health after the fuzz")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
