//! The host files a VM's backend names: the sockets it creates beside the vsock socket
//! (husk-agent-mux's `.serial`, husk-layer-disk's `.blk`) and beside the console log (one virtiofsd socket per
//! share). Callers pick the directories; these functions say which paths fit a unix socket
//! address there, and clean up what a killed VM left.

use std::path::{Path, PathBuf};

use super::{agent_mux, virtiofsd, VsockSpec};

/// The longest host socket path handed to a backend, leaving room for the suffixes
/// backends add (`.serial`) under `sun_path`'s 108 bytes.
pub const MAX_SOCKET_PATH: usize = 96;

/// The vsock socket of a VM whose files live in `dir`: there when the path fits a unix socket
/// address, else in `short_dir`.
pub fn vsock_socket_path(dir: &Path, short_dir: &Path) -> PathBuf {
    let p = dir.join("vsock");
    if p.as_os_str().len() <= MAX_SOCKET_PATH {
        return p;
    }
    short_dir.join("vsock")
}

/// The console log of a VM with `shares` virtio-fs shares. virtiofsd sockets are named after
/// it (`console.log.fsN.sock`), so when `dir` is too deep for those socket paths the log goes
/// to `short_dir` instead.
pub fn console_log_path(dir: &Path, short_dir: &Path, shares: usize) -> PathBuf {
    let p = dir.join("console.log");
    let longest = virtiofsd::socket_for(&p, shares.saturating_sub(1));
    if shares == 0 || longest.as_os_str().len() <= MAX_SOCKET_PATH {
        return p;
    }
    short_dir.join("console.log")
}

/// Removes the sockets a VM's backend may have left behind (its VMM or owner was killed before
/// the handle cleaned up): the vsock socket and its agent-link and layer-disk twins, and the virtiofsd sockets of
/// its `shares` shares beside `console_log`.
pub fn remove_sockets(vsock: &VsockSpec, console_log: &Path, shares: usize) {
    let link = agent_mux::link_socket_for(vsock);
    let mut layers = vsock.uds_path.as_os_str().to_owned();
    layers.push(".blk");
    let layers = PathBuf::from(layers);
    for p in [&vsock.uds_path, &link, &layers] {
        let _ = std::fs::remove_file(p);
    }
    for i in 0..shares {
        let _ = std::fs::remove_file(virtiofsd::socket_for(console_log, i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_dir(id: &str) -> PathBuf {
        std::env::temp_dir().join(format!("husk-{}", &id[..16]))
    }

    #[test]
    fn console_log_moves_only_when_share_sockets_would_not_fit() {
        let id = "a".repeat(64);
        let short_root = Path::new("/h").join(&id);
        assert_eq!(
            console_log_path(&short_root, &short_dir(&id), 2),
            short_root.join("console.log")
        );
        let deep = Path::new("/var/lib/husk/containers").join(&id);
        assert_eq!(
            console_log_path(&deep, &short_dir(&id), 0),
            deep.join("console.log")
        );
        let moved = console_log_path(&deep, &short_dir(&id), 3);
        assert!(!moved.starts_with(&deep), "{}", moved.display());
        assert!(virtiofsd::socket_for(&moved, 2).as_os_str().len() <= MAX_SOCKET_PATH);
    }

    #[test]
    fn long_dirs_get_short_socket_paths() {
        let id = "d".repeat(64);
        let short = vsock_socket_path(
            Path::new("/var/lib/husk/containers").join(&id).as_path(),
            &short_dir(&id),
        );
        assert!(short.starts_with("/var/lib/husk"));
        let deep = Path::new("/a").join("b".repeat(80)).join(&id);
        let p = vsock_socket_path(&deep, &short_dir(&id));
        assert!(p.as_os_str().len() <= MAX_SOCKET_PATH, "{}", p.display());
    }

    #[test]
    fn left_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = VsockSpec {
            cid: 3,
            uds_path: dir.path().join("vsock"),
        };
        let log = dir.path().join("console.log");
        let left = [
            vsock.uds_path.clone(),
            agent_mux::link_socket_for(&vsock),
            virtiofsd::socket_for(&log, 0),
            virtiofsd::socket_for(&log, 1),
        ];
        for p in left.iter().chain([&log]) {
            std::fs::write(p, "").unwrap();
        }
        remove_sockets(&vsock, &log, 2);
        for p in &left {
            assert!(!p.exists(), "{} left", p.display());
        }
        assert!(log.exists(), "the console log is the caller's to keep");
    }
}
