//! `husk run -v HOST:GUEST[:ro]`: host directories shared live into containers through
//! virtio-fs (one virtiofsd per volume), on top of the image's rootfs disks. Driven through the
//! built binary with real microVMs, each test with its own `--root`, the image being
//! scripts/make-busybox-image.sh's busybox as in tests/husk_cli.rs.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use common::cli::{Husk, LIMIT};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

impl Husk {
    /// What is left in the containers directory besides its lock file.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path().join("containers"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A root with the busybox image, or `None` after saying why this host cannot run the test.
fn husk(test: &str) -> Option<Husk> {
    let kernel = common::kernel(test)?;
    let initramfs = common::initramfs(test)?;
    // kernel-config/build.sh keeps `config` beside each cached vmlinux; the shared
    // `vmlinux` link follows whichever checkout built last, which may predate virtio-fs.
    let config = std::fs::canonicalize(&kernel)
        .ok()
        .and_then(|k| std::fs::read_to_string(k.with_file_name("config")).ok());
    if config.is_some_and(|c| !c.contains("CONFIG_VIRTIO_FS=y")) {
        common::not_run(
            test,
            &format!(
                "{} has no virtio-fs (CONFIG_VIRTIO_FS); rebuild it with kernel-config/build.sh \
                 or point HUSK_KERNEL at one that has",
                kernel.display()
            ),
            true,
        );
        return None;
    }
    if let Err(e) = husk::backend::virtiofsd::find_binary() {
        common::not_run(test, &e.to_string(), true);
        return None;
    }
    Husk::with_busybox(test, kernel, initramfs)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh host directory for a volume (its own tempdir, not under the husk root).
fn volume_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("volume tempdir")
}

fn vol(dir: &Path, guest: &str) -> String {
    format!("{}:{guest}", dir.display())
}

/// Live processes (other than this test) whose command line mentions `dir`: a virtiofsd
/// serving it has `--shared-dir=<dir>`.
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != std::process::id())
        .filter_map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            // A zombie has an empty command line; one with the needle is alive.
            c.contains(needle).then(|| format!("{p}: {c}"))
        })
        .collect()
}

/// The pids of virtiofsd processes serving `dir`.
fn virtiofsd_serving(dir: &Path) -> Vec<u32> {
    processes_using(dir)
        .iter()
        .filter(|l| l.contains("virtiofsd") && l.contains("--shared-dir="))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect()
}

#[test]
fn container_writes_reach_the_host_with_content_and_mode() {
    let Some(h) = husk("container_writes_reach_the_host_with_content_and_mode") else {
        return;
    };
    let d = volume_dir();
    let out = h.run(&[
        "run",
        "--rm",
        "-v",
        &vol(d.path(), "/data"),
        "busybox",
        "sh",
        "-c",
        "echo written in the guest > /data/out && chmod 640 /data/out \
         && mkdir -m 710 /data/sub && echo nested > /data/sub/f && echo done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "done\n");
    // Right after `husk run` returns: no writeback cache, nothing to flush.
    let f = d.path().join("out");
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "written in the guest\n"
    );
    assert_eq!(f.metadata().unwrap().permissions().mode() & 0o7777, 0o640);
    let sub = d.path().join("sub");
    assert_eq!(sub.metadata().unwrap().permissions().mode() & 0o7777, 0o710);
    assert_eq!(std::fs::read_to_string(sub.join("f")).unwrap(), "nested\n");
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    assert!(virtiofsd_serving(d.path()).is_empty());
}

#[test]
fn detached_container_sees_host_changes_and_keeps_volumes_across_stop_start() {
    let Some(h) = husk("detached_container_sees_host_changes_and_keeps_volumes_across_stop_start")
    else {
        return;
    };
    let d = volume_dir();
    let ro = volume_dir();
    std::fs::write(d.path().join("f"), "v1\n").unwrap();
    std::fs::write(ro.path().join("seed"), "seed\n").unwrap();
    let id = h.ok(&[
        "run",
        "-d",
        "--name",
        "vols",
        "-v",
        &vol(d.path(), "/data"),
        "--volume",
        &format!("{}:/data/ro:ro", ro.path().display()),
        "busybox",
        "sleep",
        "1000",
    ]);
    let id = id.trim().to_string();
    assert_eq!(
        h.state(&id)["config"]["volumes"].as_array().unwrap().len(),
        2
    );
    // One daemon per volume (with the namespace sandbox it is a parent and its child).
    assert!(!virtiofsd_serving(d.path()).is_empty());
    assert!(!virtiofsd_serving(ro.path()).is_empty());

    let cat = |path: &str| h.ok(&["exec", "vols", "cat", path]);
    assert_eq!(cat("/data/f"), "v1\n");
    assert_eq!(cat("/data/ro/seed"), "seed\n");
    // The host grows the file under the running container: seen whole at once (no cache).
    std::fs::write(d.path().join("f"), "v2, longer than before\n").unwrap();
    assert_eq!(cat("/data/f"), "v2, longer than before\n");
    std::fs::write(d.path().join("new"), "made on the host\n").unwrap();
    assert_eq!(cat("/data/new"), "made on the host\n");
    std::fs::remove_file(d.path().join("new")).unwrap();
    let out = h.run(&["exec", "vols", "ls", "/data"]);
    assert!(!text(&out.stdout).contains("new"), "{}", text(&out.stdout));
    h.ok(&["exec", "vols", "sh", "-c", "echo from exec > /data/g"]);
    assert_eq!(
        std::fs::read_to_string(d.path().join("g")).unwrap(),
        "from exec\n"
    );

    // stop + start: the same volumes, served by fresh daemons.
    h.ok(&["stop", "-t", "1", "vols"]);
    assert!(
        common::poll_until(Duration::from_secs(10), || virtiofsd_serving(d.path())
            .is_empty()
            .then_some(()))
        .is_some(),
        "{:?}",
        processes_using(d.path())
    );
    h.ok(&["start", "vols"]);
    assert_eq!(cat("/data/g"), "from exec\n");
    assert_eq!(cat("/data/ro/seed"), "seed\n");
    let out = h.run(&["exec", "vols", "sh", "-c", "echo x > /data/ro/nope"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );

    let console = PathBuf::from(h.state(&id)["consoleLog"].as_str().unwrap().to_string());
    h.ok(&["rm", "-f", "vols"]);
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    for dir in [d.path(), ro.path(), h.root.path()] {
        assert!(
            processes_using(dir).is_empty(),
            "{:?}",
            processes_using(dir)
        );
    }
    // The console log (and the virtiofsd sockets beside it) went with the container.
    assert!(!console.exists(), "{}", console.display());
    if let Some(p) = console.parent() {
        assert!(processes_using(p).is_empty(), "{:?}", processes_using(p));
    }
}

#[test]
fn read_only_volume_refuses_writes() {
    let Some(h) = husk("read_only_volume_refuses_writes") else {
        return;
    };
    let d = volume_dir();
    std::fs::write(d.path().join("seed"), "from the host\n").unwrap();
    let out = h.run(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/ro:ro", d.path().display()),
        "busybox",
        "sh",
        "-c",
        "cat /ro/seed; echo nope > /ro/new",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "from the host\n",
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert!(!d.path().join("new").exists());
    // Not only the guest's mount: a remount rw inside is refused too (and root can try).
    let out = h.run(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/ro:ro", d.path().display()),
        "busybox",
        "sh",
        "-c",
        "mount -o remount,rw /ro 2>/dev/null; echo nope > /ro/new",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!d.path().join("new").exists());
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
}

#[test]
fn bad_volumes_are_one_line_errors_and_create_nothing() {
    let root = tempfile::tempdir().unwrap();
    let d = volume_dir();
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let dir = d.path().display().to_string();
    for (v, want) in [
        (format!("{dir}/missing:/data"), "no such directory"),
        (format!("{}:/data", file.display()), "not a directory"),
        (format!("{dir}:data"), "must be absolute"),
        (format!("{dir}:/"), "cannot be /"),
        (format!("{dir}:/data:rx"), "unknown option"),
        (dir.clone(), "HOST:GUEST"),
        (format!("{dir}:/a/../b"), ".."),
    ] {
        let args = [
            "--root",
            root.path().to_str().unwrap(),
            "run",
            "-v",
            &v,
            "busybox",
            "true",
        ];
        let out = common::run_limited(&common::bin("husk"), &args, LIMIT).0;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "-v {v}: {err}");
        assert_eq!(err.lines().count(), 1, "-v {v}: {err}");
        assert!(
            err.starts_with("husk: invalid --volume") && err.contains(want),
            "-v {v}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    let containers = root.path().join("containers");
    let made = std::fs::read_dir(&containers)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name() != ".lock")
                .count()
        })
        .unwrap_or(0);
    assert_eq!(made, 0);
}

#[test]
fn a_dying_virtiofsd_ends_the_run_with_a_clear_error() {
    let Some(h) = husk("a_dying_virtiofsd_ends_the_run_with_a_clear_error") else {
        return;
    };
    let d = volume_dir();
    // The container says it runs by writing through the volume: the guest is up, its
    // process started, and virtiofsd is serving it.
    let mut child = h
        .cmd(&[
            "run",
            "-v",
            &vol(d.path(), "/data"),
            "busybox",
            "sh",
            "-c",
            "echo up > /data/up; exec sleep 1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn husk run");
    let marker = d.path().join("up");
    let running = common::poll_until(common::SETTLE, || {
        if marker.exists() {
            return Some(true);
        }
        // husk run ended before the container got that far: no use waiting on.
        matches!(child.try_wait(), Ok(Some(_))).then_some(false)
    });
    if running != Some(true) {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the container never wrote {} (husk run: {}): {}",
            marker.display(),
            out.status,
            text(&out.stderr)
        );
    }
    let pids = virtiofsd_serving(d.path());
    assert!(!pids.is_empty(), "{:?}", processes_using(d.path()));
    for p in &pids {
        // SAFETY: plain kill(2) of a pid just read from /proc.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
    let start = Instant::now();
    let ended = common::poll_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_))).then_some(())
    })
    .is_some();
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        ended,
        "husk run still running {:?} after virtiofsd died",
        start.elapsed()
    );
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("virtiofsd"), "{err}");
    assert!(err.contains("stopped"), "{err}");
    // Said once, not repeated by the error chain.
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(last.matches("while the VM ran").count(), 1, "{err}");
    let ps = h.ok(&["ps", "-a", "--format", "json"]);
    assert!(ps.contains("\"exited\""), "{ps}");
    h.ok(&["rm", "-f", h.ok(&["ps", "-aq"]).trim()]);
    assert!(processes_using(d.path()).is_empty());
}

/// `husk run -v` (virtio-fs volumes, `:ro`), again on both backends of a KVM that boots stock Linux: husk-vmm and QEMU
/// `-accel kvm` (on this project's PVM hosts: inside the nested-KVM rig).
const ON_KVM_BACKENDS: &[&str] = &[
    "container_writes_reach_the_host_with_content_and_mode",
    "read_only_volume_refuses_writes",
];

crate::on_kvm_backends! {
    husk_volumes_on_husk_vmm => ON_KVM_BACKENDS,
    husk_volumes_on_qemu_kvm => ON_KVM_BACKENDS,
}
