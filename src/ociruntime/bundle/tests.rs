use super::*;

fn bundle(config: serde_json::Value) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("rootfs")).unwrap();
    std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
    d
}

fn base() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/", "env": ["PATH=/bin"]},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/run/netns/x"}]}
    })
}

#[test]
fn a_plain_bundle_plans_a_vm_and_a_container() {
    let b = bundle(base());
    let p = plan("c1", b.path()).unwrap();
    assert_eq!(p.rootfs, b.path().join("rootfs"));
    assert_eq!(p.shares[0].tag, ROOTFS_TAG);
    assert!(!p.shares[0].read_only && p.container.readonly_root);
    assert_eq!(p.container.hostname.as_deref(), Some("box"));
    assert_eq!(
        p.container.namespaces,
        [NamespaceKind::Pid, NamespaceKind::Mount]
    );
    assert_eq!(p.netns.as_deref(), Some("/run/netns/x"));
    assert_eq!((p.vcpus, p.memory_mib), (DEFAULT_VCPUS, DEFAULT_MEMORY_MIB));
}

/// A `network` entry without a path (docker, containerd) asks for a new namespace, which the
/// VM holder makes; one with a path is the engine's; none at all is neither.
#[test]
fn a_network_namespace_without_a_path_is_a_new_one() {
    for (namespaces, netns, new) in [
        (
            serde_json::json!([{"type": "network", "path": "/run/netns/x"}]),
            Some("/run/netns/x"),
            false,
        ),
        (serde_json::json!([{"type": "network"}]), None, true),
        (
            serde_json::json!([{"type": "network", "path": ""}]),
            None,
            true,
        ),
        (serde_json::json!([{"type": "pid"}]), None, false),
    ] {
        let mut c = base();
        c["linux"]["namespaces"] = namespaces.clone();
        let b = bundle(c);
        let p = plan("c1", b.path()).unwrap();
        assert_eq!(
            (p.netns.as_deref(), p.new_netns),
            (netns, new),
            "{namespaces}"
        );
    }
}

#[test]
fn resources_size_the_vm() {
    let mut c = base();
    c["linux"]["resources"] = serde_json::json!({
        "cpu": {"quota": 150000, "period": 100000},
        "memory": {"limit": 200 * 1024 * 1024}
    });
    let b = bundle(c);
    let p = plan("c1", b.path()).unwrap();
    assert_eq!(p.vcpus, 2);
    assert_eq!(p.memory_mib, 200 + GUEST_OVERHEAD_MIB);
    let r = &p.container.resources;
    assert_eq!(r.memory_max, Some(200 << 20));
    assert_eq!(r.cpu_max, Some((150_000, 100_000)));
}

#[test]
fn bad_bundles_fail_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(plan("c", d.path()), Err(Error::NoConfig { .. })));
    std::fs::write(d.path().join("config.json"), "{not json").unwrap();
    assert!(matches!(plan("c", d.path()), Err(Error::BadConfig { .. })));
    let no_rootfs = tempfile::tempdir().unwrap();
    std::fs::write(no_rootfs.path().join("config.json"), base().to_string()).unwrap();
    assert!(matches!(
        plan("c", no_rootfs.path()),
        Err(Error::NoRootfs { .. })
    ));
}

#[test]
fn what_a_vm_cannot_do_is_refused() {
    let cases = [
        serde_json::json!({"namespaces": [{"type": "ipc", "path": "/proc/1/ns/ipc"}]}),
        serde_json::json!({"namespaces": [{"type": "user"}]}),
        serde_json::json!({"devices": [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]}),
        serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_NOTIFY"}}),
    ];
    for linux in cases {
        let mut c = base();
        c["linux"] = linux.clone();
        let b = bundle(c);
        match plan("c", b.path()) {
            Err(Error::Unsupported(m)) => assert!(!m.is_empty()),
            other => panic!("{linux}: {other:?}"),
        }
    }
    let mut c = base();
    c["hooks"] = serde_json::json!({"createContainer": [{"path": "/bin/true"}]});
    let b = bundle(c);
    assert!(matches!(plan("c", b.path()), Err(Error::Unsupported(_))));
}

#[test]
fn seccomp_profiles_convert() {
    let mut c = base();
    c["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let b = bundle(c);
    let s = plan("c", b.path()).unwrap().container.seccomp.unwrap();
    assert_eq!(s.default_errno_ret, Some(1));
    assert_eq!(s.syscalls.len(), 2);
    assert_eq!(s.syscalls[1].args[0].value, 8);
}

/// An engine's config.json as recorded on a Debian 12 host, with its host paths moved into
/// `dir`: the bind sources are created (files stay files), the rootfs becomes `dir/rootfs`.
fn engine_bundle(fixture: &str, dir: &Path) -> serde_json::Value {
    let mut c: serde_json::Value = serde_json::from_str(fixture).unwrap();
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    c["root"]["path"] = dir.join("rootfs").to_str().unwrap().into();
    for m in c["mounts"].as_array_mut().unwrap() {
        let bind = m["type"] == "bind";
        if let (true, Some(src)) = (bind, m["source"].as_str()) {
            let moved = dir.join(src.trim_start_matches('/'));
            let is_file = ["hostname", "hosts", ".containerenv", "resolv.conf"]
                .iter()
                .any(|f| src.ends_with(f));
            if is_file {
                std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
                std::fs::write(&moved, "x").unwrap();
            } else {
                std::fs::create_dir_all(&moved).unwrap();
            }
            m["source"] = moved.to_str().unwrap().into();
        }
    }
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    c
}

#[test]
fn podmans_config_plans() {
    let d = tempfile::tempdir().unwrap();
    engine_bundle(include_str!("fixtures/engine-config-podman.json"), d.path());
    let p = plan(&"7".repeat(64), d.path()).unwrap();
    // rootfs, the -v volume, and the userdata dir holding hostname/hosts/.containerenv;
    // /dev/shm became a guest tmpfs.
    assert_eq!(p.shares.len(), 3, "{:?}", p.shares);
    let shm = p
        .container
        .mounts
        .iter()
        .find(|m| m.destination == "/dev/shm")
        .unwrap();
    assert_eq!(shm.fs_type, "tmpfs");
    let hosts = p
        .container
        .mounts
        .iter()
        .find(|m| m.destination == "/etc/hosts")
        .unwrap();
    assert!(hosts.source.ends_with(":hosts"), "{hosts:?}");
    let data = p
        .container
        .mounts
        .iter()
        .find(|m| m.destination == "/data")
        .unwrap();
    assert!(data.options.contains(&"ro".to_string()));
    assert_eq!((p.vcpus, p.memory_mib), (2, 256 + GUEST_OVERHEAD_MIB));
    assert_eq!(p.container.process.user.uid, 1000);
    assert_eq!(p.container.process.rlimits.len(), 2);
    assert!(p.container.seccomp.is_some());
    assert!(p.netns.is_none());
}

#[test]
fn containerds_config_plans() {
    let d = tempfile::tempdir().unwrap();
    engine_bundle(
        include_str!("fixtures/engine-config-containerd.json"),
        d.path(),
    );
    let p = plan("c4", d.path()).unwrap();
    assert_eq!(p.shares.len(), 2, "{:?}", p.shares);
    assert!(p.container.process.no_new_privileges);
    assert_eq!(p.vcpus, 2, "--cpus 1.5 rounds up");
    assert_eq!(p.memory_mib, 64 + GUEST_OVERHEAD_MIB);
}
