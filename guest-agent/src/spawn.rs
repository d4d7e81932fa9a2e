//! Starts the init helper (`/proc/self/exe init`) with `posix_spawn`, which glibc runs as
//! `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the agent's address space until its
//! `execve` instead of copying the page tables of a multi-threaded agent (and making every
//! page it then writes copy-on-write), as `fork` does. Under QEMU's TCG the helper's spawn
//! took 13-16 ms with `fork`, 5-6 with this.
//!
//! The fds land where the helper expects them ([`crate::process`]): stdio as 0-2, the sync
//! socket as 3, the config pipe as 4, each placed by a `dup2` file action. Every source is
//! first duplicated above [`FIRST_SOURCE_FD`] (close-on-exec, so the copies never reach the
//! child), so placing one cannot clobber another whatever numbers the caller's fds have.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::stdio::ChildStdio;

/// The lowest fd a source is moved to before the file actions run: above every target (0-4).
const FIRST_SOURCE_FD: RawFd = 10;

/// The program the helper is.
const HELPER: &CStr = c"/proc/self/exe";

/// Runs `/proc/self/exe init` with `stdio` as fds 0-2, `sync` as 3 and `config` as 4, an
/// empty environment, no blocked signals and `SIGPIPE` at its default. `spare`: `init
/// spare`, a helper started ahead of need that takes its real stdio from the sync socket
/// first ([`crate::process`]); started from the agent's idle-priority thread, it comes up
/// at idle priority and leaves it once taken. Returns the child's pid once it has exec'd
/// (an exec failure is the error).
pub fn helper(
    stdio: &ChildStdio,
    sync: RawFd,
    config: RawFd,
    spare: bool,
) -> io::Result<libc::pid_t> {
    let args: &[&CStr] = if spare {
        &[c"init", c"spare"]
    } else {
        &[c"init"]
    };
    run(HELPER, args, stdio, sync, config)
}

/// [`helper`]'s spawn for any `program` and `args` (argv[0] is `program`).
fn run(
    program: &CStr,
    args: &[&CStr],
    stdio: &ChildStdio,
    sync: RawFd,
    config: RawFd,
) -> io::Result<libc::pid_t> {
    let sources = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
        sync,
        config,
    ];
    let mut high = Vec::with_capacity(sources.len());
    for fd in sources {
        // SAFETY: F_DUPFD_CLOEXEC only duplicates `fd`, a descriptor the caller keeps open.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_SOURCE_FD) };
        if d < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl just returned `d`, a new descriptor nothing else owns.
        high.push(unsafe { OwnedFd::from_raw_fd(d) });
    }
    let mut actions = FileActions::new()?;
    for (target, src) in high.iter().enumerate() {
        actions.dup2(src.as_raw_fd(), target as RawFd)?;
    }
    let attr = SpawnAttr::new()?;
    let argv: Vec<*const libc::c_char> = std::iter::once(program.as_ptr())
        .chain(args.iter().map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp = [std::ptr::null::<libc::c_char>()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is live for the call: `pid` is written, program, argv and envp are
    // NULL-terminated arrays of NUL-terminated strings, and `actions` / `attr` were
    // initialised by their constructors. posix_spawn does not keep any of them.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            actions.as_ptr(),
            attr.as_ptr(),
            argv.as_ptr().cast(),
            envp.as_ptr().cast(),
        )
    };
    check(rc).map(|()| pid)
}

/// `Err` for a nonzero return of a posix_spawn function (the error number itself).
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// A heap `T` initialised by `init` (a posix_spawn `*_init`), which the caller must destroy.
fn boxed<T>(init: unsafe extern "C" fn(*mut T) -> libc::c_int) -> io::Result<Box<T>> {
    let mut b = Box::new(MaybeUninit::<T>::uninit());
    // SAFETY: init writes an initial value into the live, boxed storage.
    check(unsafe { init(b.as_mut_ptr()) })?;
    // SAFETY: init succeeded, so the storage holds an initialised T; MaybeUninit<T> has T's
    // layout, so the box may be reinterpreted.
    Ok(unsafe { Box::from_raw(Box::into_raw(b).cast()) })
}

/// An initialised `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(Box<libc::posix_spawn_file_actions_t>);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        boxed(libc::posix_spawn_file_actions_init).map(FileActions)
    }

    fn dup2(&mut self, from: RawFd, to: RawFd) -> io::Result<()> {
        // SAFETY: the action list is initialised (new) and only appended to here.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut *self.0, from, to) })
    }

    fn as_ptr(&self) -> *const libc::posix_spawn_file_actions_t {
        &*self.0
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: the list was initialised by new and is destroyed once, here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut *self.0) };
    }
}

/// A `posix_spawnattr_t` that empties the child's signal mask and sets `SIGPIPE` (which the
/// Rust runtime ignores) back to its default, as `std::process::Command` does.
struct SpawnAttr(Box<libc::posix_spawnattr_t>);

impl SpawnAttr {
    fn new() -> io::Result<SpawnAttr> {
        let mut attr = boxed(libc::posix_spawnattr_init).map(SpawnAttr)?;
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        let mut pipe = MaybeUninit::<libc::sigset_t>::uninit();
        let a = &mut *attr.0;
        let flags = (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
        // SAFETY: sigemptyset / sigaddset write into the live sigset_t storage they are given;
        // the setters copy the initialised sets into `a`, which is initialised.
        unsafe {
            libc::sigemptyset(empty.as_mut_ptr());
            libc::sigemptyset(pipe.as_mut_ptr());
            libc::sigaddset(pipe.as_mut_ptr(), libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(a, empty.as_ptr()))?;
            check(libc::posix_spawnattr_setsigdefault(a, pipe.as_ptr()))?;
            check(libc::posix_spawnattr_setflags(a, flags))?;
        }
        Ok(attr)
    }

    fn as_ptr(&self) -> *const libc::posix_spawnattr_t {
        &*self.0
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: the attributes were initialised by new and are destroyed once, here.
        unsafe { libc::posix_spawnattr_destroy(&mut *self.0) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;

    use super::run;
    use crate::stdio::ChildStdio;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into `fds`, a live [c_int; 2].
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are fresh and owned by nothing else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    fn wait(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid writes the status of our own child into a live c_int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// How the child's /proc/self/fd names `pipe`.
    fn name(pipe: &std::fs::File) -> String {
        format!("pipe:[{}]", pipe.metadata().unwrap().ino())
    }

    /// Each source lands on its own target and on no other fd (the copies above 10 stay
    /// behind); no signal is blocked, and SIGPIPE (which the test harness ignores) is back at
    /// its default.
    #[test]
    fn fds_land_on_0_to_4_and_nowhere_else() {
        // The config pipe first: it gets the lowest free numbers (3 and 4 where they are free),
        // so placing the sync socket on 3 would clobber it without the copies above 10.
        let (cfg_r, mut cfg_w) = pipe();
        let (in_r, mut in_w) = pipe();
        let (mut out_r, out_w) = pipe();
        let (mut err_r, err_w) = pipe();
        let (mut sync_r, sync_w) = pipe();
        in_w.write_all(b"from-stdin\n").unwrap();
        drop(in_w);
        cfg_w.write_all(b"from-config\n").unwrap();
        drop(cfg_w);
        let expected = [
            (name(&in_r), "0"),
            (name(&out_w), "1"),
            (name(&err_w), "2"),
            (name(&sync_w), "3"),
            (name(&cfg_r), "4"),
        ];
        let stdio = ChildStdio {
            stdin: OwnedFd::from(in_r),
            stdout: OwnedFd::from(out_w),
            stderr: OwnedFd::from(err_w),
        };
        let script = c"read a; echo \"$a\"; cat <&4; echo to-sync >&3; echo to-err >&2; \
            ls -l /proc/self/fd; exec grep -E '^Sig(Blk|Ign)' /proc/self/status";
        let pid = run(
            c"/bin/sh",
            &[c"-c", script],
            &stdio,
            sync_w.as_raw_fd(),
            cfg_r.as_raw_fd(),
        )
        .unwrap();
        drop((stdio, sync_w, cfg_r));
        assert_eq!(wait(pid), 0);
        let mut out = String::new();
        out_r.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        err_r.read_to_string(&mut err).unwrap();
        let mut sync = String::new();
        sync_r.read_to_string(&mut sync).unwrap();
        assert_eq!(err, "to-err\n");
        assert_eq!(sync, "to-sync\n");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..2], ["from-stdin", "from-config"]);
        // grep's own status: the mask and dispositions sh was given and passed on through exec.
        let sig = |name: &str| {
            let l = lines.iter().find_map(|l| l.strip_prefix(name)).unwrap();
            u64::from_str_radix(l.trim(), 16).unwrap()
        };
        assert_eq!(sig("SigBlk:"), 0, "{out}");
        // Others the test's own parent ignored stay ignored.
        assert_eq!(sig("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
        // `ls -l` lines end in "FD -> TARGET" (ls is sh's child: the same fds, and its own
        // handle on the directory). fds the test process itself inherited without
        // close-on-exec may be listed too; they are none of these pipes.
        let listed: Vec<(&str, &str)> = lines
            .iter()
            .filter_map(|l| l.split_once(" -> "))
            .filter_map(|(a, target)| a.rsplit(' ').next().map(|fd| (fd, target)))
            .collect();
        for (pipe, fd) in &expected {
            let at: Vec<&str> = listed
                .iter()
                .filter(|(_, t)| t == pipe)
                .map(|(f, _)| *f)
                .collect();
            assert_eq!(at, [*fd], "{pipe} in the child: {out}");
        }
    }

    #[test]
    fn an_exec_failure_is_the_error() {
        let (r, w) = pipe();
        let stdio = ChildStdio {
            stdin: OwnedFd::from(r),
            stdout: OwnedFd::from(w.try_clone().unwrap()),
            stderr: OwnedFd::from(w),
        };
        let fd = stdio.stdin.as_raw_fd();
        let e = run(c"/nonexistent/helper", &[], &stdio, fd, fd).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
