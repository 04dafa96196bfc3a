"""End-to-end: the server's log with --log-format json. Every line is one JSON object with an
RFC 3339 UTC timestamp; a request's X-Request-Id is kept (or one is made up, or a bad one is
replaced) and comes back on every answer, streams and errors too; the access line of a
generation carries the id, status, adapter selection, tokens and time to first token; adapter
loads are logged with the node, version, bytes and milliseconds."""

import json
import os
import re
import shutil

import e2e
from e2e import check, eq

suite = e2e.Suite("logs", budget=180)
S = None
REG = None
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def setup():
    global S, REG
    REG = e2e.make_registry(suite.tmp, fixtures=False)
    S = suite.server(["--log-format", "json"], registry=REG, name="server")
    S.start()


def records():
    """Every line of the log as JSON (a line that does not parse fails the test)."""
    out = []
    for i, line in enumerate(S.log().splitlines()):
        if i == 0 and line.startswith("$ "):
            continue  # the harness's command line
        try:
            rec = json.loads(line)
        except ValueError:
            raise e2e.Fail(f"log line {i + 1} is not JSON: {line!r}")
        check(isinstance(rec, dict), f"log line {i + 1} is not an object: {line!r}")
        out.append(rec)
    return out


def access_line(rid, path):
    """The access line of the request with id rid (it is written once the answer is sent)."""
    def find():
        for rec in records():
            if rec.get("request_id") == rid and rec.get("path") == path and "status" in rec:
                return rec
        return None
    return e2e.wait_until(find, 10, f"the access line of {rid}")


@suite.test
def client_id_kept_and_access_line_complete():
    body = {"model": "fr/manpages", "prompt": "Bonjour", "max_tokens": 3, "temperature": 0,
            "user": "alice"}
    r = S.post("/v1/completions", body, headers={"X-Request-Id": "abc-123"})
    eq(r.status, 200, "completion")
    eq(r.headers.get("x-request-id"), "abc-123", "X-Request-Id echoed")
    usage = r.json()["usage"]
    a = access_line("abc-123", "/v1/completions")
    eq(a["level"], "info", "access line level")
    check(TS.match(a["ts"]), f"timestamp {a['ts']!r}")
    eq((a["method"], a["status"]), ("POST", 200), "method and status")
    eq(a["client"], "127.0.0.1", "client address")
    check("fr/manpages" in a.get("adapters", ""), f"adapter selection: {a}")
    eq((a.get("prompt_tokens"), a.get("completion_tokens")),
       (usage["prompt_tokens"], usage["completion_tokens"]), "tokens against the usage")
    check(isinstance(a.get("ttft_ms"), (int, float)) and 0 <= a["ttft_ms"] <= a["duration_ms"],
          f"ttft_ms {a.get('ttft_ms')} within duration_ms {a.get('duration_ms')}")
    tags = [x for x in records() if x.get("request_id") == "abc-123" and "user" in x["msg"]]
    check(tags and '"alice"' in tags[0]["msg"], f"the user line carries the id: {tags}")


@suite.test
def generated_id_on_stream():
    r = S.post("/v1/chat/completions",
               {"model": "base", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 3, "stream": True})
    eq(r.status, 200, "stream")
    rid = r.headers.get("x-request-id", "")
    check(HEX32.match(rid), f"a generated id: {rid!r}")
    a = access_line(rid, "/v1/chat/completions")
    eq(a["status"], 200, "stream status")
    check(a.get("completion_tokens", 0) >= 1 and a.get("prompt_tokens", 0) >= 1,
          f"stream tokens: {a}")
    check(a.get("ttft_ms", -1) >= 0, f"stream ttft: {a}")
    r2 = S.req("GET", "/health")
    rid2 = r2.headers.get("x-request-id", "")
    check(HEX32.match(rid2) and rid2 != rid, f"another generated id: {rid2!r} after {rid!r}")
    a = access_line(rid2, "/health")
    check("prompt_tokens" not in a and "ttft_ms" not in a, f"no tokens on /health: {a}")


@suite.test
def bad_id_replaced_and_errors_carry_it():
    r = S.post("/v1/completions", {"model": "nope", "prompt": "x"},
               headers={"X-Request-Id": "x" * 129})
    eq(r.status, 404, "unknown model")
    rid = r.headers.get("x-request-id", "")
    check(HEX32.match(rid), f"a 129-byte id is replaced: {rid!r}")
    eq(access_line(rid, "/v1/completions")["status"], 404, "the error's access line")
    r = S.post("/v1/completions", b"{", headers={"X-Request-Id": "x" * 128})
    eq(r.status, 400, "bad JSON")
    eq(r.headers.get("x-request-id"), "x" * 128, "a 128-byte id is kept")
    r = S.post("/v1/completions", {"model": "base", "prompt": "x"},
               headers={"X-Request-Id": "caf\u00e9".encode("latin-1").decode("latin-1")})
    check(HEX32.match(r.headers.get("x-request-id", "")),
          f"a non-ASCII id is replaced: {r.headers.get('x-request-id')!r}")


def event(kind, node):
    return e2e.wait_until(
        lambda: next((x for x in records() if x.get("event") == kind and x.get("node") == node),
                     None), 10, f"a log line: adapter {node} {kind}")


@suite.test
def adapter_events_logged():
    """Discoveries (at start-up and by the watcher) and loads, with version, bytes and ms."""
    d = event("discovered", "de")
    eq((d["level"], d["msg"]), ("info", "adapter de discovered"), "a discovery at start-up")
    r = S.post("/v1/adapters/load", {"id": "de"}, headers={"X-Request-Id": "load-de"})
    eq(r.status, 200, f"load de: {r}")
    version = r.json().get("version")
    a = event("loaded", "de")
    eq((a["level"], a.get("version")), ("info", version), f"the load's version: {a}")
    check(a.get("bytes", 0) > 0 and a.get("ms", -1) >= 0, f"bytes and ms: {a}")
    check(any(x.get("request_id") == "load-de" and "adapter de" in x["msg"] for x in records()),
          "the admin route's line carries the request id")
    shutil.copytree(os.path.join(REG, "de"), os.path.join(REG, "de2"),
                    ignore=shutil.ignore_patterns("witze"))
    event("discovered", "de2")


@suite.test
def every_line_is_json():
    recs = records()
    check(len(recs) > 5, f"only {len(recs)} lines")
    for rec in recs:
        check(TS.match(rec.get("ts", "")), f"timestamp of {rec}")
        check(rec.get("level") in ("error", "warn", "info", "debug"), f"level of {rec}")
        check(isinstance(rec.get("msg"), str), f"msg of {rec}")
    check(any("serving" in x["msg"] for x in recs), "the start-up line is JSON too")
    check(any(x["msg"].startswith("model ") for x in recs), "the engine's lines are JSON too")


@suite.test
def text_format_lines(server_factory, registry):
    """The default format: every line starts with the timestamp; fields follow the message as
    key=value, a value with a space quoted."""
    srv = server_factory([], registry=registry, name="text")
    r = srv.post("/v1/completions", {"model": "de", "prompt": "Hallo", "max_tokens": 2},
                 headers={"X-Request-Id": "two words"})
    eq((r.status, r.headers.get("x-request-id")), (200, "two words"), "text: the id echoed")
    want = re.compile(r' adaptree: info: POST /v1/completions 200 duration_ms=[0-9.]+ '
                      r'client=127\.0\.0\.1 request_id="two words" adapters=de '
                      r'ttft_ms=[0-9.]+ prompt_tokens=\d+ completion_tokens=\d+$')
    e2e.wait_until(lambda: any(want.search(x) for x in srv.log().splitlines()), 10,
                   "the text access line")
    for line in srv.log().splitlines()[1:]:
        check(TS.match(line[:24]) and line[24:35] == " adaptree: ", f"a text line: {line!r}")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
