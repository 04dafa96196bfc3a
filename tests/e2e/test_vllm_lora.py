"""End-to-end vLLM's adapter routes, POST /v1/load_lora_adapter and /v1/unload_lora_adapter, over
real HTTP: lora_name is a registry node id; a load waits and answers vLLM's line of text; a
lora_path must be that node's directory inside the registry (elsewhere, another node's, or
leading out through ".." or a symlink: 400 naming lora_path); an unload makes the node not
resident; the admin key is needed (401 without it or with the plain API key)."""

import os

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("vllm_lora", budget=90)
S = None
REG = None
KEY = "e2e-key-1234"
ADMIN = "e2e-admin-4567"


def setup():
    global S, REG
    REG = e2e.make_registry(suite.tmp, fixtures=False)
    outside = os.path.join(suite.tmp, "outside")
    os.makedirs(outside)
    os.symlink(outside, os.path.join(REG, "leaves"))  # leads out of the root: not a node
    S = suite.server(["--api-key", KEY, "--admin-key", ADMIN], registry=REG, name="server")
    S.start()


def node(node_id):
    return e2e.adapter_node(S, node_id, key=ADMIN)


def load(body, key=ADMIN):
    return S.post("/v1/load_lora_adapter", body, key=key)


def unload(body, key=ADMIN):
    return S.post("/v1/unload_lora_adapter", body, key=key)


@suite.test
def load_by_name_and_path_then_serve():
    eq(node("de/witze").get("state"), "unloaded", "de/witze before the load")
    r = load({"lora_name": "de/witze", "lora_path": os.path.join(REG, "de", "witze")})
    eq(r.status, 200, f"load de/witze: {r}")
    eq(r.data.decode(), "Success: LoRA adapter 'de/witze' added successfully.", "vLLM's answer")
    check(r.headers.get("content-type", "").startswith("text/plain"), f"text: {r.headers}")
    n = node("de/witze")
    eq(n.get("state"), "ready", f"the load waited for its result: {n}")
    check(n.get("bytes", 0) > 0, f"de/witze resident: {n}")
    # lora_path may be relative to the server's directory and reach the node through ".."
    rel = os.path.relpath(os.path.join(REG, "de", "witze", "..", "..", "fr"), e2e.ROOT)
    r = load({"lora_name": "fr", "lora_path": rel})
    eq(r.status, 200, f"load fr by a relative path: {r}")
    eq(node("fr").get("state"), "ready", "fr loaded")
    # without lora_path; vLLM's other members are ignored; loading again is not an error
    r = load({"lora_name": "de", "lora_int_id": 7, "load_inplace": True})
    eq(r.status, 200, f"load de by name: {r}")
    eq(load({"lora_name": "de"}).status, 200, "load de again")
    r = S.post("/v1/completions", {"model": "de/witze", "prompt": "Hallo", "max_tokens": 2,
                                   "temperature": 0}, key=KEY)
    eq(r.status, 200, f"a completion on the loaded adapter: {r}")


@suite.test
def paths_outside_the_node_are_refused():
    cases = [
        ("/etc", "is not inside the adapter registry"),
        (REG, "is not inside the adapter registry"),  # the root itself
        (os.path.join(REG, "de", "..", ".."), "is not inside the adapter registry"),
        (os.path.join(REG, "leaves"), "is not inside the adapter registry"),
        (os.path.join(REG, "fr"), "is not the directory of adapter 'de/witze'"),
        (os.path.join(REG, "de"), "is not the directory of adapter 'de/witze'"),
        (os.path.join(REG, "nope"), "No such file or directory"),
    ]
    for path, want in cases:
        e = check_error(load({"lora_name": "de/witze", "lora_path": path}), 400,
                        what=f"load with lora_path {path}")
        eq(e.get("param"), "lora_path", f"{path}: error.param")
        check(want in e["message"] and e["message"].startswith("lora_path: "),
              f"{path}: message {e['message']!r} lacks {want!r}")
        check(REG not in e["message"].replace(path, ""), f"{path}: names the root: {e}")
    # the unload checks a given lora_path the same way
    e = check_error(unload({"lora_name": "de/witze", "lora_path": "/tmp"}), 400,
                    what="unload with lora_path /tmp")
    eq(e.get("param"), "lora_path", "unload: error.param")


@suite.test
def bad_names_and_bodies():
    e = check_error(load({"lora_name": "no/such"}), 404, code="model_not_found",
                    what="load an unknown name")
    eq(e.get("param"), "lora_name", "unknown name: error.param")
    check_error(unload({"lora_name": "no/such"}), 404, what="unload an unknown name")
    check_error(load({"lora_name": "../x", "lora_path": "/etc"}), 400, what="a malformed name")
    check_error(load({"lora_name": "leaves"}), 404, what="a symlink out of the root")
    check_error(load({"lora_name": "fr/manpages", "lora_path": os.path.join(REG, "fr")}), 400,
                statuses=(400, 404), what="a namespace or a node")
    e = check_error(load({"lora_path": os.path.join(REG, "de")}), 400, what="no lora_name")
    eq(e.get("param"), "lora_name", "no lora_name: error.param")
    check_error(load({"lora_name": "de", "lora_path": 3}), 400, what="lora_path not a string")
    check_error(load("{\"lora_name\": "), 400, what="invalid JSON")
    check_error(load(""), 400, what="empty body")


@suite.test
def unload_makes_the_node_not_resident():
    eq(load({"lora_name": "fr"}).status, 200, "load fr")
    eq(node("fr").get("state"), "ready", "fr resident")
    r = unload({"lora_name": "fr", "lora_path": os.path.join(REG, "fr")})
    eq(r.status, 200, f"unload fr: {r}")
    eq(r.data.decode(), "Success: LoRA adapter 'fr' removed successfully.", "vLLM's answer")
    n = e2e.wait_until(lambda: (lambda n: n if n.get("state") == "unloaded" else None)(node("fr")),
                       10, "fr unloaded")
    eq(n.get("bytes"), 0, f"fr holds no bytes: {n}")
    eq(unload({"lora_name": "fr"}).status, 200, "unload fr again")


@suite.test
def the_admin_key_is_needed():
    for path, body in [("/v1/load_lora_adapter", {"lora_name": "de"}),
                       ("/v1/unload_lora_adapter", {"lora_name": "de"})]:
        check_error(S.post(path, body), 401, what=f"{path} without a key")
        check_error(S.post(path, body, key="wrong-key"), 401, what=f"{path} with a wrong key")
        check_error(S.post(path, body, key=KEY), 401, statuses=(401, 403),
                    what=f"{path} with the plain API key")
    check_error(S.req("GET", "/v1/load_lora_adapter", key=ADMIN), 405,
                what="GET /v1/load_lora_adapter")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
