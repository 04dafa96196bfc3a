# Sourced by tests/e2e/run_*.sh: runs one Python suite with the project venv's interpreter.
# usage (in a run_*.sh): . "$(dirname "$0")/lib.sh"; run_suite test_x.py
run_suite() {
    cd "$(dirname "$0")/../.." || exit 1
    py=${E2E_PYTHON:-.venv/bin/python}
    if [ ! -x "$py" ]; then
        echo "e2e: $py is missing: run 'make venv' (tools/venv.sh .venv tools/requirements-test.txt)"
        echo "0 passed, 1 failed"
        exit 1
    fi
    exec "$py" -u -B "tests/e2e/$1"
}
