"""`podman run --rm --network none busybox true` through husk-runtime and through runc, in
the same run, round-robin so load on the machine hits both alike. podman's private store and
the launchers come from scripts/engine-setup.sh (bench.sh sets them up)."""
import subprocess
import time

from common import log


def one(launcher):
    """One run's wall time in seconds; raises with podman's last error line."""
    t = time.monotonic()
    p = subprocess.run(["podman", "--runtime", launcher, "run", "--rm", "--network", "none",
                        "busybox", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines() or [f"exit status {p.returncode}"]
        raise RuntimeError(lines[-1].replace("|", "/"))
    return time.monotonic() - t


def measure(launchers, runs):
    """{name: (times, error or None)} for each (name, launcher), one warm-up each; a runtime
    that fails once is not run again (its error is reported)."""
    out = {name: ([], None) for name, _ in launchers}
    for name, l in launchers:
        try:
            one(l)
        except RuntimeError as e:
            log(f"podman with {name}: warm-up failed: {e}")
            out[name] = ([], str(e))
    for _ in range(runs):
        for name, l in launchers:
            times, err = out[name]
            if err:
                continue
            try:
                times.append(one(l))
            except RuntimeError as e:
                log(f"podman with {name}: run failed: {e}")
                out[name] = (times, str(e))
    return out
