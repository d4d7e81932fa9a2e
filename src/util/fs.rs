//! Files and programs: [`which`], [`write_atomic`], [`create_private_dir`], [`sparse_copy`]
//! and [`data_extents`].

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

/// Creates `path` (and missing parents) as a directory only its owner may enter (0700), or
/// makes an existing one so: what a container leaves there (its console log, its writable
/// layer, its sockets) is no other local user's to read.
///
/// In a directory anyone may write to (`/tmp`, where the short socket directories live), a
/// `path` that another user made first — or a symlink put there — is refused: its owner could
/// swap the sockets in it or read what is written there.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let shared_parent = path
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.mode() & 0o002 != 0);
    if shared_parent {
        let meta = std::fs::symlink_metadata(path)?;
        // SAFETY: geteuid() takes no arguments and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "made by another user (uid {}) or not a directory, in a directory anyone \
                     can write to: remove it",
                    meta.uid()
                ),
            ));
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Makes `dst` (empty, open for writing) a copy of `src` that is as sparse as `src`: a reflink
/// where the filesystem shares extents, else only `src`'s data extents are copied (in the
/// kernel, `copy_file_range`) and its holes stay holes.
pub fn sparse_copy(src: &std::fs::File, dst: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
    // SAFETY: FICLONE takes the source fd as its argument and touches no memory of ours.
    if unsafe { libc::ioctl(d, libc::FICLONE, s) } == 0 {
        return Ok(());
    }
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    for extent in data_extents(src, len)? {
        let (data, hole) = (extent.start as i64, extent.end as i64);
        let (mut from, mut to) = (data, data);
        while from < hole {
            // SAFETY: copy_file_range between two fds we own, with offsets in live locals it
            // advances; it reads and writes no memory of ours otherwise.
            let n = unsafe {
                libc::copy_file_range(s, &mut from, d, &mut to, (hole - from) as usize, 0)
            };
            match n {
                n if n > 0 => {}
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                _ => {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => {}
                        // The kernel cannot copy between these two (overlayfs over two
                        // filesystems, an NFS or FUSE store): copy through a buffer.
                        Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
                            copy_range(src, dst, from as u64, hole as u64)?;
                            break;
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Where `f` holds data in its first `len` bytes, in order (`SEEK_DATA` / `SEEK_HOLE`):
/// the rest are holes, which read as zeros.
pub fn data_extents(f: &std::fs::File, len: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
    use std::os::fd::AsRawFd;
    let seek = |at: u64, whence| {
        // SAFETY: lseek on a descriptor `f` keeps open moves only that file's offset.
        let r = unsafe { libc::lseek(f.as_raw_fd(), at as libc::off_t, whence) };
        match r {
            r if r >= 0 => Ok(Some(r as u64)),
            _ => match io::Error::last_os_error() {
                // No data after `at`: the rest is a hole.
                e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
                e => Err(e),
            },
        }
    };
    let mut extents = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(data) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if data < hole {
            extents.push(data..hole);
        }
        at = hole.max(data + 1);
    }
    Ok(extents)
}

/// Copies bytes `from..to` of `src` to the same offsets of `dst` (already at least `to` long)
/// through a buffer. Zero blocks are not written: they stay holes of `dst`, also where `src`'s
/// filesystem reports no holes (9p, some FUSE ones: all of a file is "data" there).
fn copy_range(src: &std::fs::File, dst: &std::fs::File, from: u64, to: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let want = buf.len().min((to - at) as usize);
        let n = match src.read_at(&mut buf[..want], at) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], at)?;
        }
        at += n as u64;
    }
    Ok(())
}

/// 16 hex digits naming the pair (`scope`, `id`): for socket directories, which must stay
/// short (`sun_path` holds 108 bytes) and differ between stores or namespaces.
pub fn short_name(scope: &[u8], id: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(scope);
    h.update(b"\0");
    h.update(id.as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// husk's per-user cache (the kernel build, tools the install scripts put there):
/// `$HUSK_CACHE`, else `~/.cache/husk`.
pub fn husk_cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("HUSK_CACHE") {
        return d.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::Path::new(&home).join(".cache/husk")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_dir_someone_else_made_in_tmp_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("tmp");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        create_private_dir(&shared.join("mine")).unwrap();
        create_private_dir(&shared.join("mine")).unwrap();
        symlink(dir.path(), shared.join("link")).unwrap();
        let e = create_private_dir(&shared.join("link")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // SAFETY: geteuid() takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = shared.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = create_private_dir(&theirs).unwrap_err();
            assert!(e.to_string().contains("uid 65534"), "{e}");
            // Outside a shared directory, an existing one is only made private.
            let kept = dir.path().join("kept");
            std::fs::create_dir(&kept).unwrap();
            std::os::unix::fs::chown(&kept, Some(65534), Some(65534)).unwrap();
            create_private_dir(&kept).unwrap();
        }
    }

    #[test]
    fn private_dirs_are_0700_new_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        create_private_dir(&new).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&new), 0o700);
        let old = dir.path().join("c");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
    }

    #[test]
    fn copy_range_copies_only_its_range_at_the_same_offsets() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let src = std::fs::File::create_new(dir.path().join("src")).unwrap();
        // Longer than copy_range's buffer, at an offset past a hole.
        let data: Vec<u8> = (0..(3 << 19)).map(|i| (i % 251) as u8).collect();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(&data, 4 << 20).unwrap();
        let dst = std::fs::File::create_new(dir.path().join("dst")).unwrap();
        let end = (4 << 20) + data.len() as u64;
        dst.set_len(end).unwrap();
        copy_range(&src, &dst, 4 << 20, end).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), end);
        let mut back = vec![0u8; data.len()];
        dst.read_exact_at(&mut back, 4 << 20).unwrap();
        assert!(back == data, "the range differs after the copy");
        let mut head = [9u8; 4];
        dst.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, [0; 4], "bytes outside the range were copied");
        // The hole before the data (read as zeros) stays a hole.
        use std::os::unix::fs::MetadataExt;
        let before = dst.metadata().unwrap().blocks();
        copy_range(&src, &dst, 1 << 20, 4 << 20).unwrap();
        let after = dst.metadata().unwrap().blocks();
        assert_eq!(
            before, after,
            "zeros were written ({before} -> {after} blocks)"
        );
        // A source shorter than the range asked for is an error, not a short copy.
        assert!(copy_range(&src, &dst, end - 10, end + 10).is_err());
    }

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
