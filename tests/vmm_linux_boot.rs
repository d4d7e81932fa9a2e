//! husk-vmm boots the real guest kernel and initramfs under KVM: the agent's ready marker
//! on the console and a clean exit when it powers off.
//!
//! Needs a KVM that can run a stock Linux guest (hardware VMX/SVM). Where the host's cannot
//! (PVM, no /dev/kvm) the boot test re-runs itself in the nested-KVM rig
//! (`scripts/nested-kvm.sh`: an L1 Linux under QEMU's TCG with emulated SVM), and reports
//! NOT RUN with the reason only where the rig cannot run either — never a silent pass.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::time::Duration;

use husk::vmm::probe::HostProbe;

const READY: &str = "HUSK-AGENT-READY";

#[test]
fn husk_vmm_boots_linux_to_the_agent() {
    let name = "husk_vmm_boots_linux_to_the_agent";
    if !common::rig::on_linux_kvm(name, Duration::from_secs(300)) {
        return;
    }
    // The test initramfs: the production agent carries no self-test.
    let (Some(kernel), Some(initramfs)) = (common::kernel(name), common::selftest_initramfs(name))
    else {
        return;
    };
    // `husk.selftest=1`: the agent runs its self-test and then powers off, so the VM ends
    // by itself (without it the agent waits for a host on vsock until the watchdog).
    let mut cmd = std::process::Command::new(common::bin("husk-vmm"));
    cmd.arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .args(["--vcpus", "2", "--memory", "256", "--timeout", "60"])
        .args(["--append", "quiet husk.selftest=1"]);
    let run = common::run_console(cmd, READY, Duration::from_secs(90));
    let out = run.output();
    let Some(status) = run.status else {
        panic!("husk-vmm did not exit within 90 s; killed\n{out}");
    };
    let Some(ready) = run.marker_after else {
        panic!("no {READY} in the console (husk-vmm {status}):\n{out}");
    };
    assert!(status.success(), "husk-vmm {status}:\n{out}");
    let cpus = out
        .lines()
        .find_map(|l| l.split_once("FACT cpus: ").map(|(_, v)| v.trim()))
        .unwrap_or("");
    assert!(
        cpus.starts_with("2 "),
        "the guest sees {cpus:?} CPUs, want 2:\n{out}"
    );
    let summary = out.lines().find_map(|l| {
        l.split_once("SELFTEST done ")
            .map(|(_, v)| v.trim().to_string())
    });
    let summary = summary.unwrap_or_else(|| panic!("no self-test summary:\n{out}"));
    assert!(
        summary.ends_with(" fail=0") && !summary.starts_with("pass=0 "),
        "self-test in the guest: {summary}\n{out}"
    );
    eprintln!(
        "husk-vmm start -> {READY}: {:.2} s; exit after {:.2} s; self-test {summary}",
        ready.as_secs_f64(),
        run.total.as_secs_f64()
    );
}

/// On PVM hosts the full boot cannot run (above), but husk-vmm's entry into the real kernel
/// can still be checked: KVM's instruction emulator runs the kernel's startup code until it
/// meets an instruction it does not emulate (measured: `lock cmpxchg16b` in SLUB's
/// `___slab_alloc`, ~5 s in). A guest rip in the kernel's high-half text proves the kernel
/// was entered in long mode with husk-vmm's boot_params, switched to its own page tables and
/// ran into `start_kernel`'s memory setup — a partial boot, reported as exactly that.
#[test]
fn husk_vmm_enters_the_real_kernel_on_pvm() {
    let name = "husk_vmm_enters_the_real_kernel_on_pvm";
    let probe = HostProbe::run();
    if probe.can_run_linux_guests || !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        common::not_run(
            name,
            "only meaningful on PVM hosts (the full boot test runs here)",
            false,
        );
        return;
    }
    if !common::kvm_available(name) {
        return;
    }
    let (Some(kernel), Some(initramfs)) = (common::kernel(name), common::initramfs(name)) else {
        return;
    };
    let (kernel, initramfs) = (
        kernel.display().to_string(),
        initramfs.display().to_string(),
    );
    let (out, took) = common::run_limited(
        &common::bin("husk-vmm"),
        &[
            "--kernel",
            &kernel,
            "--initramfs",
            &initramfs,
            "--console",
            "stdout",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("Linux version") {
        eprintln!("{name}: the kernel reached its console under PVM in {took:?}");
        return;
    }
    let rip = stderr
        .split("guest rip 0x")
        .nth(1)
        .and_then(|s| u64::from_str_radix(s.split_whitespace().next().unwrap_or(""), 16).ok());
    let rip = rip.unwrap_or_else(|| {
        panic!(
            "expected an emulation failure with a guest rip, got status {:?}: {stderr}",
            out.status
        )
    });
    assert!(
        !out.status.success(),
        "an emulation failure must exit non-zero"
    );
    assert!(
        rip >= 0xffff_ffff_8000_0000,
        "guest rip {rip:#x} is not in the kernel's high-half text: the entry did not work"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one-line error expected: {stderr}"
    );
    eprintln!("{name}: kernel ran {took:?} under KVM's emulator, stopped at rip {rip:#x}");
}
