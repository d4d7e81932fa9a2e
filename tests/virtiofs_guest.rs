//! Host directories in real guests through virtio-fs: the QEMU backend (TCG on hosts whose KVM
//! cannot run a stock guest) with one virtiofsd per shared directory, the agent mounting the
//! tags as volumes inside an image rootfs or as the container rootfs itself.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "agent_guest/harness.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{container, mnt, process, s, Guest};
use husk::backend::{virtiofsd, SharedDirSpec, VmSpec};
use husk_protocol::{RootfsSpec, StreamKind};

/// virtiofsd, or `None` after reporting why the test cannot run.
fn have_virtiofsd(test: &str) -> bool {
    match virtiofsd::find_binary() {
        Ok(_) => true,
        Err(e) => {
            common::not_run(test, &e.to_string(), true);
            false
        }
    }
}

/// Boots with `shares` (host dirs created under the VM's temp dir as `<tag>/`); returns the
/// guest and the host directory of each share.
fn boot_with_shares(test: &str, shares: &[(&str, bool)]) -> Option<(Guest, Vec<PathBuf>)> {
    if !have_virtiofsd(test) {
        return None;
    }
    let mut dirs = Vec::new();
    let g = Guest::boot_custom(test, vec![], |spec: &mut VmSpec, dir: &Path| {
        for (tag, ro) in shares {
            let d = dir.join(tag);
            std::fs::create_dir_all(&d).unwrap();
            spec.shared_dirs.push(SharedDirSpec::volume(&d, *tag, *ro));
            dirs.push(d);
        }
    })?;
    Some((g, dirs))
}

/// A long-running init so execs can come and go.
fn idle_init() -> husk_protocol::ProcessSpec {
    process(&["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"])
}

fn start(g: &Guest, spec: husk_protocol::ContainerSpec) {
    let id = spec.container_id.clone();
    g.client.create_container(spec).unwrap_or_else(|e| {
        panic!(
            "create {id}: {e}\n{}",
            std::fs::read_to_string(g.vm.console_log()).unwrap_or_default()
        )
    });
    g.client.close_stdin(&id, None).unwrap();
    g.client
        .start_container(&id)
        .unwrap_or_else(|e| panic!("start {id}: {e}\n{}", g.console()));
}

#[test]
fn volumes_are_live_both_ways_and_ro_refuses_writes() {
    let test = "volumes_are_live_both_ways_and_ro_refuses_writes";
    let Some((g, dirs)) = boot_with_shares(test, &[("vol", false), ("rovol", true)]) else {
        return;
    };
    let (vol, rovol) = (&dirs[0], &dirs[1]);
    std::fs::write(rovol.join("seed"), "from the host\n").unwrap();

    // `-v` on top of the image rootfs: the tags mounted at destinations inside it.
    let mut spec = container("c1", idle_init());
    spec.mounts
        .push(mnt("/data", "virtiofs", "vol", &["rw", "rprivate"]));
    spec.mounts
        .push(mnt("/ro", "virtiofs", "rovol", &["ro", "nosuid", "nodev"]));
    start(&g, spec);

    // Container -> host: content and mode visible as soon as the command has ended.
    let (code, _, e) = g.exec(
        "c1",
        "w",
        process(&[
            "sh",
            "-c",
            "echo written-in-guest > /data/out.txt; chmod 640 /data/out.txt",
        ]),
        vec![],
    );
    assert_eq!(code, 0, "{}", s(&e));
    let out = vol.join("out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "written-in-guest\n");
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    // Host -> container, including a rewrite that grows the file.
    std::fs::write(vol.join("in.txt"), "v1\n").unwrap();
    let (code, o, _) = g.exec("c1", "r1", process(&["cat", "/data/in.txt"]), vec![]);
    assert_eq!((code, s(&o)), (0, "v1\n".into()));
    std::fs::write(vol.join("in.txt"), "version two, longer\n").unwrap();
    let (code, o, _) = g.exec("c1", "r2", process(&["cat", "/data/in.txt"]), vec![]);
    assert_eq!((code, s(&o)), (0, "version two, longer\n".into()));

    // Read-only: readable, every write refused, nothing lands on the host.
    let (code, o, _) = g.exec("c1", "r3", process(&["cat", "/ro/seed"]), vec![]);
    assert_eq!((code, s(&o)), (0, "from the host\n".into()));
    let (code, _, e) = g.exec(
        "c1",
        "w2",
        process(&[
            "sh",
            "-c",
            "echo x > /ro/new; echo y >> /ro/seed; rm /ro/seed",
        ]),
        vec![],
    );
    assert_ne!(code, 0);
    assert!(s(&e).contains("Read-only file system"), "{}", s(&e));
    assert!(!rovol.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(rovol.join("seed")).unwrap(),
        "from the host\n"
    );
    let (_, o, _) = g.exec("c1", "m", process(&["cat", "/proc/mounts"]), vec![]);
    let mounts = s(&o);
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("rovol /ro virtiofs ro,")),
        "{mounts}"
    );

    g.client.signal("c1", None, libc::SIGTERM).unwrap();
    let st = g.client.wait("c1", None).unwrap();
    assert_eq!(st.code, 0);
    assert!(wait_bounded(&g, Duration::from_secs(30)).unwrap().success());
}

/// A busybox tree as a plain host directory: what an engine hands a runtime as `root.path`.
fn busybox_dir(dir: &Path) -> Option<PathBuf> {
    let bb = Path::new("/bin/busybox");
    if !bb.is_file() {
        return None;
    }
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    Some(root)
}

#[test]
fn a_directory_rootfs_boots_and_runs_a_shell() {
    let test = "a_directory_rootfs_boots_and_runs_a_shell";
    if !have_virtiofsd(test) {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let Some(root) = busybox_dir(host.path()) else {
        common::not_run(
            test,
            "/bin/busybox missing (apt-get install busybox-static)",
            true,
        );
        return;
    };
    let ro_root = host.path().join("ro-rootfs");
    std::fs::create_dir_all(&ro_root).unwrap();
    let r2 = busybox_dir(&ro_root).unwrap();
    let Some(g) = Guest::boot_custom(test, vec![], |spec, _| {
        spec.shared_dirs
            .push(SharedDirSpec::rootfs(&root, "rootfs", false));
        spec.shared_dirs
            .push(SharedDirSpec::rootfs(&r2, "rorootfs", true));
    }) else {
        return;
    };

    let mut rw = container(
        "dir",
        process(&["/bin/sh", "-c", "echo ok > /tmp/x; cat /tmp/x"]),
    );
    rw.rootfs = RootfsSpec::VirtioFs {
        tag: "rootfs".into(),
    };
    // Read-only root (OCI root.readonly) from a read-only share: writes refused twice over.
    let mut ro = container(
        "dirro",
        process(&["/bin/sh", "-c", "echo no > /tmp/y || echo refused"]),
    );
    ro.rootfs = RootfsSpec::VirtioFs {
        tag: "rorootfs".into(),
    };
    ro.readonly_root = true;
    for c in [rw, ro] {
        let id = c.container_id.clone();
        g.client
            .create_container(c)
            .unwrap_or_else(|e| panic!("create {id}: {e}\n{}", g.console()));
    }
    let mut outs = Vec::new();
    for id in ["dir", "dirro"] {
        outs.push(g.stream(id, None, StreamKind::Stdout));
        g.client.close_stdin(id, None).unwrap();
        g.client.start_container(id).unwrap();
    }
    let texts: Vec<String> = outs.into_iter().map(|o| s(&harness::read_all(o))).collect();
    assert_eq!(g.client.wait("dir", None).unwrap().code, 0);
    assert_eq!(g.client.wait("dirro", None).unwrap().code, 0);
    assert_eq!(texts[0], "ok\n");
    assert_eq!(texts[1], "refused\n");
    // The rootfs is the host directory itself.
    assert_eq!(std::fs::read_to_string(root.join("tmp/x")).unwrap(), "ok\n");
    assert!(!r2.join("tmp/y").exists());
    assert!(wait_bounded(&g, Duration::from_secs(30)).unwrap().success());
}

/// The pid of the virtiofsd serving `socket`, found by its command line.
fn virtiofsd_pid(socket: &Path) -> Option<i32> {
    let want = format!("--socket-path={}", socket.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        cmd.split(|&b| b == 0)
            .any(|a| a == want.as_bytes())
            .then_some(pid)
    })
}

#[test]
fn killing_virtiofsd_mid_run_ends_the_vm_with_a_clear_error() {
    let test = "killing_virtiofsd_mid_run_ends_the_vm_with_a_clear_error";
    let Some((g, dirs)) = boot_with_shares(test, &[("vol", false)]) else {
        return;
    };
    std::fs::write(dirs[0].join("f"), "x").unwrap();
    // The container reads the share in a loop, and says through it that it does.
    let mut spec = container(
        "c1",
        process(&[
            "sh",
            "-c",
            "cat /data/f > /dev/null && echo up > /data/reading; \
             while :; do cat /data/f > /dev/null || echo read-failed; sleep 0.1; done",
        ]),
    );
    spec.mounts.push(mnt("/data", "virtiofs", "vol", &[]));
    start(&g, spec);
    let reading = dirs[0].join("reading");
    assert!(
        common::poll_until(common::SETTLE, || reading.exists().then_some(())).is_some(),
        "the container never wrote {} through the share\n{}",
        reading.display(),
        g.console()
    );

    let socket = virtiofsd::socket_for(&g.vm.console_log(), 0);
    let pid = virtiofsd_pid(&socket).expect("the share's virtiofsd is running");
    let t = Instant::now();
    // SAFETY: kill() touches no memory; `pid` is the share's virtiofsd, found just above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let err = wait_bounded(&g, Duration::from_secs(30))
        .expect_err("a VM whose virtiofsd died must not end in success");
    let took = t.elapsed();
    eprintln!(
        "{test}: virtiofsd killed -> VM ended: {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    let msg = err.to_string();
    assert!(
        msg.contains("virtiofsd (share vol)") && msg.contains("while the VM ran"),
        "{msg}"
    );
    // The agent connection is gone with the VM: the host's wait errors instead of hanging.
    assert!(g.client.wait("c1", None).is_err());
    assert!(!socket.exists(), "socket left behind");
}

/// Waits for the VM to end (the agent powers it off once every container was waited for),
/// killing it and failing the test after `limit`.
fn wait_bounded(
    g: &Guest,
    limit: Duration,
) -> Result<std::process::ExitStatus, husk::backend::Error> {
    let start = Instant::now();
    loop {
        if let Some(st) = g.vm.try_wait()? {
            return Ok(st);
        }
        if start.elapsed() > limit {
            let _ = g.vm.kill();
            panic!("VM still running after {limit:?}\n{}", g.console());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same small-file and sequential-read work through virtio-fs (a volume: cache never; a
/// rootfs-style share: cache auto), on an ext4 virtio-blk disk, and on the host directory
/// directly, in one run (`scripts/bench-virtiofs.sh`). Guest times come from /proc/uptime
/// (10 ms resolution); guest caches are dropped before each read phase, the host's are not.
#[test]
#[ignore = "benchmark: scripts/bench-virtiofs.sh"]
fn bench_virtiofs() {
    let test = "bench_virtiofs";
    let n: u32 = env_or("BENCH_FILES", 2000);
    let mib: u32 = env_or("BENCH_MIB", 256);
    if !have_virtiofsd(test) {
        return;
    }
    let disk_dir = tempfile::tempdir().unwrap();
    let disk = disk_dir.path().join("bench.ext4");
    let ok = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .arg(format!("{}M", mib * 2 + 64))
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4");
    let extra = vec![husk::backend::DiskSpec {
        path: disk,
        read_only: false,
        serial: Some("bench".into()),
    }];
    let mut dirs = Vec::new();
    let Some(g) = Guest::boot_custom(test, extra, |spec, dir| {
        spec.memory_mib = 512;
        for (tag, auto) in [("never", false), ("auto", true)] {
            let d = dir.join(tag);
            std::fs::create_dir_all(&d).unwrap();
            spec.shared_dirs.push(if auto {
                SharedDirSpec::rootfs(&d, tag, false)
            } else {
                SharedDirSpec::volume(&d, tag, false)
            });
            dirs.push(d);
        }
    }) else {
        return;
    };
    let mut spec = container("b", idle_init());
    spec.readonly_paths.clear(); // drop_caches
    spec.mounts.push(mnt("/never", "virtiofs", "never", &[]));
    spec.mounts.push(mnt("/auto", "virtiofs", "auto", &[]));
    // layer0 = vda, scratch = vdb, the bench disk = vdc.
    spec.mounts.push(mnt("/blk", "ext4", "/dev/vdc", &[]));
    start(&g, spec);
    let script = format!(
        r#"t() {{ read a b < /proc/uptime; echo "${{a%.*}}${{a#*.}}"; }}
D=$1; mkdir -p $D/small; sync
s=$(t); i=0; while [ $i -lt {n} ]; do echo hello > $D/small/f$i; i=$((i+1)); done; sync; e=$(t); echo create $((e-s))
echo 3 > /proc/sys/vm/drop_caches
s=$(t); cat $D/small/* > /dev/null; e=$(t); echo read $((e-s))
dd if=/dev/zero of=$D/big bs=1M count={mib} 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches
s=$(t); dd if=$D/big of=/dev/null bs=1M 2>/dev/null; e=$(t); echo seq $((e-s))
s=$(t); i=0; while [ $i -lt {n} ]; do : ; i=$((i+1)); done; e=$(t); echo loop $((e-s))
rm -rf $D/small $D/big"#
    );
    println!("bench_virtiofs: {n} files, {mib} MiB sequential, guest on the QEMU backend");
    println!(
        "{:<22} {:>14} {:>14} {:>12}",
        "target", "create/s", "small read/s", "seq MiB/s"
    );
    for (name, dir) in [
        ("virtio-fs cache=never", "/never"),
        ("virtio-fs cache=auto", "/auto"),
        ("virtio-blk ext4", "/blk"),
    ] {
        let (code, o, e) = g.exec(
            "b",
            &format!("bench{}", &dir[1..]),
            process(&["sh", "-c", &script, "sh", dir]),
            vec![],
        );
        assert_eq!(code, 0, "{}", s(&e));
        let cs: std::collections::HashMap<String, f64> = s(&o)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse::<f64>().ok()? / 100.0))
            })
            .collect();
        let rate = |k: &str, units: f64| {
            let secs = (cs[k] - if k == "create" { cs["loop"] } else { 0.0 }).max(0.01);
            units / secs
        };
        println!(
            "{name:<22} {:>14.0} {:>14.0} {:>12.1}   (shell loop alone: {:.2} s)",
            rate("create", n as f64),
            rate("read", n as f64),
            rate("seq", mib as f64),
            cs["loop"]
        );
    }
    // The host, directly, on the share's directory (page cache warm).
    let d = &dirs[0];
    let small = d.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let t = Instant::now();
    for i in 0..n {
        std::fs::write(small.join(format!("f{i}")), "hello\n").unwrap();
    }
    let create = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        std::fs::read(small.join(format!("f{i}"))).unwrap();
    }
    let read = n as f64 / t.elapsed().as_secs_f64();
    let big = d.join("big");
    std::fs::write(&big, vec![0u8; (mib as usize) << 20]).unwrap();
    let t = Instant::now();
    let mut f = std::fs::File::open(&big).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while std::io::Read::read(&mut f, &mut buf).unwrap() > 0 {}
    let seq = mib as f64 / t.elapsed().as_secs_f64();
    println!(
        "{:<22} {create:>14.0} {read:>14.0} {seq:>12.1}   (host, page cache warm)",
        "host directory"
    );
    g.client.signal("b", None, libc::SIGTERM).unwrap();
    let _ = g.client.wait("b", None);
}

fn env_or(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The same guest on husk-vmm: its vhost-user-fs frontend, memfd guest memory and the same
/// virtiofsd management. A directory rootfs plus a volume, no disks at all. Runs where KVM
/// runs a stock guest (not on PVM hosts, where only the driver-side harness
/// `tests/virtio_fs_harness.rs` exercises the frontend).
#[test]
fn husk_vmm_directory_rootfs_and_volume() {
    let test = "husk_vmm_directory_rootfs_and_volume";
    // Directly where the host's KVM boots Linux, else in the nested-KVM rig.
    if !common::rig::on_linux_kvm(test, Duration::from_secs(600)) {
        return;
    }
    let (Some(kernel), Some(initramfs)) = (common::kernel(test), common::initramfs(test)) else {
        return;
    };
    if !have_virtiofsd(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = busybox_dir(dir.path()) else {
        common::not_run(
            test,
            "/bin/busybox missing (apt-get install busybox-static)",
            true,
        );
        return;
    };
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let backend = husk::backend::HuskVmmBackend {
        binary: common::bin("husk-vmm"),
        virtiofsd: None,
        confine: true,
    };
    let uds = dir.path().join("vsock.sock");
    let mut spec = VmSpec::new(kernel, dir.path().join("console.log"));
    spec.initramfs = Some(initramfs);
    spec.vsock = Some(husk::backend::VsockSpec {
        cid: 3,
        uds_path: uds.clone(),
    });
    spec.shared_dirs = vec![
        SharedDirSpec::rootfs(&root, "rootfs", false),
        SharedDirSpec::volume(&vol, "vol", false),
    ];
    let vm = husk::backend::VmBackend::start(&backend, &spec).unwrap();
    if let Err(e) = vm.wait_vsock_ready(harness::T) {
        panic!("{e}\n{}", harness::tail(&vm.console_log()));
    }
    let client = husk::agent::AgentClient::connect(&uds, harness::T).unwrap_or_else(|e| {
        panic!(
            "agent never answered: {e}\n{}",
            harness::tail(&vm.console_log())
        )
    });
    let mut c = container(
        "dir",
        process(&[
            "/bin/sh",
            "-c",
            "echo ok > /tmp/x; cat /tmp/x; echo vol > /data/v",
        ]),
    );
    c.rootfs = RootfsSpec::VirtioFs {
        tag: "rootfs".into(),
    };
    c.mounts.push(mnt("/data", "virtiofs", "vol", &[]));
    client.create_container(c).unwrap();
    let out = husk::agent::attach_stream(
        &uds,
        husk_protocol::StreamHello {
            version: husk_protocol::PROTOCOL_VERSION,
            container_id: "dir".into(),
            exec_id: None,
            kind: StreamKind::Stdout,
        },
        harness::T,
    )
    .unwrap();
    client.close_stdin("dir", None).unwrap();
    client.start_container("dir").unwrap();
    assert_eq!(s(&harness::read_all(out)), "ok\n");
    assert_eq!(client.wait("dir", None).unwrap().code, 0);
    assert_eq!(std::fs::read_to_string(vol.join("v")).unwrap(), "vol\n");
    assert_eq!(std::fs::read_to_string(root.join("tmp/x")).unwrap(), "ok\n");
    let _ = vm.wait();
}
