//! The cgroup v2 hierarchy and the controllers container runtimes need.

use std::ffi::CString;
use std::fs;
use std::mem::zeroed;

use super::{fail, io_fail, Check};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const WANT_CONTROLLERS: [&str; 5] = ["cpu", "memory", "pids", "io", "cpuset"];

/// Mounts cgroup2 (as PID 1), checks the controllers container runtimes need are offered,
/// enables them for children and creates a child cgroup that gets their interface files.
pub(super) fn cgroup2(pid1: bool) -> Check {
    // SAFETY: statfs is a plain C struct; all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { zeroed() };
    let root = CString::new(CGROUP_ROOT).map_err(|_| fail(libc::EINVAL, "path"))?;
    // SAFETY: `root` is a live NUL-terminated path; statfs writes one statfs into `st`, a live
    // local.
    let mounted = unsafe { libc::statfs(root.as_ptr(), &mut st) } == 0
        && st.f_type as i64 == CGROUP2_SUPER_MAGIC;
    if !mounted {
        if !pid1 {
            return Err(fail(
                libc::ENOENT,
                format!("{CGROUP_ROOT} is not cgroup2 on this host"),
            ));
        }
        let _ = fs::create_dir_all(CGROUP_ROOT);
        nix::mount::mount(
            Some("cgroup2"),
            CGROUP_ROOT,
            Some("cgroup2"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| fail(e as i32, "mount cgroup2"))?;
    }
    let controllers = fs::read_to_string(format!("{CGROUP_ROOT}/cgroup.controllers"))
        .map_err(|e| io_fail(e, "read cgroup.controllers"))?;
    let offered: Vec<&str> = controllers.split_whitespace().collect();
    let missing: Vec<&str> = WANT_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !offered.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(fail(
            libc::ENOENT,
            format!(
                "controllers missing: {} (offered: {})",
                missing.join(" "),
                controllers.trim()
            ),
        ));
    }
    if !pid1 {
        return Ok(());
    }
    let enable: Vec<String> = WANT_CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
    fs::write(
        format!("{CGROUP_ROOT}/cgroup.subtree_control"),
        enable.join(" "),
    )
    .map_err(|e| io_fail(e, "enable controllers in cgroup.subtree_control"))?;
    let child = format!("{CGROUP_ROOT}/husk-selftest");
    fs::create_dir(&child).map_err(|e| io_fail(e, "mkdir child cgroup"))?;
    let files = [
        "cpu.max",
        "memory.max",
        "pids.max",
        "io.stat",
        "cpuset.cpus",
    ];
    let absent: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| fs::metadata(format!("{child}/{f}")).is_err())
        .collect();
    let _ = fs::remove_dir(&child);
    if !absent.is_empty() {
        return Err(fail(
            libc::ENOENT,
            format!("child cgroup lacks {}", absent.join(" ")),
        ));
    }
    Ok(())
}
