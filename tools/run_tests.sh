#!/bin/sh
# Runs the C test binary, then the end-to-end suites when present, and prints the totals as
# the last line: "N passed, N failed, N skipped".
# usage: tools/run_tests.sh BUILD_DIR
set -u
build=${1:-build}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
passed=0 failed=0 skipped=0

# Adds the counts of a "N passed, N failed[, N skipped]" last line in $out; a run that printed
# none, or exited non-zero with no failure counted, counts as one failure.
add_counts() {
    line=$(tail -n 1 "$out")
    p=$(echo "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
    f=$(echo "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
    s=$(echo "$line" | sed -n 's/^.* failed, \([0-9]*\) skipped.*/\1/p')
    if [ -z "$p" ]; then
        echo "$1 did not finish (exit $2)"
        p=0 f=1
    fi
    [ -z "$s" ] && s=0
    [ "$2" -ne 0 ] && [ "$f" -eq 0 ] && f=1
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

# Streamed as it runs; its last line says whether it passed (a runner that dies prints none).
"$build/test_unit" 2>&1 | tee "$out"
add_counts test_unit 0
for suite in tests/e2e/run_*.sh; do
    [ -e "$suite" ] || continue
    echo "== $suite"
    if BUILD="$build" sh "$suite" >"$out" 2>&1; then r=0; else r=1; fi
    cat "$out"
    add_counts "$suite" "$r"
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
