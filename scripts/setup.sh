#!/usr/bin/env bash
# Builds everything husk needs on this machine and boots one microVM to prove it:
# apt packages, the guest kernel (cached), the agent initramfs, release binaries
# installed under PREFIX (default /usr/local), kernel + initramfs under $PREFIX/share/husk.
# Then boots the guest with husk-vmm where this host's KVM can run Linux guests, and with
# QEMU microvm (TCG) where it cannot (e.g. PVM nested KVM), and prints what the agent says.
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
install -m 0755 target/release/husk-vmm "$PREFIX/bin/husk-vmm"
install -m 0644 "$(readlink -f "$kernel")" "$PREFIX/share/husk/vmlinux"
install -m 0644 "$(readlink -f "$(dirname "$kernel")/bzImage")" "$PREFIX/share/husk/bzImage"
install -m 0644 "$initramfs" "$PREFIX/share/husk/initramfs.cpio.gz"
log "installed husk-vmm to $PREFIX/bin, kernel and initramfs to $PREFIX/share/husk"

if "$PREFIX/bin/husk-vmm" --probe >&2; then
    log "booting a microVM with husk-vmm (KVM)"
    exec "$PREFIX/bin/husk-vmm" --kernel "$PREFIX/share/husk/vmlinux" \
        --initramfs "$PREFIX/share/husk/initramfs.cpio.gz" --vcpus 2 --memory 256 --console stdout --append "quiet husk.selftest=1"
else
    log "husk-vmm cannot run Linux guests here (see above): booting with QEMU microvm, TCG"
    exec qemu-system-x86_64 -M microvm,acpi=off -accel tcg -smp 2 -m 256 \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio -device i8042 \
        -kernel "$PREFIX/share/husk/vmlinux" -initrd "$PREFIX/share/husk/initramfs.cpio.gz" \
        -append "console=ttyS0 quiet reboot=k panic=-1 husk.selftest=1"
fi
