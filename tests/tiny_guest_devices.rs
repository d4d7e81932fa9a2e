//! husk-vmm's virtio devices under the real /dev/kvm, driven by tiny hand-assembled guests
//! (tests/guests/virtio_*.S): each test boots the husk-vmm binary with `--disk`/`--vsock`
//! and asserts on what the guest printed over COM1, on the host files, and on husk-vmm's
//! exit status and stderr.
//!
//! What they prove here, on a PVM host as well as on hardware KVM:
//! - MMIO exits: the guest reads MagicValue/Version/DeviceID/VendorID of every window the
//!   `virtio_mmio.device=` entries announce and drives the status/feature/queue registers;
//! - ioeventfd: QueueNotify is a 4-byte write of 0 at base + 0x50, which KVM turns into a
//!   signal on the queue's eventfd (registered with datamatch 0) without an exit; the
//!   device's worker thread then serves the request from the guest's own descriptors;
//! - irqfd: the worker's interrupt eventfd raises GSI 5 in KVM's IOAPIC; the guest routes
//!   pin 5 to vector 0x30 and its IDT handler runs (every other vector resets the guest).

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{boot_tiny, husk_vmm, text};

const PROBE: &str = env!("HUSK_GUEST_VIRTIO_PROBE");
const BLK: &str = env!("HUSK_GUEST_VIRTIO_BLK");
const IRQ: &str = env!("HUSK_GUEST_VIRTIO_IRQ");
const BLK_ID: &str = env!("HUSK_GUEST_VIRTIO_BLK_ID");
const MARKER: &str = env!("HUSK_GUEST_MARKER");

const LIMIT: Duration = Duration::from_secs(40);
const MAGIC: &str = "MAGIC=74726976 VERSION=00000002";
const VENDOR: &str = "VENDOR=4b535548";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Asserts a clean run (exit 0, nothing on stderr) and returns the guest's output.
fn clean(out: &Output) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}\nguest: {stdout}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "", "guest: {stdout}");
    stdout
}

/// A 1 MiB disk image whose first 16 bytes are known.
fn disk(dir: &Path, name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let mut bytes: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    bytes[..16].copy_from_slice(format!("HUSK-{name:<11}").as_bytes());
    std::fs::write(&path, &bytes).expect("write disk image");
    (path, bytes)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn probe_asserts(stdout: &str) {
    for (i, gsi) in [(0u64, 5u32), (1, 6), (2, 7)] {
        let base = 0xd000_0000 + i * 0x1000;
        assert!(
            stdout.contains(&format!("virtio_mmio.device=4K@{base:#x}:{gsi}")),
            "cmdline entry for window {i}: {stdout}"
        );
    }
    // Disks first (vda, vdb), then vsock: the order husk-vmm attaches them in.
    for (base, id) in [("d0000000", 2), ("d0001000", 2), ("d0002000", 19)] {
        let line = format!("VIRTIO@{base} {MAGIC} DEVICE={id:08x} {VENDOR}\n");
        assert!(stdout.contains(&line), "want {line:?} in {stdout}");
    }
    assert!(stdout.ends_with("DEVICES=03\n"), "{stdout}");
}

#[test]
fn probe_guest_reads_blk_and_vsock_registers() {
    if !common::kvm_available("probe_guest_reads_blk_and_vsock_registers") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _) = disk(dir.path(), "a.img");
    let (b, _) = disk(dir.path(), "b.img");
    let uds = dir.path().join("v.sock");
    let ro = format!("{},ro", s(&b));
    let vsock = format!("3,{}", s(&uds));
    let flags = [
        "--timeout",
        "30",
        "--disk",
        s(&a),
        "--disk",
        &ro,
        "--vsock",
        &vsock,
    ];
    let (out, _) = boot_tiny(PROBE, &flags, LIMIT);
    probe_asserts(&clean(&out));
}

#[test]
fn probe_guest_sees_devices_from_a_config_file() {
    if !common::kvm_available("probe_guest_sees_devices_from_a_config_file") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _) = disk(dir.path(), "a.img");
    let (b, _) = disk(dir.path(), "b.img");
    let cfg = dir.path().join("vm.json");
    let json = serde_json::json!({
        "kernel": PROBE, "memory_mib": 64, "timeout_secs": 30.0,
        "disks": [{ "path": a }, { "path": b, "read_only": true }],
        "vsock": { "cid": 42, "uds": dir.path().join("v.sock") },
    });
    std::fs::write(&cfg, json.to_string()).expect("write config");
    probe_asserts(&clean(&husk_vmm(&["--config", s(&cfg)], LIMIT).0));
}

#[test]
fn blk_guest_reads_sector_0_and_writes_sector_1() {
    if !common::kvm_available("blk_guest_reads_sector_0_and_writes_sector_1") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, before) = disk(dir.path(), "rw.img");
    let (out, _) = boot_tiny(BLK, &["--timeout", "30", "--disk", s(&path)], LIMIT);
    let stdout = clean(&out);
    assert!(
        stdout.contains(" FEATURES_HI=00000001 "),
        "VERSION_1 offered: {stdout}"
    );
    assert!(
        stdout.contains(" STATUS=0000000f\n"),
        "DRIVER_OK reached: {stdout}"
    );
    // Used entry for head 0: 512 data bytes + the status byte written by the device.
    let read = format!(
        " USED=00000001 ID=00000000 LEN=00000201 ISR=00000001 BLK_STATUS=00000000 DATA={}\n",
        hex(&before[..16])
    );
    assert!(stdout.contains(&read), "want {read:?} in {stdout}");
    assert!(
        stdout.contains(
            " USED=00000002 ID=00000003 LEN=00000001 ISR=00000001 WRITE_STATUS=00000000\nDONE\n"
        ),
        "{stdout}"
    );
    let after = std::fs::read(&path).expect("read disk image");
    let mut want = before.clone();
    want[512..1024].fill(0);
    want[512..528].copy_from_slice(b"HUSK-GUEST-WROTE");
    assert!(after == want, "only sector 1 changed, to the guest's bytes");
}

#[test]
fn blk_guest_cannot_write_a_read_only_disk() {
    if !common::kvm_available("blk_guest_cannot_write_a_read_only_disk") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, before) = disk(dir.path(), "ro.img");
    let ro = format!("{},ro", s(&path));
    let (out, _) = boot_tiny(BLK, &["--timeout", "30", "--disk", &ro], LIMIT);
    let stdout = clean(&out);
    let lo = stdout
        .split(" FEATURES_LO=")
        .nth(1)
        .and_then(|r| u32::from_str_radix(&r[..8], 16).ok())
        .expect("FEATURES_LO printed");
    assert_ne!(lo & 1 << 5, 0, "VIRTIO_BLK_F_RO offered: {stdout}");
    assert!(
        stdout.contains(&format!(
            "BLK_STATUS=00000000 DATA={}\n",
            hex(&before[..16])
        )),
        "{stdout}"
    );
    // VIRTIO_BLK_S_IOERR for the OUT request, and the host file is untouched.
    assert!(
        stdout.contains(" WRITE_STATUS=00000001\nDONE\n"),
        "{stdout}"
    );
    assert!(
        std::fs::read(&path).expect("read disk image") == before,
        "read-only disk changed"
    );
}

#[test]
fn irq_guest_takes_the_completion_interrupt_through_irqfd() {
    if !common::kvm_available("irq_guest_takes_the_completion_interrupt_through_irqfd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = disk(dir.path(), "irq.img");
    let (out, _) = boot_tiny(IRQ, &["--timeout", "30", "--disk", s(&path)], LIMIT);
    let stdout = clean(&out);
    // One interrupt on vector 0x30, the request completed, and the handler acknowledged
    // the device's InterruptStatus. "NOIRQ" would mean the bounded wait ran out.
    assert!(
        stdout.ends_with("\nIRQ=00000001 USED=00000001 ISR=00000000\nDONE\n"),
        "{stdout}"
    );
}

/// `--disk PATH,ro,serial=ID`: the guest's GET_ID request, sent through the MMIO transport
/// and served by the device's worker, returns the serial NUL-padded to 20 bytes — what
/// Linux shows in /sys/block/vdX/serial and the agent looks disks up by. A disk without
/// `serial=` keeps its file-derived id.
#[test]
fn blk_id_guest_reads_the_serial_given_with_disk() {
    if !common::kvm_available("blk_id_guest_reads_the_serial_given_with_disk") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (layer, _) = disk(dir.path(), "layer.img");
    let (plain, _) = disk(dir.path(), "plain.img");
    let named = format!("{},ro,serial=husk-layer-0", s(&layer));
    let (out, _) = boot_tiny(
        BLK_ID,
        &["--timeout", "30", "--disk", &named, "--disk", s(&plain)],
        LIMIT,
    );
    let stdout = clean(&out);
    let serial = |disk: u32| -> Vec<u8> {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!(" DISK={disk:08x}")))
            .unwrap_or_else(|| panic!("no line for disk {disk}: {stdout}"));
        // 20 bytes + the status byte, status OK.
        assert!(
            line.contains(" LEN=00000015 ID_STATUS=00000000 SERIAL="),
            "{line}"
        );
        let hex = line.rsplit_once(" SERIAL=").map(|(_, h)| h).unwrap_or("");
        assert_eq!(hex.len(), 40, "{line}");
        (0..20)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    };
    let mut want = [0u8; 20];
    want[..12].copy_from_slice(b"husk-layer-0");
    assert_eq!(serial(0), want, "{stdout}");
    let other = serial(1);
    assert!(other.starts_with(b"husk"), "file-derived id: {other:?}");
    assert_ne!(other, want);
    assert!(stdout.ends_with("DONE\n"), "{stdout}");
}

/// One line on stderr, exit status 1, naming `what`; a host without /dev/kvm may fail on
/// that first for errors found after opening it.
fn fails_with(args: &[&str], what: &str, before_kvm: bool) {
    let (out, _) = husk_vmm(args, LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("husk-vmm: "), "{stderr}");
    assert!(
        stderr.contains(what) || (!before_kvm && stderr.contains("/dev/kvm")),
        "want {what:?}: {stderr}"
    );
}

#[test]
fn device_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (img, _) = disk(dir.path(), "e.img");
    let base = ["--kernel", MARKER, "--memory", "64", "--timeout", "20"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|x| x.to_string()).collect()
    };
    let run = |args: Vec<String>, what: &str, before_kvm: bool| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, what, before_kvm);
    };

    let missing = dir.path().join("missing.img");
    run(
        with(&["--disk", s(&missing)]),
        &format!("--disk: opening disk image {}", s(&missing)),
        false,
    );

    // The flag parser (clap: usage error, status 2) and a config file (status 1) refuse a
    // serial GET_ID cannot carry as given, naming it.
    let bad_serial = format!("{},serial=has space", s(&img));
    let (out, _) = husk_vmm(&["--kernel", MARKER, "--disk", &bad_serial], LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or("")
            .contains("invalid disk serial \"has space\" for ")
            && stderr.contains("1 to 20 printable ASCII characters without ','"),
        "{stderr}"
    );
    let cfg = dir.path().join("serial.json");
    let json = serde_json::json!({
        "kernel": MARKER,
        "disks": [{ "path": img, "serial": "x".repeat(21) }],
    });
    std::fs::write(&cfg, json.to_string()).expect("write config");
    run(
        vec!["--config".into(), s(&cfg).into()],
        &format!("invalid disk serial \"{}\"", "x".repeat(21)),
        true,
    );

    let no_dir = dir.path().join("nodir/v.sock");
    let v = format!("3,{}", s(&no_dir));
    run(with(&["--vsock", &v]), "directory", false);

    let mut many: Vec<String> = with(&["--vsock", &format!("3,{}", s(&dir.path().join("v.sock")))]);
    for _ in 0..19 {
        many.push("--disk".into());
        many.push(s(&img).into());
    }
    run(
        many,
        "too many virtio devices: 19 disk(s) + vsock need 20 IRQs, husk-vmm has 19",
        true,
    );

    // The flag parser refuses CID 2 itself; a config file reaches validation.
    let cfg = dir.path().join("vm.json");
    let json = serde_json::json!({ "kernel": MARKER, "vsock": { "cid": 2, "uds": "/tmp/x.sock" } });
    std::fs::write(&cfg, json.to_string()).expect("write config");
    run(vec!["--config".into(), s(&cfg).into()], "CID >= 3", true);
}
