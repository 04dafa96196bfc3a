#!/bin/sh
# Runs the C test binary, then the end-to-end suites when present, and prints the totals as
# the last line: "N passed, N failed".
# usage: tools/run_tests.sh BUILD_DIR
set -u
build=${1:-build}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$build/test_unit" | tee "$out"
rc=$?
passed=$(tail -n 1 "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
failed=$(tail -n 1 "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
if [ -z "$passed" ]; then
    echo "test_unit did not finish (exit $rc)"
    passed=0 failed=1
fi
for suite in tests/e2e/run_*.sh; do
    [ -e "$suite" ] || continue
    echo "== $suite"
    if BUILD="$build" sh "$suite" >"$out" 2>&1; then r=0; else r=1; fi
    cat "$out"
    p=$(tail -n 1 "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
    f=$(tail -n 1 "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
    [ -z "$p" ] && p=0 f=1
    [ $r -ne 0 ] && [ "$f" -eq 0 ] && f=1
    passed=$((passed + p)) failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
