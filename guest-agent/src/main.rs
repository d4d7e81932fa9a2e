//! husk-agent: PID 1 of a husk microVM.
//!
//! It brings the guest up (mounts), prints `HUSK-AGENT-READY` and facts about the guest on the
//! console, then serves the host over vsock port 1024 ([`server`]): containers built from the
//! disks the host names ([`rootfs`]), each process created through a re-executed
//! single-threaded helper (`husk-agent init`: [`process`] on the agent side, [`init`] in the
//! helper), stdio relayed on stream connections ([`stdio`], [`pty`]), every child reaped
//! ([`reaper`]). Built with the `selftest` feature (the test initramfs,
//! `SELFTEST=1 scripts/build-initramfs.sh`), `husk.selftest=1` on the kernel command line makes
//! it run the syscall-surface self-test instead and end the VM; the production PID 1 carries
//! no self-test. Run as an ordinary program (not PID 1) it skips the mounts and the power-off
//! and only reports (`husk-agent [--selftest] [--serve]`).
//!
//! PID 1 must never panic (a panic is a kernel panic), so every step reports its failure on
//! the console and the agent carries on.

#![deny(clippy::undocumented_unsafe_blocks)]

/// Writes one line to stdout (the console when PID 1), ignoring write errors: there is
/// nowhere else to report them and PID 1 must not die over a console hiccup.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

mod caps;
mod cgroup;
mod channel;
mod console;
mod container;
mod facts;
mod gpt;
mod init;
mod mounts;
mod net;
mod netlink;
mod oom;
mod overlay_mount;
mod power;
mod process;
mod pty;
mod reaper;
mod restore;
mod rootfs;
mod seccomp;
#[cfg(feature = "selftest")]
mod selftest;
mod server;
mod spawn;
mod stdio;
mod steps;
mod syscalls;
mod vsock;

/// Printed once the guest is up; host-side tests and the VMM wait for it.
pub const READY_MARKER: &str = husk_protocol::GUEST_READY_MARKER;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("init") {
        init::main();
    }
    let pid1 = std::process::id() == 1;
    if pid1 {
        mounts::mount_early();
        console::ensure_stdio();
    } else {
        say!(
            "husk-agent: not PID 1 (pid {}): skipping mounts and power-off",
            std::process::id()
        );
    }

    let cmdline = facts::kernel_cmdline();
    let selftest = (pid1 && cmdline_flag(&cmdline, "husk.selftest"))
        || std::env::args().any(|a| a == "--selftest");
    if selftest || (!pid1 && !std::env::args().any(|a| a == "--serve")) {
        say!("{READY_MARKER}");
        facts::report();
        if selftest {
            run_selftest(pid1);
        }
        if pid1 {
            power::off();
        }
        return;
    }
    serve();
}

/// The syscall-surface self-test; outside PID 1 a failure is the exit status.
#[cfg(feature = "selftest")]
fn run_selftest(pid1: bool) {
    let summary = selftest::run(pid1);
    if !pid1 && summary.fail > 0 {
        std::process::exit(1);
    }
}

/// A production agent asked for the self-test says it has none (and, as PID 1, still ends
/// the VM below, so a test that booted the wrong initramfs fails at once, not at a timeout).
#[cfg(not(feature = "selftest"))]
fn run_selftest(pid1: bool) {
    say!(
        "husk-agent: the self-test was asked for, but this agent was built without it \
         (build the test initramfs: SELFTEST=1 scripts/build-initramfs.sh)"
    );
    if !pid1 {
        std::process::exit(1);
    }
}

/// Serves the host over vsock until told to power off; says it is ready once it listens.
fn serve() -> ! {
    // A pump writing to a pipe whose reader is gone must get EPIPE, not kill PID 1.
    // SAFETY: signal() only changes this process's disposition of SIGPIPE; SIG_IGN is a valid
    // disposition and no Rust code relies on SIGPIPE's default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Orphans are reparented to PID 1; elsewhere (tests) become their reaper all the same.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if let Err(e) = reaper::start() {
        say!("husk-agent: cannot start the reaper: {e}");
    }
    cgroup::init();
    oom::init();
    // `localhost` works in every container, networked or not.
    if let Err(e) = net::configure(None) {
        say!("husk-agent: cannot bring lo up: {e}");
    }
    // Ready means serving: the port is bound before the marker, so the host's first connect
    // is taken at once. The facts are printed beside the server, off the host's path: only
    // on a CPU the requests leave idle (measured under QEMU's TCG, two runs of 15 interleaved
    // rounds: the host's connect and `Hello` 27 -> 20 ms).
    let listener = server::listen();
    say!("{READY_MARKER}");
    if std::thread::Builder::new()
        .name("facts".into())
        .spawn(|| {
            facts::idle_priority();
            // Before the facts' end: a VM template is saved once they are out.
            if let Err(e) = process::prepare_spare() {
                say!("husk-agent: no spare init helper: {e}");
            }
            facts::report()
        })
        .is_err()
    {
        facts::report();
    }
    server::run(listener, std::sync::Arc::new(container::Agent::default()))
}

/// True when the kernel command line has `name=1` (or `name=y`, `name=true`, or bare `name`).
fn cmdline_flag(cmdline: &str, name: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|arg| match arg.split_once('=') {
            Some((k, v)) => k == name && matches!(v, "1" | "y" | "yes" | "true" | "on"),
            None => arg == name,
        })
}

#[cfg(test)]
mod tests {
    use super::cmdline_flag;

    #[test]
    fn cmdline_flag_parses_values() {
        let c = "console=ttyS0 husk.selftest=1 quiet";
        assert!(cmdline_flag(c, "husk.selftest"));
        assert!(cmdline_flag(c, "quiet"));
        assert!(!cmdline_flag("husk.selftest=0", "husk.selftest"));
        assert!(!cmdline_flag("xhusk.selftest=1", "husk.selftest"));
        assert!(!cmdline_flag("", "husk.selftest"));
    }
}
