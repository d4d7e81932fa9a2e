//! husk-agent in real guests: the QEMU backend (TCG on hosts whose KVM cannot run a stock
//! guest) boots husk's kernel with the agent initramfs and a busybox rootfs (erofs layer +
//! ext4 scratch disk), and the host drives it through `AgentClient` over vsock.
//! Several checks share one boot: a TCG boot costs seconds of a small machine's CPU.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "agent_guest/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{container, process, read_all, read_lines, s, Guest, T};
use husk_protocol::{
    read_message, write_frame, write_message, Capabilities, Capability, ConsoleSize, ErrorCode,
    Hello, Request, RequestBody, Response, ResponseBody, SeccompAction, SeccompSpec, StreamKind,
    SyscallRule, User, PROTOCOL_VERSION,
};

#[test]
fn container_init_execs_signals_pty_and_power_off() {
    let test = "container_init_execs_signals_pty_and_power_off";
    let Some(g) = Guest::boot(test) else { return };

    // The init shows the spec's env, cwd, uid and hostname, leaves a file for execs, and
    // stays up (reaping orphans as an init must) until TERM.
    let mut init = process(&[
        "sh",
        "-c",
        "echo init-out; id -u; id -G; pwd; hostname; echo \"FOO=$FOO\"; echo shared > /tmp/shared-file; \
         trap 'exit 143' TERM; while :; do sleep 1; done",
    ]);
    init.env.push("FOO=bar baz".into());
    init.cwd = "/tmp".into();
    init.user = User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![5],
        umask: Some(0o027),
    };
    g.client
        .create_container(container("c1", init))
        .unwrap_or_else(|e| panic!("create: {e}\n{}", g.console()));
    let mut out = g.stream("c1", None, StreamKind::Stdout);
    g.client.close_stdin("c1", None).unwrap();
    let t_start = Instant::now();
    let pid = g
        .client
        .start_container("c1")
        .unwrap_or_else(|e| panic!("start: {e}\n{}", g.console()));
    assert_eq!(pid, 1, "the init is pid 1 in its own pid namespace");
    let (text, first) = read_lines(&mut out, 6);
    eprintln!(
        "{test}: StartContainer -> first output: {:.1} ms",
        (first - t_start).as_secs_f64() * 1e3
    );
    assert_eq!(
        text,
        "init-out\n1000\n1000 5\n/tmp\nhusk-test\nFOO=bar baz\n"
    );

    // echo / printf, byte-exact (tab, newline, NUL, 0xff).
    let (code, o, e) = g.exec(
        "c1",
        "printf",
        process(&["printf", "a\\tb\\n\\000c\\377"]),
        vec![],
    );
    assert_eq!(
        (code, o.as_slice(), e.as_slice()),
        (0, &b"a\tb\n\0c\xff"[..], &b""[..])
    );
    let (code, o, _) = g.exec("c1", "echo", process(&["echo", "hello", "world"]), vec![]);
    assert_eq!((code, s(&o)), (0, "hello world\n".into()));

    // Exit codes and stderr.
    let (code, _, e) = g.exec(
        "c1",
        "exit7",
        process(&["sh", "-c", "echo oops >&2; exit 7"]),
        vec![],
    );
    assert_eq!((code, s(&e)), (7, "oops\n".into()));

    // Same filesystem and hostname as the init; the guest's own kernel.
    let (code, o, _) = g.exec(
        "c1",
        "same",
        process(&["sh", "-c", "cat /tmp/shared-file; hostname; uname -r"]),
        vec![],
    );
    let host_release = s(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let lines: Vec<&str> = std::str::from_utf8(&o).unwrap().lines().collect();
    assert_eq!(code, 0);
    assert_eq!(&lines[..2], ["shared", "husk-test"]);
    assert!(lines[2].starts_with("6.12"), "guest kernel {:?}", lines[2]);
    assert_ne!(
        lines[2],
        host_release.trim(),
        "uname -r must be the guest's kernel, not the host's"
    );

    // TERM to a running exec: death by signal 15 -> 143. `Started` comes once the process
    // has exec'd (the agent waits for its sync socket to close on exec), so the TERM reaches
    // `sleep` itself, not the setup before it.
    g.client
        .exec_process("c1", "sleeper", process(&["sleep", "1000"]))
        .unwrap();
    g.client.close_stdin("c1", Some("sleeper")).unwrap();
    g.client
        .signal("c1", Some("sleeper"), libc::SIGTERM)
        .unwrap();
    let st = g.client.wait("c1", Some("sleeper")).unwrap();
    assert_eq!((st.code, st.signal), (143, Some(15)));

    // Capabilities: exactly the sets asked for.
    let mut capped = process(&["grep", "^Cap", "/proc/self/status"]);
    let set = vec![Capability::Chown, Capability::Kill];
    capped.capabilities = Some(Capabilities {
        bounding: set.clone(),
        effective: set.clone(),
        inheritable: vec![],
        permitted: set.clone(),
        ambient: vec![],
    });
    let (code, o, e) = g.exec("c1", "caps", capped, vec![]);
    let o = s(&o);
    assert_eq!(code, 0, "{}", s(&e));
    assert!(
        o.contains("CapEff:\t0000000000000021") && o.contains("CapBnd:\t0000000000000021"),
        "{o}"
    );

    // A malformed request gets an error reply and the agent keeps serving.
    let mut raw = husk::agent::vsock::connect(&g.uds, husk_protocol::AGENT_VSOCK_PORT, T).unwrap();
    write_frame(&mut raw, br#"{"id": 5, "body": {"no_such_request": {}}}"#).unwrap();
    let r: Response = read_message(&mut raw).unwrap().unwrap();
    assert_eq!(r.id, 5);
    assert_eq!(r.body.unwrap_err().code, ErrorCode::InvalidRequest);
    write_frame(&mut raw, b"\xff not json").unwrap();
    let r: Response = read_message(&mut raw).unwrap().unwrap();
    assert_eq!(
        (r.id, r.body.unwrap_err().code),
        (0, ErrorCode::InvalidRequest)
    );
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client: "raw".into(),
    };
    write_message(&mut raw, &Request::new(6, RequestBody::Hello(hello))).unwrap();
    let r: Response = read_message(&mut raw).unwrap().unwrap();
    assert!(matches!((r.id, r.body), (6, Ok(ResponseBody::Hello(_)))));
    let e = g.client.start_container("nope").unwrap_err();
    assert_eq!(e.agent_code(), Some(ErrorCode::NotFound));

    // A terminal: a pty with the asked size, resizable.
    let mut tty = process(&[
        "sh",
        "-c",
        "[ -t 0 ] && echo isatty; stty size; read x; stty size; exit 3",
    ]);
    tty.terminal = true;
    tty.console_size = Some(ConsoleSize { rows: 24, cols: 80 });
    g.client.exec_process("c1", "tty", tty).unwrap();
    let mut pty = g.stream("c1", Some("tty"), StreamKind::Pty);
    let (text, _) = read_lines(&mut pty, 2);
    assert!(
        text.contains("isatty") && text.contains("24 80"),
        "{text:?}"
    );
    g.client.resize_tty("c1", Some("tty"), 30, 100).unwrap();
    pty.write_all(b"go\n").unwrap();
    let mut rest = Vec::new();
    let _ = pty.read_to_end(&mut rest);
    assert!(s(&rest).contains("30 100"), "{:?}", s(&rest));
    assert_eq!(g.client.wait("c1", Some("tty")).unwrap().code, 3);

    // 100 children forked by a process that exits at once: no zombie left (the agent reaps
    // its execs; the container's init reaps the orphans).
    let (code, _, _) = g.exec(
        "c1",
        "forker",
        process(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100 ]; do sleep 0.3 & i=$((i+1)); done; exit 0",
        ]),
        vec![],
    );
    assert_eq!(code, 0);
    // The children live 0.3 s: wait until they are gone, then look at what is left.
    let check = "cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}' | grep -c Z; ls -d /proc/[0-9]* | wc -l";
    let mut checks = 0;
    let mut zombies = String::new();
    let mut counts: Vec<u32> = Vec::new();
    common::poll_until(common::SETTLE, || {
        checks += 1;
        let (_, o, _) = g.exec(
            "c1",
            &format!("zcheck{checks}"),
            process(&["sh", "-c", check]),
            vec![],
        );
        zombies = s(&o);
        counts = zombies.lines().map(|l| l.trim().parse().unwrap()).collect();
        (counts[0] == 0 && counts[1] < 10).then_some(())
    });
    assert_eq!(counts[0], 0, "zombies in the container: {zombies}");
    assert!(counts[1] < 10, "processes left: {}", counts[1]);

    let st = g
        .client
        .stats("c1")
        .unwrap_or_else(|e| panic!("stats: {e}"));
    assert!(
        st.pids >= 1 && st.memory_usage_bytes > 0 && st.cpu_usage_ns > 0,
        "{st:?}"
    );

    // TERM to the init: its status is collected and the VM powers off.
    g.client.signal("c1", None, libc::SIGTERM).unwrap();
    let st = g.client.wait("c1", None).unwrap();
    assert_eq!(st.code, 143);
    let t = Instant::now();
    loop {
        if let Some(status) = g.vm.try_wait().unwrap() {
            assert!(status.success(), "VM ended with {status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "VM still running after the init was collected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn bulk_stdio_through_vsock_both_ways() {
    let test = "bulk_stdio_through_vsock_both_ways";
    let Some(g) = Guest::boot(test) else { return };
    g.client
        .create_container(container(
            "bulk",
            process(&["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]),
        ))
        .unwrap();
    g.client.close_stdin("bulk", None).unwrap();
    g.client.start_container("bulk").unwrap();
    for (name, size) in [("cat8", 8usize << 20), ("cat16", 16 << 20)] {
        let data = pattern(size, size as u64 | 1);
        let t = Instant::now();
        let (code, out, err) = g.exec("bulk", name, process(&["cat"]), data.clone());
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(code, 0, "{}", s(&err));
        assert_eq!(out.len(), data.len(), "{name}: bytes back");
        assert!(out == data, "{name}: data corrupted");
        eprintln!(
            "{test}: {name}: {} MiB in and out through cat in {secs:.2} s",
            size >> 20
        );
    }
    // 16 MiB out of the guest alone (no input traffic at the same time).
    let (code, out, _) = g.exec(
        "bulk",
        "gen",
        process(&["head", "-c", "16777216", "/dev/zero"]),
        vec![],
    );
    assert_eq!((code, out.len()), (0, 16 << 20));
    assert!(out.iter().all(|&b| b == 0));
    g.client.shutdown().unwrap();
    let t = Instant::now();
    while g.vm.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "Shutdown did not end the VM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn init_exit_code_seccomp_and_power_off() {
    let test = "init_exit_code_seccomp_and_power_off";
    let Some(g) = Guest::boot(test) else { return };
    let mut p = process(&["sh", "-c", "mkdir /tmp/denied; echo rc=$?; exit 7"]);
    p.no_new_privileges = true;
    let mut spec = container("sc", p);
    spec.seccomp = Some(SeccompSpec {
        default_action: SeccompAction::Allow,
        default_errno_ret: None,
        architectures: vec!["SCMP_ARCH_X86_64".into()],
        flags: vec![],
        syscalls: vec![SyscallRule {
            names: vec!["mkdir".into(), "mkdirat".into()],
            action: SeccompAction::Errno,
            errno_ret: Some(13),
            args: vec![],
        }],
    });
    g.client
        .create_container(spec)
        .unwrap_or_else(|e| panic!("create: {e}\n{}", g.console()));
    let out = g.stream("sc", None, StreamKind::Stdout);
    let err = g.stream("sc", None, StreamKind::Stderr);
    g.client.close_stdin("sc", None).unwrap();
    g.client.start_container("sc").unwrap();
    let (out, err) = (s(&read_all(out)), s(&read_all(err)));
    assert_eq!(out, "rc=1\n");
    assert!(err.contains("Permission denied"), "{err:?}");
    assert_eq!(g.client.wait("sc", None).unwrap().code, 7);
    let t = Instant::now();
    loop {
        if let Some(status) = g.vm.try_wait().unwrap() {
            assert!(status.success(), "VM ended with {status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "VM still running after the init was collected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
