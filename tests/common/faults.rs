//! The fault tests' tools (tests/fault_matrix.rs, tests/fault_phases.rs): finding the
//! processes a container runs on, `kill -9` of them, reading its status, and checking that
//! nothing of it is left on the host.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cli::Husk;

/// Pids of the processes whose command line starts with `program` (argv[0], or its file
/// name) and mentions `needle`.
pub fn pids_of(program: &str, needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let argv0 = args.first().cloned().unwrap_or_default();
        let name = Path::new(&argv0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Helpers name themselves `PROGRAM@PATH` in argv[0].
        let named = argv0.starts_with(program) || name.starts_with(program);
        if named && args.iter().any(|a| a.contains(needle)) {
            pids.push(pid);
        }
    }
    pids
}

pub fn kill9(pid: i32) {
    // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Whether process `pid` exists (a zombie too).
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// `ps -a --format json`'s status of the only container.
pub fn status(h: &Husk) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["ps", "-a", "--format", "json"])).expect("ps json");
    v[0]["status"].as_str().unwrap_or_default().to_string()
}

/// Waits until the only container is no longer running (at most `secs`).
pub fn wait_not_running(h: &Husk, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(h);
        if s != "running" || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Processes that still use the root or the container's short directories.
pub fn users_of(h: &Husk, state: &serde_json::Value) -> Vec<String> {
    let mut dirs = vec![h.root.path().to_path_buf()];
    for key in ["consoleLog", "vsockUds"] {
        if let Some(d) = state[key].as_str().and_then(|p| Path::new(p).parent()) {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.iter()
        .flat_map(|d| super::engine::processes_using(d))
        .collect()
}

/// What is left of container `state` on the host: processes that use its root or short
/// directories or name its id, and mounts that name its root or id.
pub fn leftovers(h: &Husk, state: &serde_json::Value) -> Vec<String> {
    let id = state["id"].as_str().expect("id");
    let mut left = users_of(h, state);
    // processes_using matches command lines: here those that name the id (the monitor, the
    // helpers of a root too deep for socket paths).
    for p in super::engine::processes_using(Path::new(&id[..16])) {
        if !left.contains(&p) {
            left.push(p);
        }
    }
    let root = h.root.path().to_string_lossy().into_owned();
    left.extend(
        super::engine::mounts()
            .into_iter()
            .filter(|(at, src)| {
                [at, src]
                    .iter()
                    .any(|s| s.contains(&root) || s.contains(&id[..16]))
            })
            .map(|(at, src)| format!("mount {src} on {at}")),
    );
    left.sort();
    left.dedup();
    left
}

/// Waits up to `secs` for [`leftovers`] to be empty; what is still there.
pub fn wait_no_leftovers(h: &Husk, state: &serde_json::Value, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = leftovers(h, state);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rm -f victim` (after the kill) leaves no process, mount or container directory.
pub fn removed_cleanly(h: &Husk, state: &serde_json::Value) {
    h.ok(&["rm", "-f", "victim"]);
    let left = wait_no_leftovers(h, state, 10);
    assert!(left.is_empty(), "{left:?}");
    let dirs = h.container_ids();
    assert!(dirs.is_empty(), "{dirs:?}");
}

/// Every regular file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Mounts a tmpfs of `size` (mount(8)'s `size=`) on `dir`; unmounted on drop.
pub struct SmallTmpfs<'a>(&'a Path);

impl<'a> SmallTmpfs<'a> {
    pub fn mount(dir: &'a Path, size: &str) -> SmallTmpfs<'a> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(mounted.success(), "mount tmpfs on {}", dir.display());
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

/// The cgroup directories of container `state`'s VMM (`…/husk/vm-N` in each hierarchy),
/// read from `/proc` while it runs; empty when it does not (or runs unconfined).
pub fn vm_cgroups(state: &serde_json::Value) -> Vec<std::path::PathBuf> {
    state["pid"]["pid"]
        .as_i64()
        .map(|p| cgroups_of(p as i32))
        .unwrap_or_default()
}

/// The cgroup directories of process `pid` that are a VM's (`vm-N`).
pub fn cgroups_of(pid: i32) -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let name = path.rsplit('/').next()?;
            if !name.starts_with("vm-") {
                return None;
            }
            let hierarchy = match controllers {
                "" => String::new(),
                c => c
                    .split(',')
                    .find(|c| *c == "memory" || *c == "pids")?
                    .to_string(),
            };
            let root = Path::new("/sys/fs/cgroup").join(hierarchy);
            Some(root.join(path.trim_start_matches('/')))
        })
        .collect()
}

/// Waits up to `secs` for every cgroup of `dirs` to be gone; those still there.
fn wait_cgroups_gone(dirs: &[std::path::PathBuf], secs: u64) -> Vec<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left: Vec<_> = dirs.iter().filter(|d| d.exists()).cloned().collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The VM's cgroups `dirs` (seen while it ran) are gone within 10 s: removed by its launcher,
/// or by the next command's sweep after a killed one.
pub fn assert_cgroups_gone(dirs: &[std::path::PathBuf], ctx: &str) {
    assert!(!dirs.is_empty(), "{ctx}: no VM cgroup was seen");
    let left = wait_cgroups_gone(dirs, 10);
    assert!(left.is_empty(), "{ctx}: the VM's cgroup is left: {left:?}");
}
