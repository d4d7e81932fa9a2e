//! Path resolution inside a layer's staging root, done by hand.
//!
//! Why not `tar::Entry::unpack_in`: it guards `..` and checks the final path with
//! `canonicalize`, which *follows* symlinks already unpacked — a hostile layer can plant
//! `a -> /etc` and then write `a/passwd` through it between checks, and `unpack_in` offers no
//! hook for whiteouts, xattr filtering or size bounds. Here every entry path is split into
//! components lexically (`..` may not climb above the root; absolute paths are refused), and
//! each existing parent component is checked with `symlink_metadata`, so no symlink is ever
//! followed: a symlink where a directory is needed is an error, never a redirection. Only this
//! process writes the staging directory, so nothing changes between the check and the use.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("absolute path")]
    Absolute,
    #[error("path climbs out of the layer root with '..'")]
    Escapes,
    #[error("path goes through the symlink {0:?} (symlinks are never followed while unpacking)")]
    ThroughSymlink(String),
    #[error("{0:?} is not a directory")]
    NotADirectory(String),
    #[error("{0:?} does not exist")]
    Missing(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Splits a tar entry path into normal components (`.` and empty parts dropped, `..`
/// applied lexically). An empty result is the layer root itself.
pub fn components(raw: &[u8]) -> Result<Vec<OsString>, PathError> {
    if raw.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    let mut out: Vec<OsString> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
            }
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Ok(out)
}

fn shown(comps: &[OsString]) -> String {
    comps
        .iter()
        .map(|c| c.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Walks the directories `comps` under `root`, creating missing ones (mode 0755, owned by
/// the caller) when `create` is set, and refusing symlinks and non-directories. Returns the
/// directory's path.
pub fn walk_dirs(root: &Path, comps: &[OsString], create: bool) -> Result<PathBuf, PathError> {
    let mut cur = root.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(PathError::ThroughSymlink(shown(&comps[..=i])))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(PathError::NotADirectory(shown(&comps[..=i]))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&cur)
                    .map_err(|source| PathError::Io {
                        path: cur.clone(),
                        source,
                    })?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PathError::Missing(shown(&comps[..=i])))
            }
            Err(source) => return Err(PathError::Io { path: cur, source }),
        }
    }
    Ok(cur)
}

/// The path of entry `comps` under `root` with its parents made real directories (created
/// if missing). The last component itself may be anything or nothing.
pub fn prepare(root: &Path, comps: &[OsString]) -> Result<PathBuf, PathError> {
    let (last, parents) = comps
        .split_last()
        .ok_or(PathError::NotADirectory(String::new()))?;
    Ok(walk_dirs(root, parents, true)?.join(last))
}

/// The path of an existing entry `comps` (a hardlink target): parents must be real
/// directories, the entry itself must exist (it is not followed if it is a symlink).
pub fn existing(root: &Path, comps: &[OsString]) -> Result<(PathBuf, fs::Metadata), PathError> {
    let (last, parents) = comps
        .split_last()
        .ok_or(PathError::Missing(String::new()))?;
    let path = walk_dirs(root, parents, false)?.join(last);
    match fs::symlink_metadata(&path) {
        Ok(m) => Ok((path, m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PathError::Missing(shown(comps))),
        Err(source) => Err(PathError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Result<Vec<String>, PathError> {
        components(s.as_bytes()).map(|v| {
            v.into_iter()
                .map(|o| o.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn lexical_components() {
        assert_eq!(c("./a/b/").unwrap(), ["a", "b"]);
        assert_eq!(c("a//./b").unwrap(), ["a", "b"]);
        assert_eq!(c("a/../b").unwrap(), ["b"]);
        assert!(c("./").unwrap().is_empty());
        assert!(matches!(c("../escape"), Err(PathError::Escapes)));
        assert!(matches!(c("a/../../b"), Err(PathError::Escapes)));
        assert!(matches!(c("/etc/passwd"), Err(PathError::Absolute)));
    }

    #[test]
    fn symlinks_are_never_walked_through() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("d", dir.path().join("rel")).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let e = prepare(dir.path(), &components(b"a/passwd").unwrap()).unwrap_err();
        assert!(
            matches!(&e, PathError::ThroughSymlink(p) if p == "a"),
            "{e}"
        );
        // Even a symlink that stays inside is refused as a parent.
        assert!(prepare(dir.path(), &components(b"rel/x").unwrap()).is_err());
        // The symlink itself may be replaced: it is the last component.
        assert_eq!(
            prepare(dir.path(), &components(b"a").unwrap()).unwrap(),
            dir.path().join("a")
        );
        assert_eq!(
            prepare(dir.path(), &components(b"n/e/w").unwrap()).unwrap(),
            dir.path().join("n/e/w")
        );
        assert!(dir.path().join("n/e").is_dir());
    }
}
