//! Boots husk's real guest kernel and initramfs under QEMU microvm with TCG (software CPU),
//! the one way these development hosts can run a stock Linux guest. It proves the kernel
//! config and the initramfs: the agent's marker, 2 CPUs, the filesystems, the virtio-mmio
//! devices (block, entropy, net, console) bound to their drivers, every syscall self-test passing, and a clean VM exit.
//!
//! The VM ends the way it ends under husk-vmm: the agent calls reboot(RB_AUTOBOOT), the
//! kernel (`reboot=k`) resets through the i8042 keyboard controller, and QEMU, given an
//! i8042 device and `-no-reboot`, exits 0 on that reset.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TEST: &str = "kernel_tcg";
const MARKER: &str = "HUSK-AGENT-READY";
/// TCG on a loaded 2-core machine: boot takes seconds; a hang must still end the test.
const TIMEOUT: Duration = Duration::from_secs(180);

/// The checks husk-agent's self-test must report as `ok`; a missing one fails too.
const SELFTESTS: &[&str] = &[
    "inotify",
    "fanotify",
    "posix-timers",
    "io_uring",
    "memfd",
    "userfaultfd",
    "sysv-ipc",
    "mqueue",
    "epoll",
    "eventfd",
    "signalfd",
    "timerfd",
    "futex",
    "aio",
    "seccomp",
    "bpf",
    "namespaces",
    "cgroup2",
    "ipv4",
    "ipv6",
    "packet",
    "vsock",
    "proc-sys",
    "restored",
];

fn qemu_available() -> bool {
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            common::not_run(
                TEST,
                "qemu-system-x86_64 not found (apt-get install qemu-system-x86)",
                true,
            );
            false
        }
    }
}

fn qemu_command(kernel: &Path, initramfs: &Path, disk: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "tcg",
        "-smp",
        "2",
        "-m",
        "256",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ])
    // The reset path husk-vmm implements: i8042 command 0xFE ends the VM.
    .args(["-device", "i8042", "-no-reboot"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initramfs)
    .args(["-append", "console=ttyS0 reboot=k panic=-1 husk.selftest=1"])
    // microvm puts virtio-mmio devices on its own bus and adds their
    // virtio_mmio.device= entries to the command line itself.
    .arg("-drive")
    .arg(format!("if=none,id=d0,format=raw,file={}", disk.display()))
    .args(["-device", "virtio-blk-device,drive=d0"])
    .args(["-device", "virtio-rng-device"])
    // A NIC with no backend still binds virtio_net; no user networking needed.
    .args(["-device", "virtio-net-device"])
    .args(["-device", "virtio-serial-device"]);
    cmd
}

/// The value of the first `FACT <name>: <value>` line.
fn fact<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("FACT {name}: ");
    lines
        .iter()
        .find_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
}

#[test]
fn real_kernel_boots_under_qemu_tcg() {
    let (Some(kernel), Some(initramfs)) = (common::kernel(TEST), common::selftest_initramfs(TEST))
    else {
        return;
    };
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write scratch disk");

    let run = common::run_console(qemu_command(&kernel, &initramfs, &disk), MARKER, TIMEOUT);
    let out = run.output();
    let ctx = || format!("\n--- console ---\n{out}\n---------------");

    let Some(status) = run.status else {
        panic!("QEMU did not exit within {TIMEOUT:?}; killed{}", ctx());
    };
    let Some(boot) = run.marker_after else {
        panic!("no {MARKER} on the console (QEMU {status}){}", ctx());
    };
    eprintln!(
        "kernel_tcg: QEMU start -> {MARKER}: {:.2} s; QEMU exit after {:.2} s ({})",
        boot.as_secs_f64(),
        run.total.as_secs_f64(),
        kernel.display()
    );

    let kernel_fact = fact(&run.lines, "kernel").unwrap_or("");
    let release = kernel_fact.split_whitespace().nth(1).unwrap_or("");
    assert!(
        release.starts_with("6.12."),
        "uname -r is {release:?}, want 6.12.x{}",
        ctx()
    );

    let cpus = fact(&run.lines, "cpus").unwrap_or("");
    assert!(
        cpus.starts_with("2 "),
        "guest sees {cpus:?} CPUs, want 2{}",
        ctx()
    );

    let fs: Vec<&str> = fact(&run.lines, "filesystems")
        .unwrap_or("")
        .split_whitespace()
        .collect();
    for want in [
        "ext4", "erofs", "overlay", "tmpfs", "devtmpfs", "proc", "sysfs", "devpts", "cgroup2",
    ] {
        assert!(
            fs.contains(&want),
            "{want} not in /proc/filesystems ({fs:?}){}",
            ctx()
        );
    }

    let virtio: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.contains("FACT virtio: "))
        .collect();
    let want = [
        ("(block)", "driver=virtio_blk"),
        ("(entropy)", "driver=virtio_rng"),
        ("(net)", "driver=virtio_net"),
        ("(console)", "driver=virtio_console"),
    ];
    for (kind, driver) in want {
        assert!(
            virtio
                .iter()
                .any(|l| l.contains(kind) && l.contains(driver)),
            "no virtio {kind} device bound to {driver}: {virtio:?}{}",
            ctx()
        );
    }

    let failed: Vec<&String> = run
        .lines
        .iter()
        .filter(|l| l.contains("SELFTEST") && l.contains(" FAIL "))
        .collect();
    assert!(
        failed.is_empty(),
        "self-test failures: {failed:#?}{}",
        ctx()
    );
    for name in SELFTESTS {
        let ok = format!("SELFTEST {name} ok");
        assert!(
            run.lines.iter().any(|l| l.contains(&ok)),
            "no `{ok}`{}",
            ctx()
        );
    }
    let done = run
        .lines
        .iter()
        .find(|l| l.contains("SELFTEST done"))
        .unwrap_or_else(|| panic!("no SELFTEST done{}", ctx()));
    assert!(
        done.ends_with(&format!("pass={} fail=0", SELFTESTS.len())),
        "{done}{}",
        ctx()
    );

    assert!(
        status.success(),
        "QEMU exited with {status}, want 0 (guest reset through the i8042){}",
        ctx()
    );
}
