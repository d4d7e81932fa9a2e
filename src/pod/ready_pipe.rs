//! A front-end re-executing itself as a long-lived process (`husk`'s container monitor,
//! `husk-runtime`'s VM holder and exec holder), in a session of its own, with the write end
//! of a pipe as fd [`READY_FD`] named by an environment variable. The child answers one line
//! on it: `ok` once it is up, or why it failed; end of file without a line means it died.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// The fd number the child finds the pipe's write end under.
pub const READY_FD: i32 = 3;

/// Spawns `cmd` in a new session with the pipe's write end as [`READY_FD`], named by
/// `env_var`; returns the child and the read end (give it to [`read_answer`]).
pub fn spawn(mut cmd: Command, env_var: &str) -> std::io::Result<(Child, File)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2, owned here and nowhere else.
    let (read_end, write_end) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    cmd.env(env_var, READY_FD.to_string());
    let wfd = write_end.into_raw_fd();
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (setsid, dup2, fcntl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 leaves the new fd without CLOEXEC, so it survives the exec; when the pipe
            // already is READY_FD (this process started with fd 3 closed), dup2 would do
            // nothing and CLOEXEC would stay: clear it instead.
            let kept = if wfd == READY_FD {
                libc::fcntl(wfd, libc::F_SETFD, 0)
            } else {
                libc::dup2(wfd, READY_FD)
            };
            if kept < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // SAFETY: our copy of the write end, taken out of its File above; the child has its own.
    unsafe { libc::close(wfd) };
    Ok((spawned?, read_end))
}

/// The child's one-line answer: `Ok` for `ok`, `Err(None)` for end of file without a line
/// (it died without saying why), else `Err(Some(what it said))`.
pub fn read_answer(read_end: File) -> Result<(), Option<String>> {
    let mut answer = String::new();
    let _ = BufReader::new(read_end).read_line(&mut answer);
    match answer.trim() {
        "ok" => Ok(()),
        "" => Err(None),
        msg => Err(Some(msg.to_string())),
    }
}

/// The child's end of the pipe: answers once, `ok` or why not. The default has no pipe (a
/// process nobody waits for).
#[derive(Debug, Default)]
pub struct Reporter(Option<File>);

impl Reporter {
    /// Takes the pipe the parent named in `env_var` (once per process; the variable is
    /// removed). Without it (run by hand) the reports go nowhere.
    pub fn take(env_var: &str) -> Reporter {
        let fd = std::env::var(env_var)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        std::env::remove_var(env_var);
        // Only an open pipe is taken: a variable inherited by a process that was not handed
        // the fd must not make it close (or write into) a file of its own.
        let is_pipe = |fd: i32| {
            // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat writes one stat into `st`, a live local of that type; a closed fd
            // only makes it fail.
            let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
            ok && st.st_mode & libc::S_IFMT == libc::S_IFIFO
        };
        Reporter(fd.filter(|fd| is_pipe(*fd)).map(|fd| {
            // SAFETY: an open pipe the parent passed for this process alone; ownership is taken
            // once (the variable is gone). Close-on-exec keeps it from the VMM and helpers
            // spawned later, which would otherwise hold the parent's read end open.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                File::from_raw_fd(fd)
            }
        }))
    }

    /// Whether the parent waits for an answer.
    pub fn is_waited_for(&self) -> bool {
        self.0.is_some()
    }

    /// Tells the parent all is well; later reports go nowhere.
    pub fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"ok\n");
        }
    }

    /// Tells the parent why not, on one line; later reports go nowhere. Returns whether the
    /// parent was there to hear it.
    pub fn fail(&mut self, why: &str) -> bool {
        match self.0.take() {
            Some(mut f) => {
                let _ = writeln!(f, "{}", why.replace('\n', " "));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(script: &str) -> Result<(), Option<String>> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        let (mut child, read_end) = spawn(cmd, "HUSK_TEST_READY_FD").unwrap();
        let answer = read_answer(read_end);
        child.wait().unwrap();
        answer
    }

    #[test]
    fn a_reporter_answers_once_on_one_line_and_takes_only_a_pipe() {
        use std::io::Read;
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array we pass.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the read end, fresh from pipe2, owned here alone.
        let mut read_end = unsafe { File::from_raw_fd(fds[0]) };
        std::env::set_var("HUSK_TEST_REPORTER_FD", fds[1].to_string());
        let mut r = Reporter::take("HUSK_TEST_REPORTER_FD");
        assert!(std::env::var_os("HUSK_TEST_REPORTER_FD").is_none());
        assert!(r.is_waited_for());
        assert!(r.fail("no\nkernel"));
        r.ok();
        assert!(!r.fail("again"));
        drop(r);
        let mut got = String::new();
        read_end.read_to_string(&mut got).unwrap();
        assert_eq!(got, "no kernel\n");
        // A variable naming a file that is not a pipe (or nothing open) is ignored.
        let file = tempfile::tempfile().unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&file);
        std::env::set_var("HUSK_TEST_REPORTER_FD", n.to_string());
        assert!(!Reporter::take("HUSK_TEST_REPORTER_FD").is_waited_for());
        std::env::set_var("HUSK_TEST_REPORTER_FD", "1000000");
        assert!(!Reporter::take("HUSK_TEST_REPORTER_FD").is_waited_for());
    }

    #[test]
    fn the_child_answers_on_the_named_fd_in_its_own_session() {
        assert_eq!(
            child(
                r#"[ "$HUSK_TEST_READY_FD" = 3 ] && [ "$(cut -d' ' -f6 /proc/$$/stat)" -eq $$ ] && echo ok >&3"#
            ),
            Ok(())
        );
        assert_eq!(child("echo 'no kernel' >&3"), Err(Some("no kernel".into())));
        assert_eq!(child("exit 1"), Err(None));
    }
}
