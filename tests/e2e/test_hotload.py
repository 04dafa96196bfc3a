"""End-to-end hot-loading (docs/ARCHITECTURE.md §4) against a temporary copy of the registry, while
background traffic runs the whole time:
  - an adapter moved into the registry becomes servable without a restart (so does one written
    in place file by file, slowly);
  - a replaced adapter switches version (new output, new version in /v1/adapters) while a
    request in flight finishes on the old one, token for token;
  - a replacement that fails to load keeps the good version serving and reports the reason;
  - a deleted adapter fails cleanly (404/503 JSON), its request in flight finishes, and the
    server keeps serving;
  - POST /v1/adapters/load waits for its result (422 with the reason when the files do not
    load) and skips files whose bytes did not change;
  - weight files that lead out of the registry (symlinks, also swapped in after listing) are
    never read, and a FIFO fails at once; no answer names a server path;
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
    return e2e.adapter_node(S, node_id, must_exist=False)


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


def listed(node_id):
    return e2e.wait_until(lambda: node(node_id), 20, f"{node_id} to be listed")


def no_server_paths(text, what):
    """API output never names a server path: not the registry's, not the temp dir's."""
    for p in {REG, os.path.realpath(REG), suite.tmp, os.path.realpath(suite.tmp)}:
        check(p not in text, f"{what} names a server path ({p}): {text[:400]}")


@suite.test
def admin_load_waits_for_its_result_and_skips_unchanged_files():
    """POST /v1/adapters/load answers when the load is done: 200 with the version, then
    "unchanged" (and the same version) while the files hold the same bytes, even rewritten; a new
    version when they change; 422 with the reason, in relative names, when they no longer load
    (the good version serves on); "wait": false answers 202 at once."""
    move_in(os.path.join(e2e.FIXTURES, "qv_r4"), "adm")
    listed("adm")
    r = S.post("/v1/adapters/load", {"id": "adm"})
    eq(r.status, 200, f"load adm: {r}")
    d = r.json()
    eq((d.get("state"), d.get("unchanged")), ("ready", False), f"first load: {d}")
    v1 = d.get("version")
    loads = node("adm")["loads"]
    r = S.post("/v1/adapters/load", {"id": "adm"})
    eq((r.status, r.json().get("unchanged"), r.json().get("version")), (200, True, v1),
       f"a second load of the same files: {r}")
    eq(node("adm")["loads"], loads, "loads counted after an unchanged load")
    weights = os.path.join(REG, "adm", "adapter_model.safetensors")
    replace_file(os.path.join(e2e.FIXTURES, "qv_r4", "adapter_model.safetensors"), weights)
    r = S.post("/v1/adapters/load", {"id": "adm"})
    eq((r.status, r.json().get("unchanged"), r.json().get("version")), (200, True, v1),
       f"a load after the same bytes were written again: {r}")
    want = greedy("fx/all_rslora_r8")
    replace_file(os.path.join(e2e.FIXTURES, "all_rslora_r8", "adapter_config.json"),
                 os.path.join(REG, "adm", "adapter_config.json"))
    replace_file(os.path.join(e2e.FIXTURES, "all_rslora_r8", "adapter_model.safetensors"),
                 weights)
    r = S.post("/v1/adapters/load", {"id": "adm"})
    eq(r.status, 200, f"a load of new files: {r}")
    v2 = r.json().get("version")
    # The watcher may have loaded the new files first; then this load finds them resident
    # ("unchanged"), but the version is the new one either way.
    check(v2 != v1, f"the version did not change with the files ({v1}): {r}")
    eq(greedy("adm"), want, "adm serves the new files")
    bad = os.path.join(STAGE, "adm-garbage.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken} " + os.urandom(512))
    replace_file(bad, weights)
    r = S.post("/v1/adapters/load", {"id": "adm"})
    e = check_error(r, 422, "adapter_load_failed", "a load of a corrupt file")
    check("adm/adapter_model.safetensors" in e["message"], f"message: {e['message']!r}")
    no_server_paths(r.data.decode(), "the failed load's answer")
    n = node("adm")
    eq((n.get("state"), n.get("version")), ("ready", v2), f"the good version serves on: {n}")
    eq(greedy("adm"), want, "adm after the failed load")
    r = S.post("/v1/adapters/load", {"id": "adm", "wait": False})
    eq(r.status, 202, f"load with wait false: {r}")
    check_error(S.post("/v1/adapters/load", {"id": "adm", "wait": 1}), 400, what="wait: 1")
    check_error(S.post("/v1/adapters/load", {"id": "no/such"}), 404, "model_not_found",
                "load of an unknown id")


@suite.test
def weight_file_symlinked_out_of_the_registry_is_never_served():
    """A node whose config is inside the root and whose weights are a symlink to a file outside
    is listed as failed and never loaded; so is one whose weights are swapped for such a symlink
    after it was listed and loaded (its good version serves on); answers never name a path."""
    outside = os.path.join(suite.tmp, "outside")
    os.makedirs(outside)
    shutil.copyfile(os.path.join(e2e.FIXTURES, "qv_r4", "adapter_model.safetensors"),
                    os.path.join(outside, "adapter_model.safetensors"))
    d = os.path.join(STAGE, "escw")
    os.makedirs(d)
    shutil.copyfile(os.path.join(e2e.FIXTURES, "qv_r4", "adapter_config.json"),
                    os.path.join(d, "adapter_config.json"))
    os.symlink(os.path.join(outside, "adapter_model.safetensors"),
               os.path.join(d, "adapter_model.safetensors"))
    os.rename(d, os.path.join(REG, "escw"))
    n = e2e.wait_until(lambda: (node("escw") or {}).get("state") == "failed" and node("escw"),
                       20, "escw listed as failed")
    check("leaves the registry root" in (n.get("error") or ""), f"escw's error: {n}")
    r = S.post("/v1/completions", {"model": "escw", "prompt": "x", "max_tokens": 1})
    e = check_error(r, 503, what="a request on escw")
    check("escw/adapter_model.safetensors" in e["message"], f"message: {e['message']!r}")
    no_server_paths(r.data.decode(), "the refusal")
    r = S.post("/v1/adapters/load", {"id": "escw"})
    check_error(r, 422, "adapter_load_failed", "loading escw")
    no_server_paths(r.data.decode(), "the refused load")
    eq(node("escw").get("loads"), 0, "escw loads")
    # Swapped in after listing and loading.
    move_in(os.path.join(e2e.FIXTURES, "qv_r4"), "swapw")
    listed("swapw")
    r = S.post("/v1/adapters/load", {"id": "swapw"})
    eq(r.status, 200, f"load swapw: {r}")
    v = r.json()["version"]
    good = greedy("swapw")
    link = os.path.join(STAGE, "swapw-link")
    os.symlink(os.path.join(outside, "adapter_model.safetensors"), link)
    os.rename(link, os.path.join(REG, "swapw", "adapter_model.safetensors"))
    r = S.post("/v1/adapters/load", {"id": "swapw"})
    check_error(r, 422, "adapter_load_failed", "loading swapw once its weights leave the root")
    no_server_paths(r.data.decode(), "the refused reload")
    n = node("swapw")
    eq((n.get("state"), n.get("version")), ("ready", v), f"swapw's good version: {n}")
    eq(greedy("swapw"), good, "swapw serves its good version")
    no_server_paths(S.req("GET", "/v1/adapters").data.decode(), "GET /v1/adapters")
    no_server_paths(S.req("GET", "/v1/models").data.decode(), "GET /v1/models")


@suite.test
def a_fifo_weight_file_fails_with_a_relative_name():
    """A FIFO where the weights should be: the load fails at once (nothing blocks) and every API
    answer names the file relative to the registry; the server log has the absolute path."""
    d = os.path.join(STAGE, "fifo")
    os.makedirs(d)
    shutil.copyfile(os.path.join(e2e.FIXTURES, "qv_r4", "adapter_config.json"),
                    os.path.join(d, "adapter_config.json"))
    os.mkfifo(os.path.join(d, "adapter_model.safetensors"))
    os.rename(d, os.path.join(REG, "fifo"))
    listed("fifo")
    r = S.post("/v1/adapters/load", {"id": "fifo"}, timeout=20)
    e = check_error(r, 422, "adapter_load_failed", "loading a FIFO")
    check("fifo/adapter_model.safetensors" in e["message"] and "not a regular file" in e["message"],
          f"message: {e['message']!r}")
    no_server_paths(r.data.decode(), "the FIFO's load")
    r = S.post("/v1/completions", {"model": "fifo", "prompt": "x", "max_tokens": 1}, timeout=20)
    check_error(r, 503, what="a request on the FIFO node")
    no_server_paths(r.data.decode(), "the FIFO node's refusal")
    no_server_paths(S.req("GET", "/v1/adapters").data.decode(), "GET /v1/adapters")
    real = os.path.join(os.path.realpath(REG), "fifo")
    check(f"adapter fifo failed to load from {real}:" in S.log(),
          f"the log does not name {real}:\n{S.log_tail(10)}")


@suite.test
def background_traffic_never_failed():
    TRAFFIC.finish()
    check(TRAFFIC.n >= 5, f"only {TRAFFIC.n} background requests ran")
    eq(TRAFFIC.errors[:5], [], f"background errors ({len(TRAFFIC.errors)} of {TRAFFIC.n})")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
