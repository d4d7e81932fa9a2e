#!/usr/bin/env bash
# Start-up against the layer count: `husk run --rm IMAGE true` for busybox images of 1, 8, 20,
# 64 and 127 layers (scripts/make-busybox-image.sh with extra one-file layers), all counts
# interleaved in each round, medians, and the ratio to the 1-layer image measured in the same
# run, per backend this host runs (QEMU; husk-vmm where `husk-vmm --probe` says it boots
# Linux). Every layer is one partition of the one layer disk on either backend.
# Prints a markdown table on stdout; progress on stderr.
# Usage: scripts/bench-layers.sh [RUNS]   (HUSK_BENCH_BACKENDS=husk,qemu picks backends)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-10}
counts=(1 8 20 64 127)

log "building release binaries"
cargo build --release --locked -p husk --bin husk --bin husk-monitor --bin husk-vmm --bin husk-layer-disk >&2
husk_bin=$PWD/target/release/husk
export HUSK_KERNEL=${HUSK_KERNEL:-$(kernel-config/build.sh | tail -n1)}
export HUSK_INITRAMFS=${HUSK_INITRAMFS:-$(scripts/build-initramfs.sh | tail -n1)}

work=$(mktemp -d /var/tmp/husk-bench-layers.XXXXXX)
trap 'rm -rf "$work"' EXIT
for n in "${counts[@]}"; do
    archive=$(scripts/make-busybox-image.sh "$work/img$n" "layers$n:bench" $((n - 1)) | tail -n1)
    "$husk_bin" --root "$work/root" load -i "$archive" >&2
done

backends=(qemu)
if target/release/husk-vmm --probe >/dev/null 2>&1; then
    backends+=(husk)
fi
if [ -n "${HUSK_BENCH_BACKENDS:-}" ]; then
    IFS=, read -r -a backends <<< "$HUSK_BENCH_BACKENDS"
fi

python3 - "$runs" "$husk_bin" "$work/root" "${backends[*]}" "${counts[@]}" <<'PY'
import statistics, subprocess, sys, time

runs, husk, root, backends = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split()
counts = [int(c) for c in sys.argv[5:]]

def run(backend, n):
    t = time.monotonic()
    subprocess.run([husk, "--root", root, "--vmm", backend, "run", "--rm", f"layers{n}:bench", "true"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - t

print("| backend | layers | `husk run --rm IMAGE true` median | vs 1 layer |")
print("|---|---|---|---|")
for b in backends:
    times = {n: [] for n in counts}
    for n in counts:  # warm-up: page cache, first conversion checks
        run(b, n)
    for i in range(runs):
        print(f"bench: {b} round {i + 1}/{runs}", file=sys.stderr, flush=True)
        for n in counts:
            times[n].append(run(b, n))
    base = statistics.median(times[counts[0]])
    label = "QEMU" if b == "qemu" else "husk-vmm"
    for n in counts:
        m = statistics.median(times[n])
        print(f"| {label} | {n} | {m:.3f} s | {m / base:.2f}x |")
PY
