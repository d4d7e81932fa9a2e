//! containerd's rootfs mounts for a task (its snapshot: an overlay, or a bind of a
//! directory), mounted by the shim at `<bundle>/rootfs` as runc's shim does.
//!
//! Mounted here in the shim's own thread: the shim crate's helper forks and waits through
//! its reaper, which husk's shim does not run (it waits for its own children).

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The most option bytes the kernel takes in one mount call (a page).
const MAX_DATA: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting the rootfs ({fs_type} {source_path}) on {target}: {source}")]
    Mount {
        fs_type: String,
        source_path: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "rootfs mount {fs_type} {source_path}: options of {len} bytes (more than a page; \
             too many image layers)"
    )]
    TooLong {
        fs_type: String,
        source_path: String,
        len: usize,
    },
}

/// Mount flags and the options left for the filesystem.
fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Mounts `mounts` in order at `<bundle>/rootfs`; `false` when there are none (the bundle
/// brings its own rootfs). A failure leaves nothing mounted.
pub fn mount_all(bundle: &Path, mounts: &[Mount]) -> Result<bool, RootfsError> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|source| RootfsError::Io {
        path: target.clone(),
        source,
    })?;
    for m in mounts {
        if let Err(e) = mount_one(m, &target) {
            unmount(bundle);
            return Err(e);
        }
    }
    Ok(true)
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), RootfsError> {
    let (flags, data) = split_options(&m.options);
    if data.len() >= MAX_DATA {
        return Err(RootfsError::TooLong {
            fs_type: m.type_.clone(),
            source_path: m.source.clone(),
            len: data.len(),
        });
    }
    let fs_type = (!flags.contains(MsFlags::MS_BIND)).then_some(m.type_.as_str());
    let err = |source| RootfsError::Mount {
        fs_type: m.type_.clone(),
        source_path: m.source.clone(),
        target: target.to_path_buf(),
        source,
    };
    let data_arg = (!data.is_empty()).then_some(data.as_str());
    mount(Some(m.source.as_str()), target, fs_type, flags, data_arg).map_err(err)?;
    // A bind takes its read-only and other flags only when remounted.
    let extra = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if flags.contains(MsFlags::MS_BIND) && flags.intersects(extra) {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | (flags & extra);
        mount(None::<&str>, target, None::<&str>, remount, None::<&str>).map_err(err)?;
    }
    Ok(())
}

/// Unmounts whatever is mounted at `<bundle>/rootfs`, best effort.
pub fn unmount(bundle: &Path) {
    let target = bundle.join("rootfs");
    // Stacked mounts come off one by one; stop at the first that is not a mount.
    for _ in 0..16 {
        if umount2(&target, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_split_from_filesystem_options() {
        let opts: Vec<String> = [
            "index=off",
            "ro",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/a:/b",
            "nodev",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = split_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
        let (flags, data) = split_options(&["rbind".to_string(), "rw".to_string()]);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(data.is_empty());
    }

    #[test]
    fn too_many_layers_is_one_clear_error_and_nothing_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let lower = format!("lowerdir={}", vec!["/l"; 2100].join(":"));
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![lower],
            ..Default::default()
        };
        let e = mount_all(dir.path(), &[m]).unwrap_err();
        assert!(e.to_string().contains("more than a page"), "{e}");
    }
}
