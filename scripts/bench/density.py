"""Density: HUSK_BENCH_IDLE idle containers (`husk run -d busybox sleep 100000`, started
HUSK_BENCH_IDLE_BATCH at a time), then `husk exec ID true` into every one; host PSS of all
their processes (monitor, VMM, vhost daemons), the host's MemAvailable before and after, the
CPU the idle VMMs burn; every container is removed at the end, also when something failed."""
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from common import (comm, container_pids, cpu_seconds, log, mem_available_mib, smaps_rollup,
                    template_ram_kept_kib,
                    tree)

IDLE_CPU_WINDOW_S = 10


def _run(argv, timeout=300):
    """(stdout, None) or (None, the last line of stderr)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines() or [f"exit status {p.returncode}"]
        return None, lines[-1].replace("|", "/")
    return p.stdout.strip(), None


def _each(batch, fn, items, progress=None):
    """fn over items, batch at a time; on an exception (Ctrl-C) nothing queued starts."""
    pool = ThreadPoolExecutor(batch)
    try:
        out = []
        for r in pool.map(fn, items):
            out.append(r)
            if progress and len(out) % 10 == 0:
                progress(out)
        return out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def start(base, n, batch):
    """Starts n idle containers; (ids, errors)."""
    def progress(out):
        log(f"density: {sum(1 for _, e in out if not e)} started, "
            f"{sum(1 for _, e in out if e)} failed")
    out = _each(batch, lambda _: _run(base + ["run", "-d", "busybox", "sleep", "100000"]),
                range(n), progress)
    return [o for o, e in out if not e], [f"run: {e}" for _, e in out if e]


def measure(base, root, ids, batch):
    """exec into each of ids, then their processes' PSS and the VMMs' CPU."""
    t = time.monotonic()
    execs = _each(batch, lambda c: _run(base + ["exec", c, "true"], 120), ids)
    m = {"exec_s": time.monotonic() - t, "exec_errors": [e for _, e in execs if e]}
    m["ok"] = len(execs) - len(m["exec_errors"])
    m["mem_after"] = mem_available_mib()
    pss, vmm_pids, per_comm = 0, [], {}
    for c in ids:
        try:
            mon, vmm = container_pids(root, c)
        except (OSError, ValueError):
            continue
        vmm_pids.append(vmm)
        for p in tree(mon):
            kb = smaps_rollup(p).get("Pss", 0)
            try:
                name = comm(p)
            except FileNotFoundError:
                continue
            pss += kb
            per_comm[name] = per_comm.get(name, 0) + kb
    c0 = sum(cpu_seconds(p) for p in vmm_pids)
    time.sleep(IDLE_CPU_WINDOW_S)
    m["cpu"] = (sum(cpu_seconds(p) for p in vmm_pids) - c0) / IDLE_CPU_WINDOW_S
    m["pss_kib"], m["per_comm"] = pss, per_comm
    m["kept_kib"] = template_ram_kept_kib()
    return m


def remove(base, ids, batch):
    log(f"density: removing {len(ids)} containers")
    t = time.monotonic()
    _each(batch, lambda c: _run(base + ["rm", "-f", c]), ids)
    return time.monotonic() - t


def row(n, backend, ids, errors, m, mem_before, t_start, t_rm):
    k = max(len(ids), 1)
    parts = ", ".join(f"{name} {kb / 1024 / k:.1f}" for name, kb in
                      sorted(m["per_comm"].items(), key=lambda x: -x[1]))
    note = (f"{len(ids)}/{n} started in {t_start:.1f} s, exec'd in {m['exec_s']:.1f} s, removed "
            f"in {t_rm:.1f} s; PSS {m['pss_kib'] / 1024:.0f} MiB in all, per container MiB: "
            f"{parts}; MemAvailable {mem_before:.0f} -> {m['mem_after']:.0f} MiB "
            f"({(mem_before - m['mem_after']) / k:.1f} MiB per container); idle VMMs use "
            f"{m['cpu'] * 100:.0f} % of a CPU in all")
    if m["kept_kib"]:
        note += (f"; VM templates' RAM kept by husk-template-ram {m['kept_kib'] / 1024:.1f} MiB "
                 f"(mapped pages already in the PSS; all of it spread over the containers: "
                 f"{(m['pss_kib'] + m['kept_kib']) / 1024 / k:.1f} MiB per container at most)")
    if errors:
        note += f"; first start failure: {errors[0]}"
    if m["exec_errors"]:
        note += f"; {len(m['exec_errors'])} exec failures, first: {m['exec_errors'][0]}"
    return (f"| {n} idle containers (`husk run -d busybox sleep 100000`), then `husk exec ID "
            f"true` into each | {backend} | {m['ok']}/{n} answered | PSS "
            f"{m['pss_kib'] / 1024 / k:.1f} MiB per container | {note} |")


def rows(husk, root, backend, n, batch):
    base = [husk, "--root", root, "--vmm", backend]
    mem_before = mem_available_mib()
    ids = []
    try:
        log(f"density: starting {n} idle containers on {backend}, {batch} at a time")
        t0 = time.monotonic()
        ids, errors = start(base, n, batch)
        t_start = time.monotonic() - t0
        for e in sorted(set(errors))[:3]:
            log(f"density: {e}")
        log(f"density: {len(ids)} running after {t_start:.0f} s; exec into each")
        m = measure(base, root, ids, batch)
        for e in sorted(set(m["exec_errors"]))[:3]:
            log(f"density: exec: {e}")
    finally:
        t_rm = remove(base, ids, batch)
    return [row(n, backend, ids, errors, m, mem_before, t_start, t_rm)]
