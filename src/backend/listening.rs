//! Waiting for a helper daemon (virtiofsd) to listen on its unix socket:
//! read from the kernel's table of unix sockets, since probing with connect() would make the
//! prober the daemon's vhost-user frontend.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::child::Guarded;
use super::Error;

/// How long a helper daemon may take to listen on its socket.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A helper daemon that was spawned and is about to listen on `socket`: spawn every helper
/// of a VM first, then wait for each ([`ready`](Self::ready)), so their start-ups overlap.
pub(super) struct Starting {
    pub daemon: Guarded,
    pub socket: PathBuf,
}

impl Starting {
    /// Waits until the daemon listens; its death or [`READY_TIMEOUT`] is the error, naming
    /// `log_path` (where its stderr went).
    pub fn ready(self, log_path: &Path) -> Result<Guarded, Error> {
        // The file appears at bind(), before listen(): a VMM connecting in between is
        // refused and exits, so wait for the listening state itself. It comes within
        // milliseconds: look often (a look reads one /proc table).
        const PAUSE: Duration = Duration::from_millis(1);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if is_listening(&self.socket) {
                return Ok(self.daemon);
            }
            let status = self.daemon.try_wait().map_err(|source| Error::Process {
                op: "wait",
                pid: self.daemon.pid(),
                source,
            })?;
            if let Some(status) = status {
                return Err(Error::HelperDied {
                    program: self.daemon.program().to_string(),
                    status,
                    log: log_path.to_path_buf(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::HelperTimeout {
                    program: self.daemon.program().to_string(),
                    path: self.socket.clone(),
                    secs: READY_TIMEOUT.as_secs(),
                    log: log_path.to_path_buf(),
                });
            }
            std::thread::sleep(PAUSE);
        }
    }
}

/// Whether a unix socket is bound at `path` and listening, from `/proc/net/unix` (probing with
/// connect() would make us the daemon's vhost-user frontend).
pub fn is_listening(path: &Path) -> bool {
    const SO_ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.as_os_str().to_string_lossy();
    table.lines().skip(1).any(|line| {
        // Num RefCount Protocol Flags Type St Inode Path
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8
            && f[7..].join(" ") == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & SO_ACCEPTCON != 0)
    })
}
