//! husk-vmm's own jail, entered once the VM is built and before any guest code runs.
//!
//! Everything the VM needs is open by then (KVM, guest memory, the kernel already loaded,
//! disks, the console file, the vsock listener, TAP fds, vhost-user sockets), so the jail's
//! root holds nothing: an empty read-only tmpfs, plus the directories named in
//! [`JailConfig::binds`] (the vsock socket's, for guest-initiated connections). The process
//! enters new mount, IPC, UTS and network namespaces (the spawner put it in a new PID
//! namespace already), `pivot_root`s, drops every capability from its bounding set, sets its
//! rlimits, becomes an unprivileged uid/gid, sets `no_new_privs` and stops being dumpable
//! (no core dump of guest memory, no ptrace by its own uid).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How husk-vmm confines itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An existing directory the jail's root (an empty tmpfs) is mounted on, in husk-vmm's
    /// own mount namespace: the host never sees that mount.
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Host directories visible at the same path inside the jail.
    #[serde(default)]
    pub binds: Vec<PathBuf>,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// RLIMIT_FSIZE: no write may grow a file past it (the console log stops growing there).
    pub max_file_bytes: u64,
    /// RLIMIT_NPROC: threads of the jail's uid.
    pub max_threads: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("jail: {what}: {source}")]
    Step {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("jail: husk-vmm must enter its jail while it has one thread; it has {0}")]
    Threads(usize),
    #[error("jail: {0}")]
    Invalid(String),
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Step { what, source }
}

fn check(rc: libc::c_int, what: &str) -> Result<(), Error> {
    if rc < 0 {
        return Err(step(what)(io::Error::last_os_error()));
    }
    Ok(())
}

fn cstr(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{} has a NUL byte", p.display())))
}

impl JailConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.uid == 0 || self.gid == 0 {
            return Err(Error::Invalid(
                "the jail's uid and gid must not be 0".into(),
            ));
        }
        for p in std::iter::once(&self.root).chain(&self.binds) {
            if !p.is_absolute() {
                return Err(Error::Invalid(format!("{} is not absolute", p.display())));
            }
        }
        if self.max_open_files == 0 || self.max_threads == 0 {
            return Err(Error::Invalid("the jail's rlimits must not be 0".into()));
        }
        Ok(())
    }
}

/// Enters the jail. Call it with one thread, after every file the VM needs is open.
pub fn enter(cfg: &JailConfig) -> Result<(), Error> {
    cfg.validate()?;
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(step("counting threads"))?
        .count();
    if threads != 1 {
        return Err(Error::Threads(threads));
    }
    // Read while /proc is still there.
    let last_cap = super::launch::last_cap().map_err(step("reading cap_last_cap"))?;
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare takes flags only.
    let rc = unsafe { libc::unshare(flags) };
    check(rc, "unshare(mount, IPC, UTS, network)")?;
    let root = cstr(&cfg.root)?;
    // SAFETY: every pointer below is a NUL-terminated string that outlives the call, or null
    // where mount(2) allows it.
    unsafe {
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making / private",
        )?;
    }
    // The bind sources, held before the root is covered (one may lie under it), and opened
    // in this mount namespace (a mount of another one cannot be bound).
    let sources = cfg
        .binds
        .iter()
        .map(|b| open_path(b).map(|fd| (b.clone(), fd)))
        .collect::<Result<Vec<_>, _>>()?;
    // SAFETY: as above.
    unsafe {
        check(
            libc::mount(
                c"husk-jail".as_ptr(),
                root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=64k,nr_inodes=64,mode=0755".as_ptr().cast(),
            ),
            &format!("mounting the jail's tmpfs on {}", cfg.root.display()),
        )?;
    }
    for (path, fd) in &sources {
        bind(&cfg.root, path, fd)?;
    }
    pivot_into(&cfg.root)?;
    // SAFETY: sethostname reads `len` bytes of a live buffer.
    let rc = unsafe { libc::sethostname(c"husk-vmm".as_ptr(), 8) };
    check(rc, "sethostname")?;
    set_limits(cfg)?;
    drop_privileges(cfg.uid, cfg.gid, last_cap)
}

fn open_path(p: &Path) -> Result<OwnedFd, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(p)
        .map(OwnedFd::from)
        .map_err(step(format!("opening {}", p.display())))
}

/// Binds the directory held by `fd` at `path` under `root`, without suid, devices or exec.
fn bind(root: &Path, path: &Path, fd: &OwnedFd) -> Result<(), Error> {
    let target = root.join(path.strip_prefix("/").unwrap_or(path));
    std::fs::create_dir_all(&target).map_err(step(format!("creating {}", target.display())))?;
    let source = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| Error::Invalid("fd path".into()))?;
    let t = cstr(&target)?;
    let what = format!("binding {}", path.display());
    // SAFETY: NUL-terminated strings that outlive the calls; null data is allowed.
    unsafe {
        check(
            libc::mount(
                source.as_ptr(),
                t.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ),
            &what,
        )?;
        check(
            libc::mount(
                std::ptr::null(),
                t.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
            &what,
        )
    }
}

/// `pivot_root` into `root`, the old root detached, the new one made read-only.
fn pivot_into(root: &Path) -> Result<(), Error> {
    let old = root.join(".old");
    std::fs::create_dir(&old).map_err(step("creating the old root's mount point"))?;
    let (r, o) = (cstr(root)?, cstr(&old)?);
    // SAFETY: NUL-terminated strings that outlive the calls.
    unsafe {
        check(
            libc::syscall(libc::SYS_pivot_root, r.as_ptr(), o.as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        check(libc::chdir(c"/".as_ptr()), "chdir /")?;
        check(
            libc::umount2(c"/.old".as_ptr(), libc::MNT_DETACH),
            "detaching the old root",
        )?;
    }
    std::fs::remove_dir("/.old").map_err(step("removing the old root's mount point"))?;
    // SAFETY: as above.
    check(
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        },
        "making the jail's root read-only",
    )
}

fn set_limits(cfg: &JailConfig) -> Result<(), Error> {
    let limits = [
        (libc::RLIMIT_NOFILE, cfg.max_open_files, "RLIMIT_NOFILE"),
        (libc::RLIMIT_FSIZE, cfg.max_file_bytes, "RLIMIT_FSIZE"),
        (libc::RLIMIT_NPROC, cfg.max_threads, "RLIMIT_NPROC"),
        // No core dump: it would hold guest memory.
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
    ];
    for (resource, value, name) in limits {
        let l = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads a live rlimit.
        check(unsafe { libc::setrlimit(resource, &l) }, name)?;
    }
    // A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the VM.
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(step("ignoring SIGXFSZ")(io::Error::last_os_error()));
    }
    Ok(())
}

fn drop_privileges(uid: u32, gid: u32, last_cap: libc::c_ulong) -> Result<(), Error> {
    super::launch::drop_bounding_caps(last_cap, &[])
        .map_err(step("dropping the capability bounding set"))?;
    // SAFETY: prctl/setgroups/setres[ug]id take plain integers (setgroups a null list of 0).
    unsafe {
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clearing ambient capabilities",
        )?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        // From root to a non-zero uid without SECBIT_KEEP_CAPS: every capability goes.
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
        check(
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
            "not dumpable",
        )?;
    }
    // Proof, not trust: a process that could still become root must not run a guest.
    // SAFETY: setuid(0) only changes state when it is allowed, which is the failure here.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(Error::Invalid("the jail could become root again".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JailConfig {
        JailConfig {
            root: "/run/husk-jail".into(),
            uid: 1000,
            gid: 1000,
            binds: vec![],
            max_open_files: 64,
            max_file_bytes: 1 << 20,
            max_threads: 8,
        }
    }

    #[test]
    fn refuses_root_relative_paths_and_zero_limits() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.uid = 0;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.binds.push("relative".into());
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.max_threads = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn refuses_a_process_with_threads() {
        // The test harness runs this on a thread of a many-threaded process.
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        assert!(matches!(enter(&cfg()), Err(Error::Threads(_))));
    }
}
