//! Files and programs: [`which`] and [`write_atomic`].

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The first executable `name` in a directory of `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    which_or_in(name, &[])
}

/// The first executable `name` in a directory of `PATH`, then in `extra` (for tools that
/// live in `/usr/sbin` or `/sbin`, which a user's `PATH` may lack).
pub fn which_or_in(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit set.
pub fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Replaces `path` with `bytes` atomically: a temp file beside it (`.NAME.XXXXXX.tmp`, mode
/// 0644), written and fsynced, then renamed over it. A reader sees the old file or the new
/// one, never a torn one; a crash leaves at worst a stray temp file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(write_atomic(&dir.path().join("no/such/dir/f"), b"x").is_err());
    }

    #[test]
    fn which_finds_only_executables() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("husk-test-tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        assert!(!is_executable(&exe));
        assert_eq!(
            which_or_in("husk-test-tool", &[dir.path().to_str().unwrap()]),
            None
        );
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            which_or_in("husk-test-tool", &[dir.path().to_str().unwrap()]),
            Some(exe)
        );
        assert!(which("sh").is_some());
        assert!(!is_executable(dir.path()));
    }
}
