#!/usr/bin/env bash
# Builds the guest initramfs: the static husk-agent as /init plus the directories it mounts on,
# as a cpio (newc) archive, compressed.
#
#   scripts/build-initramfs.sh        -> last stdout line: path of the initramfs
#
# Environment:
#   OUT=file         output path (default target/husk/initramfs.cpio, or .cpio.gz / .cpio.zst;
#                    target/husk/initramfs-selftest.cpio with SELFTEST=1)
#   SELFTEST=1       the test initramfs: the agent built with its `selftest` feature, so
#                    `husk.selftest=1` on the kernel command line runs the 24-check syscall
#                    self-test (tests/kernel_tcg.rs, tests/backend_qemu.rs). The production
#                    initramfs (the default) carries no self-test.
#   COMPRESS=none    none (default), gzip or zstd. Uncompressed boots fastest under QEMU TCG
#                    (the agent's ready line 7-18 % sooner than gzip, 2-16 % than zstd: the
#                    kernel takes longer to decompress than to copy 2.2 MiB; kernel-config/README.md).
#   SOURCE_DATE_EPOCH  timestamp stored in the archive (default 0), so builds are reproducible.
#
# No root needed: /dev/console, which the kernel opens for init before running it, is written
# as a raw newc entry instead of with mknod.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/lib.sh"   # ensure_packages
COMPRESS=${COMPRESS:-none}
case "$COMPRESS" in
    gzip) ext=.cpio.gz ;;
    zstd) ext=.cpio.zst ;;
    none) ext=.cpio ;;
    *) echo "build-initramfs.sh: COMPRESS must be gzip, zstd or none (got $COMPRESS)" >&2; exit 1 ;;
esac
SELFTEST=${SELFTEST:-0}
case "$SELFTEST" in
    1) features=(--features selftest); OUT=${OUT:-$root/target/husk/initramfs-selftest$ext} ;;
    0) features=(); OUT=${OUT:-$root/target/husk/initramfs$ext} ;;
    *) echo "build-initramfs.sh: SELFTEST must be 0 or 1 (got $SELFTEST)" >&2; exit 1 ;;
esac
epoch=${SOURCE_DATE_EPOCH:-0}
TARGET=x86_64-unknown-linux-gnu

say() { echo "build-initramfs.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

missing=()
command -v cpio >/dev/null || missing+=(cpio)
[ "$COMPRESS" != gzip ] || command -v gzip >/dev/null || missing+=(gzip)
[ "$COMPRESS" != zstd ] || command -v zstd >/dev/null || missing+=(zstd)
# A static glibc binary links against libc.a.
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then ensure_packages "${missing[@]}"; fi
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"

# --- the agent, static --------------------------------------------------------------------
# --target keeps these flags off build scripts and proc macros; stripping symbols makes the
# binary several times smaller, which is what the kernel has to unpack at boot.
# relocation-model=static links a fixed-address (non-PIE) executable: every container's init
# helper is a re-exec of the agent, and QEMU's TCG finds the code it already translated only
# at the same virtual address (QEMU 7.2 keys translations by it), so a PIE agent, loaded
# elsewhere in each process, had every helper translate serde and the setup code afresh
# (decoding its 1.7 KB config took 11-16 ms, now 2; container create 195 -> ~155 ms). The
# price, no ASLR for the agent's own code inside the guest, is in docs/security.md.
say "building husk-agent (static, $TARGET${features[*]:+, ${features[*]}})"
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release -p husk-agent --target "$TARGET" ${features[@]+"${features[@]}"} >&2)
agent=$root/target/$TARGET/release/husk-agent
[ -x "$agent" ] || die "cargo did not produce $agent"
# A dynamic /init would die at once with no loader in the initramfs: refuse to pack one.
if command -v readelf >/dev/null && readelf -lW "$agent" | grep -q 'Requesting program interpreter'; then
    die "$agent is dynamically linked; the crt-static build did not take"
fi

# --- staging tree ---------------------------------------------------------------------------
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$agent" "$stage/init"
for d in dev proc sys run tmp root etc mnt; do mkdir -p "$stage/$d"; done
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
find "$stage" -exec touch -h -d "@$epoch" {} +

# A newc entry for a character device, written directly (no mknod, so no root needed).
# Fields: magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
# rdevmajor, rdevminor, namesize, check; name NUL-terminated, header+name padded to 4.
newc_entry() { # name mode(octal) rdevmajor rdevminor ino
    local name=$1 mode=$2 major=$3 minor=$4 ino=$5
    local namesize=$(( ${#name} + 1 ))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$((8#$mode))" 0 0 1 "$epoch" 0 0 0 "$major" "$minor" "$namesize" 0
    printf '%s\0' "$name"
    local pad=$(( (4 - (110 + namesize) % 4) % 4 ))
    head -c "$pad" /dev/zero
}

cpio_flags=(-o -H newc -R 0:0 --quiet)
if cpio --help 2>&1 | grep -q -- --reproducible; then cpio_flags+=(--reproducible); fi

archive() {
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio "${cpio_flags[@]}")
    # The kernel unpacks concatenated archives; this second one holds the device node.
    newc_entry dev/console 20600 5 1 900001
    newc_entry TRAILER!!! 0 0 0 0
}

mkdir -p "$(dirname "$OUT")"
tmp_out=$OUT.tmp.$$
case "$COMPRESS" in
    gzip) archive | gzip -9 -n > "$tmp_out" ;;
    zstd) archive | zstd -q -19 -T0 -c > "$tmp_out" ;;
    none) archive > "$tmp_out" ;;
esac
mv "$tmp_out" "$OUT"
say "initramfs: $OUT ($(du -h "$OUT" | cut -f1); agent $(du -h "$agent" | cut -f1), $COMPRESS)"
echo "$OUT"
