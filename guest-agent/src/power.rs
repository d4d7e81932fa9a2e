//! Ending the VM.
//!
//! The guest has no ACPI (husk-vmm and `-M microvm,acpi=off` give it none), so the kernel
//! has no way to power off: `reboot(RB_POWER_OFF)` only halts the CPUs and leaves the VM
//! running forever. What both VMMs do observe is a *reset*: with `reboot=k` on the kernel
//! command line the kernel resets through the i8042 keyboard controller (command 0xFE on
//! port 0x64); husk-vmm ends the VM on that write, and QEMU (given an i8042 device and
//! `-no-reboot`) exits with status 0. So "power off" here is `reboot(RB_AUTOBOOT)`.

use nix::sys::reboot::{reboot, RebootMode};

/// Writes every dirty page and journal of the guest's file systems to their disks (the
/// scratch disk, virtio-fs volumes written through shared mappings): once this returns, a
/// VM killed from the host loses nothing its containers wrote.
pub fn sync() {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

pub fn off() -> ! {
    say!("husk-agent: syncing and ending the VM");
    sync();
    reset()
}

/// Ends the VM without syncing first: for a caller that has just [`sync`]ed.
pub fn reset() -> ! {
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // reboot(2) only returns on error. Exiting PID 1 panics the kernel, which with
    // `panic=-1` resets the VM too: the best that is left.
    say!("husk-agent: reboot(RB_AUTOBOOT) failed: {err}; exiting PID 1");
    std::process::exit(1);
}
