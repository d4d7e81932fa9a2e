//! Real guests through the VM-backend seam on the QEMU backend (TCG on hosts whose KVM cannot
//! run a stock guest, such as PVM hosts; KVM elsewhere): the guest boots to the agent, a guest
//! power-off ends the VM with success, and nothing is left behind — no QEMU, no
//! vhost-device-vsock, no socket files.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk::sandbox::{qemu::QemuBackend, vhost_vsock, VmBackend, VmHandle, VmSpec, VsockSpec};

const MARKER: &str = "HUSK-AGENT-READY";

/// Kernel (the PVH-bootable vmlinux: QEMU's microvm boots it directly, and the guest's reset
/// ends QEMU) and initramfs, or `None` after reporting why the test cannot run.
fn artifacts(test: &str) -> Option<(PathBuf, PathBuf)> {
    let kernel = common::kernel(test)?;
    let initramfs = common::initramfs(test)?;
    Some((kernel, initramfs))
}

fn backend(test: &str) -> Option<QemuBackend> {
    match QemuBackend::from_env() {
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
    s
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
    let status = vm.wait().unwrap();
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
    let procs = processes_mentioning(&needle);
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
        "QEMU not found: {procs:?}"
    );

    // The daemon accepts on the hybrid socket. Until the guest's driver has set up the
    // virtqueues it resets such connections ("backend event before vring initialization"),
    // and until an agent listens on 1024 the guest refuses them: either way no `OK`, which
    // is what `AgentClient::connect` retries through.
    let mut s = UnixStream::connect(&uds).expect("connect to the hybrid socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answer = s.write_all(b"CONNECT 1024\n").and_then(|()| {
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    eprintln!("{test}: CONNECT 1024 while the guest boots -> {answer:?}");
    drop(s);

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
    let status = vm.wait().unwrap();
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
    std::thread::sleep(Duration::from_millis(200));
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

/// Builds an initramfs whose /init is tests/fixtures/vsock-echo-init.c (static), or `None`
/// after reporting why not. Until the real agent listens on vsock this is what proves the
/// transport: CONNECT through vhost-device-vsock, the protocol's hello, bulk data both ways.
fn echo_initramfs(test: &str, dir: &Path) -> Option<PathBuf> {
    let src = common::repo_root().join("tests/fixtures/vsock-echo-init.c");
    let root = dir.join("initramfs-root");
    std::fs::create_dir_all(&root).unwrap();
    let out = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
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
    let cpio = dir.join("echo-initramfs.cpio");
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

/// Sends `data` to an echo port and reads the same number of bytes back concurrently.
///
/// The host never half-closes here: vhost-device-vsock turns a host-side EOF into a guest
/// SHUTDOWN of *both* directions (see `half_close_over_vsock`), so the echo's tail would be
/// lost.
fn echo_through(uds: &Path, port: u32, data: &[u8], limit: Duration) -> std::io::Result<Vec<u8>> {
    let s = husk::agent::vsock::connect(uds, port, Duration::from_secs(10))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    s.set_read_timeout(Some(limit))?;
    let mut w = s.try_clone()?;
    let data = data.to_vec();
    let n = data.len();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for chunk in data.chunks(64 << 10) {
            w.write_all(chunk)?;
        }
        Ok(())
    });
    let mut back = vec![0u8; n];
    let mut got = 0;
    let read = loop {
        if got == n {
            break Ok(());
        }
        match (&s).read(&mut back[got..]) {
            Ok(0) => break Ok(()),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    back.truncate(got);
    // Unblocks a writer stuck behind a stalled read.
    let _ = s.shutdown(std::net::Shutdown::Both);
    let wrote = writer.join().unwrap();
    read?;
    wrote?;
    Ok(back)
}

/// What a host half-close does to a guest connection: the guest echoes what it got after
/// seeing EOF, so the bytes that come back show whether its send side survived.
fn half_close_over_vsock(uds: &Path) -> String {
    let Ok(mut s) = husk::agent::vsock::connect(uds, 1025, Duration::from_secs(10)) else {
        return "connect failed".into();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Wait for the echo of a first message so the guest is in its read loop.
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    if s.read_exact(&mut buf).is_err() {
        return "no echo before the half-close".into();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) if rest == b"EOF-SEEN\n" => "preserved (the guest sent after its EOF)".into(),
        Ok(_) => format!(
            "acts as a full close (guest's reply after EOF lost; got {:?})",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => format!("read after half-close: {e}"),
    }
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
    let Some(initramfs) = echo_initramfs(test, dir.path()) else {
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
    let client = husk::agent::AgentClient::connect(&uds, Duration::from_secs(60));
    let Ok(client) = client else {
        panic!(
            "{}; console:\n{}",
            client.err().unwrap(),
            tail(&vm.console_log())
        );
    };
    let hello_at = t0.elapsed();
    assert_eq!(client.agent().unwrap().agent, "vsock-echo-init");

    // 16 MiB both ways with guest writes of at most 16 KiB: must be intact.
    const N: usize = 16 << 20;
    let data = pattern(N);
    let t = Instant::now();
    let back = echo_through(&uds, 1025, &data, Duration::from_secs(120)).unwrap();
    let took = t.elapsed();
    assert_eq!(
        back.len(),
        N,
        "echo lost bytes; console:\n{}",
        tail(&vm.console_log())
    );
    assert!(back == data, "echo corrupted the data");

    // Guest writes of 64 KiB: reported, not asserted (the known vhost-device-vsock defect
    // with guest packets over ~32 KiB split across descriptors).
    let big = echo_through(&uds, 1026, &pattern(1 << 20), Duration::from_secs(3));
    let big = match big {
        Ok(b) if b == pattern(1 << 20) => "1 MiB intact".to_string(),
        Ok(b) => format!("{} of {} bytes back, or corrupted", b.len(), 1 << 20),
        Err(e) => format!("failed: {e}"),
    };

    let half_close = half_close_over_vsock(&uds);

    // What a stdin stream relies on: after a host half-close the guest still reads every
    // byte, then EOF (the stream is one-way, so losing the guest's send side is harmless).
    const STDIN: usize = 4 << 20;
    let sink = husk::agent::vsock::connect(&uds, 1027, Duration::from_secs(10)).unwrap();
    let mut src = std::io::Cursor::new(pattern(STDIN));
    assert_eq!(
        husk::agent::copy_to_stream(&mut src, &sink).unwrap(),
        STDIN as u64
    );
    let sank = format!("SANK {STDIN}");
    let seen = wait_for_console(vm.as_ref(), &sank, Instant::now(), Duration::from_secs(30));
    assert!(
        seen.is_some(),
        "guest did not read {STDIN} bytes then EOF; console:\n{}",
        tail(&vm.console_log())
    );

    client.shutdown().unwrap();
    let status = vm.wait().unwrap();
    eprintln!(
        "{test}: [{}] VM start -> agent hello over vsock {:.0} ms; 16 MiB each way (guest writes <= 16 KiB) \
         in {:.2} s; guest writes of 64 KiB: {big}; host half-close: {half_close}; exit {status} at {:.0} ms",
        backend.name(),
        hello_at.as_secs_f64() * 1e3,
        took.as_secs_f64(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        status.success(),
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
        ["console.log", "echo-initramfs.cpio"],
        "sockets left behind"
    );
}
