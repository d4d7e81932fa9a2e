use std::io::Cursor;

use super::fixtures;
use crate::codec::*;
use crate::messages::*;

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = encode(msg).expect("encode");
    let back: M = decode(&bytes).expect("decode");
    assert_eq!(&back, msg);
}

#[test]
fn every_request_variant_round_trips() {
    for r in fixtures::requests() {
        round_trip(&r);
    }
}

#[test]
fn every_response_variant_round_trips() {
    for r in fixtures::responses() {
        round_trip(&r);
    }
}

#[test]
fn stream_handshake_round_trips() {
    for h in fixtures::stream_hellos() {
        round_trip(&h);
    }
    for r in fixtures::stream_replies() {
        round_trip(&r);
    }
}

#[test]
fn every_rootfs_kind_round_trips() {
    let kinds = [
        RootfsSpec::Disk {
            disk: LayerDisk {
                disk: DiskRef::Serial("root".into()),
                fs_type: FsType::Ext4,
            },
            readonly: false,
        },
        RootfsSpec::VirtioFs {
            tag: "rootfs".into(),
        },
        RootfsSpec::VirtioFsEntry {
            tag: "husk-pod".into(),
            entry: "c1.rootfs".into(),
        },
        RootfsSpec::Overlay {
            layers: vec![LayerDisk {
                disk: DiskRef::Serial("l0".into()),
                fs_type: FsType::Erofs,
            }],
            scratch: None,
        },
        RootfsSpec::Overlay {
            layers: (1..=127)
                .map(|number| LayerDisk {
                    disk: DiskRef::Partition {
                        serial: "husk-layers".into(),
                        number,
                    },
                    fs_type: FsType::Erofs,
                })
                .collect(),
            scratch: None,
        },
    ];
    for rootfs in kinds {
        let mut spec = fixtures::container();
        spec.rootfs = rootfs;
        spec.seccomp = None;
        round_trip(&Request::new(
            9,
            RequestBody::CreateContainer(Box::new(spec)),
        ));
    }
}

#[test]
fn messages_stream_over_a_connection() {
    let mut wire = Vec::new();
    for r in fixtures::requests() {
        write_message(&mut wire, &r).expect("write");
    }
    let mut rd = Cursor::new(wire);
    let mut got = Vec::new();
    while let Some(r) = read_message::<Request>(&mut rd).expect("read") {
        got.push(r);
    }
    assert_eq!(got, fixtures::requests());
}

/// Pins the wire shape, so a serde attribute change that would break an older peer shows up
/// as a failing test rather than a protocol bug.
#[test]
fn wire_format_is_pinned() {
    let start = Request::new(
        3,
        RequestBody::StartContainer {
            container_id: "c1".into(),
        },
    );
    assert_eq!(
        encode(&start).expect("encode"),
        br#"{"id":3,"body":{"start_container":{"container_id":"c1"}}}"#
    );
    let shutdown = Request::new(4, RequestBody::Shutdown);
    assert_eq!(
        encode(&shutdown).expect("encode"),
        br#"{"id":4,"body":"shutdown"}"#
    );
    let hello = Request::new(
        1,
        RequestBody::Hello(Hello {
            version: 1,
            client: "h".into(),
        }),
    );
    assert_eq!(
        encode(&hello).expect("encode"),
        br#"{"id":1,"body":{"hello":{"version":1,"client":"h"}}}"#
    );
    let done = Response::ok(4, ResponseBody::Done);
    assert_eq!(
        encode(&done).expect("encode"),
        br#"{"id":4,"body":{"Ok":"done"}}"#
    );
    let err = Response::err(5, ErrorReply::new(ErrorCode::NotFound, "no"));
    assert_eq!(
        encode(&err).expect("encode"),
        br#"{"id":5,"body":{"Err":{"code":"not_found","message":"no"}}}"#
    );
    let rlimit = Rlimit {
        kind: RlimitKind::RlimitNofile,
        soft: 1,
        hard: 2,
    };
    assert_eq!(
        serde_json::to_string(&rlimit).expect("encode"),
        r#"{"type":"RLIMIT_NOFILE","soft":1,"hard":2}"#
    );
}

/// A `CreateContainer` from before networking (no `network` field) still decodes, and one
/// without a network encodes exactly as before.
#[test]
fn container_spec_without_network_keeps_the_old_shape() {
    let mut spec = fixtures::container();
    spec.network = None;
    let json = serde_json::to_string(&spec).expect("encode");
    assert!(!json.contains("network"), "{json}");
    let back: ContainerSpec = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, spec);
    let ip = serde_json::to_string(&IpNet::new("10.0.0.1".parse().unwrap(), 8)).expect("ip");
    assert_eq!(ip, r#"{"addr":"10.0.0.1","prefix":8}"#);
}

#[test]
fn opening_frame_tells_control_from_stream() {
    for h in fixtures::stream_hellos() {
        let bytes = encode(&h).expect("encode");
        assert_eq!(decode_opening(&bytes).expect("decode"), Opening::Stream(h));
    }
    for r in fixtures::requests() {
        let bytes = encode(&r).expect("encode");
        assert_eq!(decode_opening(&bytes).expect("decode"), Opening::Control(r));
    }
}

#[test]
fn exit_status_reports_signal_deaths_as_128_plus_n() {
    assert_eq!(ExitStatus::signaled(15).code, 143);
    assert_eq!(
        ExitStatus::signaled(9),
        ExitStatus {
            code: 137,
            signal: Some(9)
        }
    );
    assert_eq!(
        ExitStatus::exited(7),
        ExitStatus {
            code: 7,
            signal: None
        }
    );
}

#[test]
fn version_check_accepts_own_and_explains_mismatch() {
    assert!(check_version(PROTOCOL_VERSION).is_ok());
    let err = check_version(PROTOCOL_VERSION + 1).expect_err("mismatch");
    assert_eq!(err.code, ErrorCode::VersionMismatch);
    assert!(err
        .message
        .contains(&format!("peer speaks version {}", PROTOCOL_VERSION + 1)));
    assert!(err
        .message
        .contains(&format!("this side speaks {PROTOCOL_VERSION}")));
    // A peer's error reply carrying it must itself round-trip.
    let reply = Response::err(1, err);
    let back: Response = decode(&encode(&reply).expect("encode")).expect("decode");
    assert_eq!(back, reply);
}

/// A newer host may add fields to Hello; an old agent must still read the version to refuse
/// it properly.
#[test]
fn hello_from_a_newer_peer_still_decodes_for_the_version_check() {
    let bytes = br#"{"id":1,"body":{"hello":{"version":99,"client":"husk 9","features":["x"]}}}"#;
    let req: Request = decode(bytes).expect("decode");
    let RequestBody::Hello(h) = req.body else {
        panic!("not hello: {:?}", req.body)
    };
    assert_eq!(
        check_version(h.version).expect_err("mismatch").code,
        ErrorCode::VersionMismatch
    );
}

#[test]
fn a_container_spec_without_resources_decodes_with_none() {
    let mut v = serde_json::to_value(fixtures::container()).unwrap();
    v.as_object_mut().unwrap().remove("resources");
    let spec: ContainerSpec = serde_json::from_value(v).unwrap();
    assert_eq!(spec.resources, Resources::default());
    let mut bad = fixtures::container();
    bad.resources.cpu_max = Some((0, 100_000));
    assert!(bad.validate().is_err());
}

#[test]
fn a_signal_from_an_older_host_signals_one_process() {
    let old = Request::new(
        3,
        RequestBody::Signal {
            container_id: "c".into(),
            exec_id: None,
            signal: 15,
            all: true,
        },
    );
    let mut json: serde_json::Value =
        serde_json::from_slice(&encode(&old).expect("encode")).expect("json");
    let text = json.to_string();
    assert!(text.contains("\"all\":true"), "{text}");
    // An older host's request has no `all` field at all.
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("all");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut json);
    let back: Request = decode(json.to_string().as_bytes()).expect("decode");
    match back.body {
        RequestBody::Signal { signal, all, .. } => {
            assert_eq!(signal, 15);
            assert!(!all);
        }
        other => panic!("decoded {other:?}"),
    }
}
