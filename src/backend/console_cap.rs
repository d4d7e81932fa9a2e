//! Bounds a VM's console log on the host. The guest writes it (through the VMM's serial
//! port, appending), and a guest that floods its console must not fill the host's disk: once
//! the log passes [`CONSOLE_LOG_MAX`], its content moves to `<log>.1` (replacing the older
//! one) and the log starts again empty, as logrotate's `copytruncate` does. The writers
//! (the VMM, the helper daemons' stderr) append, so after the truncation they go on at the
//! new end; what they write between the copy and the truncation is lost, which is the price
//! of rotating a file others hold open. On disk: at most about twice the limit.
//!
//! A thread of the process that owns the VM watches the log with inotify (no polling) for as
//! long as the [`ConsoleCap`] lives.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Largest console log kept before it is rotated, unless [`MAX_ENV`] says otherwise.
pub const CONSOLE_LOG_MAX: u64 = 4 << 20;

/// Overrides [`CONSOLE_LOG_MAX`] (bytes; at least [`MIN_MAX`]).
pub const MAX_ENV: &str = "HUSK_CONSOLE_LOG_MAX";

/// The smallest limit taken from [`MAX_ENV`]: the guest's boot log must fit.
pub const MIN_MAX: u64 = 16 << 10;

/// The limit in force: [`MAX_ENV`] when it holds a number of at least [`MIN_MAX`].
pub fn configured_max() -> u64 {
    std::env::var(MAX_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|m| *m >= MIN_MAX)
        .unwrap_or(CONSOLE_LOG_MAX)
}

/// Where a rotated log's previous content goes.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The watching thread; dropping this stops and joins it.
pub(super) struct ConsoleCap {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleCap {
    /// Starts watching `log` (which must exist). Without inotify or a thread (a host out of
    /// either) the log is left unbounded, with a warning.
    pub fn start(log: &Path, max: u64) -> ConsoleCap {
        let none = ConsoleCap {
            stop: None,
            thread: None,
        };
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .and_then(|i| i.add_watch(log, AddWatchFlags::IN_MODIFY).map(|_| i))
        {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(log = %log.display(), "console log not bounded: inotify: {e}");
                return none;
            }
        };
        let (stop_rx, stop_tx) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(log = %log.display(), "console log not bounded: pipe: {e}");
                return none;
            }
        };
        let path = log.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("console-cap".into())
            .spawn(move || watch(&path, max, &inotify, &stop_rx));
        match spawned {
            Ok(thread) => ConsoleCap {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::warn!(log = %log.display(), "console log not bounded: thread: {e}");
                none
            }
        }
    }
}

impl Drop for ConsoleCap {
    fn drop(&mut self) {
        // Closing the write end wakes the thread (its read end polls readable at EOF).
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(log: &Path, max: u64, inotify: &Inotify, stop: &OwnedFd) {
    loop {
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        // Drain every queued event; one look at the size covers them all.
        while inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
        let len = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        if len > max {
            if let Err(e) = rotate(log) {
                tracing::warn!(log = %log.display(), "rotating the console log: {e}");
                return;
            }
        }
    }
}

/// Copies `log` to [`rotated_path`] (through a temporary file, so `.1` is always whole) and
/// empties `log`. The log is emptied as soon as the copy has read to its end, before the
/// rename: what a writer appends between the two is the only output lost, so that window is
/// kept as short as it can be.
fn rotate(log: &Path) -> std::io::Result<()> {
    let dst = rotated_path(log);
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let moved = (|| {
        let mut from = OpenOptions::new().read(true).write(true).open(log)?;
        let mut to = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        std::io::copy(&mut from, &mut to)?;
        from.set_len(0)?;
        std::fs::rename(&tmp, &dst)
    })();
    if moved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_flooded_log_stays_bounded_and_keeps_the_latest_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"").unwrap();
        let max = 64 << 10;
        let cap = ConsoleCap::start(&log, max);
        // The VMM appends, as QEMU's `append=on` file chardev does.
        let mut w = OpenOptions::new().append(true).open(&log).unwrap();
        let line = [b'x'; 1023];
        let mut biggest = 0;
        // 8 MiB at up to 8 MiB/s: far faster than a serial console.
        for i in 0..8192u32 {
            w.write_all(&line).unwrap();
            w.write_all(b"\n").unwrap();
            if i % 16 == 0 {
                biggest = biggest.max(std::fs::metadata(&log).unwrap().len());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        // The watcher catches up with the flood. Only then the last line: written while a
        // rotation copies, it would be the output lost between the copy and the truncation
        // (the documented price of copytruncate), which is not what this test is about. Once
        // the log is back under the cap, any rotation has truncated it already.
        let settle = |what: &str| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::fs::metadata(&log).unwrap().len() > max {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the log stayed over the cap 30 s after {what}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        settle("the flood");
        w.write_all(b"the last line\n").unwrap();
        // The watcher sees the last write too: the log ends at most `max` long.
        settle("the last line");
        drop(cap);
        let now = std::fs::metadata(&log).unwrap().len();
        let old = std::fs::metadata(rotated_path(&log)).map(|m| m.len());
        assert!(
            old.is_ok(),
            "8 MiB written through a 64 KiB cap and nothing rotated"
        );
        // During the flood: the cap plus what lands while the watcher wakes and copies
        // (generous, on a loaded host; 8 MiB were written in all).
        assert!(biggest <= 32 * max, "the log reached {biggest} bytes");
        assert!(now <= max, "{now} bytes left after the flood");
        let old = old.unwrap();
        assert!(old <= 32 * max, "{old} bytes in the rotated log");
        // The latest output is kept: at the log's end or, when the last line itself pushed
        // the log past the cap, at the end of the rotated one with the log empty.
        let last = std::fs::read_to_string(&log).unwrap();
        let rotated = std::fs::read_to_string(rotated_path(&log)).unwrap();
        assert!(
            last.ends_with("the last line\n")
                || (last.is_empty() && rotated.ends_with("the last line\n")),
            "log ends {:?}, rotated log ends {:?}",
            &last[last.len().saturating_sub(40)..],
            &rotated[rotated.len().saturating_sub(40)..]
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(rotated_path(&log)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the rotated log is readable by others");
    }

    #[test]
    fn a_quiet_log_is_left_alone_and_the_watcher_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"boot\n").unwrap();
        let cap = ConsoleCap::start(&log, 1 << 20);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"HUSK-AGENT-READY\n")
            .unwrap();
        drop(cap);
        assert_eq!(std::fs::read(&log).unwrap(), b"boot\nHUSK-AGENT-READY\n");
        assert!(!rotated_path(&log).exists());
    }
}
