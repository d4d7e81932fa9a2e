//! The nested-KVM rig's own contract (`scripts/nested-kvm.sh run`), which every husk-vmm and
//! QEMU `-accel kvm` test on a PVM host relies on: a command's output and status come back;
//! an L1 kernel that fails under the command is reported as that (status 126, with its first
//! report), never as the command's failure; an L1 that outlives its limit is ended (status 124)
//! and leaves no QEMU behind; and a directory shared with --rw is written through.
//!
//! NOT RUN (a failure under CI=true) only where the rig itself cannot run, with its reason.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::rig::{
    emulation_fault, reported_not_run, retry_reason, L1_FAILED_STATUS as L1_FAILED, RIG_ATTEMPTS,
};

/// `scripts/nested-kvm.sh run`'s status for an L1 past its limit (see its header).
const TIMED_OUT: i32 = 124;

/// Runs `sh -c SCRIPT` in the rig with `--timeout limit`, once (no retry: these tests judge
/// the rig itself); None after reporting NOT RUN.
fn rig(test: &str, extra: &[&str], script: &str, limit: u64) -> Option<Output> {
    let mut c = Command::new(common::rig::script());
    c.args(["run", "--timeout", &limit.to_string()])
        .args(extra)
        .args(["--", "sh", "-c", script]);
    let out = common::run_bounded(c, None, Duration::from_secs(limit + 240));
    (!reported_not_run(test, &out)).then_some(out)
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        common::text(&out.stdout),
        common::text(&out.stderr)
    )
}

#[test]
fn rig_returns_the_commands_output_status_and_writes() {
    let test = "rig_returns_the_commands_output_status_and_writes";
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().to_str().unwrap();
    let script = format!(
        "test -c /dev/kvm || exit 9; echo to-stdout; echo to-stderr >&2; \
         echo written-in-l1 > {dir}/f; echo scratch > /etc/husk-rig-scratch; exit 7"
    );
    let Some(out) = rig(test, &["--rw", dir], &script, 300) else {
        return;
    };
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    assert_eq!(common::text(&out.stdout), "to-stdout\n", "{}", show(&out));
    assert!(
        common::text(&out.stderr).contains("to-stderr"),
        "{}",
        show(&out)
    );
    // --rw is written through; everything else lands in L1's tmpfs overlay only.
    assert_eq!(
        std::fs::read_to_string(shared.path().join("f")).unwrap(),
        "written-in-l1\n"
    );
    assert!(!std::path::Path::new("/etc/husk-rig-scratch").exists());
    // A failed command brings L1's word on its guests with it, and is the command's failure.
    assert!(
        common::text(&out.stderr).contains("nested-kvm L1: kernel messages about KVM"),
        "{}",
        show(&out)
    );
    assert_eq!(emulation_fault(&out), None, "{}", show(&out));
}

#[test]
fn rig_reports_a_failing_l1_kernel_as_such() {
    let test = "rig_reports_a_failing_l1_kernel_as_such";
    // A panic of L1's own kernel mid-command (what TCG's emulated SVM sometimes causes).
    let Some(out) = rig(
        test,
        &[],
        "echo before; sync; echo c > /proc/sysrq-trigger; sleep 600",
        300,
    ) else {
        return;
    };
    let stderr = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(L1_FAILED), "{}", show(&out));
    assert!(
        stderr.contains("L1's kernel failed") && stderr.contains("Kernel panic - not syncing"),
        "{}",
        show(&out)
    );
    assert!(stderr.contains("its first report:"), "{}", show(&out));
    let fault = emulation_fault(&out).unwrap_or_default();
    assert!(
        fault.contains("L1's kernel failed"),
        "{fault:?}\n{}",
        show(&out)
    );
}

/// Which failed runs are retried: an L2 that reset before its kernel wrote a line (as QEMU
/// -accel kvm in L1 did once in CI) and a husk-vmm L2 guest's triple fault are the
/// emulation's fault; the same error with the guest's last words, a VM that exited with an
/// error status, another husk-vmm error and any other failure are the command's.
#[test]
fn only_faults_of_the_emulation_are_retried() {
    use std::os::unix::process::ExitStatusExt;
    let failed = |stderr: &str| Output {
        status: std::process::ExitStatus::from_raw(101 << 8),
        stdout: b"test result: FAILED. 3 passed; 1 failed\n".to_vec(),
        stderr: stderr.as_bytes().to_vec(),
    };
    let create = "create n failed (exit status: 1): husk-runtime: container n: the VM holder \
                  process failed: container n: cannot start its VM: ";
    let silent = failed(&format!(
        "{create}the VM exited (exit status: 0) before the guest came up; see /tmp/x/console.log"
    ));
    let fault = emulation_fault(&silent).unwrap_or_default();
    assert!(
        fault.starts_with("an L2 guest reset before its first console line: create n failed"),
        "{fault:?}"
    );
    let triple = failed(
        "thread 'x' panicked: agent never answered\n[    2.228018] Run /init as init process\n\
         HUSK-AGENT-READY\nhusk-vmm: guest triple fault on vCPU 1 (KVM_EXIT_SHUTDOWN)\n",
    );
    let fault = emulation_fault(&triple).unwrap_or_default();
    assert_eq!(
        fault,
        "an L2 guest of husk-vmm triple-faulted under TCG's SVM: \
         husk-vmm: guest triple fault on vCPU 1 (KVM_EXIT_SHUTDOWN)"
    );
    for (what, stderr) in [
        (
            "last words",
            format!("{create}the VM exited (exit status: 0) before the guest came up: \
                     \"Kernel panic - not syncing: Attempted to kill init!\"; see /tmp/x/console.log"),
        ),
        (
            "an error status",
            format!("{create}the VM exited (exit status: 1) before the guest came up; see /tmp/x/c"),
        ),
        ("another failure", "assertion `left == right` failed".to_string()),
        (
            "another husk-vmm error",
            "husk-vmm: KVM internal error on vCPU 0 (suberror 1: instruction emulation failed)"
                .to_string(),
        ),
    ] {
        assert_eq!(emulation_fault(&failed(&stderr)), None, "{what}");
    }
}

/// How many runs a command gets: known faults of the emulation up to three, any other failure
/// one more, success and NOT RUN none.
#[test]
fn a_failed_run_is_tried_again_as_far_as_its_cause_allows() {
    use std::os::unix::process::ExitStatusExt;
    let with = |code: i32, stderr: &str| Output {
        status: std::process::ExitStatus::from_raw(code << 8),
        stdout: Vec::new(),
        stderr: stderr.as_bytes().to_vec(),
    };
    let l1 = with(
        L1_FAILED,
        "nested-kvm: L1's kernel failed after 91s (no heartbeat)",
    );
    assert!(retry_reason(&l1, 1, 0).is_some_and(|(_, known)| known));
    assert!(retry_reason(&l1, 2, 1).is_some_and(|(_, known)| known));
    assert!(retry_reason(&l1, RIG_ATTEMPTS - 1, 1).is_some_and(|(_, known)| known));
    assert_eq!(
        retry_reason(&l1, RIG_ATTEMPTS, 0),
        None,
        "{RIG_ATTEMPTS} runs at most"
    );
    let failed = with(
        101,
        "thread 'ro' (192) panicked at tests/husk_volumes.rs:246:5:\nassertion failed\n",
    );
    let (why, known) = retry_reason(&failed, 1, 0).unwrap();
    assert!(!known);
    assert!(
        why.contains("panicked at tests/husk_volumes.rs:246:5: assertion failed"),
        "{why}"
    );
    assert_eq!(
        retry_reason(&failed, 2, 1),
        None,
        "an unexplained failure gets one more run"
    );
    // A guest that never came up: the console's last line goes into the reason.
    let hung = with(
        101,
        "thread 'dir' (134) panicked at tests/virtiofs_guest.rs:489:9:\n\
         the guest did not come up within 120 s\n\
         [    0.21] Dentry cache hash table entries\n\
         [    0.35] virtio_blk virtio0: 1/0/0 queues\n\
         \n\
         note: run with `RUST_BACKTRACE=1` environment variable\n",
    );
    let (why, _) = retry_reason(&hung, 1, 0).unwrap();
    assert!(
        why.contains(
            "did not come up within 120 s; its message's last line: \"[    0.35] virtio_blk virtio0: 1/0/0 queues\""
        ),
        "{why}"
    );
    assert!(!why.contains("RUST_BACKTRACE"), "{why}");
    // A later panic prints no backtrace note: its message still ends at what follows it.
    let second = Output {
        status: std::process::ExitStatus::from_raw(101 << 8),
        stdout: b"failures:\n    a\ntest result: FAILED. 0 passed; 1 failed\n".to_vec(),
        stderr: b"thread 'a' (9) panicked at tests/x.rs:1:1:\nfirst line\nlast line\n\
                  thread 'b' (10) panicked at tests/x.rs:2:2:\nother\n"
            .to_vec(),
    };
    let (why, _) = retry_reason(&second, 1, 0).unwrap();
    assert!(
        why.contains("tests/x.rs:1:1: first line; its message's last line: \"last line\""),
        "{why}"
    );
    // L1's report of a vCPU looping inside its KVM makes the same failure a known fault.
    let looped = with(
        101,
        &format!(
            "{}nested-kvm L1: {} (VM 383-5: 254000 guest page faults reflected in 10 s, no port, \
             MMIO, halt or signal exit to its VMM)\n",
            String::from_utf8_lossy(&hung.stderr),
            common::rig::L2_FAULT_LOOP
        ),
    );
    let (why, known) = retry_reason(&looped, 2, 1).unwrap();
    assert!(known, "{why}");
    assert!(why.contains("fault loop of TCG's SVM"), "{why}");
    // The script writes the very text the tests look for.
    let stage2 = std::fs::read_to_string(common::repo_root().join("scripts/nested-kvm/stage2"))
        .expect("scripts/nested-kvm/stage2");
    assert!(stage2.contains(common::rig::L2_FAULT_LOOP));
    assert_eq!(retry_reason(&with(0, ""), 1, 0), None);
    assert_eq!(
        retry_reason(&with(3, "NOT RUN: nested-kvm: no qemu"), 1, 0),
        None
    );
}

#[test]
fn rig_ends_an_l1_past_its_limit_and_leaves_no_qemu() {
    let test = "rig_ends_an_l1_past_its_limit_and_leaves_no_qemu";
    let started = Instant::now();
    let Some(out) = rig(test, &[], "sleep 1000", 30) else {
        return;
    };
    assert_eq!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    assert!(
        common::text(&out.stderr).contains("did not finish within 30s"),
        "{}",
        show(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{}",
        show(&out)
    );
    // L1's QEMU is gone: the script removes a run's directory only after its QEMU has
    // exited, so a QEMU whose console's directory no longer exists was left behind.
    let left = Command::new("pgrep")
        .args(["-f", "nested-kvm\\.[A-Za-z0-9]+/console.log"])
        .output()
        .unwrap();
    let pids = common::text(&left.stdout);
    for pid in pids.lines() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let dir = cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("file:"))
            .and_then(|p| p.strip_suffix("/console.log"));
        if let Some(dir) = dir {
            // Seen from the QEMU's own root (a chroot's rig runs are not this test's).
            assert!(
                std::path::Path::new(&format!("/proc/{pid}/root{dir}")).exists()
                    || !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "a QEMU whose run directory is gone is still running: {cmdline}"
            );
        }
    }
}

#[test]
fn rig_ends_an_l1_whose_heartbeat_stops() {
    let test = "rig_ends_an_l1_whose_heartbeat_stops";
    // A wedged L1 (its timers dead after an RCU stall report, as TCG's SVM has left it) is
    // imitated by stopping its QEMU: no beat comes, and the rig must end it as an L1 failure.
    let mut c = Command::new(common::rig::script());
    c.env("HUSK_RIG_HEARTBEAT_LIMIT", "20")
        .args([
            "run",
            "--timeout",
            "300",
            "--",
            "sh",
            "-c",
            "echo up; sleep 600",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("start the rig");
    let script_pid = child.id().to_string();
    let mut stdout = child.stdout.take().unwrap();
    // "up" comes from the command: L1 is booted and beating.
    let mut up = [0u8; 3];
    let read = std::io::Read::read_exact(&mut stdout, &mut up).is_ok();
    if !(read && &up == b"up\n") {
        let mut out = child.wait_with_output().unwrap();
        if read {
            // They belong to the front of its stdout (a NOT RUN line's "NOT").
            out.stdout.splice(0..0, up);
        }
        if reported_not_run(test, &out) {
            return;
        }
        panic!("the rig never ran the command: {}", show(&out));
    }
    let qemu = Command::new("pgrep")
        .args(["-P", &script_pid, "qemu-system-x86"])
        .output()
        .unwrap();
    let qemu = common::text(&qemu.stdout).trim().to_string();
    assert!(!qemu.is_empty(), "no QEMU child of the rig script");
    let stopped_at = Instant::now();
    assert!(Command::new("kill")
        .args(["-STOP", &qemu])
        .status()
        .unwrap()
        .success());
    let ended = common::poll_until(Duration::from_secs(120), || {
        child.try_wait().unwrap().map(|s| s.code())
    });
    if ended.is_none() {
        let _ = Command::new("kill").args(["-KILL", &qemu]).status();
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(ended, Some(Some(L1_FAILED)), "{}", show(&out));
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("no heartbeat from L1 for 20s"),
        "{}",
        show(&out)
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(60),
        "ended {:?} after L1 stopped",
        stopped_at.elapsed()
    );
}
