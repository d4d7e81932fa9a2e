//! The templates' directory as the cache users see: what it holds (`husk system df`) and
//! emptying it (`husk system prune`). A template is derived data: removing one only makes the
//! next VM of its kind build it again, and a VM already restored from it has read its state.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{lock_path, FAILED_SUFFIX};
use crate::flock::FileLock;

/// Templates and the disk space they take (allocated blocks, as `du` counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub templates: usize,
    pub bytes: u64,
}

/// What the templates under `dir` take; nothing if there is no such directory.
pub fn usage(dir: &Path) -> Usage {
    let mut u = Usage::default();
    for (_, path) in templates(dir) {
        u.templates += 1;
        u.bytes += dir_bytes(&path);
    }
    u
}

/// Removes every template under `dir` but those being built (their key's lock is held), and
/// the remembered failures (so that the next VM tries again). What it removed.
pub fn remove_all(dir: &Path) -> io::Result<Usage> {
    let mut removed = Usage::default();
    for (key, path) in templates(dir) {
        let Some(_lock) = FileLock::try_exclusive(&lock_path(dir, &key))? else {
            continue;
        };
        let bytes = dir_bytes(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                removed.templates += 1;
                removed.bytes += bytes;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(FAILED_SUFFIX) {
                removed.bytes += e.metadata().map_or(0, |m| m.blocks() * 512);
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(removed)
}

/// The template directories under `dir` (one per key; not builds in progress), by key.
fn templates(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (!name.starts_with('.')).then(|| (name, e.path()))
        })
        .collect()
}

/// Allocated bytes of the files directly in `dir` (a template holds no subdirectories).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(dir: &Path, key: &str, bytes: usize) {
        let t = dir.join(key);
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("state"), vec![1u8; bytes]).unwrap();
        std::fs::write(t.join("template.json"), b"{}").unwrap();
    }

    #[test]
    fn usage_counts_templates_not_builds_locks_or_failures() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(usage(&dir.path().join("none")), Usage::default());
        template(dir.path(), "k1", 64 * 1024);
        template(dir.path(), "k2", 8 * 1024);
        template(dir.path(), ".build-x", 1 << 20);
        std::fs::write(dir.path().join("k1.lock"), b"").unwrap();
        std::fs::write(dir.path().join("k3.failed"), b"why").unwrap();
        let u = usage(dir.path());
        assert_eq!(u.templates, 2);
        // Each file takes whole blocks: at least its bytes, well under the build's MiB.
        assert!(u.bytes >= 72 * 1024 && u.bytes < 1 << 20, "{u:?}");
    }

    #[test]
    fn remove_all_spares_a_template_being_built_and_forgets_failures() {
        let dir = tempfile::tempdir().unwrap();
        template(dir.path(), "k1", 4096);
        template(dir.path(), "k2", 4096);
        template(dir.path(), ".build-x", 4096);
        std::fs::write(dir.path().join("k3.failed"), b"why").unwrap();
        let building = FileLock::exclusive(&dir.path().join("k2.lock")).unwrap();
        let removed = remove_all(dir.path()).unwrap();
        assert_eq!(removed.templates, 1);
        assert!(removed.bytes >= 4096, "{removed:?}");
        assert!(!dir.path().join("k1").exists());
        assert!(dir.path().join("k2").exists(), "its build holds the lock");
        assert!(dir.path().join(".build-x").exists());
        assert!(!dir.path().join("k3.failed").exists());
        drop(building);
        assert_eq!(remove_all(dir.path()).unwrap().templates, 1);
        assert_eq!(usage(dir.path()), Usage::default());
    }
}
