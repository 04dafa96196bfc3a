"""End-to-end: the clients work unchanged against a real server started with --api-key and
--admin-key — the OpenAI SDK (completions, chat, streaming), clients/curl_examples.sh,
clients/client.py (library and CLI), clients/openai_example.py, clients/load.py and
clients/locustfile.py — plus the response shapes, adapter selection semantics, auth, the
admin routes and metrics they rely on."""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import types

import e2e
from e2e import BASE_ID, check, check_error, eq, text_of

KEY = "e2e-key-0123"
ADMIN = "e2e-admin-4567"
NODES = ["fr", "fr/manpages", "fr/manpages/alice", "de", "de/witze"]

suite = e2e.Suite("clients", budget=150)
S = None


def setup():
    global S
    reg = e2e.make_registry(suite.tmp, fixtures=False)
    S = suite.server(["--api-key", KEY, "--admin-key", ADMIN], registry=reg, name="server")
    S.start()


def cmpl(body, key=KEY, **kw):
    return S.post("/v1/completions", body, key=key, **kw)


def greedy(prompt, n=8, **sel):
    r = cmpl(dict(sel, prompt=prompt, max_tokens=n, temperature=0))
    check(r.status == 200, f"completion {sel}: {r}")
    return text_of(r.json())


def env_for_clients():
    env = dict(os.environ)
    env.update(ADAPTREE_URL=S.url(), ADAPTREE_API_KEY=KEY, ADAPTREE_ADMIN_KEY=ADMIN)
    return env


def run_client(args, timeout=120, env=None):
    p = subprocess.run(args, capture_output=True, text=True, env=dict(env_for_clients(), **(env or {})),
                       timeout=timeout * e2e.SLOW, cwd=e2e.ROOT)
    return p


# ---- auth ----------------------------------------------------------------------------------


@suite.test
def health_needs_no_key():
    r = S.req("GET", "/health")
    eq(r.status, 200, "GET /health without a key")


@suite.test
def api_key_required_everywhere_else():
    for method, path, body in [("GET", "/v1/models", None), ("GET", "/metrics", None),
                               ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}),
                               ("POST", "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
                               ("POST", "/tokenize", {"prompt": "x"}),
                               ("POST", "/detokenize", {"tokens": [1]})]:
        check_error(S.req(method, path, body), 401, what=f"{method} {path} without a key")
        check_error(S.req(method, path, body, key="wrong"), 401,
                    what=f"{method} {path} with a wrong key")
        check_error(S.req(method, path, body, headers={"Authorization": "Basic " + KEY}), 401,
                    what=f"{method} {path} with a Basic header")
    eq(S.req("GET", "/v1/models", key=KEY).status, 200, "GET /v1/models with the key")
    eq(S.post("/tokenize", {"prompt": "x"}, key=KEY).status, 200, "POST /tokenize with the key")


@suite.test
def admin_routes_refuse_the_plain_key():
    for method, path, body in [("GET", "/v1/adapters", None),
                               ("POST", "/v1/adapters/load", {"id": "de"}),
                               ("POST", "/v1/adapters/unload", {"id": "de"}),
                               ("POST", "/v1/adapters/pin", {"id": "de", "pin": True})]:
        check_error(S.req(method, path, body, key=KEY), 401, statuses=(401, 403),
                    what=f"{method} {path} with the plain API key")
        check_error(S.req(method, path, body), 401, what=f"{method} {path} without a key")
    eq(S.req("GET", "/v1/adapters", key=ADMIN).status, 200, "GET /v1/adapters with the admin key")


# ---- shapes and semantics ------------------------------------------------------------------


@suite.test
def models_lists_base_and_every_node():
    d = S.req("GET", "/v1/models", key=KEY).json()
    eq(d.get("object"), "list", "/v1/models object")
    ids = [m.get("id") for m in d["data"]]
    for n in NODES:
        check(n in ids, f"node {n} not in /v1/models: {ids}")
    by = {m["id"]: m for m in d["data"]}
    eq(by["fr/manpages"].get("parent"), "fr", "parent of fr/manpages")
    eq(by["fr/manpages/alice"].get("parent"), "fr/manpages", "parent of fr/manpages/alice")
    for field in ("rank", "alpha", "targets", "state", "bytes"):
        check(field in by["fr/manpages/alice"], f"/v1/models node has no {field!r}: "
              f"{by['fr/manpages/alice']}")

    # Every node is described from its files, loaded or not (in the background: wait for it).
    def described():
        got = {m["id"]: m for m in S.req("GET", "/v1/models", key=KEY).json()["data"]}
        return got if all(got[n].get("rank") is not None for n in NODES) else None
    by = e2e.wait_until(described, 10, "every node to be described in /v1/models")
    a = by["fr/manpages/alice"]
    eq((a["format"], a["rank"], a["alpha"], a["rslora"], sorted(a["targets"]), a["weight_bytes"]),
       ("peft", 8, 16, False, ["k", "o", "q", "v"], 30 * 8 * (2 * 1152 + 2 * 768) * 2),
       f"fr/manpages/alice described ({a['state']})")
    check(a["state"] != "unloaded" or a["bytes"] == 0, f"unloaded with resident bytes: {a}")
    check(all(m.get("object") == "model" for m in d["data"]), "every entry is object 'model'")
    check(BASE_ID in ids, f"base model id {BASE_ID!r} not in /v1/models: {ids}")
    r = cmpl({"model": BASE_ID, "prompt": "x", "max_tokens": 1})
    eq(r.status, 200, f"model {BASE_ID!r} (the base) accepted: {r}")


@suite.test
def completion_and_chat_shapes():
    r = cmpl({"model": "fr", "prompt": "Debian est", "max_tokens": 8, "temperature": 0})
    eq(r.status, 200, "completion status")
    check("application/json" in r.headers.get("content-type", ""), f"content-type {r.headers}")
    d = r.json()
    eq(d.get("object"), "text_completion", "object")
    c = d["choices"][0]
    check(isinstance(c["text"], str), "choices[0].text is a string")
    check(c.get("finish_reason") in ("stop", "length"), f"finish_reason {c.get('finish_reason')}")
    u = d["usage"]
    check(1 <= u["completion_tokens"] <= 8, f"completion_tokens {u}")
    eq(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"], "total_tokens")
    r = S.post("/v1/chat/completions", {"model": "de", "max_tokens": 8, "temperature": 0,
                                        "messages": [{"role": "user", "content": "Hallo!"}]},
               key=KEY)
    eq(r.status, 200, "chat status")
    d = r.json()
    eq(d.get("object"), "chat.completion", "chat object")
    m = d["choices"][0]["message"]
    eq(m.get("role"), "assistant", "message role")
    check(isinstance(m.get("content"), str), "message content is a string")


@suite.test
def stream_equals_non_stream():
    for path, body in [("/v1/completions", {"model": "fr/manpages", "prompt": "La commande"}),
                       ("/v1/chat/completions",
                        {"model": "de", "messages": [{"role": "user", "content": "Ein Witz?"}]}),
                       ("/v1/completions", {"prompt": "日本語の文章：東京は🗼", "stop": ["\n\n"]})]:
        body = dict(body, max_tokens=12, temperature=0)
        whole = S.post(path, body, key=KEY)
        eq(whole.status, 200, f"{path} non-stream")
        st, events, raw = e2e.stream(S.port, path, dict(body, stream=True,
                                                       stream_options={"include_usage": True}),
                                     key=KEY)
        eq(st, 200, f"{path} stream status ({raw[:200]!r})")
        eq(events[-1], "[DONE]", f"{path} last event")
        eq(e2e.stream_text(events), text_of(whole.json()), f"{path} streamed text")
        usage = [ev["usage"] for ev in events[:-1] if ev.get("usage")]
        check(usage, f"{path}: no usage chunk with include_usage")
        eq(usage[-1]["completion_tokens"], whole.json()["usage"]["completion_tokens"],
           f"{path} streamed completion_tokens")
        eq(e2e.stream_finish(events), whole.json()["choices"][0]["finish_reason"],
           f"{path} streamed finish_reason")
        obj = "chat.completion.chunk" if "chat" in path else "text_completion"
        eq(events[0].get("object"), obj, f"{path} chunk object")


@suite.test
def selection_semantics():
    p = "Debian est"
    base = greedy(p)
    eq(greedy(p, model="base"), base, "model 'base' = no model")
    listed = e2e.advertised_base_id(S, key=KEY)
    eq(greedy(p, model=listed), base, f"model {listed!r} (the id /v1/models lists) = no model")
    fr = greedy(p, model="fr")
    check(fr != base, f"fr changes nothing: {fr!r}")
    eq(greedy(p, adapters=[{"id": "fr", "scale": 1.0}]), fr, "adapters [fr:1] = model fr")
    eq(greedy(p, adapters=[{"id": "fr"}]), fr, "adapters [fr] (default scale 1) = model fr")
    chain = greedy(p, model="fr/manpages")
    eq(greedy(p, adapters=[{"id": "fr"}, {"id": "fr/manpages"}]), chain,
       "adapters [fr, fr/manpages] = model fr/manpages (the chain)")
    eq(greedy(p, model="fr", adapters=[{"id": "fr/manpages"}]), chain,
       "model fr + adapters [fr/manpages] = the chain fr/manpages")
    only_leaf = greedy(p, adapters=[{"id": "fr/manpages"}])
    check(only_leaf != chain, "adapters [fr/manpages] alone applies its ancestors too")


@suite.test
def seed_stop_echo_logprobs():
    body = {"model": "de", "prompt": "Ein Mann", "max_tokens": 12, "temperature": 0.9,
            "top_p": 0.95, "seed": 1234}
    a, b = cmpl(body), cmpl(body)
    eq((a.status, b.status), (200, 200), "sampled requests")
    eq(text_of(b.json()), text_of(a.json()), "same seed, same text")
    full = greedy("The three most important things about Linux are", n=24)
    check(len(full) > 12, f"greedy text too short for a stop test: {full!r}")
    stop = full[6:9]
    cut = full[:full.index(stop)]
    r = cmpl({"prompt": "The three most important things about Linux are", "max_tokens": 24,
              "temperature": 0, "stop": [stop]})
    eq(r.status, 200, "stop request")
    eq(text_of(r.json()), cut, f"text with stop {stop!r}")
    eq(r.json()["choices"][0]["finish_reason"], "stop", "finish_reason with a stop string")
    r = cmpl({"prompt": "Hello there", "max_tokens": 4, "temperature": 0, "echo": True})
    eq(r.status, 200, "echo request")
    check(text_of(r.json()).startswith("Hello there"), f"echo: {text_of(r.json())!r}")
    r = cmpl({"prompt": "Hello there", "max_tokens": 4, "temperature": 0, "logprobs": 2})
    eq(r.status, 200, "logprobs request")
    lp = r.json()["choices"][0].get("logprobs") or {}
    n = r.json()["usage"]["completion_tokens"]
    eq(len(lp.get("tokens") or []), n, f"logprobs.tokens length ({lp})")
    eq(len(lp.get("token_logprobs") or []), n, "logprobs.token_logprobs length")
    check(all(x <= 1e-6 for x in lp["token_logprobs"]), f"logprobs > 0: {lp['token_logprobs']}")
    eq(len(lp.get("top_logprobs") or []), n, "logprobs.top_logprobs length")


@suite.test
def echo_logprobs_score_the_prompt():
    """echo + logprobs reports the prompt's tokens too (the first with null), as OpenAI's legacy
    completions do and lm-evaluation-harness relies on (max_tokens 0: scoring only). A prompt
    token's logprob equals the one the model gives the same token when it generates it."""
    prompt = "The capital of France is"
    r = cmpl({"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 2})
    eq(r.status, 200, f"scoring request: {r}")
    ch = r.json()["choices"][0]
    lp, n = ch["logprobs"], r.json()["usage"]["prompt_tokens"]
    eq(ch["text"], prompt, "echo text")
    eq(len(lp["tokens"]), n, f"one entry per prompt token: {lp}")
    eq("".join(lp["tokens"]), prompt, "the tokens spell the prompt")
    check(lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None,
          f"the first token has no logprob: {lp['token_logprobs'][:2]} {lp['top_logprobs'][:2]}")
    check(all(x is not None and x <= 1e-6 for x in lp["token_logprobs"][1:]),
          f"prompt logprobs: {lp['token_logprobs']}")
    check(all(len(t) <= 2 for t in lp["top_logprobs"][1:]), f"top_logprobs: {lp['top_logprobs']}")
    offs = [sum(len(t.encode()) for t in lp["tokens"][:i]) for i in range(n)]
    eq(lp["text_offset"], offs, "text_offset of the prompt tokens")
    # the greedy continuation's first token, scored as part of a token-id prompt
    g = cmpl({"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 1,
              "echo": True})
    eq(g.status, 200, f"greedy with echo: {g}")
    glp = g.json()["choices"][0]["logprobs"]
    eq(len(glp["tokens"]), n + 1, "echo + one generated token")
    eq(glp["text_offset"][n], len(prompt.encode()), "the generated token starts after the echo")
    gen_tok, gen_lp = glp["tokens"][n], glp["token_logprobs"][n]
    sc = cmpl({"prompt": prompt + gen_tok, "max_tokens": 0, "echo": True, "logprobs": 1})
    slp = sc.json()["choices"][0]["logprobs"]
    eq(slp["tokens"][-1], gen_tok, "the prompt plus the generated token tokenizes alike")
    check(abs(slp["token_logprobs"][-1] - gen_lp) <= 1e-3,
          f"{gen_tok!r}: scored {slp['token_logprobs'][-1]} vs generated {gen_lp}")
    ids = cmpl({"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0})
    eq(ids.status, 200, "logprobs 0")
    eq(ids.json()["choices"][0]["logprobs"]["top_logprobs"][1], {}, "logprobs 0: no alternatives")
    # streaming: the echo chunk carries the prompt's logprobs
    st, events, raw = e2e.stream(S.port, "/v1/completions",
                                 {"prompt": prompt, "max_tokens": 2, "echo": True, "logprobs": 1,
                                  "temperature": 0, "stream": True}, key=KEY)
    eq(st, 200, f"stream: {raw[:300]!r}")
    first = events[0]["choices"][0]
    eq(first["text"], prompt, "first chunk: the echo")
    eq(first["logprobs"]["tokens"], lp["tokens"], "first chunk: the prompt's tokens")
    d = max(abs(a - b) for a, b in zip(first["logprobs"]["token_logprobs"][1:],
                                       lp["token_logprobs"][1:]))
    check(d <= 1e-4, f"streamed prompt logprobs differ by {d:.3g}")
    # a prompt longer than a step's spare logits rows (32), alone and next to three others
    long_prompt = "Debian is a free operating system. " * 12
    body = {"prompt": long_prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
    alone = cmpl(body).json()["choices"][0]["logprobs"]["token_logprobs"]
    check(len(alone) > 64 and alone[0] is None, f"long prompt: {len(alone)} entries")
    res = [None] * 4

    def run(i):
        b = body if i == 0 else {"prompt": long_prompt[i:], "max_tokens": 8, "echo": True,
                                 "logprobs": 1, "temperature": 0}
        res[i] = cmpl(b)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120 * e2e.SLOW)
    check(all(x is not None and x.status == 200 for x in res), f"concurrent scoring: {res}")
    together = res[0].json()["choices"][0]["logprobs"]["token_logprobs"]
    eq(len(together), len(alone), "long prompt entries, batched")
    d = max(abs(a - b) for a, b in zip(alone[1:], together[1:]))
    check(d <= 1e-4, f"long prompt logprobs batched vs alone differ by {d:.3g}")
    print(f"    {n} prompt tokens scored; {gen_tok!r} generated at {gen_lp:.6f}, scored at "
          f"{slp['token_logprobs'][-1]:.6f}")


@suite.test
def chat_content_parts_roles_and_zero_tokens():
    msgs = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name a Linux distribution."}]
    body = {"max_tokens": 8, "temperature": 0}
    want = S.post("/v1/chat/completions", dict(body, messages=msgs), key=KEY)
    eq(want.status, 200, "chat with string contents")
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
             {"role": "user", "content": [{"type": "text", "text": "Name a Linux "},
                                          {"type": "text", "text": "distribution."}]}]
    got = S.post("/v1/chat/completions", dict(body, messages=parts), key=KEY)
    eq(got.status, 200, f"chat with content parts and a developer message: {got}")
    eq(text_of(got.json()), text_of(want.json()),
       "content parts + developer role = plain strings + system role")
    r = cmpl({"prompt": "Hello", "max_tokens": 0, "echo": True})
    eq(r.status, 200, f"max_tokens 0 with echo: {r}")
    eq(text_of(r.json()), "Hello", "max_tokens 0 with echo returns the prompt")
    eq(r.json()["usage"]["completion_tokens"], 0, "max_tokens 0: completion_tokens")


@suite.test
def stream_stop_and_keep_alive():
    p = "The three most important things about Linux are"
    full = greedy(p, n=24)
    stop = full[6:9]
    st, events, raw = e2e.stream(S.port, "/v1/completions",
                                 {"prompt": p, "max_tokens": 24, "temperature": 0,
                                  "stop": [stop], "stream": True}, key=KEY)
    eq(st, 200, "stream with stop")
    eq(e2e.stream_text(events), full[:full.index(stop)], f"streamed text with stop {stop!r}")
    eq(e2e.stream_finish(events), "stop", "streamed finish_reason with stop")
    # One keep-alive connection: plain, streamed, refused, plain again.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", S.port, timeout=60 * e2e.SLOW)
    h = {"Content-Type": "application/json", "Authorization": "Bearer " + KEY}
    try:
        for body, want in [({"prompt": "Hi", "max_tokens": 3}, 200),
                           ({"prompt": "Hi", "max_tokens": 3, "stream": True}, 200),
                           ({"prompt": 5}, 400), ({"model": "nope", "prompt": "x"}, 404),
                           ({"prompt": "Hi", "max_tokens": 3}, 200)]:
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers=h)
            r = conn.getresponse()
            data = r.read()
            eq(r.status, want, f"keep-alive request {body}: {data[:200]!r}")
            if body.get("stream"):
                check(data.rstrip().endswith(b"data: [DONE]"), f"keep-alive stream: {data[-80:]!r}")
    finally:
        conn.close()


@suite.test
def curl_large_body_expect_100_continue():
    """curl sends "Expect: 100-continue" for bodies over 1 KiB."""
    body = json.dumps({"prompt": "word " * 400 + "end.", "max_tokens": 2})
    p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                        str(int(60 * e2e.SLOW)), "-H", "Content-Type: application/json",
                        "-H", "Authorization: Bearer " + KEY, "-H", "Expect: 100-continue",
                        "--data-binary", "@-", S.url() + "/v1/completions"],
                       input=body, capture_output=True, text=True, timeout=90 * e2e.SLOW)
    eq(p.stdout, "200", f"curl with a {len(body)}-byte body ({p.stderr})")


@suite.test
def unknown_route_is_json_404():
    check_error(S.req("GET", "/v1/nothing", key=KEY), 404, what="GET /v1/nothing")


# ---- admin -----------------------------------------------------------------------------------


def node_state(node_id):
    return e2e.adapter_node(S, node_id, key=ADMIN)


@suite.test
def admin_load_pin_unload():
    r = S.post("/v1/adapters/load", {"id": "de/witze", "pin": True}, key=ADMIN)
    eq(r.status, 200, f"load de/witze: {r}")
    eq(r.json().get("state"), "ready", f"the load waits for its result: {r.json()}")
    n = node_state("de/witze")
    eq(n.get("pinned"), True, f"de/witze pinned: {n}")
    eq(n.get("version"), r.json().get("version"), "the version the load answered")
    eq(S.post("/v1/adapters/pin", {"id": "de/witze", "pin": False}, key=ADMIN).status, 200,
       "unpin")
    eq(node_state("de/witze").get("pinned"), False, "de/witze unpinned")
    eq(S.post("/v1/adapters/unload", {"id": "de/witze"}, key=ADMIN).status, 200, "unload")
    e2e.wait_until(lambda: node_state("de/witze").get("state") == "unloaded", 10,
                   "de/witze unloaded")
    check_error(S.post("/v1/adapters/load", {"id": "no/such"}, key=ADMIN), 404,
                what="load an unknown id")
    check_error(S.post("/v1/adapters/load", {"id": "../x"}, key=ADMIN), 400,
                what="load a malformed id")
    check_error(S.post("/v1/adapters/load", {"nope": 1}, key=ADMIN), 400, what="load without id")
    # After an unload the adapter still serves (it loads again on use).
    eq(cmpl({"model": "de/witze", "prompt": "Ein Mann", "max_tokens": 2}).status, 200,
       "de/witze after unload")


@suite.test
def metrics_per_adapter():
    greedy("grep :", n=2, model="fr/manpages/alice")
    m = e2e.metrics(S, key=KEY)
    names = {k[0] for k in m}
    check(any(n.startswith("adaptree_") for n in names), f"no adaptree_ series: {sorted(names)}")
    labelled = {dict(lbl).get("adapter") for (name, lbl) in m if lbl}
    check("fr/manpages/alice" in labelled or "fr" in labelled,
          f"no per-adapter series for fr/manpages/alice: adapter labels {sorted(map(str, labelled))}")


# ---- the clients -----------------------------------------------------------------------------


@suite.test
def openai_sdk_unchanged():
    import openai

    c = openai.OpenAI(base_url=S.url() + "/v1", api_key=KEY, max_retries=0,
                      timeout=60 * e2e.SLOW)
    r = c.completions.create(model="fr/manpages/alice", prompt="grep :", max_tokens=10,
                             temperature=0)
    eq(r.choices[0].text, greedy("grep :", n=10, model="fr/manpages/alice"), "SDK completion")
    check(r.usage.completion_tokens >= 1, "SDK completion usage")
    r = c.chat.completions.create(model="de", messages=[{"role": "user", "content": "Hallo!"}],
                                  max_tokens=8, temperature=0)
    check(isinstance(r.choices[0].message.content, str), "SDK chat content")
    want = r.choices[0].message.content
    got, usage = "", None
    for ch in c.chat.completions.create(model="de",
                                        messages=[{"role": "user", "content": "Hallo!"}],
                                        max_tokens=8, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            got += ch.choices[0].delta.content
        usage = ch.usage or usage
    eq(got, want, "SDK chat stream = chat")
    check(usage is not None and usage.completion_tokens >= 1, f"SDK stream usage {usage}")
    got = "".join(ch.choices[0].text for ch in c.completions.create(
        model="base", prompt="Debian est", max_tokens=8, temperature=0, stream=True,
        extra_body={"adapters": [{"id": "fr", "scale": 1.0}]}) if ch.choices)
    eq(got, greedy("Debian est", model="fr"), "SDK stream with extra_body adapters")
    ids = [m.id for m in c.models.list()]
    check("de/witze" in ids, f"SDK models.list: {ids}")
    try:
        c.completions.create(model="no/such/adapter", prompt="x", max_tokens=1)
        raise e2e.Fail("unknown adapter did not raise")
    except openai.NotFoundError as e:
        eq(e.status_code, 404, "SDK NotFoundError status")
        eq(getattr(e, "code", None), "model_not_found", "SDK error code")
    bad = openai.OpenAI(base_url=S.url() + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise e2e.Fail("wrong key did not raise")
    except openai.AuthenticationError:
        pass


@suite.test
def openai_example_script():
    p = run_client([sys.executable, "clients/openai_example.py", "--max-tokens", "8"])
    check(p.returncode == 0, f"openai_example.py exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    check("[models]" in p.stdout, f"openai_example.py output: {p.stdout}")


@suite.test
def curl_examples_script():
    p = run_client(["sh", "clients/curl_examples.sh"], timeout=180)
    check(p.returncode == 0, f"curl_examples.sh exit {p.returncode}\n{p.stdout[-3000:]}\n"
          f"{p.stderr[-1000:]}")


@suite.test
def client_py_library_and_cli():
    import client

    c = client.Client(S.url(), api_key=KEY, admin_key=ADMIN, timeout=60 * e2e.SLOW)
    want = greedy("La commande", n=10, model="fr/manpages")
    eq(text_of(c.complete("La commande", model="fr/manpages", max_tokens=10, temperature=0)),
       want, "client.complete")
    eq("".join(c.stream_text(c.stream_complete("La commande", model="fr/manpages",
                                               max_tokens=10, temperature=0))),
       want, "client.stream_complete")
    r = c.chat("Hallo!", model="de", max_tokens=6, temperature=0)
    eq("".join(c.stream_text(c.stream_chat("Hallo!", model="de", max_tokens=6, temperature=0))),
       text_of(r), "client.stream_chat = chat")
    check("fr/manpages" in [m["id"] for m in c.models()["data"]], "client.models")
    c.load("de", pin=True)
    c.pin("de", False)
    c.unload("de")
    check(e2e.find_node(c.adapters(), "de") is not None, "client.adapters")
    check(any(k[0].startswith("adaptree_") for k in c.metrics()), "client.metrics")
    try:
        c.complete("x", model="no/such", max_tokens=1)
        raise e2e.Fail("unknown adapter did not raise")
    except client.AdaptreeError as e:
        eq((e.status, e.code), (404, "model_not_found"), "client error")
    p = run_client([sys.executable, "clients/client.py", "complete", "La commande", "-m",
                    "fr/manpages", "-n", "10"])
    eq(p.returncode, 0, f"client.py CLI exit ({p.stderr})")
    eq(p.stdout, want + "\n", "client.py complete output")
    p = run_client([sys.executable, "clients/client.py", "chat", "Hallo!", "-m", "de", "-n", "6",
                    "--stream"])
    eq(p.stdout, text_of(r) + "\n", f"client.py chat --stream output ({p.stderr})")
    p = run_client([sys.executable, "clients/client.py", "adapters"])
    eq(p.returncode, 0, f"client.py adapters exit ({p.stderr})")


@suite.test
def load_py_json():
    p = run_client([sys.executable, "clients/load.py", "-c", "4", "-r", "8", "-n", "6",
                    "--model", "fr", "--model", "base", "--json"])
    check(p.returncode == 0, f"load.py exit {p.returncode}: {p.stdout} {p.stderr}")
    d = json.loads(p.stdout.strip().splitlines()[-1])
    eq((d["requests"], d["errors"]), (8, 0), f"load.py requests/errors ({d['error_samples']})")
    check(d["generated_tokens"] > 0 and d["tok_per_s"] > 0, f"load.py tokens: {d}")
    check(d["ttft_ms_p50"] is not None and d["itl_ms_p50"] is not None, f"load.py latencies {d}")


class _ShimResponse:
    """Just what clients/locustfile.py uses of Locust's (requests') response."""

    def __init__(self, user, conn, resp, name):
        self.user, self.conn, self.resp, self.name = user, conn, resp, name
        self.status_code = resp.status
        self._body = None
        self.outcome = None

    @property
    def text(self):
        if self._body is None:
            self._body = self.resp.read()
        return self._body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.text)

    def iter_lines(self):
        while True:
            line = self.resp.readline()
            if not line:
                return
            yield line.rstrip(b"\r\n")

    def success(self):
        self.outcome = "ok"

    def failure(self, msg):
        self.outcome = msg

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.conn.close()
        self.user.outcomes.append((self.name, self.outcome if not exc[0] else repr(exc[1])))
        return False


def _locust_shim():
    import http.client

    mod = types.ModuleType("locust")
    fired = []

    def task(weight=1):
        if callable(weight):
            weight.locust_task_weight = 1
            return weight

        def deco(fn):
            fn.locust_task_weight = weight
            return fn
        return deco

    class Session:
        def __init__(self, user, port):
            self.user, self.port, self.headers = user, port, {}

        def post(self, path, json=None, name=None, stream=False, catch_response=False):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60 * e2e.SLOW)
            h = dict(self.headers, **{"Content-Type": "application/json"})
            conn.request("POST", path, body=__import__("json").dumps(json).encode(), headers=h)
            return _ShimResponse(self.user, conn, conn.getresponse(), name)

    class HttpUser:
        def __init__(self, port):
            self.outcomes = []
            self.client = Session(self, port)

    mod.HttpUser = HttpUser
    mod.task = task
    mod.between = lambda a, b: (lambda self: a)
    mod.events = types.SimpleNamespace(request=types.SimpleNamespace(
        fire=lambda **kw: fired.append(kw)))
    return mod, fired


@suite.test
def locustfile_tasks():
    """Each task of clients/locustfile.py once, through a stand-in for the locust module (the
    real one is in tools/requirements-load.txt); with .venv-load present, also real headless
    Locust for a few seconds."""
    shim, fired = _locust_shim()
    saved = sys.modules.get("locust")
    sys.modules["locust"] = shim
    os.environ["ADAPTREE_API_KEY"] = KEY
    os.environ["LOCUST_MAX_TOKENS"] = "6"
    try:
        spec = importlib.util.spec_from_file_location("locustfile_e2e",
                                                      os.path.join(e2e.CLIENTS, "locustfile.py"))
        lf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lf)
    finally:
        os.environ.pop("ADAPTREE_API_KEY", None)
        os.environ.pop("LOCUST_MAX_TOKENS", None)
        if saved is None:
            del sys.modules["locust"]
        else:
            sys.modules["locust"] = saved
    user = lf.AdaptreeUser(S.port)
    user.on_start()
    tasks = [getattr(user, n) for n in dir(lf.AdaptreeUser)
             if hasattr(getattr(lf.AdaptreeUser, n), "locust_task_weight")]
    check(len(tasks) >= 5, f"locustfile has {len(tasks)} tasks")
    for t in tasks:
        t()
    bad = [(n, o) for n, o in user.outcomes if o != "ok"]
    eq(bad, [], "locust task failures")
    eq(len(user.outcomes), len(tasks), "one outcome per task")
    check(any(f.get("request_type") == "TTFT" for f in fired), "no TTFT event from streams")
    locust = os.path.join(e2e.ROOT, ".venv-load", "bin", "locust")
    if os.access(locust, os.X_OK):
        p = run_client([locust, "-f", "clients/locustfile.py", "--host", S.url(), "--headless",
                        "-u", "4", "-r", "4", "-t", "5s", "--only-summary"], timeout=90,
                       env={"LOCUST_MAX_TOKENS": "6"})
        check(p.returncode == 0, f"locust exit {p.returncode}\n{p.stdout[-2000:]}"
              f"\n{p.stderr[-2000:]}")


if __name__ == "__main__":
    sys.exit(e2e.run_file(__file__))
