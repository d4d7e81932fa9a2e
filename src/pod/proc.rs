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

/// State letter and start time of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 3.. here; start time is field 22, i.e. the 20th after the state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcessRef {
    /// The live process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<ProcessRef> {
        stat(pid).map(|(_, start_time)| ProcessRef { pid, start_time })
    }

    /// Running (not a zombie) and still the process that was recorded.
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((s, t)) if t == self.start_time && s != 'Z' && s != 'X')
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

    /// Polls until the process is gone or `timeout` passes; true when gone.
    pub fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.is_alive() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }
}

/// Live processes whose command line mentions `dir` (a container directory): the VMM and
/// its helpers take their sockets and disks from there (vhost-device-vsock, whose sockets
/// live elsewhere, names the VM's socket in its argv[0]). `rm` sweeps
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
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let r = ProcessRef::of(child.id()).unwrap();
        assert!(r.is_alive());
        assert!(r.signal(libc::SIGKILL));
        // Not reaped yet: a zombie, which must count as dead.
        assert!(r.wait_gone(std::time::Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!r.is_alive());
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
