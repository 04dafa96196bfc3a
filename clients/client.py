#!/usr/bin/env python3
"""A small client for adaptree's HTTP API (docs/ARCHITECTURE.md §5), standard library only.

As a library:

    from client import Client
    c = Client("http://127.0.0.1:8080", api_key=None, admin_key=None)
    print(c.complete("grep :", model="fr/manpages/alice", max_tokens=24, temperature=0)["choices"][0]["text"])
    for piece in c.stream_text(c.stream_chat([{"role": "user", "content": "Hallo!"}], model="de")):
        print(piece, end="", flush=True)
    c.load("fr", pin=True); print(c.adapters())

As a command line (URL and keys also from ADAPTREE_URL, ADAPTREE_API_KEY, ADAPTREE_ADMIN_KEY):

    python3 clients/client.py complete "grep :" -m fr/manpages/alice -n 24
    python3 clients/client.py chat "Was ist Debian?" -m de --stream
    python3 clients/client.py complete "Bonjour" -a fr:0.5 -a de:0.5
    python3 clients/client.py models | adapters | health | metrics
    python3 clients/client.py load fr --pin | unload fr | pin fr [--off]

Adapter selection: `model` is the base model id (or omitted) for no adapter, or a registry node id
whose whole tree chain is applied; `adapters` is an explicit weighted list [(id, scale), ...] of
exactly those nodes (added to the chain when `model` is also a node).
"""

import argparse
import http.client
import json
import os
import sys
import urllib.parse

__all__ = ["Client", "AdaptreeError"]


class AdaptreeError(Exception):
    """An HTTP error answered by the server: status plus OpenAI's error object fields."""

    def __init__(self, status, message, type_=None, code=None, param=None, body=None, headers=None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.body = body
        self.headers = headers or {}


def _adapters_field(adapters):
    """[("fr", 0.5), "de", {"id": "x", "scale": 2}] -> [{"id": "fr", "scale": 0.5}, ...]."""
    out = []
    for a in adapters:
        if isinstance(a, dict):
            out.append(a)
        elif isinstance(a, str):
            if ":" in a:
                i, s = a.rsplit(":", 1)
                out.append({"id": i, "scale": float(s)})
            else:
                out.append({"id": a})
        else:
            out.append({"id": a[0], "scale": float(a[1])})
    return out


class Client:
    """One server. Thread-safe: every call opens its own connection."""

    def __init__(self, base_url="http://127.0.0.1:8080", api_key=None, admin_key=None, timeout=120):
        u = urllib.parse.urlsplit(base_url if "://" in base_url else "http://" + base_url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {u.scheme!r}")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port
        self.prefix = u.path.rstrip("/")
        if self.prefix.endswith("/v1"):  # accept the OpenAI-style base URL too
            self.prefix = self.prefix[:-3]
        self.api_key, self.admin_key, self.timeout = api_key, admin_key, timeout

    # ---- transport -------------------------------------------------------------------------

    def _conn(self):
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def _headers(self, admin, body):
        h = {"Accept": "application/json"}
        key = (self.admin_key or self.api_key) if admin else self.api_key
        if key:
            h["Authorization"] = "Bearer " + key
        if body is not None:
            h["Content-Type"] = "application/json"
        return h

    def _send(self, method, path, obj=None, admin=False):
        body = None if obj is None else json.dumps(obj).encode()
        conn = self._conn()
        try:
            conn.request(method, self.prefix + path, body=body, headers=self._headers(admin, body))
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            data = resp.read()
            conn.close()
            raise _error(resp, data)
        return conn, resp

    def request(self, method, path, obj=None, admin=False):
        """Sends one request; returns the decoded JSON (or text for non-JSON answers)."""
        conn, resp = self._send(method, path, obj, admin)
        try:
            data = resp.read()
        finally:
            conn.close()
        if "json" in (resp.getheader("Content-Type") or ""):
            return json.loads(data)
        return data.decode("utf-8", "replace")

    def _stream(self, path, obj):
        conn, resp = self._send("POST", path, obj)
        try:
            for event in iter_sse(resp):
                if event == "[DONE]":
                    return
                yield json.loads(event)
        finally:
            conn.close()

    # ---- generation ------------------------------------------------------------------------

    @staticmethod
    def _body(model, adapters, params):
        body = {k: v for k, v in params.items() if v is not None}
        if model is not None:
            body["model"] = model
        if adapters:
            body["adapters"] = _adapters_field(adapters)
        return body

    def complete(self, prompt, model=None, adapters=None, **params):
        """POST /v1/completions; returns the response object."""
        body = self._body(model, adapters, params)
        body["prompt"] = prompt
        return self.request("POST", "/v1/completions", body)

    def chat(self, messages, model=None, adapters=None, **params):
        """POST /v1/chat/completions; messages is a list of {"role", "content"} or one string."""
        body = self._body(model, adapters, params)
        body["messages"] = _messages(messages)
        return self.request("POST", "/v1/chat/completions", body)

    def stream_complete(self, prompt, model=None, adapters=None, include_usage=True, **params):
        """Streaming /v1/completions: yields each chunk object until [DONE]."""
        body = self._body(model, adapters, params)
        body.update(prompt=prompt, stream=True)
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        return self._stream("/v1/completions", body)

    def stream_chat(self, messages, model=None, adapters=None, include_usage=True, **params):
        """Streaming /v1/chat/completions: yields each chunk object until [DONE]."""
        body = self._body(model, adapters, params)
        body.update(messages=_messages(messages), stream=True)
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        return self._stream("/v1/chat/completions", body)

    @staticmethod
    def stream_text(chunks):
        """Turns a chunk iterator (either kind) into the text pieces."""
        for ch in chunks:
            for choice in ch.get("choices") or []:
                piece = choice.get("text")
                if piece is None:
                    piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece

    # ---- models, registry, admin -----------------------------------------------------------

    def models(self):
        return self.request("GET", "/v1/models")

    def adapters(self):
        return self.request("GET", "/v1/adapters", admin=True)

    def load(self, adapter_id, pin=None, wait=True):
        """Loads a node and answers once it is loaded (or why it is not); wait=False answers
        202 at once."""
        body = {"id": adapter_id}
        if pin is not None:
            body["pin"] = bool(pin)
        if not wait:
            body["wait"] = False
        return self.request("POST", "/v1/adapters/load", body, admin=True)

    def unload(self, adapter_id):
        return self.request("POST", "/v1/adapters/unload", {"id": adapter_id}, admin=True)

    def pin(self, adapter_id, pin=True):
        return self.request("POST", "/v1/adapters/pin", {"id": adapter_id, "pin": bool(pin)},
                            admin=True)

    def health(self):
        return self.request("GET", "/health")

    def metrics(self):
        """GET /metrics parsed into {(name, labels_tuple): value}."""
        return parse_metrics(self.request("GET", "/metrics"))


def _messages(messages):
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return list(messages)


def _error(resp, data):
    headers = {k.lower(): v for k, v in resp.getheaders()}
    try:
        err = json.loads(data)["error"]
        return AdaptreeError(resp.status, err.get("message", ""), err.get("type"), err.get("code"),
                             err.get("param"), data, headers)
    except (ValueError, KeyError, TypeError):
        return AdaptreeError(resp.status, data[:200].decode("utf-8", "replace"), body=data,
                             headers=headers)


def iter_sse(resp):
    """Yields the data of each server-sent event of a file-like HTTP response."""
    data = []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" ").decode("utf-8"))
    if data:
        yield "\n".join(data)


def parse_metrics(text):
    """Prometheus text format -> {(name, ((label, value), ...)): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            head, value = line.rsplit(None, 1) if "}" not in line else line.rsplit("}", 1)
            if "{" in head:
                name, lab = head.split("{", 1)
                labels = []
                for part in _split_labels(lab):
                    k, v = part.split("=", 1)
                    labels.append((k.strip(), json.loads(v)))
                key = (name.strip(), tuple(sorted(labels)))
            else:
                key = (head.strip(), ())
            out[key] = float(value.split()[0])
        except ValueError:
            continue
    return out


def _split_labels(s):
    parts, cur, quoted, esc = [], "", False, False
    for ch in s:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            if cur.strip():
                parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


# ---- command line ------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description="adaptree client")
    p.add_argument("--url", default=os.environ.get("ADAPTREE_URL", "http://127.0.0.1:8080"))
    p.add_argument("--api-key", default=os.environ.get("ADAPTREE_API_KEY"))
    p.add_argument("--admin-key", default=os.environ.get("ADAPTREE_ADMIN_KEY"))
    p.add_argument("--timeout", type=float, default=120)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("complete", "chat"):
        g = sub.add_parser(name)
        g.add_argument("text", help="the prompt (complete) or the user message (chat)")
        g.add_argument("-m", "--model", help="base model id, or a registry node id (its chain)")
        g.add_argument("-a", "--adapter", action="append", default=[],
                       help="ID[:SCALE], repeatable: exactly these nodes, weighted")
        g.add_argument("-n", "--max-tokens", type=int, default=64)
        g.add_argument("-t", "--temperature", type=float, default=0.0)
        g.add_argument("--top-p", type=float)
        g.add_argument("--seed", type=int)
        g.add_argument("--stop", action="append")
        g.add_argument("--stream", action="store_true")
        g.add_argument("--json", action="store_true", help="print the whole response object")
        if name == "chat":
            g.add_argument("--system", help="a system message first")
    sub.add_parser("models")
    sub.add_parser("adapters")
    sub.add_parser("health")
    sub.add_parser("metrics")
    g = sub.add_parser("load")
    g.add_argument("id")
    g.add_argument("--pin", action="store_true")
    g = sub.add_parser("unload")
    g.add_argument("id")
    g = sub.add_parser("pin")
    g.add_argument("id")
    g.add_argument("--off", action="store_true", help="unpin")
    a = p.parse_args(argv)
    c = Client(a.url, a.api_key, a.admin_key, a.timeout)
    try:
        if a.cmd in ("complete", "chat"):
            params = dict(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p,
                          seed=a.seed, stop=a.stop)
            if a.cmd == "chat":
                text = [{"role": "user", "content": a.text}]
                if a.system:
                    text.insert(0, {"role": "system", "content": a.system})
            else:
                text = a.text
            if a.stream:
                fn = c.stream_chat if a.cmd == "chat" else c.stream_complete
                chunks = fn(text, model=a.model, adapters=a.adapter, **params)
                if a.json:
                    for ch in chunks:
                        print(json.dumps(ch))
                else:
                    for piece in c.stream_text(chunks):
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                    print()
                return 0
            fn = c.chat if a.cmd == "chat" else c.complete
            r = fn(text, model=a.model, adapters=a.adapter, **params)
            if a.json:
                print(json.dumps(r, indent=2, ensure_ascii=False))
            else:
                ch = r["choices"][0]
                print(ch["message"]["content"] if a.cmd == "chat" else ch["text"])
            return 0
        if a.cmd == "metrics":
            print(c.request("GET", "/metrics"), end="")
            return 0
        if a.cmd == "load":
            r = c.load(a.id, pin=True if a.pin else None)
        elif a.cmd == "unload":
            r = c.unload(a.id)
        elif a.cmd == "pin":
            r = c.pin(a.id, not a.off)
        else:
            r = getattr(c, a.cmd)()
        print(json.dumps(r, indent=2, ensure_ascii=False) if not isinstance(r, str) else r)
        return 0
    except AdaptreeError as e:
        print(f"error: {e}" + (f" (type {e.type}, code {e.code})" if e.type else ""),
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {a.url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
