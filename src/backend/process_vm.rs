//! [`ProcessVm`], the [`VmHandle`] both backends return.
//!
//! A VM is one main process (husk-vmm or QEMU), maybe helpers (husk-agent-mux, one
//! virtiofsd per shared directory) and some socket files. [`ProcessVm`] owns them all: when the
//! main process ends, or is killed, or the handle is dropped, the helpers are killed and reaped
//! and the files are removed, exactly once.
//!
//! A helper that dies while the VM runs takes the VM down with it: neither QEMU nor the guest
//! recovers a vhost-user backend, and a guest waiting on a dead virtio-fs queue would block
//! forever. A watcher thread per helper notices the death, writes one line to the console log,
//! kills the VM, and `wait` then reports [`Error::HelperExited`] instead of a bare status.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::child::{Guarded, Leftovers};
use super::console_cap::{self, ConsoleCap};
use super::{Error, VmHandle};

/// A helper that died while its VM ran: what ended the VM.
#[derive(Debug, Clone)]
struct HelperFailure {
    program: String,
    pid: u32,
    status: ExitStatus,
}

/// How long a VM may take to end on its own after a helper exits before the helper is
/// blamed: QEMU closing its vhost-user sockets while it shuts down also ends the daemons.
const HELPER_GRACE: Duration = Duration::from_secs(2);

/// The [`VmHandle`] of both backends: a main process plus its leftovers.
pub(super) struct ProcessVm {
    main: Arc<Guarded>,
    leftovers: Mutex<Option<Leftovers>>,
    console_log: PathBuf,
    vsock_uds: Option<PathBuf>,
    /// The console line after which the host may use the vsock socket (None: at once).
    vsock_ready_line: Option<&'static str>,
    /// Set before the helpers are stopped on purpose, so their watchers stand down.
    stopping: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<HelperFailure>>>,
    /// Keeps the console log bounded for as long as the VM is ours.
    _console_cap: ConsoleCap,
}

impl ProcessVm {
    pub fn new(
        main: Guarded,
        leftovers: Leftovers,
        console_log: PathBuf,
        vsock_uds: Option<PathBuf>,
        vsock_ready_line: Option<&'static str>,
    ) -> Self {
        let vm = ProcessVm {
            main: Arc::new(main),
            leftovers: Mutex::new(None),
            _console_cap: ConsoleCap::start(&console_log, console_cap::configured_max()),
            console_log,
            vsock_uds,
            vsock_ready_line,
            stopping: Arc::new(AtomicBool::new(false)),
            failure: Arc::new(Mutex::new(None)),
        };
        for h in &leftovers.helpers {
            vm.watch(h.clone());
        }
        *vm.leftovers.lock().unwrap_or_else(|p| p.into_inner()) = Some(leftovers);
        vm
    }

    /// Ends the VM if `helper` dies while it runs.
    fn watch(&self, helper: Arc<Guarded>) {
        let main = self.main.clone();
        let stopping = self.stopping.clone();
        let failure = self.failure.clone();
        let log = self.console_log.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{}", helper.pid()))
            .spawn(move || {
                let Ok(status) = helper.wait() else { return };
                let deadline = Instant::now() + HELPER_GRACE;
                while Instant::now() < deadline {
                    if stopping.load(Ordering::SeqCst) || !matches!(main.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let line = format!(
                    "husk: {} (pid {}) exited ({status}) while the VM ran; stopping the VM \
                     (pid {})",
                    helper.program(),
                    helper.pid(),
                    main.pid()
                );
                tracing::error!("{line}");
                if let Ok(mut f) = OpenOptions::new().append(true).open(&log) {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(HelperFailure {
                    program: helper.program().to_string(),
                    pid: helper.pid(),
                    status,
                });
                let _ = main.kill();
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch VM helper {}: {e}", self.main.pid());
        }
    }

    /// `status`, or the helper failure that ended the VM.
    fn outcome(&self, status: ExitStatus) -> Result<ExitStatus, Error> {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match failure {
            Some(f) => Err(Error::HelperExited {
                program: f.program,
                pid: f.pid,
                status: f.status,
                log: self.console_log.clone(),
            }),
            None => Ok(status),
        }
    }

    fn clean_up(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let taken = self
            .leftovers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(taken);
    }

    fn process_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::Process {
            op,
            pid: self.main.pid(),
            source,
        }
    }

    /// Waits until the console log holds `marker` (anywhere in a line), woken by the log's
    /// writes. An error if the VMM exits first (with its last line) or `timeout` passes.
    pub fn wait_console_line(&self, marker: &'static str, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut seen = ConsoleScan::default();
        // Woken by the console's writes (and its close when the VMM ends), not by a timer.
        let changes = ConsoleChanges::watch(&self.console_log);
        loop {
            if seen.found(&self.console_log, marker) {
                return Ok(());
            }
            if let Some(status) = self.main.try_wait().map_err(self.process_err("wait"))? {
                // The line may have landed just before the exit.
                if seen.found(&self.console_log, marker) {
                    return Ok(());
                }
                return Err(Error::ExitedBeforeReady {
                    status,
                    log: self.console_log.clone(),
                    last_line: last_line(&self.console_log),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::GuestNotUp {
                    secs: timeout.as_secs(),
                    marker,
                    log: self.console_log.clone(),
                });
            }
            changes.wait(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

impl VmHandle for ProcessVm {
    fn pid(&self) -> u32 {
        self.main.pid()
    }

    fn wait(&self) -> Result<ExitStatus, Error> {
        let status = self.main.wait().map_err(self.process_err("wait"))?;
        self.clean_up();
        self.outcome(status)
    }

    fn try_wait(&self) -> Result<Option<ExitStatus>, Error> {
        let status = self.main.try_wait().map_err(self.process_err("wait"))?;
        match status {
            Some(st) => {
                self.clean_up();
                self.outcome(st).map(Some)
            }
            None => Ok(None),
        }
    }

    fn kill(&self) -> Result<(), Error> {
        self.main.kill().map_err(self.process_err("kill"))?;
        self.clean_up();
        Ok(())
    }

    fn console_log(&self) -> PathBuf {
        self.console_log.clone()
    }

    fn vsock_uds(&self) -> Option<PathBuf> {
        self.vsock_uds.clone()
    }

    fn wait_vsock_ready(&self, timeout: Duration) -> Result<(), Error> {
        match self.vsock_ready_line {
            Some(marker) => self.wait_console_line(marker, timeout),
            None => Ok(()),
        }
    }
}

/// inotify on the console log: returns from [`wait`](Self::wait) when the file is written
/// or closed. Without inotify (a full instance table) it falls back to a short sleep.
struct ConsoleChanges(Option<nix::sys::inotify::Inotify>);

impl ConsoleChanges {
    /// The longest wait between looks at the VMM itself (a VMM that dies before opening
    /// the log, or keeps it open while hung, writes nothing).
    const MAX_WAIT: Duration = Duration::from_millis(100);
    /// The pause between looks without inotify.
    const FALLBACK_PAUSE: Duration = Duration::from_millis(20);

    fn watch(log: &Path) -> ConsoleChanges {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let watched = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).and_then(|i| {
            i.add_watch(
                log,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE,
            )
            .map(|_| i)
        });
        ConsoleChanges(watched.ok())
    }

    fn wait(&self, left: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let left = left.min(Self::MAX_WAIT);
        let Some(inotify) = &self.0 else {
            std::thread::sleep(left.min(Self::FALLBACK_PAUSE));
            return;
        };
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        if let Ok(n) = poll(&mut fds, PollTimeout::from(ms)) {
            if n > 0 {
                // Drain: the events themselves say nothing the file does not.
                while matches!(inotify.read_events(), Ok(ev) if !ev.is_empty()) {}
            }
        }
    }
}

/// The last non-empty line of the log's final 4 KiB, trimmed to 300 characters (the guest
/// writes this file too, so it is bounded and lossily decoded).
pub(super) fn last_line(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    // A panic's stack dump runs to a few KiB after its "Kernel panic" line.
    const TAIL: u64 = 16 << 10;
    let mut f = File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut buf = Vec::new();
    f.take(TAIL).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("Kernel panic"))
        .or(lines.last())?;
    Some(line.chars().take(300).collect())
}

/// Looks for a line in a growing console log, reading each byte once.
#[derive(Default)]
struct ConsoleScan {
    offset: u64,
    /// The unfinished last line of what was read so far.
    tail: Vec<u8>,
}

impl ConsoleScan {
    /// Longest partial line kept between reads: a marker is short.
    const MAX_TAIL: usize = 4096;

    fn found(&mut self, log: &Path, marker: &str) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(log) else {
            return false;
        };
        // A log rotated meanwhile (backend::console_cap) starts again from its beginning.
        if f.metadata().is_ok_and(|m| m.len() < self.offset) {
            self.offset = 0;
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return false;
        }
        self.offset += buf.len() as u64;
        self.tail.extend_from_slice(&buf);
        let hit = self
            .tail
            .windows(marker.len())
            .any(|w| w == marker.as_bytes());
        if let Some(nl) = self.tail.iter().rposition(|&b| b == b'\n') {
            self.tail.drain(..=nl);
        }
        if self.tail.len() > Self::MAX_TAIL {
            let cut = self.tail.len() - Self::MAX_TAIL;
            self.tail.drain(..cut);
        }
        hit
    }
}

impl Drop for ProcessVm {
    fn drop(&mut self) {
        // Field order would drop `main` (killing it) before the leftovers anyway; being
        // explicit keeps that true if the fields move.
        if let Err(e) = self.main.kill() {
            tracing::warn!(pid = self.main.pid(), "cannot kill VM process: {e}");
        }
        self.clean_up();
    }
}

#[cfg(test)]
mod console_scan_tests {
    use super::ConsoleScan;
    use std::io::Write;

    #[test]
    fn finds_a_marker_written_in_pieces_and_only_once_it_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut scan = ConsoleScan::default();
        assert!(!scan.found(&log, "READY"), "no file yet");
        let mut f = std::fs::File::create(&log).unwrap();
        write!(f, "booting\nRE").unwrap();
        assert!(!scan.found(&log, "READY"));
        write!(f, "AD").unwrap();
        assert!(!scan.found(&log, "READY"));
        writeln!(f, "Y").unwrap();
        assert!(scan.found(&log, "READY"), "marker split over three reads");
    }

    #[test]
    fn old_complete_lines_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "x".repeat(10_000) + "\nabc").unwrap();
        let mut scan = ConsoleScan::default();
        assert!(!scan.found(&log, "READY"));
        assert_eq!(scan.tail, b"abc");
        assert_eq!(scan.offset, 10_004);
    }
}
