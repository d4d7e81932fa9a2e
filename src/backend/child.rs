//! The child processes a VM is made of: spawning them, waiting for and killing them from any
//! thread ([`Guarded`]), what to clean up besides the main process ([`Leftovers`]), their
//! stdio, and where the helper binaries are.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use super::Error;
use crate::util::fs::{is_executable, which};

/// Makes each `(from, to)` of `fds` descriptor `to` of `cmd`'s child, inheritable; the
/// parent must keep every `from` open until the spawn returns. Runs between fork and exec
/// after any `pre_exec` registered before it.
pub(super) fn inherit_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    use std::os::unix::process::CommandExt;
    if fds.is_empty() {
        return;
    }
    let above = fds.iter().map(|&(_, to)| to + 1).max().unwrap_or(0);
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec, on
    // descriptors the parent keeps open until the spawn returns (the caller's promise).
    unsafe {
        cmd.pre_exec(move || {
            // Every source first moved above every target (close-on-exec), so that placing
            // one cannot overwrite another not yet placed; dup2 then clears close-on-exec.
            // Just above the highest target: F_DUPFD fails past the open-files limit (1024
            // by default).
            let mut moved = [0 as RawFd; 64];
            if fds.len() > moved.len() {
                return Err(io::Error::from_raw_os_error(libc::EMFILE));
            }
            for (m, &(from, _)) in moved.iter_mut().zip(&fds) {
                *m = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, above);
                if *m < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (&m, &(_, to)) in moved.iter().zip(&fds) {
                if libc::dup2(m, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A child process that any thread may wait for or kill through `&self`.
///
/// Waiting happens in two steps so `kill` never races with the reaping: `waitid(WNOWAIT)`
/// blocks without the lock until the child has exited (leaving it a zombie, so its pid cannot
/// be reused), then the lock is taken to reap it and record the status.
pub(super) struct Guarded {
    program: String,
    pid: u32,
    /// Leads a process group of its own, which `kill` ends whole (see [`Guarded::spawn_group`]).
    group: bool,
    state: Mutex<GuardState>,
}

struct GuardState {
    child: Child,
    status: Option<ExitStatus>,
}

impl Guarded {
    pub fn spawn(program: &str, cmd: &mut Command) -> Result<Guarded, Error> {
        Guarded::start(program, cmd, false)
    }

    /// [`spawn`](Self::spawn) as the leader of a new process group, for a daemon that forks
    /// (virtiofsd's sandbox): `kill` then ends the whole group at once, so a child forked a
    /// moment before its parent is killed (before it could arm its parent-death signal)
    /// does not outlive it.
    pub fn spawn_group(program: &str, cmd: &mut Command) -> Result<Guarded, Error> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        Guarded::start(program, cmd, true)
    }

    fn start(program: &str, cmd: &mut Command, group: bool) -> Result<Guarded, Error> {
        let child = spawn_retrying(cmd).map_err(|source| Error::Spawn {
            program: program.to_string(),
            source,
        })?;
        Ok(Guarded {
            program: program.to_string(),
            pid: child.id(),
            group,
            state: Mutex::new(GuardState {
                child,
                status: None,
            }),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        // A panic while holding this lock leaves the state consistent (it only caches).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        let mut s = self.lock();
        if s.status.is_none() {
            s.status = s.child.try_wait()?;
        }
        Ok(s.status)
    }

    pub fn wait(&self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            wait_exited_no_reap(self.pid)?;
        }
    }

    /// SIGKILLs the child (its process group, for [`spawn_group`](Self::spawn_group)) if it
    /// still runs and reaps it.
    pub fn kill(&self) -> io::Result<ExitStatus> {
        let mut s = self.lock();
        if let Some(status) = s.status {
            return Ok(status);
        }
        if self.group {
            // Not reaped yet (a zombie at most), so the group id is still this leader's and
            // cannot name anyone else's processes.
            // SAFETY: killpg(2) with a process group id and a signal number; no memory.
            unsafe { libc::killpg(self.pid as libc::pid_t, libc::SIGKILL) };
        }
        if s.child.try_wait()?.is_none() {
            s.child.kill()?;
        }
        let status = s.child.wait()?;
        s.status = Some(status);
        Ok(status)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(program = %self.program, pid = self.pid, "cannot kill: {e}");
        }
    }
}

/// `cmd.spawn()`, retried briefly on ETXTBSY: a binary written a moment ago (a fresh build,
/// a copied VMM) can still have a writer in a process another thread is forking, and exec
/// fails until that child has exec'd too.
pub(super) fn spawn_retrying(cmd: &mut Command) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Blocks until `pid` has exited without reaping it. Returns at once if someone else reaped
/// it meanwhile (ECHILD); the caller then finds the status under the lock.
fn wait_exited_no_reap(pid: u32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is a plain C struct; all-zero bytes are a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, zeroed siginfo_t that waitid writes into; `pid` is our own
        // child, so no other waiter races us for it.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(()),
            _ => return Err(err),
        }
    }
}

/// What a VM leaves behind besides its main process: helpers to kill, files to remove.
/// Dropping it cleans up, so an early return while starting a VM leaks nothing either.
#[derive(Default)]
pub(super) struct Leftovers {
    pub helpers: Vec<Arc<Guarded>>,
    pub files: Vec<PathBuf>,
    /// The VMM's cgroup and id lease: released last, once its processes are gone.
    pub confinement: Option<crate::confine::launch::Confinement>,
}

impl Leftovers {
    pub fn add_helper(&mut self, helper: Guarded) {
        self.helpers.push(Arc::new(helper));
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        // Helpers first: they may hold the files open or recreate them. Killed explicitly: a
        // watcher thread may still hold a reference.
        for h in self.helpers.drain(..) {
            tracing::debug!(program = h.program(), pid = h.pid(), "stopping VM helper");
            if let Err(e) = h.kill() {
                tracing::warn!(program = %h.program(), pid = h.pid(), "cannot kill: {e}");
            }
        }
        for f in self.files.drain(..) {
            remove_if_exists(&f);
        }
    }
}

pub(super) fn remove_if_exists(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove: {e}");
        }
    }
}

/// Truncates the console log and returns a second, appending handle to it for a process's
/// stderr: the backend's diagnostics land after the guest output they relate to.
pub(super) fn open_console_log(path: &Path) -> Result<File, Error> {
    let err = |source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    // Owner-only: the guest's console may carry what the container printed. The mode is set
    // on the open file too: a log left by an earlier start (or an older husk) keeps the mode
    // it was created with.
    let log = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    log.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    OpenOptions::new().append(true).open(path).map_err(err)
}

/// stdin from /dev/null, stdout and stderr appended to `log`.
pub(super) fn quiet_stdio(cmd: &mut Command, log: &File, log_path: &Path) -> Result<(), Error> {
    let dup = || {
        log.try_clone().map_err(|source| Error::File {
            path: log_path.to_path_buf(),
            source,
        })
    };
    cmd.stdin(Stdio::null()).stdout(dup()?).stderr(dup()?);
    Ok(())
}

/// The program `$env_var` names, when it is set: it must be an executable.
pub(super) fn executable_from_env(env_var: &str) -> Option<Result<PathBuf, Error>> {
    let p = PathBuf::from(std::env::var_os(env_var)?);
    Some(if is_executable(&p) {
        Ok(p)
    } else {
        Err(Error::MissingProgram {
            program: p.display().to_string(),
            hint: format!("{env_var} does not name an executable"),
        })
    })
}

/// Finds a helper binary husk installs itself: `$env_var` when set (it must name an
/// executable), else the install script's place under the husk cache (`cached`), else `PATH`,
/// else the `fallbacks`. `hint` says how to install it.
pub(super) fn find_helper(
    env_var: &str,
    cached: &Path,
    name: &str,
    fallbacks: &[&str],
    hint: String,
) -> Result<PathBuf, Error> {
    if let Some(p) = executable_from_env(env_var) {
        return p;
    }
    if is_executable(cached) {
        return Ok(cached.to_path_buf());
    }
    which(name)
        .or_else(|| {
            fallbacks
                .iter()
                .map(PathBuf::from)
                .find(|p| is_executable(p))
        })
        .ok_or_else(|| Error::MissingProgram {
            program: name.into(),
            hint,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::proc::ProcessRef;
    use std::time::{Duration, Instant};

    /// Starts `sh` that forks a `sleep` and waits for it; the sleep's pid.
    fn forking_shell(group: bool) -> (Guarded, ProcessRef, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("sleep 100 & echo $! > \"$0.tmp\" && mv \"$0.tmp\" \"$0\"; wait")
            .arg(&pidfile);
        let g = match group {
            true => Guarded::spawn_group("sh", &mut cmd),
            false => Guarded::spawn("sh", &mut cmd),
        }
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "the shell never forked");
            std::thread::sleep(Duration::from_millis(5));
        };
        (g, ProcessRef::of(pid).expect("the forked sleep"), dir)
    }

    #[test]
    fn killing_a_group_leader_ends_what_it_forked() {
        let (g, forked, _dir) = forking_shell(true);
        g.kill().unwrap();
        assert!(
            forked.wait_gone(Duration::from_secs(5)),
            "{forked:?} outlived"
        );
    }

    #[test]
    fn killing_a_plain_child_leaves_what_it_forked() {
        // What spawn_group is for: without the group the fork outlives its parent.
        let (g, forked, _dir) = forking_shell(false);
        g.kill().unwrap();
        let outlived = !forked.wait_gone(Duration::from_millis(300));
        forked.signal(libc::SIGKILL);
        assert!(outlived);
    }
}
