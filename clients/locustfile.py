"""Locust load test for adaptree: a mix of the base model, single adapters, tree chains and
weighted adapter lists, streaming and not, completions and chat.

    tools/venv.sh .venv-load tools/requirements-load.txt        # locust lives in its own venv
    .venv-load/bin/locust -f clients/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 16 -r 4 -t 60s

Streaming requests also report "TTFT" (time to first token) as their own entry in Locust's
statistics. Environment: ADAPTREE_API_KEY; LOCUST_ADAPTER (default fr), LOCUST_OTHER (de),
LOCUST_CHAIN (fr/manpages/alice), LOCUST_MAX_TOKENS (32) — the defaults fit registry/.
"""

import json
import os
import random
import time

from locust import HttpUser, between, events, task

ADAPTER = os.environ.get("LOCUST_ADAPTER", "fr")
OTHER = os.environ.get("LOCUST_OTHER", "de")
CHAIN = os.environ.get("LOCUST_CHAIN", "fr/manpages/alice")
MAX_TOKENS = int(os.environ.get("LOCUST_MAX_TOKENS", "32"))
KEY = os.environ.get("ADAPTREE_API_KEY")

PROMPTS = ["Once upon a time", "La commande", "grep :", "Ein Mann", "Debian est",
           "The three most important things about Linux are"]
QUESTIONS = ["What is Debian?", "Qu'est-ce qu'un paquet Debian ?", "Erzähl mir einen Witz.",
             "How do I list files in a directory?"]


class AdaptreeUser(HttpUser):
    """One simulated client; tasks are weighted roughly like mixed production traffic."""

    wait_time = between(0.05, 0.5)

    def on_start(self):
        if KEY:
            self.client.headers["Authorization"] = "Bearer " + KEY

    # ---- helpers -------------------------------------------------------------------------

    def _body(self, selection, chat):
        body = dict(selection, max_tokens=MAX_TOKENS, temperature=random.choice([0, 0.7]))
        if chat:
            body["messages"] = [{"role": "user", "content": random.choice(QUESTIONS)}]
        else:
            body["prompt"] = random.choice(PROMPTS)
        return body

    def _plain(self, name, selection, chat=False):
        path = "/v1/chat/completions" if chat else "/v1/completions"
        with self.client.post(path, json=self._body(selection, chat), name=name,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            try:
                d = resp.json()
                d["choices"][0]
                d["usage"]["completion_tokens"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                resp.failure(f"bad response: {e}")
                return
            resp.success()

    def _stream(self, name, selection, chat=False):
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = self._body(selection, chat)
        body.update(stream=True, stream_options={"include_usage": True})
        t0 = time.perf_counter()
        with self.client.post(path, json=body, name=name, stream=True,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            first, done, finish = None, False, None
            try:
                for line in resp.iter_lines():
                    if isinstance(line, bytes):
                        line = line.decode("utf-8")
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    ch = json.loads(data)
                    for c in ch.get("choices") or []:
                        piece = c.get("text") if not chat else (c.get("delta") or {}).get("content")
                        if piece and first is None:
                            first = time.perf_counter()
                        finish = c.get("finish_reason") or finish
            except (ValueError, OSError) as e:
                resp.failure(f"broken stream: {e}")
                return
            if not done or finish is None:
                resp.failure("stream ended without a finish_reason and [DONE]")
                return
            resp.success()
        if first is not None:
            events.request.fire(request_type="TTFT", name=name, response_time=(first - t0) * 1e3,
                                response_length=0, exception=None, context={})

    # ---- the mix -------------------------------------------------------------------------

    @task(3)
    def base_completion(self):
        self._plain("completion base", {})

    @task(3)
    def adapter_completion(self):
        self._plain("completion adapter", {"model": ADAPTER})

    @task(2)
    def chain_completion_stream(self):
        self._stream("completion chain stream", {"model": CHAIN})

    @task(2)
    def weighted_completion(self):
        self._plain("completion weighted", {"adapters": [{"id": ADAPTER, "scale": 0.5},
                                                         {"id": OTHER, "scale": 0.5}]})

    @task(2)
    def adapter_chat_stream(self):
        self._stream("chat adapter stream", {"model": OTHER}, chat=True)

    @task(1)
    def base_chat(self):
        self._plain("chat base", {"model": "base"}, chat=True)

    @task(1)
    def chain_plus_list_stream(self):
        self._stream("completion chain+list stream",
                     {"model": CHAIN, "adapters": [{"id": OTHER, "scale": 0.3}]})
