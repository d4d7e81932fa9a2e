//! The `init` helper: `husk-agent init`, re-executed by the agent for each process it runs
//! (see [`crate::process`] for the protocol). Single-threaded, so it may unshare and setns
//! freely. On any failure it reports `E<why>` on the sync socket and exits.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use husk_protocol::{ContainerSpec, MountSpec, NamespaceKind, ProcessSpec, RlimitKind};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::caps;
use crate::process::{recv, send, InitConfig, Mode};
use crate::seccomp::{self, Filter};

const SYNC: RawFd = 3;
const CONFIG: RawFd = 4;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A failed step, with what was being done.
#[derive(Debug)]
pub struct InitError(String);

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, InitError>;

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| InitError(format!("{}: {e}", what())))
    }
}

fn os_err<T>(rc: libc::c_long, what: impl FnOnce() -> String) -> Result<T>
where
    T: Default,
{
    if rc < 0 {
        Err(InitError(format!(
            "{}: {}",
            what(),
            io::Error::last_os_error()
        )))
    } else {
        Ok(T::default())
    }
}

/// Entry point of `husk-agent init`. Never returns.
pub fn main() -> ! {
    // The agent ignores SIGPIPE; ignored dispositions survive exec, the process must not
    // inherit that.
    unsafe {
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32);
    }
    let err = match read_config().and_then(run) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = send(SYNC, format!("E{err}").as_bytes());
    unsafe { libc::_exit(1) }
}

fn read_config() -> Result<InitConfig> {
    let mut f = unsafe { fs::File::from_raw_fd(CONFIG) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .ctx(|| "reading the init config".into())?;
    serde_json::from_slice(&buf).ctx(|| "decoding the init config".into())
}

enum Never {}

fn run(cfg: InitConfig) -> Result<Never> {
    match &cfg.mode {
        Mode::Create { spec, rootfs } => {
            let flags = ns_flags(&spec.namespaces)?;
            os_err::<()>(unsafe { libc::unshare(flags) } as _, || "unshare".into())?;
            fork_parent()?;
            setup_container(spec, rootfs, cfg.console.as_deref())?;
        }
        Mode::Exec { target, namespaces } => {
            join(*target, namespaces)?;
            fork_parent()?;
        }
    }
    send(SYNC, b"R").ctx(|| "sync".into())?;
    match recv(SYNC).ctx(|| "waiting for start".into())?.first() {
        Some(b'S') => {}
        // The agent dropped the container before starting it.
        _ => unsafe { libc::_exit(0) },
    }
    exec(&cfg.process, cfg.seccomp.as_ref(), cfg.console.is_some())
}

/// clone(CLONE_PARENT): the process becomes the agent's child (so the agent reaps it and
/// learns its status) and, after unshare/setns of a pid namespace, the first process in it.
/// The helper reports the pid and exits; only the child returns.
fn fork_parent() -> Result<()> {
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Err(InitError(format!("clone: {}", io::Error::last_os_error())));
    }
    if pid > 0 {
        let _ = send(SYNC, format!("P{pid}").as_bytes());
        unsafe { libc::_exit(0) }
    }
    Ok(())
}

fn ns_flags(kinds: &[NamespaceKind]) -> Result<libc::c_int> {
    let mut flags = 0;
    for k in kinds {
        flags |= match k {
            NamespaceKind::Pid => libc::CLONE_NEWPID,
            NamespaceKind::Mount => libc::CLONE_NEWNS,
            NamespaceKind::Uts => libc::CLONE_NEWUTS,
            NamespaceKind::Ipc => libc::CLONE_NEWIPC,
            NamespaceKind::Network => libc::CLONE_NEWNET,
            NamespaceKind::Cgroup => libc::CLONE_NEWCGROUP,
            NamespaceKind::User | NamespaceKind::Time => {
                return Err(InitError(format!(
                    "{k:?} namespaces are not supported by husk-agent"
                )))
            }
        };
    }
    Ok(flags)
}

/// Enters `target`'s namespaces and root, mount namespace last (it changes what /proc is).
fn join(target: i32, kinds: &[NamespaceKind]) -> Result<()> {
    let order = [
        (NamespaceKind::Ipc, "ipc"),
        (NamespaceKind::Uts, "uts"),
        (NamespaceKind::Network, "net"),
        (NamespaceKind::Cgroup, "cgroup"),
        (NamespaceKind::Pid, "pid"),
        (NamespaceKind::Mount, "mnt"),
    ];
    let mut fds = Vec::new();
    for (kind, name) in order {
        if kinds.contains(&kind) {
            let p = format!("/proc/{target}/ns/{name}");
            fds.push((
                p.clone(),
                fs::File::open(&p).ctx(|| format!("opening {p}"))?,
            ));
        }
    }
    let root = fs::File::open(format!("/proc/{target}/root"))
        .ctx(|| format!("opening /proc/{target}/root"))?;
    for (p, f) in &fds {
        os_err::<()>(unsafe { libc::setns(f.as_raw_fd(), 0) } as _, || {
            format!("setns {p}")
        })?;
    }
    os_err::<()>(unsafe { libc::fchdir(root.as_raw_fd()) } as _, || {
        "fchdir to the container root".into()
    })?;
    nix::unistd::chroot(".").ctx(|| "chroot into the container root".into())?;
    Ok(())
}

fn setup_container(spec: &ContainerSpec, rootfs: &Path, console: Option<&Path>) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ctx(|| "making / private".into())?;
    let has = |dest: &str| spec.mounts.iter().any(|m| m.destination == dest);
    if !has("/dev") {
        let dev = rootfs.join("dev");
        mkdir_p(&dev)?;
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )
        .ctx(|| format!("mounting tmpfs on {}", dev.display()))?;
    }
    for m in &spec.mounts {
        mount_one(rootfs, m)?;
    }
    populate_dev(rootfs, console, has("/dev/pts"), has("/dev/shm"))?;
    for (key, value) in &spec.sysctl {
        let p = rootfs.join("proc/sys").join(key.replace('.', "/"));
        fs::write(&p, value).ctx(|| format!("sysctl {key}"))?;
    }
    for p in &spec.masked_paths {
        let target = rootfs.join(p.trim_start_matches('/'));
        let r = match fs::symlink_metadata(&target) {
            Err(_) => continue,
            Ok(md) if md.is_dir() => mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            ),
            Ok(_) => mount(
                Some(&rootfs.join("dev/null")),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        };
        r.ctx(|| format!("masking {p}"))?;
    }
    for p in &spec.readonly_paths {
        let target = rootfs.join(p.trim_start_matches('/'));
        if !target.exists() {
            continue;
        }
        mount(
            Some(&target),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| format!("binding {p}"))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .ctx(|| format!("making {p} read-only"))?;
    }
    detach_outside(rootfs);
    std::env::set_current_dir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    // The initramfs root cannot be pivot_root'ed away: move the rootfs over it and chroot,
    // as switch_root does; the agent's own mounts were detached above.
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .ctx(|| "moving the rootfs to /".into())?;
    nix::unistd::chroot(".").ctx(|| "chroot".into())?;
    std::env::set_current_dir("/").ctx(|| "chdir /".into())?;
    if spec.readonly_root {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .ctx(|| "making / read-only".into())?;
    }
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).ctx(|| format!("sethostname {h:?}"))?;
    }
    Ok(())
}

/// Detaches every mount of the agent's that is neither the rootfs (or under it) nor one of
/// its ancestors, so the container cannot reach them.
fn detach_outside(rootfs: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect();
    points.reverse();
    for p in points {
        if p == Path::new("/") || p.starts_with(rootfs) || rootfs.starts_with(&p) {
            continue;
        }
        let _ = umount2(&p, MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// OCI mount options: flags for mount(2), the rest joined as data.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let rec = if o.starts_with('r') {
                    MsFlags::MS_REC
                } else {
                    MsFlags::empty()
                };
                propagation |= rec
                    | match o.trim_start_matches('r') {
                        "private" => MsFlags::MS_PRIVATE,
                        "shared" => MsFlags::MS_SHARED,
                        "slave" => MsFlags::MS_SLAVE,
                        _ => MsFlags::MS_UNBINDABLE,
                    };
                continue;
            }
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, propagation, data.join(","))
}

fn mount_one(rootfs: &Path, m: &MountSpec) -> Result<()> {
    let target = rootfs.join(m.destination.trim_start_matches('/'));
    let (flags, propagation, data) = parse_options(&m.options);
    let bind = flags.contains(MsFlags::MS_BIND);
    if bind && Path::new(&m.source).is_file() {
        if let Some(parent) = target.parent() {
            mkdir_p(parent)?;
        }
        if !target.exists() {
            fs::write(&target, b"").ctx(|| format!("creating {}", target.display()))?;
        }
    } else {
        mkdir_p(&target)?;
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    let what = || format!("mounting {} ({}) on {}", m.source, m.fs_type, m.destination);
    mount(
        Some(m.source.as_str()),
        &target,
        Some(m.fs_type.as_str()),
        flags,
        data,
    )
    .ctx(what)?;
    // A bind mount ignores most flags until remounted.
    if bind
        && flags.intersects(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )
    {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .ctx(what)?;
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .ctx(what)?;
    }
    Ok(())
}

fn mkdir_p(p: &Path) -> Result<()> {
    fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))
}

/// The standard /dev: device nodes, the pty as console, devpts and shm unless the spec
/// mounted its own, and the fd links.
fn populate_dev(rootfs: &Path, console: Option<&Path>, has_pts: bool, has_shm: bool) -> Result<()> {
    let dev = rootfs.join("dev");
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        if p.exists() {
            continue;
        }
        let c = CString::new(p.as_os_str().as_bytes()).ctx(|| "device path".into())?;
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        os_err::<()>(rc as _, || format!("mknod {}", p.display()))?;
        // mknod obeys the umask.
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    if !has_pts {
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )
        .ctx(|| "mounting devpts".into())?;
    }
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    if !has_shm {
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .ctx(|| "mounting /dev/shm".into())?;
    }
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        if fs::symlink_metadata(&p).is_err() {
            symlink(to, &p).ctx(|| format!("symlink {}", p.display()))?;
        }
    }
    if let Some(c) = console {
        let p = dev.join("console");
        if !p.exists() {
            fs::write(&p, b"").ctx(|| "creating /dev/console".into())?;
        }
        mount(Some(c), &p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .ctx(|| "binding the pty to /dev/console".into())?;
    }
    Ok(())
}

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

/// Applies the process spec and execs it.
fn exec(p: &ProcessSpec, filter: Option<&Filter>, terminal: bool) -> Result<Never> {
    unsafe { libc::setsid() };
    if terminal {
        os_err::<()>(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } as _, || {
            "TIOCSCTTY".into()
        })?;
    }
    for r in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        os_err::<()>(
            unsafe { libc::setrlimit(rlimit_resource(r.kind), &lim) } as _,
            || format!("setrlimit {:?}", r.kind),
        )?;
    }
    if let Some(adj) = p.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string()).ctx(|| "oom_score_adj".into())?;
    }
    if let Some(c) = &p.capabilities {
        caps::drop_bounding(c).ctx(|| "dropping bounding capabilities".into())?;
    }
    if let (Some(f), false) = (filter, p.no_new_privileges) {
        // Without no_new_privs only a privileged process may install a filter: now.
        seccomp::install(f).ctx(|| "installing the seccomp filter".into())?;
    }
    std::env::set_current_dir(&p.cwd).ctx(|| format!("chdir to cwd {}", p.cwd))?;
    let u = &p.user;
    let gids: Vec<libc::gid_t> = u.additional_gids.clone();
    os_err::<()>(
        unsafe { libc::setgroups(gids.len(), gids.as_ptr()) } as _,
        || "setgroups".into(),
    )?;
    if p.capabilities.is_some() {
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    os_err::<()>(unsafe { libc::setresgid(u.gid, u.gid, u.gid) } as _, || {
        format!("setgid {}", u.gid)
    })?;
    os_err::<()>(unsafe { libc::setresuid(u.uid, u.uid, u.uid) } as _, || {
        format!("setuid {}", u.uid)
    })?;
    if let Some(m) = u.umask {
        unsafe { libc::umask(m) };
    }
    if let Some(c) = &p.capabilities {
        caps::apply(c).ctx(|| "setting capabilities".into())?;
    }
    if p.no_new_privileges {
        os_err::<()>(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as _,
            || "no_new_privs".into(),
        )?;
        if let Some(f) = filter {
            seccomp::install(f).ctx(|| "installing the seccomp filter".into())?;
        }
    }
    let program = resolve(&p.args[0], &p.env);
    let cstr = |s: &str| CString::new(s).ctx(|| "NUL in an argument".into());
    let path =
        CString::new(program.as_os_str().as_bytes()).ctx(|| "NUL in the program path".into())?;
    let argv: Vec<CString> = p.args.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let envp: Vec<CString> = p.env.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    unsafe {
        libc::fcntl(SYNC, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
    }
    let e = io::Error::last_os_error();
    let _ = send(SYNC, format!("Eexec {}: {e}", program.display()).as_bytes());
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
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["nosuid", "noexec", "mode=755", "size=1m", "ro", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, prop, data) = parse_options(&o);
        assert_eq!(
            f,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, "mode=755,size=1m");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn path_lookup_uses_the_spec_path() {
        assert_eq!(resolve("/bin/x", &[]), PathBuf::from("/bin/x"));
        assert_eq!(
            resolve("sh", &["PATH=/nonexistent:/bin".into()]),
            PathBuf::from("/bin/sh")
        );
    }
}
