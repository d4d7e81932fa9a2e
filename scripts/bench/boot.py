"""Bare boots: the same kernel + agent initramfs on a backend, VMM spawn to the agent's
HUSK-AGENT-READY on the serial console (no disks, no vsock): what `husk run` is compared to."""
import os
import subprocess
import time

# QEMU's TCG translation-cache size, as husk gives it (TCG_TB_SIZE_MIB in
# src/backend/qemu.rs; a unit test there keeps the two equal).
TCG_ACCEL = "tcg,tb-size=64"


# The kernel arguments husk adds under TCG (TCG_BOOT_ARGS and tcg_boot_args in
# src/backend/qemu.rs; the same unit test keeps them equal): the fixed ones, then the host's
# TSC frequency as husk measured and cached it (src/backend/tsc.rs), when it did.
TCG_BOOT_ARGS = "lapic_timer_period=4000000 noreplace-smp"
TSC_CACHE = "/run/husk/tsc-khz"


def tcg_boot_args():
    args = TCG_BOOT_ARGS
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        cached_boot, khz = open(TSC_CACHE).read().split()
        if cached_boot == boot:
            args += f" tsc_early_khz={int(khz)} tsc=reliable"
    except (OSError, ValueError):
        pass
    return args


def qemu_accel_arg(accel):
    """The `-accel` value husk passes for accel (`kvm` or `tcg`)."""
    return TCG_ACCEL if accel == "tcg" else accel


BOOT_ARGS = "console=ttyS0 reboot=t panic=-1 no_timer_check"  # BOOT_ARGS in qemu.rs


def husk_append(accel):
    """The kernel command line husk boots a pod VM with on QEMU (before its devices)."""
    return BOOT_ARGS + " " + (tcg_boot_args() + " " if accel == "tcg" else "") + "quiet"


def bare_qemu(work, kernel, initramfs, accel):
    """QEMU as husk starts it (microvm, same kernel, initramfs, cmdline), to the ready marker."""
    return boot_qemu(os.path.join(work, "bare-console.log"), kernel, initramfs, accel,
                     husk_append(accel))


def boot_qemu(log_path, kernel, initramfs, accel, append):
    """Seconds from spawning QEMU (husk's machine, 1 vCPU, 256 MiB) with kernel command line
    `append` to the agent's ready marker in its console log at log_path."""
    args = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-M", "microvm,acpi=off,x-option-roms=off,memory-backend=mem",
            "-accel", qemu_accel_arg(accel),
            *(["-cpu", "host"] if accel == "kvm" else []),
            "-smp", "1", "-m", "256M", "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
            "-chardev", f"file,id=console,path={log_path}", "-serial", "chardev:console",
            "-kernel", kernel, "-initrd", initramfs, "-append", append]
    if os.path.exists(log_path):
        os.remove(log_path)
    t = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with open(log_path, "rb") as f:
                    if b"HUSK-AGENT-READY" in f.read():
                        return time.monotonic() - t
            except FileNotFoundError:
                pass
            if p.poll() is not None:
                raise RuntimeError(f"QEMU exited before the ready marker ({append!r})")
            if time.monotonic() - t > 120:
                raise RuntimeError(f"QEMU: no ready marker in 120 s ({append!r})")
            time.sleep(0.002)
    finally:
        p.kill()
        p.wait()


def bare_husk_vmm(husk, kernel, initramfs):
    """husk-vmm with the same kernel, initramfs and cmdline, to the ready marker."""
    vmm = os.path.join(os.path.dirname(husk), "husk-vmm")
    args = [vmm, "--kernel", kernel, "--initramfs", initramfs, "--vcpus", "1", "--memory", "256",
            "--console", "stdout", "--append", "quiet", "--timeout", "120"]
    t = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        seen = b""
        while b"HUSK-AGENT-READY" not in seen:
            chunk = p.stdout.read1(4096)
            if not chunk:
                raise RuntimeError("bare husk-vmm exited before the ready marker")
            seen = seen[-64:] + chunk
        return time.monotonic() - t
    finally:
        p.kill()
        p.wait()
