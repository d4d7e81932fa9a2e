//! `kill --all` (every process of the container, not only its init) and `run --detach`, as
//! runc does them.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common;
use crate::harness::{read_exact_within, wait_child, wait_pid, Bundle, Rt, LIMIT};

fn sh(script: &str) -> serde_json::Value {
    serde_json::json!(["sh", "-c", script])
}

/// `exec --detach --pid-file F ID ARGS…` (stdio null); the holder's pid.
fn exec_detached(rt: &Rt, id: &str, name: &str, args: &[&str]) -> i32 {
    let pid_file = rt.tmp.path().join(format!("{name}.pid"));
    let mut all = vec![
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        id,
    ];
    all.extend_from_slice(args);
    let mut c = rt
        .cmd(&all)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_child(&mut c, LIMIT, &all).success(), "{all:?}");
    std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether `pid` (a child of this subreaper) is still running.
fn running(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG, writing into our local.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    assert!(
        r >= 0,
        "waitpid({pid}): {}",
        std::io::Error::last_os_error()
    );
    r == 0
}

/// Exit status of a shell check in the container: 0 while the init's background `sleep`
/// (pid in /tmp/bg) is alive; 1 once it is gone or a zombie (waited up to 10 s).
fn background_sleep_alive(rt: &Rt, id: &str, wait_gone: bool) -> bool {
    let check = "p=$(cat /tmp/bg); [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status";
    let script = if wait_gone {
        format!("for i in $(seq 100); do {check} || exit 1; sleep 0.1; done; exit 0")
    } else {
        check.to_string()
    };
    let out = rt.run(&["exec", id, "sh", "-c", &script]);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("check exited {other:?}: {}", common::text(&out.stderr)),
    }
}

/// An init that survives TERM (trap) with a background `sleep`, and an exec'd `sleep`:
/// `kill ID TERM` reaches the init only; `kill --all ID TERM` reaches all three.
#[test]
fn kill_all_signals_every_process_of_the_container() {
    let test = "kill_all_signals_every_process_of_the_container";
    let Some(rt) = Rt::new(test) else { return };
    let b = Bundle::new(&rt, |c| {
        c["process"]["args"] = sh("trap 'echo term' TERM; sleep 1000 & echo $! > /tmp/bg; \
             echo up; while :; do sleep 1; done");
    });
    let mut c = rt.create(&b, "a", &[]);
    rt.ok(&["start", "a"]);
    assert_eq!(read_exact_within(&rt, &mut c.stdout, 3, LIMIT), b"up\n");
    let holder = exec_detached(&rt, "a", "sleeper", &["sleep", "1000"]);
    assert!(running(holder));
    assert!(background_sleep_alive(&rt, "a", false));

    // Without --all: the init's trap runs, nothing else is touched.
    rt.ok(&["kill", "a", "TERM"]);
    assert_eq!(read_exact_within(&rt, &mut c.stdout, 5, LIMIT), b"term\n");
    std::thread::sleep(Duration::from_millis(500));
    assert!(running(holder), "a plain kill must leave the exec running");
    assert!(
        background_sleep_alive(&rt, "a", false),
        "a plain kill must leave the init's children running"
    );

    // With --all: the exec's sleep dies of TERM, so does the background one; the init
    // (it traps TERM) runs on.
    let t0 = Instant::now();
    rt.ok(&["kill", "--all", "a", "TERM"]);
    assert_eq!(wait_pid(holder, LIMIT), 143, "the exec dies of SIGTERM");
    eprintln!(
        "husk-runtime kill --all → exec gone: {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        read_exact_within(&rt, &mut c.stdout, 5, LIMIT),
        b"term\n",
        "the init got TERM too"
    );
    assert!(
        !background_sleep_alive(&rt, "a", true),
        "kill --all must reach the init's background sleep"
    );
    assert_eq!(rt.state("a")["status"], "running", "the init traps TERM");

    rt.ok(&["kill", "-a", "a", "KILL"]);
    assert_eq!(c.wait(LIMIT), 137);
    assert_eq!(rt.state("a")["status"], "stopped");
    rt.ok(&["delete", "a"]);
    rt.assert_clean();
}

/// `run --detach --pid-file`: returns once started, the VM holder keeps the stdio `run` had,
/// and `state`, `kill` and `delete` work on it afterwards.
#[test]
fn run_detach_returns_once_started() {
    let test = "run_detach_returns_once_started";
    let Some(rt) = Rt::new(test) else { return };
    let b = Bundle::new(&rt, |c| {
        c["process"]["args"] = sh("trap 'echo bye; exit 7' TERM; echo out; read x; \
             echo \"got $x\"; while :; do sleep 1; done");
    });
    let pid_file = rt.tmp.path().join("d.pid");
    let args = [
        "run",
        "--detach",
        "--bundle",
        b.path().to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "d",
    ];
    let t0 = Instant::now();
    let mut run = rt
        .cmd(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut run, LIMIT, &args);
    let took = t0.elapsed();
    let mut stderr = run.stderr.take().unwrap();
    assert!(status.success(), "run --detach: {status}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = rt.state("d");
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["pid"], pid, "the pid file names the VM holder");
    assert!(running(pid));

    // The container's stdio is what `run` was given.
    let mut stdin = run.stdin.take().unwrap();
    let mut stdout = run.stdout.take().unwrap();
    stdin.write_all(b"hi\n").unwrap();
    assert_eq!(
        read_exact_within(&rt, &mut stdout, 11, LIMIT),
        b"out\ngot hi\n"
    );

    rt.ok(&["kill", "d", "TERM"]);
    assert_eq!(wait_pid(pid, LIMIT), 7);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    let mut e = String::new();
    stderr.read_to_string(&mut e).unwrap();
    assert_eq!(e, "", "nothing on the container's stderr");
    assert_eq!(rt.state("d")["status"], "stopped");
    rt.ok(&["delete", "d"]);
    rt.assert_clean();
    eprintln!("husk-runtime run --detach: {:.3} s", took.as_secs_f64());

    // A bundle that cannot be created leaves nothing, as with `create`.
    let bad = rt.run(&["run", "-d", "--bundle", "/nonexistent", "x"]);
    assert!(!bad.status.success());
    assert_eq!(common::text(&bad.stderr).lines().count(), 1);
    rt.assert_clean();
}
