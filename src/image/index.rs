//! `index.json`: which manifest each reference names, and the lock files that let several
//! husk processes share one store.
//!
//! Two locks: `lock` is held shared by every operation that adds blobs (import, pull) and
//! exclusively by garbage collection, so GC never deletes a blob that an import in flight has
//! written but not yet indexed; `index.lock` is held exclusively around each
//! read-modify-write of `index.json`, which is replaced atomically (temp file + rename) so a
//! reader never sees half a file.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot read image index {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("image index {path} is corrupt ({source}); move it away to start an empty store")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write image index {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A held `flock` on the store's lock file; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _held: crate::flock::FileLock,
}

impl Lock {
    pub fn shared(path: &Path) -> Result<Lock, IndexError> {
        Lock::wrap(path, crate::flock::FileLock::shared(path))
    }

    pub fn exclusive(path: &Path) -> Result<Lock, IndexError> {
        Lock::wrap(path, crate::flock::FileLock::exclusive(path))
    }

    fn wrap(path: &Path, held: io::Result<crate::flock::FileLock>) -> Result<Lock, IndexError> {
        held.map(|h| Lock { _held: h })
            .map_err(|source| IndexError::Lock {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// The references of a store: `docker.io/library/busybox:latest` → manifest digest.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// Normalized reference → manifest digest.
    pub images: BTreeMap<String, Digest>,
}

impl Index {
    /// Reads `path`; a missing file is an empty index.
    pub fn read(path: &Path) -> Result<Index, IndexError> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Index {
                    schema_version: 1,
                    ..Default::default()
                })
            }
            Err(source) => {
                return Err(IndexError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_slice(&data).map_err(|source| IndexError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Replaces `path` atomically: a temp file beside it, fsynced, then renamed over it.
    pub fn write(&self, path: &Path) -> Result<(), IndexError> {
        let err = |source| IndexError::Write {
            path: path.to_path_buf(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(io::Error::other(e)))?;
        crate::util::fs::write_atomic(path, &json).map_err(err)
    }

    /// Runs `f` on the index under `index.lock` and writes the result back.
    pub fn update<T>(
        path: &Path,
        lock: &Path,
        f: impl FnOnce(&mut Index) -> T,
    ) -> Result<T, IndexError> {
        let _guard = Lock::exclusive(lock)?;
        let mut index = Index::read(path)?;
        let out = f(&mut index);
        index.schema_version = 1;
        index.write(path)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        let lock = dir.path().join("index.lock");
        assert!(Index::read(&path).unwrap().images.is_empty());
        Index::update(&path, &lock, |i| {
            i.images
                .insert("docker.io/library/busybox:latest".into(), Digest::of(b"m"));
        })
        .unwrap();
        let back = Index::read(&path).unwrap();
        assert_eq!(
            back.images["docker.io/library/busybox:latest"],
            Digest::of(b"m")
        );
        // No temp files left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn corrupt_index_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        std::fs::write(&path, b"{not json").unwrap();
        let e = Index::read(&path).unwrap_err().to_string();
        assert!(e.contains("index.json") && e.contains("corrupt"), "{e}");
    }
}
