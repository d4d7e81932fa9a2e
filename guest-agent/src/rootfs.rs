//! Assembling a container's root filesystem from the disks the host names.
//!
//! Layers are mounted read-only under `/run/husk/<id>/layers/<n>`, the scratch disk under
//! `/run/husk/<id>/scratch` (holding `upper/` and `work/`), and the overlay at
//! `/run/husk/<id>/rootfs`, which the init helper then makes the container's `/`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use husk_protocol::{DiskRef, FsType, LayerDisk, RootfsSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::steps::Steps;

/// Where each container's mounts live.
pub const RUN_DIR: &str = "/run/husk";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no disk with serial {0:?} (looked in /sys/block/*/serial); did the host attach it?")]
    NoSuchSerial(String),
    #[error("disk {disk} (serial {serial:?}) has no partition {number}; did the host attach all layers?")]
    NoSuchPartition {
        serial: String,
        disk: String,
        number: u32,
    },
    #[error(transparent)]
    Overlay(#[from] crate::overlay_mount::OverlayError),
    #[error("disk {0} does not exist")]
    NoSuchDevice(String),
    #[error("cannot create {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("mounting {what} ({fstype}) on {target}: {source}")]
    Mount {
        what: String,
        fstype: String,
        target: PathBuf,
        source: nix::Error,
    },
}

/// Mounts the root filesystem described by `spec` and returns where it is; each step it
/// took is marked in `steps`.
pub fn assemble(id: &str, spec: &RootfsSpec, steps: &mut Steps) -> Result<PathBuf, RootfsError> {
    let base = Path::new(RUN_DIR).join(id);
    let root = base.join("rootfs");
    mkdir(&root)?;
    let result = match spec {
        RootfsSpec::Overlay { layers, scratch } => {
            overlay(&base, &root, layers, scratch.as_ref(), steps)
        }
        RootfsSpec::Disk { disk, readonly } => find_disk(&disk.disk)
            .and_then(|dev| mount_disk(&dev, disk.fs_type, &root, *readonly))
            .map(|()| steps.mark("root disk mounted")),
        RootfsSpec::VirtioFs { tag } => do_mount(tag, &root, "virtiofs", MsFlags::empty(), None)
            .map(|()| steps.mark("virtio-fs root mounted")),
        RootfsSpec::VirtioFsEntry { tag, entry } => {
            share_entry(&root, tag, entry).map(|()| steps.mark("virtio-fs root bound"))
        }
    };
    if result.is_err() {
        teardown(id);
    }
    result.map(|()| root)
}

/// Unmounts everything under `/run/husk/<id>`, best effort.
pub fn teardown(id: &str) {
    let base = Path::new(RUN_DIR).join(id);
    let _ = umount2(&base.join("rootfs"), MntFlags::MNT_DETACH);
    if let Ok(entries) = fs::read_dir(base.join("layers")) {
        for e in entries.flatten() {
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        }
    }
    let _ = umount2(&base.join("scratch"), MntFlags::MNT_DETACH);
}

/// Where a pod's share is mounted once, for every container's root to be bound out of it
/// (the same place the init helper finds volume entries of a share in).
const SHARE_STAGING: &str = "/run/husk-shares";

/// Binds directory `entry` of virtio-fs share `tag` at `root`. The share stays mounted at
/// [`SHARE_STAGING`]: were it unmounted, the kernel would keep only the superblocks of the
/// host mounts under it (announced submounts), and the next mount of the tag would get one
/// of those as its root.
fn share_entry(root: &Path, tag: &str, entry: &str) -> Result<(), RootfsError> {
    let share = Path::new(SHARE_STAGING).join(tag);
    mkdir(&share)?;
    if !is_mount_point(&share) {
        do_mount(tag, &share, "virtiofs", MsFlags::empty(), None)?;
    }
    let dir = share.join(entry);
    let failed = |source| RootfsError::Mount {
        what: dir.display().to_string(),
        fstype: "none".into(),
        target: root.to_path_buf(),
        source,
    };
    // The host makes the entry; a symlink there must not lead the bind out of the share.
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => do_mount(
            &dir.display().to_string(),
            root,
            "none",
            MsFlags::MS_BIND,
            None,
        ),
        Ok(_) => Err(failed(nix::Error::ENOTDIR)),
        Err(e) => Err(failed(nix::Error::from_raw(
            e.raw_os_error().unwrap_or(libc::EIO),
        ))),
    }
}

/// Whether `dir` is the root of a mount (another device than its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(dir), dir.parent().map(fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

fn overlay(
    base: &Path,
    root: &Path,
    layers: &[LayerDisk],
    scratch: Option<&LayerDisk>,
    steps: &mut Steps,
) -> Result<(), RootfsError> {
    let mut disks = Disks::default();
    let mut lower = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let dir = base.join("layers").join(i.to_string());
        mkdir(&dir)?;
        mount_disk(&disks.find(&layer.disk)?, layer.fs_type, &dir, true)?;
        lower.push(dir);
    }
    steps.mark("layer disks mounted");
    // The spec lists the base layer first; overlayfs wants the top layer first.
    lower.reverse();
    match scratch {
        Some(s) => {
            let dir = base.join("scratch");
            mkdir(&dir)?;
            mount_disk(&disks.find(&s.disk)?, s.fs_type, &dir, false)?;
            let (upper, work) = (dir.join("upper"), dir.join("work"));
            mkdir(&upper)?;
            mkdir(&work)?;
            steps.mark("scratch disk mounted");
            crate::overlay_mount::mount(root, &lower, Some((&upper, &work)))?;
            steps.mark("overlay mounted");
            Ok(())
        }
        // overlayfs wants two lower layers when there is no upper: bind a single one.
        None if lower.len() == 1 => {
            do_mount(
                &lower[0].display().to_string(),
                root,
                "none",
                MsFlags::MS_BIND,
                None,
            )?;
            do_mount(
                "none",
                root,
                "none",
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
            steps.mark("layer bound read-only");
            Ok(())
        }
        None => {
            crate::overlay_mount::mount(root, &lower, None)?;
            steps.mark("overlay mounted");
            Ok(())
        }
    }
}

fn mount_disk(dev: &Path, fs: FsType, target: &Path, readonly: bool) -> Result<(), RootfsError> {
    let flags = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let what = dev.display().to_string();
    match do_mount(&what, target, fs.as_str(), flags, None) {
        // A read-only ext4 whose journal needs replaying refuses to mount unless told to
        // skip the journal.
        Err(_) if readonly && fs == FsType::Ext4 => {
            do_mount(&what, target, "ext4", flags, Some("noload"))
        }
        r => r,
    }
}

/// The device node for `disk`: by virtio-blk serial, by partition of such a disk, or the path
/// as given.
pub fn find_disk(disk: &DiskRef) -> Result<PathBuf, RootfsError> {
    Disks::default().find(disk)
}

const SYS_BLOCK: &str = "/sys/block";

/// Finds disks, reading a layer disk's partitions from sysfs once however many layers it
/// holds (127 partitions: one scan, not one per layer).
#[derive(Default)]
struct Disks {
    /// serial -> (disk name, partition number -> partition name)
    partitioned: HashMap<String, (OsString, HashMap<u32, OsString>)>,
}

impl Disks {
    fn find(&mut self, disk: &DiskRef) -> Result<PathBuf, RootfsError> {
        let dev = |name: &OsString| Path::new("/dev").join(name);
        match disk {
            DiskRef::Device(p) => {
                let p = PathBuf::from(p);
                if p.exists() {
                    Ok(p)
                } else {
                    Err(RootfsError::NoSuchDevice(p.display().to_string()))
                }
            }
            DiskRef::Serial(want) => Ok(dev(&disk_by_serial(Path::new(SYS_BLOCK), want)?)),
            DiskRef::Partition { serial, number } => {
                if !self.partitioned.contains_key(serial) {
                    let name = disk_by_serial(Path::new(SYS_BLOCK), serial)?;
                    let parts = partitions_of(&Path::new(SYS_BLOCK).join(&name));
                    self.partitioned.insert(serial.clone(), (name, parts));
                }
                let (name, parts) = &self.partitioned[serial];
                parts
                    .get(number)
                    .map(dev)
                    .ok_or_else(|| RootfsError::NoSuchPartition {
                        serial: serial.clone(),
                        disk: name.to_string_lossy().into_owned(),
                        number: *number,
                    })
            }
        }
    }
}

/// The name of the disk under `sys_block` whose `serial` is `want`.
fn disk_by_serial(sys_block: &Path, want: &str) -> Result<OsString, RootfsError> {
    let entries = fs::read_dir(sys_block).map_err(|_| RootfsError::NoSuchSerial(want.into()))?;
    for e in entries.flatten() {
        let serial = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if serial.trim_end_matches(['\n', '\0', ' ']) == want {
            return Ok(e.file_name());
        }
    }
    Err(RootfsError::NoSuchSerial(want.into()))
}

/// The partitions of the disk at `disk_dir` (`/sys/block/vda`) by number: its child
/// directories with a `partition` file (`vda3`, or `nvme0n1p3` elsewhere).
fn partitions_of(disk_dir: &Path) -> HashMap<u32, OsString> {
    let Ok(entries) = fs::read_dir(disk_dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n = fs::read_to_string(e.path().join("partition")).ok()?;
            Some((n.trim().parse::<u32>().ok()?, e.file_name()))
        })
        .collect()
}

fn mkdir(p: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(p).map_err(|source| RootfsError::Mkdir {
        path: p.to_path_buf(),
        source,
    })
}

fn do_mount(
    what: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount(Some(what), target, Some(fstype), flags, data).map_err(|source| RootfsError::Mount {
        what: what.into(),
        fstype: fstype.into(),
        target: target.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/block: vda (serial husk-layers) with partitions 1..=12, vdb (scratch).
    fn sys_block() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let vda = d.path().join("vda");
        fs::create_dir_all(&vda).unwrap();
        fs::write(vda.join("serial"), "husk-layers").unwrap();
        for n in 1..=12 {
            let p = vda.join(format!("vda{n}"));
            fs::create_dir(&p).unwrap();
            fs::write(p.join("partition"), format!("{n}\n")).unwrap();
        }
        fs::create_dir(vda.join("queue")).unwrap();
        let vdb = d.path().join("vdb");
        fs::create_dir_all(&vdb).unwrap();
        fs::write(vdb.join("serial"), "husk-scratch\0\0").unwrap();
        d
    }

    #[test]
    fn partitions_are_found_by_number_not_by_name_order() {
        let d = sys_block();
        let disk = disk_by_serial(d.path(), "husk-layers").unwrap();
        assert_eq!(disk, "vda");
        let parts = partitions_of(&d.path().join(&disk));
        assert_eq!(parts.len(), 12, "{parts:?}");
        assert_eq!(parts[&1], "vda1");
        assert_eq!(parts[&11], "vda11");
        assert_eq!(parts.get(&13), None);
        assert_eq!(disk_by_serial(d.path(), "husk-scratch").unwrap(), "vdb");
        assert!(matches!(
            disk_by_serial(d.path(), "nope"),
            Err(RootfsError::NoSuchSerial(_))
        ));
    }
}
