//! `husk-layer-disk` on its own: bad inherited descriptors and missing layers end it with one
//! line, it serves the composite disk's GPT to an NBD client, and it ends cleanly when its
//! client hangs up. QEMU serving a layer disk through it
//! is in `tests/husk_images.rs` (images of 1 to 127 layers).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn daemon() -> Command {
    Command::new(common::bin("husk-layer-disk"))
}

fn one_line_failure(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("husk-layer-disk: "), "{err}");
    err
}

#[test]
fn bad_descriptors_and_missing_layers_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = one_line_failure(daemon().args(["--socket-fd", "99", "--layer-fd", "98"]));
    assert!(err.contains("descriptor 98"), "{err}");
    let err = one_line_failure(daemon().args(["--socket-fd", "7", "--layer-fd", "7"]));
    assert!(err.contains("named twice"), "{err}");
    let sock = dir.path().join("s");
    let err = one_line_failure(
        daemon()
            .arg("--socket")
            .arg(&sock)
            .args(["--layer", "/nonexistent/layer"]),
    );
    assert!(err.contains("/nonexistent/layer"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let err = one_line_failure(
        daemon()
            .arg("--socket")
            .arg(&sock)
            .arg("--layer")
            .arg(&empty),
    );
    assert!(err.contains("empty"), "{err}");
    let err = one_line_failure(daemon().arg("--socket").arg(&sock));
    assert!(err.contains("1..=128 layers"), "{err}");
}

#[test]
fn a_client_that_hangs_up_ends_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("l0");
    std::fs::write(&layer, vec![7u8; 8192]).unwrap();
    let sock = dir.path().join("s");
    let mut child = serve_one_layer(&sock, &layer);
    drop(connect(&sock));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("still running 10 s after its client hung up");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The daemon serving `layer` on `sock`, its stderr kept for the failure message.
fn serve_one_layer(sock: &Path, layer: &Path) -> std::process::Child {
    daemon()
        .arg("--socket")
        .arg(sock)
        .arg("--layer")
        .arg(layer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Connects to `sock`, retrying for 10 s while the daemon comes up.
fn connect(sock: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(sock) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("never listened on {}: {e}", sock.display()),
        }
    }
}

/// The NBD client QEMU is, cut down: the fixed newstyle greeting, `EXPORT_NAME`, one read of
/// the GPT header and a disconnect; the daemon then exits 0.
#[test]
fn it_serves_the_composite_disk_over_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("l0");
    std::fs::write(&layer, vec![7u8; 8192]).unwrap();
    let sock = dir.path().join("s");
    let child = serve_one_layer(&sock, &layer);
    let mut c = connect(&sock);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    // Client flags: fixed newstyle, no zeroes; then NBD_OPT_EXPORT_NAME "".
    let mut m = 3u32.to_be_bytes().to_vec();
    m.extend_from_slice(b"IHAVEOPT");
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    c.write_all(&m).unwrap();
    let mut export = [0u8; 10];
    c.read_exact(&mut export).unwrap();
    let size = u64::from_be_bytes(export[..8].try_into().unwrap());
    assert!(size > 8192 && size % 512 == 0, "{size}");
    let flags = u16::from_be_bytes([export[8], export[9]]);
    assert_eq!(flags & 3, 3, "read-only: {flags:#x}");
    // NBD_CMD_READ of LBA 1, where the GPT header is.
    let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
    req.extend_from_slice(&[0, 0, 0, 0]);
    req.extend_from_slice(&42u64.to_be_bytes());
    req.extend_from_slice(&512u64.to_be_bytes());
    req.extend_from_slice(&512u32.to_be_bytes());
    c.write_all(&req).unwrap();
    let mut reply = [0u8; 16 + 512];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..8], [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0]);
    assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), 42);
    assert_eq!(&reply[16..24], b"EFI PART");
    // NBD_CMD_DISC.
    let mut disc = 0x2560_9513u32.to_be_bytes().to_vec();
    disc.extend_from_slice(&[0, 0, 0, 2]);
    disc.extend_from_slice(&[0; 20]);
    c.write_all(&disc).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
