//! The containers under `<root>/containers/`: one directory per container id, a lock file
//! that serialises every state change, id/name/prefix lookup, unique names and vsock CIDs.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::state::State;
use super::Error;
use crate::pod::StateStore;

/// The container directories under one `--root`: a [`StateStore`] of [`State`]s in
/// `<root>/containers/`.
#[derive(Debug, Clone)]
pub struct ContainerStore {
    root: PathBuf,
    records: StateStore<State>,
}

/// Held while state files are read-modified-written; released on drop.
pub type StoreLock = crate::flock::FileLock;

impl ContainerStore {
    /// The store under `root` (e.g. `/var/lib/husk`), creating its directory if needed.
    pub fn open(root: &Path) -> Result<ContainerStore, Error> {
        Ok(ContainerStore {
            root: root.to_path_buf(),
            records: StateStore::open(&root.join("containers"))?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.records.root().to_path_buf()
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.records.dir(id)
    }

    /// An exclusive lock over every container's state (flock on `containers/.lock`).
    pub fn lock(&self) -> Result<StoreLock, Error> {
        Ok(self.records.lock()?)
    }

    /// One container's state by full id.
    pub fn load(&self, id: &str) -> Result<State, Error> {
        Ok(self.records.load(id)?)
    }

    /// Every container with a readable state file, newest first. Directories without one (a
    /// create in progress, a crash before the first save) are skipped.
    pub fn list(&self) -> Result<Vec<State>, Error> {
        let mut all = self.records.list()?;
        all.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Finds a container by full id, name, or unique id prefix.
    pub fn resolve(&self, query: &str) -> Result<State, Error> {
        let all = self.list()?;
        if let Some(s) = all.iter().find(|s| s.id == query || s.name == query) {
            return Ok(s.clone());
        }
        let matches: Vec<&State> = if query.is_empty() {
            Vec::new()
        } else {
            all.iter().filter(|s| s.id.starts_with(query)).collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NoSuchContainer(query.to_string())),
            many => Err(Error::Ambiguous {
                query: query.to_string(),
                count: many.len(),
            }),
        }
    }

    /// Records a new container: picks a fresh id and vsock CID, checks the name is free,
    /// creates its directory and saves what `build(id, dir, cid)` returns, all under the lock.
    pub fn create(
        &self,
        name: Option<&str>,
        build: impl FnOnce(&str, &Path, u32, &str) -> Result<State, Error>,
    ) -> Result<State, Error> {
        let mut waited = false;
        let (_lock, all, id, name) = loop {
            let lock = self.lock()?;
            let all = self.list()?;
            let id = loop {
                let id = new_id()?;
                if !all.iter().any(|s| s.id == id) {
                    break id;
                }
            };
            let name = match name {
                Some(n) => {
                    check_name(n)?;
                    n.to_string()
                }
                None => format!("husk_{}", &id[..8]),
            };
            let Some(other) = all.iter().find(|s| s.name == name) else {
                break (lock, all, id, name);
            };
            // A `--rm` container whose process has exited is on its way out: its monitor
            // powers the VM off and removes it. Wait for that once, as `rm` would.
            if !waited && finishing(other) {
                let monitor = other.monitor;
                drop(lock);
                if let Some(m) = monitor {
                    m.wait_gone(FINISH_WAIT);
                }
                waited = true;
                continue;
            }
            return Err(Error::NameInUse {
                name,
                id: other.id.clone(),
            });
        };
        let cid = crate::pod::free_cid(all.iter().map(|s| s.vsock_cid));
        let dir = self.dir(&id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        let made = build(&id, &dir, cid, &name)
            .and_then(|s| self.records.save(&id, &s).map(|()| s).map_err(Error::from));
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    /// Loads, changes and saves one container's state under the lock. Fails with
    /// [`Error::NoSuchContainer`] if it was removed meanwhile.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut State)) -> Result<State, Error> {
        Ok(self.records.update(id, change)?)
    }

    /// Removes a container's directory (its scratch disk, sockets, logs, state).
    /// The id of the one container matching `query` (id or id prefix) whose state file
    /// cannot be read; `None` when there is not exactly one.
    pub fn unreadable(&self, query: &str) -> Option<String> {
        match self.records.unreadable(query).as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    pub fn remove_dir(&self, id: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        Ok(self.records.remove(id)?)
    }
}

/// 64 hex digits from the kernel's random source ([`crate::pod::new_id`]).
pub(crate) fn new_id() -> Result<String, Error> {
    crate::pod::new_id().map_err(|source| Error::Io {
        path: "/dev/urandom".into(),
        source,
    })
}

/// How long a new container waits for a `--rm` container of its name to be removed, and
/// `start` for the teardown of a container whose end was recorded.
pub(super) const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A `--rm` container whose process has exited, still held by its monitor.
fn finishing(s: &State) -> bool {
    s.config.auto_remove && s.status != super::state::Status::Running && s.monitor_alive()
}

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn check_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::sample;
    use super::*;

    fn add(store: &ContainerStore, name: Option<&str>) -> Result<State, Error> {
        store.create(name, |id, _dir, cid, name| {
            let mut s = sample(id);
            s.name = name.into();
            s.vsock_cid = cid;
            Ok(s)
        })
    }

    #[test]
    fn ids_names_prefixes_and_cids() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::open(root.path()).unwrap();
        let a = add(&store, Some("web")).unwrap();
        assert_eq!(a.id.len(), 64);
        assert!(a.id.bytes().all(|b| b.is_ascii_hexdigit()));
        let b = add(&store, None).unwrap();
        assert_ne!(a.vsock_cid, b.vsock_cid);
        assert!(b.name.starts_with("husk_"));
        match add(&store, Some("web")) {
            Err(Error::NameInUse { name, .. }) => assert_eq!(name, "web"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            add(&store, Some("-x")),
            Err(Error::InvalidName(_))
        ));
        assert_eq!(store.resolve("web").unwrap().id, a.id);
        assert_eq!(store.resolve(&a.id[..12]).unwrap().id, a.id);
        assert_eq!(store.resolve(&b.id).unwrap().id, b.id);
        assert!(matches!(
            store.resolve("zz"),
            Err(Error::NoSuchContainer(_))
        ));
        store.remove_dir(&a.id).unwrap();
        assert!(matches!(
            store.resolve("web"),
            Err(Error::NoSuchContainer(_))
        ));
        assert!(matches!(
            store.update(&a.id, |_| ()),
            Err(Error::NoSuchContainer(_))
        ));
        // The freed CID is handed out again.
        assert_eq!(add(&store, None).unwrap().vsock_cid, a.vsock_cid);
    }
}
