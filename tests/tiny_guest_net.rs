//! husk-vmm's virtio-net device under the real /dev/kvm, with tiny hand-assembled guests:
//! - the probe guest (tests/guests/virtio_probe.S) reads the registers of every announced
//!   virtio-mmio window through real MMIO exits, with husk-vmm run inside a network
//!   namespace the test creates, so the TAP it opens by name lives (and dies) there;
//! - the net guest (tests/guests/virtio_net.S) sends a UDP datagram to a host socket and
//!   receives the answer, over a TAP the test opened in its namespace and husk-vmm
//!   inherited as an fd;
//! - `--net` errors are one clear line.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "virtio_net/netns.rs"]
mod netns;

use std::path::Path;
use std::time::Duration;

use common::{bin, husk_vmm, run_limited, text};

const PROBE: &str = env!("HUSK_GUEST_VIRTIO_PROBE");
const NET: &str = env!("HUSK_GUEST_VIRTIO_NET");
const MARKER: &str = env!("HUSK_GUEST_MARKER");
const LIMIT: Duration = Duration::from_secs(40);

#[test]
fn probe_guest_sees_the_net_device_after_a_disk() {
    let test = "probe_guest_sees_the_net_device_after_a_disk";
    if let Some(why) = netns::unavailable() {
        common::not_run(test, &why, true);
        return;
    }
    if !common::kvm_available(test) {
        return;
    }
    let ns = netns::Netns::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("d.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("disk image");
    let vmm = bin("husk-vmm");
    let args = [
        "netns",
        "exec",
        &ns.name,
        vmm.to_str().expect("utf-8 path"),
        "--kernel",
        PROBE,
        "--memory",
        "64",
        "--timeout",
        "30",
        "--disk",
        img.to_str().expect("utf-8 path"),
        "--net",
        "tap=hnp0,mac=02:00:00:00:00:0a",
    ];
    let (out, _) = run_limited(Path::new("ip"), &args, LIMIT);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}\nguest: {stdout}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "", "guest: {stdout}");
    // The disk first, then the NIC: the order husk-vmm attaches them in.
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xd0001000:6"),
        "{stdout}"
    );
    let line = "VIRTIO@d0001000 MAGIC=74726976 VERSION=00000002 DEVICE=00000001 VENDOR=4b535548\n";
    assert!(stdout.contains(line), "want {line:?} in {stdout}");
    assert!(stdout.ends_with("DEVICES=02\n"), "{stdout}");
    // The TAP was the VMM's (not persistent): gone with it.
    let links = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip", "-o", "link"])
        .output()
        .expect("ip link");
    assert!(
        !text(&links.stdout).contains("hnp0"),
        "{}",
        text(&links.stdout)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The net guest (tests/guests/virtio_net.S) sends a UDP datagram through the TAP and
/// receives the host's answer: tx through a KVM ioeventfd, rx into the guest's own buffer,
/// the MAC from config space. The TAP is opened by the test inside its namespace and
/// handed to husk-vmm as an inherited fd, as host network code does.
#[test]
fn net_guest_sends_and_receives_through_an_inherited_tap_fd() {
    let test = "net_guest_sends_and_receives_through_an_inherited_tap_fd";
    if let Some(why) = netns::unavailable() {
        common::not_run(test, &why, true);
        return;
    }
    if !common::kvm_available(test) {
        return;
    }
    let ns = netns::Netns::new();
    ns.disable_ipv6();
    let tap = ns.open_tun("hnk0", libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "hnk0"]);
    ns.ip(&["link", "set", "hnk0", "up"]);
    ns.ip(&[
        "neigh",
        "add",
        "10.77.0.2",
        "lladdr",
        "02:00:00:00:00:0a",
        "dev",
        "hnk0",
        "nud",
        "permanent",
    ]);
    let host = ns
        .enter(|| std::net::UdpSocket::bind("10.77.0.1:5555"))
        .expect("bind in the namespace");
    host.set_read_timeout(Some(LIMIT)).unwrap();
    use std::os::fd::AsRawFd;
    let fd = tap.as_raw_fd();
    // SAFETY: F_SETFD on our own fd: husk-vmm (and only exec'd children) inherit it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let net = format!("tap=hnk0,fd={fd},mac=02:00:00:00:00:0a");
    let vmm = std::thread::spawn(move || {
        let args = [
            "--kernel",
            NET,
            "--memory",
            "64",
            "--timeout",
            "30",
            "--net",
            &net,
        ];
        husk_vmm(&args, LIMIT)
    });
    let mut buf = [0u8; 64];
    let got = host.recv_from(&mut buf);
    if let Ok((n, from)) = &got {
        assert_eq!(&buf[..*n], b"HUSK-GUEST-NET-1");
        assert_eq!(from.to_string(), "10.77.0.2:4444");
        host.send_to(b"HUSK-HOST-REPLY!", "10.77.0.2:4444").unwrap();
    }
    let (out, _) = vmm.join().expect("husk-vmm thread");
    let stdout = text(&out.stdout);
    assert!(
        got.is_ok(),
        "host got nothing: {got:?}\nguest: {stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{:?} {}\nguest: {stdout}",
        out.status,
        text(&out.stderr)
    );
    for want in [
        "DEVICE=00000001 STATUS=0000000f MAC=02000000000a\n",
        "TX_USED=00000001\n",
        // vnet header + Ethernet + IPv4 + UDP + 16 bytes.
        &format!(
            "RX_LEN=00000046 RX_DATA={}\nDONE\n",
            hex(b"HUSK-HOST-REPLY!")
        ),
    ] {
        assert!(stdout.contains(want), "want {want:?} in {stdout}");
    }
}

#[test]
fn net_flag_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = ["--kernel", MARKER, "--memory", "64", "--timeout", "20"];
    // Flag values clap refuses: its error line names the problem.
    let refused = |extra: &[&str], what: &str| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (out, _) = husk_vmm(&args, LIMIT);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(what), "want {what:?}: {stderr}");
    };
    refused(&["--net", "tap=a/b"], "TAP name \"a/b\"");
    refused(&["--net", "tap=t0,mac=01:00:00:00:00:01"], "multicast");
    refused(&["--net", "tap=t0,vhost=on"], "unknown part");
    // Errors husk-vmm finds itself: one line, status 1.
    let run = |extra: &[&str], what: &str, before_kvm: bool| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (out, _) = husk_vmm(&args, LIMIT);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
        assert!(stderr.starts_with("husk-vmm: "), "{stderr}");
        assert!(
            stderr.contains(what) || (!before_kvm && stderr.contains("/dev/kvm")),
            "want {what:?}: {stderr}"
        );
    };
    // An fd that is not open is refused by number, not closed later by accident.
    run(
        &["--net", "fd=987"],
        "fd 987 is not an open TUN/TAP fd",
        false,
    );
    // A config file reaches the same validation.
    let cfg = dir.path().join("vm.json");
    let json = serde_json::json!({ "kernel": MARKER, "net": [{ "mac": "02:00:00:00:00:01" }] });
    std::fs::write(&cfg, json.to_string()).expect("write config");
    run(
        &["--config", cfg.to_str().unwrap()],
        "give tap=NAME or fd=N",
        true,
    );
}

/// The net worker runs under its own seccomp filter: one forbidden syscall there (the test
/// hook's) ends husk-vmm with one line naming the net thread.
#[test]
fn a_forbidden_syscall_in_the_net_worker_ends_husk_vmm() {
    let test = "a_forbidden_syscall_in_the_net_worker_ends_husk_vmm";
    if let Some(why) = netns::unavailable() {
        common::not_run(test, &why, true);
        return;
    }
    if !common::kvm_available(test) {
        return;
    }
    let ns = netns::Netns::new();
    let tap = ns.open_tun("hnk1", libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    use std::os::fd::AsRawFd;
    let fd = tap.as_raw_fd();
    // SAFETY: F_SETFD on our own fd: husk-vmm (and only exec'd children) inherit it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let net = format!("tap=hnk1,fd={fd},mac=02:00:00:00:00:0b");
    let args = [
        "--kernel",
        NET,
        "--memory",
        "64",
        "--timeout",
        "30",
        "--net",
        &net,
        "--seccomp-selftest",
        "net",
    ];
    let (out, _) = husk_vmm(&args, LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(159), "{stderr}");
    assert!(
        stderr.starts_with("husk-vmm: seccomp: the net thread (tid ")
            && stderr.ends_with("made a forbidden syscall: 63 (uname); stopping the VM\n"),
        "{stderr}"
    );
}
