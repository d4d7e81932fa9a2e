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
}

#[test]
fn bad_bundles_fail_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(plan("c", d.path()), Err(Error::NoConfig { .. })));
    std::fs::write(d.path().join("config.json"), "{not json").unwrap();
    assert!(matches!(plan("c", d.path()), Err(Error::BadConfig { .. })));
    let no_rootfs = tempfile::tempdir().unwrap();
    std::fs::write(no_rootfs.path().join("config.json"), base().to_string()).unwrap();
    assert!(matches!(plan("c", no_rootfs.path()), Err(Error::NoRootfs { .. })));
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
