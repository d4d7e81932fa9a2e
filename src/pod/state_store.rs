//! One atomic JSON store for the front-ends' per-container records: a directory per id under
//! one root, `state.json` in it written through a temp file and a rename (a crash leaves the
//! old record, never a torn one), and an flock on `<root>/.lock` that serialises every
//! read-modify-write. Each front-end keeps its own record type and error messages.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::flock::FileLock;
use crate::util::fs::{create_private_dir, write_atomic};

/// The file name of a record inside its directory.
pub const STATE_FILE: &str = "state.json";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid record: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// No record under this id (never made, or removed meanwhile).
    #[error("no record for {0}")]
    NotFound(String),
}

/// Records of type `T` under one root directory.
#[derive(Debug)]
pub struct StateStore<T> {
    root: PathBuf,
    record: PhantomData<fn() -> T>,
}

impl<T> Clone for StateStore<T> {
    fn clone(&self) -> Self {
        StateStore {
            root: self.root.clone(),
            record: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> StateStore<T> {
    /// The store under `root`, creating the directory if needed; only its owner may enter
    /// it (0700).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        create_private_dir(root).map_err(|source| StoreError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(StateStore {
            root: root.to_path_buf(),
            record: PhantomData,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of record `id` (the front-end keeps its other files there too).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The store-wide exclusive lock, released on drop.
    pub fn lock(&self) -> Result<FileLock, StoreError> {
        let path = self.root.join(".lock");
        FileLock::exclusive(&path).map_err(|source| StoreError::Io { path, source })
    }

    pub fn exists(&self, id: &str) -> bool {
        self.dir(id).join(STATE_FILE).is_file()
    }

    pub fn load(&self, id: &str) -> Result<T, StoreError> {
        let path = self.dir(id).join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.to_string()))
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Writes record `id` (its directory must exist) through a temp file and a rename.
    pub fn save(&self, id: &str, record: &T) -> Result<(), StoreError> {
        let path = self.dir(id).join(STATE_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(record).map_err(|e| io(std::io::Error::other(e)))?;
        write_atomic(&path, &json).map_err(io)
    }

    /// Loads, changes and saves record `id` under the lock.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut T)) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let mut record = self.load(id)?;
        change(&mut record);
        self.save(id, &record)?;
        Ok(record)
    }

    /// Every readable record. Directories without one (a create in progress, one removed
    /// meanwhile) are skipped; an unreadable one is skipped with a warning.
    pub fn list(&self) -> Result<Vec<T>, StoreError> {
        let entries = std::fs::read_dir(&self.root).map_err(|source| StoreError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut all = Vec::new();
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if id.starts_with('.') || !self.exists(&id) {
                continue;
            }
            match self.load(&id) {
                Ok(r) => all.push(r),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => warn_once(&self.dir(&id), &e),
            }
        }
        Ok(all)
    }

    /// The ids starting with `prefix` whose directory holds a record that cannot be read
    /// (corrupt, or of an unknown shape): what [`list`](Self::list) skips.
    pub fn unreadable(&self, prefix: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| !prefix.is_empty() && id.starts_with(prefix) && !id.starts_with('.'))
            .filter(|id| {
                self.exists(id) && !matches!(self.load(id), Ok(_) | Err(StoreError::NotFound(_)))
            })
            .collect()
    }

    /// Removes record `id`'s directory and everything in it; a missing one is not an error.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// Warns about an unreadable record once per process (a command lists the store several
/// times).
fn warn_once(dir: &Path, e: &StoreError) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if !warned.iter().any(|d| d == dir) {
        warned.push(dir.to_path_buf());
        tracing::warn!("skipping {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        n: u32,
    }

    #[test]
    fn saves_atomically_updates_lists_and_removes() {
        let root = tempfile::tempdir().unwrap();
        let store = StateStore::<Rec>::open(&root.path().join("s")).unwrap();
        for id in ["a", "b"] {
            std::fs::create_dir(store.dir(id)).unwrap();
            store.save(id, &Rec { n: 1 }).unwrap();
        }
        // A create in progress (no record yet) and the lock file are not records.
        std::fs::create_dir(store.dir("c")).unwrap();
        drop(store.lock().unwrap());
        assert_eq!(store.update("a", |r| r.n = 7).unwrap(), Rec { n: 7 });
        let mut all: Vec<u32> = store.list().unwrap().iter().map(|r| r.n).collect();
        all.sort();
        assert_eq!(all, [1, 7]);
        // Only state.json in a record's directory: no temp file left beside it.
        let files: Vec<_> = std::fs::read_dir(store.dir("a"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(files.len(), 1);
        assert!(matches!(store.load("c"), Err(StoreError::NotFound(id)) if id == "c"));
        assert!(matches!(
            store.update("c", |_| ()),
            Err(StoreError::NotFound(_))
        ));
        std::fs::write(store.dir("c").join(STATE_FILE), b"{").unwrap();
        assert!(matches!(store.load("c"), Err(StoreError::Corrupt { .. })));
        assert_eq!(
            store.list().unwrap().len(),
            2,
            "a corrupt record is skipped"
        );
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert!(!store.exists("a"));
    }
}
