//! One cgroup per VM for its VMM process: `memory` (guest memory plus a stated overhead) and
//! `pids`. cgroup v2 where the host has it (`/sys/fs/cgroup/husk/NAME`); on a hybrid or v1
//! host the v1 `memory` and `pids` hierarchies (`/sys/fs/cgroup/{memory,pids}/husk/NAME`).
//! The VMM joins it between fork and exec (see [`super::launch`]), before it runs anything.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no cgroup v2 with memory and pids, and no v1 memory and pids hierarchies under {ROOT}"
    )]
    Unavailable,
    #[error("cgroup {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

/// What a VM's cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// A VM's cgroup: one directory (v2) or one per v1 hierarchy. Removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates cgroup `name` with `limits`. A stale empty one of the same name (a crashed
    /// run) is replaced.
    pub fn create(name: &str, limits: Limits) -> Result<Cgroup, Error> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            return Self::create_v2(root, name, limits);
        }
        let (memory, pids) = (root.join("memory"), root.join("pids"));
        if !memory.join("cgroup.procs").exists() || !pids.join("cgroup.procs").exists() {
            return Err(Error::Unavailable);
        }
        let mut cg = Cgroup { dirs: Vec::new() };
        let mem_dir = make(&memory.join("husk"), name, &mut cg)?;
        write(&mem_dir.join("memory.limit_in_bytes"), limits.memory_bytes)?;
        let pids_dir = make(&pids.join("husk"), name, &mut cg)?;
        write(&pids_dir.join("pids.max"), limits.pids)?;
        Ok(cg)
    }

    fn create_v2(root: &Path, name: &str, limits: Limits) -> Result<Cgroup, Error> {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(at(&root.join("cgroup.controllers")))?;
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !has("memory") || !has("pids") {
            return Err(Error::Unavailable);
        }
        let parent = root.join("husk");
        enable(&root.join("cgroup.subtree_control"))?;
        std::fs::create_dir_all(&parent).map_err(at(&parent))?;
        enable(&parent.join("cgroup.subtree_control"))?;
        let mut cg = Cgroup { dirs: Vec::new() };
        let dir = make(&parent, name, &mut cg)?;
        write(&dir.join("memory.max"), limits.memory_bytes)?;
        write(&dir.join("pids.max"), limits.pids)?;
        Ok(cg)
    }

    /// `cgroup.procs` of each directory, open for writing: writing "0" to them moves the
    /// writer in (what the VMM's child does before exec).
    pub fn procs_files(&self) -> Result<Vec<File>, Error> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new().write(true).open(&p).map_err(at(&p))
            })
            .collect()
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            remove(d);
        }
    }
}

/// Creates `parent/name` (and `parent`), recording it in `cg` so a later failure removes it.
fn make(parent: &Path, name: &str, cg: &mut Cgroup) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(parent).map_err(at(parent))?;
    let dir = parent.join(name);
    if dir.exists() {
        // Left by a crashed run; it has no process, or this name would not be free.
        let _ = std::fs::remove_dir(&dir);
    }
    std::fs::create_dir(&dir).map_err(at(&dir))?;
    cg.dirs.push(dir.clone());
    Ok(dir)
}

fn write(path: &Path, value: u64) -> Result<(), Error> {
    std::fs::write(path, value.to_string()).map_err(at(path))
}

/// Enables the memory and pids controllers for the children of a v2 cgroup.
fn enable(subtree_control: &Path) -> Result<(), Error> {
    let current = std::fs::read_to_string(subtree_control).map_err(at(subtree_control))?;
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !current.split_whitespace().any(|x| x == *c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    OpenOptions::new()
        .write(true)
        .open(subtree_control)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(at(subtree_control))
}

/// Removes an empty cgroup, waiting briefly for a process that is still leaving it.
fn remove(dir: &Path) {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
