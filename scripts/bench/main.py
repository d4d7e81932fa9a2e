"""scripts/bench.sh's measurements (see there), printed as one markdown table on stdout.
Usage: main.py RUNS HUSK WORK BUNDLE KERNEL INITRAMFS BACKEND...
Environment: BENCH_PODMAN_HUSK and BENCH_PODMAN_RUNC (podman launchers, from bench.sh) or
BENCH_PODMAN_NOT_RUN (why not); HUSK_BENCH_IDLE (default 100, 0: no density run),
HUSK_BENCH_IDLE_BATCH (default 4), HUSK_BENCH_PARALLEL (default 20, 0: none)."""
import json
import os
import subprocess
import sys
import time

import boot
import density
import parallel
import podman
import template
from common import comm, container_pids, guest_ram_pss, log, smaps_rollup, stats, template_ram_kept_kib, timed, tree

runs, husk, work, bundle, kernel, initramfs = int(sys.argv[1]), *sys.argv[2:7]
backends = sys.argv[7:]
root = os.path.join(work, "root")
# husk's QEMU backend restores containers' VMs from VM templates (src/backend/template): the
# bench keeps its own, built by the first (untimed) run; `cold` rows turn them off.
os.environ["HUSK_VM_TEMPLATES"] = os.path.join(work, "vm-templates")
COLD = ["env", "HUSK_VM_TEMPLATES=off"]


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v else default


def accel_of_qemu():
    # Same probe as husk's: HUSK_QEMU_ACCEL, else kvm only where husk-vmm says KVM runs guests.
    return os.environ.get("HUSK_QEMU_ACCEL") or ("kvm" if "husk" in backends else "tcg")


def husk_cmd(b):
    return [husk, "--root", root, "--vmm", b, "run", "--rm", "busybox", "true"]


def husk_run(cmd, nth_failure):
    """One timed `husk run --rm busybox true`; None when it failed (reported, its console log
    kept as the nth_failure-th)."""
    try:
        return timed(cmd, stderr=subprocess.PIPE)
    except subprocess.CalledProcessError as e:
        log(f"run failed: {e.stderr.decode(errors='replace').strip()}")
        for line in e.stderr.decode(errors="replace").split("(console log: ")[1:2]:
            src = line.split(")")[0]
            if os.path.exists(src):
                dst = f"/var/tmp/husk-bench-failed-{nth_failure}.console.log"
                open(dst, "wb").write(open(src, "rb").read())
                log(f"kept {dst}")
        return None


def husk_and_bare_runs(b, bare_boot):
    """`runs` rounds of one timed `husk run --rm busybox true` on backend b, on QEMU also one
    with VM templates off (a cold boot), and one bare boot (bare_boot()), interleaved so that
    the machine's drift falls on all alike; one untimed round first warms the page cache and
    builds the VM template. Returns (husk times, cold husk times, bare times, failed husk
    runs)."""
    cmd = husk_cmd(b)
    variants = [cmd] + ([COLD + cmd] if b == "qemu" else [])
    for c in variants:
        timed(c)
    bare_boot()
    times, bs, failed = [[] for _ in variants], [], 0
    for _ in range(runs):
        for c, ts in zip(variants, times):
            t = husk_run(c, failed + 1)
            if t is None:
                failed += 1
            else:
                ts.append(t)
        bs.append(bare_boot())
    return times[0], (times[1:] or [[]])[0], bs, failed


rows = []
first_hm = None
bare = {}
for b in backends:
    if b == "qemu":
        accel = accel_of_qemu()
        bare_name = f"bare QEMU ({boot.qemu_accel_arg(accel)})"
        bare_boot = lambda: boot.bare_qemu(work, kernel, initramfs, accel)  # noqa: E731
        label = f"QEMU microvm ({accel.upper()})"
    else:
        bare_name = "bare husk-vmm"
        bare_boot = lambda: boot.bare_husk_vmm(husk, kernel, initramfs)  # noqa: E731
        label = "husk-vmm (KVM)"
    log(f"husk run --rm busybox true on {b} and a {bare_name} boot to HUSK-AGENT-READY, "
        f"x{runs} interleaved")
    hs, cold, bs, failed = husk_and_bare_runs(b, bare_boot)
    bm, bp = stats(bs)
    bare[b] = bm
    note = f"{failed} runs failed (not timed)" if failed else ""
    how = " (VM restored from a VM template)" if b == "qemu" else ""
    if hs:
        hm, hp = stats(hs)
        first_hm = first_hm or hm
        rows.append(f"| `husk run --rm busybox true`{how} | {label} | {hm:.3f} s | {hp:.3f} s | {note} |")
        note = f"husk / bare = {hm / bm:.2f}x"
    else:
        rows.append(f"| `husk run --rm busybox true`{how} | {label} | failed | | {note} |")
    if cold:
        cm, cp = stats(cold)
        rows.append(f"| `husk run --rm busybox true`, `HUSK_VM_TEMPLATES=off` (cold boot) | {label} | {cm:.3f} s | {cp:.3f} s | husk cold / bare = {cm / bm:.2f}x |")
    rows.append(f"| bare boot, same kernel + initramfs, to agent ready | {label} | {bm:.3f} s | {bp:.3f} s | {note} |")

log(f"runc run x{runs}")
rc = [timed(["runc", "run", "--bundle", bundle, f"husk-bench-{i}"]) for i in range(runs)]
rm, rp = stats(rc)
vs = f"husk ({backends[0]}) / runc = {first_hm / rm:.1f}x" if first_hm else ""
rows.append(f"| `runc run` (same rootfs, `true`, no netns) | runc (no VM) | {rm:.3f} s | {rp:.3f} s | {vs} |")

if "husk" in bare and "qemu" in bare:
    rows.append(f"| bare boot to agent ready, husk-vmm / QEMU microvm ({accel_of_qemu().upper()}) | both | {bare['husk'] / bare['qemu']:.2f}x | | same kernel + initramfs, same run |")

# podman through husk-runtime and runc. husk-runtime picks its backend like `husk --vmm auto`:
# its ratio is to the bare boot of that backend (the first of `backends`).
podman_row = "| `podman run --rm --network none busybox true` | {} | {} | {} | {} |"
if os.environ.get("BENCH_PODMAN_NOT_RUN"):
    rows.append(podman_row.format("husk-runtime, runc", f"NOT RUN: {os.environ['BENCH_PODMAN_NOT_RUN']}", "", ""))
else:
    log(f"podman run --rm with husk-runtime and runc x{runs}, interleaved")
    res = podman.measure([("husk-runtime", os.environ["BENCH_PODMAN_HUSK"]),
                          ("runc", os.environ["BENCH_PODMAN_RUNC"])], runs)
    med = {n: stats(t)[0] for n, (t, err) in res.items() if t and not err}
    for name, (times, err) in res.items():
        if err:
            rows.append(podman_row.format(name, "failed", "", err))
            continue
        m, p = stats(times)
        if name == "husk-runtime":
            ratios = [f"husk-runtime / bare boot ({backends[0]}) = {m / bare[backends[0]]:.2f}x"]
            if "runc" in med:
                ratios.append(f"husk-runtime / runc = {m / med['runc']:.1f}x")
            rows.append(podman_row.format(name, f"{m:.3f} s", f"{p:.3f} s", "; ".join(ratios)))
        else:
            rows.append(podman_row.format(name, f"{m:.3f} s", f"{p:.3f} s", ""))

# `husk run`'s default -m: the mappings of exactly this size are the guest's RAM.
GUEST_MIB = 256
vmm_pss = {}
for b in backends:
    log(f"idle container memory on {b}")
    cid = subprocess.run([husk, "--root", root, "--vmm", b, "run", "-d", "--name", "bench-idle", "busybox", "sleep", "1000"],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        time.sleep(3)
        mon_pid, _ = container_pids(root, cid)
        parts, tot_pss, tot_rss, ram_pss = [], 0, 0, 0
        for p in tree(mon_pid):
            name = comm(p)
            kv = smaps_rollup(p)
            tot_pss += kv["Pss"]
            tot_rss += kv["Rss"]
            ram_pss += guest_ram_pss(p, GUEST_MIB * 1024)
            parts.append(f"{name} {kv['Pss'] / 1024:.1f}")
            if name.startswith(("qemu", "husk-vmm")):
                vmm_pss[b] = kv["Pss"]
        kept = template_ram_kept_kib() if b == "qemu" else 0
    finally:
        subprocess.run([husk, "--root", root, "rm", "-f", cid], check=True, stdout=subprocess.DEVNULL)
    kept_note = (f"; VM templates' RAM kept by husk-template-ram on the host {kept / 1024:.1f} MiB "
                 "(one copy for every clone; the pages this one maps are in its PSS)" if kept else "")
    rows.append(f"| idle container host memory (`husk run -d busybox sleep 1000`) | {b} | PSS {tot_pss / 1024:.1f} MiB | RSS {tot_rss / 1024:.1f} MiB | PSS MiB: {', '.join(parts)}{kept_note} |")
    rows.append(f"| idle container host memory beyond the guest's own pages | {b} | PSS {(tot_pss - ram_pss) / 1024:.1f} MiB | | the guest touched {ram_pss / 1024:.1f} MiB of its {GUEST_MIB} MiB; goal: QEMU/TCG all in ≤ 40 MiB, husk-vmm ≤ 5 MiB beyond the guest's |")
if "husk" in vmm_pss and "qemu" in vmm_pss:
    rows.append(f"| VMM process PSS of an idle container, husk-vmm / QEMU | both | {vmm_pss['husk'] / vmm_pss['qemu']:.2f}x | | guest pages it touched included |")

# What a booted-VM template would save on QEMU/TCG, measured the way husk's QEMU backend would
# restore (scripts/bench/template.py): the agent's VM with busybox's layer disk (each VM its own
# husk-layer-disk), no scratch disk or network, which is not yet what `husk run` does;
# HUSK_BENCH_TEMPLATE=0 skips.
if "qemu" in backends and accel_of_qemu() == "tcg" and env_int("HUSK_BENCH_TEMPLATE", 1) > 0:
    log(f"template restore and cold boot to the agent's Hello x{runs}, interleaved")
    mux = os.path.join(os.path.dirname(os.path.abspath(husk)), "husk-agent-mux")
    try:
        image = json.loads(subprocess.run([husk, "--root", root, "inspect", "busybox"], check=True,
                                          capture_output=True, text=True).stdout)[0]
        layer_disk = (os.path.join(os.path.dirname(os.path.abspath(husk)), "husk-layer-disk"),
                      [layer["Disk"] for layer in image["Layers"]])
        # The template's RAM a file every clone maps, or carried in its saved state.
        for mode in ("shared", "stream"):
            made, res = template.measure(runs, kernel, initramfs, mux,
                                         os.path.join(work, f"template-{mode}"), layer_disk, mode)
            wm, wp = stats(res["warm"])
            cm, cp = stats(res["cold"])
            if mode == "shared":
                rows.append(f"| QEMU spawn to the agent's `Hello`, cold boot | QEMU microvm (TCG) | {cm:.3f} s | {cp:.3f} s | agent's VM with busybox's layer disk (husk-layer-disk's NBD export); no scratch disk, no network |")
            rows.append(f"| QEMU spawn to the agent's `Hello`, restored from a booted template, {mode} RAM | QEMU microvm (TCG) | {wm:.3f} s | {wp:.3f} s | restore / cold (same rounds) = {wm / cm:.2f}x; QEMU PSS {stats(res['warm_pss'])[0]:.1f} vs {stats(res['cold_pss'])[0]:.1f} MiB cold; {made}; template.py's own VMs (no scratch disk, no network) |")
    except Exception as e:  # noqa: BLE001 - one failed part of the bench is a row, not the end
        rows.append(f"| QEMU spawn to the agent's `Hello`, restored from a booted template | QEMU microvm (TCG) | failed | | {e} |")

n_par = env_int("HUSK_BENCH_PARALLEL", 20)
if n_par > 0:
    for b in backends:
        rows += parallel.rows(husk, root, b, bundle, n_par, f"{os.getpid()}-{b}")

n_idle = env_int("HUSK_BENCH_IDLE", 100)
if n_idle > 0:
    for b in backends:
        rows += density.rows(husk, root, b, n_idle, max(1, env_int("HUSK_BENCH_IDLE_BATCH", 4)))

print("| measure | backend | median | p90 | note |")
print("|---|---|---|---|---|")
print("\n".join(rows))
