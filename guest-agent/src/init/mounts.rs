//! The container's filesystem tree: the spec's mounts, sysctls, masked and read-only paths,
//! then the rootfs moved over `/`. Every destination is resolved inside the container root
//! ([`in_root`]) and mounted through its descriptor.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use husk_protocol::{ContainerSpec, MountSpec, ProcessSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::in_root::{self, fd_path};
use super::{devices, inside, on_path, sys, InitError, Result};

/// Builds the container's tree under `rootfs` and makes it the process's `/`.
pub fn setup_container(spec: &ContainerSpec, rootfs: &Path, process: &ProcessSpec) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| sys("making / private")(e.into()))?;
    let root =
        in_root::open_root(rootfs).map_err(on_path("opening the rootfs", rootfs.display()))?;
    let has = |dest: &str| spec.mounts.iter().any(|m| m.destination == dest);
    if !has("/dev") {
        let dev = MountSpec {
            destination: "/dev".into(),
            source: "tmpfs".into(),
            fs_type: "tmpfs".into(),
            options: ["nosuid", "strictatime", "mode=755", "size=65536k"]
                .map(String::from)
                .to_vec(),
        };
        mount_one(&root, &dev)?;
    }
    for m in &spec.mounts {
        mount_one(&root, m)?;
    }
    devices::populate(&root, has("/dev/pts"), has("/dev/shm"))?;
    sysctl(&spec.sysctl)?;
    for p in &spec.masked_paths {
        mask(&root, p)?;
    }
    for p in &spec.readonly_paths {
        readonly(&root, p)?;
    }
    // As runc does: a missing cwd is created (inside the root) rather than failing the exec.
    in_root::mkdir_all(root.as_fd(), &process.cwd, 0o755)
        .map_err(inside("creating the cwd", &process.cwd))?;
    if process.terminal {
        devices::terminal(&root, process, true)?;
    }
    drop(root);
    detach_outside(rootfs);
    std::env::set_current_dir(rootfs).map_err(on_path("chdir", rootfs.display()))?;
    // The initramfs root cannot be pivot_root'ed away: move the rootfs over it and chroot,
    // as switch_root does; the agent's own mounts were detached above.
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| on_path("moving the rootfs to /", rootfs.display())(e.into()))?;
    nix::unistd::chroot(".").map_err(|e| sys("chroot into the rootfs")(e.into()))?;
    std::env::set_current_dir("/").map_err(on_path("chdir", "/"))?;
    if spec.readonly_root {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| sys("remounting / read-only (root.readonly)")(e.into()))?;
    }
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).map_err(|e| InitError::User {
            op: "sethostname",
            id: h.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Where `virtiofs` shares are mounted (outside the container root) for file binds.
const SHARE_STAGING: &str = "/run/husk-shares";

fn mount_one(root: &OwnedFd, m: &MountSpec) -> Result<()> {
    if m.fs_type == "virtiofs" {
        if let Some((tag, name)) = m.source.split_once(':') {
            return mount_share_entry(root, m, tag, name);
        }
    }
    let (flags, propagation, data) = parse_options(&m.options);
    let bind = flags.contains(MsFlags::MS_BIND);
    let target = if bind && Path::new(&m.source).is_file() {
        in_root::create_file(root.as_fd(), &m.destination, 0o644)
    } else {
        in_root::mkdir_all(root.as_fd(), &m.destination, 0o755)
    }
    .map_err(inside("creating the mount point", &m.destination))?;
    let err = |e: nix::Error| InitError::Mount {
        src: m.source.clone(),
        fstype: m.fs_type.clone(),
        dest: m.destination.clone(),
        source: e.into(),
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(
        Some(m.source.as_str()),
        &fd_path(&target),
        Some(m.fs_type.as_str()),
        flags,
        data,
    )
    .map_err(err)?;
    let remount = bind
        && flags.intersects(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        );
    if !remount && propagation.is_empty() {
        return Ok(());
    }
    // `target` still holds the directory under the new mount: look it up again to get the
    // mount itself.
    let top = in_root::resolve(root.as_fd(), &m.destination)
        .map_err(inside("resolving", &m.destination))?;
    if remount {
        // A bind mount ignores most flags until remounted.
        let flags = flags | MsFlags::MS_REMOUNT;
        mount(
            None::<&str>,
            &fd_path(&top),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(err)?;
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            &fd_path(&top),
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// A virtio-fs mount with source `TAG:NAME`: one entry (a file, e.g. `/etc/hosts`) of the
/// shared directory `TAG`, bind-mounted at the destination. The share itself is mounted once
/// outside the container root; virtio-fs shares whole directories only.
fn mount_share_entry(root: &OwnedFd, m: &MountSpec, tag: &str, name: &str) -> Result<()> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains('/');
    let staging = Path::new(SHARE_STAGING).join(tag);
    let err = |e: nix::Error| InitError::Mount {
        src: m.source.clone(),
        fstype: m.fs_type.clone(),
        dest: m.destination.clone(),
        source: e.into(),
    };
    if bad || tag.is_empty() || tag.contains('/') || tag.starts_with('.') {
        return Err(err(nix::Error::EINVAL));
    }
    let entry = staging.join(name);
    if fs::symlink_metadata(&entry).is_err() {
        fs::create_dir_all(&staging).map_err(on_path("creating", staging.display()))?;
        match mount(
            Some(tag),
            &staging,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(e) => return Err(err(e)),
        }
    }
    // A symlink in a host directory must not lead the bind out of the share.
    let meta = fs::symlink_metadata(&entry).map_err(on_path("finding", entry.display()))?;
    if meta.file_type().is_symlink() {
        return Err(err(nix::Error::ELOOP));
    }
    let mut options = m.options.clone();
    options.push("bind".into());
    let bind = MountSpec {
        destination: m.destination.clone(),
        source: entry.to_string_lossy().into_owned(),
        fs_type: "none".into(),
        options,
    };
    mount_one(root, &bind)
}

/// Kernel parameters, written in the helper's own (new) namespaces: /proc/sys shows the
/// net, ipc and uts parameters of the namespaces of whoever opens it.
fn sysctl(params: &BTreeMap<String, String>) -> Result<()> {
    for (key, value) in params {
        let rel = sysctl_path(key).ok_or_else(|| InitError::BadSysctl { key: key.clone() })?;
        fs::write(Path::new("/proc/sys").join(&rel), value).map_err(|source| {
            InitError::Sysctl {
                key: key.clone(),
                value: value.clone(),
                path: rel,
                source,
            }
        })?;
    }
    Ok(())
}

/// `net.ipv4.ip_forward` -> `net/ipv4/ip_forward`; None for anything that could walk
/// out of /proc/sys.
fn sysctl_path(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && !key.contains('/')
        && !key.contains('\0')
        && key.split('.').all(|c| !c.is_empty());
    ok.then(|| key.replace('.', "/"))
}

/// OCI maskedPaths: a directory gets an empty read-only tmpfs, anything else /dev/null.
/// Paths absent from the image are skipped, as runc does.
fn mask(root: &OwnedFd, p: &str) -> Result<()> {
    let fd = match in_root::resolve(root.as_fd(), p) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(inside("resolving the masked path", p)(e)),
    };
    let r = if is_dir(&fd) {
        mount(
            Some("tmpfs"),
            &fd_path(&fd),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            &fd_path(&fd),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.map_err(|e| inside("masking", p)(e.into()))
}

/// OCI readonlyPaths: bound onto themselves, then remounted read-only keeping the flags
/// they had (a proc or sysfs path stays nosuid, nodev, noexec).
fn readonly(root: &OwnedFd, p: &str) -> Result<()> {
    let fd = match in_root::resolve(root.as_fd(), p) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(inside("resolving the read-only path", p)(e)),
    };
    let err = |e: nix::Error| inside("making read-only", p)(e.into());
    let at = fd_path(&fd);
    mount(
        Some(&at),
        &at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    let top = in_root::resolve(root.as_fd(), p).map_err(inside("resolving", p))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept_flags(&top);
    mount(
        None::<&str>,
        &fd_path(&top),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(err)
}

fn is_dir(fd: &OwnedFd) -> bool {
    // SAFETY: stat is a plain C struct; all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat into `st`, a live local of that type, for an fd we hold.
    unsafe {
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// The flags of the mount holding `fd` that a bind remount would otherwise clear.
fn kept_flags(fd: &OwnedFd) -> MsFlags {
    // SAFETY: statvfs is a plain C struct; all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs writes one statvfs into `st`, a live local of that type, for an fd we hold.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } < 0 {
        return MsFlags::empty();
    }
    let mut f = MsFlags::empty();
    for (st_flag, ms) in [
        (libc::ST_NOSUID, MsFlags::MS_NOSUID),
        (libc::ST_NODEV, MsFlags::MS_NODEV),
        (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (libc::ST_NOATIME, MsFlags::MS_NOATIME),
        (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (libc::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    f
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

/// OCI mount options: flags for mount(2), propagation flags, the rest joined as data.
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
    fn sysctl_keys_cannot_leave_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Some("net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("kernel.shm_rmid_forced").as_deref(),
            Some("kernel/shm_rmid_forced")
        );
        for bad in [
            "",
            "..",
            "a..b",
            ".a",
            "a.",
            "../../etc/passwd",
            "kernel/../../x",
        ] {
            assert_eq!(sysctl_path(bad), None, "{bad:?}");
        }
        let e = sysctl(&BTreeMap::from([("..".to_string(), "1".to_string())])).unwrap_err();
        assert!(e.to_string().contains("not a kernel parameter name"), "{e}");
    }
}
