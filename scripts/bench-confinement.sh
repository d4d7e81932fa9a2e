#!/usr/bin/env bash
# What confining the VMM costs, both ways in one run, runs interleaved (A B A B …), medians:
#   - `husk run --rm busybox true` per backend this host runs (QEMU; husk-vmm where
#     `husk-vmm --probe` says it boots Linux) confined (the default) and with HUSK_JAIL=off
#     (no jail, cgroup, namespaces or seccomp);
#   - husk-vmm start-up to exit with the tiny marker guest (tests/guests/marker.S), with its
#     jail and seccomp filters and with `--seccomp off` and no jail: the VMM's own cost
#     without a guest kernel's boot to hide it.
# Prints a markdown table on stdout; progress on stderr.
# Usage: scripts/bench-confinement.sh [RUNS]   (HUSK_BENCH_BACKENDS=husk,qemu picks backends)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-20}

log "building release binaries"
cargo build --release --locked -p husk --bin husk --bin husk-monitor --bin husk-vmm >&2
husk_bin=$PWD/target/release/husk
vmm_bin=$PWD/target/release/husk-vmm
marker=$(find target/release/build -path '*/out/guests/marker.elf' -newer Cargo.lock | head -n1)
[ -n "$marker" ] || marker=$(find target/release/build -path '*/out/guests/marker.elf' | head -n1)
[ -n "$marker" ] || die "the tiny marker guest was not built"
kernel=${HUSK_KERNEL:-$(kernel-config/build.sh | tail -n1)}
initramfs=${HUSK_INITRAMFS:-$(scripts/build-initramfs.sh | tail -n1)}
export HUSK_KERNEL=$kernel HUSK_INITRAMFS=$initramfs

work=$(mktemp -d /var/tmp/husk-bench-confine.XXXXXX)
trap 'rm -rf "$work"' EXIT
archive=$(scripts/make-busybox-image.sh "$work/img" | tail -n1)
"$husk_bin" --root "$work/root" load -i "$archive" >&2

backends=(qemu)
if "$vmm_bin" --probe >/dev/null 2>&1; then
    backends+=(husk)
fi
# HUSK_BENCH_BACKENDS=husk (or qemu): only those, e.g. husk-vmm alone in the nested-KVM rig
# (scripts/nested-kvm.sh run -- scripts/bench-confinement.sh), where QEMU -accel kvm is slow.
if [ -n "${HUSK_BENCH_BACKENDS:-}" ]; then
    IFS=, read -r -a backends <<< "$HUSK_BENCH_BACKENDS"
fi

python3 - "$runs" "$husk_bin" "$vmm_bin" "$marker" "$work" "${backends[@]}" <<'PY'
import json, os, statistics, subprocess, sys, time

runs, husk, vmm, marker, work = int(sys.argv[1]), *sys.argv[2:6]
backends = sys.argv[6:]
root = os.path.join(work, "root")

def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)

def timed(argv, env=None):
    t = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.monotonic() - t

def pair(name, confined, plain):
    """Runs both `runs` times, interleaved after one warm-up each; their medians."""
    confined(); plain()
    a, b = [], []
    for i in range(runs):
        a.append(confined())
        b.append(plain())
    return statistics.median(a), statistics.median(b)

rows = []
off = dict(os.environ, HUSK_JAIL="off")
for b in backends:
    log(f"husk run --rm busybox true on {b}, confined and HUSK_JAIL=off, x{runs} each")
    cmd = [husk, "--root", root, "--vmm", b, "run", "--rm", "busybox", "true"]
    c, p = pair(b, lambda: timed(cmd), lambda: timed(cmd, env=off))
    label = "QEMU" if b == "qemu" else "husk-vmm"
    rows.append(f"| `husk run --rm busybox true` | {label} | {c:.3f} s | {p:.3f} s | {100 * (c / p - 1):+.1f} % |")

log(f"husk-vmm + tiny marker guest, jailed + filtered and plain, x{runs} each")
empty = "/run/husk-jail"
os.makedirs(empty, mode=0o555, exist_ok=True)
cfg = os.path.join(work, "vm.json")
json.dump({"kernel": marker, "memory_mib": 64, "console": "stdout",
           "jail": {"root": empty, "uid": 0x7000_0000 + 65001, "gid": 0x7000_0000 + 65001,
                    "max_open_files": 128, "max_file_bytes": 1 << 20, "max_threads": 16}},
          open(cfg, "w"))
c, p = pair("tiny",
            lambda: timed([vmm, "--config", cfg]),
            lambda: timed([vmm, "--kernel", marker, "--memory", "64", "--seccomp", "off"]))
rows.append(f"| husk-vmm start to exit, tiny marker guest | husk-vmm (KVM) | {c * 1000:.1f} ms | {p * 1000:.1f} ms | {100 * (c / p - 1):+.1f} % |")

print("| measure | backend | confined (median) | unconfined (median) | added |")
print("|---|---|---|---|---|")
print("\n".join(rows))
print()
print(f"Runs: {runs} each, interleaved. Host: {os.cpu_count()} CPUs, kernel {os.uname().release}.")
PY
