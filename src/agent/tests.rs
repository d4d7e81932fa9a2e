//! The host client against a fake agent: a thread on a unix socket that answers the
//! `CONNECT`/`OK` preamble as a VMM would and then speaks the protocol as the agent would.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::*;

use super::*;

const T: Duration = Duration::from_secs(5);

/// Does the VMM's half of the hybrid handshake on a fresh connection.
fn vmm_preamble(s: &mut UnixStream) {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    assert_eq!(line, format!("CONNECT {AGENT_VSOCK_PORT}").as_bytes());
    // Like husk-agent-mux: the guest port, not a host port.
    s.write_all(b"OK 1024\n").unwrap();
}

/// Serves `conns` connections on `path`, each through `handler` after the preamble.
fn serve(
    path: &Path,
    conns: usize,
    handler: impl Fn(usize, UnixStream) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let handler = Arc::new(handler);
        let mut threads = Vec::new();
        for i in 0..conns {
            let (mut s, _) = listener.accept().unwrap();
            vmm_preamble(&mut s);
            let h = handler.clone();
            threads.push(std::thread::spawn(move || h(i, s)));
        }
        for t in threads {
            t.join().unwrap();
        }
    })
}

/// An agent loop: `answer` maps each request to the responses to send (none, one, several).
fn agent_loop(mut s: UnixStream, mut answer: impl FnMut(Request) -> Vec<Response>) {
    while let Ok(Some(req)) = read_message::<Request>(&mut s) {
        for resp in answer(req) {
            if write_message(&mut s, &resp).is_err() {
                return;
            }
        }
    }
}

fn hello_ok(id: u64, version: u32) -> Response {
    Response::ok(
        id,
        ResponseBody::Hello(HelloReply {
            version,
            agent: "fake-agent 0".into(),
        }),
    )
}

/// Answers every request the way a healthy agent would.
fn well_behaved(req: Request) -> Vec<Response> {
    let body = match req.body {
        RequestBody::Hello(_) => return vec![hello_ok(req.id, PROTOCOL_VERSION)],
        RequestBody::CreateContainer(_) => ResponseBody::Created {
            steps: vec![husk_protocol::GuestStep {
                name: "rootfs".into(),
                micros: 1500,
            }],
        },
        RequestBody::StartContainer { .. } => ResponseBody::Started { pid: 1 },
        RequestBody::ExecProcess { .. } => ResponseBody::Started { pid: 42 },
        RequestBody::Wait { .. } => ResponseBody::Exited(husk_protocol::ExitStatus::exited(7)),
        RequestBody::Stats { .. } => ResponseBody::Stats(StatsReply {
            cpu_usage_ns: 1,
            cpu_user_ns: 1,
            cpu_system_ns: 0,
            memory_usage_bytes: 4096,
            memory_limit_bytes: None,
            pids: 1,
            oom_kills: 0,
        }),
        _ => ResponseBody::Done,
    };
    vec![Response::ok(req.id, body)]
}

fn sock(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("v.sock")
}

fn process() -> ProcessSpec {
    ProcessSpec {
        args: vec!["/bin/true".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: User {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            umask: None,
        },
        terminal: false,
        console_size: None,
        rlimits: vec![],
        no_new_privileges: false,
        capabilities: None,
        oom_score_adj: None,
    }
}

fn container() -> ContainerSpec {
    ContainerSpec {
        container_id: "c1".into(),
        rootfs: RootfsSpec::Disk {
            disk: LayerDisk {
                disk: DiskRef::Serial("root".into()),
                fs_type: FsType::Erofs,
            },
            readonly: true,
        },
        process: process(),
        hostname: None,
        mounts: vec![],
        readonly_root: false,
        sysctl: Default::default(),
        masked_paths: vec![],
        readonly_paths: vec![],
        namespaces: vec![NamespaceKind::Pid, NamespaceKind::Mount],
        seccomp: None,
        network: None,
        resources: Default::default(),
    }
}

#[test]
fn every_call_round_trips_with_ids_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let seen = seen.clone();
        serve(&sock(&dir), 1, move |_, s| {
            agent_loop(s, |req| {
                seen.lock().unwrap().push((req.id, req.body.name()));
                well_behaved(req)
            })
        })
    };
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    assert_eq!(c.agent().unwrap().agent, "fake-agent 0");
    let steps = c.create_container(container()).unwrap();
    assert_eq!((steps[0].name.as_str(), steps[0].micros), ("rootfs", 1500));
    assert_eq!(c.start_container("c1").unwrap(), 1);
    assert_eq!(c.exec_process("c1", "e1", process()).unwrap(), 42);
    c.signal("c1", Some("e1"), 15).unwrap();
    assert_eq!(c.wait("c1", None).unwrap().code, 7);
    c.resize_tty("c1", None, 24, 80).unwrap();
    c.close_stdin("c1", None).unwrap();
    assert_eq!(c.stats("c1").unwrap().memory_usage_bytes, 4096);
    c.shutdown().unwrap();
    drop(c);
    server.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    let names: Vec<&str> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        names,
        [
            "hello",
            "create_container",
            "start_container",
            "exec_process",
            "signal",
            "wait",
            "resize_tty",
            "close_stdin",
            "stats",
            "shutdown"
        ]
    );
}

#[test]
fn answer_with_an_unknown_id_breaks_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, s| {
        agent_loop(s, |req| match req.body {
            RequestBody::Hello(_) => vec![hello_ok(req.id, PROTOCOL_VERSION)],
            _ => vec![Response::ok(req.id + 100, ResponseBody::Done)],
        })
    });
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    let err = c.signal("c1", None, 9).unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
    assert!(err.to_string().contains("id 102"), "{err}");
    // Broken for good: later calls fail at once instead of waiting for a timeout.
    let t = Instant::now();
    assert!(matches!(c.stats("c1").unwrap_err(), Error::Disconnected(_)));
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn error_reply_carries_the_agents_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, s| {
        agent_loop(s, |req| match req.body {
            RequestBody::Hello(_) => vec![hello_ok(req.id, PROTOCOL_VERSION)],
            _ => vec![Response::err(
                req.id,
                ErrorReply::new(ErrorCode::NotFound, "no container c9"),
            )],
        })
    });
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    let err = c.start_container("c9").unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound));
    assert!(
        err.to_string()
            .contains("start_container failed in the guest"),
        "{err}"
    );
    assert!(err.to_string().contains("no container c9"), "{err}");
    // An error reply is an answer, not a broken connection.
    let err = c.stats("c9").unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound));
}

/// `restored` carries the host's time, fresh entropy and the MAC pairs to the agent as one
/// `Restored` request; a request the agent refuses comes back as its error.
#[test]
fn restored_sends_the_hosts_time_entropy_and_macs() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let seen = seen.clone();
        serve(&sock(&dir), 1, move |_, s| {
            agent_loop(s, |req| match req.body {
                RequestBody::Hello(_) => vec![hello_ok(req.id, PROTOCOL_VERSION)],
                RequestBody::Restored(r) => {
                    let refuse = r.macs.is_empty();
                    seen.lock().unwrap().push(*r);
                    match refuse {
                        false => vec![Response::ok(req.id, ResponseBody::Done)],
                        true => vec![Response::err(
                            req.id,
                            ErrorReply::new(ErrorCode::Internal, "BLKRRPART on vdb: busy"),
                        )],
                    }
                }
                other => panic!("unexpected {other:?}"),
            })
        })
    };
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    let pair = MacPair {
        template: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        new: [0x02, 0x68, 0x6b, 0xac, 0x1f, 0x02],
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    c.restored(restored_request(vec![pair]).unwrap()).unwrap();
    let err = c.restored(restored_request(vec![]).unwrap()).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::Internal));
    assert!(
        err.to_string()
            .starts_with("restored failed in the guest: Internal: BLKRRPART on vdb"),
        "{err}"
    );
    drop(c);
    server.join().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].macs, [pair]);
    let late = seen[0].realtime().saturating_sub(now);
    assert!(
        late < Duration::from_secs(5),
        "time {late:?} after the test's"
    );
    assert!(seen[0].realtime() >= now);
    assert_eq!(seen[0].entropy.len(), RESTORED_ENTROPY_LEN);
    // Fresh bytes each time: two clones must never get the same.
    assert_ne!(seen[0].entropy, seen[1].entropy);
    assert!(seen[0].entropy.iter().any(|b| *b != 0));
}

#[test]
fn wrong_reply_kind_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, s| {
        agent_loop(s, |req| match req.body {
            RequestBody::Hello(_) => vec![hello_ok(req.id, PROTOCOL_VERSION)],
            _ => vec![Response::ok(req.id, ResponseBody::Done)],
        })
    });
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    let err = c.start_container("c1").unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnexpectedReply {
                request: "start_container",
                got: "done"
            }
        ),
        "{err}"
    );
}

#[test]
fn version_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, s| {
        agent_loop(s, |req| vec![hello_ok(req.id, PROTOCOL_VERSION + 1)])
    });
    let err = AgentClient::connect(&sock(&dir), T).err().unwrap();
    assert!(matches!(err, Error::VersionMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("rebuild the guest initramfs"),
        "{err}"
    );
}

#[test]
fn agent_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 2, |i, s| {
        agent_loop(s, |req| match (i, &req.body) {
            (1, RequestBody::Hello(_)) => vec![hello_ok(req.id, PROTOCOL_VERSION)],
            _ => vec![], // swallow
        })
    });
    // Connection 0: Hello is never answered; connect's deadline covers it.
    let t = Instant::now();
    // (1 s rather than less: on a loaded machine the CONNECT exchange alone may take a while.)
    let err = AgentClient::connect(&sock(&dir), Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::Timeout {
                request: "hello",
                ..
            }
        ),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // Connection 1: Hello answered, then silence.
    let mut c = AgentClient::connect(&sock(&dir), T).unwrap();
    c.set_call_timeout(Duration::from_millis(200));
    let t = Instant::now();
    let err = c.signal("c1", None, 15).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                request: "signal",
                id: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(3));
}

#[test]
fn late_answer_to_a_timed_out_request_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, s| {
        agent_loop(s, |req| {
            if let RequestBody::Signal { .. } = req.body {
                std::thread::sleep(Duration::from_millis(300));
            }
            well_behaved(req)
        })
    });
    let mut c = AgentClient::connect(&sock(&dir), T).unwrap();
    c.set_call_timeout(Duration::from_millis(50));
    assert!(matches!(
        c.signal("c1", None, 15).unwrap_err(),
        Error::Timeout { .. }
    ));
    c.set_call_timeout(T);
    // The late `Done` for the signal arrives before this answer and must not break anything.
    assert_eq!(c.start_container("c1").unwrap(), 1);
}

#[test]
fn connect_retries_until_the_socket_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let late = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            serve(&path, 1, |_, s| agent_loop(s, well_behaved))
                .join()
                .unwrap();
        })
    };
    let t = Instant::now();
    let c = AgentClient::connect(&path, T).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    drop(c);
    late.join().unwrap();
}

#[test]
fn connect_retries_while_the_guest_port_has_no_listener() {
    // Socket present but the guest is not listening yet: the VMM accepts and closes (refused),
    // twice, before the third connection gets through.
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&mut s).read_line(&mut line).unwrap();
            drop(s); // no OK
        }
        let (mut s, _) = listener.accept().unwrap();
        vmm_preamble(&mut s);
        agent_loop(s, well_behaved);
    });
    let c = AgentClient::connect(&path, T).unwrap();
    assert_eq!(c.start_container("c1").unwrap(), 1);
    drop(c);
    server.join().unwrap();
}

#[test]
fn connect_stops_trying_once_the_vm_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut asked = 0;
    let err = AgentClient::connect_while(&sock(&dir), Duration::from_secs(30), || {
        asked += 1;
        asked < 3
    })
    .err()
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(asked, 3);
    match err {
        Error::ConnectTimeout { attempts, secs, .. } => {
            assert_eq!(attempts, 3);
            assert!(secs < 5.0, "{secs}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn connect_gives_up_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let err = AgentClient::connect(&sock(&dir), Duration::from_millis(300))
        .err()
        .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    match err {
        Error::ConnectTimeout { attempts, .. } => assert!(attempts > 2, "{attempts}"),
        other => panic!("{other}"),
    }
}

#[test]
fn wait_and_signal_in_flight_together() {
    // The agent answers Wait only after it has seen the Signal: replies out of order.
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, s| {
        let mut wait_id = None;
        agent_loop(s, move |req| match req.body {
            RequestBody::Hello(_) => vec![hello_ok(req.id, PROTOCOL_VERSION)],
            RequestBody::Wait { .. } => {
                wait_id = Some(req.id);
                vec![]
            }
            RequestBody::Signal { signal, .. } => vec![
                Response::ok(req.id, ResponseBody::Done),
                Response::ok(
                    wait_id.take().expect("wait first"),
                    ResponseBody::Exited(husk_protocol::ExitStatus::signaled(signal)),
                ),
            ],
            _ => well_behaved(req),
        })
    });
    let c = Arc::new(AgentClient::connect(&sock(&dir), T).unwrap());
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.wait("c1", None).unwrap())
    };
    std::thread::sleep(Duration::from_millis(100));
    c.signal("c1", None, 15).unwrap();
    let st = waiter.join().unwrap();
    assert_eq!((st.code, st.signal), (143, Some(15)));
}

#[test]
fn agent_closing_fails_a_pending_call() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, mut s| {
        let req: Request = read_message(&mut s).unwrap().unwrap();
        write_message(&mut s, &hello_ok(req.id, PROTOCOL_VERSION)).unwrap();
        let _wait: Request = read_message(&mut s).unwrap().unwrap();
        // VM powers off: the connection just ends.
    });
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    let err = c.wait("c1", None).unwrap_err();
    assert!(matches!(err, Error::Disconnected(_)), "{err}");
}

#[test]
fn a_sent_wait_reaches_the_agent_though_its_sender_goes_at_once() {
    // What the monitor relies on: once `send_wait` returns, the agent gets the `Wait` even if
    // the sender dies before reading an answer.
    let dir = tempfile::tempdir().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let seen_tx = Mutex::new(seen_tx);
    let _server = serve(&sock(&dir), 2, move |_, s| {
        let seen_tx = seen_tx.lock().unwrap().clone();
        agent_loop(s, move |req| {
            if let RequestBody::Wait { container_id, .. } = &req.body {
                seen_tx.send(container_id.clone()).unwrap();
            }
            well_behaved(req)
        })
    });
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    let sent = c.send_wait("gone", None).unwrap();
    drop(sent);
    drop(c);
    assert_eq!(seen.recv_timeout(T).unwrap(), "gone");
    // And read later, its answer is the exit status.
    let c = AgentClient::connect(&sock(&dir), T).unwrap();
    let sent = c.send_wait("kept", None).unwrap();
    assert_eq!(seen.recv_timeout(T).unwrap(), "kept");
    assert_eq!(sent.exit(Some(T)).unwrap().code, 7);
}

// --- streams ---------------------------------------------------------------------------

/// A writer the test can read back after the pump thread owned it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pattern(n: usize) -> Vec<u8> {
    // Every byte value, in an order that catches dropped or repeated chunks.
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn stdio_streams_are_binary_safe_and_propagate_eof() {
    const N: usize = 3 << 20;
    let dir = tempfile::tempdir().unwrap();
    let got_stdin = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let got_stdin = got_stdin.clone();
        serve(&sock(&dir), 2, move |_, mut s| {
            let hello: StreamHello = read_message(&mut s).unwrap().unwrap();
            assert_eq!(hello.container_id, "c1");
            write_message(&mut s, &StreamReply::Ready).unwrap();
            match hello.kind {
                StreamKind::Stdin => {
                    // Ends only if the host's half-close arrives.
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).unwrap();
                    *got_stdin.lock().unwrap() = buf;
                }
                StreamKind::Stdout => s.write_all(&pattern(N)).unwrap(), // then close = EOF
                other => panic!("unexpected stream {other:?}"),
            }
        })
    };
    let open = |kind| {
        let hello = StreamHello {
            version: PROTOCOL_VERSION,
            container_id: "c1".into(),
            exec_id: None,
            kind,
        };
        attach_stream(&sock(&dir), hello, T).unwrap()
    };
    let stdin = open(StreamKind::Stdin);
    let stdout = open(StreamKind::Stdout);
    let out = Shared::default();
    let mut pump = Pump::new();
    pump.input(std::io::Cursor::new(pattern(N / 3)), stdin)
        .unwrap();
    pump.output(stdout, out.clone()).unwrap();
    assert_eq!(pump.wait_output().unwrap(), [N as u64]);
    assert_eq!(pump.wait_input().unwrap(), [(N / 3) as u64]);
    server.join().unwrap();
    assert!(*out.0.lock().unwrap() == pattern(N), "stdout corrupted");
    assert!(
        *got_stdin.lock().unwrap() == pattern(N / 3),
        "stdin corrupted"
    );
}

#[test]
fn refused_stream_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let _server = serve(&sock(&dir), 1, |_, mut s| {
        let _: StreamHello = read_message(&mut s).unwrap().unwrap();
        let no = ErrorReply::new(ErrorCode::NotFound, "no container c2");
        write_message(&mut s, &StreamReply::Refused(no)).unwrap();
    });
    let hello = StreamHello {
        version: PROTOCOL_VERSION,
        container_id: "c2".into(),
        exec_id: None,
        kind: StreamKind::Stderr,
    };
    let err = attach_stream(&sock(&dir), hello, T).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound));
    assert!(
        err.to_string().contains("Stderr stream of container c2"),
        "{err}"
    );
}

#[test]
fn pty_pump_keeps_output_open_after_input_ends() {
    // Over vsock a half-close would end the guest's sending side too, so the pty pump must
    // not send one: here the fake agent answers only after host input has ended.
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&sock(&dir), 1, |_, mut s| {
        let _: StreamHello = read_message(&mut s).unwrap().unwrap();
        write_message(&mut s, &StreamReply::Ready).unwrap();
        let mut input = [0u8; 5];
        s.read_exact(&mut input).unwrap();
        assert_eq!(&input, b"ls -l");
        // A half-close would show up here as EOF.
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut more = [0u8; 1];
        let r = s.read(&mut more);
        assert!(
            matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{r:?}"
        );
        s.write_all(b"total 0\r\n").unwrap();
    });
    let hello = StreamHello {
        version: PROTOCOL_VERSION,
        container_id: "c1".into(),
        exec_id: None,
        kind: StreamKind::Pty,
    };
    let stream = attach_stream(&sock(&dir), hello, T).unwrap();
    let out = Shared::default();
    let mut pump = Pump::new();
    pump.pty(std::io::Cursor::new(b"ls -l".to_vec()), out.clone(), stream)
        .unwrap();
    assert_eq!(pump.wait_input().unwrap(), [5]);
    assert_eq!(pump.wait_output().unwrap(), [9]);
    server.join().unwrap();
    assert_eq!(&*out.0.lock().unwrap(), b"total 0\r\n");
}
