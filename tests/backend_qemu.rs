//! Real guests through the VM-backend seam on the QEMU backend (TCG on hosts whose KVM cannot
//! run a stock guest, such as PVM hosts; KVM elsewhere): the guest boots to the agent, a guest
//! power-off ends the VM with success, and nothing is left behind — no QEMU, no
//! husk-agent-mux, no socket files.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk::backend::{agent_mux, BackendKind, VmBackend, VmHandle, VmSpec, VsockSpec};

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
fn vsock_socket_runs_husk_agent_mux_and_cleans_up() {
    let test = "vsock_socket_runs_husk_agent_mux_and_cleans_up";
    let Some((kernel, initramfs)) = artifacts(test) else {
        return;
    };
    let Some(backend) = backend(test) else { return };
    if let Err(e) = agent_mux::find_binary() {
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
        "{test}: start() with husk-agent-mux returned in {:.1} ms",
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
        .filter(|(_, c)| c.contains("husk-agent-mux"))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(daemons.len(), 1, "expected one husk-agent-mux: {procs:?}");
    assert!(
        procs.iter().any(|(p, _)| *p == vm.pid()),
        "QEMU (pid {}) not found: {procs:?}",
        vm.pid()
    );

    // The agent's ready line: the guest is up and serving.
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
        "the guest should see one device, the serial port; log tail:\n{}",
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
            "husk-agent-mux (pid {d}) still running after the VM ended"
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
    let with_vsock = agent_mux::find_binary().is_ok();
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

// --- the agent channel end to end ---------------------------------------------------------

/// The QEMU backend's agent channel (a virtio-serial port, husk-agent-mux on the host) with
/// the real agent: many connections at once, each answered; a port nobody listens on is a
/// closed connection; the agent's power-off ends QEMU and the daemon.
#[test]
fn agent_channel_carries_many_connections_at_once() {
    let test = "agent_channel_carries_many_connections_at_once";
    // The production agent, as a server (not the self-test's one-shot mode).
    let (Some(kernel), Some(initramfs)) = (common::kernel(test), common::initramfs(test)) else {
        return;
    };
    let Some(backend) = backend(test) else { return };
    if let Err(e) = agent_mux::find_binary() {
        common::not_run(test, &e.to_string(), true);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let mut spec = spec(dir.path(), kernel, initramfs);
    spec.cmdline.retain(|a| a != "husk.selftest=1");
    spec.vsock = Some(VsockSpec {
        cid: 5,
        uds_path: uds.clone(),
    });
    let vm = backend.start(&spec).unwrap();
    vm.wait_vsock_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}; log tail:\n{}", tail(&vm.console_log())));
    const CONNECTIONS: usize = 16;
    let t = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let mut c = husk::agent::AgentClient::connect(&uds, Duration::from_secs(60))
                    .map_err(|e| e.to_string())?;
                // A second round trip on the connection, beside the others'.
                let hello = c.hello().map_err(|e| e.to_string())?;
                Ok::<_, String>((c, hello.agent))
            })
        })
        .collect();
    let mut open = Vec::new();
    for h in clients {
        match h.join().unwrap() {
            Ok((c, name)) => {
                assert!(name.starts_with("husk-agent "), "{name}");
                open.push(c);
            }
            Err(e) => panic!("{e}; console:\n{}", tail(&vm.console_log())),
        }
    }
    eprintln!(
        "{test}: [{}] {CONNECTIONS} connections opened and answered at once in {:.0} ms",
        backend.name(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let refused = husk::agent::vsock::connect_once(
        &uds,
        husk_protocol::AGENT_VSOCK_PORT + 1,
        Duration::from_secs(10),
    );
    assert!(refused.is_err(), "a port nobody listens on was answered");
    // Every connection still works after the refusal.
    for c in &mut open {
        c.hello().unwrap();
    }
    open.pop().unwrap().shutdown().unwrap();
    let status = wait_bounded(vm.as_ref(), Duration::from_secs(60));
    assert!(status.success(), "QEMU exit {status}");
    drop(open);
    let needle = dir.path().to_string_lossy().into_owned();
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
