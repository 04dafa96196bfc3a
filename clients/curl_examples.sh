#!/bin/sh
# One curl call per adaptree endpoint (docs/ARCHITECTURE.md §5), each checked against the status it should
# get; exits non-zero if any call does not. The e2e tests run it against a real server.
#
# usage: [ADAPTREE_URL=http://127.0.0.1:8080] [ADAPTREE_API_KEY=K] [ADAPTREE_ADMIN_KEY=A] \
#        clients/curl_examples.sh
# With the shipped registry (registry/): ADAPTER=fr, CHAIN=fr/manpages/alice, OTHER=de.
set -u
URL=${ADAPTREE_URL:-http://127.0.0.1:8080}
URL=${URL%/}
KEY=${ADAPTREE_API_KEY:-}
ADMIN=${ADAPTREE_ADMIN_KEY:-$KEY}
ADAPTER=${ADAPTER:-fr}
CHAIN=${CHAIN:-fr/manpages/alice}
OTHER=${OTHER:-de}
VERBOSE=${VERBOSE:-1}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
fails=0 calls=0

# check NAME EXPECTED_STATUS [grep-pattern-in-body|-] curl-args...
check() {
    name=$1 want=$2 pat=$3
    shift 3
    calls=$((calls + 1))
    got=$(curl -sS -o "$out" -w '%{http_code}' --max-time 120 "$@") || got="curl-error-$?"
    ok=1
    [ "$got" = "$want" ] || ok=0
    if [ $ok -eq 1 ] && [ "$pat" != "-" ] && ! grep -q -- "$pat" "$out"; then ok=0; fi
    if [ $ok -eq 1 ]; then
        echo "ok   $name ($got)"
    else
        echo "FAIL $name: expected $want${pat:+ with '$pat'}, got $got"
        fails=$((fails + 1))
    fi
    if [ "$VERBOSE" = 1 ] || [ $ok -eq 0 ]; then
        head -c 600 "$out" | sed 's/^/     /'
        echo
    fi
}

# with_key KEY check ...: runs check with the key's header appended (none when KEY is empty).
with_key() {
    k=$1
    shift
    if [ -n "$k" ]; then "$@" -H "Authorization: Bearer $k"; else "$@"; fi
}
J='Content-Type: application/json'

# Liveness/readiness: never needs a key.
check "GET /health" 200 - "$URL/health"

# The base model and every registry node (parent, rank, alpha, targets, state, bytes).
with_key "$KEY" check "GET /v1/models" 200 '"data"' "$URL/v1/models"

# A plain completion on the base model (no "model" field = base), greedy.
with_key "$KEY" check "POST /v1/completions (base)" 200 '"choices"' -H "$J" "$URL/v1/completions" \
    -d '{"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}'

# Scoring a text: echo + logprobs gives each prompt token's logprob (the first is null);
# max_tokens 0 generates nothing.
with_key "$KEY" check "POST /v1/completions (score the prompt)" 200 '"token_logprobs":\[null,' \
    -H "$J" "$URL/v1/completions" \
    -d '{"prompt": "The capital of France is", "max_tokens": 0, "echo": true, "logprobs": 1}'

# One node: its whole tree chain is applied (fr + fr/manpages + fr/manpages/alice).
with_key "$KEY" check "POST /v1/completions (chain $CHAIN)" 200 '"text"' -H "$J" \
    "$URL/v1/completions" \
    -d "{\"model\": \"$CHAIN\", \"prompt\": \"grep :\", \"max_tokens\": 12, \"temperature\": 0}"

# An explicit weighted list: exactly these nodes, no ancestors.
with_key "$KEY" check "POST /v1/completions (weighted $ADAPTER+$OTHER)" 200 '"text"' -H "$J" \
    "$URL/v1/completions" \
    -d "{\"adapters\": [{\"id\": \"$ADAPTER\", \"scale\": 0.5}, {\"id\": \"$OTHER\", \"scale\": 0.5}],
         \"prompt\": \"Bonjour\", \"max_tokens\": 8, \"temperature\": 0, \"seed\": 1}"

# Chat with the model's chat template, on one adapter.
with_key "$KEY" check "POST /v1/chat/completions ($ADAPTER)" 200 '"assistant"' -H "$J" \
    "$URL/v1/chat/completions" \
    -d "{\"model\": \"$ADAPTER\", \"messages\": [{\"role\": \"user\",
         \"content\": \"Qu'est-ce qu'un paquet Debian ?\"}], \"max_tokens\": 12, \"temperature\": 0}"

# Streaming (server-sent events), with the usage chunk at the end.
with_key "$KEY" check "POST /v1/completions (stream)" 200 'data: \[DONE\]' -N -H "$J" \
    "$URL/v1/completions" \
    -d "{\"model\": \"$OTHER\", \"prompt\": \"Ein Mann\", \"max_tokens\": 8, \"stream\": true,
         \"stream_options\": {\"include_usage\": true}, \"temperature\": 0}"
with_key "$KEY" check "POST /v1/chat/completions (stream)" 200 'data: \[DONE\]' -N -H "$J" \
    "$URL/v1/chat/completions" \
    -d '{"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": true}'

# An unknown adapter is a 404 with an OpenAI-style error object.
with_key "$KEY" check "POST /v1/completions (unknown adapter)" 404 'model_not_found' -H "$J" \
    "$URL/v1/completions" -d '{"model": "no/such/adapter", "prompt": "x", "max_tokens": 1}'

# Admin: the registry tree with residency states, then load (+pin), pin, unpin, unload.
with_key "$ADMIN" check "GET /v1/adapters" 200 - "$URL/v1/adapters"
with_key "$ADMIN" check "POST /v1/adapters/load" 200 - -H "$J" "$URL/v1/adapters/load" \
    -d "{\"id\": \"$OTHER\", \"pin\": true}"
with_key "$ADMIN" check "POST /v1/adapters/pin (off)" 200 - -H "$J" "$URL/v1/adapters/pin" \
    -d "{\"id\": \"$OTHER\", \"pin\": false}"
with_key "$ADMIN" check "POST /v1/adapters/unload" 200 - -H "$J" "$URL/v1/adapters/unload" \
    -d "{\"id\": \"$OTHER\"}"
# The same through vLLM's routes: lora_name is the registry id (a lora_path, when given, must be
# that node's directory in the server's registry).
with_key "$ADMIN" check "POST /v1/load_lora_adapter" 200 'added successfully' -H "$J" \
    "$URL/v1/load_lora_adapter" -d "{\"lora_name\": \"$OTHER\"}"
with_key "$ADMIN" check "POST /v1/unload_lora_adapter" 200 'removed successfully' -H "$J" \
    "$URL/v1/unload_lora_adapter" -d "{\"lora_name\": \"$OTHER\"}"

# Prometheus metrics (adaptree_* series, per adapter with {adapter="..."}).
with_key "$KEY" check "GET /metrics" 200 'adaptree_' "$URL/metrics"

echo "curl_examples: $((calls - fails)) of $calls calls as expected"
[ $fails -eq 0 ]
