#!/usr/bin/env bash
# husk's benchmark, all in one run (release build), medians and p90 of RUNS (default 20):
#   - `husk run --rm busybox true` per backend this host can run (qemu always; husk-vmm only
#     where `husk-vmm --probe` says it can run Linux guests);
#   - beside it a bare boot of the same kernel + agent initramfs on the same backend, VMM
#     spawn -> the agent's HUSK-AGENT-READY on the serial console (no disks, no vsock), so
#     husk's own overhead shows as a ratio, and with both backends husk-vmm / QEMU;
#   - `runc run` of the same busybox rootfs as a plain container (no network namespace);
#   - host memory of an idle container (`husk run -d busybox sleep 1000`) per backend: PSS and
#     RSS of its monitor, VMM and vhost-device-vsock from /proc/PID/smaps_rollup (guest pages never
#     touched are never faulted in, so they count nowhere);
#   - converting and caching a 100 MB layer (scripts/bench-image.sh's harness).
# Prints a markdown table on stdout; progress goes to stderr.
# Usage: scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-20}

command -v runc >/dev/null || ensure_packages runc
log "building release binaries"
cargo build --release --locked -p husk --bin husk --bin husk-vmm >&2
husk_bin=$PWD/target/release/husk
kernel=${HUSK_KERNEL:-$(kernel-config/build.sh | tail -n1)}
initramfs=${HUSK_INITRAMFS:-$(scripts/build-initramfs.sh | tail -n1)}
export HUSK_KERNEL=$kernel HUSK_INITRAMFS=$initramfs

work=$(mktemp -d /var/tmp/husk-bench.XXXXXX)
cleanup() {
    "$husk_bin" --root "$work/root" rm -f bench-idle >/dev/null 2>&1 || true
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

python3 - "$runs" "$husk_bin" "$work" "$bundle" "$kernel" "$initramfs" "${backends[@]}" <<'PY' > "$work/table.md"
import os, statistics, subprocess, sys, time, json

runs, husk, work, bundle, kernel, initramfs = int(sys.argv[1]), *sys.argv[2:7]
backends = sys.argv[7:]
root = os.path.join(work, "root")

def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)

def stats(xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return statistics.median(xs), p90

def timed(argv, **kw):
    t = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.monotonic() - t

def bare_qemu(accel):
    """QEMU as husk starts it (microvm, same kernel, initramfs, cmdline), to the ready marker."""
    log_path = os.path.join(work, "bare-console.log")
    args = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-M", "microvm,acpi=off,x-option-roms=off,memory-backend=mem", "-accel", accel,
            *(["-cpu", "host"] if accel == "kvm" else []),
            "-smp", "1", "-m", "256M", "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
            "-chardev", f"file,id=console,path={log_path}", "-serial", "chardev:console",
            "-kernel", kernel, "-initrd", initramfs,
            # BOOT_ARGS, TCG_BOOT_ARGS under TCG (src/backend/qemu.rs), then husk's `quiet`.
            "-append", "console=ttyS0 reboot=t panic=-1 no_timer_check "
                       + ("lapic_timer_period=4000000 noreplace-smp " if accel == "tcg" else "") + "quiet"]
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
                raise RuntimeError("bare QEMU exited before the ready marker")
            if time.monotonic() - t > 120:
                raise RuntimeError("bare QEMU: no ready marker in 120 s")
            time.sleep(0.002)
    finally:
        p.kill()
        p.wait()

def bare_husk_vmm():
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

def accel_of_qemu():
    # Same probe as husk's: HUSK_QEMU_ACCEL, else kvm only where husk-vmm says KVM runs guests.
    return os.environ.get("HUSK_QEMU_ACCEL") or ("kvm" if "husk" in backends else "tcg")

rows = []
first_hm = None
bare = {}
for b in backends:
    log(f"husk run --rm busybox true on {b} x{runs}")
    cmd = [husk, "--root", root, "--vmm", b, "run", "--rm", "busybox", "true"]
    timed(cmd)  # warm the page cache
    hs, failed = [], 0
    for _ in range(runs):
        # A failed run is counted and reported, not timed; its console log is kept.
        try:
            hs.append(timed(cmd, stderr=subprocess.PIPE))
        except subprocess.CalledProcessError as e:
            failed += 1
            log(f"run failed: {e.stderr.decode(errors='replace').strip()}")
            for line in e.stderr.decode(errors="replace").split("(console log: ")[1:2]:
                src = line.split(")")[0]
                if os.path.exists(src):
                    dst = f"/var/tmp/husk-bench-failed-{failed}.console.log"
                    open(dst, "wb").write(open(src, "rb").read())
                    log(f"kept {dst}")
    if b == "qemu":
        accel = accel_of_qemu()
        log(f"bare QEMU ({accel}) boot to HUSK-AGENT-READY x{runs}")
        bare_qemu(accel)
        bs = [bare_qemu(accel) for _ in range(runs)]
        label = f"QEMU microvm ({accel.upper()})"
    else:
        log(f"bare husk-vmm boot to HUSK-AGENT-READY x{runs}")
        bare_husk_vmm()
        bs = [bare_husk_vmm() for _ in range(runs)]
        label = "husk-vmm (KVM)"
    bare[b] = stats(bs)[0]
    hm, hp = stats(hs)
    first_hm = first_hm or hm
    note = f"{failed} of {runs} runs failed (not timed)" if failed else ""
    rows.append(f"| `husk run --rm busybox true` | {label} | {hm:.3f} s | {hp:.3f} s | {note} |")
    if bs:
        bm, bp = stats(bs)
        rows.append(f"| bare boot, same kernel + initramfs, to agent ready | {label} | {bm:.3f} s | {bp:.3f} s | husk / bare = {hm / bm:.2f}x |")

log(f"runc run x{runs}")
rc = [timed(["runc", "run", "--bundle", bundle, f"husk-bench-{i}"]) for i in range(runs)]
rm, rp = stats(rc)
rows.append(f"| `runc run` (same rootfs, `true`, no netns) | runc (no VM) | {rm:.3f} s | {rp:.3f} s | husk ({backends[0]}) / runc = {first_hm / rm:.1f}x |")

if "husk" in bare and "qemu" in bare:
    rows.append(f"| bare boot to agent ready, husk-vmm / QEMU microvm ({accel_of_qemu().upper()}) | both | {bare['husk'] / bare['qemu']:.2f}x | | same kernel + initramfs, same run |")

def children(pid):
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except FileNotFoundError:
            pass
    return out

vmm_pss = {}
for b in backends:
    log(f"idle container memory on {b}")
    cid = subprocess.run([husk, "--root", root, "--vmm", b, "run", "-d", "--name", "bench-idle", "busybox", "sleep", "1000"],
                         check=True, capture_output=True, text=True).stdout.strip()
    time.sleep(3)
    state = json.load(open(os.path.join(root, "containers", cid, "state.json")))
    monitor = state.get("monitor") or {}
    mon_pid = monitor.get("pid") if isinstance(monitor, dict) else monitor
    pids, todo = [], [mon_pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    parts, tot_pss, tot_rss = [], 0, 0
    for p in pids:
        name = open(f"/proc/{p}/comm").read().strip()
        kv = {}
        for line in open(f"/proc/{p}/smaps_rollup"):
            f = line.split()
            if len(f) >= 2 and f[0].endswith(":") and f[1].isdigit():
                kv[f[0][:-1]] = int(f[1])
        tot_pss += kv["Pss"]; tot_rss += kv["Rss"]
        parts.append(f"{name} {kv['Pss'] / 1024:.1f}")
        if name.startswith(("qemu", "husk-vmm")):
            vmm_pss[b] = kv["Pss"]
    subprocess.run([husk, "--root", root, "rm", "-f", cid], check=True, stdout=subprocess.DEVNULL)
    rows.append(f"| idle container host memory (`husk run -d busybox sleep 1000`) | {b} | PSS {tot_pss / 1024:.1f} MiB | RSS {tot_rss / 1024:.1f} MiB | PSS MiB: {', '.join(parts)} |")
if "husk" in vmm_pss and "qemu" in vmm_pss:
    rows.append(f"| VMM process PSS of an idle container, husk-vmm / QEMU | both | {vmm_pss['husk'] / vmm_pss['qemu']:.2f}x | | guest pages it touched included |")

print("| measure | backend | median | p90 | note |")
print("|---|---|---|---|---|")
print("\n".join(rows))
PY

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
