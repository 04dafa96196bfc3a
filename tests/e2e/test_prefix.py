"""End-to-end prefix cache and paged KV (README, 'KV cache and prefix cache'): a repeated prompt
skips the prefill of its cached blocks (usage.prompt_tokens_details.cached_tokens) and gives the
same greedy tokens and logprobs within the batch-invariance tolerance, also when the hit covers
the whole prompt; the cache key is the adapter set's content, so another set, another scale or a
reloaded adapter version never hits; a KV pool too small for the load makes requests wait or be
preempted and recomputed, with the same texts, and with the prefix cache a preempted request takes
back its cached blocks; a pool smaller than one context is refused at start-up."""

import os
import shutil
import threading

import e2e
from e2e import check, eq

suite = e2e.Suite("prefix", budget=240)
S = None
REG = None
LOGPROB_TOL = 2e-3  # the batch-invariance tolerance of test_batch's logprobs checks

TEXT = ("The Debian project is an association of individuals who have made common cause to "
        "create a free operating system. This operating system is called Debian. ")


def complete(body, server=None):
    r = (server or S).post("/v1/completions", dict(body, temperature=0), timeout=120)
    check(r.status == 200, f"completion: {r}")
    d = r.json()
    c = d["choices"][0]
    lps = (c.get("logprobs") or {}).get("token_logprobs") or []
    cached = d["usage"].get("prompt_tokens_details", {}).get("cached_tokens")
    return c["text"], lps, cached, d["usage"]["prompt_tokens"]


def same_output(a, b, what):
    eq(b[0], a[0], f"{what}: text")
    eq(len(b[1]), len(a[1]), f"{what}: logprob count")
    worst = max((abs(x - y) for x, y in zip(a[1], b[1])), default=0.0)
    print(f"    {what}: max |logprob diff| {worst:.3g} (tol {LOGPROB_TOL})")
    check(worst <= LOGPROB_TOL, f"{what}: logprobs differ by {worst}")


def setup():
    global S, REG
    REG = e2e.make_registry(suite.tmp)
    shutil.copytree(os.path.join(e2e.FIXTURES, "qv_r4"), os.path.join(REG, "ver"))
    S = suite.server(registry=REG, name="server")
    S.start()


@suite.test
def repeated_prompt_hits_and_gives_the_same_tokens():
    body = {"prompt": TEXT * 3, "max_tokens": 12, "logprobs": 1}
    first = complete(body)
    eq(first[2], 0, "cached_tokens of a first request")
    n = first[3]
    check(n > 48, f"prompt of {n} tokens")
    second = complete(body)
    want = min(n // 16 * 16, n - 1)
    eq(second[2], want, f"cached_tokens of the repeat ({n} prompt tokens)")
    same_output(first, second, "repeat with a cache hit")
    # a longer prompt starting with the same text reuses the blocks it shares
    longer = complete(dict(body, prompt=TEXT * 3 + "It was founded in"))
    check(longer[2] >= n // 16 * 16, f"the longer prompt reused {longer[2]} of {n}")


@suite.test
def hit_covering_the_whole_prompt():
    """A prompt of exactly 64 tokens, cached whole: its last token is computed again (on a copy
    of the cached block, which stays as it was for the next reader)."""
    ids = list(range(1200, 1264))
    body = {"prompt": ids, "max_tokens": 10, "logprobs": 1}
    first = complete(body)
    eq(first[3], 64, "prompt tokens")
    second = complete(body)
    eq(second[2], 63, "cached_tokens")
    same_output(first, second, "whole-prompt hit")
    third = complete(body)
    eq(third[2], 63, "cached_tokens of a third request")
    same_output(first, third, "whole-prompt hit again")


@suite.test
def cache_key_is_the_adapter_set():
    prompt = TEXT * 2 + "Debian est"
    base = {"prompt": prompt, "max_tokens": 8}
    complete(base)
    eq(complete(base)[2] > 0, True, "base model repeat hits")
    fr = dict(base, model="fr")
    a = complete(fr)
    eq(a[2], 0, "the same prompt under fr after the base model: cached_tokens")
    b = complete(fr)
    check(b[2] > 0, "fr repeat hits")
    eq(b[0], a[0], "fr repeat text")
    half = dict(base, adapters=[{"id": "fr", "scale": 0.5}])
    eq(complete(half)[2], 0, "fr at scale 0.5 after fr at 1.0: cached_tokens")
    chain = dict(base, model="fr/manpages")
    eq(complete(chain)[2], 0, "fr/manpages (fr + manpages) after fr: cached_tokens")
    two = dict(base, adapters=[{"id": "fr", "scale": 1.0}, {"id": "de", "scale": 1.0}])
    eq(complete(two)[2], 0, "fr + de after fr: cached_tokens")


@suite.test
def reloaded_adapter_version_never_hits():
    body = {"prompt": TEXT * 2, "max_tokens": 8, "model": "ver", "logprobs": 1}
    v1 = complete(body)
    check(complete(body)[2] > 0, "ver repeat hits")
    d = os.path.join(REG, "ver")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        tmp = os.path.join(suite.tmp, f + ".new")
        shutil.copyfile(os.path.join(e2e.FIXTURES, "all_rslora_r8", f), tmp)
        os.rename(tmp, os.path.join(d, f))
    r = S.post("/v1/adapters/load", {"id": "ver"})
    eq(r.status, 200, f"reload ver: {r}")
    v2 = complete(body)
    eq(v2[2], 0, "the same prompt under ver's new version: cached_tokens")
    diff = max(abs(x - y) for x, y in zip(v1[1], v2[1]))
    check(v2[0] != v1[0] or diff > 1e-3,
          "the new version changes nothing (else the test proves nothing)")
    check(complete(body)[2] > 0, "the new version's repeat hits")


@suite.test
def metrics_count_hits_misses_and_blocks():
    m = e2e.metrics(S)

    def val(name, labels=()):
        return m.get((name, tuple(labels)))

    hits, lookups = val("adaptree_prefix_cache_hits_total"), \
        val("adaptree_prefix_cache_lookups_total")
    check(hits and hits >= 6, f"hits {hits}")
    check(val("adaptree_prefix_cache_misses_total") == lookups - hits, "misses = lookups - hits")
    check(val("adaptree_prefix_cache_hit_tokens_total") >= 63 * 2, "hit tokens")
    check(val("adaptree_prefix_cache_blocks") > 0, "cached blocks")
    check(val("adaptree_kv_blocks") >= val("adaptree_kv_blocks_used"), "used <= total")
    per = {labels: v for (name, labels), v in m.items()
           if name == "adaptree_adapter_cached_tokens_total"}
    check(any(v > 0 and "fr" in str(l) for l, v in per.items()),
          f"per-adapter cached tokens: {per}")


@suite.test
def no_prefix_cache_flag(server_factory):
    s = server_factory(["--no-prefix-cache"], registry=REG, name="nocache")
    body = {"prompt": TEXT * 3, "max_tokens": 12, "logprobs": 1}
    a = complete(body, s)
    b = complete(body, s)
    eq((a[2], b[2]), (0, 0), "cached_tokens without the cache")
    same_output(complete(body), a, "cache hit on one server vs no cache on another")
    m = e2e.metrics(s)
    eq(m.get(("adaptree_prefix_cache_blocks", ())), 0, "cached blocks without the cache")


def small_pool(server_factory, prefix):
    """--ctx 256 and a pool of 14 MB (19 blocks of 16 positions): six requests that grow to
    about 150 positions each (10 blocks) cannot all run; they wait or are preempted and
    computed again, and each text is the one it gives alone. Returns the metrics."""
    args = ["--ctx", "256", "--kv-cache-mb", "14", "--max-seqs", "8"]
    s = server_factory(args + ([] if prefix else ["--no-prefix-cache"]), registry=REG,
                       name="smallpool-prefix" if prefix else "smallpool")
    prompts = [f"{TEXT} Story number {i}: once upon a time" for i in range(6)]
    bodies = [{"prompt": p, "max_tokens": 100} for p in prompts]
    alone = [complete(b, s)[0] for b in bodies[:3]]
    out = [None] * len(bodies)

    def run(i):
        out[i] = complete(bodies[i], s)[0]

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(3):
        eq(out[i], alone[i], f"request {i} under pressure vs alone")
    m = e2e.metrics(s)
    pre = m.get(("adaptree_kv_preemptions_total", ()))
    waits = m.get(("adaptree_kv_admission_waits_total", ()))
    resumed = m.get(("adaptree_kv_resumed_tokens_total", ()))
    print(f"    preemptions {pre}, admission waits {waits}, positions resumed {resumed}")
    check(pre + waits > 0, "the pool was never short: the test proves nothing")

    # the gauges follow the engine's step, which may end after the last answer went out
    def only_cached():
        g = e2e.metrics(s)
        return g.get(("adaptree_kv_blocks_used", ())) == g.get(("adaptree_prefix_cache_blocks", ()))

    e2e.wait_until(only_cached, 10, "no KV block in use but the prefix cache's after the requests")
    return m


@suite.test
def small_pool_waits_and_preempts_with_the_same_texts(server_factory):
    m = small_pool(server_factory, prefix=False)
    eq(m.get(("adaptree_kv_resumed_tokens_total", ())), 0, "resumed without a prefix cache")


@suite.test
def preempted_requests_resume_from_the_prefix_cache(server_factory):
    """With the prefix cache, a preempted request's full blocks are cached as it is preempted;
    those still there when it runs again are not computed again, and its text is the same."""
    m = small_pool(server_factory, prefix=True)
    if m.get(("adaptree_kv_preemptions_total", ())) > 0:
        check(m.get(("adaptree_kv_resumed_tokens_total", ())) > 0,
              "preempted, but nothing taken back from the prefix cache")


@suite.test
def pool_smaller_than_one_context_is_refused():
    s = suite.server(name="tiny", args=["--ctx", "2048", "--kv-cache-mb", "8"])
    try:
        s.start(timeout=20)
        raise e2e.Fail("started with a pool smaller than one context")
    except e2e.Fail as f:
        check("--kv-cache-mb 8 holds less than one sequence" in str(f), f"message: {f}")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
