//! OCI fields the agent applies, proven inside a real guest (QEMU backend): sysctl in the
//! container's own ipc and net namespaces, masked and read-only paths, rlimits, a read-only
//! root with a writable tmpfs, oom_score_adj, ambient capabilities, a terminal from the
//! container's own devpts (for an exec and for a container's init, with /dev/console), and
//! spec paths that go through hostile symlinks in the image staying inside the container.
//! One boot for all of it: a TCG boot costs seconds of a small machine's CPU.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "agent_guest/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{container, mnt, process, s, Guest};
use husk::backend::DiskSpec;
use husk_protocol::{
    Capabilities, Capability, DiskRef, FsType, LayerDisk, NamespaceKind, Rlimit, RlimitKind,
    RootfsSpec, StreamKind, User,
};

/// A layer of nothing but symlinks pointing out of the image: `/abs -> /` (the agent's `/`
/// if followed on the agent's view) and `/up -> ../../../../../../..` (likewise, from
/// `/run/husk/<id>/rootfs`).
fn hostile_layer(test: &str, dir: &Path) -> Option<PathBuf> {
    let stage = dir.join("hostile");
    std::fs::create_dir_all(&stage).unwrap();
    std::os::unix::fs::symlink("/", stage.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", stage.join("up")).unwrap();
    let out = dir.join("hostile.erofs");
    match Command::new("mkfs.erofs")
        .args(["--all-root", "-T0"])
        .arg(&out)
        .arg(&stage)
        .output()
    {
        Ok(o) if o.status.success() => Some(out),
        other => {
            common::not_run(test, &format!("mkfs.erofs: {other:?}"), true);
            None
        }
    }
}

fn rlimit_nofile(n: u64) -> Rlimit {
    Rlimit {
        kind: RlimitKind::RlimitNofile,
        soft: n,
        hard: n,
    }
}

#[test]
fn oci_fields_and_hostile_symlinks_in_a_guest() {
    let test = "oci_fields_and_hostile_symlinks_in_a_guest";
    let dir = tempfile::tempdir().unwrap();
    let Some(layer) = hostile_layer(test, dir.path()) else {
        return;
    };
    let hostile = DiskSpec {
        path: layer,
        read_only: true,
        serial: Some("hostile".into()),
    };
    let Some(g) = Guest::boot_with(test, vec![hostile]) else {
        return;
    };

    // --- container "spec": every field at once -------------------------------------------
    let mut init = process(&["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]);
    init.oom_score_adj = Some(123);
    init.rlimits = vec![rlimit_nofile(1234)];
    // Through `/up`: created and entered as the container's /workdir.
    init.cwd = "/up/workdir".into();
    let mut spec = container("spec", init);
    if let RootfsSpec::Overlay { layers, .. } = &mut spec.rootfs {
        layers.push(LayerDisk {
            disk: DiskRef::Serial("hostile".into()),
            fs_type: FsType::Erofs,
        });
    }
    spec.namespaces.push(NamespaceKind::Network);
    spec.sysctl = BTreeMap::from([
        ("kernel.shm_rmid_forced".into(), "1".into()),
        ("net.ipv4.ip_forward".into(), "1".into()),
    ]);
    spec.readonly_root = true;
    spec.mounts.push(mnt(
        "/tmp",
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "mode=1777"],
    ));
    // Destinations through the hostile links: each must land inside the container.
    spec.mounts
        .push(mnt("/up/run/pwned", "tmpfs", "tmpfs", &["size=1m"]));
    spec.mounts
        .push(mnt("/abs/marker", "tmpfs", "tmpfs", &["size=1m"]));
    spec.mounts
        .push(mnt("/abs/etc/husk-bound", "none", "/init", &["bind", "ro"]));
    spec.masked_paths = vec![
        "/proc/kcore".into(), // absent from this kernel: skipped, not an error
        "/abs/proc/cmdline".into(),
        "/sys/firmware".into(),
    ];
    spec.readonly_paths = vec!["/proc/sys".into()];
    g.client
        .create_container(spec)
        .unwrap_or_else(|e| panic!("create: {e}\n{}", g.console()));
    g.client.close_stdin("spec", None).unwrap();
    g.client
        .start_container("spec")
        .unwrap_or_else(|e| panic!("start: {e}\n{}", g.console()));

    let probe_script = r#"
        echo "sysctl $(cat /proc/sys/kernel/shm_rmid_forced) $(cat /proc/sys/net/ipv4/ip_forward)"
        echo "cmdline-bytes $(wc -c < /proc/cmdline)"
        echo "firmware-entries $(ls -A /sys/firmware | wc -l)"
        [ -e /proc/kcore ] && echo kcore-present
        (echo 0 > /proc/sys/kernel/shm_rmid_forced) 2>&1 | grep -q 'Read-only' && echo proc-sys-erofs
        touch /rootfile 2>&1 | grep -q 'Read-only' && echo root-erofs
        touch /tmp/ok && echo tmp-writable
        echo "oom $(cat /proc/self/oom_score_adj) $(cat /proc/1/oom_score_adj)"
        echo "nofile $(ulimit -n) $(awk '/Max open files/ {print $4}' /proc/1/limits)"
        echo "init-cwd $(readlink /proc/1/cwd)"
        awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print "mount", $5, $(i + 1); break } }' /proc/self/mountinfo
    "#;
    let mut probe = process(&["sh", "-c", probe_script]);
    probe.oom_score_adj = Some(200);
    probe.rlimits = vec![rlimit_nofile(777)];
    let (code, out, err) = g.exec("spec", "probe", probe, vec![]);
    let out = s(&out);
    eprintln!("{test}: probe:\n{out}{}", s(&err));
    assert_eq!(code, 0, "{}", s(&err));
    let lines: Vec<&str> = out.lines().collect();
    let has = |l: &str| lines.contains(&l);
    for want in [
        "sysctl 1 1",
        "cmdline-bytes 0",
        "firmware-entries 0",
        "proc-sys-erofs",
        "root-erofs",
        "tmp-writable",
        "oom 200 123",
        "nofile 777 1234",
        "init-cwd /workdir",
        "mount /run/pwned tmpfs",
        "mount /marker tmpfs",
        "mount /sys/firmware tmpfs",
        "mount /tmp tmpfs",
    ] {
        assert!(has(want), "missing {want:?} in:\n{out}");
    }
    assert!(!has("kcore-present"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("mount /etc/husk-bound ")),
        "the bind of /init through /abs is not at the container's /etc/husk-bound:\n{out}"
    );
    // Nothing mounted at a path spelled through the links: they were resolved, in the root.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("/up/") || l.contains("/abs/")),
        "{out}"
    );

    // The mount points and the cwd were created in the image (its upper layer), where the
    // container sees them.
    let (code, out, _) = g.exec(
        "spec",
        "ls",
        process(&["sh", "-c", "ls -d /marker /workdir /run/pwned"]),
        vec![],
    );
    assert_eq!(
        (code, s(&out)),
        (0, "/marker\n/run/pwned\n/workdir\n".into())
    );

    // Ambient capabilities for a non-root user.
    let mut amb = process(&["grep", "^Cap", "/proc/self/status"]);
    amb.user = User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![],
        umask: None,
    };
    let set = vec![Capability::NetBindService];
    amb.capabilities = Some(Capabilities {
        bounding: set.clone(),
        effective: set.clone(),
        inheritable: set.clone(),
        permitted: set.clone(),
        ambient: set,
    });
    let (code, out, err) = g.exec("spec", "ambient", amb, vec![]);
    let out = s(&out);
    assert_eq!(code, 0, "{}", s(&err));
    for want in [
        "CapAmb:\t0000000000000400",
        "CapEff:\t0000000000000400",
        "CapPrm:\t0000000000000400",
        "CapBnd:\t0000000000000400",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    // An exec on a terminal sees a pty of the container's own devpts.
    let mut tty = process(&["sh", "-c", "tty; exit 4"]);
    tty.terminal = true;
    g.client.exec_process("spec", "tty", tty).unwrap();
    let mut pty = g.stream("spec", Some("tty"), StreamKind::Pty);
    let mut text = Vec::new();
    let _ = pty.read_to_end(&mut text);
    let text = s(&text);
    assert_eq!(g.client.wait("spec", Some("tty")).unwrap().code, 4);
    assert!(
        text.trim_end().starts_with("/dev/pts/") && text.lines().count() == 1,
        "tty printed {text:?}"
    );

    // --- container "ttyinit": an init on a terminal, /dev/console is its pty ---------------
    let mut init = process(&[
        "sh",
        "-c",
        "t=$(tty); echo \"tty $t\"; \
         [ \"$(stat -Lc %t:%T /dev/console)\" = \"$(stat -Lc %t:%T $t)\" ] && echo console-is-tty; \
         exit 5",
    ]);
    init.terminal = true;
    let mut spec = container("ttyinit", init);
    spec.rootfs = RootfsSpec::Disk {
        disk: LayerDisk {
            disk: DiskRef::Serial("layer0".into()),
            fs_type: FsType::Erofs,
        },
        readonly: true,
    };
    g.client
        .create_container(spec)
        .unwrap_or_else(|e| panic!("create ttyinit: {e}\n{}", g.console()));
    let mut pty = g.stream("ttyinit", None, StreamKind::Pty);
    g.client.start_container("ttyinit").unwrap();
    let mut text = Vec::new();
    let _ = pty.read_to_end(&mut text);
    let text = s(&text);
    assert_eq!(g.client.wait("ttyinit", None).unwrap().code, 5);
    assert!(text.contains("tty /dev/pts/0"), "{text:?}");
    assert!(text.contains("console-is-tty"), "{text:?}");

    // Both inits collected: the VM powers off.
    g.client.signal("spec", None, libc::SIGTERM).unwrap();
    assert_eq!(g.client.wait("spec", None).unwrap().code, 0);
    let t = Instant::now();
    while g.vm.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "VM still running after both inits were collected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
