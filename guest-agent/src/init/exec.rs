//! The last steps before exec: session and terminal, rlimits, capabilities, seccomp, cwd,
//! user; then execve.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use husk_protocol::{ProcessSpec, RlimitKind};

use super::{cvt, sys, InitError, Never, Result, SYNC};
use crate::caps;
use crate::process::send;
use crate::seccomp::{self, Filter};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn rlimit_resource(k: RlimitKind) -> libc::__rlimit_resource_t {
    match k {
        RlimitKind::RlimitAs => libc::RLIMIT_AS,
        RlimitKind::RlimitCore => libc::RLIMIT_CORE,
        RlimitKind::RlimitCpu => libc::RLIMIT_CPU,
        RlimitKind::RlimitData => libc::RLIMIT_DATA,
        RlimitKind::RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitKind::RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitKind::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitKind::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitKind::RlimitNice => libc::RLIMIT_NICE,
        RlimitKind::RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitKind::RlimitNproc => libc::RLIMIT_NPROC,
        RlimitKind::RlimitRss => libc::RLIMIT_RSS,
        RlimitKind::RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitKind::RlimitRttime => libc::RLIMIT_RTTIME,
        RlimitKind::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitKind::RlimitStack => libc::RLIMIT_STACK,
    }
}

/// Applies the process spec and execs it. The root is already the container's, so `cwd`
/// and the program resolve inside it.
pub fn exec(p: &ProcessSpec, filter: Option<&Filter>) -> Result<Never> {
    // SAFETY: setsid() takes no arguments and touches no memory (it fails harmlessly if already a
    // group leader).
    unsafe { libc::setsid() };
    if p.terminal {
        // SAFETY: TIOCSCTTY takes an integer argument, not a pointer; fd 0 is the pty slave the
        // helper was given.
        cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map_err(sys("TIOCSCTTY"))?;
    }
    for r in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: `lim` is a live rlimit that setrlimit only reads.
        cvt(unsafe { libc::setrlimit(rlimit_resource(r.kind), &lim) }).map_err(|source| {
            InitError::Rlimit {
                kind: r.kind,
                soft: r.soft,
                hard: r.hard,
                source,
            }
        })?;
    }
    let caps_err = |op| move |source| InitError::Capabilities { op, source };
    if let Some(c) = &p.capabilities {
        caps::drop_bounding(c).map_err(caps_err("dropping bounding capabilities"))?;
    }
    if let (Some(f), false) = (filter, p.no_new_privileges) {
        // Without no_new_privs only a privileged process may install a filter: now.
        seccomp::install(f).map_err(InitError::Seccomp)?;
    }
    std::env::set_current_dir(&p.cwd).map_err(|source| InitError::InRoot {
        op: "chdir to the cwd",
        path: p.cwd.clone(),
        source,
    })?;
    let u = &p.user;
    let user_err = |op, id: u32| {
        move |source| InitError::User {
            op,
            id: id.to_string(),
            source,
        }
    };
    let gids: Vec<libc::gid_t> = u.additional_gids.clone();
    // SAFETY: setgroups reads gids.len() gid_t values from `gids`, a live Vec of exactly that
    // length.
    cvt(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) }).map_err(|source| {
        InitError::User {
            op: "setgroups",
            id: format!("{gids:?}"),
            source,
        }
    })?;
    if p.capabilities.is_some() {
        // SAFETY: PR_SET_KEEPCAPS takes only integers.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    // SAFETY: setresgid takes only integers; the helper is single-threaded, so the ids change for
    // the whole process at once.
    cvt(unsafe { libc::setresgid(u.gid, u.gid, u.gid) }).map_err(user_err("setresgid", u.gid))?;
    // SAFETY: setresuid takes only integers; the helper is single-threaded, so the ids change for
    // the whole process at once.
    cvt(unsafe { libc::setresuid(u.uid, u.uid, u.uid) }).map_err(user_err("setresuid", u.uid))?;
    if let Some(m) = u.umask {
        // SAFETY: umask() takes an integer and cannot fail.
        unsafe { libc::umask(m) };
    }
    if let Some(c) = &p.capabilities {
        caps::apply(c).map_err(caps_err("setting capabilities"))?;
    }
    if p.no_new_privileges {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes only integers.
        cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            .map_err(sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
        if let Some(f) = filter {
            seccomp::install(f).map_err(InitError::Seccomp)?;
        }
    }
    let program = resolve(&p.args[0], &p.env);
    let cstr = |s: &str, what| CString::new(s).map_err(|_| InitError::Nul(what));
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| InitError::Nul("the program path"))?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| cstr(a, "an argument"))
        .collect::<Result<_>>()?;
    let envp: Vec<CString> = p
        .env
        .iter()
        .map(|a| cstr(a, "an environment variable"))
        .collect::<Result<_>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: fcntl on the sync fd takes only integers. `path`, `argv` and `envp` are live
    // CStrings, and `argv_p`/`envp_p` are NUL-terminated arrays of pointers into them, all alive
    // across execve (which only returns on failure).
    unsafe {
        libc::fcntl(SYNC, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
    }
    let e = io::Error::last_os_error();
    let _ = send(SYNC, format!("Eexec {}: {e}", program.display()).as_bytes());
    // SAFETY: _exit ends the process at once; skipping destructors and atexit handlers is intended
    // in this single-threaded helper, whose only output already went to the sync socket.
    unsafe { libc::_exit(127) }
}

/// `args[0]` looked up in the process's `PATH` when it has no slash.
fn resolve(arg0: &str, env: &[String]) -> PathBuf {
    if arg0.contains('/') {
        return PathBuf::from(arg0);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(arg0);
        if fs::metadata(&cand)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
        {
            return cand;
        }
    }
    PathBuf::from(arg0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup_uses_the_spec_path() {
        assert_eq!(resolve("/bin/x", &[]), PathBuf::from("/bin/x"));
        assert_eq!(
            resolve("sh", &["PATH=/nonexistent:/bin".into()]),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn errors_name_the_operation_and_the_id() {
        let e = InitError::User {
            op: "setresuid",
            id: "1000".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e.to_string().starts_with("setresuid(1000): "), "{e}");
        let e = InitError::Rlimit {
            kind: RlimitKind::RlimitNofile,
            soft: 10,
            hard: 5,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(
            e.to_string()
                .starts_with("setrlimit RlimitNofile to soft 10 hard 5: "),
            "{e}"
        );
    }
}
