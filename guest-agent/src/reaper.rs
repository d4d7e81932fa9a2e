//! PID 1's duty: reap every child, ours or orphaned, and hand exit statuses to whoever
//! waits for them.
//!
//! One thread blocks in `waitpid(-1)`. Processes the agent runs are registered with
//! [`watch`]; a status that arrives before its pid is registered (a process that failed
//! during setup, faster than its spawner) is kept until claimed, so no status is lost. Nothing
//! else in the agent may call `wait*`: it would steal statuses from this thread.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use husk_protocol::ExitStatus;

/// Statuses of pids nobody registered (orphans re-parented to PID 1) kept at most.
const MAX_UNCLAIMED: usize = 1024;

/// Where a process's exit status lands.
#[derive(Default)]
pub struct ExitCell {
    status: Mutex<Option<ExitStatus>>,
    cv: Condvar,
}

impl ExitCell {
    /// Blocks until the process has exited.
    pub fn wait(&self) -> ExitStatus {
        let mut s = lock(&self.status);
        loop {
            if let Some(st) = *s {
                return st;
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn get(&self) -> Option<ExitStatus> {
        *lock(&self.status)
    }

    fn set(&self, st: ExitStatus) {
        *lock(&self.status) = Some(st);
        self.cv.notify_all();
    }
}

#[derive(Default)]
struct State {
    watched: HashMap<i32, Arc<ExitCell>>,
    unclaimed: HashMap<i32, ExitStatus>,
}

struct Reaper {
    state: Mutex<State>,
    /// Signalled when a child may exist, so the thread stops idling on ECHILD.
    children: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| Reaper {
        state: Mutex::new(State::default()),
        children: Condvar::new(),
    })
}

/// Starts the reaping thread.
pub fn start() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(run)?;
    Ok(())
}

/// Registers `pid`: its exit status will land in the returned cell.
pub fn watch(pid: i32) -> Arc<ExitCell> {
    let r = reaper();
    let mut st = lock(&r.state);
    let cell = Arc::new(ExitCell::default());
    if let Some(status) = st.unclaimed.remove(&pid) {
        cell.set(status);
    } else {
        st.watched.insert(pid, cell.clone());
    }
    r.children.notify_all();
    cell
}

fn run() {
    let r = reaper();
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes the status into `raw`, a live c_int, and touches no other
        // memory of ours.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::__WALL) };
        if pid > 0 {
            let status = decode(raw);
            let mut st = lock(&r.state);
            if let Some(cell) = st.watched.remove(&pid) {
                cell.set(status);
            } else {
                if st.unclaimed.len() >= MAX_UNCLAIMED {
                    st.unclaimed.clear();
                }
                st.unclaimed.insert(pid, status);
            }
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            // No children: idle until one may exist (or briefly, for orphans adopted from
            // elsewhere, which nobody announces).
            _ => {
                let st = lock(&r.state);
                let _ = r.children.wait_timeout(st, Duration::from_millis(200));
            }
        }
    }
}

/// A wait status as a shell reports it: the code, or 128+N for death by signal N.
pub fn decode(raw: i32) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        ExitStatus::signaled(libc::WTERMSIG(raw))
    } else {
        ExitStatus::exited(libc::WEXITSTATUS(raw))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_as_a_shell_reports_them() {
        assert_eq!(decode(7 << 8), ExitStatus::exited(7));
        assert_eq!(decode(libc::SIGTERM), ExitStatus::signaled(15));
        assert_eq!(decode(libc::SIGTERM).code, 143);
    }

    #[test]
    fn a_status_reaped_before_its_watch_is_kept() {
        let r = reaper();
        lock(&r.state)
            .unclaimed
            .insert(999_999, ExitStatus::exited(3));
        assert_eq!(watch(999_999).get(), Some(ExitStatus::exited(3)));
    }
}
