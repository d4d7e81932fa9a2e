//! The nested-KVM rig (`scripts/nested-kvm.sh`) from the tests: commands run inside an L1
//! Linux under QEMU's TCG, whose emulated SVM gives it a hardware-virtualisation /dev/kvm.
//!
//! A test that needs a KVM able to boot a stock Linux guest starts with [`on_linux_kvm`]: on
//! a host whose own KVM can (`husk-vmm --probe` says yes) it runs directly; elsewhere (PVM,
//! no /dev/kvm) this same test binary re-runs just that test inside the rig, and the outer
//! test passes only if the inner one really ran and passed.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use husk::vmm::probe::HostProbe;

/// Set inside the rig when a test re-runs itself there.
pub const IN_RIG_ENV: &str = "HUSK_IN_NESTED_KVM";

/// The exit status `scripts/nested-kvm.sh run` uses for NOT RUN.
const NOT_RUN_STATUS: i32 = 3;

/// The exit status `scripts/nested-kvm.sh run` uses when L1's own kernel failed (a panic, an
/// oops, a soft lockup) under the command: TCG's emulated SVM breaking, not the command.
pub const L1_FAILED_STATUS: i32 = 126;

/// Runs of one command in the rig: a run broken by TCG's emulated SVM ([`emulation_fault`]) is
/// run again in a fresh L1, up to this many runs; any other failure gets one more run and no
/// more ([`retry_reason`]). Each retry is logged with the failed run's output and listed in
/// the suite's summary. Five, not three: CI on 2026-12-06 saw one test's L2 guest
/// triple-fault in three runs in a row (an oops at 3.9 s, then at its first console line),
/// the same test passing 14 of 14 runs on the development host, 6 of them beside two busy
/// loops; a known fault ends its run within seconds of happening (L1's lockup grace at most).
pub const RIG_ATTEMPTS: usize = 5;

/// Time for `prepare` (a first run downloads and unpacks the L1 kernel) and L1's boot and
/// power-off, on top of what the command itself may take.
const RIG_OVERHEAD: Duration = Duration::from_secs(240);

/// Appends "TEST SECONDS" to `$HUSK_RIG_TIME_LOG` (scripts/test.sh sums it: the rig's share of
/// the suite's time).
fn record_rig_time(test: &str, took: Duration) {
    super::append_to_log(
        "HUSK_RIG_TIME_LOG",
        &format!("{test} {:.1}", took.as_secs_f64()),
    );
}

/// Appends "RIG RETRY: TEST: REASON" to `$HUSK_RIG_RETRY_LOG` (scripts/test-summary.sh lists
/// them) and to stderr, with the whole output of the run that is retried.
fn record_rig_retry(test: &str, attempt: usize, reason: &str, out: &Output) {
    let line = format!(
        "RIG RETRY: {test}: attempt {attempt} of {RIG_ATTEMPTS}: {reason}; running it again in a fresh L1"
    );
    eprintln!(
        "{line}\n--- stdout:\n{}\n--- stderr:\n{}",
        super::text(&out.stdout),
        super::text(&out.stderr)
    );
    super::append_to_log("HUSK_RIG_RETRY_LOG", &line);
}

/// The text husk prints when a VM under test ended with status 0 before its guest came up,
/// having written nothing at all to its console: rendered from the backend's own error, so the
/// two cannot drift apart.
fn silent_reset_text() -> String {
    use std::os::unix::process::ExitStatusExt;
    let e = husk::backend::Error::ExitedBeforeReady {
        status: std::process::ExitStatus::from_raw(0),
        log: PathBuf::new(),
        last_line: None,
    };
    e.to_string()
}

/// Why the rig run `out` failed for TCG's emulated SVM rather than for its command, if it did:
/// - L1's own kernel failed (exit 126: a panic, an oops, a lockup, a stopped heartbeat);
/// - a QEMU `-accel kvm` guest in L1 reset before its kernel wrote a single line: QEMU exits 0
///   on a guest reset under `-no-reboot`, and the guest's kernel, initramfs and QEMU's
///   arguments are the same in every run, so only the emulated SVM under it varies (seen once
///   in CI in about 30 rig runs). husk-vmm reports a guest's triple fault on the console, so
///   its resets are never taken for this;
/// - an L2 guest of husk-vmm triple-faulted ([`husk_vmm_triple_fault_text`]). Seen in CI 2
///   times in 4 suites (CI and fresh-machine runs), at random points: before the
///   guest's first console line, and with the agent idle after its ready line; 0 in 70
///   `husk run`s of the same image in one L1 (35 confined, 35 with `HUSK_JAIL=off`), and
///   never in a QEMU TCG boot of the same kernel on the host. A silent triple fault (no oops
///   first) is a guest whose page tables or IDT went bad, which is what a stale nested-paging
///   TLB in TCG's SVM produces; a husk-vmm bug that does it every time still fails, below.
///
/// - an L2 guest whose vCPU loops inside L1's KVM with no exit to its VMM ([`L2_FAULT_LOOP`],
///   reported by L1 itself): its console stops mid-line, at random points of the boot, and the
///   test sees a guest that never came up. Measured 2026-12-05: a looped test in one L1
///   failed 4 times in 17 runs and 3 in 12 (with the triple faults); in such a stop L1's KVM
///   counted ~43,000 exits a second, each a guest page fault reflected back and an instruction
///   emulated, while husk-vmm's threads sat idle in `epoll_wait` and `futex`.
///
/// A failure that repeats in every attempt still fails the test, and every retry is listed
/// in the suite's summary (`RIG RETRY: ...`), so a rate that grows shows.
pub fn emulation_fault(out: &Output) -> Option<String> {
    let stderr = super::text(&out.stderr);
    if out.status.code() == Some(L1_FAILED_STATUS) {
        let line = stderr
            .lines()
            .find(|l| l.contains("L1's kernel failed"))
            .unwrap_or("L1's kernel failed")
            .trim_start_matches("nested-kvm: ");
        return Some(line.to_string());
    }
    if out.status.success() {
        return None;
    }
    // L1's own watch, written to the command's stderr (scripts/nested-kvm/stage2).
    if let Some(l) = stderr.lines().find(|l| l.contains(L2_FAULT_LOOP)) {
        return Some(format!(
            "an L2 guest stopped in a fault loop of TCG's SVM: {}",
            l.trim().trim_start_matches("nested-kvm L1: ")
        ));
    }
    let silent = silent_reset_text();
    let triple = husk_vmm_triple_fault_text();
    let stdout = super::text(&out.stdout);
    let mut lines = stderr.lines().chain(stdout.lines());
    lines.find_map(|l| {
        if l.contains(&silent) {
            Some(format!(
                "an L2 guest reset before its first console line: {}",
                l.trim()
            ))
        } else if l.contains(&triple) {
            Some(format!(
                "an L2 guest of husk-vmm triple-faulted under TCG's SVM: {}",
                l.trim()
            ))
        } else {
            None
        }
    })
}

/// What L1 writes to the command's stderr when an L2 vCPU loops inside its KVM without ever
/// exiting to its VMM (`l2_watch` in scripts/nested-kvm/stage2).
pub const L2_FAULT_LOOP: &str = "an L2 vCPU loops inside L1's KVM";

/// The start of the line husk-vmm prints when a guest triple-faults ("husk-vmm: guest triple
/// fault on vCPU N ..."), rendered from its own exit reason so the two cannot drift apart.
fn husk_vmm_triple_fault_text() -> String {
    let full = husk::vmm::exit::ExitReason::TripleFault { vcpu: 0 }.to_string();
    let upto = full.find(" 0").unwrap_or(full.len());
    format!("husk-vmm: {}", &full[..upto])
}

/// Whether rig run number `attempt` (from 1), whose output is `out`, is made again, and why;
/// `unexplained`: how many earlier runs failed with no known fault of the emulation. The
/// bool is true when the reason is a known fault ([`emulation_fault`]).
/// - A known fault: again, up to [`RIG_ATTEMPTS`] runs in all.
/// - Any other failure of the command: one more run in a fresh L1, and only one. Measured in
///   the suites of the last sessions: about one such failure per suite, each time on another
///   path of QEMU `-accel kvm` inside L1 (an exec holder that never reported, a `-v :ro`
///   container with no output from an L1 running at a third of its usual speed), none of
///   which repeated in 4 to 8 later runs. A failure that repeats still fails the test, and a
///   retried one shows in the summary as `RIG RETRY` with the first run's output.
/// - Success or NOT RUN: never.
pub fn retry_reason(out: &Output, attempt: usize, unexplained: usize) -> Option<(String, bool)> {
    if attempt >= RIG_ATTEMPTS || out.status.success() || out.status.code() == Some(NOT_RUN_STATUS)
    {
        return None;
    }
    if let Some(fault) = emulation_fault(out) {
        return Some((fault, true));
    }
    if unexplained > 0 {
        return None;
    }
    let stderr = super::text(&out.stderr);
    let stdout = super::text(&out.stdout);
    let first =
        panic_summary(&stderr, &stdout).unwrap_or_else(|| format!("status {:?}", out.status));
    Some((
        format!(
            "the command failed with no known fault of the emulation ({first}); one more run, \
             and a second failure fails"
        ),
        false,
    ))
}

/// The first panic in a run's output, as "panicked at FILE:LINE: MESSAGE", and, when its
/// message goes on for more lines (a guest's console tail after "did not come up"), the last
/// of them: where a guest that never answered stopped. The message ends where the stream
/// holding it does, or at what libtest or Rust print after a panic (its backtrace note,
/// another thread's panic, the failures list, the result). Bounded to 200 characters each,
/// so a retry's summary line shows it.
fn panic_summary(stderr: &str, stdout: &str) -> Option<String> {
    const MAX: usize = 200;
    const ENDS: [&str; 7] = [
        "note: ",
        "stack backtrace:",
        "thread '",
        "---- ",
        "failures:",
        "test result:",
        "error: test failed",
    ];
    let bounded = |l: &str| l.trim().chars().take(MAX).collect::<String>();
    let (lines, at) = [stderr, stdout].into_iter().find_map(|text| {
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| l.contains("panicked at"))?;
        Some((lines, at))
    })?;
    let message: Vec<&str> = lines[at + 1..]
        .iter()
        .copied()
        .take_while(|l| !ENDS.iter().any(|end| l.starts_with(end)))
        .collect();
    let mut said = format!(
        "{} {}",
        bounded(lines[at]),
        bounded(message.first().copied().unwrap_or_default())
    );
    if let Some(last) = message.iter().skip(1).rev().find(|l| !l.trim().is_empty()) {
        said.push_str(&format!("; its message's last line: {:?}", bounded(last)));
    }
    Some(said)
}

/// When `out` is the rig's NOT RUN (exit 3 with its one line), reports it for `test` (a
/// failure under CI=true: the host cannot run these tests any other way) and returns true.
pub fn reported_not_run(test: &str, out: &Output) -> bool {
    if out.status.code() != Some(NOT_RUN_STATUS) {
        return false;
    }
    let stdout = super::text(&out.stdout);
    let Some(line) = stdout
        .lines()
        .find(|l| l.starts_with("NOT RUN: nested-kvm: "))
    else {
        return false;
    };
    super::not_run(test, line.trim_start_matches("NOT RUN: "), true);
    true
}

/// True inside the rig (a test re-run by [`on_linux_kvm`]).
pub fn in_rig() -> bool {
    std::env::var_os(IN_RIG_ENV).is_some()
}

pub fn script() -> PathBuf {
    super::repo_root().join("scripts/nested-kvm.sh")
}

/// Runs `cmd` inside the rig (cwd: the repository root) with `env` added to what the script
/// passes on (PATH, HOME, HUSK_*, ...), L1 killed after `timeout`. Returns its output and
/// status, or None after reporting NOT RUN with the rig's one-line reason. A failed run is made
/// again as [`retry_reason`] says.
pub fn run_in_rig(
    test: &str,
    cmd: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Option<Output> {
    let command = || {
        let mut c = Command::new(script());
        c.arg("run")
            .arg("--timeout")
            .arg(timeout.as_secs().max(1).to_string())
            .arg("--cwd")
            .arg(super::repo_root());
        for (k, v) in env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        c.arg("--").args(cmd);
        c
    };
    // One L1 at a time per test binary: two of them on a 2-core host starve each other's
    // guests past their boot timeouts (measured: QEMU -accel kvm in L1 > 60 s to the agent
    // with three L1s up); the binary's other tests go on beside it.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut attempt = 1;
    let mut unexplained = 0;
    let out = loop {
        let started = std::time::Instant::now();
        let out = super::run_bounded(command(), None, timeout + RIG_OVERHEAD);
        record_rig_time(test, started.elapsed());
        let Some((reason, explained)) = retry_reason(&out, attempt, unexplained) else {
            break out;
        };
        if !explained {
            unexplained += 1;
        }
        record_rig_retry(test, attempt, &reason, &out);
        attempt += 1;
    };
    (!reported_not_run(test, &out)).then_some(out)
}

/// For a test that needs a KVM that can boot a stock Linux guest. Returns true when the
/// test should go on in this process: the host's KVM can (the probe says yes), or this is
/// already the rig. Otherwise returns false after running this test (`--exact test`) inside
/// the rig and asserting that it ran and passed there, or after reporting NOT RUN when
/// the rig cannot run; the caller then returns.
pub fn on_linux_kvm(test: &str, timeout: Duration) -> bool {
    let probe = HostProbe::run();
    if probe.can_run_linux_guests {
        return true;
    }
    assert!(
        !in_rig(),
        "{test}: inside the nested-KVM rig, but its KVM cannot run a Linux guest: {}",
        probe.reason
    );
    let exe = current_exe();
    eprintln!(
        "{test}: KVM here cannot run a stock Linux guest ({}); running it in the nested-KVM rig",
        probe.reason
    );
    if let Some(out) = run_in_rig(
        test,
        &rerun_args(&exe, &[test]),
        &[(IN_RIG_ENV, "1")],
        timeout,
    ) {
        judge_rerun(test, &out, "in the nested-KVM rig", 1);
    }
    false
}

fn current_exe() -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.to_str().expect("a UTF-8 test binary path").to_string()
}

/// libtest arguments that run exactly `tests` of this binary, output shown. --include-ignored:
/// a test that only one backend can run is #[ignore]d on the host and named by its rerun.
/// One test at a time: two L2 guests at once in L1 are what breaks TCG's emulated SVM
/// (measured with husk_runtime's four tests on QEMU -accel kvm: L1's kernel failed in 2 of 6
/// runs with two at a time, 0 of 6 with one, for ~20% more time).
fn rerun_args<'a>(exe: &'a str, tests: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        exe,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    args.extend_from_slice(tests);
    args
}

/// Judges a rerun of `n` tests `place` ("in the nested-KVM rig", "on this host"): the calling
/// test passes only if all of them ran and passed there; one that says NOT RUN there is
/// reported as NOT RUN here (a failure under CI=true), never as a pass.
fn judge_rerun(test: &str, out: &Output, place: &str, n: usize) {
    let stdout = super::text(&out.stdout);
    let stderr = super::text(&out.stderr);
    let inner = format!("--- stdout {place}:\n{stdout}\n--- stderr {place}:\n{stderr}");
    let not_run: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.starts_with("NOT RUN: "))
        .collect();
    if !not_run.is_empty() {
        super::not_run(test, &format!("{place}: {}", not_run.join("; ")), true);
        return;
    }
    let want = format!("test result: ok. {n} passed; 0 failed");
    assert!(
        out.status.success() && stdout.contains(&want),
        "{test}: {place} (status {:?}), expected `{want}`:\n{inner}",
        out.status
    );
    eprintln!("{test}: {n} tests passed {place}");
    for line in stdout.lines().filter(|l| l.starts_with("test ")) {
        eprintln!("  {line}");
    }
}

/// A VM backend on a KVM that boots stock Linux guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmBackend {
    /// husk's own VMM (`HUSK_VMM=husk`).
    HuskVmm,
    /// QEMU microvm with `-accel kvm` (`HUSK_VMM=qemu HUSK_QEMU_ACCEL=kvm`).
    QemuKvm,
}

impl KvmBackend {
    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            KvmBackend::HuskVmm => &[("HUSK_VMM", "husk")],
            KvmBackend::QemuKvm => &[("HUSK_VMM", "qemu"), ("HUSK_QEMU_ACCEL", "kvm")],
        }
    }
}

/// Runs the named tests of this test binary (`--exact`) again on `backend`: in a child
/// process where the host's own KVM boots stock Linux, inside the nested-KVM rig elsewhere.
/// The calling test passes only if every one of them ran there and passed; one that says
/// NOT RUN there is reported as NOT RUN here (a failure under CI=true), never as a pass.
pub fn rerun_on_kvm_backend(test: &str, backend: KvmBackend, tests: &[&str], timeout: Duration) {
    let exe = current_exe();
    let args = rerun_args(&exe, tests);
    let mut env: Vec<(&str, &str)> = backend.env().to_vec();
    env.push((IN_RIG_ENV, "1"));
    let probe = HostProbe::run();
    if probe.can_run_linux_guests {
        let mut c = Command::new(&exe);
        c.args(&args[1..]).envs(env.iter().copied());
        let out = super::run_bounded(c, None, timeout);
        judge_rerun(
            test,
            &out,
            &format!("on {backend:?} on this host"),
            tests.len(),
        );
    } else {
        eprintln!(
            "{test}: KVM here cannot run a stock Linux guest ({}); running {} tests on {backend:?} \
             in the nested-KVM rig",
            probe.reason,
            tests.len()
        );
        if let Some(out) = run_in_rig(test, &args, &env, timeout) {
            judge_rerun(
                test,
                &out,
                &format!("on {backend:?} in the nested-KVM rig"),
                tests.len(),
            );
        }
    }
}

/// How long the reruns of one test file on one backend may take (L1's boot included).
pub const RERUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Two tests, `$husk` and `$qemu`, that re-run the named tests of this test file on husk-vmm
/// and on QEMU `-accel kvm` ([`rerun_on_kvm_backend`]).
#[macro_export]
macro_rules! on_kvm_backends {
    ($husk:ident => $husk_tests:expr, $qemu:ident => $qemu_tests:expr $(,)?) => {
        #[test]
        fn $husk() {
            common::rig::rerun_on_kvm_backend(
                stringify!($husk),
                common::rig::KvmBackend::HuskVmm,
                $husk_tests,
                common::rig::RERUN_TIMEOUT,
            );
        }

        #[test]
        fn $qemu() {
            common::rig::rerun_on_kvm_backend(
                stringify!($qemu),
                common::rig::KvmBackend::QemuKvm,
                $qemu_tests,
                common::rig::RERUN_TIMEOUT,
            );
        }
    };
}
