#!/usr/bin/env python3
"""A/B timing of the bare QEMU TCG boot: QEMU spawn -> the agent's HUSK-AGENT-READY line.

    scripts/bare-boot-ab.py RUNS VARIANT...      VARIANT = "kernel|extra cmdline|initramfs"

Each variant boots like husk does (microvm, TCG, -smp 1, 256 MiB, console in a file) with
husk's BOOT_ARGS plus its extra arguments (so husk's own TCG line is
"lapic_timer_period=4000000 noreplace-smp quiet"); an empty kernel or initramfs means
$HUSK_KERNEL / $HUSK_INITRAMFS. Variants run interleaved, RUNS rounds; prints each median.
"""
import os, statistics, subprocess, sys, tempfile, time

BOOT_ARGS = "console=ttyS0 reboot=t panic=-1 no_timer_check"

def boot(kernel, extra, initrd, log):
    if os.path.exists(log):
        os.remove(log)
    args = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-M", "microvm,acpi=off,x-option-roms=off,memory-backend=mem", "-accel", "tcg",
            "-smp", "1", "-m", "256M", "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
            "-chardev", f"file,id=console,path={log}", "-serial", "chardev:console",
            "-kernel", kernel, "-initrd", initrd, "-append", f"{BOOT_ARGS} {extra}".strip()]
    t = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with open(log, "rb") as f:
                    if b"HUSK-AGENT-READY" in f.read():
                        return time.monotonic() - t
            except FileNotFoundError:
                pass
            if p.poll() is not None:
                raise SystemExit(f"QEMU exited before the ready marker: {kernel} {extra!r} {initrd}")
            if time.monotonic() - t > 60:
                raise SystemExit(f"no ready marker in 60 s: {kernel} {extra!r} {initrd}")
            time.sleep(0.002)
    finally:
        p.kill()
        p.wait()

def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    runs = int(sys.argv[1])
    variants = []
    for v in sys.argv[2:]:
        kernel, extra, initrd = (v.split("|") + ["", ""])[:3]
        variants.append((kernel or os.environ["HUSK_KERNEL"], extra,
                         initrd or os.environ["HUSK_INITRAMFS"]))
    times = [[] for _ in variants]
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "console.log")
        for _ in range(runs):
            for i, v in enumerate(variants):
                times[i].append(boot(*v, log))
    for v, ts in zip(variants, times):
        print(f"{statistics.median(ts):.3f} s median (min {min(ts):.3f}, max {max(ts):.3f}, "
              f"n={len(ts)})  {v[0]} | {v[1]} | {v[2]}")

if __name__ == "__main__":
    main()
