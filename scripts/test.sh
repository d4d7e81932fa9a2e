#!/usr/bin/env bash
# The whole husk test suite, from a bare Debian 12 machine: installs what is missing,
# builds the guest kernel (cached outside the repo), the agent initramfs, then runs
# `cargo test --workspace`, including the tests that boot real VMs, and every fuzz target
# briefly (scripts/fuzz.sh, HUSK_FUZZ_SECONDS each, default 15) and a short soak
# (scripts/soak.sh, HUSK_SOAK_CYCLES, default 3).
#
# With CI=true, a missing /dev/kvm or kernel fails the run instead of being reported
# as "NOT RUN".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_start=$(date +%s)

ensure_packages "${HUSK_APT_PACKAGES[@]}" "${HUSK_ENGINE_PACKAGES[@]}"

if [ "${CI:-}" = "true" ] && [ ! -c /dev/kvm ]; then
    die "CI=true and /dev/kvm is missing: the KVM tests cannot run"
fi

start=$(date +%s)
HUSK_KERNEL=$(kernel-config/build.sh | tail -n1)
[ -f "$HUSK_KERNEL" ] || die "kernel build did not produce a vmlinux ($HUSK_KERNEL)"
export HUSK_KERNEL
export HUSK_BZIMAGE="$(dirname "$(readlink -f "$HUSK_KERNEL")")/bzImage"
log "kernel: $HUSK_KERNEL ($(( $(date +%s) - start ))s)"

HUSK_INITRAMFS=$(scripts/build-initramfs.sh | tail -n1)
[ -f "$HUSK_INITRAMFS" ] || die "initramfs build failed ($HUSK_INITRAMFS)"
export HUSK_INITRAMFS
log "initramfs: $HUSK_INITRAMFS"
# The same agent with its syscall self-test (husk.selftest=1), for the tests that boot it.
HUSK_SELFTEST_INITRAMFS=$(SELFTEST=1 scripts/build-initramfs.sh | tail -n1)
[ -f "$HUSK_SELFTEST_INITRAMFS" ] || die "self-test initramfs build failed ($HUSK_SELFTEST_INITRAMFS)"
export HUSK_SELFTEST_INITRAMFS
log "self-test initramfs: $HUSK_SELFTEST_INITRAMFS"

# The virtio-fs backend for shared host directories (cargo install, cached outside the repo).
HUSK_VIRTIOFSD=$(scripts/install-virtiofsd.sh | tail -n1)
export HUSK_VIRTIOFSD
log "virtiofsd: $HUSK_VIRTIOFSD"

# The nested-KVM rig (an L1 Linux under TCG with SVM) for the husk-vmm and QEMU -accel kvm
# tests wherever this host's own KVM cannot boot Linux (PVM, no /dev/kvm): its L1 kernel is
# downloaded and unpacked into the cache here, once, outside the tests' time limit.
rig_status=0
rig=$(scripts/nested-kvm.sh prepare | tail -n1) || rig_status=$?
if [ "$rig_status" = 0 ]; then
    log "nested-KVM rig: $rig"
elif [ "${CI:-}" = "true" ]; then
    die "CI=true and the nested-KVM rig cannot be prepared ($rig)"
else
    log "nested-KVM rig not available here: $rig (tests that need it will say NOT RUN)"
fi

# Tests that cannot run on this host say so; cargo hides a passing test's output, so they
# also write their reason here and it is printed after the run.
export HUSK_NOT_RUN_LOG="$PWD/target/husk/not-run.log"
out="$PWD/target/husk/test-output.log"
# Each run in the nested-KVM rig appends its test name and seconds here.
export HUSK_RIG_TIME_LOG="$PWD/target/husk/rig-times.log"
# Each rig run made again because L1's own kernel failed under TCG appends a line here.
export HUSK_RIG_RETRY_LOG="$PWD/target/husk/rig-retries.log"
mkdir -p target/husk && : > "$HUSK_NOT_RUN_LOG" && : > "$HUSK_RIG_TIME_LOG" && : > "$HUSK_RIG_RETRY_LOG"
status=0
# Build every test binary first, outside the run's time limit (the cold build is long).
cargo test --workspace --locked --no-run >&2 || die "the test build failed"
log "set-up (packages, kernel, initramfs, tools, rig, test build): $(( $(date +%s) - setup_start ))s"
tests_start=$(date +%s)
# --no-fail-fast: one failing test binary must not hide the ones after it.
# A hung VM test must not eat the whole CI budget.
set +e
timeout --kill-after=30 "${HUSK_TEST_TIMEOUT:-2400}" \
    cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
log "tests: $(( $(date +%s) - tests_start ))s"
# Every cargo-fuzz target for a few seconds (docs/fuzzing.md), so a regression in a
# hostile-input path shows; long runs are `scripts/fuzz.sh SECONDS` by hand.
fuzz_start=$(date +%s)
fuzz_status=0
scripts/fuzz.sh "${HUSK_FUZZ_SECONDS:-15}" >&2 || fuzz_status=$?
log "fuzzing: $(( $(date +%s) - fuzz_start ))s"
# A short soak (mixed cycles, then the host checked for leaks) with the binaries just built.
soak_start=$(date +%s)
soak_status=0
HUSK="$PWD/target/debug/husk" HUSK_RUNTIME="$PWD/target/debug/husk-runtime" \
    timeout --kill-after=30 600 scripts/soak.sh "${HUSK_SOAK_CYCLES:-3}" >&2 || soak_status=$?
log "soak: $(( $(date +%s) - soak_start ))s"
if [ -s "$HUSK_RIG_TIME_LOG" ]; then
    log "nested-KVM rig: $(awk '{n++; s+=$2} END {printf "%d runs, %.0f s in all (run beside other tests)", n, s}' "$HUSK_RIG_TIME_LOG")"
fi
scripts/test-summary.sh "$out" "$HUSK_NOT_RUN_LOG" "$status" "$HUSK_RIG_RETRY_LOG" >&2
if [ "$fuzz_status" != 0 ]; then
    log "fuzzing FAILED (see the fuzz results above)"
    status=1
fi
if [ "$soak_status" != 0 ]; then
    log "soak FAILED (scripts/soak.sh ${HUSK_SOAK_CYCLES:-3}, above)"
    status=1
fi
exit $status
