#!/usr/bin/env bash
# One summary over every test binary of a `cargo test --no-fail-fast` run: passed, failed and
# ignored per binary and in total, the failed tests by name, and the tests that could not run
# on this host (NOT RUN, not counted as passed).
#
#   scripts/test-summary.sh CARGO_OUTPUT NOT_RUN_LOG [CARGO_STATUS]
set -euo pipefail
out=$1 notrun=$2 status=${3:-}
[ -f "$out" ] || { echo "husk: test summary: no cargo output at $out" >&2; exit 1; }

echo
echo "================ husk test summary ================"
awk '
    # "     Running tests/foo.rs (target/debug/deps/foo-0123)" or "   Doc-tests husk"
    /^ *Running / { bin = $2; if (bin == "unittests") bin = $3 " (unit)"; next }
    /^ *Doc-tests / { bin = "doc-tests " $2; next }
    /^test .* \.\.\. FAILED$/ { sub(/^test /, ""); sub(/ \.\.\. FAILED$/, ""); failed[++nf] = bin ": " $0 }
    /^test result: / {
        p = f = ig = 0
        if (match($0, /[0-9]+ passed/)) p = substr($0, RSTART, RLENGTH) + 0
        if (match($0, /[0-9]+ failed/)) f = substr($0, RSTART, RLENGTH) + 0
        if (match($0, /[0-9]+ ignored/)) ig = substr($0, RSTART, RLENGTH) + 0
        if (p + f + ig > 0) printf "  %-48s %4d passed %3d failed %3d ignored\\n", bin, p, f, ig
        tp += p; tf += f; ti += ig; nb++
    }
    # A binary that died before printing its result (crash, signal, timeout).
    /^error: test failed, to rerun pass / { crashed[++nc] = $0 }
    END {
        printf "  %d test binaries: %d passed, %d failed, %d ignored\\n", nb, tp, tf, ti
        for (i = 1; i <= nf; i++) print "  FAILED " failed[i]
        for (i = 1; i <= nc; i++) print "  " crashed[i]
    }
' "$out"
n=0
if [ -s "$notrun" ]; then
    n=$(sort -u "$notrun" | wc -l)
    echo "  NOT RUN on this host ($n, not counted as passed):"
    sort -u "$notrun" | sed 's/^/    /'
else
    echo "  NOT RUN: none"
fi
if grep -q '^error: could not compile' "$out"; then
    echo "  the build failed: see 'error' lines in $out"
fi
case "$status" in
    "") ;;
    0) echo "  cargo test: success" ;;
    124|137) echo "  cargo test: TIMED OUT (HUSK_TEST_TIMEOUT=${HUSK_TEST_TIMEOUT:-2400}s)" ;;
    *) echo "  cargo test: exit status $status" ;;
esac
echo "==================================================="
