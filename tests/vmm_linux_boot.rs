//! husk-vmm boots the real guest kernel and initramfs under KVM: the agent's ready marker
//! on the console and a clean exit when it powers off.
//!
//! Runs only where KVM can run a stock Linux guest (hardware VMX/SVM); on PVM hosts it
//! reports NOT RUN with the probe's reason — never a silent pass. The same kernel is proven
//! under QEMU/TCG by another test.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::time::Duration;

use husk::vmm::probe::HostProbe;

const READY: &str = "HUSK-AGENT-READY";

#[test]
fn husk_vmm_boots_linux_to_the_agent() {
    let name = "husk_vmm_boots_linux_to_the_agent";
    let probe = HostProbe::run();
    if !probe.can_run_linux_guests {
        common::not_run(
            name,
            &format!("KVM here cannot run a stock Linux guest: {}", probe.reason),
            false,
        );
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
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(READY),
        "no {READY} in the console:\n{stdout}\nstderr: {stderr}"
    );
    assert!(
        out.status.success(),
        "status {:?} after {took:?}, stderr: {stderr}",
        out.status
    );
    eprintln!("husk-vmm booted Linux to {READY} and exited in {took:?}");
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
