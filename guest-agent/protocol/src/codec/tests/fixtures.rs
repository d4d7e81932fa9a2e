//! A full-featured sample of every message, shared by the codec tests.

use std::collections::BTreeMap;

use crate::messages::*;

pub fn process() -> ProcessSpec {
    ProcessSpec {
        args: vec!["/bin/sh".into(), "-c".into(), "echo hi; exit 7".into()],
        env: vec!["PATH=/usr/bin:/bin".into(), "EMPTY=".into(), "X=a=b".into()],
        cwd: "/work".into(),
        user: User {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10, 20],
            umask: Some(0o027),
        },
        terminal: true,
        console_size: Some(ConsoleSize { rows: 24, cols: 80 }),
        rlimits: vec![Rlimit {
            kind: RlimitKind::RlimitNofile,
            soft: 1024,
            hard: 4096,
        }],
        no_new_privileges: true,
        capabilities: Some(Capabilities {
            bounding: vec![Capability::Chown, Capability::NetBindService],
            effective: vec![Capability::Chown],
            inheritable: vec![],
            permitted: vec![Capability::Chown],
            ambient: vec![],
        }),
        oom_score_adj: Some(-500),
    }
}

pub fn container() -> ContainerSpec {
    ContainerSpec {
        container_id: "web-1".into(),
        rootfs: RootfsSpec::Overlay {
            layers: vec![
                LayerDisk {
                    disk: DiskRef::Serial("layer-base".into()),
                    fs_type: FsType::Erofs,
                },
                LayerDisk {
                    disk: DiskRef::Device("/dev/vdc".into()),
                    fs_type: FsType::Erofs,
                },
            ],
            scratch: Some(LayerDisk {
                disk: DiskRef::Serial("scratch".into()),
                fs_type: FsType::Ext4,
            }),
        },
        process: process(),
        hostname: Some("web".into()),
        mounts: vec![
            MountSpec {
                destination: "/proc".into(),
                source: "proc".into(),
                fs_type: "proc".into(),
                options: vec!["nosuid".into(), "noexec".into(), "nodev".into()],
            },
            MountSpec {
                destination: "/dev/shm".into(),
                source: "shm".into(),
                fs_type: "tmpfs".into(),
                options: vec!["mode=1777".into(), "size=65536k".into()],
            },
        ],
        readonly_root: true,
        sysctl: BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
        masked_paths: vec!["/proc/kcore".into()],
        readonly_paths: vec!["/proc/sys".into()],
        namespaces: vec![
            NamespaceKind::Pid,
            NamespaceKind::Mount,
            NamespaceKind::Uts,
            NamespaceKind::Ipc,
        ],
        seccomp: Some(SeccompSpec {
            default_action: SeccompAction::Errno,
            default_errno_ret: Some(1),
            architectures: vec!["SCMP_ARCH_X86_64".into()],
            flags: vec!["SECCOMP_FILTER_FLAG_LOG".into()],
            syscalls: vec![SyscallRule {
                names: vec!["read".into(), "write".into(), "personality".into()],
                action: SeccompAction::Allow,
                errno_ret: None,
                args: vec![SyscallArg {
                    index: 0,
                    value: 8,
                    value_two: 0,
                    op: SeccompOp::Eq,
                }],
            }],
        }),
        network: Some(NetworkConfig {
            interfaces: vec![InterfaceConfig {
                mac: [0x02, 0x68, 0x6b, 172, 31, 2],
                mtu: Some(1500),
                addresses: vec![
                    IpNet::new("172.31.250.2".parse().unwrap(), 24),
                    IpNet::new("fd00::2".parse().unwrap(), 64),
                ],
            }],
            routes: vec![RouteConfig {
                destination: IpNet::new("0.0.0.0".parse().unwrap(), 0),
                gateway: Some("172.31.250.1".parse().unwrap()),
                mac: None,
            }],
            dns: DnsConfig {
                servers: vec!["172.31.250.1".parse().unwrap()],
                search: vec!["lan".into()],
                options: vec![],
            },
            hosts: vec![HostEntry {
                addr: "172.31.250.9".parse().unwrap(),
                names: vec!["db".into(), "db.lan".into()],
            }],
        }),
        resources: Resources {
            memory_max: Some(256 << 20),
            cpu_max: Some((150_000, 100_000)),
            pids_max: Some(2048),
        },
    }
}

/// One request of every variant. The match in `variant_index` has no wildcard, so adding a
/// variant breaks the build here until a sample is added.
pub fn requests() -> Vec<Request> {
    let bodies = vec![
        RequestBody::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "husk 0.1.0".into(),
        }),
        RequestBody::CreateContainer(Box::new(container())),
        RequestBody::StartContainer {
            container_id: "web-1".into(),
        },
        RequestBody::ExecProcess {
            container_id: "web-1".into(),
            exec_id: "e1".into(),
            process: Box::new(process()),
        },
        RequestBody::Signal {
            container_id: "web-1".into(),
            exec_id: Some("e1".into()),
            signal: 15,
            all: false,
        },
        RequestBody::Signal {
            container_id: "web-1".into(),
            exec_id: None,
            signal: 9,
            all: true,
        },
        RequestBody::Wait {
            container_id: "web-1".into(),
            exec_id: None,
        },
        RequestBody::ResizeTty {
            container_id: "web-1".into(),
            exec_id: None,
            rows: 50,
            cols: 132,
        },
        RequestBody::CloseStdin {
            container_id: "web-1".into(),
            exec_id: Some("e1".into()),
        },
        RequestBody::Stats {
            container_id: "web-1".into(),
        },
        RequestBody::Freeze {
            container_id: "web-1".into(),
            frozen: true,
        },
        RequestBody::RemoveContainer {
            container_id: "web-1".into(),
        },
        RequestBody::Shutdown,
        RequestBody::Restored(Box::new(Restored::new(
            std::time::Duration::new(1_750_000_000, 5),
            (0..64).collect(),
            vec![MacPair {
                template: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                new: [0x02, 0x68, 0x6b, 0xac, 0x1f, 0x02],
            }],
        ))),
    ];
    let mut seen = [false; REQUEST_VARIANTS];
    for b in &bodies {
        seen[variant_index(b)] = true;
    }
    assert!(seen.iter().all(|s| *s), "a request variant has no sample");
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| Request::new(i as u64 + 1, b))
        .collect()
}

const REQUEST_VARIANTS: usize = 13;

fn variant_index(b: &RequestBody) -> usize {
    match b {
        RequestBody::Hello(_) => 0,
        RequestBody::CreateContainer(_) => 1,
        RequestBody::StartContainer { .. } => 2,
        RequestBody::ExecProcess { .. } => 3,
        RequestBody::Signal { .. } => 4,
        RequestBody::Wait { .. } => 5,
        RequestBody::ResizeTty { .. } => 6,
        RequestBody::CloseStdin { .. } => 7,
        RequestBody::Stats { .. } => 8,
        RequestBody::Shutdown => 9,
        RequestBody::Freeze { .. } => 10,
        RequestBody::RemoveContainer { .. } => 11,
        RequestBody::Restored(_) => 12,
    }
}

/// One response of every body variant, plus an error reply of every code.
pub fn responses() -> Vec<Response> {
    let mut out = vec![
        Response::ok(
            1,
            ResponseBody::Hello(HelloReply {
                version: PROTOCOL_VERSION,
                agent: "husk-agent 0.1.0".into(),
            }),
        ),
        Response::ok(2, ResponseBody::Done),
        Response::ok(3, ResponseBody::Started { pid: 1 }),
        Response::ok(4, ResponseBody::Exited(ExitStatus::exited(7))),
        Response::ok(5, ResponseBody::Exited(ExitStatus::signaled(15))),
        Response::ok(
            6,
            ResponseBody::Stats(StatsReply {
                cpu_usage_ns: 3_000_000,
                cpu_user_ns: 2_000_000,
                cpu_system_ns: 1_000_000,
                memory_usage_bytes: 12 << 20,
                memory_limit_bytes: None,
                pids: 3,
                oom_kills: 1,
            }),
        ),
        Response::ok(
            7,
            ResponseBody::Created {
                steps: vec![
                    GuestStep {
                        name: "scratch disk mounted".into(),
                        micros: 27_100,
                    },
                    GuestStep {
                        name: "/etc/hosts and resolv.conf".into(),
                        micros: 0,
                    },
                ],
            },
        ),
    ];
    for (i, code) in [
        ErrorCode::VersionMismatch,
        ErrorCode::InvalidRequest,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::InvalidState,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
    ]
    .into_iter()
    .enumerate()
    {
        out.push(Response::err(
            100 + i as u64,
            ErrorReply::new(code, format!("{code:?} happened")),
        ));
    }
    for r in &out {
        // No wildcard: a new response variant must get a sample above.
        match &r.body {
            Ok(ResponseBody::Hello(_) | ResponseBody::Done | ResponseBody::Started { .. }) => {}
            Ok(ResponseBody::Exited(_) | ResponseBody::Stats(_)) | Err(_) => {}
            Ok(ResponseBody::Created { .. }) => {}
        }
    }
    out
}

pub fn stream_hellos() -> Vec<StreamHello> {
    [
        StreamKind::Stdin,
        StreamKind::Stdout,
        StreamKind::Stderr,
        StreamKind::Pty,
    ]
    .into_iter()
    .map(|kind| StreamHello {
        version: PROTOCOL_VERSION,
        container_id: "web-1".into(),
        exec_id: if kind == StreamKind::Pty {
            None
        } else {
            Some("e1".into())
        },
        kind,
    })
    .collect()
}

pub fn stream_replies() -> Vec<StreamReply> {
    vec![
        StreamReply::Ready,
        StreamReply::Refused(ErrorReply::new(ErrorCode::NotFound, "no container web-2")),
    ]
}
