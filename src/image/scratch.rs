//! A container's writable layer: a sparse ext4 image, formatted empty, that the guest
//! mounts as the overlayfs upper directory. Sparse so a 10 GiB scratch disk costs only the
//! blocks written; lazy inode-table and journal init keep `mkfs.ext4` fast.
//!
//! `mkfs.ext4` runs once per size, for a template kept beside the containers
//! ([`from_template`]); each container's disk is a copy of the template's few data extents
//! (~4 MiB of an 8 GiB image, a reflink where the filesystem has them), so no mkfs is on the
//! start-up path.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("scratch disk {path} already exists")]
    Exists { path: PathBuf },
    #[error("cannot create scratch disk {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot run mkfs.ext4 for {path} ({source}); install e2fsprogs")]
    MkfsMissing { path: PathBuf, source: io::Error },
    #[error("mkfs.ext4 {path} failed ({status}): {stderr}")]
    Mkfs {
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("scratch disk size {size} is too small (at least 1 MiB)")]
    TooSmall { size: u64 },
}

/// The directories the guest agent's overlay needs on the scratch disk (`upper/`, `work/`;
/// guest-agent/src/rootfs.rs), made by `mkfs.ext4 -d` so the guest does not allocate them on
/// its first start: two mkdirs on a fresh ext4 cost 12-35 ms of emulated I/O under TCG,
/// against a few for finding them. The agent still makes them where they are missing.
const OVERLAY_DIRS: [&str; 2] = ["upper", "work"];

/// Creates a sparse file of `size` bytes at `path` and formats it ext4, holding the empty
/// overlay directories ([`OVERLAY_DIRS`], root-owned, 0755). Returns how long it took. On
/// failure nothing is left at `path`.
pub fn create(path: &Path, size: u64) -> Result<Duration, ScratchError> {
    let start = Instant::now();
    if size < (1 << 20) {
        return Err(ScratchError::TooSmall { size });
    }
    let io_err = |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = create_private(path)?;
    let result = (|| {
        file.set_len(size).map_err(io_err)?;
        drop(file);
        let skeleton = overlay_skeleton().map_err(io_err)?;
        let out = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                "-d",
            ])
            .arg(skeleton.path())
            .arg(path)
            .output()
            .map_err(|source| ScratchError::MkfsMissing {
                path: path.to_path_buf(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ScratchError::Mkfs {
                path: path.to_path_buf(),
                status: out.status,
                stderr,
            });
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result.map(|()| start.elapsed())
}

/// A temporary directory holding [`OVERLAY_DIRS`] for `mkfs.ext4 -d` (which copies the
/// modes, so the file system's root is 0755 as the agent would make it).
fn overlay_skeleton() -> io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    for d in OVERLAY_DIRS {
        let p = dir.path().join(d);
        fs::create_dir(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// Creates the new file `path`, owner-only: it will hold whatever the container writes.
fn create_private(path: &Path) -> Result<fs::File, ScratchError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                ScratchError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                ScratchError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })
}

/// Creates `path` as [`create`] does, by copying the template for `size` kept in
/// `template_dir` (made there first, with `mkfs.ext4`, if missing). On failure nothing is
/// left at `path`.
pub fn from_template(path: &Path, size: u64, template_dir: &Path) -> Result<(), ScratchError> {
    let template = template_dir.join(template_name(size));
    if !template.exists() {
        make_template(&template, size)?;
    }
    let io_err = |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let src = fs::File::open(&template).map_err(|source| ScratchError::Io {
        path: template.clone(),
        source,
    })?;
    let dst = create_private(path)?;
    let copied = crate::util::fs::sparse_copy(&src, &dst).map_err(io_err);
    if copied.is_err() {
        let _ = fs::remove_file(path);
    }
    copied
}

/// The template's file name for `size`. `v2`: templates of earlier husk versions lack
/// [`OVERLAY_DIRS`] (still correct, only slower), so they are not reused.
fn template_name(size: u64) -> String {
    format!("scratch-v2-{size}.ext4")
}

/// Formats the template for `size` under a temporary name and renames it into place, so a
/// template that exists is whole (two racing makers each rename a whole one).
fn make_template(template: &Path, size: u64) -> Result<(), ScratchError> {
    let dir = template.parent().unwrap_or(Path::new("."));
    // Owner-only, as the containers' own directories are.
    crate::util::fs::create_private_dir(dir).map_err(|source| ScratchError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = dir.join(format!(".scratch-{size}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    create(&tmp, size)?;
    fs::rename(&tmp, template).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ScratchError::Io {
            path: template.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn creates_a_sparse_ext4_image() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("NOT RUN: creates_a_sparse_ext4_image: mkfs.ext4 missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("scratch.ext4");
        let took = create(&p, 1 << 30).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 1 << 30);
        assert!(
            m.blocks() * 512 < 64 << 20,
            "not sparse: {} bytes allocated",
            m.blocks() * 512
        );
        // ext4 superblock magic 0xEF53 at offset 1024 + 56.
        let data = fs::read(&p)
            .map(|d| d[1024 + 56..1024 + 58].to_vec())
            .unwrap();
        assert_eq!(data, [0x53, 0xef]);
        eprintln!("scratch: 1 GiB ext4 in {took:?}");
        // The overlay's directories are there, root's and 0755, as is the root itself
        // (`debugfs -R "ls -p /"`: /INODE/MODE/UID/GID/NAME/SIZE/).
        let ls = Command::new("debugfs")
            .args(["-R", "ls -p /"])
            .arg(&p)
            .output()
            .expect("debugfs (e2fsprogs)");
        let listing = String::from_utf8_lossy(&ls.stdout);
        for want in ["/040755/0/0/./", "/040755/0/0/upper/", "/040755/0/0/work/"] {
            assert!(listing.contains(want), "{want} not in {listing}");
        }
        assert!(matches!(
            create(&p, 1 << 30),
            Err(ScratchError::Exists { .. })
        ));
        assert!(matches!(
            create(&dir.path().join("s"), 4096),
            Err(ScratchError::TooSmall { .. })
        ));
    }

    #[test]
    fn copies_of_the_template_are_whole_sparse_and_private() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!(
                "NOT RUN: copies_of_the_template_are_whole_sparse_and_private: mkfs.ext4 missing"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let (a, b) = (dir.path().join("a.ext4"), dir.path().join("b.ext4"));
        from_template(&a, 1 << 30, &templates).unwrap();
        from_template(&b, 1 << 30, &templates).unwrap();
        let template = fs::read(templates.join(template_name(1 << 30))).unwrap();
        for p in [&a, &b] {
            let m = fs::metadata(p).unwrap();
            assert_eq!(m.len(), 1 << 30);
            assert_eq!(m.mode() & 0o777, 0o600);
            assert!(m.blocks() * 512 < 64 << 20, "not sparse");
            assert!(
                fs::read(p).unwrap() == template,
                "{} differs from the template",
                p.display()
            );
        }
        assert!(matches!(
            from_template(&a, 1 << 30, &templates),
            Err(ScratchError::Exists { .. })
        ));
        // Only the template is left in its directory (no temporary file), and both are the
        // owner's alone.
        assert_eq!(fs::read_dir(&templates).unwrap().count(), 1);
        assert_eq!(fs::metadata(&templates).unwrap().mode() & 0o777, 0o700);
        let t = templates.join(template_name(1 << 30));
        assert_eq!(fs::metadata(&t).unwrap().mode() & 0o777, 0o600);
    }
}
