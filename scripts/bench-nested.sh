#!/usr/bin/env bash
# scripts/bench.sh inside the nested-KVM rig (scripts/nested-kvm.sh): on a host whose own KVM
# cannot boot Linux (PVM), this is where husk-vmm and QEMU microvm `-accel kvm` run, side by
# side in one run: bare boot to the agent's ready line, `husk run --rm busybox true`, idle
# container memory, per backend. Under emulation absolute times mean little; the ratios
# between the two backends of the same run are the result.
# The density and parallel parts are smaller here by default (L1 has 6 GiB and two emulated
# CPUs): HUSK_BENCH_IDLE=20, HUSK_BENCH_PARALLEL=10; set them to override (HUSK_* reach the rig).
# Usage: scripts/bench-nested.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-10}
# Built here, where it is fast; the rig sees this tree read-only and finds them up to date.
log "building release binaries"
# The same binaries scripts/bench.sh builds (a missing one would compile under TCG in L1).
cargo build --release --locked -p husk --bin husk --bin husk-monitor --bin husk-vmm --bin husk-layer-disk --bin husk-agent-mux --bin husk-runtime >&2
HUSK_KERNEL=${HUSK_KERNEL:-$(kernel-config/build.sh | tail -n1)}
HUSK_INITRAMFS=${HUSK_INITRAMFS:-$(scripts/build-initramfs.sh | tail -n1)}
export HUSK_KERNEL HUSK_INITRAMFS
export HUSK_BENCH_IDLE=${HUSK_BENCH_IDLE:-20} HUSK_BENCH_PARALLEL=${HUSK_BENCH_PARALLEL:-10}
scripts/nested-kvm.sh prepare >/dev/null
log "scripts/bench.sh $runs in the nested-KVM rig"
HUSK_BENCH_NO_CONVERT=1 scripts/nested-kvm.sh run --timeout 3000 -- scripts/bench.sh "$runs"
echo "(in the nested-KVM rig: L1 = Debian's 6.1 kernel under QEMU TCG with SVM, $(nproc) host CPUs)"
