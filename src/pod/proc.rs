//! Processes the runtime tracks by pid *and* start time (field 22 of `/proc/<pid>/stat`), so
//! liveness comes from the kernel, not from a state file, and a recycled pid is never
//! signalled by mistake.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A process as recorded in `state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRef {
    pub pid: u32,
    /// Clock ticks after boot at which it started.
    pub start_time: u64,
}

/// Whether a `/proc` state letter is a zombie's or a dead task's.
fn dead(state: char) -> bool {
    matches!(state, 'Z' | 'X')
}

/// What `/proc/<pid>/stat` says of a task: its state letter, its flags and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    flags: u64,
    start: u64,
}

/// The kernel's `PF_EXITING`: the task is in `do_exit` (set before its files, and with them
/// a VMM's TAP and sockets, are released; it becomes a zombie only after).
const PF_EXITING: u64 = 0x4;

/// Parses a `/proc/<pid>/stat` line.
fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the state; flags are field 9, the 6th after it.
    let flags = fields.nth(5)?.parse().ok()?;
    // Start time is field 22, the 13th after the flags.
    let start = fields.nth(12)?.parse().ok()?;
    Some(Stat {
        state,
        flags,
        start,
    })
}

/// How far a process that is ending has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitPhase {
    /// A SIGKILL is pending; it has not begun its exit (not yet scheduled since the kill).
    Killed,
    /// In its exit: `PF_EXITING`, or a zombie leader whose threads still run theirs.
    Exiting,
}

/// How long a killed process may take to begin its exit before [`ProcessRef::settle_exit`]
/// stops waiting for it: a SIGKILL is acted on as soon as the process is scheduled, so more
/// is an uninterruptible sleep, which a repair should not wait out on every command.
const KILLED_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// `/proc/<pid>/stat` of `pid`, if it is there.
fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether a `/proc/<pid>/status` text shows a SIGKILL pending for the thread group or the
/// task (set by kill(2) before it returns; the group's stays until the group is reaped).
fn sigkill_pending(status: &str) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    status.lines().any(|l| {
        let Some((key, value)) = l.split_once(':') else {
            return false;
        };
        matches!(key, "ShdPnd" | "SigPnd")
            && u64::from_str_radix(value.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
    })
}

impl ProcessRef {
    /// The live process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<ProcessRef> {
        stat(pid).map(|s| ProcessRef {
            pid,
            start_time: s.start,
        })
    }

    /// Running (not a zombie) and still the process that was recorded.
    pub fn is_alive(&self) -> bool {
        match stat(self.pid) {
            Some(s) if s.start == self.start_time => !dead(s.state) || self.threads_still_exiting(),
            _ => false,
        }
    }

    /// Going but not yet gone: killed (a SIGKILL pending), in its exit (`PF_EXITING`), or a
    /// zombie leader whose other threads still run their exit. A killed multi-threaded VMM
    /// is in one of these while it tears down its guest memory and VM fds, after its TAP and
    /// sockets may have closed; a `ps` reading it then must wait, not take it for running.
    pub fn is_exiting(&self) -> bool {
        self.exit_phase().is_some()
    }

    /// Where in its end the process is, if it is ending (see [`ProcessRef::is_exiting`]).
    fn exit_phase(&self) -> Option<ExitPhase> {
        match stat(self.pid) {
            Some(s) if s.start == self.start_time => {
                if dead(s.state) {
                    self.threads_still_exiting().then_some(ExitPhase::Exiting)
                } else if s.flags & PF_EXITING != 0 {
                    Some(ExitPhase::Exiting)
                } else {
                    std::fs::read_to_string(format!("/proc/{}/status", self.pid))
                        .is_ok_and(|t| sigkill_pending(&t))
                        .then_some(ExitPhase::Killed)
                }
            }
            _ => None,
        }
    }

    /// Waits, until `deadline`, for an exiting process (`is_exiting`) to finish; a live or a
    /// gone one returns at once. True when it is no longer exiting. A killed process that
    /// has not begun its exit after [`KILLED_GRACE`] (stuck in an uninterruptible sleep,
    /// where the kill waits too) is not waited for further: false.
    pub fn settle_exit(&self, deadline: std::time::Instant) -> bool {
        let killed_until = std::time::Instant::now() + KILLED_GRACE;
        while let Some(phase) = self.exit_phase() {
            let now = std::time::Instant::now();
            if now >= deadline || (phase == ExitPhase::Killed && now >= killed_until) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    /// Whether threads of a zombie leader still run (a killed multi-threaded VMM: its leader
    /// is a zombie before the others are done, and its fds, locks and cgroup membership go
    /// only with the last of them).
    fn threads_still_exiting(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return false;
        };
        tasks.flatten().any(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next()?.chars().next())
                .is_some_and(|s| !dead(s))
        })
    }

    /// Sends `sig` if this is still the recorded process; `false` when it is gone.
    pub fn signal(&self, sig: i32) -> bool {
        if !self.is_alive() {
            return false;
        }
        // SAFETY: kill(2) with a pid checked a moment ago; the window for reuse in between
        // is a pid wrap-around within microseconds.
        unsafe { libc::kill(self.pid as libc::pid_t, sig) == 0 }
    }

    /// Blocks until the process is gone (its exit, not its reaping).
    pub fn wait_exit(&self) {
        self.wait_until_gone(None);
    }

    /// Waits until the process is gone or `timeout` passes; true when gone.
    pub fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        self.wait_until_gone(Some(timeout))
    }

    /// Woken by the process's exit through a pidfd where the kernel has them (5.3+), else
    /// by looking every [`GONE_PAUSE`].
    fn wait_until_gone(&self, timeout: Option<std::time::Duration>) -> bool {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::time::Instant;
        let deadline = timeout.map(|t| Instant::now() + t);
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::pid_t, 0) };
        // SAFETY: the kernel just returned this fd; nothing else owns it. (The pid may have
        // gone, or been reused, before the open: `is_alive` below checks the start time.)
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) });
        while self.is_alive() {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return false;
            }
            let Some(fd) = &pidfd else {
                std::thread::sleep(left.map_or(GONE_PAUSE, |l| l.min(GONE_PAUSE)));
                continue;
            };
            let ms = left.map_or(-1, |l| {
                i32::try_from(l.as_millis().max(1)).unwrap_or(i32::MAX)
            });
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd of ours, count 1.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready > 0 && self.is_alive() {
                // Readable while alive: a pid reused after the open; no event will come.
                std::thread::sleep(GONE_PAUSE);
            }
        }
        true
    }
}

/// The pause between looks at a process that has no pidfd to wait on.
const GONE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Live processes whose command line mentions `dir` (a container directory): the VMM and
/// its helpers take their sockets and disks from there (and name the VM's socket in their
/// argv[0]). `rm` sweeps
/// them so nothing outlives a monitor that was itself killed.
pub fn processes_using(dir: &Path) -> Vec<ProcessRef> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .filter_map(ProcessRef::of)
        .filter(ProcessRef::is_alive)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sleep SECONDS` child and its record.
    fn sleeping(seconds: &str) -> (std::process::Child, ProcessRef) {
        let child = std::process::Command::new("sleep")
            .arg(seconds)
            .spawn()
            .unwrap();
        let p = ProcessRef::of(child.id()).unwrap();
        (child, p)
    }

    #[test]
    fn wait_exit_returns_when_the_process_ends() {
        let (mut child, p) = sleeping("0.2");
        let t = std::time::Instant::now();
        p.wait_exit();
        assert!(t.elapsed() >= std::time::Duration::from_millis(150));
        child.wait().unwrap();
        // Gone already: at once.
        p.wait_exit();
    }

    #[test]
    fn wait_gone_is_woken_by_the_exit_and_gives_up_at_its_timeout() {
        use std::time::{Duration, Instant};
        let (mut child, p) = sleeping("5");
        let t = Instant::now();
        assert!(!p.wait_gone(Duration::from_millis(100)));
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        let killer = std::thread::spawn({
            let pid = child.id() as libc::pid_t;
            move || {
                std::thread::sleep(Duration::from_millis(50));
                // SAFETY: kill(2) of our own unreaped child; no memory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let t = Instant::now();
        assert!(p.wait_gone(Duration::from_secs(30)));
        // Woken by the exit, not by a pause (the fallback looks every 20 ms).
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        killer.join().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessRef::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let other = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        assert!(!other.signal(0));
    }

    #[test]
    fn a_reaped_child_is_gone_and_a_zombie_is_dead() {
        let (mut child, r) = sleeping("5");
        assert!(r.is_alive());
        assert!(r.signal(libc::SIGKILL));
        // Not reaped yet: a zombie, which must count as dead.
        assert!(r.wait_gone(std::time::Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!r.is_alive());
    }

    #[test]
    fn a_leader_gone_before_its_threads_is_exiting_and_alive_until_they_end() {
        // The leader leaves by exit(2) (60 on x86_64: this thread only) while a thread
        // sleeps on for 1.5 s, as a killed VMM's leader goes before its vCPU threads.
        let script = "import ctypes, threading, time\n\
                      threading.Thread(target=time.sleep, args=(1.5,)).start()\n\
                      time.sleep(0.2)\n\
                      ctypes.CDLL(None).syscall(60, 0)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .spawn()
            .expect("python3 runs");
        let r = ProcessRef::of(child.id()).expect("child is there");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !r.is_exiting() {
            assert!(
                std::time::Instant::now() < deadline,
                "leader never exited alone"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(r.is_alive(), "its thread still runs: alive");
        assert!(r.settle_exit(std::time::Instant::now() + std::time::Duration::from_secs(5)));
        assert!(!r.is_exiting());
        assert!(!r.is_alive(), "all its threads ended: gone");
        child.wait().unwrap();
    }

    #[test]
    fn a_killed_process_is_exiting_from_the_moment_kill_returns() {
        // Read at once, before the child has run its exit: never "alive and not exiting".
        for _ in 0..30 {
            let (mut child, r) = sleeping("5");
            assert!(!r.is_exiting(), "a sleeping process is not exiting");
            assert!(r.signal(libc::SIGKILL));
            assert!(
                r.is_exiting() || !r.is_alive(),
                "killed, yet alive and not exiting"
            );
            assert!(r.settle_exit(std::time::Instant::now() + std::time::Duration::from_secs(5)));
            assert!(!r.is_alive(), "settled after a kill: gone");
            child.wait().unwrap();
        }
    }

    #[test]
    fn stat_and_status_are_read_past_odd_command_names() {
        let line = "42 (a ) b (c) S 1 42 42 0 -1 4194564 9 0 0 0 1 2 0 0 20 0 3 0 777 1 2";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.state, s.start), ('S', 777));
        assert_ne!(s.flags & PF_EXITING, 0);
        assert!(parse_stat("42 (x) S 1").is_none());
        assert!(sigkill_pending(
            "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n"
        ));
        assert!(!sigkill_pending(
            "SigPnd:\t0000000000000002\nShdPnd:\t0000000000000000\n"
        ));
        assert!(!sigkill_pending("ShdPnd:\tnot-hex\n"));
    }

    #[test]
    fn finds_processes_by_path_in_their_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        // `; true` keeps sh from exec'ing sleep, so its command line keeps the marker.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 5; true")
            .arg(&marker)
            .spawn()
            .unwrap();
        // spawn() returns once the child's exec has begun, a moment before /proc shows its
        // new command line: poll briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found = processes_using(dir.path());
            if found.iter().any(|p| p.pid == child.id()) || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(found.iter().any(|p| p.pid == child.id()), "{found:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
