"""Helpers shared by the parts of scripts/bench.sh: progress, statistics, timing, and the
host memory and CPU of a container's processes (read from /proc)."""
import os
import statistics
import subprocess
import sys
import time


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def stats(xs):
    """(median, p90) of xs."""
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return statistics.median(xs), p90


def timed(argv, **kw):
    t = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.monotonic() - t


def children(pid):
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tasks:
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except FileNotFoundError:
            pass
    return out


def tree(pid):
    """pid and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def comm(pid):
    """The program's name: argv[0] up to an `@` (husk's confined helpers are started as
    `NAME@SOCKET` through an fd, so their comm is the fd's number), else comm."""
    argv0 = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
    name = os.path.basename(argv0.split("@")[0])
    return name or open(f"/proc/{pid}/comm").read().strip()


def smaps_rollup(pid):
    """/proc/PID/smaps_rollup as {field: kB}; {} once the process is gone."""
    kv = {}
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            f = line.split()
            if len(f) >= 2 and f[0].endswith(":") and f[1].isdigit():
                kv[f[0][:-1]] = int(f[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kv


def guest_ram_pss(pid, mem_kib):
    """PSS (kB) of pid's mappings of guest RAM: those exactly as large as the VM's memory
    (QEMU's memory-backend memfd, husk-vmm's guest memory, and the vhost-user backends' maps
    of it). What is left of the process's PSS is the host's own cost of the VM."""
    total, size = 0, None
    try:
        for line in open(f"/proc/{pid}/smaps"):
            f = line.split()
            if not f:
                continue
            if "-" in f[0] and not f[0].endswith(":"):
                size = None
            elif f[0] == "Size:":
                size = int(f[1])
            elif f[0] == "Pss:" and size == mem_kib:
                total += int(f[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def cpu_seconds(pid):
    """User + system CPU time of pid so far (0 once it is gone)."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def mem_available_mib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def container_pids(root, cid):
    """(monitor pid, VMM pid) from husk's state.json of container cid."""
    import json

    state = json.load(open(os.path.join(root, "containers", cid, "state.json")))

    def pid_of(v):
        return v.get("pid") if isinstance(v, dict) else v

    return pid_of(state.get("monitor") or {}), pid_of(state.get("pid") or {})


def template_ram_kept_kib():
    """Resident KiB of the VM templates' RAM held by the husk-template-ram keepers of husk's
    templates directory ($HUSK_VM_TEMPLATES or the default; sealed memfds): shared by every
    clone of a template, in a clone's PSS only for the pages it maps, so counted here once for
    all of them."""
    templates = os.environ.get("HUSK_VM_TEMPLATES", "/var/cache/husk/vm-templates")
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if b"husk-template-ram" not in open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0]:
                continue
            links = {fd: os.readlink(f"/proc/{p}/fd/{fd}") for fd in os.listdir(f"/proc/{p}/fd")}
            if not any(l.startswith(templates + "/") for l in links.values()):
                continue
            for fd in links:
                if not os.readlink(f"/proc/{p}/fd/{fd}").startswith("/memfd:husk-template-ram"):
                    continue
                f = os.open(f"/proc/{p}/fd/{fd}", os.O_RDONLY)
                try:
                    end, at = os.fstat(f).st_size, 0
                    while at < end:
                        try:
                            data = os.lseek(f, at, os.SEEK_DATA)
                        except OSError:
                            break
                        hole = os.lseek(f, data, os.SEEK_HOLE)
                        total += (hole - data) // 1024
                        at = hole
                finally:
                    os.close(f)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total
