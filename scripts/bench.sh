#!/usr/bin/env bash
# husk's benchmark, all in one run (release build), medians and p90 of RUNS (default 20):
#   - `husk run --rm busybox true` per backend this host can run (qemu always; husk-vmm only
#     where `husk-vmm --probe` says it can run Linux guests);
#   - beside it, run for run (interleaved), a bare boot of the same kernel + agent initramfs
#     on the same backend, VMM spawn -> the agent's HUSK-AGENT-READY on the serial console (no
#     disks, no vsock), so husk's own overhead shows as a ratio, and with both backends
#     husk-vmm / QEMU;
#   - `runc run` of the same busybox rootfs as a plain container (no network namespace);
#   - host memory of an idle container (`husk run -d busybox sleep 1000`) per backend: PSS and
#     RSS of its monitor, VMM and helper daemons from /proc/PID/smaps_rollup (guest pages never
#     touched are never faulted in, so they count nowhere);
#   - `podman run --rm --network none busybox true` through husk-runtime and through runc,
#     interleaved, with husk-runtime's ratio to the bare boot (podman's private store from
#     scripts/engine-setup.sh; without podman the row says NOT RUN; HUSK_BENCH_PODMAN=0 skips);
#   - HUSK_BENCH_PARALLEL (default 20; 0 skips) `husk run --rm busybox true` started at once
#     per backend, beside as many `runc run`s: successes, wall time, containers/s;
#   - density, per backend: HUSK_BENCH_IDLE (default 100; 0 skips) idle containers started
#     HUSK_BENCH_IDLE_BATCH (default 4) at a time, `husk exec ID true` into each, their
#     processes' total PSS, MemAvailable before/after, idle CPU; all removed afterwards;
#   - on QEMU/TCG, the agent's VM restored from a booted template against its cold boot, to
#     the agent's answer to `Hello` (scripts/bench/template.py; HUSK_BENCH_TEMPLATE=0 skips);
#   - converting and caching a 100 MB layer (scripts/bench-image.sh's harness).
# The measurements are scripts/bench/*.py. Prints a markdown table on stdout; progress goes
# to stderr. Every container of the run lives in its own --root and is removed on exit.
# Usage: scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-20}

command -v runc >/dev/null || ensure_packages runc
log "building release binaries"
cargo build --release --locked -p husk --bin husk --bin husk-monitor --bin husk-vmm --bin husk-layer-disk --bin husk-agent-mux --bin husk-runtime >&2
husk_bin=$PWD/target/release/husk
kernel=${HUSK_KERNEL:-$(kernel-config/build.sh | tail -n1)}
initramfs=${HUSK_INITRAMFS:-$(scripts/build-initramfs.sh | tail -n1)}
export HUSK_KERNEL=$kernel HUSK_INITRAMFS=$initramfs

work=$(mktemp -d /var/tmp/husk-bench.XXXXXX)
cleanup() {
    # Whatever a part left running (the density run removes its own unless it was killed).
    "$husk_bin" --root "$work/root" ps -a -q 2>/dev/null | xargs -r "$husk_bin" --root "$work/root" rm -f >/dev/null 2>&1 || true
    if [ -f "$work/podman/.husk-engine-setup" ]; then
        (. "$work/podman/podman.env" && podman rm -a -f -t 0 >/dev/null 2>&1) || true
        scripts/engine-setup.sh clean "$work/podman" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
archive=$(scripts/make-busybox-image.sh "$work/img" | tail -n1)
"$husk_bin" --root "$work/root" load -i "$archive" >&2

backends=(qemu)
if probe=$(target/release/husk-vmm --probe 2>&1); then
    backends+=(husk)
    husk_vmm_note=""
else
    husk_vmm_note=$(echo "$probe" | tail -n1)
fi

# runc bundle: the image's layer as rootfs, `runc spec` with `true`, no network namespace.
bundle=$work/bundle
mkdir -p "$bundle/rootfs"
layer=$(tar -tf "$archive" | grep 'layer.tar$' | head -n1)
tar -xOf "$archive" "$layer" | tar -x -C "$bundle/rootfs"
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["true"]
c["process"]["terminal"] = False
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
json.dump(c, open(p, "w"), indent=1)
PY

# podman: one private store, a launcher per runtime (both from scripts/engine-setup.sh).
if [ "${HUSK_BENCH_PODMAN:-1}" = 0 ]; then
    export BENCH_PODMAN_NOT_RUN="HUSK_BENCH_PODMAN=0"
elif ! command -v podman >/dev/null; then
    export BENCH_PODMAN_NOT_RUN="podman missing"
else
    HUSK_BUSYBOX_ARCHIVE=$archive scripts/engine-setup.sh podman "$work/podman" >/dev/null
    # shellcheck disable=SC1091
    . "$work/podman/podman.env"
    BENCH_PODMAN_HUSK=$(scripts/engine-setup.sh launcher "$work/podman/rt-husk" target/release/husk-runtime)
    BENCH_PODMAN_RUNC=$(scripts/engine-setup.sh launcher "$work/podman/rt-runc" "$(command -v runc)")
    export BENCH_PODMAN_HUSK BENCH_PODMAN_RUNC
fi

python3 -B scripts/bench/main.py "$runs" "$husk_bin" "$work" "$bundle" "$kernel" "$initramfs" \
    "${backends[@]}" >"$work/table.md"

cat "$work/table.md"
# HUSK_BENCH_NO_CONVERT=1 leaves out the layer conversion (a host measure that builds the
# image_store test binary; scripts/bench-nested.sh sets it).
if [ "${HUSK_BENCH_NO_CONVERT:-}" != 1 ]; then
    log "converting and caching a 100 MB layer (scripts/bench-image.sh)"
    convert=$(scripts/bench-image.sh | grep '^BENCH' | head -n1 || true)
    median=$(echo "$convert" | sed -n 's/.*median \([0-9.]* s\).*/\1/p')
    echo "| convert + cache a 100 MB layer (gzip tar -> erofs) | host | ${median:-n/a} | | median of 5 (bench-image.sh): ${convert#BENCH }|"
fi
if [ -n "$husk_vmm_note" ]; then
    echo
    echo "husk-vmm skipped: \`husk-vmm --probe\` says: $husk_vmm_note"
fi
echo
echo "Host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r); runs: $runs"
