//! A guest that misbehaves on purpose, and the host checked afterwards: what a guest does
//! must cost the host no more than its limits allow. Real microVMs through `husk`, each test
//! with its own `--root` (see tests/husk_cli.rs for the harness).

mod common;

use common::cli::{Husk, LIMIT};

/// A root with the busybox image, or `None` after saying why this host cannot run the test.
fn husk(test: &str) -> Option<Husk> {
    let kernel = common::kernel(test)?;
    let initramfs = common::initramfs(test)?;
    Husk::with_busybox(test, kernel, initramfs)
}

fn len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_guest_flooding_its_serial_console_fills_no_host_disk() {
    let Some(h) = husk("a_guest_flooding_its_serial_console_fills_no_host_disk") else {
        return;
    };
    const MAX: u64 = 64 << 10;
    const WRITTEN: u64 = 600_000;
    // The container is root in its VM with the device capabilities: it makes the serial
    // port's node and writes ~9x the console limit through it, then says it is done.
    let script = format!(
        "mknod /tmp/ttyS0 c 4 64 && head -c {WRITTEN} /dev/zero | tr '\\0' x > /tmp/ttyS0 \
         && echo flooded"
    );
    let mut cmd = h.cmd(&["run", "--name", "flood", "busybox", "sh", "-c", &script]);
    cmd.env("HUSK_CONSOLE_LOG_MAX", MAX.to_string());
    let out = common::run_bounded(cmd, None, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "flooded\n");
    let ids: Vec<_> = std::fs::read_dir(h.containers_dir())
        .expect("containers")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let state = h.state(&ids[0]);
    let log = std::path::PathBuf::from(state["consoleLog"].as_str().expect("consoleLog"));
    let rotated = husk::backend::console_cap::rotated_path(&log);
    let (now, old) = (len(&log), len(&rotated));
    // The flood went through the serial port (it is in the logs), and was rotated away.
    assert!(old > 0, "nothing was rotated: console.log is {now} bytes");
    // Each file holds at most the limit plus what lands while one rotation runs; both
    // together hold far less than the guest wrote.
    assert!(
        now <= 2 * MAX && old <= 2 * MAX,
        "console.log {now}, .1 {old} bytes"
    );
    assert!(now + old < WRITTEN / 2, "console.log {now}, .1 {old} bytes");
    h.ok(&["rm", "flood"]);
    assert!(
        !log.exists() && !rotated.exists(),
        "rm left the console logs"
    );
}
