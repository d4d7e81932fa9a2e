//! Real guests through the VM-backend seam on the QEMU backend (TCG on hosts whose KVM cannot
//! run a stock guest, such as PVM hosts; KVM elsewhere): the guest boots to the agent, a guest
//! power-off ends the VM with success, and nothing is left behind — no QEMU, no
//! vhost-device-vsock, no socket files.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk::backend::{vhost_vsock, BackendKind, VmBackend, VmHandle, VmSpec, VsockSpec};

const MARKER: &str = "HUSK-AGENT-READY";

/// Kernel (the PVH-bootable vmlinux: QEMU's microvm boots it directly, and the guest's reset
/// ends QEMU) and initramfs, or `None` after reporting why the test cannot run.
fn artifacts(test: &str) -> Option<(PathBuf, PathBuf)> {
    let kernel = common::kernel(test)?;
    // The agent's one-shot self-test mode (see `spec`) is in the test build only.
    let initramfs = common::selftest_initramfs(test)?;
    Some((kernel, initramfs))
}

/// The QEMU backend, picked through the seam as the runtime does (`--vmm qemu`).
fn backend(test: &str) -> Option<Box<dyn VmBackend>> {
    match husk::backend::backend(BackendKind::Qemu) {
        Ok(b) => {
            eprintln!("{test}: backend {}", b.name());
            Some(b)
        }
        Err(e) => {
            common::not_run(test, &e.to_string(), true);
            None
        }
    }
}

fn spec(dir: &Path, kernel: PathBuf, initramfs: PathBuf) -> VmSpec {
    let mut s = VmSpec::new(kernel, dir.join("console.log"));
    s.initramfs = Some(initramfs);
    s.memory_mib = 256;
    // The agent's one-shot mode: facts + self-test, then it resets the VM on its own. (As a
    // server it would wait for a host `Shutdown`, which these backend tests don't speak.)
    s.cmdline.push("husk.selftest=1".into());
    s
}

/// Waits for the VM to end, killing it and failing the test after `limit`: a backend test
/// must never hang the suite.
fn wait_bounded(vm: &dyn VmHandle, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = vm.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = vm.kill();
            panic!(
                "VM still running after {limit:?}; log tail:\n{}",
                tail(&vm.console_log())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls the console log until `marker` shows up; the time since `since`, or `None` if the VM
/// ended (or `limit` passed) first.
fn wait_for_console(
    vm: &dyn VmHandle,
    marker: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        let log = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        if log.contains(marker) {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit || vm.try_wait().unwrap().is_some() {
            // One last look: the marker may have landed just before the exit.
            let log = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
            return log.contains(marker).then(|| since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Processes whose command line mentions `needle` (our temp dir): how leaks are found without
/// trusting the handle's own bookkeeping.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) && pid != std::process::id() {
            found.push((pid, cmd));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    // Signal 0: existence check. The handle reaps its children, so a dead one is gone.
    // SAFETY: kill() touches no memory, and signal 0 delivers nothing.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log.lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn guest_boots_to_agent_and_power_off_ends_qemu() {
    let test = "guest_boots_to_agent_and_power_off_ends_qemu";
    let Some((kernel, initramfs)) = artifacts(test) else {
        return;
    };
    let Some(backend) = backend(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), kernel, initramfs);

    let t0 = Instant::now();
    let vm = backend.start(&spec).unwrap();
    let started = t0.elapsed();
    let ready = wait_for_console(vm.as_ref(), MARKER, t0, Duration::from_secs(60));
    let Some(ready) = ready else {
        panic!(
            "{MARKER} never reached the console; log tail:\n{}",
            tail(&vm.console_log())
        );
    };
    let status = wait_bounded(vm.as_ref(), Duration::from_secs(60));
    let ended = t0.elapsed();
    eprintln!(
        "{test}: [{}] start() returned in {:.1} ms; VM start -> {MARKER} {:.0} ms; VM start -> QEMU exit {:.0} ms",
        backend.name(),
        started.as_secs_f64() * 1e3,
        ready.as_secs_f64() * 1e3,
        ended.as_secs_f64() * 1e3
    );
    assert!(
        status.success(),
        "guest power-off must end QEMU with success, got {status}; log:\n{}",
        tail(&vm.console_log())
    );
    assert!(!alive(vm.pid()), "QEMU (pid {}) still there", vm.pid());
    let needle = dir.path().to_string_lossy().into_owned();
    assert_eq!(
        processes_mentioning(&needle),
        vec![],
        "processes left behind"
    );
    assert_eq!(
        dir_entries(dir.path()),
        ["console.log"],
        "files left behind"
    );
}

#[test]
fn vsock_device_runs_vhost_device_vsock_and_cleans_up() {
    let test = "vsock_device_runs_vhost_device_vsock_and_cleans_up";
    let Some((kernel, initramfs)) = artifacts(test) else {
        return;
    };
    let Some(backend) = backend(test) else { return };
    if let Err(e) = vhost_vsock::find_binary() {
        common::not_run(test, &e.to_string(), true);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let mut spec = spec(dir.path(), kernel, initramfs);
    spec.vsock = Some(VsockSpec {
        cid: 3,
        uds_path: uds.clone(),
    });

    let t0 = Instant::now();
    let vm = backend.start(&spec).unwrap();
    eprintln!(
        "{test}: start() with vhost-device-vsock returned in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(vm.vsock_uds(), Some(uds.clone()));
    // The daemon is up before QEMU starts, so both sockets exist as soon as start() returns.
    assert!(uds.exists(), "hybrid socket {} missing", uds.display());
    let needle = dir.path().to_string_lossy().into_owned();
    // spawn() returns once the child's execve has dropped the old memory, a moment before
    // /proc shows the new command line: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let procs = loop {
        let procs = processes_mentioning(&needle);
        if procs.iter().any(|(p, _)| *p == vm.pid()) || Instant::now() > deadline {
            break procs;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let daemons: Vec<u32> = procs
        .iter()
        .filter(|(_, c)| c.contains("vhost-device-vsock"))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(
        daemons.len(),
        1,
        "expected one vhost-device-vsock: {procs:?}"
    );
    assert!(
        procs.iter().any(|(p, _)| *p == vm.pid()),
        "QEMU (pid {}) not found: {procs:?}",
        vm.pid()
    );

    // No CONNECT before the guest is up: vhost-device-vsock's worker thread dies on a host
    // connection that arrives after QEMU handed it guest memory but before the driver set
    // up the virtqueues (`VmHandle::wait_vsock_ready` exists for that).
    vm.wait_vsock_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}; log tail:\n{}", tail(&vm.console_log())));

    let ready = wait_for_console(vm.as_ref(), MARKER, t0, Duration::from_secs(60));
    assert!(
        ready.is_some(),
        "{MARKER} never reached the console; log tail:\n{}",
        tail(&vm.console_log())
    );
    let log = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(
        log.contains("virtio-devices: 1") || !log.contains("FACT virtio-devices"),
        "the guest should see the vsock device; log tail:\n{}",
        tail(&vm.console_log())
    );
    let status = wait_bounded(vm.as_ref(), Duration::from_secs(60));
    eprintln!(
        "{test}: [{}] VM start -> {MARKER} {:.0} ms, -> exit {:.0} ms",
        backend.name(),
        ready.unwrap().as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        status.success(),
        "QEMU exit {status}; log:\n{}",
        tail(&vm.console_log())
    );
    for d in daemons {
        assert!(
            !alive(d),
            "vhost-device-vsock (pid {d}) still running after the VM ended"
        );
    }
    assert_eq!(
        processes_mentioning(&needle),
        vec![],
        "processes left behind"
    );
    assert_eq!(
        dir_entries(dir.path()),
        ["console.log"],
        "sockets left behind"
    );
}

#[test]
fn killing_a_booting_vm_leaves_nothing() {
    let test = "killing_a_booting_vm_leaves_nothing";
    let Some((kernel, initramfs)) = artifacts(test) else {
        return;
    };
    let Some(backend) = backend(test) else { return };
    let with_vsock = vhost_vsock::find_binary().is_ok();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), kernel, initramfs);
    if with_vsock {
        spec.vsock = Some(VsockSpec {
            cid: 4,
            uds_path: dir.path().join("vsock.sock"),
        });
    }
    let vm = backend.start(&spec).unwrap();
    // Booting: the guest kernel has started printing (its self-test, which ends the VM on
    // its own, comes only after the kernel's boot).
    let booting = common::poll_until(common::SETTLE, || {
        let log = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        if log.contains("Linux version") {
            return Some(true);
        }
        vm.try_wait().unwrap().map(|_| false)
    });
    assert_eq!(
        booting,
        Some(true),
        "the guest kernel never printed on the console; log tail:\n{}",
        tail(&vm.console_log())
    );
    let pid = vm.pid();
    drop(vm);
    assert!(!alive(pid));
    let needle = dir.path().to_string_lossy().into_owned();
    assert_eq!(
        processes_mentioning(&needle),
        vec![],
        "processes left behind"
    );
    assert_eq!(
        dir_entries(dir.path()),
        ["console.log"],
        "files left behind"
    );
}

// --- vsock end to end, with a stand-in guest ---------------------------------------------

/// Builds an initramfs whose /init is tests/fixtures/vsock-test-init.c (static), or `None`
/// after reporting why not. Until the real agent listens on vsock this is what proves the
/// transport: CONNECT through vhost-device-vsock, the protocol's hello, bulk data both ways.
fn test_initramfs(test: &str, dir: &Path) -> Option<PathBuf> {
    let src = common::repo_root().join("tests/fixtures/vsock-test-init.c");
    let root = dir.join("initramfs-root");
    std::fs::create_dir_all(&root).unwrap();
    let out = std::process::Command::new("gcc")
        .args(["-static", "-O2"])
        .arg(format!(
            "-DHUSK_PROTOCOL_VERSION={}",
            husk_protocol::PROTOCOL_VERSION
        ))
        .arg("-o")
        .arg(root.join("init"))
        .arg(&src)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "gcc failed on {}: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            common::not_run(
                test,
                &format!("cannot run gcc ({e}); install build-essential"),
                true,
            );
            return None;
        }
    }
    let cpio = dir.join("test-initramfs.cpio");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && echo init | cpio -o -H newc --quiet > '{}'",
            root.display(),
            cpio.display()
        ))
        .status()
        .expect("run cpio");
    assert!(status.success(), "cpio failed");
    std::fs::remove_dir_all(&root).unwrap();
    Some(cpio)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Asks a source port for `n` bytes and reads them until the guest closes (or `limit`).
fn fetch_from_guest(uds: &Path, port: u32, n: usize, limit: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = husk::agent::vsock::connect(uds, port, Duration::from_secs(10))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    s.set_read_timeout(Some(limit))?;
    // No half-close after the request: it would end the guest's sending side too.
    s.write_all(&(n as u64).to_be_bytes())?;
    let mut out = Vec::with_capacity(n);
    s.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn vsock_reaches_a_guest_listener_end_to_end() {
    let test = "vsock_reaches_a_guest_listener_end_to_end";
    let Some(kernel) = common::kernel(test) else {
        return;
    };
    let Some(backend) = backend(test) else { return };
    if let Err(e) = vhost_vsock::find_binary() {
        common::not_run(test, &e.to_string(), true);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(initramfs) = test_initramfs(test, dir.path()) else {
        return;
    };
    let uds = dir.path().join("vsock.sock");
    let mut spec = spec(dir.path(), kernel, initramfs);
    spec.vsock = Some(VsockSpec {
        cid: 5,
        uds_path: uds.clone(),
    });

    let t0 = Instant::now();
    let vm = backend.start(&spec).unwrap();
    vm.wait_vsock_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}; log tail:\n{}", tail(&vm.console_log())));
    let client = husk::agent::AgentClient::connect(&uds, Duration::from_secs(60));
    let Ok(client) = client else {
        panic!(
            "{}; console:\n{}",
            client.err().unwrap(),
            tail(&vm.console_log())
        );
    };
    let hello_at = t0.elapsed();
    assert_eq!(client.agent().unwrap().agent, "vsock-test-init");

    // Guest -> host, 16 MiB in guest writes of at most 16 KiB (the agent's rule): intact.
    const N: usize = 16 << 20;
    let t = Instant::now();
    let got = fetch_from_guest(&uds, 1025, N, Duration::from_secs(60)).unwrap();
    let out_took = t.elapsed();
    assert_eq!(
        got.len(),
        N,
        "guest -> host lost bytes; console:\n{}",
        tail(&vm.console_log())
    );
    assert!(got == pattern(N), "guest -> host data corrupted");

    // Host -> guest, 16 MiB as a stdin stream does it: copy, then half-close for EOF.
    let t = Instant::now();
    let sink = husk::agent::vsock::connect(&uds, 1027, Duration::from_secs(10)).unwrap();
    let mut src = std::io::Cursor::new(pattern(N));
    assert_eq!(
        husk::agent::copy_to_stream(&mut src, &sink).unwrap(),
        N as u64
    );
    let sank = format!("SANK {N} {:016x}", fnv1a(&pattern(N)));
    let seen = wait_for_console(vm.as_ref(), &sank, Instant::now(), Duration::from_secs(60));
    let in_took = t.elapsed();
    assert!(
        seen.is_some(),
        "guest did not read {N} intact bytes then EOF; console:\n{}",
        tail(&vm.console_log())
    );
    // The guest tried to answer after its EOF: does a host half-close leave it able to send?
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut after = Vec::new();
    let half_close = match (&sink).read_to_end(&mut after) {
        Ok(_) if after == b"EOF-SEEN\n" => {
            "half-close preserved (guest sent after EOF)".to_string()
        }
        Ok(_) => {
            format!("half-close acts as a full close (guest's reply after EOF lost, got {after:?})")
        }
        Err(e) => format!("read after half-close: {e}"),
    };

    // Guest writes of 64 KiB: reported, not asserted (the known defect).
    let big = match fetch_from_guest(&uds, 1026, 1 << 20, Duration::from_secs(3)) {
        Ok(b) if b == pattern(1 << 20) => "1 MiB intact".to_string(),
        Ok(b) => format!("{} of {} bytes arrived", b.len(), 1 << 20),
        Err(e) => format!("stalled ({e})"),
    };

    // After a stalled 64 KiB transfer, vhost-device-vsock has been seen (under load) to drop
    // the control connection too; that is the same known defect, reported, not asserted.
    // With the transfer intact, a clean shutdown is required.
    let (shutdown, clean) = match client.shutdown() {
        Ok(_) => ("shutdown answered".to_string(), true),
        Err(e) if big.starts_with("stalled") => {
            let _ = vm.kill();
            (
                format!("control connection lost after the stalled transfer ({e}); VM killed"),
                false,
            )
        }
        Err(e) => panic!("shutdown: {e}; console:\n{}", tail(&vm.console_log())),
    };
    let status = wait_bounded(vm.as_ref(), Duration::from_secs(60));
    eprintln!(
        "{test}: [{}] VM start -> hello over vsock {:.0} ms; 16 MiB guest->host (writes <= 16 KiB) {:.2} s; \
         16 MiB host->guest {:.2} s; {half_close}; guest writes of 64 KiB: {big}; {shutdown}; exit {status} at {:.0} ms",
        backend.name(),
        hello_at.as_secs_f64() * 1e3,
        out_took.as_secs_f64(),
        in_took.as_secs_f64(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        !clean || status.success(),
        "Shutdown must end the VM; console:\n{}",
        tail(&vm.console_log())
    );
    let needle = dir.path().to_string_lossy().into_owned();
    assert_eq!(
        processes_mentioning(&needle),
        vec![],
        "processes left behind"
    );
    assert_eq!(
        dir_entries(dir.path()),
        ["console.log", "test-initramfs.cpio"],
        "sockets left behind"
    );
}
