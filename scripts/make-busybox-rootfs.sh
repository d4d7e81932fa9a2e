#!/usr/bin/env bash
# Builds a small container root filesystem as an erofs image from Debian's busybox-static:
# /bin/busybox with a symlink per applet, /etc/passwd and /etc/group with a uid 1000 user,
# and the usual empty directories (proc, sys, dev, tmp, ...).
#
#   scripts/make-busybox-rootfs.sh     -> last stdout line: path of the image
#
# Environment: OUT=file (default target/husk/busybox.erofs). Rebuilt only when missing or
# older than this script. No root needed (mkfs.erofs --all-root).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$root/target/husk/busybox.erofs}
say() { echo "make-busybox-rootfs.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -f "$OUT" ] && [ "$OUT" -nt "${BASH_SOURCE[0]}" ]; then echo "$OUT"; exit 0; fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }
need=()
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 \
        || { as_root apt-get update >&2; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi
bb=/bin/busybox
ldd "$bb" >/dev/null 2>&1 && die "$bb is dynamically linked; install busybox-static"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,home/user,var/tmp}
chmod 1777 "$stage/tmp" "$stage/var/tmp"
chmod 0700 "$stage/root"
install -m 0755 "$bb" "$stage/bin/busybox"
for applet in $("$bb" --list-full); do
    [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
done
cat > "$stage/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$stage/etc/group" <<'G'
root:x:0:
tty:x:5:
user:x:1000:
nogroup:x:65534:
G
echo husk > "$stage/etc/hostname"
mkdir -p "$(dirname "$OUT")"
tmp=$OUT.tmp.$$
mkfs.erofs --all-root -T0 "$tmp" "$stage" >"$stage.log" 2>&1 || { cat "$stage.log" >&2; die "mkfs.erofs failed"; }
rm -f "$stage.log"
# Ownership: --all-root makes everything root's; the user's home belongs to uid 1000 only in
# the scratch layer, which is fine for tests (they run as uid 1000 in /tmp).
mv "$tmp" "$OUT"
say "busybox rootfs: $OUT ($(du -h "$OUT" | cut -f1), $("$bb" --list | wc -l) applets)"
echo "$OUT"
