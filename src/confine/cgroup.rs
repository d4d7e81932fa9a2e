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
    /// The levels above `dirs` made for it (deepest first), removed after them.
    made: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates cgroup `name` with `limits`, under `parent` (an absolute cgroup path, in every
    /// hierarchy used) or husk's own (`/husk`). The levels of `parent` made here go with it;
    /// those that were there stay. A stale empty one of the same name (a crashed run) is
    /// replaced.
    pub fn create(name: &str, limits: Limits, parent: Option<&Path>) -> Result<Cgroup, Error> {
        let root = Path::new(ROOT);
        let below = parent.map_or(Ok(vec!["husk".to_string()]), components)?;
        let mut cg = Cgroup {
            dirs: Vec::new(),
            made: Vec::new(),
        };
        let mut made = Vec::new();
        let created = (|| {
            if root.join("cgroup.controllers").exists() {
                let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
                    .map_err(at(&root.join("cgroup.controllers")))?;
                let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
                if !has("memory") || !has("pids") {
                    return Err(Error::Unavailable);
                }
                let parent = levels(root, &below, true, &mut made)?;
                let dir = make(&parent, name, &mut cg)?;
                write(&dir.join("memory.max"), limits.memory_bytes)?;
                return write(&dir.join("pids.max"), limits.pids);
            }
            let (memory, pids) = (root.join("memory"), root.join("pids"));
            if !memory.join("cgroup.procs").exists() || !pids.join("cgroup.procs").exists() {
                return Err(Error::Unavailable);
            }
            let parent = levels(&memory, &below, false, &mut made)?;
            let mem_dir = make(&parent, name, &mut cg)?;
            write(&mem_dir.join("memory.limit_in_bytes"), limits.memory_bytes)?;
            let parent = levels(&pids, &below, false, &mut made)?;
            let pids_dir = make(&parent, name, &mut cg)?;
            write(&pids_dir.join("pids.max"), limits.pids)
        })();
        // Removed on drop after the VM's own, deepest first.
        cg.made = made.into_iter().rev().collect();
        created.map(|()| cg)
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
        for d in self.dirs.iter().chain(&self.made) {
            remove(d);
        }
    }
}

/// The name of the cgroup of the VM whose id lease is `uid`.
pub fn vm_name(uid: u32) -> String {
    format!("vm-{uid}")
}

/// The hierarchies husk's cgroups live in: the v2 root, or the v1 memory and pids ones.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        vec![root.to_path_buf()]
    } else {
        vec![root.join("memory"), root.join("pids")]
    }
}

/// The id leases named by the VM cgroups under husk's own `/husk`, in any hierarchy.
pub fn own_vm_uids() -> Vec<u32> {
    let mut uids: Vec<u32> = hierarchies()
        .into_iter()
        .filter_map(|h| std::fs::read_dir(h.join("husk")).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vm-")?.parse().ok())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Removes the VM cgroup of lease `uid` under husk's own `/husk` where it is empty, without
/// waiting: a process still in it keeps it.
pub fn remove_own_vm(uid: u32) {
    for h in hierarchies() {
        let _ = std::fs::remove_dir(h.join("husk").join(vm_name(uid)));
    }
}

/// After a crash of whoever held them (a `kill -9`'d shim): removes the VM cgroups (`vm-*`)
/// left under `parent` in every hierarchy husk uses, then `parent` itself if that leaves it
/// empty. Their processes must be gone (killed) first; best effort.
pub fn remove_left_under(parent: &Path) {
    let Ok(below) = components(parent) else {
        return;
    };
    for h in hierarchies() {
        let dir = below.iter().fold(h, |d, l| d.join(l));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("vm-") && e.path().is_dir() {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The levels of absolute cgroup path `p` below the root; refused when it could climb out.
fn components(p: &Path) -> Result<Vec<String>, Error> {
    let bad = || Error::File {
        path: p.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not an absolute cgroup path"),
    };
    if !p.is_absolute() {
        return Err(bad());
    }
    p.components()
        .filter(|c| !matches!(c, std::path::Component::RootDir))
        .map(|c| match c {
            std::path::Component::Normal(n) => n.to_str().map(str::to_string).ok_or_else(bad),
            _ => Err(bad()),
        })
        .collect()
}

/// Makes the levels `below` under hierarchy `root` that are missing (recorded in `made`), with
/// the memory and pids controllers enabled for each level's children on cgroup v2; returns
/// the deepest.
fn levels(
    root: &Path,
    below: &[String],
    v2: bool,
    made: &mut Vec<PathBuf>,
) -> Result<PathBuf, Error> {
    let mut dir = root.to_path_buf();
    for level in below {
        if v2 {
            enable(&dir.join("cgroup.subtree_control"))?;
        }
        dir.push(level);
        match std::fs::create_dir(&dir) {
            Ok(()) => made.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(at(&dir)(e)),
        }
    }
    if v2 {
        enable(&dir.join("cgroup.subtree_control"))?;
    }
    Ok(dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_paths_are_absolute_and_cannot_climb_out() {
        assert_eq!(
            components(Path::new("/kubepods/pod1/abc")).unwrap(),
            ["kubepods", "pod1", "abc"]
        );
        for bad in ["kubepods/x", "/a/../b"] {
            assert!(components(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_vm_cgroup_under_a_parent_takes_the_levels_it_made_with_it() {
        let limits = Limits {
            memory_bytes: 64 << 20,
            pids: 64,
        };
        let parent = PathBuf::from(format!("/husk-unit-{}/pod/sandbox", std::process::id()));
        let cg = match Cgroup::create("vm-test", limits, Some(&parent)) {
            Ok(cg) => cg,
            Err(e) => {
                eprintln!("NOT RUN: a cgroup under a parent: {e}");
                return;
            }
        };
        assert!(!cg.dirs().is_empty());
        for d in cg.dirs() {
            assert!(d.ends_with("vm-test"), "{}", d.display());
            assert!(
                d.to_string_lossy().contains("/pod/sandbox/"),
                "{}",
                d.display()
            );
            assert!(d.is_dir());
        }
        let top: Vec<PathBuf> = cg
            .dirs()
            .iter()
            .map(|d| d.ancestors().nth(3).unwrap().to_path_buf())
            .collect();
        drop(cg);
        for t in top {
            assert!(!t.exists(), "{} left", t.display());
        }
        // After a crash: what is left under the parent goes too.
        let cg = Cgroup::create("vm-crashed", limits, Some(&parent)).unwrap();
        let dirs = cg.dirs().to_vec();
        std::mem::forget(cg);
        remove_left_under(&parent);
        for d in &dirs {
            assert!(!d.exists(), "{} left", d.display());
        }
        remove_left_under(Path::new(&format!("/husk-unit-{}/pod", std::process::id())));
        remove_left_under(Path::new(&format!("/husk-unit-{}", std::process::id())));
    }
}
