#!/bin/sh
# Fetches llama.cpp's tokenizer test vocabularies and chat templates from PyPI: the
# llama-cpp-python 0.3.36 sdist (sha256 checked) carries vendor/llama.cpp/models/ggml-vocab-*.gguf
# with .inp/.out pairs (inputs and the token ids llama.cpp expects) and models/templates/*.jinja
# (real models' chat templates). They are extracted into a cache, never into git.
# usage: tools/fetch_vocab.sh [DIR]        (default models/vocab; `make vocab`)
set -eu
out=${1:-models/vocab}
PKG="llama-cpp-python==0.3.36"
SDIST="llama_cpp_python-0.3.36.tar.gz"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PREFIX="llama_cpp_python-0.3.36/vendor/llama.cpp/models"
# The vocabularies whose tokenizers adaptree implements (or is working on): every one present is
# tested; the others stay in the tarball.
VOCABS="llama-spm llama-bpe qwen2 qwen35 phi-3 gpt-2 gemma-4 starcoder deepseek-llm
deepseek-coder falcon mpt refact command-r"

[ -f "$out/.ok" ] && [ "$(cat "$out/.ok")" = "$SHA256" ] && exit 0
mkdir -p "$out" models/cache
tarball="models/cache/$SDIST"
check() { echo "$SHA256  $1" | sha256sum -c --status; }
if ! { [ -f "$tarball" ] && check "$tarball"; }; then
    echo "vocab: downloading the $PKG sdist from PyPI (about 77 MB, once)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    if ! python3 -m pip download --no-binary :all: --no-deps --disable-pip-version-check -q \
        -d "$tmp" "$PKG"; then
        echo "vocab: could not download $PKG from PyPI; check the network or pip's index" >&2
        exit 1
    fi
    if ! check "$tmp/$SDIST"; then
        echo "vocab: sha256 mismatch for $SDIST (expected $SHA256); refusing it" >&2
        exit 1
    fi
    mv "$tmp/$SDIST" "$tarball"
fi
members=""
for v in $VOCABS; do
    for ext in "" .inp .out; do
        members="$members $PREFIX/ggml-vocab-$v.gguf$ext"
    done
done
# Members that this version lacks are skipped (a vocabulary without .inp/.out, say).
listed=$(tar tzf "$tarball" | grep -E "^$PREFIX/(ggml-vocab-[^/]*|templates/[^/]*\.jinja)$")
want=""
for m in $members; do
    echo "$listed" | grep -qx "$m" && want="$want $m"
done
want="$want $(echo "$listed" | grep '/templates/' | tr '\n' ' ')"
# shellcheck disable=SC2086
tar xzf "$tarball" -C "$out" --strip-components=4 $want
echo "$SHA256" >"$out/.ok"
echo "vocab: $(ls "$out"/ggml-vocab-*.gguf | wc -l) vocabularies and" \
    "$(ls "$out"/templates/*.jinja | wc -l) chat templates in $out"
