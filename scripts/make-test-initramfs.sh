#!/usr/bin/env bash
# Builds the device-test initramfs used by tests/vmm_linux_devices.rs: busybox-static, a
# static vsock echo helper and scripts/test-initramfs/init, as a gzipped newc cpio.
# Usage: scripts/make-test-initramfs.sh [OUTPUT]  (default target/husk/test-initramfs.cpio.gz)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

out=${1:-$root/target/husk/test-initramfs.cpio.gz}
busybox=${HUSK_BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "$busybox not found: install busybox-static (scripts/setup.sh)"
# The guest has no libc: a dynamic busybox (Debian's plain `busybox`) would not start.
if readelf -l "$busybox" 2>/dev/null | grep -q INTERP; then
    die "$busybox is dynamically linked: install busybox-static"
fi
cc=${HUSK_GUEST_CC:-cc}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys}
cp "$busybox" "$stage/bin/busybox"
for applet in sh mount umount cat echo dd sed sleep sync touch mkdir reboot; do
    ln -s busybox "$stage/bin/$applet"
done
"$cc" -static -O2 -Wall -o "$stage/bin/vsock-echo" "$here/test-initramfs/vsock-echo.c" \
    || die "cannot build vsock-echo with $cc -static (install libc6-dev)"
install -m 0755 "$here/test-initramfs/init" "$stage/init"

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) \
    | gzip -9n > "$out.tmp"
mv "$out.tmp" "$out"
log "wrote $out"
