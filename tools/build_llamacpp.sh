#!/bin/sh
# Builds llama.cpp's llama-bench, llama-batched-bench and llama-tokenize from the source the
# llama-cpp-python 0.3.36 sdist vendors (the tarball `make vocab` caches in models/cache, sha256
# checked there), for `make bench-peer`: the peer measured in the same run on the same machine.
# CPU only, no network code. Not part of `make test`; about 10 minutes on an idle 2-core machine,
# once.
# ISA: -march=native (GGML_NATIVE), except on a CPU with AMX: there this llama.cpp's AMX matmul
# crashed (SIGSEGV in ggml_backend_amx_mul_mat, Intel Xeon family 6 model 167 VM, 2026-12-06), so
# the build names the host's AVX/AVX2/AVX-512 features itself and leaves AMX out.
# LLAMACPP_ISA=avx2 builds llama.cpp's AVX2 kernels only (no AVX-512, VNNI or AMX): on an AVX-512
# host, the peer of adaptree held to its AVX2 kernels (ADAPTREE_CPU=avx2), as on a Zen 3.
# usage: [LLAMACPP_ISA=avx2] tools/build_llamacpp.sh [DIR]        (default build/llama.cpp)
set -eu
out=${1:-build/llama.cpp}
SDIST="models/cache/llama_cpp_python-0.3.36.tar.gz"
SRC="llama_cpp_python-0.3.36/vendor/llama.cpp"

# A directory holds one ISA's build (bin/isa; none: the native one): asking it for another rebuilds.
isa_want=${LLAMACPP_ISA:-native}
[ -x "$out/bin/llama-bench" ] && [ -x "$out/bin/llama-batched-bench" ] && [ -x "$out/bin/llama-tokenize" ] &&
    [ "$(cat "$out/bin/isa" 2>/dev/null || echo native)" = "$isa_want" ] && exit 0
if [ ! -f "$SDIST" ]; then
    echo "llama.cpp: $SDIST is missing; run make vocab first" >&2
    exit 1
fi
for tool in cmake c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "llama.cpp: $tool is missing (apt-get install -y cmake g++)" >&2
        exit 1
    fi
done
mkdir -p "$out"
if [ ! -f "$out/src/CMakeLists.txt" ]; then
    echo "llama.cpp: extracting $SRC from $SDIST"
    rm -rf "$out/src"
    mkdir -p "$out/src"
    tar xzf "$SDIST" -C "$out/src" --strip-components=3 "$SRC"
fi
isa="-DGGML_NATIVE=ON"
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { case " $flags " in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
if [ "$isa_want" = avx2 ]; then
    isa="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
 -DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF
 -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    echo "llama.cpp: LLAMACPP_ISA=avx2: AVX2 kernels only, to compare with ADAPTREE_CPU=avx2"
elif [ "$(has amx_int8)" = ON ]; then
    isa="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=$(has bmi2)
 -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)
 -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AMX_TILE=OFF
 -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    echo "llama.cpp: this CPU has AMX; building with its AVX-512 features and without AMX"
fi
echo "llama.cpp: building llama-bench, llama-batched-bench and llama-tokenize (CPU; once)"
# shellcheck disable=SC2086
cmake -S "$out/src" -B "$out/cmake" -DCMAKE_BUILD_TYPE=Release $isa \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF >"$out/cmake.log" 2>&1 ||
    { tail -20 "$out/cmake.log" >&2; exit 1; }
cmake --build "$out/cmake" -j "$(nproc)" --target llama-bench llama-batched-bench llama-tokenize >>"$out/cmake.log" 2>&1 ||
    { tail -20 "$out/cmake.log" >&2; exit 1; }
mkdir -p "$out/bin"
cp "$out/cmake/bin/llama-bench" "$out/cmake/bin/llama-batched-bench" "$out/cmake/bin/llama-tokenize" "$out/bin/"
echo "$isa_want" >"$out/bin/isa"
echo "llama.cpp: $out/bin/llama-bench, $out/bin/llama-batched-bench, $out/bin/llama-tokenize"
