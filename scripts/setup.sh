#!/usr/bin/env bash
# Builds everything husk needs on this machine and boots one microVM to prove it:
# apt packages, the guest kernel (cached), the agent initramfs, release binaries
# (husk, husk-monitor, husk-vmm, husk-layer-disk, husk-agent-mux, husk-template-ram, husk-runtime,
# containerd-shim-husk-v2 (containerd finds it on PATH as runtime type io.containerd.husk.v2))
# installed under PREFIX (default /usr/local), kernel + initramfs under
# $PREFIX/share/husk where husk finds them without flags, the busybox image loaded, and
# `husk system check` to prove the host can run containers. Then:
#   husk run --rm busybox echo hello from a microVM
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
PREFIX=${PREFIX:-/usr/local}

ensure_packages "${HUSK_APT_PACKAGES[@]}"

kernel=$(kernel-config/build.sh | tail -n1)
initramfs=$(scripts/build-initramfs.sh | tail -n1)
log "building release binaries"
cargo build --release --locked -p husk >&2

install -d "$PREFIX/bin" "$PREFIX/share/husk"
for bin in husk husk-monitor husk-vmm husk-layer-disk husk-agent-mux husk-template-ram husk-runtime containerd-shim-husk-v2; do
    if [ -x "target/release/$bin" ]; then install -m 0755 "target/release/$bin" "$PREFIX/bin/$bin"; fi
done
install -m 0644 "$(readlink -f "$kernel")" "$PREFIX/share/husk/vmlinux"
install -m 0644 "$(readlink -f "$(dirname "$kernel")/bzImage")" "$PREFIX/share/husk/bzImage"
install -m 0644 "$initramfs" "$PREFIX/share/husk/initramfs.cpio"
log "installed husk, husk-monitor, husk-vmm, husk-layer-disk, husk-agent-mux, husk-template-ram, husk-runtime and containerd-shim-husk-v2 to $PREFIX/bin, kernel and initramfs to $PREFIX/share/husk"

# Both backends share host directories (rootfs dirs, volumes) through virtiofsd.
scripts/install-virtiofsd.sh >&2

# The default image, so `husk run busybox ...` works straight away (a real OCI image of
# Debian's busybox-static; loading it again is a no-op for the blobs).
archive=$(scripts/make-busybox-image.sh | tail -n1)
"$PREFIX/bin/husk" load -i "$archive" >&2 || die "could not load $archive into the image store"

"$PREFIX/bin/husk" system check >&2 || die "husk system check failed (see the FAIL lines above)"
