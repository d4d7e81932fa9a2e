//! husk-vmm boots the real guest kernel and initramfs under KVM: the agent's ready marker
//! on the console and a clean exit when it powers off.
//!
//! Runs only where KVM can run a stock Linux guest (hardware VMX/SVM); on PVM hosts it
//! reports NOT RUN with the probe's reason — never a silent pass. The same kernel is proven
//! under QEMU/TCG by another test.

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
