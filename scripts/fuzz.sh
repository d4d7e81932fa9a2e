#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) and prints, per
# target, the executions, the coverage libFuzzer reached (cov: edges, ft: features) and the
# result. Exits non-zero if any target crashed, timed out, ran out of memory or could not
# run. See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds once (nightly, AddressSanitizer, debug assertions) into target/fuzz. New inputs
# go to target/fuzz/corpus/TARGET (kept between runs, not committed); the committed seeds
# in fuzz/corpus/TARGET are read, never written. A failing input is saved under
# fuzz/artifacts/TARGET/. Outside CI a fuzz run that cannot happen (no nightly toolchain,
# cargo-fuzz cannot be installed) prints "NOT RUN: reason" and exits 0; with CI=true it fails.
#
# Knobs: HUSK_FUZZ_RSS_MB (memory cap per target, default 2048; agent_host 4096, below),
# HUSK_FUZZ_TIMEOUT (seconds one input may take, default 10), HUSK_FUZZ_TMPDIR (where targets
# make their temp files; default a fresh directory on /dev/shm), HUSK_FUZZ_RUNS (also stop a
# target after this many executions: a campaign to a count, e.g. 10100000 with a generous
# SECONDS), HUSK_FUZZ_SANITIZER (address, the default, or none: no AddressSanitizer, debug
# assertions kept, built into target/fuzz-none; the file-heavy targets run 3-4x faster).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${1:-60}
shift || true
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || die "usage: scripts/fuzz.sh [SECONDS] [TARGET...]"
# The cap on a target's resident memory (libFuzzer's -rss_limit_mb; a single allocation is
# capped at HUSK_FUZZ_RSS_MB or 2048 MiB). agent_host gets more: it starts one or two threads
# per input (the fake guest, AgentClient's reader), and ASan keeps about 200 bytes for every
# thread that ever ran (measured: a Rust program starting and joining threads grows by that
# per thread under ASan and not at all without it), so a 10 M-execution run would end near
# 2 GiB in a false "out-of-memory".
rss_limit() {
    case $1 in
        agent_host) echo "${HUSK_FUZZ_RSS_MB:-4096}" ;;
        *) echo "${HUSK_FUZZ_RSS_MB:-2048}" ;;
    esac
}
timeout_s=${HUSK_FUZZ_TIMEOUT:-10}
runs=${HUSK_FUZZ_RUNS:-}
sanitizer=${HUSK_FUZZ_SANITIZER:-address}
case $sanitizer in address|none) ;; *) die "HUSK_FUZZ_SANITIZER must be address or none, not '$sanitizer'" ;; esac
[ -z "$runs" ] || [[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "HUSK_FUZZ_RUNS must be a positive number of executions, not '$runs'"

not_run() {
    if [ "${CI:-}" = "true" ]; then
        die "CI=true and fuzzing cannot run: $*"
    fi
    echo "NOT RUN: fuzzing: $*"
    exit 0
}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing the nightly Rust toolchain (rustup, minimal profile; cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal >&2 \
        || not_run "no nightly Rust toolchain, and rustup could not install one"
fi
cargo_fuzz=$(scripts/install-cargo-fuzz.sh | tail -n1) || not_run "cargo-fuzz could not be installed"
[ -x "$cargo_fuzz" ] || not_run "cargo-fuzz could not be installed"

targets=("$@")
named=$#
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTUP_TOOLCHAIN=nightly "$cargo_fuzz" list --fuzz-dir fuzz)
fi
[ ${#targets[@]} -gt 0 ] || die "no fuzz targets in fuzz/"

# One target dir per sanitizer, so switching does not rebuild the other's.
target_dir="$PWD/target/fuzz"
[ "$sanitizer" = address ] || target_dir="$PWD/target/fuzz-$sanitizer"
log "fuzz: building ${#targets[@]} targets (nightly, sanitizer: $sanitizer; the first build takes minutes)"
start=$(date +%s)
build() {
    (cd fuzz && RUSTUP_TOOLCHAIN=nightly "$cargo_fuzz" build -O --debug-assertions -s "$sanitizer" \
        --target-dir "$target_dir" "$@" >&2)
}
if [ "$named" -eq 0 ]; then
    build || die "building the fuzz targets failed"
else
    for t in "${targets[@]}"; do build "$t" || die "building fuzz target $t failed"; done
fi
log "fuzz: built in $(( $(date +%s) - start ))s; running each target ${seconds}s"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"

# Inputs larger than this are not generated (archives and layers need room).
max_len() {
    case $1 in
        image_archive|layer_unpack) echo 65536 ;;
        vsock|virtio_blk|virtio_net|virtio_mmio|agent_host) echo 16384 ;;
        *) echo 8192 ;;
    esac
}

# The targets that touch files (archives, layers, bundles, configs, sockets) make and remove
# a temp dir per input: on a tmpfs that costs microseconds instead of disk syncs.
if [ -z "${HUSK_FUZZ_TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    HUSK_FUZZ_TMPDIR=$(mktemp -d /dev/shm/husk-fuzz.XXXXXX)
    trap 'rm -rf "$HUSK_FUZZ_TMPDIR"' EXIT
fi
export TMPDIR="${HUSK_FUZZ_TMPDIR:-${TMPDIR:-/tmp}}"

failed=0
summary=()
for t in "${targets[@]}"; do
    seeds="fuzz/corpus/$t"
    work="target/fuzz/corpus/$t"   # shared by both sanitizers' builds
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$seeds" "$work" "$artifacts"
    log_file="$target_dir/logs/$t.log"
    mkdir -p "$(dirname "$log_file")"
    log "fuzz: $t (${seconds}s)"
    set +e
    # A libFuzzer hang past -timeout is caught by libFuzzer itself; this outer bound only
    # catches a harness that stops answering altogether.
    timeout --kill-after=10 $(( seconds + timeout_s + 120 )) "$bin_dir/$t" \
        -max_total_time="$seconds" -rss_limit_mb="$(rss_limit "$t")" -malloc_limit_mb="${HUSK_FUZZ_RSS_MB:-2048}" \
        -timeout="$timeout_s" -max_len="$(max_len "$t")" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" -close_fd_mask=1 ${runs:+-runs="$runs"} \
        "$work" "$seeds" >"$log_file" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_file" | tail -n1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log_file" | tail -n1)
    if [ "$rc" = 0 ]; then
        result=ok
    else
        failed=1
        result=$(grep -oE 'ERROR: libFuzzer: [a-z-]+|ERROR: AddressSanitizer: [a-z-]+|panicked at [^ ]+' "$log_file" | head -n1)
        result="FAILED (${result:-exit $rc}; $(grep -oE "Test unit written to [^ ]+" "$log_file" | tail -n1 | sed 's/Test unit written to /input: /'); log: $log_file)"
    fi
    summary+=("$(printf '%-14s %12s execs  %-22s %s' "$t" "${execs:-?}" "${cov:-cov: ?}" "$result")")
done

echo "fuzz results (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
exit $failed
