#!/bin/sh
# `make bench-server`: server throughput with 32 concurrent streams over many different adapters
# (tools/bench_server.py does the work; it writes a temporary registry, starts and stops the
# server itself and prints a table with PASS/MISS targets).
# usage: [BUILD=build] [MODEL=models/...gguf] tools/bench_server.sh [bench_server.py options]
set -eu
cd "$(dirname "$0")/.."
py=${BENCH_PYTHON:-.venv/bin/python}
if [ ! -x "$py" ]; then
    echo "bench-server: $py is missing: make venv" >&2
    exit 1
fi
exec "$py" -B tools/bench_server.py --build "${BUILD:-build}" \
    -m "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" "$@"
