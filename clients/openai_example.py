#!/usr/bin/env python3
"""The official OpenAI Python SDK against adaptree, unchanged: only base_url points at the server
and "model" names an adapter (a registry node id applies its whole tree chain).

    pip install openai            # or use the project's .venv (tools/requirements-test.txt)
    python3 clients/openai_example.py [--url http://127.0.0.1:8080/v1] [--api-key K]

With the shipped registry (registry/) it uses fr/manpages/alice, de and fr; change them with
--chain/--adapter/--other. Exits non-zero if a call fails.
"""

import argparse
import os
import sys

from openai import OpenAI


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    url = os.environ.get("ADAPTREE_URL", "http://127.0.0.1:8080").rstrip("/")
    p.add_argument("--url", default=url if url.endswith("/v1") else url + "/v1")
    # The SDK insists on some key; adaptree ignores it unless started with --api-key.
    p.add_argument("--api-key", default=os.environ.get("ADAPTREE_API_KEY") or "none")
    p.add_argument("--chain", default="fr/manpages/alice")
    p.add_argument("--adapter", default="de")
    p.add_argument("--other", default="fr")
    p.add_argument("--max-tokens", type=int, default=24)
    a = p.parse_args(argv)

    client = OpenAI(base_url=a.url, api_key=a.api_key, max_retries=0, timeout=120)

    # Completions on a tree chain (fr + fr/manpages + fr/manpages/alice), greedy.
    r = client.completions.create(model=a.chain, prompt="grep :", max_tokens=a.max_tokens,
                                  temperature=0)
    print(f"[completions, {a.chain}] {r.choices[0].text!r} ({r.usage.completion_tokens} tokens, "
          f"finish {r.choices[0].finish_reason})")

    # Chat on one adapter.
    r = client.chat.completions.create(
        model=a.adapter,
        messages=[{"role": "system", "content": "Du bist ein hilfreicher Assistent."},
                  {"role": "user", "content": "Erzähl mir einen Witz."}],
        max_tokens=a.max_tokens, temperature=0)
    print(f"[chat, {a.adapter}] {r.choices[0].message.content!r}")

    # Streaming chat on the base model, with the usage chunk at the end.
    print("[chat stream, base] ", end="", flush=True)
    n = 0
    for chunk in client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "What is Debian?"}],
            max_tokens=a.max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            n = chunk.usage.completion_tokens
    print(f"  ({n} tokens)")

    # Streaming completions with an explicit weighted adapter list (an extension field, sent
    # with the SDK's extra_body): exactly these nodes, no ancestors.
    print(f"[completions stream, {a.adapter}:0.5 + {a.other}:0.5] ", end="", flush=True)
    for chunk in client.completions.create(
            model="base", prompt="Bonjour, je", max_tokens=a.max_tokens, temperature=0,
            stream=True, extra_body={"adapters": [{"id": a.adapter, "scale": 0.5},
                                                  {"id": a.other, "scale": 0.5}]}):
        if chunk.choices:
            print(chunk.choices[0].text, end="", flush=True)
    print()

    # The model list: the base model and every registry node.
    print("[models] " + ", ".join(m.id for m in client.models.list()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
