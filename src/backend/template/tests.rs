//! Template keys, template specs and pruning (a template's build and restore run against real
//! QEMU in tests/vm_templates.rs).

use super::*;
use crate::backend::{DiskSpec, LayerDiskSpec};

/// A container-like spec under `dir`: kernel, initramfs, one layer, a scratch disk, a NIC.
fn spec_in(dir: &Path, name: &str) -> VmSpec {
    for f in ["vmlinux", "initrd", "layer0"] {
        if !dir.join(f).exists() {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
    }
    let scratch = dir.join(format!("{name}.scratch"));
    File::create(&scratch).unwrap().set_len(8 << 20).unwrap();
    let mut s = VmSpec::new(dir.join("vmlinux"), dir.join(format!("{name}.log")));
    s.initramfs = Some(dir.join("initrd"));
    s.cmdline = vec!["quiet".into()];
    s.layer_disk = Some(LayerDiskSpec {
        layers: vec![dir.join("layer0")],
        serial: "husk-layers".into(),
    });
    s.disks.push(DiskSpec {
        path: scratch,
        read_only: false,
        serial: Some("husk-scratch".into()),
    });
    s.vsock = Some(VsockSpec {
        cid: 7,
        uds_path: dir.join(format!("{name}.vsock")),
    });
    s.taps.push(TapSpec::new(
        format!("tap-{name}"),
        [2, 0, 0, 0, 0, name.len() as u8],
    ));
    s.template = true;
    s
}

fn backend(dir: &Path) -> QemuBackend {
    let qemu = dir.join("qemu");
    if !qemu.exists() {
        std::fs::write(&qemu, b"#!/bin/sh\n").unwrap();
    }
    QemuBackend {
        qemu,
        accel: qemu::Accel::Tcg,
        agent_mux: None,
        virtiofsd: None,
        layer_disk: None,
        confine: false,
        tsc_khz: Some(2_000_000),
        templates: Some(dir.join("templates")),
    }
}

#[test]
fn two_containers_of_one_shape_share_a_key_whatever_their_paths_and_macs() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path());
    let one = key(&b, &spec_in(dir.path(), "one")).unwrap();
    let two = key(&b, &spec_in(dir.path(), "other-container")).unwrap();
    assert_eq!(one, two);
    assert_eq!(one.len(), 32, "128 bits in hex: {one}");
}

#[test]
fn the_key_changes_with_what_a_saved_vm_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path());
    let base = spec_in(dir.path(), "a");
    let k = key(&b, &base).unwrap();
    let changed = |f: &dyn Fn(&mut VmSpec, &mut QemuBackend)| {
        let (mut s, mut b) = (spec_in(dir.path(), "a"), backend(dir.path()));
        f(&mut s, &mut b);
        key(&b, &s).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        ("memory", changed(&|s, _| s.memory_mib = 512)),
        ("vCPUs", changed(&|s, _| s.vcpus = 2)),
        (
            "kernel arguments",
            changed(&|s, _| s.cmdline.push("debug".into())),
        ),
        ("accelerator", changed(&|_, b| b.accel = qemu::Accel::Kvm)),
        ("TSC rate", changed(&|_, b| b.tsc_khz = Some(3_000_000))),
        ("no NIC", changed(&|s, _| s.taps.clear())),
        (
            "scratch size",
            changed(&|s, _| {
                File::options()
                    .write(true)
                    .open(&s.disks[0].path)
                    .unwrap()
                    .set_len(16 << 20)
                    .unwrap()
            }),
        ),
        (
            "layer disk class",
            changed(&|s, _| {
                let big = dir.path().join("big-layer");
                File::create(&big).unwrap().set_len(100 << 20).unwrap();
                s.layer_disk.as_mut().unwrap().layers = vec![big];
            }),
        ),
        (
            "kernel file",
            changed(&|s, _| {
                let k = dir.path().join("vmlinux-2");
                std::fs::write(&k, b"x").unwrap();
                s.kernel = k;
            }),
        ),
    ];
    for (what, other) in cases {
        assert_ne!(k, other, "{what} must change the key");
    }
    // Rewriting the initramfs in place changes it too (its change time).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.path().join("initrd"), b"yy").unwrap();
    assert_ne!(k, key(&b, &base).unwrap(), "a rebuilt initramfs");
}

#[test]
fn a_template_vm_has_the_same_devices_with_its_own_files_and_macs() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec_in(dir.path(), "c");
    let work = dir.path().join("work");
    let t = template_spec(&s, &work);
    assert_eq!((t.vcpus, t.memory_mib), (s.vcpus, s.memory_mib));
    assert_eq!(t.layer_disk, s.layer_disk);
    assert_eq!(t.disks.len(), 1);
    assert_eq!(t.disks[0].path, work.join("disk0"));
    assert_eq!(t.disks[0].serial, s.disks[0].serial);
    assert_eq!(t.taps.len(), 1);
    assert_eq!(t.taps[0].mac, template_mac(0));
    assert!(t.taps[0].fd.is_none());
    assert_eq!(t.console_log, work.join(BOOT_LOG));
    // The template's command line: hub NICs, RAM husk's memfd shared, a QMP socket.
    let qmp = work.join("qmp.sock");
    let a = qemu::args(
        &t,
        qemu::Accel::Tcg,
        None,
        None,
        &[],
        None,
        Boot::Template { qmp: &qmp },
    )
    .join(" ");
    assert!(a.contains("-netdev hubport,id=net0,hubid=0"), "{a}");
    let fd = qemu::RAM_FD;
    assert!(
        a.contains(&format!(
            "memory-backend-file,id=mem,size=256M,share=on,mem-path=/proc/self/fd/{fd}"
        )),
        "{a}"
    );
    assert!(
        a.contains(&format!("-qmp unix:{},server=on,wait=off", qmp.display())),
        "{a}"
    );
    let r = qemu::args(&s, qemu::Accel::Tcg, None, None, &[], None, Boot::Restore).join(" ");
    // A clone's: the template's memfd private, its state loaded when QMP (inherited) asks.
    assert!(
        r.contains(&format!(
            "memory-backend-file,id=mem,size=256M,share=off,mem-path=/proc/self/fd/{fd}"
        )),
        "{r}"
    );
    let qmp_fd = qemu::QMP_FD;
    assert!(
        r.contains(&format!(
            "-chardev socket,id=qmp,fd={qmp_fd} -mon chardev=qmp,mode=control -incoming defer"
        )),
        "{r}"
    );
    assert!(r.contains("-netdev tap,id=net0,ifname=tap-c"), "{r}");
}

#[test]
fn only_vms_that_ask_and_carry_nothing_unsaveable_use_templates() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec_in(dir.path(), "e");
    assert!(eligible(&s));
    let mut no = s.clone();
    no.template = false;
    assert!(!eligible(&no));
    let mut fs = s.clone();
    fs.shared_dirs.push(crate::backend::SharedDirSpec::volume(
        dir.path(),
        "v",
        false,
    ));
    assert!(!eligible(&fs), "virtio-fs cannot migrate");
    let mut novsock = s;
    novsock.vsock = None;
    assert!(!eligible(&novsock));
}

#[test]
fn pruning_keeps_the_most_recently_used_and_clears_dead_builds() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    for i in 0..5u64 {
        let d = dir.path().join(format!("k{i}"));
        std::fs::create_dir(&d).unwrap();
        File::open(&d)
            .unwrap()
            .set_modified(now - Duration::from_secs(100 * (5 - i)))
            .unwrap();
    }
    let dead = dir.path().join(".build-dead");
    std::fs::create_dir(&dead).unwrap();
    File::open(&dead)
        .unwrap()
        .set_modified(now - Duration::from_secs(3600))
        .unwrap();
    let live = dir.path().join(".build-live");
    std::fs::create_dir(&live).unwrap();
    let aged = |name: &str, age: Duration| {
        let p = dir.path().join(name);
        std::fs::write(&p, b"").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(now - age)
            .unwrap();
    };
    // A recent lock stays (a build may hold it), an old one goes unless its template is kept.
    aged("k0.lock", Duration::ZERO);
    aged("k1.lock", 5 * BUILD_LIMIT);
    aged("k4.lock", 5 * BUILD_LIMIT);
    aged("gone.lock", 5 * BUILD_LIMIT);
    aged("new.failed", Duration::from_secs(60));
    aged("old.failed", FAILED_RETRY + Duration::from_secs(60));
    prune(dir.path(), 2);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".build-live",
            "k0.lock",
            "k3",
            "k4",
            "k4.lock",
            "new.failed"
        ]
    );
}

#[test]
fn a_recent_failure_is_not_tried_again_an_old_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k.failed");
    assert!(recent_failure("k", &f).is_none());
    std::fs::write(&f, "the agent never answered").unwrap();
    let e = recent_failure("k", &f).unwrap().to_string();
    assert!(e.contains("the agent never answered"), "{e}");
    File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(SystemTime::now() - FAILED_RETRY - Duration::from_secs(1))
        .unwrap();
    assert!(recent_failure("k", &f).is_none());
}
