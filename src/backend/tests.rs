//! Unit tests of the seam that need no VM: husk-vmm configs, spec checks, backend choice,
//! and the handle's lifecycle with fake VMM and daemon processes (shell scripts).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::qemu::{self, Accel};
use super::*;

/// A spec whose kernel file exists in `dir` (not a real kernel: nothing boots here).
pub(super) fn spec_in(dir: &Path) -> VmSpec {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    let mut s = VmSpec::new(kernel, dir.join("console.log"));
    s.memory_mib = 128;
    s
}

/// The values that follow `flag` in `args`.
pub(super) fn pair(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].clone())
        .collect()
}

#[test]
fn husk_vmm_config_carries_the_spec() {
    use crate::vmm::config::ConsoleConfig;
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec_in(dir.path());
    s.initramfs = Some("/i.cpio.gz".into());
    s.cmdline = vec!["quiet".into(), "init=/init".into()];
    s.disks = vec![
        DiskSpec {
            path: "/a".into(),
            read_only: true,
            serial: Some("husk-layer-0".into()),
        },
        DiskSpec {
            path: "/b".into(),
            read_only: false,
            serial: None,
        },
    ];
    s.vsock = Some(VsockSpec {
        cid: 3,
        uds_path: "/v.sock".into(),
    });
    let cfg = husk_vmm::config(&s);
    assert_eq!(cfg.kernel, s.kernel);
    assert_eq!(cfg.initramfs.as_deref(), Some(Path::new("/i.cpio.gz")));
    assert_eq!((cfg.vcpus, cfg.memory_mib), (1, 128));
    // Its own default command line stays; ours is appended.
    assert_eq!(cfg.cmdline, None);
    assert_eq!(cfg.append.as_deref(), Some("quiet init=/init"));
    assert_eq!(cfg.console, ConsoleConfig::File(s.console_log.clone()));
    let disks: Vec<_> = cfg
        .disks
        .iter()
        .map(|d| (d.path.to_str().unwrap(), d.read_only, d.serial.as_deref()))
        .collect();
    assert_eq!(
        disks,
        [("/a", true, Some("husk-layer-0")), ("/b", false, None)]
    );
    let v = cfg.vsock.as_ref().unwrap();
    assert_eq!((v.cid, v.uds.as_path()), (3, Path::new("/v.sock")));
    assert!(cfg.net.is_empty() && cfg.fs.is_empty());
    assert!(!cfg.fast_exit && cfg.timeout_secs.is_none());

    let held: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&held);
    s.taps = vec![
        TapSpec::new("husk-tap0", [2, 0xab, 0, 0, 0, 0x0c]),
        TapSpec {
            fd: Some(super::TapFd(std::sync::Arc::new(held))),
            ..TapSpec::new("ctr-tap1", [2, 0, 0, 0, 0, 1])
        },
    ];
    let nets: Vec<_> = husk_vmm::config(&s)
        .net
        .iter()
        .map(|n| (n.tap.clone().unwrap(), n.fd, n.guest_mac().0))
        .collect();
    assert_eq!(
        nets,
        [
            ("husk-tap0".to_string(), None, [2, 0xab, 0, 0, 0, 0x0c]),
            ("ctr-tap1".to_string(), Some(raw), [2, 0, 0, 0, 0, 1])
        ]
    );
}

/// The config the husk-vmm backend writes for a container's VM is what husk-vmm reads back
/// through its own `--config` and validation, unchanged: nothing the runtime asks for is
/// dropped or refused (the QEMU-only boot tests cannot notice a mismatch here).
#[test]
fn husk_vmm_reads_back_the_runtimes_whole_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec_in(dir.path());
    s.initramfs = Some(dir.path().join("initrd"));
    s.cmdline = vec!["quiet".into()];
    s.vcpus = 2;
    s.disks = (0..3)
        .map(|i| DiskSpec {
            path: dir.path().join(format!("l{i}.img")),
            read_only: true,
            serial: Some(format!("husk-layer-{i}")),
        })
        .chain([DiskSpec {
            path: dir.path().join("scratch.img"),
            read_only: false,
            serial: Some("husk-scratch".into()),
        }])
        .collect();
    s.vsock = Some(VsockSpec {
        cid: 9,
        uds_path: dir.path().join("v.sock"),
    });
    s.shared_dirs = vec![share_spec(dir.path(), "husk-vol-0", true)];
    s.taps = vec![TapSpec::new("husk-tap0", [2, 0xab, 0, 0, 0, 0x0c])];
    let jail = crate::confine::jail::JailConfig {
        root: "/run/husk-jail".into(),
        uid: 0x7000_0009,
        gid: 0x7000_0009,
        binds: vec![dir.path().to_path_buf()],
        max_open_files: 4096,
        max_file_bytes: 64 << 20,
        max_threads: 16,
    };
    let file = husk_vmm::write_config(&s, Some(jail.clone())).unwrap();
    assert_eq!(file, husk_vmm::config_file_for(&s.console_log));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cli = <crate::vmm::cli::Args as clap::Parser>::try_parse_from([
        "husk-vmm",
        "--config",
        file.to_str().unwrap(),
    ])
    .unwrap();
    let cfg = cli.into_config().unwrap();
    cfg.validate().unwrap();
    let mut want = husk_vmm::config(&s);
    want.jail = Some(jail);
    want.seccomp = crate::confine::launch::seccomp_mode();
    assert_eq!(cfg, want);
    assert!(cfg.kernel_cmdline().ends_with(" quiet"));
    assert_eq!(cfg.fs[0].socket, virtiofsd::socket_for(&s.console_log, 0));
}

/// A VM that husk-vmm would refuse fails at the seam with husk-vmm's own reason, and leaves
/// no config file behind.
#[test]
fn husk_vmm_refuses_a_config_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec_in(dir.path());
    s.disks = vec![DiskSpec {
        path: dir.path().join("d.img"),
        read_only: false,
        serial: Some("x".repeat(21)),
    }];
    let err = husk_vmm::write_config(&s, None).unwrap_err();
    assert!(
        err.to_string().starts_with("husk-vmm cannot run this VM: "),
        "{err}"
    );
    assert!(!husk_vmm::config_file_for(&s.console_log).exists());
}

#[test]
fn validate_names_the_field_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let ok = spec_in(dir.path());
    ok.validate().unwrap();

    let mut s = ok.clone();
    s.kernel = dir.path().join("nope");
    assert!(matches!(
        s.validate(),
        Err(Error::MissingFile { what: "kernel", .. })
    ));

    let mut s = ok.clone();
    s.vsock = Some(VsockSpec {
        cid: 2,
        uds_path: dir.path().join("v"),
    });
    assert!(s.validate().unwrap_err().to_string().contains("cid 2"));

    let mut s = ok.clone();
    s.cmdline = vec!["a b".into()];
    assert!(s.validate().unwrap_err().to_string().contains("whitespace"));

    let mut s = ok.clone();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, b"").unwrap();
    s.disks = vec![DiskSpec {
        path: disk,
        read_only: true,
        serial: Some("x".repeat(21)),
    }];
    assert!(s.validate().unwrap_err().to_string().contains("serial"));

    let mut s = ok.clone();
    s.vcpus = 0;
    assert!(s.validate().is_err());

    let mut s = ok;
    s.taps.push(TapSpec::new("tap0", [2, 0, 0, 0, 0, 1]));
    s.validate().unwrap();
    for bad in [
        TapSpec::new("tap0", [0; 6]),
        TapSpec::new("tap0", [1, 0, 0, 0, 0, 1]),
        TapSpec::new("a/b", [2, 0, 0, 0, 0, 1]),
        TapSpec::new("a,b", [2, 0, 0, 0, 0, 1]),
        TapSpec::new("", [2, 0, 0, 0, 0, 1]),
        TapSpec::new("t".repeat(16), [2, 0, 0, 0, 0, 1]),
    ] {
        s.taps = vec![bad.clone()];
        assert!(
            matches!(s.validate(), Err(Error::InvalidSpec(_))),
            "{bad:?}"
        );
    }
    s.taps = vec![
        TapSpec::new("tap0", [2, 0, 0, 0, 0, 1]),
        TapSpec::new("tap0", [2, 0, 0, 0, 0, 2]),
    ];
    assert!(s.validate().is_err(), "same TAP twice");
}

#[test]
fn backend_kind_parses_flag_values() {
    assert_eq!("auto".parse::<BackendKind>().unwrap(), BackendKind::Auto);
    assert_eq!("husk".parse::<BackendKind>().unwrap(), BackendKind::Husk);
    assert_eq!("QEMU".parse::<BackendKind>().unwrap(), BackendKind::Qemu);
    let e = "firecracker".parse::<BackendKind>().unwrap_err();
    assert!(e.to_string().contains("auto, husk or qemu"));
    assert_eq!(
        BackendKind::from_flag_or_env(Some("qemu")).unwrap(),
        BackendKind::Qemu
    );
    assert_ne!(BackendKind::Auto.resolve(), BackendKind::Auto);
    assert_eq!(BackendKind::Qemu.resolve(), BackendKind::Qemu);
}

// --- lifecycle with fake processes ------------------------------------------------------

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A stand-in for husk-agent-mux: husk binds both its sockets and hands them over
/// (`--listen-fd N --link-fd M`); this records its pid and the descriptors' kinds, and sleeps.
fn fake_daemon(dir: &Path) -> PathBuf {
    let d = dir.display();
    script(
        dir,
        "fake-husk-agent-mux",
        &format!(
            r#"echo "$$" > "{d}/daemon.pid"
echo "$1 $(readlink /proc/self/fd/$2 | cut -d: -f1) $3 $(readlink /proc/self/fd/$4 | cut -d: -f1)" > "{d}/daemon.fds"
exec sleep 1000"#
        ),
    )
}

/// A stand-in for virtiofsd: listens on `--socket-path`, records its pid per socket, sleeps.
fn fake_virtiofsd(dir: &Path) -> PathBuf {
    script(
        dir,
        "fake-virtiofsd",
        r#"for a in "$@"; do case "$a" in --socket-path=*) sock="${a#--socket-path=}";; esac; done
echo "$$" > "$sock.pid"
echo "$@" > "$sock.args"
exec perl -MIO::Socket::UNIX -e '
    my $l = IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 1) or die "bind: $!";
    sleep 1000;' "$sock""#,
    )
}

fn share_spec(dir: &Path, tag: &str, ro: bool) -> SharedDirSpec {
    let host_path = dir.join(tag);
    std::fs::create_dir_all(&host_path).unwrap();
    SharedDirSpec::volume(host_path, tag, ro)
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; a reaped child is gone.
    // SAFETY: kill() touches no memory, and signal 0 delivers nothing.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn fake_qemu_backend(dir: &Path, qemu_body: &str) -> QemuBackend {
    QemuBackend {
        qemu: script(dir, "fake-qemu", qemu_body),
        accel: Accel::Tcg,
        agent_mux: Some(fake_daemon(dir)),
        virtiofsd: Some(fake_virtiofsd(dir)),
        layer_disk: None,
        // The fake daemons write into the test's directory, which a VM's uid may not.
        confine: false,
        tsc_khz: None,
        templates: None,
    }
}

/// The fake daemon's file `name`, once it has written it (start() does not wait for a
/// daemon whose sockets husk bound itself).
fn daemon_file(dir: &Path, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(s) if s.ends_with('\n') => return s,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            r => panic!("{name}: {r:?}"),
        }
    }
}

fn daemon_pid(dir: &Path) -> u32 {
    daemon_file(dir, "daemon.pid").trim().parse().unwrap()
}

#[test]
fn kill_ends_vm_and_helper_and_removes_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake_qemu_backend(dir.path(), "exec sleep 1000");
    let mut s = spec_in(dir.path());
    let uds = dir.path().join("v.sock");
    s.vsock = Some(VsockSpec {
        cid: 3,
        uds_path: uds.clone(),
    });
    let vm = backend.start(&s).unwrap();
    let daemon = daemon_pid(dir.path());
    assert!(alive(vm.pid()) && alive(daemon));
    assert!(uds.exists() && Path::new(&format!("{}.serial", uds.display())).exists());
    assert_eq!(
        daemon_file(dir.path(), "daemon.fds").trim(),
        "--listen-fd socket --link-fd socket",
        "husk-agent-mux gets both sockets as descriptors"
    );
    assert_eq!(vm.vsock_uds(), Some(uds.clone()));
    assert_eq!(vm.try_wait().unwrap(), None);

    vm.kill().unwrap();
    assert!(!alive(vm.pid()), "VM process still there");
    assert!(!alive(daemon), "husk-agent-mux still there");
    assert!(!uds.exists() && !Path::new(&format!("{}.serial", uds.display())).exists());
    // Killed: not a success, and repeated calls agree.
    let st = vm.wait().unwrap();
    assert!(!st.success());
    assert_eq!(vm.try_wait().unwrap(), Some(st));
    vm.kill().unwrap();
}

#[test]
fn drop_cleans_up_like_kill() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake_qemu_backend(dir.path(), "exec sleep 1000");
    let mut s = spec_in(dir.path());
    let uds = dir.path().join("v.sock");
    s.vsock = Some(VsockSpec {
        cid: 3,
        uds_path: uds.clone(),
    });
    let vm = backend.start(&s).unwrap();
    let (pid, daemon) = (vm.pid(), daemon_pid(dir.path()));
    drop(vm);
    assert!(!alive(pid) && !alive(daemon));
    assert!(!uds.exists());
}

#[test]
fn vm_exit_is_reported_and_stops_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    // Like QEMU: diagnostics to stderr (which must land in the console log), then exit 0.
    let backend = fake_qemu_backend(dir.path(), "echo qemu-diagnostic >&2; sleep 0.2; exit 0");
    let mut s = spec_in(dir.path());
    s.vsock = Some(VsockSpec {
        cid: 3,
        uds_path: dir.path().join("v.sock"),
    });
    let vm = backend.start(&s).unwrap();
    let daemon = daemon_pid(dir.path());
    assert!(vm.wait().unwrap().success());
    assert!(!alive(daemon));
    let log = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(log.contains("qemu-diagnostic"), "console log: {log:?}");
}

#[test]
fn wait_in_one_thread_kill_in_another() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake_qemu_backend(dir.path(), "exec sleep 1000");
    let vm: std::sync::Arc<dyn VmHandle> = backend.start(&spec_in(dir.path())).unwrap().into();
    let waiter = {
        let vm = vm.clone();
        std::thread::spawn(move || vm.wait().unwrap())
    };
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    vm.kill().unwrap();
    let st = waiter.join().unwrap();
    assert!(!st.success());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn daemon_that_dies_early_fails_start_without_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = fake_qemu_backend(dir.path(), "exec sleep 1000");
    backend.virtiofsd = Some(script(dir.path(), "bad-daemon", "echo boom >&2; exit 3"));
    let mut s = spec_in(dir.path());
    s.shared_dirs = vec![share_spec(dir.path(), "vol", false)];
    let err = backend.start(&s).err().expect("start must fail");
    assert!(matches!(err, Error::HelperDied { .. }), "{err}");
    assert!(err.to_string().contains("console.log"), "{err}");
}

#[test]
fn missing_qemu_binary_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let err = qemu::find_qemu(Some(dir.path().join("no-qemu"))).unwrap_err();
    assert!(matches!(err, Error::MissingProgram { .. }), "{err}");
    assert!(
        err.to_string().contains("apt-get install qemu-system-x86"),
        "{err}"
    );
}

#[test]
fn vm_binary_that_cannot_start_is_a_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let backend = QemuBackend {
        qemu: dir.path().join("no-qemu"),
        accel: Accel::Tcg,
        agent_mux: None,
        virtiofsd: None,
        layer_disk: None,
        confine: true,
        tsc_khz: None,
        templates: None,
    };
    let err = backend
        .start(&spec_in(dir.path()))
        .err()
        .expect("start must fail");
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
}

#[test]
fn listening_state_is_read_from_proc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    assert!(!listening::is_listening(&path));
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    assert!(listening::is_listening(&path));
    drop(l);
    // The file stays, the listener is gone.
    assert!(path.exists() && !listening::is_listening(&path));
}

#[test]
fn shares_get_one_virtiofsd_each_and_a_tagged_device() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake_qemu_backend(
        dir.path(),
        "echo \"$@\" > \"$(dirname \"$0\")/qemu.args\"; exec sleep 1000",
    );
    let mut s = spec_in(dir.path());
    s.shared_dirs = vec![
        share_spec(dir.path(), "root", false),
        share_spec(dir.path(), "vol1", true),
    ];
    let vm = backend.start(&s).unwrap();
    let socks: Vec<PathBuf> = (0..2)
        .map(|i| virtiofsd::socket_for(&s.console_log, i))
        .collect();
    let pids: Vec<u32> = socks
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("{}.pid", p.display()))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    let ro_args = std::fs::read_to_string(format!("{}.args", socks[1].display())).unwrap();
    assert!(
        ro_args.contains("--readonly") && ro_args.contains("--seccomp=kill"),
        "{ro_args}"
    );
    // The QEMU script may not have written its args yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    let qargs = loop {
        if let Ok(a) = std::fs::read_to_string(dir.path().join("qemu.args")) {
            break a;
        }
        assert!(Instant::now() < deadline, "fake QEMU never ran");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        qargs.contains("vhost-user-fs-device,chardev=fs0,tag=root"),
        "{qargs}"
    );
    assert!(
        qargs.contains(&format!("socket,id=fs1,path={}", socks[1].display())),
        "{qargs}"
    );
    assert!(pids.iter().all(|&p| alive(p)));
    vm.kill().unwrap();
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "a virtiofsd outlived its VM"
    );
    assert!(socks.iter().all(|p| !p.exists()), "sockets left behind");
}

#[test]
fn a_virtiofsd_that_dies_mid_run_ends_the_vm_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let backend = fake_qemu_backend(dir.path(), "exec sleep 1000");
    let mut s = spec_in(dir.path());
    s.shared_dirs = vec![share_spec(dir.path(), "vol0", false)];
    let vm = backend.start(&s).unwrap();
    let sock = virtiofsd::socket_for(&s.console_log, 0);
    let pid: i32 = std::fs::read_to_string(format!("{}.pid", sock.display()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = Instant::now();
    // SAFETY: kill() touches no memory; `pid` is the helper this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let err = vm
        .wait()
        .expect_err("a VM whose virtiofsd died must not end in success");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(err, Error::HelperExited { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("virtiofsd (share vol0)") && msg.contains("console.log"),
        "{msg}"
    );
    let log = std::fs::read_to_string(vm.console_log()).unwrap();
    assert_eq!(log.matches("while the VM ran").count(), 1, "{log}");
    assert!(!alive(vm.pid()));
    assert!(vm.try_wait().is_err(), "repeated calls agree");
}

#[test]
fn shared_dirs_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec_in(dir.path());
    s.shared_dirs = vec![
        share_spec(dir.path(), "a", false),
        share_spec(dir.path(), "a", true),
    ];
    assert!(s.validate().unwrap_err().to_string().contains("used twice"));
    s.shared_dirs.pop();
    s.validate().unwrap();
    let mut long = s.clone();
    long.console_log = dir.path().join("x".repeat(100));
    assert!(long
        .validate()
        .unwrap_err()
        .to_string()
        .contains("107 bytes"));
    let fs = husk_vmm::config(&s).fs;
    let sock = virtiofsd::socket_for(&s.console_log, 0);
    assert_eq!((fs[0].tag.as_str(), &fs[0].socket), ("a", &sock));
}

#[test]
fn husk_vmm_inherits_pre_opened_tap_fds_only() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // std opens with O_CLOEXEC: neither would reach the child on its own.
    let fa = std::fs::File::create(&a).unwrap();
    let fb = std::fs::File::create(&b).unwrap();
    let (na, nb) = (fa.as_raw_fd(), fb.as_raw_fd());
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "readlink /proc/self/fd/{na}; readlink /proc/self/fd/{nb} || echo closed"
    ));
    husk_vmm::inherit_fds(&mut cmd, vec![na]);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, format!("{}\nclosed\n", a.display()));
    // The parent's copy keeps close-on-exec.
    assert_ne!(
        // SAFETY: F_GETFD only reads the descriptor flags.
        unsafe { libc::fcntl(na, libc::F_GETFD) } & libc::FD_CLOEXEC,
        0
    );
}

/// husk-vmm backend: the wait for the guest's ready line returns once it is on the console,
/// and a VMM that dies first is reported at once with its status and its one-line error,
/// not after the agent's connect timeout.
#[test]
fn husk_vmm_ready_wait_sees_the_line_or_the_vmms_last_words() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec_in(dir.path());
    s.vsock = Some(VsockSpec {
        cid: 3,
        uds_path: dir.path().join("v.sock"),
    });
    let backend = |body: &str| HuskVmmBackend {
        binary: script(dir.path(), "fake-husk-vmm", body),
        virtiofsd: None,
        confine: true,
    };
    let up = backend(&format!(
        "echo booting; echo {}; exec sleep 1000",
        husk_protocol::GUEST_READY_MARKER
    ));
    let vm = up.start(&s).unwrap();
    vm.wait_vsock_ready(Duration::from_secs(20)).unwrap();
    vm.kill().unwrap();

    let dies = backend("echo booting; echo 'husk-vmm: KVM_RUN failed: \x1b[31m' >&2; exit 1");
    let vm = dies.start(&s).unwrap();
    let t = Instant::now();
    let err = vm.wait_vsock_ready(Duration::from_secs(20)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let msg = err.to_string();
    assert!(
        matches!(err, Error::ExitedBeforeReady { .. })
            && msg.contains("exit status: 1")
            && msg.contains(r#": "husk-vmm: KVM_RUN failed: \u{1b}[31m"; see "#),
        "{msg}"
    );
}

#[test]
fn last_line_is_the_last_non_empty_one_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    assert_eq!(process_vm::last_line(&log), None, "no file");
    std::fs::write(&log, "").unwrap();
    assert_eq!(process_vm::last_line(&log), None, "empty");
    std::fs::write(&log, "x".repeat(100_000) + "\nfirst\r\n  last words  \n\n").unwrap();
    assert_eq!(process_vm::last_line(&log).as_deref(), Some("last words"));
    std::fs::write(&log, "y".repeat(5000)).unwrap();
    assert_eq!(process_vm::last_line(&log).map(|l| l.len()), Some(300));
    // A panic's own line, not the end of the stack dump after it.
    let dump = "[    0.02] Call Trace:\n".repeat(50) + "[    0.02]  </TASK>\n";
    std::fs::write(
        &log,
        format!("[    0.01] Kernel panic - not syncing: IO-APIC + timer doesn't work!\n{dump}"),
    )
    .unwrap();
    assert_eq!(
        process_vm::last_line(&log).as_deref(),
        Some("[    0.01] Kernel panic - not syncing: IO-APIC + timer doesn't work!")
    );
}

#[test]
fn a_console_log_is_the_owners_alone_even_when_it_was_left_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    super::child::open_console_log(&log).unwrap();
    assert_eq!(mode(&log), 0o600);
    std::fs::write(&log, b"what the container printed").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    super::child::open_console_log(&log).unwrap();
    assert_eq!(mode(&log), 0o600);
    assert_eq!(
        std::fs::read(&log).unwrap(),
        b"",
        "truncated for the new boot"
    );
}
