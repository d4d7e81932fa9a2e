//! `index.json`: which manifest each reference names, and the lock files that let several
//! husk processes share one store.
//!
//! Two locks: `lock` is held shared by every operation that adds blobs (import, pull) and
//! exclusively by garbage collection, so GC never deletes a blob that an import in flight has
//! written but not yet indexed; `index.lock` is held exclusively around each
//! read-modify-write of `index.json`, which is replaced atomically (temp file + rename) so a
//! reader never sees half a file.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Manifests that lost their last name to another image (a retag, or a newer load or
    /// pull of the same name): docker's `<none>:<none>` images, kept until pruned or removed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub dangling: BTreeSet<Digest>,
}

impl Index {
    /// Points `reference` at `manifest`. The image that had the name before is kept as
    /// dangling if that was its last name, as docker keeps it.
    pub fn name(&mut self, reference: String, manifest: &Digest) {
        if let Some(old) = self.images.insert(reference, manifest.clone()) {
            if old != *manifest && !self.images.values().any(|m| *m == old) {
                self.dangling.insert(old);
            }
        }
        self.dangling.remove(manifest);
    }

    /// Drops every name of `manifest`, and the manifest itself if it was dangling.
    pub fn forget(&mut self, manifest: &Digest) {
        self.images.retain(|_, m| m != manifest);
        self.dangling.remove(manifest);
    }

    /// Every image's manifest, named or dangling, each once.
    pub fn manifests(&self) -> BTreeSet<&Digest> {
        self.images.values().chain(&self.dangling).collect()
    }

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
    fn a_moved_name_leaves_its_old_image_dangling() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut i = Index::default();
        i.name("x:1".into(), &a);
        i.name("x:2".into(), &a);
        i.name("x:1".into(), &b);
        assert!(i.dangling.is_empty(), "a still has x:2");
        i.name("x:2".into(), &b);
        assert_eq!(i.dangling, BTreeSet::from([a.clone()]));
        assert_eq!(i.manifests(), BTreeSet::from([&a, &b]));
        i.name("y:1".into(), &a);
        assert!(i.dangling.is_empty(), "named again");
        i.forget(&b);
        assert_eq!(i.manifests(), BTreeSet::from([&a]));
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
