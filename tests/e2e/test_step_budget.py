"""End-to-end step budget (server/step_budget.h, --max-step-ms) and prefill chunking: a long prompt
(~1500 tokens) gives the same greedy tokens however its prefill is split (the default, alone;
--prefill-chunk 64, alone; --max-step-ms 0 beside a running stream: 256-row chunks; --max-step-ms 1
beside a running stream: the minimum chunk every step), and the budget shapes the steps: under the
tiny target the prompt is spread over one step per minimum chunk, none of them large, and every
step is counted over its target; with --max-step-ms 0 it takes a few full chunks and nothing is
counted; under the tiny target another client's short prompt is not held back by a long one.
Structure (rows and steps from /metrics, which request ends first), never wall-clock times."""

import math

import e2e
from e2e import check, eq

suite = e2e.Suite("step_budget", budget=240)
MIN_ROWS = 8  # SRV_STEP_MIN_PROMPT_ROWS
CHUNK = 256  # the default --prefill-chunk
SERVERS = {}

# About 1500 tokens of varied text, so that greedy decoding after it is not a loop of one token.
LONG = " ".join(f"Entry {i}: the {w} in box {i * 7 % 13} weighs {i * 3 % 17} grams and is {c}."
                for i, (w, c) in enumerate(
                    [("apple", "red"), ("stone", "grey"), ("feather", "white"),
                     ("coin", "golden"), ("leaf", "green"), ("shell", "pink")] * 13))
LONG += " Question: what does the last entry say? Answer:"
# A stream that keeps decoding (greedy counting runs for hundreds of tokens).
COUNT = {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 600, "temperature": 0, "stream": True}


def setup():
    common = ["--max-seqs", "4"]
    for name, args in [("default", []), ("chunk64", ["--prefill-chunk", "64"]),
                       ("fixed", ["--max-step-ms", "0"]), ("tiny", ["--max-step-ms", "1"])]:
        SERVERS[name] = suite.server(args=common + args, name=name).start()


def long_prompt(s):
    r = s.post("/v1/completions", {"prompt": LONG, "max_tokens": 16, "temperature": 0},
               timeout=180)
    check(r.status == 200, f"{s.name}: {r}")
    d = r.json()
    return d["choices"][0]["text"], d["usage"]["prompt_tokens"]


class StopStream(Exception):
    pass


def background_stream(s):
    """Streams COUNT on s in the background until state["stop"] is set; state["started"] and
    state["ended"] say whether a token came and whether the stream finished on its own."""
    state = {"started": False, "stop": False, "ended": False}

    def on_event(i, ev):
        if ev == "[DONE]" or any(c.get("finish_reason") for c in ev.get("choices") or []):
            state["ended"] = True
        state["started"] = True
        if state["stop"]:
            raise StopStream()

    def run():
        try:
            e2e.stream(s.port, "/v1/completions", COUNT, timeout=180, on_event=on_event)
        except StopStream:
            pass

    return e2e.Background(run), state


def beside_a_stream(s):
    """The long prompt sent while a stream decodes: its text, its prompt tokens, and the
    /metrics before and after it. Checks that the stream ran all along, then cuts it."""
    bg, state = background_stream(s)
    e2e.wait_until(lambda: state["started"], 60, f"{s.name}: the stream's first token")
    before = e2e.metrics(s)
    text, n = long_prompt(s)
    after = e2e.metrics(s)
    check(not state["ended"], f"{s.name}: the stream ended before the long prompt did; the "
          "prompt's steps were not all beside a decode row")
    state["stop"] = True
    bg.result(60)
    return text, n, before, after


def delta(before, after, name, labels=()):
    return after.get((name, labels), 0) - before.get((name, labels), 0)


RESULTS = {}


@suite.test
def same_tokens_however_the_prompt_is_split():
    m = e2e.metrics(SERVERS["default"])
    eq(m[("adaptree_step_target_ms", ())], 0.0, "the target before any step with decode rows")
    ref, n = long_prompt(SERVERS["default"])
    check(n >= 1200, f"the long prompt has only {n} tokens")
    check(ref.strip(), "an empty completion after the long prompt")
    eq(long_prompt(SERVERS["chunk64"])[0], ref, "--prefill-chunk 64, alone")
    for name in ("fixed", "tiny"):
        text, n2, before, after = beside_a_stream(SERVERS[name])
        eq(n2, n, f"{name}: prompt tokens")
        eq(text, ref, f"--max-step-ms {name}, beside a running stream")
        RESULTS[name] = (before, after)


@suite.test
def tiny_target_spreads_the_prompt_over_minimum_chunks():
    check("tiny" in RESULTS, "no measurement (the test above failed first)")
    before, after = RESULTS["tiny"]
    n = delta(before, after, "adaptree_prompt_tokens_total")
    steps = delta(before, after, "adaptree_steps_total")
    mixed = steps - delta(before, after, "adaptree_decode_steps_total")
    check(n >= 1200, f"{n} prompt tokens computed during the long prompt")
    # every step had the stream's decode row: at most MIN_ROWS prompt rows each
    check(mixed >= math.ceil(n / MIN_ROWS),
          f"{n} prompt rows in {mixed} steps: more than {MIN_ROWS} a step under a 1 ms target")
    small = delta(before, after, "adaptree_batch_rows_bucket", (("le", "16"),))
    eq(small, steps, "steps with at most 16 rows (1 decode + 8 prompt rows) of all steps")
    over = delta(before, after, "adaptree_steps_over_target_total")
    eq(over, steps, "steps counted over a 1 ms target (every one takes longer)")
    eq(after[("adaptree_step_target_ms", ())], 1.0, "adaptree_step_target_ms")
    check(after[("adaptree_prompt_row_ms", ())] > 0, "no learned prompt row cost")


@suite.test
def no_target_takes_full_chunks():
    check("fixed" in RESULTS, "no measurement (the first test failed)")
    before, after = RESULTS["fixed"]
    n = delta(before, after, "adaptree_prompt_tokens_total")
    mixed = delta(before, after, "adaptree_steps_total") - delta(
        before, after, "adaptree_decode_steps_total")
    check(n >= 1200, f"{n} prompt tokens computed during the long prompt")
    eq(mixed, math.ceil(n / CHUNK), f"steps with prompt rows for {n} rows in {CHUNK}-row chunks")
    eq(delta(before, after, "adaptree_steps_over_target_total"), 0, "steps over a target")
    eq(after[("adaptree_step_target_ms", ())], 0.0, "adaptree_step_target_ms with no target")


@suite.test
def another_clients_short_prompt_is_not_held_back():
    """Under the 1 ms target every step has room for one 8-row chunk: client B's 8-token prompt,
    sent while client A's ~750-token prompt is being prefilled, gets it within a step or two
    (the clients take turns), not after A's ~90 chunks."""
    s = SERVERS["tiny"]
    bg, state = background_stream(s)
    base = e2e.metrics(s)[("adaptree_prompt_tokens_total", ())]
    a_prompt = "Client A. " + LONG[:len(LONG) // 2]  # not a prefix cached by earlier tests
    a = e2e.Background(s.post, "/v1/completions", {"prompt": a_prompt, "max_tokens": 1,
                                                   "temperature": 0, "user": "A"}, timeout=180)
    e2e.wait_until(lambda: e2e.metrics(s)[("adaptree_prompt_tokens_total", ())] >= base + 64,
                   60, "A's prefill under way")
    r = s.post("/v1/completions", {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 1,
                                   "temperature": 0, "user": "B"}, timeout=180)
    check(r.status == 200, f"B: {r}")
    a_done = not a.t.is_alive()
    left = None
    if not a_done:
        left = e2e.metrics(s)[("adaptree_prompt_tokens_total", ())] - base
    ra = a.result(180)
    state["stop"] = True
    bg.result(60)
    check(ra.status == 200, f"A: {ra}")
    n_a = ra.json()["usage"]["prompt_tokens"]
    check(not a_done, f"A's {n_a}-token prompt finished before B's 8-token one")
    check(left is not None and left < n_a, f"{left} prompt rows computed when B finished, "
          f"A's prompt has {n_a}: B waited for the whole of A's prefill")


@suite.test
def default_target_is_learned():
    _, _, before, after = beside_a_stream(SERVERS["default"])
    target = after[("adaptree_step_target_ms", ())]
    check(target >= 25.0, f"default target {target} ms is below its 25 ms floor")
    check(after[("adaptree_prompt_row_ms", ())] > 0, "no learned prompt row cost")
    log = SERVERS["default"].log()
    check("step budget: prompt chunks sized for steps of 2x the learned decode-only step" in log,
          "the start-up line does not state the default policy")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))
