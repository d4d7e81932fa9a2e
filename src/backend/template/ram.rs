//! A VM template's RAM, one copy in host memory for all its clones.
//!
//! The template VM's guest RAM is a memfd (`memory-backend-file,share=on` over
//! `/proc/self/fd/N`), saved after the VM into the template's `ram` file, sparse (holes for
//! the pages the guest never wrote or left zero). A clone's QEMU maps the RAM `share=off`
//! from a memfd holding that file: pages the clone only reads are the memfd's, the same
//! physical pages in every clone; a page it writes becomes its own copy.
//!
//! That memfd is sealed (no write, no resize, no further seals) before any QEMU sees it:
//! QEMU 7.2 opens its `mem-path` read-write even with `share=off`, and through a sealed
//! memfd a VM that took over its QEMU can still change nothing any other clone maps.
//!
//! One `husk-template-ram` process per template (the keeper, [`serve`]) holds the sealed
//! memfd and hands it to each clone over the template's `ram.sock` (in the root-only
//! templates directory). A clone that finds no keeper fills a new memfd from the `ram` file
//! and starts one; the keeper leaves when its template is removed or after [`KEEPER_IDLE`]
//! without a clone, taking nothing from the clones that map its memfd.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::backend::child;
use crate::confine::launch;
use crate::flock::FileLock;
use crate::util::fs;

/// The keeper's program, and the variable that names another.
pub const KEEPER_PROGRAM: &str = "husk-template-ram";
pub const KEEPER_ENV: &str = "HUSK_TEMPLATE_RAM";
/// A keeper with no clone asking for this long leaves (the next clone starts another).
pub const KEEPER_IDLE: Duration = Duration::from_secs(600);
/// How often a keeper looks whether its template is still there.
const KEEPER_CHECK: Duration = Duration::from_secs(2);

/// The saved RAM, the keeper's socket, the identity of the memfd it holds, and the lock
/// under which a keeper is started, in a template's directory.
pub const RAM_FILE: &str = "ram";
const SOCKET: &str = "ram.sock";
const ID_FILE: &str = "ram.id";
const LOCK: &str = "ram.lock";

/// The guest page: the unit the saved RAM leaves out when zero.
const PAGE: usize = 4096;
/// How much is read at a time while copying RAM.
const CHUNK: usize = 1 << 20;

/// The seals of a template's RAM: its content and size fixed for good.
fn seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// Why a template's RAM could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the template's RAM memfd: {0}")]
    Memfd(#[source] io::Error),
    #[error("the template's RAM from its keeper is not the one it was given ({0})")]
    Foreign(String),
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RamError {
    let path = path.to_path_buf();
    move |source| RamError::File { what, path, source }
}

/// A new memfd of `len` bytes (all zero, no page allocated) that can be sealed later.
pub fn new_memfd(len: u64) -> Result<File, RamError> {
    let fd = memfd_create(
        c"husk-template-ram",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| RamError::Memfd(e.into()))?;
    let f = File::from(fd);
    f.set_len(len).map_err(RamError::Memfd)?;
    Ok(f)
}

/// Writes the RAM in `memfd` to `path`, sparse: only its pages that are not zero.
/// Returns the bytes written.
pub fn save(memfd: &File, path: &Path) -> Result<u64, RamError> {
    let len = memfd.metadata().map_err(RamError::Memfd)?.len();
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err("creating", path))?;
    let written = copy_nonzero_pages(memfd, &out, len).map_err(file_err("writing", path))?;
    out.set_len(len).map_err(file_err("writing", path))?;
    out.sync_all().map_err(file_err("writing", path))?;
    Ok(written)
}

/// Copies the pages of `from` (its first `len` bytes) that hold anything but zeros to the
/// same offsets of `to`, skipping `from`'s holes. Returns the bytes copied.
fn copy_nonzero_pages(from: &File, to: &File, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0;
    for extent in fs::data_extents(from, len)? {
        let mut pos = extent.start;
        while pos < extent.end {
            let n = ((extent.end - pos) as usize).min(CHUNK);
            from.read_exact_at(&mut buf[..n], pos)?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    to.write_all_at(page, pos + (i * PAGE) as u64)?;
                    copied += page.len() as u64;
                }
            }
            pos += n as u64;
        }
    }
    Ok(copied)
}

/// A sealed memfd holding the RAM saved at `path`, `len` bytes.
fn load(path: &Path, len: u64) -> Result<File, RamError> {
    let saved = File::open(path).map_err(file_err("opening", path))?;
    let size = saved.metadata().map_err(file_err("reading", path))?.len();
    if size != len {
        return Err(RamError::File {
            what: "reading",
            path: path.to_path_buf(),
            source: io::Error::other(format!("{size} bytes where the VM has {len}")),
        });
    }
    let memfd = new_memfd(len)?;
    // The file is as sparse as the RAM `save` wrote: its data extents are what to copy.
    fs::sparse_copy(&saved, &memfd).map_err(file_err("reading", path))?;
    seal(&memfd)?;
    Ok(memfd)
}

/// Seals `memfd` for good. `F_SEAL_WRITE` answers `EBUSY` while a page of it has a reference
/// the kernel's own wait (~150 ms) did not see go; that was seen once, with nothing else
/// holding the memfd, so it is tried a few times more before the VM boots instead.
fn seal(memfd: &File) -> Result<(), RamError> {
    let mut tries = 0;
    loop {
        match fcntl(memfd, FcntlArg::F_ADD_SEALS(seals())) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if tries < 4 => {
                tries += 1;
                tracing::debug!(tries, "sealing the template's RAM: busy; trying again");
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => return Err(RamError::Memfd(e.into())),
        }
    }
}

/// What names a memfd for as long as it exists: its device and inode.
fn identity(f: &File) -> io::Result<String> {
    let m = f.metadata()?;
    Ok(format!("{}:{}", m.dev(), m.ino()))
}

/// Whether `f` is the template's RAM: sealed for good, `len` bytes, the memfd `id` names.
fn check(f: &File, len: u64, id: &str) -> Result<(), RamError> {
    let sealed = fcntl(f, FcntlArg::F_GET_SEALS)
        .map(|s| SealFlag::from_bits_truncate(s).contains(seals()))
        .unwrap_or(false);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let its = identity(f).unwrap_or_default();
    if !sealed || size != len || its != id {
        return Err(RamError::Foreign(format!(
            "sealed {sealed}, {size} bytes, {its} where {id} was given"
        )));
    }
    Ok(())
}

/// The sealed RAM of the template at `at` (`len` bytes): from its keeper, or loaded from
/// its `ram` file and handed to a keeper started from the program `keeper` finds (asked
/// only then; without one, this VM alone uses it).
pub fn obtain(
    at: &Path,
    len: u64,
    keeper: impl FnOnce() -> Option<PathBuf>,
) -> Result<File, RamError> {
    if let Some(f) = from_keeper(at, len) {
        return Ok(f);
    }
    let lock_path = at.join(LOCK);
    let _lock = FileLock::exclusive(&lock_path).map_err(file_err("locking", &lock_path))?;
    // Another VM may have started one while this one waited.
    if let Some(f) = from_keeper(at, len) {
        return Ok(f);
    }
    let memfd = load(&at.join(RAM_FILE), len)?;
    match keeper() {
        Some(program) => {
            if let Err(e) = start_keeper(&program, at, &memfd) {
                tracing::debug!(template = %at.display(), "no keeper for the template's RAM: {e}");
            }
        }
        None => tracing::debug!(
            template = %at.display(),
            "no {KEEPER_PROGRAM}: this VM's template RAM is its own"
        ),
    }
    Ok(memfd)
}

/// The RAM from the template's keeper, if one answers with the memfd it was given.
fn from_keeper(at: &Path, len: u64) -> Option<File> {
    let sock = UnixStream::connect(at.join(SOCKET)).ok()?;
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let (_, fd) = husk_fdpass::recv_fd(sock.as_raw_fd(), 16).ok()?;
    let f = File::from(fd?);
    let id = std::fs::read_to_string(at.join(ID_FILE)).ok()?;
    match check(&f, len, id.trim()) {
        Ok(()) => Some(f),
        Err(e) => {
            tracing::warn!(template = %at.display(), "not using the template's RAM: {e}");
            None
        }
    }
}

/// Starts a keeper for `memfd` on the template at `at`: its socket bound here (replacing a
/// dead keeper's), the memfd's identity written beside it. The keeper runs detached, as an
/// id of husk's range leased for its life (no VM or other keeper shares it, so none may
/// signal or trace it), with no capability and `no_new_privs`; it gets the memfd, the
/// listening socket, the template's directory (it leaves once that is removed) and its
/// lease, and nothing else.
fn start_keeper(program: &Path, at: &Path, memfd: &File) -> Result<(), RamError> {
    let lease = launch::lease_ids().map_err(file_err(
        "leasing an id in",
        Path::new(launch::ID_LEASE_DIR),
    ))?;
    // The identity first: a clone that connects as soon as the socket is bound checks the
    // memfd it gets against it.
    let id_path = at.join(ID_FILE);
    let id = identity(memfd).map_err(RamError::Memfd)?;
    fs::write_atomic(&id_path, id.as_bytes()).map_err(file_err("writing", &id_path))?;
    let sock_path = at.join(SOCKET);
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path).map_err(file_err("binding", &sock_path))?;
    let dir = File::open(at).map_err(file_err("opening", at))?;
    let fds: [(OwnedFd, i32); 4] = [
        (dup(memfd)?, KEEPER_RAM_FD),
        (listener.into(), KEEPER_SOCKET_FD),
        (dir.into(), KEEPER_DIR_FD),
        (dup(lease.lock_file())?, KEEPER_LEASE_FD),
    ];
    let mut cmd = Command::new(program);
    cmd.arg(format!("--ram-fd={KEEPER_RAM_FD}"))
        .arg(format!("--socket-fd={KEEPER_SOCKET_FD}"))
        .arg(format!("--dir-fd={KEEPER_DIR_FD}"))
        .arg(format!("--lease-fd={KEEPER_LEASE_FD}"))
        .arg(format!("--idle-secs={}", KEEPER_IDLE.as_secs()))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .uid(lease.ids.uid)
        .gid(lease.ids.gid);
    // SAFETY: only async-signal-safe calls (sigprocmask, setsid, prctl) between fork and exec
    // (run after the switch to the leased id, whose groups std clears).
    unsafe {
        cmd.pre_exec(|| {
            // It outlives husk: none of husk's blocked signals.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::setsid();
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // `fds` stay open here until the spawn returns.
    child::inherit_fds(
        &mut cmd,
        fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect(),
    );
    // SAFETY: close_range only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Nothing else of husk's (a pipe of whoever ran husk would stay open for as long
            // as the keeper lives): close-on-exec rather than closed now, so the spawn's own
            // pipe still reports a failed exec.
            let cloexec = |from: i32, to: libc::c_uint| {
                libc::syscall(
                    libc::SYS_close_range,
                    from as libc::c_uint,
                    to,
                    libc::CLOSE_RANGE_CLOEXEC,
                )
            };
            if cloexec(3, (KEEPER_RAM_FD - 1) as libc::c_uint) != 0
                || cloexec(KEEPER_LEASE_FD + 1, libc::c_uint::MAX) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut keeper = cmd.spawn().map_err(file_err("starting", program))?;
    tracing::debug!(pid = keeper.id(), template = %at.display(), "template RAM keeper started");
    // Reaped here if it leaves while this process lives; else by whoever inherits it.
    std::thread::spawn(move || keeper.wait());
    Ok(())
}

/// Where a keeper finds the memfd, its listening socket, its template's directory and its
/// id's lease. High, clear of the stdio and of the pipe a spawn reports exec failures
/// through.
const KEEPER_RAM_FD: i32 = 100;
const KEEPER_SOCKET_FD: i32 = 101;
const KEEPER_DIR_FD: i32 = 102;
const KEEPER_LEASE_FD: i32 = 103;

fn dup(f: &File) -> Result<OwnedFd, RamError> {
    f.as_fd().try_clone_to_owned().map_err(RamError::Memfd)
}

/// Every syscall a keeper makes once it serves ([`serve`], then its exit): waiting
/// (`poll`, or `ppoll` where libc uses it), accepting and answering a clone (`accept4`,
/// `sendmsg`, `close`), looking at its directory (`statx`, or `fstat`/`newfstatat`), the
/// clock (where the vDSO falls back to the syscall), its one line on a failure (`write`,
/// with what an allocation may need), and leaving (the runtime's `sigaltstack` + `munmap`,
/// `exit_group`).
const KEEPER_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_sendmsg,
    libc::SYS_close,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_clock_gettime,
    libc::SYS_write,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Confines a keeper to [`KEEPER_SYSCALLS`] (and `fcntl(fd, F_GETFD)`, which Rust's
/// debug builds make before closing a descriptor) before it serves: a keeper that a bug led
/// astray can open, execute, signal or trace nothing; any other syscall kills it (the next
/// clone then starts another).
pub fn confine_keeper() -> Result<(), crate::confine::seccomp::AllowOnlyError> {
    let getfd = (libc::SYS_fcntl, 1, libc::F_GETFD as u64);
    crate::confine::seccomp::allow_only(KEEPER_SYSCALLS, &[getfd])
}

/// The keeper's work: hands `ram` to every connection on `listener` (one byte and the
/// descriptor), until the directory `dir` is removed or no one asked for `idle`.
pub fn serve(ram: &File, listener: &UnixListener, dir: &File, idle: Duration) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let check = PollTimeout::try_from(KEEPER_CHECK).unwrap_or(PollTimeout::MAX);
    let mut last = Instant::now();
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let ready = match poll(&mut fds, check) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => false,
            Err(e) => return Err(e.into()),
        };
        if ready {
            if let Ok((conn, _)) = listener.accept() {
                // A client that went away already is no reason to stop.
                let _ = husk_fdpass::send_fd(conn.as_raw_fd(), b"R", ram.as_raw_fd());
                last = Instant::now();
            }
        }
        if dir.metadata()?.nlink() == 0 || last.elapsed() > idle {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
