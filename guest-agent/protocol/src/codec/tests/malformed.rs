use std::io::Cursor;

use super::fixtures;
use crate::codec::*;
use crate::frame::{write_frame, FrameError};
use crate::limits::*;
use crate::messages::*;

fn request_bytes() -> Vec<u8> {
    encode(&Request::new(
        7,
        RequestBody::Wait {
            container_id: "c1".into(),
            exec_id: None,
        },
    ))
    .expect("encode")
}

fn assert_malformed(payload: &[u8], needle: &str) {
    match decode::<Request>(payload) {
        Err(e @ CodecError::Malformed { .. }) => {
            assert!(e.is_recoverable());
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
        }
        other => panic!(
            "expected Malformed for {:?}, got {other:?}",
            String::from_utf8_lossy(payload)
        ),
    }
}

#[test]
fn truncated_frame_is_an_error_not_eof() {
    let mut wire = Vec::new();
    write_frame(&mut wire, &request_bytes()).expect("write");
    wire.truncate(wire.len() - 3);
    let err = read_message::<Request>(&mut Cursor::new(wire)).expect_err("truncated");
    assert!(matches!(
        err,
        CodecError::Frame(FrameError::TruncatedPayload { .. })
    ));
    assert!(!err.is_recoverable());
}

#[test]
fn truncated_json_inside_a_whole_frame_is_malformed() {
    let bytes = request_bytes();
    assert_malformed(&bytes[..bytes.len() - 1], "EOF");
}

#[test]
fn oversize_length_prefix_is_refused_without_allocating() {
    let mut wire = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(b"{}");
    let err = read_message::<Request>(&mut Cursor::new(wire)).expect_err("oversize");
    assert!(
        matches!(err, CodecError::Frame(FrameError::TooLarge { .. })),
        "{err}"
    );
}

#[test]
fn oversize_message_is_refused_on_encode() {
    // Each entry is within its own cap; together they pass the frame cap.
    let mut spec = fixtures::process();
    spec.env = (0..40)
        .map(|i| format!("K{i}={}", "v".repeat(MAX_ARG_LEN - 10)))
        .collect();
    let req = Request::new(
        1,
        RequestBody::ExecProcess {
            container_id: "c".into(),
            exec_id: "e".into(),
            process: Box::new(spec),
        },
    );
    assert!(matches!(
        encode(&req),
        Err(CodecError::Frame(FrameError::TooLarge { .. }))
    ));
}

#[test]
fn empty_payload_is_refused() {
    assert!(matches!(
        decode::<Request>(b""),
        Err(CodecError::Frame(FrameError::Empty))
    ));
    assert!(matches!(
        decode_opening(b""),
        Err(CodecError::Frame(FrameError::Empty))
    ));
}

#[test]
fn unknown_variant_is_malformed() {
    assert_malformed(
        br#"{"id":1,"body":{"format_disk":{"container_id":"c"}}}"#,
        "unknown variant",
    );
    assert_malformed(br#"{"id":1,"body":"reboot"}"#, "unknown variant");
    let r = decode::<Response>(br#"{"id":1,"body":{"Err":{"code":"on_fire","message":"x"}}}"#);
    assert!(matches!(r, Err(CodecError::Malformed { .. })), "{r:?}");
}

#[test]
fn unknown_and_missing_fields_are_malformed() {
    assert_malformed(
        br#"{"id":1,"body":{"wait":{"container_id":"c","exec_id":null,"pid":1}}}"#,
        "unknown field",
    );
    assert_malformed(
        br#"{"id":1,"body":"shutdown","extra":true}"#,
        "unknown field",
    );
    assert_malformed(
        br#"{"id":1,"body":{"signal":{"container_id":"c","exec_id":null}}}"#,
        "missing field",
    );
    assert_malformed(br#"{"body":"shutdown"}"#, "missing field");
}

#[test]
fn wrong_types_are_malformed() {
    assert_malformed(br#"{"id":"1","body":"shutdown"}"#, "invalid type");
    assert_malformed(br#"{"id":-1,"body":"shutdown"}"#, "invalid value");
    assert_malformed(br#"{"id":1,"body":{"resize_tty":{"container_id":"c","exec_id":null,"rows":70000,"cols":1}}}"#, "invalid value");
    assert_malformed(
        br#"{"id":1,"body":{"stats":{"container_id":7}}}"#,
        "invalid type",
    );
}

#[test]
fn invalid_utf8_is_malformed() {
    let mut bytes = br#"{"id":1,"body":{"stats":{"container_id":"c"#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#""}}}"#);
    assert_malformed(&bytes, "");
}

#[test]
fn trailing_garbage_is_malformed() {
    let mut bytes = request_bytes();
    bytes.extend_from_slice(b"{}");
    assert_malformed(&bytes, "trailing");
    let mut bytes = request_bytes();
    bytes.push(0);
    assert_malformed(&bytes, "trailing");
}

#[test]
fn deep_nesting_is_malformed_not_a_stack_overflow() {
    // Hello ignores unknown fields, and skipping one walks its whole value: the deepest path
    // into the parser a peer controls.
    let mut bytes = br#"{"id":1,"body":{"hello":{"version":1,"client":"x","future":"#.to_vec();
    bytes.extend(std::iter::repeat_n(b'[', 100_000));
    assert_malformed(&bytes, "EOF");
    // Closed, it is just a large ignored field: accepted, and still no overflow.
    bytes.extend(std::iter::repeat_n(b']', 100_000));
    bytes.extend_from_slice(b"}}}");
    assert!(decode::<Request>(&bytes).is_ok());
}

/// Each mutation must fail validation at the named field.
#[test]
fn validation_failures_name_the_field() {
    type Mutate = fn(&mut ContainerSpec);
    let cases: &[(&str, Mutate)] = &[
        ("create_container.container_id", |s| {
            s.container_id = "../etc".into()
        }),
        ("create_container.process.args", |s| s.process.args.clear()),
        ("create_container.process.args", |s| {
            s.process.args = vec!["x".into(); MAX_ARGS + 1]
        }),
        ("create_container.process.args[1]", |s| {
            s.process.args[1] = "a\0b".into()
        }),
        ("create_container.process.args[0]", |s| {
            s.process.args[0] = "x".repeat(MAX_ARG_LEN + 1)
        }),
        ("create_container.process.env", |s| {
            s.process.env = vec!["A=1".into(); MAX_ENV + 1]
        }),
        ("create_container.process.env[0]", |s| {
            s.process.env[0] = "NOEQUALS".into()
        }),
        ("create_container.process.env[0]", |s| {
            s.process.env[0] = "=v".into()
        }),
        ("create_container.process.cwd", |s| {
            s.process.cwd = "relative".into()
        }),
        ("create_container.process.user.umask", |s| {
            s.process.user.umask = Some(0o1777)
        }),
        ("create_container.process.console_size", |s| {
            s.process.terminal = false
        }),
        ("create_container.process.rlimits[0]", |s| {
            s.process.rlimits[0].soft = u64::MAX
        }),
        ("create_container.process.oom_score_adj", |s| {
            s.process.oom_score_adj = Some(1001)
        }),
        ("create_container.rootfs.layers", |s| {
            s.rootfs = RootfsSpec::Overlay {
                layers: vec![],
                scratch: None,
            }
        }),
        ("create_container.rootfs.layers[0].disk.serial", |s| {
            s.rootfs = RootfsSpec::Overlay {
                layers: vec![LayerDisk {
                    disk: DiskRef::Serial("x".repeat(21)),
                    fs_type: FsType::Erofs,
                }],
                scratch: None,
            }
        }),
        ("create_container.rootfs.layers[1].disk.number", |s| {
            s.rootfs = RootfsSpec::Overlay {
                layers: [1, 0]
                    .into_iter()
                    .map(|number| LayerDisk {
                        disk: DiskRef::Partition {
                            serial: "husk-layers".into(),
                            number,
                        },
                        fs_type: FsType::Erofs,
                    })
                    .collect(),
                scratch: None,
            }
        }),
        ("create_container.rootfs.layers[0].disk.serial", |s| {
            s.rootfs = RootfsSpec::Overlay {
                layers: vec![LayerDisk {
                    disk: DiskRef::Partition {
                        serial: "x".repeat(21),
                        number: 1,
                    },
                    fs_type: FsType::Erofs,
                }],
                scratch: None,
            }
        }),
        ("create_container.rootfs.disk.disk.device", |s| {
            s.rootfs = RootfsSpec::Disk {
                disk: LayerDisk {
                    disk: DiskRef::Device("/etc/passwd".into()),
                    fs_type: FsType::Ext4,
                },
                readonly: true,
            }
        }),
        ("create_container.rootfs.tag", |s| {
            s.rootfs = RootfsSpec::VirtioFs { tag: String::new() }
        }),
        ("create_container.rootfs.entry", |s| {
            s.rootfs = RootfsSpec::VirtioFsEntry {
                tag: "husk-pod".into(),
                entry: "..".into(),
            }
        }),
        ("create_container.hostname", |s| {
            s.hostname = Some("h".repeat(MAX_HOSTNAME_LEN + 1))
        }),
        ("create_container.mounts[0].destination", |s| {
            s.mounts[0].destination = "/a/../../etc".into()
        }),
        ("create_container.mounts[1].options[0]", |s| {
            s.mounts[1].options[0] = "mode=1777,suid".into()
        }),
        ("create_container.sysctl[\"../../x\"]", |s| {
            s.sysctl.insert("../../x".into(), "1".into());
        }),
        ("create_container.masked_paths[0]", |s| {
            s.masked_paths[0] = "proc/kcore".into()
        }),
        ("create_container.namespaces", |s| {
            s.namespaces.push(NamespaceKind::Pid)
        }),
        ("create_container.seccomp.syscalls[0].args[0].index", |s| {
            if let Some(sc) = &mut s.seccomp {
                sc.syscalls[0].args[0].index = 6;
            }
        }),
        ("create_container.seccomp.syscalls[0].names", |s| {
            if let Some(sc) = &mut s.seccomp {
                sc.syscalls[0].names.clear();
            }
        }),
    ];
    for (field, mutate) in cases {
        let mut spec = fixtures::container();
        mutate(&mut spec);
        let req = Request::new(1, RequestBody::CreateContainer(Box::new(spec)));
        // Encode refuses too, so the host learns first; bypass it to test the agent side.
        assert!(
            matches!(encode(&req), Err(CodecError::Invalid { .. })),
            "{field}: encode accepted"
        );
        let bytes = serde_json::to_vec(&req).expect("serialize");
        match decode::<Request>(&bytes) {
            Err(CodecError::Invalid { error, .. }) => assert_eq!(error.field, *field, "{error}"),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn other_request_rules() {
    let bad = [
        (Request::new(0, RequestBody::Shutdown), "id"),
        (
            Request::new(
                1,
                RequestBody::Signal {
                    container_id: "c".into(),
                    exec_id: None,
                    signal: 0,
                    all: false,
                },
            ),
            "signal.signal",
        ),
        (
            Request::new(
                1,
                RequestBody::Signal {
                    container_id: "c".into(),
                    exec_id: None,
                    signal: 65,
                    all: false,
                },
            ),
            "signal.signal",
        ),
        (
            Request::new(
                1,
                RequestBody::Signal {
                    container_id: "c".into(),
                    exec_id: Some("e".into()),
                    signal: 15,
                    all: true,
                },
            ),
            "signal.all",
        ),
        (
            Request::new(
                1,
                RequestBody::Wait {
                    container_id: "c".into(),
                    exec_id: Some("a/b".into()),
                },
            ),
            "wait.exec_id",
        ),
        (
            Request::new(
                1,
                RequestBody::Stats {
                    container_id: String::new(),
                },
            ),
            "stats.container_id",
        ),
        (
            Request::new(
                1,
                RequestBody::Hello(Hello {
                    version: 1,
                    client: "x\0".into(),
                }),
            ),
            "hello.client",
        ),
    ];
    for (req, field) in bad {
        let bytes = serde_json::to_vec(&req).expect("serialize");
        match decode::<Request>(&bytes) {
            Err(CodecError::Invalid { error, .. }) => assert_eq!(error.field, field, "{error}"),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
    let huge = Response::err(
        1,
        ErrorReply::new(ErrorCode::Internal, "x".repeat(MAX_ERROR_MESSAGE_LEN + 1)),
    );
    let bytes = serde_json::to_vec(&huge).expect("serialize");
    assert!(matches!(
        decode::<Response>(&bytes),
        Err(CodecError::Invalid { .. })
    ));
    // The guest names its steps: a hostile one may not flood the host's table or terminal.
    let step = |name: &str| GuestStep {
        name: name.into(),
        micros: 1,
    };
    for steps in [
        vec![step("ok"); MAX_GUEST_STEPS + 1],
        vec![step("\x1b[2Jcleared")],
        vec![step(&"x".repeat(MAX_GUEST_STEP_NAME_LEN + 1))],
        vec![step("caf\u{e9}")],
    ] {
        let bytes = serde_json::to_vec(&Response::ok(1, ResponseBody::Created { steps })).unwrap();
        match decode::<Response>(&bytes) {
            Err(CodecError::Invalid { error, .. }) => {
                assert!(error.field.starts_with("body.created.steps"), "{error}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    let bad_stream = StreamHello {
        version: 1,
        container_id: "..".into(),
        exec_id: None,
        kind: StreamKind::Stdout,
    };
    let bytes = serde_json::to_vec(&bad_stream).expect("serialize");
    assert!(matches!(
        decode::<StreamHello>(&bytes),
        Err(CodecError::Invalid { .. })
    ));
}

#[test]
fn errors_become_invalid_request_replies_with_the_request_id() {
    let payload = br#"{"id":42,"body":{"launch_missiles":{}}}"#;
    let err = decode::<Request>(payload).expect_err("unknown variant");
    let reply = Response::err(peek_request_id(payload).unwrap_or(0), err.to_reply());
    assert_eq!(reply.id, 42);
    let Err(e) = &reply.body else {
        panic!("not an error reply")
    };
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("launch_missiles"), "{}", e.message);
    // The reply to a hostile request must itself be sendable.
    encode(&reply).expect("reply encodes");

    assert_eq!(peek_request_id(b"\xff\xfe"), None);
    assert_eq!(peek_request_id(br#"{"id":"x"}"#), None);
}

#[test]
fn opening_frame_errors_read_like_request_errors() {
    let err = decode_opening(br#"{"id":1,"body":"nope"}"#).expect_err("bad");
    assert!(err.to_string().starts_with("malformed request"), "{err}");
    let err =
        decode_opening(br#"{"version":1,"container_id":"c","exec_id":null,"kind":"stdjunk"}"#)
            .expect_err("bad");
    assert!(
        err.to_string().starts_with("malformed stream hello"),
        "{err}"
    );
}
