//! `flock(2)` on a lock file, for the stores that several husk processes change at once (the
//! image index, container state, network leases, husk-runtime's state).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A held `flock`; released when dropped (closing the file releases it).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for an exclusive lock on `path`, creating the file if needed.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        FileLock::take(path, libc::LOCK_EX)
    }

    /// Waits for a shared lock on `path`, creating the file if needed.
    pub fn shared(path: &Path) -> io::Result<FileLock> {
        FileLock::take(path, libc::LOCK_SH)
    }

    /// An exclusive lock on `path` if nobody holds one, `None` if somebody does (no wait);
    /// creates the file if needed.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        match FileLock::take(path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn take(path: &Path, op: libc::c_int) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(FileLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FileLock;

    #[test]
    fn an_exclusive_lock_excludes_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = FileLock::exclusive(&path).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let try_lock = || {
            // SAFETY: flock on a file descriptor we own.
            unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            }
        };
        assert_ne!(try_lock(), 0, "a second exclusive lock got in");
        drop(held);
        assert_eq!(try_lock(), 0, "the lock outlived its guard");
        drop(f);
        let _shared = FileLock::shared(&path).unwrap();
    }

    #[test]
    fn try_exclusive_does_not_wait_for_a_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.lock");
        let held = FileLock::try_exclusive(&path).unwrap().expect("free lock");
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_exclusive(&path).unwrap().is_some());
    }
}
