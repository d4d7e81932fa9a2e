//! Tiny hand-assembled guests (tests/guests/*.S, built by build.rs) booted by the real
//! husk-vmm binary under the real /dev/kvm, through the same path as a vmlinux: ELF loader,
//! boot_params in rsi, long mode. Each asserts on what the guest printed and on husk-vmm's
//! exit status and stderr.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{boot_tiny, husk_vmm, text};

const MARKER: &str = env!("HUSK_GUEST_MARKER");
const BOOTPARAMS: &str = env!("HUSK_GUEST_BOOTPARAMS");
const TRIPLEFAULT: &str = env!("HUSK_GUEST_TRIPLEFAULT");
const HALT: &str = env!("HUSK_GUEST_HALT");

const LIMIT: Duration = Duration::from_secs(30);

/// Asserts the marker guest printed its line and husk-vmm exited 0.
fn assert_marker_ok(out: &Output) {
    assert_eq!(
        text(&out.stdout),
        "HUSK-TINY-OK\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn marker_guest_prints_and_resets_cleanly() {
    if !common::kvm_available("marker_guest_prints_and_resets_cleanly") {
        return;
    }
    let (out, _) = boot_tiny(MARKER, &["--timeout", "20"], LIMIT);
    assert_marker_ok(&out);
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn guest_reads_the_boot_params_husk_vmm_wrote() {
    if !common::kvm_available("guest_reads_the_boot_params_husk_vmm_wrote") {
        return;
    }
    let token = format!("husk.test_token={}", std::process::id());
    let cmdline = format!("console=ttyS0 reboot=k {token} -- init-arg");
    let mem_mib = 128;
    let (out, _) = husk_vmm(
        &[
            "--kernel",
            BOOTPARAMS,
            "--memory",
            &mem_mib.to_string(),
            "--cmdline",
            &cmdline,
            "--timeout",
            "20",
        ],
        LIMIT,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        text(&out.stderr)
    );
    // The guest prints the NUL-terminated string at cmd_line_ptr, then '|'.
    assert!(
        stdout.contains(&format!("CMDLINE={cmdline}|\n")),
        "{stdout}"
    );
    let e820 = common::expected_e820_entries(mem_mib << 20);
    assert!(
        stdout.contains(&format!("\nE820={e820:02x}\n")),
        "want {e820} e820 entries: {stdout}"
    );
    assert!(stdout.contains("\nBOOTFLAG=aa55\n"), "{stdout}");
    assert!(
        stdout.contains("\nHEADER=53726448\n"),
        "'HdrS' magic: {stdout}"
    );
    assert!(stdout.ends_with("DONE\n"), "{stdout}");
}

#[test]
fn triple_fault_fails_with_one_line() {
    if !common::kvm_available("triple_fault_fails_with_one_line") {
        return;
    }
    let (out, _) = boot_tiny(TRIPLEFAULT, &["--timeout", "20"], LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(text(&out.stdout), "T\n", "the guest ran up to the fault");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("husk-vmm: "), "{stderr}");
    // Hardware KVM reports the shutdown; PVM's emulator may give up on delivering the
    // fault first and report an emulation failure. Both are errors, never a clean exit.
    assert!(
        stderr.contains("triple fault") || stderr.contains("emulation failed"),
        "{stderr}"
    );
}

#[test]
fn watchdog_ends_a_guest_halted_with_interrupts_off() {
    if !common::kvm_available("watchdog_ends_a_guest_halted_with_interrupts_off") {
        return;
    }
    let (out, took) = boot_tiny(HALT, &["--timeout", "1"], LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(text(&out.stdout), "H\n");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("watchdog"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        took < Duration::from_secs(5),
        "watchdog of 1 s took {took:?}"
    );
}

#[test]
fn two_vcpus_start_and_tear_down() {
    if !common::kvm_available("two_vcpus_start_and_tear_down") {
        return;
    }
    // The AP waits for a SIPI that never comes; the BSP's reset must still end the process.
    let (out, _) = boot_tiny(MARKER, &["--vcpus", "2", "--timeout", "20"], LIMIT);
    assert_marker_ok(&out);
}

#[test]
fn console_off_and_file() {
    if !common::kvm_available("console_off_and_file") {
        return;
    }
    let (out, _) = boot_tiny(MARKER, &["--console", "off"], LIMIT);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("console.log");
    let console = format!("file:{}", log.display());
    let (out, _) = boot_tiny(MARKER, &["--console", &console], LIMIT);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&log).expect("console log"),
        "HUSK-TINY-OK\n"
    );
}

#[test]
fn config_file_boots_the_same_guest() {
    if !common::kvm_available("config_file_boots_the_same_guest") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("vm.json");
    let json = serde_json::json!({ "kernel": MARKER, "memory_mib": 64, "timeout_secs": 20.0 });
    std::fs::write(&cfg, json.to_string()).expect("write config");
    let (out, _) = husk_vmm(&["--config", cfg.to_str().expect("utf-8 path")], LIMIT);
    assert_marker_ok(&out);
}

#[test]
fn bad_inputs_fail_with_one_line() {
    // No KVM needed: these fail before or right at opening it.
    let (out, _) = husk_vmm(&["--kernel", "/nonexistent/vmlinux"], LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("/nonexistent/vmlinux") || stderr.contains("/dev/kvm"),
        "names the file (or the missing /dev/kvm): {stderr}"
    );

    let (out, _) = husk_vmm(&["--kernel", MARKER, "--disk", "/nonexistent/x.img"], LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("/nonexistent/x.img") || stderr.contains("/dev/kvm"),
        "{stderr}"
    );
}

#[test]
fn fast_exit_keeps_status_and_output() {
    if !common::kvm_available("fast_exit_keeps_status_and_output") {
        return;
    }
    // The helper that inherits the VM closes stdio at once: the pipes reach EOF with
    // husk-vmm's own exit (run_limited would time out otherwise).
    let (out, _) = boot_tiny(MARKER, &["--fast-exit"], LIMIT);
    assert_marker_ok(&out);
    let (out, _) = boot_tiny(TRIPLEFAULT, &["--fast-exit"], LIMIT);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("triple fault") || stderr.contains("emulation failed"),
        "{stderr}"
    );
}
