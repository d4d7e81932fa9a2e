#!/usr/bin/env bash
# Kubernetes pods on containerd-shim-husk-v2 against containerd's runc shim, in the same run,
# on a private containerd 1.6 with its CRI plugin (tests/common/cri.rs): pod start to the
# container's first output (RUNS runs each, interleaved), 10 pods started at once, and an idle
# pod's host memory (PSS) and CPU. Prints a markdown table of medians and husk/runc ratios
# on stdout; progress on stderr.
#
#   scripts/bench-pods.sh [RUNS]
#
# RUNS: pod starts per runtime (default 5). BENCH_PODS_AT_ONCE (default 10) sizes the
# at-once run. The shim is built in release; the harness is the test build. Needs what the
# CRI tests need (docs/cri-tests.md) and the guest assets (HUSK_KERNEL, HUSK_INITRAMFS, …).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
root=$(cd "$here/.." && pwd)
cd "$root"

runs=${1:-5}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS wants a positive number, not '$runs'"

echo "bench-pods: building containerd-shim-husk-v2 (release)" >&2
cargo build --release --bin containerd-shim-husk-v2 >&2
shim=${CARGO_TARGET_DIR:-$root/target}/release/containerd-shim-husk-v2
[ -x "$shim" ] || die "no shim at $shim after the build"

echo "bench-pods: $runs runs per runtime, started $(date -u '+%Y-%m-%d %H:%M UTC')" >&2
HUSK_SHIM_BINARY=$shim BENCH_PODS_RUNS=$runs \
    cargo test -p husk --test shim_bench -- --ignored --nocapture --test-threads 1 bench_pods
