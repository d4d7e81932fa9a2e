#!/bin/sh
# virtio-fs vs virtio-blk vs the host, in one run: file creates/s, small-file reads/s and
# sequential read MiB/s, through a booted guest on the QEMU backend (TCG where KVM cannot
# run a stock guest, so compare the rows with each other, not with other hosts).
# BENCH_FILES (default 2000) and BENCH_MIB (default 256) size the work. Needs the kernel,
# initramfs and virtiofsd that scripts/test.sh prepares.
set -eu
cd "$(dirname "$0")/.."
exec cargo test -p husk --test virtiofs_guest -- --ignored --nocapture bench_virtiofs
