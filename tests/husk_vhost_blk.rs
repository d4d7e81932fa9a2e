//! `husk-vhost-blk` on its own: bad inherited descriptors and missing layers end it with one
//! line, and it ends cleanly when its frontend hangs up. QEMU serving a layer disk through it
//! is in `tests/husk_images.rs` (images of 1 to 127 layers).

mod common;

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn daemon() -> Command {
    Command::new(common::bin("husk-vhost-blk"))
}

fn one_line_failure(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("husk-vhost-blk: "), "{err}");
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
    let err = one_line_failure(daemon().arg("--socket").arg(&sock).arg("--layer").arg(&empty));
    assert!(err.contains("empty"), "{err}");
    let err = one_line_failure(daemon().arg("--socket").arg(&sock));
    assert!(err.contains("1..=128 layers"), "{err}");
}

#[test]
fn a_frontend_that_hangs_up_ends_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("l0");
    std::fs::write(&layer, vec![7u8; 8192]).unwrap();
    let sock = dir.path().join("s");
    let mut child = daemon()
        .arg("--socket")
        .arg(&sock)
        .arg("--layer")
        .arg(&layer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("never listened on {}: {e}", sock.display()),
        }
    };
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("still running 10 s after its frontend hung up");
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
