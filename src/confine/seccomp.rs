//! seccomp filters for husk-vmm's threads: one per [`ThreadKind`], compiled once by
//! [`prepare`] and installed by each thread, with [`install`], before it touches guest memory
//! or a guest-controlled fd.
//!
//! A forbidden syscall ends husk-vmm: the filter traps it (`SECCOMP_RET_TRAP`), and the
//! SIGSYS handler writes one line naming the thread kind, its tid and the syscall, then ends
//! the whole process with [`EXIT_CODE`]. A thread cannot escape that: the filters forbid
//! `rt_sigaction` (so the handler stays), and the kernel delivers a seccomp SIGSYS even when
//! it is blocked. [`Mode::Log`] only logs (`SECCOMP_RET_LOG`, to the kernel's audit log):
//! for finding what a new path needs, never for production.
//!
//! Filters stack: a thread inherits its creator's filters and adds its own. Only the spawner
//! thread ([`super::threads`]) creates threads once the VM runs, and it parses nothing the
//! guest sends, so a vCPU that handles a guest's MMIO write never needs `clone`.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

use super::syscalls;
pub use super::thread_kind::ThreadKind;

/// husk-vmm's exit status after a forbidden syscall: 128 + SIGSYS, as a shell reports a
/// process that SIGSYS killed.
pub const EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// The syscall every thread kind's self-test makes: harmless, and allowed to none of them.
const SELFTEST_SYSCALL: libc::c_long = libc::SYS_uname;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp filter for the {kind} thread: {source}")]
    Compile {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    #[error("seccomp filters were prepared twice")]
    Twice,
}

/// What a forbidden syscall does.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// End husk-vmm with one line naming the thread and the syscall.
    #[default]
    Kill,
    /// Let it through and have the kernel log it (audit, `dmesg`): debugging only.
    Log,
    /// No filters at all.
    Off,
}

struct Filters {
    programs: HashMap<ThreadKind, BpfProgram>,
    /// `clone3` → ENOSYS, so glibc falls back to `clone`, whose flags a filter can check.
    clone3_enosys: BpfProgram,
    selftest: Option<ThreadKind>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

thread_local! {
    // Const-initialised and Drop-free: the SIGSYS handler reads it.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Compiles every thread kind's filter (and installs the SIGSYS handler) for this process.
/// `fast_exit` allows the main thread the one fork of [`crate::vmm::teardown::exit_now`].
/// `selftest`: that kind's threads make a forbidden syscall right after installing their
/// filter, for the tests that prove each filter is live. Off: nothing is installed later.
pub fn prepare(mode: Mode, fast_exit: bool, selftest: Option<ThreadKind>) -> Result<(), Error> {
    let mismatch = match mode {
        Mode::Off => return Ok(()),
        Mode::Kill => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    let mut programs = HashMap::new();
    for kind in ThreadKind::ALL {
        let rules =
            syscalls::rules(kind, fast_exit).map_err(|source| Error::Compile { kind, source })?;
        let program = compile(rules, mismatch.clone(), SeccompAction::Allow)
            .map_err(|source| Error::Compile { kind, source })?;
        programs.insert(kind, program);
    }
    let clone3 = [(libc::SYS_clone3, vec![])].into_iter().collect();
    let clone3_enosys = compile(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
    .map_err(|source| Error::Compile {
        kind: ThreadKind::Spawner,
        source,
    })?;
    if mode == Mode::Kill {
        install_sigsys_handler()?;
    }
    // One malloc arena: glibc reads /proc/sys/vm/overcommit_memory the first time a thread
    // makes a new arena (measured: the 7th device worker of a 16-layer image, in its start-up),
    // and no filter allows opening files. husk-vmm allocates little on its data paths.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    FILTERS
        .set(Filters {
            programs,
            clone3_enosys,
            selftest,
        })
        .map_err(|_| Error::Twice)
}

/// Confines the calling thread (and every thread it starts later) to `syscalls`, and to
/// each `(syscall, argument, value)` of `only_with` when that 32-bit argument has that
/// value: any other syscall kills the whole process at once (`SECCOMP_RET_KILL_PROCESS`, no
/// handler, no line). For small single-purpose helpers whose death only costs their user a
/// fallback (the VM template's RAM keeper); the caller must have `no_new_privs` set.
pub fn allow_only(syscalls: &[i64], only_with: &[(i64, u8, u64)]) -> Result<(), AllowOnlyError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
    let mut rules = syscalls::Rules::new();
    syscalls::allow(&mut rules, syscalls);
    for &(n, arg, value) in only_with {
        let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .map_err(AllowOnlyError::Compile)?;
        let rule = SeccompRule::new(vec![cond]).map_err(AllowOnlyError::Compile)?;
        rules.entry(n).or_default().push(rule);
    }
    let program = compile(rules, SeccompAction::KillProcess, SeccompAction::Allow)
        .map_err(AllowOnlyError::Compile)?;
    seccompiler::apply_filter(&program).map_err(AllowOnlyError::Install)
}

/// Why [`allow_only`] installed no filter.
#[derive(Debug, thiserror::Error)]
pub enum AllowOnlyError {
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
}

fn compile(
    rules: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)?.try_into()
}

/// Installs `kind`'s filter on the calling thread. Does nothing in a process that did not
/// [`prepare`] filters (the library's own tests, a VMM run with `--seccomp off`).
pub fn install(kind: ThreadKind) -> Result<(), Error> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    let _ = KIND.try_with(|k| k.set(Some(kind)));
    if kind == ThreadKind::Spawner {
        seccompiler::apply_filter(&filters.clone3_enosys)
            .map_err(|source| Error::Install { kind, source })?;
    }
    let program = &filters.programs[&kind];
    seccompiler::apply_filter(program).map_err(|source| Error::Install { kind, source })?;
    if filters.selftest == Some(kind) {
        // SAFETY: uname with a null buffer only returns EFAULT when allowed; the filter is
        // meant to stop it before that.
        unsafe { libc::syscall(SELFTEST_SYSCALL, std::ptr::null_mut::<libc::c_void>()) };
    }
    Ok(())
}

/// [`install`], or end the process with one line: a thread must never run unfiltered
/// once husk-vmm asked for filters.
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        eprintln!("husk-vmm: {e}");
        // SAFETY: _exit ends the process at once; nothing is left to flush.
        unsafe { libc::_exit(1) };
    }
}

/// Whether this process runs with filters (for tests and the probe).
pub fn active() -> bool {
    FILTERS.get().is_some()
}

fn install_sigsys_handler() -> Result<(), Error> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is an extern "C" fn
    // of the three-argument form SA_SIGINFO asks for.
    let rc = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Offset, in `i32`s, of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: after si_signo,
/// si_errno, si_code, padding and the 8-byte `si_call_addr`.
const SI_SYSCALL_OFFSET: usize = 6;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler; for SIGSYS the
    // syscall number is the i32 at SI_SYSCALL_OFFSET.
    let nr = unsafe { *(info as *const i32).add(SI_SYSCALL_OFFSET) } as i64;
    let kind = KIND.try_with(|k| k.get()).ok().flatten();
    // SAFETY: gettid takes no arguments.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let mut line = Line::new();
    line.push(b"husk-vmm: seccomp: the ");
    line.push(kind.map_or("starting", ThreadKind::name).as_bytes());
    line.push(b" thread (tid ");
    line.number(tid);
    line.push(b") made a forbidden syscall: ");
    line.number(nr);
    line.push(b" (");
    line.push(
        super::syscall_names::name(nr)
            .unwrap_or("unknown")
            .as_bytes(),
    );
    line.push(b"); stopping the VM\n");
    // SAFETY: write and exit_group are async-signal-safe and allowed to every thread kind;
    // the buffer is a live local.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, EXIT_CODE);
    }
}

/// A fixed buffer the signal handler formats into without allocating.
struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 200],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = v.saturating_neg();
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in ThreadKind::ALL {
            for fast_exit in [false, true] {
                let rules = syscalls::rules(kind, fast_exit).unwrap();
                assert!(
                    !rules.contains_key(&SELFTEST_SYSCALL),
                    "{kind} allows uname"
                );
                let p = compile(rules, SeccompAction::Trap, SeccompAction::Allow).unwrap();
                assert!(!p.is_empty());
            }
        }
    }

    #[test]
    fn line_formats_numbers_without_allocating() {
        let mut l = Line::new();
        l.push(b"x ");
        l.number(0);
        l.push(b" ");
        l.number(-42);
        l.push(b" ");
        l.number(i64::MAX);
        assert_eq!(&l.buf[..l.len], b"x 0 -42 9223372036854775807");
        let mut full = Line::new();
        full.push(&[b'a'; 300]);
        assert_eq!(full.len, 200);
    }
}
