"""End-to-end hot-loading (DESIGN.md §4) against a temporary copy of the registry, while
background traffic runs the whole time:
  - an adapter moved into the registry becomes servable without a restart (so does one written
    in place file by file, slowly);
  - a replaced adapter switches version (new output, new version in /v1/adapters) while a
    request in flight finishes on the old one, token for token;
  - a replacement that fails to load keeps the good version serving and reports the reason;
  - a deleted adapter fails cleanly (404/503 JSON), its request in flight finishes, and the
    server keeps serving;
  - the background traffic never saw an error."""

import os
import shutil
import sys
import threading
import time

import e2e
from e2e import check, check_error, eq

suite = e2e.Suite("hotload", budget=180)
S = None
REG = None
STAGE = None
TRAFFIC = None


def setup():
    global S, REG, STAGE, TRAFFIC
    REG = e2e.make_registry(suite.tmp)
    STAGE = os.path.join(suite.tmp, "stage")
    os.makedirs(STAGE)
    shutil.copytree(os.path.join(REG, "de"), os.path.join(REG, "hot"),
                    ignore=shutil.ignore_patterns("witze"))
    shutil.copytree(os.path.join(e2e.FIXTURES, "qv_r4"), os.path.join(REG, "gone"))
    S = suite.server(registry=REG, name="server")
    S.start()
    TRAFFIC = Traffic()


class Traffic:
    """Requests in a loop on nodes nobody touches (streaming and not) until stopped."""

    def __init__(self):
        self.stop = threading.Event()
        self.n = 0
        self.errors = []
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        sels = [{}, {"model": "fr"}, {"model": "de/witze"}, {"model": "fx/qv_r4"},
                {"adapters": [{"id": "fr", "scale": 0.5}, {"id": "de", "scale": 0.5}]}]
        i = 0
        while not self.stop.is_set():
            body = dict(sels[i % len(sels)], prompt="Once upon a time", max_tokens=4,
                        temperature=0)
            try:
                if i % 2:
                    st, ev, raw = e2e.stream(S.port, "/v1/completions", dict(body, stream=True))
                    ok = st == 200 and ev and ev[-1] == "[DONE]"
                    what = f"stream {body}: {st} {raw[:200]!r}"
                else:
                    r = S.post("/v1/completions", body)
                    ok = r.status == 200
                    what = f"{body}: {r}"
                if not ok:
                    self.errors.append(what)
            except OSError as e:
                self.errors.append(f"{body}: {e}")
            self.n += 1
            i += 1
            self.stop.wait(0.05)  # steady, not saturating: the tests' own requests must run

    def finish(self):
        self.stop.set()
        self.t.join(60 * e2e.SLOW)


def greedy(model, prompt="Die", n=12):
    r = S.post("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n,
                                   "temperature": 0})
    check(r.status == 200, f"greedy on {model}: {r}")
    return e2e.text_of(r.json())


def node(node_id):
    """The node's entry in /v1/adapters (no admin key on this server), or None."""
    r = S.req("GET", "/v1/adapters")
    eq(r.status, 200, "GET /v1/adapters")
    return e2e.find_node(r.json(), node_id)


def model_ids():
    return [m["id"] for m in S.req("GET", "/v1/models").json()["data"]]


def move_in(src, rel):
    """Copies src to the staging area, then renames it into the registry at rel (atomic)."""
    staged = os.path.join(STAGE, rel.replace("/", "_"))
    shutil.copytree(src, staged)
    os.makedirs(os.path.dirname(os.path.join(REG, rel)), exist_ok=True)
    os.rename(staged, os.path.join(REG, rel))


def replace_file(src, dst):
    tmp = os.path.join(STAGE, os.path.basename(dst) + ".new")
    shutil.copyfile(src, tmp)
    os.rename(tmp, dst)


@suite.test
def new_adapter_servable_without_restart():
    check_error(S.post("/v1/completions", {"model": "new/ad", "prompt": "x", "max_tokens": 1}),
                404, "model_not_found", "new/ad before it exists")
    move_in(os.path.join(e2e.FIXTURES, "all_rslora_r8"), "new/ad")
    e2e.wait_until(lambda: S.post("/v1/completions", {"model": "new/ad", "prompt": "Die",
                                                      "max_tokens": 2}).status == 200,
                   20, "new/ad to become servable")
    check("new/ad" in model_ids(), "new/ad not in /v1/models")
    eq(greedy("new/ad"), greedy("new/ad"), "new/ad greedy twice")


@suite.test
def new_adapter_written_in_place_slowly():
    d = os.path.join(REG, "new", "slow")
    os.makedirs(d)
    src = os.path.join(e2e.FIXTURES, "qv_r4")
    shutil.copyfile(os.path.join(src, "adapter_config.json"), os.path.join(d, "adapter_config.json"))
    time.sleep(0.4)
    data = open(os.path.join(src, "adapter_model.safetensors"), "rb").read()
    with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
        f.write(data[:len(data) // 3])
        f.flush()
        time.sleep(0.6)
        f.write(data[len(data) // 3:])
    want = greedy("fx/qv_r4")
    e2e.wait_until(lambda: S.post("/v1/completions", {"model": "new/slow", "prompt": "Die",
                                                      "max_tokens": 12, "temperature": 0})
                   .status == 200, 20, "new/slow to become servable")
    e2e.wait_until(lambda: greedy("new/slow") == want, 15,
                   "new/slow (a copy of fx/qv_r4) to give fx/qv_r4's text")


@suite.test
def incompatible_adapter_fails_cleanly():
    """A well-formed PEFT adapter made for another model (hidden size 512) is refused with a
    reason; it never takes the server down."""
    sys.path.insert(0, os.path.join(e2e.ROOT, "tools"))
    import numpy as np
    import make_bench_registry as mbr

    dims = mbr.model_dims(None)
    dims.update(n_embd=512, n_head=8)
    staged = os.path.join(STAGE, "wrong")
    mbr.write_adapter(staged, dims, 4, mbr.QV, np.random.default_rng(7))
    os.rename(staged, os.path.join(REG, "wrong"))

    def answered():
        r = S.post("/v1/completions", {"model": "wrong", "prompt": "x", "max_tokens": 1})
        return r if r.status != 404 else None   # 404 until the registry has seen it

    r = e2e.wait_until(answered, 20, "the incompatible adapter to be seen")
    check(400 <= r.status < 600 and r.status != 500, f"incompatible adapter: {r}")
    e = check_error(r, r.status, what="incompatible adapter")
    check(any(w in e["message"] for w in ("576", "512", "shape", "hidden")),
          f"the message does not say what does not match: {e['message']!r}")
    n = node("wrong") or {}
    eq(n.get("state"), "failed", f"/v1/adapters state of the incompatible adapter ({n})")
    eq(S.post("/v1/completions", {"model": "fr", "prompt": "x", "max_tokens": 1}).status, 200,
       "fr still serves")


STATE = {}


@suite.test
def replaced_adapter_switches_version_in_flight_finishes_on_old():
    old_text = greedy("hot")
    eq(old_text, greedy("de"), "hot (a copy of de) = de")
    fr_text = greedy("fr")
    check(fr_text != old_text, "fr and de give the same text; pick another prompt")
    n0 = node("hot")
    check(n0 is not None and n0.get("version") is not None,
          f"/v1/adapters has no version for hot: {n0}")
    long_body = {"model": "hot", "prompt": "Die", "max_tokens": 24, "temperature": 0}
    old24 = greedy("hot", n=24)
    swapped = threading.Event()

    def on_event(i, ev):
        if i == 0:
            replace_file(os.path.join(REG, "fr", "adapter_config.json"),
                         os.path.join(REG, "hot", "adapter_config.json"))
            replace_file(os.path.join(REG, "fr", "adapter_model.safetensors"),
                         os.path.join(REG, "hot", "adapter_model.safetensors"))
            swapped.set()

    st, events, raw = e2e.stream(S.port, "/v1/completions", dict(long_body, stream=True),
                                 on_event=on_event)
    eq(st, 200, f"in-flight stream status ({raw[:200]!r})")
    check(swapped.is_set(), "the swap did not happen during the stream")
    eq(events[-1], "[DONE]", "in-flight stream ends with [DONE]")
    eq(e2e.stream_text(events), old24, "the request in flight finishes on the old version")
    e2e.wait_until(lambda: greedy("hot") == fr_text, 20, "hot to give fr's text (new version)")
    n1 = node("hot")
    check(n1.get("version") != n0.get("version"),
          f"version unchanged after replace: {n0.get('version')} -> {n1.get('version')}")
    STATE["fr_text"] = fr_text


@suite.test
def failed_replacement_keeps_good_version():
    fr_text = STATE.get("fr_text") or greedy("fr")
    bad = os.path.join(STAGE, "garbage.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken} " + os.urandom(4096))
    replace_file(bad, os.path.join(REG, "hot", "adapter_model.safetensors"))

    def reported():
        n = node("hot") or {}
        return n if any("error" in k and v for k, v in n.items()) or n.get("state") == "failed" \
            else None

    n = e2e.wait_until(reported, 20, "/v1/adapters to report the failed load of hot")
    for _ in range(3):
        eq(greedy("hot"), fr_text, f"hot after a failed replacement ({n})")
        time.sleep(0.3)
    # and a good file again recovers
    replace_file(os.path.join(REG, "de", "adapter_model.safetensors"),
                 os.path.join(REG, "hot", "adapter_model.safetensors"))
    e2e.wait_until(lambda: greedy("hot") == greedy("de"), 20, "hot to recover with de's file")


@suite.test
def deleted_adapter_fails_cleanly():
    before = greedy("gone")
    body = {"model": "gone", "prompt": "Die", "max_tokens": 20, "temperature": 0}
    want20 = greedy("gone", n=20)
    check(want20.startswith(before), "gone: 20-token text does not extend the 12-token one")
    removed = threading.Event()

    def on_event(i, ev):
        if i == 0:
            shutil.rmtree(os.path.join(REG, "gone"))
            removed.set()

    st, events, raw = e2e.stream(S.port, "/v1/completions", dict(body, stream=True),
                                 on_event=on_event)
    eq(st, 200, f"in-flight stream on a deleted adapter ({raw[:200]!r})")
    check(removed.is_set(), "the delete did not happen during the stream")
    eq(events[-1], "[DONE]", "stream on the deleted adapter ends with [DONE]")
    eq(e2e.stream_text(events), want20, "the request in flight finishes on the deleted adapter")

    def refused():
        r = S.post("/v1/completions", {"model": "gone", "prompt": "x", "max_tokens": 1})
        return r if r.status != 200 else None

    r = e2e.wait_until(refused, 20, "requests on the deleted adapter to fail")
    check_error(r, 404, what="request on a deleted adapter", statuses=(404, 503))
    check("gone" not in model_ids() or r.status == 503, "gone still in /v1/models after 404")
    eq(S.post("/v1/completions", {"prompt": "x", "max_tokens": 1}).status, 200,
       "the base still serves")


@suite.test
def unload_while_in_use():
    """POST /v1/adapters/unload of adapters that running requests use: they finish unchanged,
    and the next request loads the adapter again."""
    body = {"model": "fr/manpages/alice", "prompt": "grep :", "max_tokens": 16, "temperature": 0}
    want = greedy("fr/manpages/alice", prompt="grep :", n=16)
    unloaded = []

    def on_event(i, ev):
        if i == 0:
            for nid in ("fr/manpages/alice", "fr/manpages", "fr"):
                unloaded.append(S.post("/v1/adapters/unload", {"id": nid}).status)

    st, events, raw = e2e.stream(S.port, "/v1/completions", dict(body, stream=True),
                                 on_event=on_event)
    eq(st, 200, f"stream while its adapters are unloaded ({raw[:200]!r})")
    eq(unloaded, [200, 200, 200], "unload answers")
    eq(e2e.stream_text(events), want, "the stream finishes unchanged")
    eq(greedy("fr/manpages/alice", prompt="grep :", n=16), want, "after the unload")


@suite.test
def background_traffic_never_failed():
    TRAFFIC.finish()
    check(TRAFFIC.n >= 5, f"only {TRAFFIC.n} background requests ran")
    eq(TRAFFIC.errors[:5], [], f"background errors ({len(TRAFFIC.errors)} of {TRAFFIC.n})")


if __name__ == "__main__":
    sys.exit(suite.main(setup))
