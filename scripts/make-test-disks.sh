#!/usr/bin/env bash
# Builds the disk images for tests/vmm_linux_devices.rs in OUTDIR: rw.ext4 and ro.ext4
# (16 MiB ext4) and layer.erofs, each holding /role (how the guest's /init tells them
# apart, whatever order the VMM attaches them in) and /hello.txt ("hello from <role>").
# Usage: scripts/make-test-disks.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
out=${1:?usage: make-test-disks.sh OUTDIR}
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found: install e2fsprogs"
command -v mkfs.erofs >/dev/null || die "mkfs.erofs not found: install erofs-utils"
mkdir -p "$out"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
for role in rw ro erofs; do
    mkdir -p "$tree/$role"
    printf '%s\n' "$role" > "$tree/$role/role"
    printf 'hello from %s\n' "$role" > "$tree/$role/hello.txt"
done
for role in rw ro; do
    rm -f "$out/$role.ext4"
    mkfs.ext4 -q -F -L "husk-$role" -d "$tree/$role" "$out/$role.ext4" 16M >/dev/null
done
rm -f "$out/layer.erofs"
mkfs.erofs --quiet --all-root "$out/layer.erofs" "$tree/erofs"
