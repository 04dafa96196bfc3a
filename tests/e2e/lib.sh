# Sourced by tests/e2e/run_*.sh: runs one e2e suite under pytest with the project venv's
# interpreter, JUnit XML in $BUILD/e2e-junit/NAME.xml.
# usage (in a run_*.sh): . "$(dirname "$0")/lib.sh"; run_suite test_x.py "$@"
# Extra arguments go to pytest (e.g. -k 'stream and not chat', -x, --collect-only); so does
# E2E_K=expr, as -k expr. The last line is "N passed, N failed, N skipped" (tests/e2e/conftest.py).
run_suite() {
    cd "$(dirname "$0")/../.." || exit 1
    py=${E2E_PYTHON:-.venv/bin/python}
    if [ ! -x "$py" ]; then
        echo "e2e: $py is missing: run 'make venv' (tools/venv.sh .venv tools/requirements-test.txt)"
        echo "0 passed, 1 failed"
        exit 1
    fi
    file=$1
    shift
    name=${file#test_}
    name=${name%.py}
    if [ -n "${E2E_K:-}" ]; then
        set -- -k "$E2E_K" "$@"
    fi
    exec "$py" -u -B -m pytest "tests/e2e/$file" -v -p no:cacheprovider \
        --junitxml="${BUILD:-build}/e2e-junit/$name.xml" -o junit_suite_name="$name" "$@"
}
