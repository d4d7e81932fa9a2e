#!/usr/bin/env bash
# One summary over every test binary of a `cargo test --no-fail-fast` run: passed, failed and
# ignored per binary and in total, the failed tests by name, and the tests that could not run
# on this host (NOT RUN, not counted as passed), and the nested-KVM rig's runs made again
# for a fault of TCG's emulated SVM (RIG RETRY: L1's own kernel failed, or an L2 guest reset
# before its first console line).
#
#   scripts/test-summary.sh CARGO_OUTPUT NOT_RUN_LOG [CARGO_STATUS] [RIG_RETRY_LOG]
set -euo pipefail
out=$1 notrun=$2 status=${3:-} retries=${4:-}
[ -f "$out" ] || { echo "husk: test summary: no cargo output at $out" >&2; exit 1; }

echo
echo "================ husk test summary ================"
awk '
    # Every binary ends with one "test result:" line, after a "failures:" list of its failed
    # tests. The captured output of a failed test may quote other runs (a rerun in the
    # nested-KVM rig) with lines of the same shape, always before its own: so the last
    # result and the last list before the next binary are those of the binary.
    function flush(   p, f, ig, n, i, names) {
        if (result == "") return
        p = f = ig = 0
        if (match(result, /[0-9]+ passed/)) p = substr(result, RSTART, RLENGTH) + 0
        if (match(result, /[0-9]+ failed/)) f = substr(result, RSTART, RLENGTH) + 0
        if (match(result, /[0-9]+ ignored/)) ig = substr(result, RSTART, RLENGTH) + 0
        if (p + f + ig > 0) printf "  %-48s %4d passed %3d failed %3d ignored\n", bin, p, f, ig
        tp += p; tf += f; ti += ig; nb++
        n = split(failing, names, "\n")
        for (i = 1; i <= n; i++) if (names[i] != "") failed[++nf] = bin ": " names[i]
        result = ""; failing = ""; list = ""
    }
    # "     Running tests/foo.rs (target/debug/deps/foo-0123)" or "   Doc-tests husk"
    /^ *Running / { flush(); bin = $2; if (bin == "unittests") bin = $3 " (unit)"; next }
    /^ *Doc-tests / { flush(); bin = "doc-tests " $2; next }
    /^failures:$/ { inlist = 1; list = ""; next }
    inlist && /^    [^ ]+$/ { sub(/^    /, ""); list = list $0 "\n"; next }
    /^test result: / { inlist = 0; result = $0; failing = list; next }
    # A binary that died before printing its result (crash, signal, timeout).
    /^error: test failed, to rerun pass / { crashed[++nc] = $0 }
    END {
        flush()
        printf "  %d test binaries: %d passed, %d failed, %d ignored\n", nb, tp, tf, ti
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
if [ -n "$retries" ] && [ -s "$retries" ]; then
    echo "  nested-KVM rig: runs made again for a fault of TCG's emulated SVM: $(wc -l <"$retries")"
    sed 's/^/    /' "$retries"
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
