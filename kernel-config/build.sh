#!/usr/bin/env bash
# Builds husk's guest kernel: Debian's linux-source-6.12 (or KERNEL_SRC=dir), `tinyconfig` +
# kernel-config/husk.config, checked option by option, cached outside the repo.
#
#   kernel-config/build.sh            -> last stdout line: path of the cached vmlinux
#
# Environment:
#   KERNEL_SRC=dir     use this kernel tree instead of /usr/src/linux-source-6.12.tar.xz
#                      (it is copied, never modified)
#   HUSK_CACHE=dir     cache root (default ~/.cache/husk); the kernel lands in
#                      $HUSK_CACHE/kernel/<key>/{vmlinux,bzImage,config}, and
#                      $HUSK_CACHE/kernel/{vmlinux,bzImage} point at the latest build
#   FRAGMENT=file      config fragment (default: husk.config beside this script)
#   JOBS=n             make -j (default: nproc)
#
# Every kernel-config/patches/*.patch is applied (patch -p1, in name order) to the extracted or
# copied tree before configuring; one that does not apply fails the build.
#
# The cache key is the sha256 of the fragment, the patches, the kernel source identity and this
# script, so changing any of them rebuilds and an unchanged tree returns at once. Everything but
# the final path goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRAGMENT=${FRAGMENT:-$here/husk.config}
PATCHES=$here/patches
CACHE=${HUSK_CACHE:-$HOME/.cache/husk}/kernel
JOBS=${JOBS:-$(nproc)}
DEB_PKG=linux-source-6.12
DEB_TARBALL=/usr/src/linux-source-6.12.tar.xz

say() { echo "kernel-config/build.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ -r "$FRAGMENT" ] || die "config fragment $FRAGMENT not found"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (install it by hand, or run as root)"; fi
}

# apt-get install, running `apt-get update` only when a package is unknown to apt.
apt_install() {
    [ $# -gt 0 ] || return 0
    command -v apt-get >/dev/null || die "missing packages $* and no apt-get: install them by hand"
    say "installing $*"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; then
        as_root apt-get update >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
    fi
}

# --- kernel source identity --------------------------------------------------------------------
if [ -n "${KERNEL_SRC:-}" ]; then
    [ -f "$KERNEL_SRC/Makefile" ] || die "KERNEL_SRC=$KERNEL_SRC is not a kernel tree (no Makefile)"
    KERNEL_SRC=$(cd "$KERNEL_SRC" && pwd)
    src_version=$(make -s -C "$KERNEL_SRC" kernelversion 2>/dev/null) \
        || die "cannot read the kernel version of $KERNEL_SRC"
    src_id="dir:$KERNEL_SRC:$src_version"
    if git -C "$KERNEL_SRC" rev-parse --git-dir >/dev/null 2>&1; then
        src_id="$src_id:$(git -C "$KERNEL_SRC" describe --always --dirty 2>/dev/null || true)"
    fi
else
    if [ ! -f "$DEB_TARBALL" ]; then apt_install "$DEB_PKG"; fi
    [ -f "$DEB_TARBALL" ] || die "$DEB_PKG installed but $DEB_TARBALL is missing"
    # The package version plus the tarball's size and mtime identify it without hashing 150 MB.
    pkg_version=$(dpkg-query -W -f='${Version}' "$DEB_PKG" 2>/dev/null || echo unknown)
    src_id="deb:$DEB_PKG:$pkg_version:$(stat -c '%s:%Y' "$DEB_TARBALL")"
fi

# In name order (LC_ALL=C so every machine sorts alike); the key covers names and contents.
patches=()
if [ -d "$PATCHES" ]; then
    while IFS= read -r p; do patches+=("$p"); done \
        < <(find "$PATCHES" -maxdepth 1 -type f -name '*.patch' | LC_ALL=C sort)
fi

key=$( { echo "$src_id"; echo "--- fragment"; cat "$FRAGMENT"
         for p in ${patches[@]+"${patches[@]}"}; do echo "--- patch $(basename "$p")"; cat "$p"; done
         echo "--- build.sh"; cat "${BASH_SOURCE[0]}"; } \
       | sha256sum | cut -c1-16)
out=$CACHE/$key

if [ -f "$out/vmlinux" ]; then
    ln -sfn "$key/vmlinux" "$CACHE/vmlinux"
    ln -sfn "$key/bzImage" "$CACHE/bzImage"
    say "cached: $out (source $src_id)"
    echo "$out/vmlinux"
    exit 0
fi

# --- build tools ---------------------------------------------------------------------------
missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need make make; need patch patch; need gcc gcc; need flex flex; need bison bison; need bc bc; need xz xz-utils
need perl perl-base; need sha256sum coreutils; need flock util-linux
[ -f /usr/include/gelf.h ] || missing+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

mkdir -p "$CACHE"
# One kernel build at a time per cache: a second caller waits, then finds the result cached.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    say "another kernel build holds $CACHE/.lock; waiting for it"
    flock 9
fi
if [ -f "$out/vmlinux" ]; then
    ln -sfn "$key/vmlinux" "$CACHE/vmlinux"; ln -sfn "$key/bzImage" "$CACHE/bzImage"
    echo "$out/vmlinux"; exit 0
fi

build=$CACHE/build-$key
logf=$CACHE/build-$key.log
# Under the lock, any build tree left here is from a failed or killed build (kept for its
# log and objects until now); each is ~1.5 GiB.
for stale in "$CACHE"/build-* "$CACHE"/.tmp-*; do
    [ -e "$stale" ] || continue
    say "removing leftover $stale"
    rm -rf "$stale"
done
mkdir -p "$build"
start=$(date +%s)
say "building kernel $key from $src_id (log: $logf)"

if [ -n "${KERNEL_SRC:-}" ]; then
    say "copying $KERNEL_SRC"
    tar -C "$KERNEL_SRC" --exclude=.git -cf - . | tar -C "$build" -xf -
    tree=$build
else
    say "extracting $DEB_TARBALL"
    tar -C "$build" -xf "$DEB_TARBALL"
    tree=$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -n1)
fi
[ -f "$tree/Makefile" ] || die "no kernel tree in $build"
for p in ${patches[@]+"${patches[@]}"}; do
    say "applying $(basename "$p")"
    # --forward: a tree that already has the change fails instead of being reverted.
    patch -d "$tree" -p1 --forward --batch <"$p" >>"$logf" 2>&1 \
        || die "patch $p does not apply to $src_id (see $logf)"
done
# A tree someone configured or built before would leak its .config into ours.
make -s -C "$tree" ARCH=x86_64 mrproper >>"$logf" 2>&1

kmake() { make -C "$tree" ARCH=x86_64 "$@"; }

# --- configuration -----------------------------------------------------------------------------
kmake tinyconfig >>"$logf" 2>&1 || die "make tinyconfig failed (see $logf)"
(cd "$tree" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$logf" 2>&1 \
    || die "merge_config.sh failed (see $logf)"
kmake olddefconfig >>"$logf" 2>&1 || die "make olddefconfig failed (see $logf)"

# Every option the fragment sets must end with exactly that value: Kconfig silently drops
# options whose dependencies are off, which is how kernels lose features unnoticed.
# `# CONFIG_X is not set` counts as the value n; an option absent from .config is n.
if ! mismatch=$(awk '
    function parse(line) {
        if (match(line, /^CONFIG_[A-Za-z0-9_]+=/)) {
            key = substr(line, 1, RLENGTH - 1); val = substr(line, RLENGTH + 1); return 1
        }
        if (line ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) {
            key = line; sub(/^# /, "", key); sub(/ is not set$/, "", key); val = "n"; return 1
        }
        return 0
    }
    FNR == NR { if (parse($0)) { if (!(key in want)) order[++n] = key; want[key] = val }; next }
    { if (parse($0)) have[key] = val }
    END {
        bad = 0
        for (i = 1; i <= n; i++) {
            k = order[i]; got = (k in have) ? have[k] : "n"
            if (want[k] != got) {
                printf "  %s: requested %s, final %s\n", k, want[k], (k in have) ? got : "n (not in final config)"
                bad++
            }
        }
        exit bad > 0
    }' "$FRAGMENT" "$tree/.config"); then
    say "these options of $FRAGMENT did not survive into the final config"
    say "(a dependency is off, or a select overrides them; fix the fragment):"
    echo "$mismatch" >&2
    exit 1
fi
say "config: all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$FRAGMENT") fragment options in the final config"

# --- build ---------------------------------------------------------------------------------------
# make's output goes to the log; a line every 15 s on stderr says how far it got. The previous
# build's object count, when known, turns that into a percentage.
expected=$(cat "$CACHE/.objects" 2>/dev/null || echo 0)
progress() {
    while sleep 15; do
        local n last pct=""
        n=$(grep -cE '^\s+(CC|AS|AR|LD)\s' "$logf" 2>/dev/null || true)
        last=$(tail -n1 "$logf" 2>/dev/null | tr -s ' ' | cut -c1-70)
        if [ "$expected" -gt 0 ]; then pct=" ($(( n * 100 / expected ))%)"; fi
        say "[$(( $(date +%s) - start ))s] $n objects$pct: $last"
    done
}
progress &
progress_pid=$!
trap 'kill $progress_pid 2>/dev/null || true' EXIT

if ! kmake -j"$JOBS" vmlinux bzImage >>"$logf" 2>&1; then
    kill $progress_pid 2>/dev/null || true
    tail -n 30 "$logf" >&2
    die "kernel build failed (full log: $logf; tree kept in $build)"
fi
kill $progress_pid 2>/dev/null || true
grep -cE '^\s+(CC|AS|AR|LD)\s' "$logf" > "$CACHE/.objects" || true

# Publish atomically: a reader sees either no key dir or a complete one.
tmp=$CACHE/.tmp-$key
rm -rf "$tmp"; mkdir -p "$tmp"
cp "$tree/vmlinux" "$tmp/vmlinux"
cp "$tree/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$tree/.config" "$tmp/config"
cp "$logf" "$tmp/build.log"
rm -rf "$out"; mv "$tmp" "$out"
ln -sfn "$key/vmlinux" "$CACHE/vmlinux"
ln -sfn "$key/bzImage" "$CACHE/bzImage"
rm -f "$logf"
# The extracted tree is ~1.5 GiB and extraction takes seconds: not worth keeping.
rm -rf "$build"

say "built in $(( $(date +%s) - start ))s: vmlinux $(du -h "$out/vmlinux" | cut -f1), bzImage $(du -h "$out/bzImage" | cut -f1)"
echo "$out/vmlinux"
