//! Descriptors a helper daemon inherits from husk (`--socket-fd N`, `--layer-fd N`): taken
//! over once each, after checking that they are open.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Why an inherited descriptor cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum InheritedError {
    #[error("{what} descriptor {fd} is not an open inherited file descriptor")]
    NotOpen { what: String, fd: RawFd },
    #[error("descriptor {0} is named twice")]
    Twice(RawFd),
}

/// Takes ownership of the inherited descriptors `fds` (each named for errors by its `what`),
/// in order. Refuses stdio (0-2), one that is not open, and one named twice, before taking
/// any: each is then owned exactly once.
pub fn take(fds: &[(RawFd, &str)]) -> Result<Vec<OwnedFd>, InheritedError> {
    let mut seen = std::collections::HashSet::new();
    if let Some(&(fd, _)) = fds.iter().find(|(fd, _)| !seen.insert(*fd)) {
        return Err(InheritedError::Twice(fd));
    }
    for &(fd, what) in fds {
        // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(InheritedError::NotOpen {
                what: what.to_string(),
                fd,
            });
        }
    }
    Ok(fds
        .iter()
        // SAFETY: each fd is open (checked above), was handed to this process for this
        // purpose, is owned by nothing else here, and appears once in `fds` (checked above),
        // so it is taken exactly once.
        .map(|&(fd, _)| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn open_descriptors_are_taken_once_and_bad_ones_refused() {
        let a = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        assert!(matches!(
            take(&[(a, "layer"), (a, "layer")]),
            Err(InheritedError::Twice(_))
        ));
        assert_eq!(
            take(&[(1, "socket")]).unwrap_err().to_string(),
            "socket descriptor 1 is not an open inherited file descriptor"
        );
        assert!(take(&[(987_654, "layer")]).is_err());
        let owned = take(&[(a, "layer")]).unwrap();
        assert_eq!(owned.len(), 1);
    }
}
