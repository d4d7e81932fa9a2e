#!/usr/bin/env python3
"""A/B timing of the bare QEMU TCG boot: QEMU spawn -> the agent's HUSK-AGENT-READY line.

    scripts/bare-boot-ab.py RUNS VARIANT...      VARIANT = "kernel|extra cmdline|initramfs"

Each variant boots as scripts/bench/boot.py boots husk's guest (microvm, TCG with husk's
translation cache, -smp 1, 256 MiB, console in a file) with husk's BOOT_ARGS plus its extra
arguments; the extra "husk" stands for husk's own TCG arguments and `quiet`
(`boot.husk_append("tcg")`). An empty kernel or initramfs means $HUSK_KERNEL /
$HUSK_INITRAMFS. Variants run interleaved, RUNS rounds; prints each median.
"""
import os, statistics, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))
import boot  # noqa: E402


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    runs = int(sys.argv[1])
    variants = []
    for v in sys.argv[2:]:
        kernel, extra, initrd = (v.split("|") + ["", ""])[:3]
        append = boot.husk_append("tcg") if extra == "husk" else f"{boot.BOOT_ARGS} {extra}".strip()
        variants.append((kernel or os.environ["HUSK_KERNEL"], append,
                         initrd or os.environ["HUSK_INITRAMFS"]))
    times = [[] for _ in variants]
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "console.log")
        for _ in range(runs):
            for i, (kernel, append, initrd) in enumerate(variants):
                times[i].append(boot.boot_qemu(log, kernel, initrd, "tcg", append))
    for v, ts in zip(variants, times):
        print(f"{statistics.median(ts):.3f} s median (min {min(ts):.3f}, max {max(ts):.3f}, "
              f"n={len(ts)})  {v[0]} | {v[1]} | {v[2]}")


if __name__ == "__main__":
    main()
