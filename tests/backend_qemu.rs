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
