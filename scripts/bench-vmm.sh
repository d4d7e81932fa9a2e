#!/usr/bin/env bash
# Start-up benchmark: husk-vmm vs QEMU microvm (-accel kvm) on the same tiny guest.
# Prints medians of N runs (default 20) of spawn -> first serial byte, spawn -> exit, and
# peak RSS, with the ratio. Usage: scripts/bench-vmm.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"

if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "qemu-system-x86_64 missing: apt-get install -y qemu-system-x86 (benchmarking husk-vmm alone)" >&2
    qemu=none
else
    qemu=qemu-system-x86_64
fi

cargo build --release -p husk --bin husk-vmm --example vmm_bench
target/release/husk-vmm --probe >&2 || true
exec target/release/examples/vmm_bench --runs "$runs" --husk-vmm target/release/husk-vmm --qemu "$qemu"
