//! The host side of confining a VMM process (husk-vmm or QEMU) when a backend starts it:
//! the unprivileged uid/gid it runs as, its cgroup, the namespaces it is born in, and the
//! spawn into a new PID namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
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

/// Where the leases on husk's ids are kept: one lock file per id in use (and, under
/// `sockets/`, the socket directories of helpers that run as an id).
pub const ID_LEASE_DIR: &str = "/run/husk-ids";

/// A uid/gid of husk's range held for one VM, so no two live VMMs share one (none may then
/// signal or trace another). The lease is an exclusive `flock` on `ID_LEASE_DIR/<uid>`: the
/// VMM inherits the lock's fd (see [`in_child`]) and the launcher keeps its own until the
/// VM's cgroup (named after the uid) is gone, so the id is free again only once both are.
/// A crash frees it with the processes; nothing to clean up.
#[derive(Debug)]
pub struct IdLease {
    pub ids: Ids,
    lock: File,
}

impl IdLease {
    pub fn lock_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }

    /// The lock itself: a process handed a duplicate holds the lease as long as it lives.
    pub fn lock_file(&self) -> &File {
        &self.lock
    }
}

fn id_base() -> u32 {
    std::env::var(ID_BASE_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|b| *b > 0 && b.checked_add(ID_COUNT).is_some())
        .unwrap_or(DEFAULT_ID_BASE)
}

/// Leases a free id of husk's range (starting at a spread-out point, probing onwards).
pub fn lease_ids() -> io::Result<IdLease> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = std::path::Path::new(ID_LEASE_DIR);
    // 0711: a helper running as a leased id walks through to its socket directory; nobody
    // but root lists or opens the lock files.
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    }
    let base = id_base();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    for i in 0..ID_COUNT {
        let id = base + start.wrapping_add(i) % ID_COUNT;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join(id.to_string()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(IdLease {
                ids: Ids { uid: id, gid: id },
                lock,
            });
        }
    }
    Err(io::Error::other(format!(
        "all {ID_COUNT} ids from {base} are in use by VMs"
    )))
}

/// Removes what launchers that died without cleaning up (a `kill -9` of a monitor or a VM
/// holder) left of their VMs: the cgroup under husk's own `/husk` and the helper socket
/// directory of each id whose lease is free. A lease is held from before both are made until
/// after both are gone (the VMM inherits it), so a free lease means nothing uses them; it is
/// held here while they go, so no new VM takes the id meanwhile. Best effort, no waiting.
pub fn sweep_dead_leases() {
    let dir = std::path::Path::new(ID_LEASE_DIR);
    let sockets = dir.join("sockets");
    let mut uids = super::cgroup::own_vm_uids();
    if let Ok(entries) = std::fs::read_dir(&sockets) {
        uids.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        );
    }
    uids.sort_unstable();
    uids.dedup();
    for uid in uids {
        // Only an id whose lock file exists was ever leased; nobody may hold it now.
        let Ok(lock) = File::open(dir.join(uid.to_string())) else {
            continue;
        };
        // SAFETY: flock on an fd we own; the lock goes with it at the end of this iteration.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        super::cgroup::remove_own_vm(uid);
        // Socket directories of helpers that ran as an id (vhost-device-vsock, before the
        // QEMU backend's agent channel became a serial port): left by an older husk.
        let _ = std::fs::remove_dir_all(sockets.join(uid.to_string()));
    }
}

/// What a confined VMM launch was given; it goes with the VM's leftovers, the cgroup first
/// (fields drop in order), then the id lease, so the id is free only once both are gone.
pub struct Confinement {
    pub cgroup: Option<Cgroup>,
    pub lease: IdLease,
}

impl Confinement {
    pub fn ids(&self) -> Ids {
        self.lease.ids
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

/// The VM's cgroup, under `parent` when given (cgroup v2), or `None` with one warning per
/// process where the host has none to give.
pub fn cgroup(name: &str, limits: Limits, parent: Option<&Path>) -> Option<Cgroup> {
    match Cgroup::create(name, limits, parent) {
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
///
/// `keep_fd` (the id lease's lock) is inherited: the lease lasts as long as the VMM.
pub fn in_child(
    cmd: &mut Command,
    procs: Vec<File>,
    flags: libc::c_int,
    keep_caps: Option<&'static [u32]>,
    keep_fd: RawFd,
) {
    in_child_cgroup(cmd, procs);
    // CAP_CHECKPOINT_RESTORE (40), the last of Linux 6.1, where /proc cannot say.
    let last_cap = last_cap().unwrap_or(40);
    // SAFETY: only fcntl, unshare, mount and prctl run between fork and exec, all
    // async-signal-safe, on an fd and static strings; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(keep_fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(keep) = keep_caps {
                drop_bounding_caps(last_cap, keep)?;
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

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn last_cap() -> io::Result<libc::c_ulong> {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(io::Error::other)
}

/// Drops every capability up to `last_cap` but `keep` from the bounding set. Allocates
/// nothing and makes only prctl calls: safe between fork and exec.
pub fn drop_bounding_caps(last_cap: libc::c_ulong, keep: &[u32]) -> io::Result<()> {
    for cap in 0..=last_cap {
        if keep.contains(&(cap as u32)) {
            continue;
        }
        // SAFETY: prctl takes plain integers. EINVAL: a capability this kernel lacks.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Between fork and exec: join the cgroup behind `procs` (its `cgroup.procs` files).
pub fn in_child_cgroup(cmd: &mut Command, procs: Vec<File>) {
    let procs: Vec<OwnedFd> = procs.into_iter().map(OwnedFd::from).collect();
    // SAFETY: only write(2) on fds the closure owns runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for f in &procs {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Between fork and exec of a helper daemon: new IPC, UTS and network namespaces (`flags`),
/// an empty capability bounding set, umask 007, then `ids` with no supplementary groups, and
/// `no_new_privs`. Its program must be reachable by `ids` (see [`exec_path`]).
pub fn as_ids_in_child(cmd: &mut Command, ids: Ids, flags: libc::c_int) {
    // CAP_CHECKPOINT_RESTORE (40), the last of Linux 6.1, where /proc cannot say.
    let last_cap = last_cap().unwrap_or(40);
    // SAFETY: only unshare, prctl, umask, setgroups and setres[ug]id run between fork and exec, all
    // async-signal-safe system calls on plain integers; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(io::Error::last_os_error());
            if flags != 0 && libc::unshare(flags) != 0 {
                return fail();
            }
            drop_bounding_caps(last_cap, &[])?;
            // Sockets it creates: owner and group (root, from a setgid directory) only.
            libc::umask(0o007);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(ids.gid, ids.gid, ids.gid) != 0
                || libc::setresuid(ids.uid, ids.uid, ids.uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
}

/// `binary` opened for exec by another uid: the returned path (`/proc/self/fd/N`, valid while
/// the returned file is open) reaches it without walking directories only root may enter
/// (husk's tools live under root's home), checking only the file's own exec permission.
pub fn exec_path(binary: &std::path::Path) -> io::Result<(PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(binary)?;
    Ok((PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())), f))
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
    fn leased_ids_are_exclusive_and_from_husks_range() {
        let a = lease_ids().unwrap();
        let b = lease_ids().unwrap();
        assert_ne!(a.ids.uid, b.ids.uid);
        for l in [&a, &b] {
            assert_eq!(l.ids.gid, l.ids.uid);
            assert!((DEFAULT_ID_BASE..DEFAULT_ID_BASE + ID_COUNT).contains(&l.ids.uid));
        }
        // Another open file description cannot take a held id.
        let again = std::fs::File::open(format!("{ID_LEASE_DIR}/{}", a.ids.uid)).unwrap();
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(again.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, -1);
    }

    #[test]
    fn a_child_in_a_new_pid_namespace_is_its_pid_1() {
        let out = in_new_pid_namespace(|| Command::new("sh").args(["-c", "echo $$"]).output())
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
}
