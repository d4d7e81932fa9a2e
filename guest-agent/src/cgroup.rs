//! One cgroup v2 group per container, for `Stats` and `kill --all`. Best effort: a guest
//! without the controllers still runs containers, and `Stats` then says why it cannot answer.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use husk_protocol::StatsReply;

const ROOT: &str = "/sys/fs/cgroup";

/// Mounts cgroup2 and enables the controllers `Stats` reads.
///
/// `favordynmods` (Linux 6.0+, tried first): moving a task into a group then takes no RCU
/// grace period, which each container's start waited for (`cgroup.procs`: 12 ms under QEMU's
/// TCG, 4 with it); forks and exits pay an atomic operation more.
pub fn init() {
    let _ = fs::create_dir_all(ROOT);
    let mount = |data: Option<&str>| {
        nix::mount::mount(
            Some("cgroup2"),
            ROOT,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            data,
        )
    };
    let r = match mount(Some("favordynmods")) {
        Err(nix::errno::Errno::EINVAL) => mount(None),
        r => r,
    };
    if let Err(e) = r {
        if e != nix::errno::Errno::EBUSY {
            say!("husk-agent: mounting cgroup2: {e}");
            return;
        }
    }
    let husk = Path::new(ROOT).join("husk");
    let _ = fs::create_dir_all(&husk);
    for d in [Path::new(ROOT), husk.as_path()] {
        for c in ["+cpu", "+memory", "+pids"] {
            let _ = fs::write(d.join("cgroup.subtree_control"), c);
        }
    }
    reserve_tasks_for_the_agent(&husk);
}

/// Tasks (processes and threads) the containers may never take from the agent.
const AGENT_TASKS: u64 = 128;

/// Caps the tasks of all containers together (the `husk` group every container's group sits
/// in) below what the guest kernel can have at all, so that a fork bomb, whatever its own
/// `pids.max`, leaves the agent room to answer: a 256 MiB guest allows only ~1900 tasks
/// (`kernel.threads-max` follows memory), fewer than podman's default `pids_limit`.
fn reserve_tasks_for_the_agent(husk: &Path) {
    let read = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let Some(max) = containers_pids_max(
        read("/proc/sys/kernel/threads-max"),
        read("/proc/sys/kernel/pid_max"),
    ) else {
        return;
    };
    if let Err(e) = fs::write(husk.join("pids.max"), max.to_string()) {
        say!("husk-agent: limiting the containers' tasks to {max}: {e}");
    }
}

/// The `pids.max` of the containers' common group: the guest's task limit less
/// [`AGENT_TASKS`] (never below them: a tiny guest still runs a container).
fn containers_pids_max(threads_max: Option<u64>, pid_max: Option<u64>) -> Option<u64> {
    let limit = match (threads_max, pid_max) {
        (Some(t), Some(p)) => t.min(p),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => return None,
    };
    Some(limit.saturating_sub(AGENT_TASKS).max(AGENT_TASKS))
}

fn dir(id: &str) -> PathBuf {
    Path::new(ROOT).join("husk").join(id)
}

/// Writes the container's limits to its group (created here). A limit the guest kernel
/// cannot apply is an error: the spec asked for it.
pub fn limit(id: &str, r: &husk_protocol::Resources) -> io::Result<()> {
    let d = dir(id);
    let writes = [
        ("memory.max", r.memory_max.map(|m| m.to_string())),
        ("cpu.max", r.cpu_max.map(|(q, p)| format!("{q} {p}"))),
        ("pids.max", r.pids_max.map(|p| p.to_string())),
    ];
    if writes.iter().all(|(_, v)| v.is_none()) {
        return Ok(());
    }
    fs::create_dir_all(&d)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
    for (file, value) in writes {
        if let Some(v) = value {
            fs::write(d.join(file), &v).map_err(|e| {
                io::Error::new(e.kind(), format!("{} = {v}: {e}", d.join(file).display()))
            })?;
        }
    }
    Ok(())
}

/// Moves `pid` into the container's group (created on first use).
pub fn add(id: &str, pid: i32) {
    let d = dir(id);
    if fs::create_dir_all(&d).is_ok() {
        if let Err(e) = fs::write(d.join("cgroup.procs"), pid.to_string()) {
            say!("husk-agent: cgroup of {id}: {e}");
        }
    }
}

/// Removes the container's group once its processes are gone (waits up to a second for the
/// kernel to let them go), best effort.
pub fn remove(id: &str) {
    let d = dir(id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while fs::remove_dir(&d).is_err() && d.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn read(d: &Path, file: &str) -> io::Result<String> {
    fs::read_to_string(d.join(file))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", d.join(file).display())))
}

fn key(text: &str, k: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

pub fn stats(id: &str) -> io::Result<StatsReply> {
    let d = dir(id);
    let cpu = read(&d, "cpu.stat")?;
    let mem = read(&d, "memory.current")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let limit = read(&d, "memory.max")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let pids = read(&d, "pids.current")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let events = read(&d, "memory.events").unwrap_or_default();
    Ok(StatsReply {
        oom_kills: key(&events, "oom_kill "),
        cpu_usage_ns: key(&cpu, "usage_usec ") * 1000,
        cpu_user_ns: key(&cpu, "user_usec ") * 1000,
        cpu_system_ns: key(&cpu, "system_usec ") * 1000,
        memory_usage_bytes: mem,
        memory_limit_bytes: limit,
        pids,
    })
}

/// How long a freeze may take to settle before the signals go out anyway.
const FREEZE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends `sig` to every process in the container's group and the groups below it (runc's
/// `kill --all`); returns how many were signalled. The group is frozen meanwhile, as runc
/// does, so that nothing forks past the scan (best effort: without the freezer the scan is
/// still made). A process that exits between the scan and the signal (ESRCH) is no error.
pub fn signal_all(id: &str, sig: i32) -> io::Result<usize> {
    let d = dir(id);
    let frozen = freeze(&d, true);
    let result = procs(&d).map(|pids| {
        let me = std::process::id() as i32;
        pids.into_iter()
            // Never 0, -1 or 1 (process groups, everything, the guest's init), nor the agent.
            .filter(|&p| p > 1 && p != me)
            .filter(|&p| {
                // SAFETY: kill(2) on one positive pid.
                let r = unsafe { libc::kill(p, sig) };
                r == 0
            })
            .count()
    });
    if frozen {
        freeze(&d, false);
    }
    result
}

/// The pids in `d`'s `cgroup.procs` and in those of every group below it.
fn procs(d: &Path) -> io::Result<Vec<i32>> {
    let mut pids: Vec<i32> = read(d, "cgroup.procs")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in fs::read_dir(d)?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            // A child group removed since the listing has nothing left to signal.
            if let Ok(more) = procs(&entry.path()) {
                pids.extend(more);
            }
        }
    }
    Ok(pids)
}

/// Writes `cgroup.freeze` and waits (up to [`FREEZE_WAIT`]) until `cgroup.events` agrees;
/// whether the write was taken.
/// Freezes or thaws every process of container `id` and waits (up to [`FREEZE_WAIT`]) until
/// the kernel says it is so.
pub fn set_frozen(id: &str, frozen: bool) -> io::Result<()> {
    let d = dir(id);
    let want = if frozen { "1" } else { "0" };
    fs::write(d.join("cgroup.freeze"), want)?;
    let deadline = std::time::Instant::now() + FREEZE_WAIT;
    loop {
        let events = read(&d, "cgroup.events")?;
        if events.lines().any(|l| l.trim() == format!("frozen {want}")) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("cgroup {} did not settle at frozen {want}", d.display()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn freeze(d: &Path, on: bool) -> bool {
    let want = if on { "1" } else { "0" };
    if fs::write(d.join("cgroup.freeze"), want).is_err() {
        return false;
    }
    let deadline = std::time::Instant::now() + FREEZE_WAIT;
    while std::time::Instant::now() < deadline {
        let events = read(d, "cgroup.events").unwrap_or_default();
        if events.lines().any(|l| l.trim() == format!("frozen {want}")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_leave_the_agent_its_tasks() {
        // A 256 MiB guest: threads-max 1904, pid_max 32768.
        assert_eq!(containers_pids_max(Some(1904), Some(32768)), Some(1776));
        assert_eq!(
            containers_pids_max(None, Some(4096)),
            Some(4096 - AGENT_TASKS)
        );
        assert_eq!(
            containers_pids_max(Some(100), Some(32768)),
            Some(AGENT_TASKS)
        );
        assert_eq!(containers_pids_max(None, None), None);
    }

    #[test]
    fn procs_walks_child_groups_and_skips_junk() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.procs"), "12\n34\n").unwrap();
        let sub = d.path().join("sub").join("deeper");
        fs::create_dir_all(&sub).unwrap();
        fs::write(d.path().join("sub").join("cgroup.procs"), "").unwrap();
        fs::write(sub.join("cgroup.procs"), "56\nnot-a-pid\n").unwrap();
        let mut pids = procs(d.path()).unwrap();
        pids.sort();
        assert_eq!(pids, [12, 34, 56]);
    }

    #[test]
    fn signal_all_of_a_missing_group_is_an_error_and_signals_nothing() {
        let e = signal_all("no-such-container-here", 0).unwrap_err();
        assert!(e.to_string().contains("cgroup.procs"), "{e}");
    }
}
