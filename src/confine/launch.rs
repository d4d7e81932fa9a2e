//! The host side of confining a VMM process (husk-vmm or QEMU) when a backend starts it:
//! the unprivileged uid/gid it runs as, its cgroup, the namespaces it is born in, and the
//! spawn into a new PID namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

use super::cgroup::{Cgroup, Limits};

/// `HUSK_JAIL=off` starts VMMs without jail, cgroup or seccomp filters: for debugging and for
/// measuring what confinement costs, never for untrusted guests.
pub const ENV: &str = "HUSK_JAIL";

/// `HUSK_SECCOMP=log` runs husk-vmm's filters in log mode (the kernel's audit log, `dmesg`,
/// names each syscall a filter would have refused): for finding what a new device path
/// needs. `kill` is the default; `off` drops the filters but keeps the jail.
pub const SECCOMP_ENV: &str = "HUSK_SECCOMP";

/// The seccomp mode for husk-vmm: [`SECCOMP_ENV`], else kill. An unknown value is kill.
pub fn seccomp_mode() -> super::seccomp::Mode {
    use super::seccomp::Mode;
    match std::env::var(SECCOMP_ENV).as_deref() {
        Ok("log") => Mode::Log,
        Ok("off") => Mode::Off,
        _ => Mode::Kill,
    }
}

/// `HUSK_JAIL_ID_BASE=N`: the first of the [`ID_COUNT`] uids (and gids) VMMs run as.
pub const ID_BASE_ENV: &str = "HUSK_JAIL_ID_BASE";

/// The default range husk takes its VMMs' uids and gids from: far above login users and
/// the usual subuid ranges (100000–165535 and the like), below the signed-32-bit edge.
pub const DEFAULT_ID_BASE: u32 = 0x7000_0000;
pub const ID_COUNT: u32 = 65_536;

/// An empty, root-owned, read-only directory: QEMU's `-chroot`, and the mount point of
/// husk-vmm's jail root (mounted in its own namespace only).
pub const EMPTY_DIR: &str = "/run/husk-jail";

/// Capability numbers (linux/capability.h) a launch may keep.
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SYS_CHROOT: u32 = 18;

/// Whether VMMs are confined (the default).
pub fn enabled() -> bool {
    !matches!(
        std::env::var(ENV).as_deref(),
        Ok("off") | Ok("0") | Ok("false")
    )
}

/// The uid and gid a VMM runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// The ids of the VM with vsock CID `cid` (unique among live VMs, so no two running VMMs
/// share a uid and none may signal or trace another); without a CID, this process's pid.
pub fn ids_for(cid: Option<u32>) -> Ids {
    let base = std::env::var(ID_BASE_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|b| *b > 0 && b.checked_add(ID_COUNT).is_some())
        .unwrap_or(DEFAULT_ID_BASE);
    let n = cid.unwrap_or_else(std::process::id) % ID_COUNT;
    Ids {
        uid: base + n,
        gid: base + n,
    }
}

/// [`EMPTY_DIR`], made if missing (mode 0555: nobody writes there).
pub fn empty_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let p = PathBuf::from(EMPTY_DIR);
    match std::fs::DirBuilder::new().mode(0o555).create(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // A directory someone else made must still be empty and unwritable.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o555))?;
    if std::fs::read_dir(&p)?.next().is_some() {
        return Err(io::Error::other(format!("{EMPTY_DIR} is not empty")));
    }
    Ok(p)
}

/// The VM's cgroup, or `None` with one warning per process where the host has none to give.
pub fn cgroup(name: &str, limits: Limits) -> Option<Cgroup> {
    match Cgroup::create(name, limits) {
        Ok(cg) => Some(cg),
        Err(e) => {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!("VMs run without memory and pids limits: {e}");
            });
            None
        }
    }
}

/// Between fork and exec of `cmd`: join the cgroup behind `procs` (its `cgroup.procs`
/// files), then enter new namespaces (`flags`, `CLONE_NEW*`); a new mount namespace is made
/// private first, so nothing mounted in it reaches the host.
///
/// With `keep_caps`, every other capability leaves the bounding set before exec, so the VMM
/// starts (as root) with only those, and can never gain another, whatever it executes.
pub fn in_child(
    cmd: &mut Command,
    procs: Vec<File>,
    flags: libc::c_int,
    keep_caps: Option<&'static [u32]>,
) {
    let procs: Vec<OwnedFd> = procs.into_iter().map(OwnedFd::from).collect();
    let last_cap: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    // SAFETY: only write, unshare, mount and prctl run between fork and exec, all
    // async-signal-safe, on fds the closure owns and static strings; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            for cap in 0..=last_cap {
                let Some(keep) = keep_caps else { break };
                if keep.contains(&(cap as u32)) {
                    continue;
                }
                // EINVAL: a capability this kernel does not have.
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(io::Error::last_os_error());
                }
            }
            for f in &procs {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if flags != 0 && libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            if flags & libc::CLONE_NEWNS != 0
                && libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `f` (which spawns the VMM) on a new thread whose children are born in a new PID
/// namespace: the VMM is its PID 1, sees no host process, and takes anything it could start
/// with it when it ends. The thread, and with it that namespace setting, ends with `f`.
pub fn in_new_pid_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes flags only; CLONE_NEWPID changes only this thread's
            // children, and the thread ends after `f`.
            if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("the VMM spawner thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_husks_range() {
        let ids = ids_for(Some(3));
        assert_eq!(ids.uid, DEFAULT_ID_BASE + 3);
        assert_eq!(ids.gid, ids.uid);
        assert_ne!(ids_for(Some(4)).uid, ids.uid);
        assert!(ids_for(None).uid >= DEFAULT_ID_BASE);
    }

    #[test]
    fn a_child_in_a_new_pid_namespace_is_its_pid_1() {
        let out = in_new_pid_namespace(|| Command::new("sh").args(["-c", "echo $$"]).output())
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
}
