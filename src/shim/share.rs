//! The host side of a pod's one virtio-fs share.
//!
//! A VM cannot be given a virtio-fs device once it runs, so a pod gets one share when it
//! boots, and every container it gets later has its root (containerd's snapshot mount) and
//! its volumes bind-mounted into that share as entries named after the container
//! (`<id>.rootfs`, `<id>.<tag>`, `<id>.<tag>.<file>`). The share's directory is a mount of
//! its own with shared propagation, so binds made after virtiofsd started (in a mount
//! namespace that is a slave of this one) reach it.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::backend::SharedDirSpec;

/// The pod share's virtio-fs tag.
pub const POD_TAG: &str = "husk-pod";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{0:?} is not a name for an entry of the pod's share")]
    BadName(String),
}

/// A pod's shared directory, a mount point of its own.
#[derive(Debug)]
pub struct PodShare {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ShareError + '_ {
    move |source| ShareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn do_mount(what: &Path, target: &Path, flags: MsFlags) -> Result<(), ShareError> {
    mount(Some(what), target, None::<&str>, flags, None::<&str>).map_err(|source| {
        ShareError::Mount {
            what: what.display().to_string(),
            target: target.to_path_buf(),
            source,
        }
    })
}

impl PodShare {
    /// Makes `dir` (owner-only) a mount of its own with shared propagation.
    pub fn create(dir: &Path) -> Result<PodShare, ShareError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        do_mount(dir, dir, MsFlags::MS_BIND)?;
        let share = PodShare {
            dir: dir.to_path_buf(),
        };
        // Private first: a bind of a directory under a shared mount would be in that mount's
        // peer group, and what is bound here would show up there too.
        do_mount(Path::new("none"), dir, MsFlags::MS_PRIVATE)?;
        do_mount(Path::new("none"), dir, MsFlags::MS_SHARED)?;
        Ok(share)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VM's shared directory for this share (nothing cached: volumes change under it).
    pub fn spec(&self) -> SharedDirSpec {
        SharedDirSpec::volume(&self.dir, POD_TAG, false)
    }

    /// Binds `src` (a directory or a file) as entry `name`, read-only if `read_only`.
    pub fn bind(&self, name: &str, src: &Path, read_only: bool) -> Result<(), ShareError> {
        let target = self.entry(name)?;
        let meta = fs::metadata(src).map_err(io_err(src))?;
        if meta.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&target)
                .map_err(io_err(&target))?;
        } else {
            fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&target)
                .map_err(io_err(&target))?;
        }
        let bound = do_mount(src, &target, MsFlags::MS_BIND | MsFlags::MS_REC).and_then(|()| {
            if read_only {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                do_mount(Path::new("none"), &target, flags)
            } else {
                Ok(())
            }
        });
        if bound.is_err() {
            self.unbind(name);
        }
        bound
    }

    /// Takes entry `name` away (the guest's mounts of it go stale), best effort.
    pub fn unbind(&self, name: &str) {
        let Ok(target) = self.entry(name) else { return };
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&target).or_else(|_| fs::remove_file(&target));
    }

    /// Unbinds every entry, then the share itself, and removes its directory.
    pub fn remove(self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Some(name) = e.file_name().to_str() {
                    self.unbind(name);
                }
            }
        }
        let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.dir);
    }

    fn entry(&self, name: &str) -> Result<PathBuf, ShareError> {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.contains('\0')
            && name.len() <= 255;
        if ok {
            Ok(self.dir.join(name))
        } else {
            Err(ShareError::BadName(name.to_string()))
        }
    }
}

/// Entry names of container `id`'s root and of one of its volumes.
pub fn rootfs_entry(id: &str) -> String {
    format!("{id}.rootfs")
}

pub fn volume_entry(id: &str, tag: &str) -> String {
    format!("{id}.{tag}")
}

pub fn file_entry(id: &str, tag: &str, file: &str) -> String {
    format!("{id}.{tag}.{file}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_stay_inside_the_share() {
        let s = PodShare {
            dir: PathBuf::from("/run/x/share"),
        };
        assert_eq!(
            s.entry("c.rootfs").unwrap(),
            Path::new("/run/x/share/c.rootfs")
        );
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(
                matches!(s.entry(bad), Err(ShareError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(s.entry(&"x".repeat(256)).is_err());
    }

    #[test]
    fn binds_reach_the_share_and_go_with_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("NOT RUN: binds_reach_the_share_and_go_with_it needs root (mounts)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), "hello").unwrap();
        fs::write(tmp.path().join("hosts"), "127.0.0.1 localhost").unwrap();
        let share = PodShare::create(&tmp.path().join("share")).unwrap();
        share.bind("c.vol", &src, true).unwrap();
        share
            .bind("c.etc.hosts", &tmp.path().join("hosts"), false)
            .unwrap();
        let dir = share.dir().to_path_buf();
        assert_eq!(fs::read_to_string(dir.join("c.vol/f")).unwrap(), "hello");
        assert!(
            fs::write(dir.join("c.vol/g"), "x").is_err(),
            "read-only bind"
        );
        assert!(fs::read_to_string(dir.join("c.etc.hosts"))
            .unwrap()
            .contains("localhost"));
        assert!(
            share.bind("c.vol", &src, false).is_err(),
            "an entry is bound once"
        );
        share.unbind("c.vol");
        assert!(!dir.join("c.vol").exists());
        share.remove();
        assert!(!dir.exists());
        assert_eq!(fs::read_to_string(src.join("f")).unwrap(), "hello");
    }
}
