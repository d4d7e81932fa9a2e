//! A container's writable layer: a sparse ext4 image, formatted empty, that the guest
//! mounts as the overlayfs upper directory. Sparse so a 10 GiB scratch disk costs only the
//! blocks written; lazy inode-table and journal init keep `mkfs.ext4` fast.

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

/// Creates a sparse file of `size` bytes at `path` and formats it ext4. Returns how long it
/// took. On failure nothing is left at `path`.
pub fn create(path: &Path, size: u64) -> Result<Duration, ScratchError> {
    let start = Instant::now();
    if size < (1 << 20) {
        return Err(ScratchError::TooSmall { size });
    }
    let io_err = |source| ScratchError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Owner-only: it will hold whatever the container writes.
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ScratchError::Exists {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let result = (|| {
        file.set_len(size).map_err(io_err)?;
        drop(file);
        let out = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
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
        assert!(matches!(
            create(&p, 1 << 30),
            Err(ScratchError::Exists { .. })
        ));
        assert!(matches!(
            create(&dir.path().join("s"), 4096),
            Err(ScratchError::TooSmall { .. })
        ));
    }
}
