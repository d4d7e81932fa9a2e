//! The filesystems PID 1 mounts before anything else.

use nix::mount::{mount, MsFlags};
use std::fs;
use std::os::unix::fs::PermissionsExt;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// Mode of the mount point if it has to be created.
    mode: u32,
}

const fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    mode: u32,
) -> Mount {
    Mount {
        source,
        target,
        fstype,
        flags,
        data,
        mode,
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// In order: /dev/pts needs /dev, and /dev/shm too.
const EARLY_MOUNTS: &[Mount] = &[
    m("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None, 0o555),
    m("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None, 0o555),
    m(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
        0o755,
    ),
    m(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("gid=5,mode=0620,ptmxmode=0666"),
        0o755,
    ),
    m(
        "shm",
        "/dev/shm",
        "tmpfs",
        NOSUID_NODEV,
        Some("mode=1777"),
        0o1777,
    ),
    m(
        "tmpfs",
        "/run",
        "tmpfs",
        NOSUID_NODEV,
        Some("mode=0755"),
        0o755,
    ),
    m(
        "tmpfs",
        "/tmp",
        "tmpfs",
        NOSUID_NODEV,
        Some("mode=1777"),
        0o1777,
    ),
];

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and /tmp. A failure is reported and
/// the rest still mounted: a guest with a partial /dev is more useful than a dead PID 1.
pub fn mount_early() {
    for mnt in EARLY_MOUNTS {
        if let Err(e) = mount_one(mnt) {
            say!("husk-agent: mount {} on {}: {e}", mnt.fstype, mnt.target);
        }
    }
}

fn mount_one(mnt: &Mount) -> Result<(), String> {
    if fs::metadata(mnt.target).is_err() {
        fs::create_dir_all(mnt.target).map_err(|e| format!("mkdir: {e}"))?;
        // create_dir_all obeys the umask; the mount point's mode is part of the contract.
        let _ = fs::set_permissions(mnt.target, fs::Permissions::from_mode(mnt.mode));
    }
    match mount(
        Some(mnt.source),
        mnt.target,
        Some(mnt.fstype),
        mnt.flags,
        mnt.data,
    ) {
        Ok(()) => Ok(()),
        // Already mounted (e.g. devtmpfs automount): fine.
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
