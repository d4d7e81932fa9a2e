"""Many containers started at once: HUSK_BENCH_PARALLEL `husk run --rm busybox true`, and
beside them as many `runc run`s of the same rootfs (distinct ids), containers/s for each."""
import subprocess
import time

from common import log


def burst(argvs):
    """Starts every argv at once; (successes, wall seconds, first failure's last line)."""
    t = time.monotonic()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for a in argvs]
    ok, first_err = 0, None
    for p in procs:
        _, err = p.communicate()
        if p.returncode == 0:
            ok += 1
        elif first_err is None:
            lines = err.strip().splitlines() or [f"exit status {p.returncode}"]
            first_err = lines[-1].replace("|", "/")
    return ok, time.monotonic() - t, first_err


def rows(husk, root, backend, bundle, n, tag):
    log(f"{n} parallel `husk run --rm busybox true` on {backend}")
    h_ok, h_wall, h_err = burst([[husk, "--root", root, "--vmm", backend, "run", "--rm",
                                  "busybox", "true"]] * n)
    if h_err:
        log(f"husk run failed: {h_err}")
    log(f"{n} parallel `runc run`")
    r_ok, r_wall, r_err = burst([["runc", "run", "--bundle", bundle, f"husk-bench-par-{tag}-{i}"]
                                 for i in range(n)])
    if r_err:
        log(f"runc run failed: {r_err}")
    h_rate, r_rate = h_ok / h_wall, r_ok / r_wall
    note = f"runc: {r_ok}/{n} in {r_wall:.2f} s = {r_rate:.1f}/s; husk / runc = {h_rate / r_rate:.3f}x" \
        if r_ok else f"runc: 0/{n} ({r_err})"
    if h_err:
        note += f"; first husk failure: {h_err}"
    return [f"| {n} parallel `husk run --rm busybox true` (all started at once) | {backend} "
            f"| {h_ok}/{n} ok in {h_wall:.2f} s | {h_rate:.2f} containers/s | {note} |"]
