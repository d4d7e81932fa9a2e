//! husk-runtime driven as podman/conmon and containerd's shim drive runc: OCI bundles with a
//! busybox rootfs directory (shared into the guest over virtio-fs), `create` with pipes as
//! stdio, the VM holder pid from `--pid-file` waited on for the container's status, and after
//! every test no state, VMM, virtiofsd or husk-agent-mux left. Real guests boot on the
//! QEMU backend (TCG on hosts whose KVM cannot run a stock guest).

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "husk_runtime/contract.rs"]
mod contract;
#[path = "husk_runtime/detach.rs"]
mod detach;
#[path = "husk_runtime/harness.rs"]
mod harness;
#[path = "husk_runtime/holder_kill.rs"]
mod holder_kill;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Instant;

use harness::{hook_writing, read_exact_within, recv_fd, wait_pid, Bundle, Rt, LIMIT};

fn sh(script: &str) -> serde_json::Value {
    serde_json::json!(["sh", "-c", script])
}

#[test]
fn create_start_relays_stdio_and_exits_with_the_status() {
    let test = "create_start_relays_stdio_and_exits_with_the_status";
    let Some(rt) = Rt::new(test) else { return };
    let b = Bundle::new(&rt, |c| {
        c["process"]["args"] = sh("echo out; echo err >&2; read x; echo \"got $x\"; exit 3");
    });
    let t0 = Instant::now();
    let mut c = rt.create(&b, "c1", &["--debug"]);
    let s = rt.state("c1");
    assert_eq!(s["status"], "created");
    assert_eq!(s["pid"], c.pid);
    assert_eq!(s["id"], "c1");
    assert_eq!(s["bundle"], b.path().to_str().unwrap());
    let t1 = Instant::now();
    rt.ok(&["start", "c1"]);
    let started = t1.elapsed();
    assert!(
        matches!(
            rt.state("c1")["status"].as_str(),
            Some("running" | "stopped")
        ),
        "{}",
        rt.state("c1")
    );
    c.stdin.as_mut().unwrap().write_all(b"hi\n").unwrap();
    let code = c.wait(LIMIT);
    let exited = t0.elapsed();
    assert_eq!(code, 3, "the VM holder exits with the container's status");
    assert_eq!(c.read_stdout(), "out\ngot hi\n");
    assert_eq!(c.read_stderr(), "err\n");
    let s = rt.state("c1");
    assert_eq!(
        (s["status"].as_str(), s["pid"].as_u64()),
        (Some("stopped"), Some(0))
    );
    // --debug: the VM holder logs where its time went, created and ended.
    let log = std::fs::read_to_string(rt.log()).unwrap_or_default();
    let said = |prefix: &str, phase: &str| {
        log.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["level"] == "debug"
                    && v["msg"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(prefix) && m.contains(phase))
            })
        })
    };
    assert!(
        said("container c1: created in: ", "kernel boot to agent ready "),
        "{log}"
    );
    assert!(
        said("container c1: ended with 3: ", "power-off + cleanup "),
        "{log}"
    );
    rt.ok(&["delete", "c1"]);
    rt.assert_clean();
    eprintln!(
        "husk-runtime timings: create {:.3} s, start {:.3} s, create→exit {:.3} s",
        c.took.as_secs_f64(),
        started.as_secs_f64(),
        exited.as_secs_f64()
    );
}

#[test]
fn kill_term_kill_9_and_kill_before_start() {
    let test = "kill_term_kill_9_and_kill_before_start";
    let Some(rt) = Rt::new(test) else { return };
    // PID 1 of a pid namespace ignores TERM without a handler: the trap makes it count.
    let term = Bundle::new(&rt, |c| {
        c["process"]["args"] =
            sh("trap 'echo term; exit 143' TERM; echo up; while :; do sleep 1; done");
    });
    let plain = Bundle::new(&rt, |c| c["process"]["args"] = sh("sleep 1000"));
    let mut a = rt.create(&term, "t", &[]);
    let mut k = rt.create(&plain, "k", &[]);
    let mut n = rt.create(&plain, "n", &[]);
    rt.ok(&["start", "t"]);
    rt.ok(&["start", "k"]);
    assert_eq!(read_exact_within(&rt, &mut a.stdout, 3, LIMIT), b"up\n");
    rt.ok(&["kill", "t", "15"]);
    rt.ok(&["kill", "k", "KILL"]);
    // A created container can be killed before it ever ran.
    rt.ok(&["kill", "n", "SIGTERM"]);
    assert_eq!(a.wait(LIMIT), 143);
    assert_eq!(a.read_stdout(), "term\n");
    assert_eq!(k.wait(LIMIT), 137);
    assert_eq!(n.wait(LIMIT), 143);
    for id in ["t", "k", "n"] {
        assert_eq!(rt.state(id)["status"], "stopped");
        let out = rt.run(&["kill", id, "9"]);
        assert!(
            !out.status.success(),
            "kill of a stopped container must fail"
        );
        rt.ok(&["delete", id]);
    }
    rt.assert_clean();
}

#[test]
fn exec_ps_list_pause_resume_and_force_delete() {
    let test = "exec_ps_list_pause_resume_and_force_delete";
    let Some(rt) = Rt::new(test) else { return };
    let b = Bundle::new(&rt, |c| {
        c["process"]["args"] = sh("echo ready > /tmp/ready; sleep 1000");
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "WHO=init"]);
    });
    let c = rt.create(&b, "e", &[]);
    rt.ok(&["start", "e"]);

    // Foreground exec with ARGS: the container's env, its own exit status.
    let out = rt.run(&[
        "exec",
        "e",
        "sh",
        "-c",
        "while [ ! -f /tmp/ready ]; do sleep 0.1; done; echo $WHO; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", common::text(&out.stderr));
    assert_eq!(common::text(&out.stdout), "init\n");

    // exec --detach --pid-file --process, as conmon does: a holder relays its stdio.
    let proc_json = rt.tmp.path().join("process.json");
    std::fs::write(
        &proc_json,
        serde_json::json!({"args": ["sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"],
            "cwd": "/tmp", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}})
        .to_string(),
    )
    .unwrap();
    let pid_file = rt.tmp.path().join("exec.pid");
    let mut holder = rt
        .cmd(&[
            "exec",
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--process",
            proc_json.to_str().unwrap(),
            "e",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = holder.wait().unwrap();
    if !status.success() {
        let mut e = String::new();
        let _ = holder.stderr.take().unwrap().read_to_string(&mut e);
        let (log, consoles) = (std::fs::read_to_string(rt.log()), rt.console_tails());
        panic!("exec --detach: {status}: {e}\nlog: {log:?}{consoles}");
    }
    let hpid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wait_pid(hpid, LIMIT), 5);
    let mut o = String::new();
    holder
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut o)
        .unwrap();
    assert_eq!(o, "exec-out\n");
    let mut e = String::new();
    holder
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut e)
        .unwrap();
    assert_eq!(e, "exec-err\n");

    // A duplicate id is refused and leaves the first alone.
    let dup = rt.run(&["create", "--bundle", b.path().to_str().unwrap(), "e"]);
    assert!(!dup.status.success());
    assert!(
        common::text(&dup.stderr).contains("already exists"),
        "{}",
        common::text(&dup.stderr)
    );

    let pids: Vec<u32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", "e"])).unwrap();
    assert!(pids.contains(&(c.pid as u32)), "{pids:?}");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&rt.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0]["id"].as_str(), list[0]["status"].as_str()),
        (Some("e"), Some("running"))
    );
    assert!(rt.ok(&["list"]).lines().nth(1).unwrap().starts_with("e "));

    rt.ok(&["pause", "e"]);
    assert_eq!(rt.state("e")["status"], "paused");
    let vm_state = vm_state_of(&rt);
    assert_eq!(vm_state, 'T', "the VMM process is stopped while paused");
    rt.ok(&["resume", "e"]);
    assert_eq!(rt.state("e")["status"], "running");
    let out = rt.run(&["exec", "e", "true"]);
    assert!(
        out.status.success(),
        "exec after resume: {}",
        common::text(&out.stderr)
    );

    let busy = rt.run(&["delete", "e"]);
    assert!(
        !busy.status.success(),
        "delete of a running container needs --force"
    );
    rt.ok(&["delete", "--force", "e"]);
    assert_eq!(wait_pid(c.pid, LIMIT), 137);
    rt.assert_clean();
}

/// State letter of the VMM recorded for the only container.
fn vm_state_of(rt: &Rt) -> char {
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rt.root().join("e/state.json")).unwrap()).unwrap();
    let pid = st["vm"]["pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .unwrap()
        .trim_start()
        .chars()
        .next()
        .unwrap()
}

/// Reads `master` until EOF/EIO on a thread; the text so far is in the returned buffer.
fn pty_reader(
    master: std::os::fd::OwnedFd,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let t = text.clone();
    let mut m = std::fs::File::from(master);
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        // EIO once the slave side is closed by the VM holder.
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
        }
    });
    (text, h)
}

fn wait_for_text(text: &std::sync::Mutex<String>, want: &str) {
    let deadline = Instant::now() + LIMIT;
    while !text.lock().unwrap().contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in {:?}",
            text.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn console_socket_gets_a_pty_master_for_init_and_exec() {
    let test = "console_socket_gets_a_pty_master_for_init_and_exec";
    let Some(rt) = Rt::new(test) else { return };
    let b = Bundle::new(&rt, |c| {
        c["process"]["terminal"] = true.into();
        c["process"]["consoleSize"] = serde_json::json!({"height": 30, "width": 100});
        c["process"]["args"] = sh("tty; stty size; read x; echo \"got $x\"; stty size; exit 7");
    });
    let sock = rt.tmp.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || recv_fd(&listener));
    let mut c = rt.create(&b, "p", &["--console-socket", sock.to_str().unwrap()]);
    let (master, name) = receiver.join().unwrap();
    assert!(name.starts_with("/dev/pts/"), "{name}");
    let mut input = std::fs::File::from(master.try_clone().unwrap());
    let resize = master.try_clone().unwrap();
    let (text, reader) = pty_reader(master);
    rt.ok(&["start", "p"]);
    wait_for_text(&text, "30 100");

    // The engine resizes its master: the guest's pty follows (SIGWINCH → resize_tty).
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    assert_eq!(
        // SAFETY: TIOCSWINSZ on the master fd we hold, with a winsize we own.
        unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&resize),
                libc::TIOCSWINSZ,
                &ws,
            )
        },
        0
    );

    // exec -t --detach --console-socket, as conmon and the shim do.
    let sock2 = rt.tmp.path().join("exec-console.sock");
    let listener2 = UnixListener::bind(&sock2).unwrap();
    let receiver2 = std::thread::spawn(move || recv_fd(&listener2));
    let proc_json = rt.tmp.path().join("exec-tty.json");
    std::fs::write(
        &proc_json,
        serde_json::json!({"terminal": true, "args": ["sh", "-c", "tty; echo exec-tty; exit 6"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}})
        .to_string(),
    )
    .unwrap();
    let pid_file = rt.tmp.path().join("exec-tty.pid");
    rt.ok(&[
        "exec",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--process",
        proc_json.to_str().unwrap(),
        "--detach",
        "--tty",
        "--console-socket",
        sock2.to_str().unwrap(),
        "p",
    ]);
    let (exec_master, _) = receiver2.join().unwrap();
    let (exec_text, exec_reader) = pty_reader(exec_master);
    let hpid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wait_pid(hpid, LIMIT), 6);
    exec_reader.join().unwrap();
    let et = exec_text.lock().unwrap().clone();
    assert!(
        et.contains("/dev/pts/") && et.contains("exec-tty"),
        "{et:?}"
    );

    input.write_all(b"abc\n").unwrap();
    assert_eq!(c.wait(LIMIT), 7);
    reader.join().unwrap();
    let text = text.lock().unwrap().clone();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("got abc"), "{text:?}");
    assert!(
        text.contains("40 120"),
        "resize did not reach the guest: {text:?}"
    );
    rt.ok(&["delete", "p"]);
    rt.assert_clean();
}

#[test]
fn oci_semantics_hooks_and_resources_in_the_guest() {
    let test = "oci_semantics_hooks_and_resources_in_the_guest";
    let Some(rt) = Rt::new(test) else { return };
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from-host\n").unwrap();
    // The process runs as uid 1000; virtiofsd checks its credentials against the host's.
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("hosts"), "10.9.8.7 husk-host\n").unwrap();
    let hooks = tempfile::tempdir().unwrap();
    let h = |name: &str| hook_writing(&hooks.path().join(format!("{name}.json")));
    let script = "id -u; id -g; id -G; echo \"FOO=$FOO\"; pwd; hostname; \
        touch /rootfile 2>/dev/null && echo root-rw || echo root-ro; \
        echo \"secret=[$(cat /etc/secret)]\"; \
        cat /data/in.txt; echo from-guest > /data/out.txt; \
        cat /etc/hosts; (echo x >> /etc/hosts) 2>/dev/null && echo hosts-rw || echo hosts-ro; \
        echo \"nproc=$(nproc)\"; grep MemTotal /proc/meminfo; \
        cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); \
        echo \"memmax=$(cat $cg/memory.max) cpumax=$(cat $cg/cpu.max)\"; \
        echo \"nofile=$(ulimit -n) oom=$(cat /proc/self/oom_score_adj)\"; \
        grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status; \
        echo \"domain=$(cat /proc/sys/kernel/domainname)\"; \
        mkdir /tmp/d 2>/dev/null && echo mkdir-allowed || echo mkdir-denied";
    let b = Bundle::new(&rt, |c| {
        c["process"]["args"] = sh(script);
        c["process"]["user"] =
            serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [10]});
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
        c["process"]["cwd"] = "/tmp".into();
        c["hostname"] = "husk-test".into();
        c["root"]["readonly"] = true.into();
        c["linux"]["maskedPaths"] = serde_json::json!(["/etc/secret", "/proc/kcore"]);
        c["linux"]["sysctl"] = serde_json::json!({"kernel.domainname": "husk.example"});
        c["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]});
        c["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1234, "soft": 1000}]);
        c["process"]["noNewPrivileges"] = true.into();
        c["process"]["oomScoreAdj"] = 123.into();
        c["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": [], "permitted": [], "inheritable": [], "ambient": []});
        c["linux"]["resources"] = serde_json::json!({
            "cpu": {"quota": 200000, "period": 100000},
            "memory": {"limit": 300 * 1024 * 1024}
        });
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
        mounts.push(serde_json::json!({"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind", "rw"]}));
        mounts.push(serde_json::json!({"destination": "/etc/hosts", "type": "bind", "source": files.path().join("hosts"), "options": ["bind", "ro"]}));
        c["hooks"] = serde_json::json!({
            "prestart": [h("prestart")], "createRuntime": [h("createRuntime")],
            "poststart": [h("poststart")], "poststop": [h("poststop")]
        });
    });
    std::fs::write(b.rootfs().join("etc/secret"), "hidden").unwrap();
    let mut c = rt.create(&b, "s", &[]);
    for k in ["prestart", "createRuntime"] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(hooks.path().join(format!("{k}.json"))).unwrap())
                .unwrap();
        assert_eq!(
            (v["id"].as_str(), v["pid"].as_i64()),
            (Some("s"), Some(c.pid as i64)),
            "{k}: {v}"
        );
    }
    assert!(!hooks.path().join("poststart.json").exists());
    rt.ok(&["start", "s"]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hooks.path().join("poststart.json")).unwrap())
            .unwrap();
    assert_eq!(v["status"], "running");
    let code = c.wait(LIMIT);
    let out = c.read_stdout();
    assert_eq!(code, 0, "{out}\n{}", c.read_stderr());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..6],
        ["1000", "1000", "1000 10", "FOO=bar", "/tmp", "husk-test"],
        "{out}"
    );
    assert!(out.contains("root-ro"), "{out}");
    assert!(out.contains("secret=[]"), "{out}");
    assert!(out.contains("from-host"), "{out}");
    assert!(
        out.contains("10.9.8.7 husk-host") && out.contains("hosts-ro"),
        "{out}"
    );
    assert!(out.contains("nproc=2"), "{out}");
    let mem_kb: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out}"));
    assert!(
        (300 * 1024..=(300 + 64) * 1024).contains(&mem_kb),
        "MemTotal {mem_kb} kB for a 300 MiB limit"
    );
    assert!(
        out.contains("memmax=314572800 cpumax=200000 100000"),
        "{out}"
    );
    assert!(out.contains("nofile=1000 oom=123"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000021"), "{out}");
    assert!(out.contains("domain=husk.example"), "{out}");
    assert!(out.contains("mkdir-denied"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).unwrap(),
        "from-guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(files.path().join("hosts")).unwrap(),
        "10.9.8.7 husk-host\n"
    );
    rt.ok(&["delete", "s"]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hooks.path().join("poststop.json")).unwrap())
            .unwrap();
    assert_eq!(v["status"], "stopped");
    rt.assert_clean();
}

#[test]
fn run_in_the_foreground_deletes_afterwards() {
    let test = "run_in_the_foreground_deletes_afterwards";
    let Some(rt) = Rt::new(test) else { return };
    let hooks = tempfile::tempdir().unwrap();
    let h = |name: &str| hook_writing(&hooks.path().join(format!("{name}.json")));
    let b = Bundle::new(&rt, |c| {
        c["process"]["args"] = sh("echo ran; exit 9");
        c["hooks"] = serde_json::json!({"prestart": [h("prestart")], "poststart": [h("poststart")],
            "poststop": [h("poststop")]});
    });
    let out = rt.run(&["run", "--bundle", b.path().to_str().unwrap(), "r"]);
    assert_eq!(out.status.code(), Some(9), "{}", common::text(&out.stderr));
    assert_eq!(common::text(&out.stdout), "ran\n");
    for k in ["prestart", "poststart", "poststop"] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(hooks.path().join(format!("{k}.json"))).unwrap())
                .unwrap();
        assert_eq!(v["id"], "r", "{k}: {v}");
    }
    rt.assert_clean();
}

/// Each bad input: non-zero exit, one line on stderr, the same message as a runc JSON log
/// line, and nothing left behind.
#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let test = "bad_input_is_one_line_and_leaves_nothing";
    let Some(rt) = Rt::new(test) else { return };
    let no_config = tempfile::tempdir().unwrap();
    let malformed = tempfile::tempdir().unwrap();
    std::fs::create_dir(malformed.path().join("rootfs")).unwrap();
    std::fs::write(malformed.path().join("config.json"), "{\"ociVersion\": ").unwrap();
    let no_rootfs = Bundle::new(&rt, |_| {});
    std::fs::remove_dir_all(no_rootfs.rootfs()).unwrap();
    let host_ns = Bundle::new(&rt, |c| {
        c["linux"]["namespaces"] =
            serde_json::json!([{"type": "pid"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]);
    });
    // A failing prestart hook fails `create` (the VM holder runs it in the container's new
    // network namespace, before the VM boots): nothing may be left.
    let bad_hook = Bundle::new(&rt, |c| {
        c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook-says-no >&2; exit 2"]}]});
    });
    let p = |d: &std::path::Path| d.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "create".into(),
                "--bundle".into(),
                p(no_config.path()),
                "x".into(),
            ],
            "no config.json",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                p(malformed.path()),
                "x".into(),
            ],
            "not a valid OCI runtime spec",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                p(no_rootfs.path()),
                "x".into(),
            ],
            "rootfs",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                p(host_ns.path()),
                "x".into(),
            ],
            "cannot honour",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                p(host_ns.path()),
                "../x".into(),
            ],
            "invalid container id",
        ),
        (
            vec![
                "create".into(),
                "--bundle".into(),
                p(bad_hook.path()),
                "h".into(),
            ],
            "prestart hook /bin/sh failed: exit status: 2: hook-says-no",
        ),
        (vec!["state".into(), "nope".into()], "does not exist"),
        (vec!["start".into(), "nope".into()], "does not exist"),
        (vec!["delete".into(), "nope".into()], "does not exist"),
        (
            vec!["kill".into(), "nope".into(), "SIGNOPE".into()],
            "invalid signal",
        ),
        (
            vec!["kill".into(), "nope".into(), "99".into()],
            "invalid signal",
        ),
        (
            vec!["exec".into(), "nope".into(), "true".into()],
            "does not exist",
        ),
    ];
    for (args, want) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = rt.log_lines().len();
        let out = rt.run(&a);
        let err = common::text(&out.stderr);
        assert!(!out.status.success(), "{a:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{a:?}: {err:?}");
        assert!(err.contains(want), "{a:?}: {err:?} lacks {want:?}");
        let logged = rt.log_lines();
        assert_eq!(logged.len(), before + 1, "{a:?}: one log line");
        let l = &logged[before];
        assert_eq!(l["level"], "error");
        assert!(l["msg"].as_str().unwrap().contains(want), "{l}");
        assert!(l["time"].as_str().is_some());
        rt.assert_clean();
    }
    // Engines delete twice; runc's `delete --force` of a gone id succeeds.
    rt.ok(&["delete", "--force", "nope"]);
    rt.assert_clean();
}

/// The parts of runc's CLI contract that boot nothing: `features`, `spec`, `--version`,
/// `list` of an empty root, text logs.
#[test]
fn cli_contract_without_a_vm() {
    let test = "cli_contract_without_a_vm";
    let Some(rt) = Rt::new(test) else { return };
    let f: serde_json::Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "prestart"));
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    let v = rt.ok(&["--version"]);
    assert!(v.starts_with("husk-runtime version "), "{v}");
    assert!(v.contains("spec: 1.2.0"), "{v}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    rt.ok(&["spec", "--bundle", d]);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
    assert_eq!(spec["process"]["args"], serde_json::json!(["sh"]));
    assert_eq!(spec["process"]["terminal"], true);
    let again = rt.run(&["spec", "--bundle", d]);
    assert!(
        !again.status.success(),
        "spec must not overwrite config.json"
    );

    assert_eq!(rt.ok(&["list", "--format", "json"]).trim(), "[]");
    assert_eq!(rt.ok(&["list", "-q"]), "");

    // --log-format text: logrus-style key=value lines.
    let log = rt.tmp.path().join("text.log");
    let out = std::process::Command::new(common::bin("husk-runtime"))
        .arg("--root")
        .arg(rt.root())
        .args([
            "--log",
            log.to_str().unwrap(),
            "--log-format=text",
            "state",
            "missing",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("level=error msg=\"container missing does not exist\""),
        "{text}"
    );
    rt.assert_clean();
}

/// husk-runtime create/start/exec/kill/delete and a pty, again on both backends of a KVM that boots stock Linux: husk-vmm and QEMU
/// `-accel kvm` (on this project's PVM hosts: inside the nested-KVM rig).
const ON_KVM_BACKENDS: &[&str] = &[
    "create_start_relays_stdio_and_exits_with_the_status",
    "kill_term_kill_9_and_kill_before_start",
    "exec_ps_list_pause_resume_and_force_delete",
    "console_socket_gets_a_pty_master_for_init_and_exec",
];

crate::on_kvm_backends! {
    husk_runtime_on_husk_vmm => ON_KVM_BACKENDS,
    husk_runtime_on_qemu_kvm => ON_KVM_BACKENDS,
}
