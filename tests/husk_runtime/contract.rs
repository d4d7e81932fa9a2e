//! The runtime spec's lifecycle (runtime-spec `runtime.md`): `create`, `start`, `kill`,
//! `delete` and `state` in each state a container can be in, and after each kind of failure
//! (a failed create, a failed start, a killed process), driven step by step against runc and
//! husk-runtime with the same bundles, as runtime-tools' validation drives a runtime. Each
//! step's outcome — the command succeeded or failed, and what `state` says afterwards (its
//! `status`, or that there is no such container) — must be the spec's; where runc is known to
//! differ from the spec, the step says so and runc's outcome is checked too. Also checked on
//! both: every `state` document has the properties the spec requires (`pid` while created or
//! running), a `config.json` changed after `create` changes nothing, `delete` leaves the
//! bundle, and the process sees its configured RLIMIT_NOFILE (soft 3000, hard 4000).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::harness::{wait_child, Bundle, Rt, LIMIT};
use crate::sh;
use Status::{Either, Gone, Is};
use Step::*;

const RUNC: &str = "/usr/sbin/runc";
const ID: &str = "oci";

/// Runs until TERM (trapped: it exits 143) or KILL. What it writes to `/ran` (in the bundle's
/// rootfs, so the host sees it) says it ran, and with which RLIMIT_NOFILE.
/// (Written whole, through a rename: the host polls for it.)
const LONG: &str = "grep 'open files' /proc/self/limits > /ran.tmp; mv /ran.tmp /ran; \
                    trap 'exit 143' TERM; sleep 1000 & wait";

/// What `state` says after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Is(&'static str),
    /// `state` fails: there is no such container.
    Gone,
    /// Either of two (a step racing the process's own exit).
    Either(&'static str, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Create,
    Start,
    Kill(&'static str),
    Delete,
    ForceDelete,
    /// The process has run (its `/ran` appears within a bound).
    Ran,
    /// The process has not run.
    NotRan,
    /// Polls `state` until it says stopped (within a bound).
    UntilStopped,
    /// The command without a container id.
    NoId(&'static str),
    /// Rewrites the bundle's `config.json` to run another program (which would say `changed`).
    EditConfig,
}

/// One step, the outcome the spec asks for (`ok`: the command succeeds), the MUST it checks,
/// and runc's outcome where it differs from the spec.
struct Check {
    step: Step,
    ok: bool,
    status: Status,
    must: &'static str,
    runc_differs: Option<(bool, Status)>,
    /// runc's `kill` returns once the signal is sent (the spec allows it): before its outcome
    /// is judged, runc gets the wait for `stopped` that conformance tools give it. husk-runtime
    /// gets none: its `kill KILL` returns with the container stopped, and its `delete` waits
    /// for an exit a `kill` just caused.
    runc_settles: bool,
}

const fn c(step: Step, ok: bool, status: Status, must: &'static str) -> Check {
    Check {
        step,
        ok,
        status,
        must,
        runc_differs: None,
        runc_settles: false,
    }
}

const fn runc_differs(mut check: Check, ok: bool, status: Status) -> Check {
    check.runc_differs = Some((ok, status));
    check
}

const fn runc_settles(mut check: Check) -> Check {
    check.runc_settles = true;
    check
}

struct Scenario {
    name: &'static str,
    /// `process.args[0..]`; `/dyn-true` is a dynamically linked binary copied into the rootfs
    /// without its loader; `/no-rootfs` makes a bundle whose rootfs is missing.
    args: &'static [&'static str],
    checks: Vec<Check>,
}

#[rustfmt::skip]
fn scenarios() -> Vec<Scenario> {
    let long: &'static [&'static str] = &["sh", "-c", LONG];
    let created = || c(Create, true, Is("created"), "create: the container is created");
    let started = || c(Start, true, Is("running"), "start: the program runs");
    let ran = || c(Ran, true, Is("running"), "start: the program MUST run");
    vec![
        Scenario {
            name: "failed create, no id, unknown id",
            args: &["/no-rootfs"],
            checks: vec![
                c(Create, false, Gone, "create: an error, and no new container"),
                c(NoId("create"), false, Gone, "create without an id: an error"),
                c(NoId("state"), false, Gone, "state without an id: an error"),
                c(NoId("start"), false, Gone, "start without an id: an error"),
                c(NoId("kill"), false, Gone, "kill without an id: an error"),
                c(NoId("delete"), false, Gone, "delete without an id: an error"),
                c(Start, false, Gone, "start of an unknown id: an error"),
                c(Kill("KILL"), false, Gone, "kill of an unknown id: an error"),
                c(Delete, false, Gone, "delete of an unknown id: an error"),
                c(ForceDelete, true, Gone, "(runc) delete --force of an unknown id succeeds"),
            ],
        },
        Scenario {
            name: "created, killed",
            args: long,
            checks: vec![
                created(),
                c(NotRan, true, Is("created"), "create: the program MUST NOT run yet"),
                c(Create, false, Is("created"), "create of a used id: an error, no effect"),
                runc_settles(c(Kill("KILL"), true, Is("stopped"), "kill of a created container: sent")),
                c(Start, false, Is("stopped"), "start of a stopped container: error, no effect"),
                c(Kill("TERM"), false, Is("stopped"), "kill of a stopped container: an error"),
                c(NotRan, true, Is("stopped"), "the program never ran"),
                c(Delete, true, Gone, "delete of a stopped container: deleted"),
                c(Delete, false, Gone, "delete of a deleted container: an error"),
            ],
        },
        Scenario {
            name: "created, deleted",
            args: long,
            checks: vec![
                created(),
                runc_differs(
                    c(Delete, false, Is("created"), "delete of a created container: error, no effect"),
                    true, Gone,
                ),
                runc_differs(c(NotRan, true, Is("created"), "the program never ran"), true, Gone),
                c(ForceDelete, true, Gone, "delete --force: killed and deleted"),
            ],
        },
        Scenario {
            name: "running, killed with TERM, stopped",
            args: long,
            checks: vec![
                created(),
                c(EditConfig, true, Is("created"), "config.json changed after create: no effect"),
                started(),
                ran(),
                c(Start, false, Is("running"), "start of a running container: error, no effect"),
                c(Create, false, Is("running"), "create of a used id: an error, no effect"),
                c(Delete, false, Is("running"), "delete of a running container: error, no effect"),
                c(Kill("TERM"), true, Either("running", "stopped"), "kill: the signal is sent"),
                c(UntilStopped, true, Is("stopped"), "the process ended of it: stopped"),
                c(Kill("KILL"), false, Is("stopped"), "kill of a stopped container: an error"),
                c(Start, false, Is("stopped"), "start of a stopped container: error, no effect"),
                c(Delete, true, Gone, "delete of a stopped container: deleted"),
            ],
        },
        Scenario {
            name: "running, TERM, delete at once",
            args: long,
            checks: vec![
                created(),
                started(),
                ran(),
                runc_settles(c(Kill("TERM"), true, Either("running", "stopped"), "kill: the signal is sent")),
                c(Delete, true, Gone, "delete once the process has ended of it: deleted"),
            ],
        },
        Scenario {
            name: "running, KILL, delete at once",
            args: long,
            checks: vec![
                created(),
                started(),
                ran(),
                runc_settles(c(Kill("KILL"), true, Is("stopped"), "kill KILL: the process is ended")),
                c(Delete, true, Gone, "delete of a killed container: deleted"),
            ],
        },
        Scenario {
            name: "running, delete --force",
            args: long,
            checks: vec![
                created(),
                started(),
                ran(),
                c(ForceDelete, true, Gone, "delete --force: killed and deleted"),
            ],
        },
        Scenario {
            name: "failed start (a program whose loader is missing)",
            args: &["/dyn-true"],
            checks: vec![
                created(),
                // runc's start returns before its init execs the program; the exec's failure
                // reaches only the container's stderr.
                runc_differs(
                    c(Start, false, Is("stopped"), "start: the program cannot run: an error"),
                    true, Is("stopped"),
                ),
                c(Delete, true, Gone, "delete of the stopped container: deleted"),
                c(Create, true, Is("created"), "the id can be used again"),
                c(ForceDelete, true, Gone, "delete --force: killed and deleted"),
            ],
        },
    ]
}

/// A runtime binary and its root.
struct Driver<'a> {
    name: &'static str,
    rt: &'a Rt,
    runc_root: Option<PathBuf>,
    /// Processes `create` left that this subreaper must reap (VM holders, runc's init).
    pids: Vec<i32>,
    /// The last failed command's stderr.
    last_err: String,
    /// The bundle of the scenario being played.
    bundle: PathBuf,
    /// State documents that lack a property the spec requires.
    bad_state: Vec<String>,
}

impl Driver<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        match &self.runc_root {
            Some(root) => {
                let mut c = Command::new(RUNC);
                c.arg("--root").arg(root).args(args);
                c
            }
            None => self.rt.cmd(args),
        }
    }

    fn run(&mut self, args: &[&str], stdio: Option<&Path>) -> bool {
        let mut c = self.cmd(args);
        c.stdin(Stdio::null()).stderr(Stdio::piped());
        match stdio {
            // The container's stdout and stderr, as runtime-tools gives them: files.
            Some(f) => {
                let out = std::fs::File::create(f).expect("stdio file");
                c.stdout(out.try_clone().expect("dup")).stderr(out);
            }
            None => {
                c.stdout(Stdio::piped());
            }
        }
        let mut child = c.spawn().expect("spawn the runtime");
        let status = wait_child(&mut child, LIMIT, args);
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            self.last_err.clear();
            let _ = e.read_to_string(&mut self.last_err);
        } else if let Some(f) = stdio {
            self.last_err = std::fs::read_to_string(f).unwrap_or_default();
        }
        status.success()
    }

    fn status(&mut self) -> Status {
        let out = self
            .cmd(&["state", ID])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("state");
        if !out.status.success() {
            return Gone;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("state JSON");
        let known = ["creating", "created", "running", "paused", "stopped"];
        let s = v["status"].as_str().unwrap_or("");
        let status = known
            .into_iter()
            .find(|k| *k == s)
            .unwrap_or("(not an OCI status)");
        // The state's REQUIRED properties: ociVersion, id, status, bundle (absolute), and on
        // Linux pid while created or running.
        let bundle = self.bundle.to_str().unwrap_or("");
        let pid_ok = !matches!(status, "created" | "running") || v["pid"].as_u64() > Some(0);
        if !v["ociVersion"].is_string() || v["id"] != ID || v["bundle"] != bundle || !pid_ok {
            self.bad_state.push(format!("{}: state {v}", self.name));
        }
        Is(status)
    }

    fn step(&mut self, step: Step, bundle: &Path, rootfs: &Path, n: usize) -> bool {
        let b = bundle.to_str().expect("utf-8");
        match step {
            Create => {
                let pid_file = self.rt.tmp.path().join(format!("{}-{n}.pid", self.name));
                let p = pid_file.to_str().expect("utf-8");
                let stdio = self.rt.tmp.path().join(format!("{}-{n}.out", self.name));
                let ok = self.run(
                    &["create", "--bundle", b, "--pid-file", p, ID],
                    Some(&stdio),
                );
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    self.pids.push(pid);
                }
                ok
            }
            Start => self.run(&["start", ID], None),
            NoId(cmd) => self.run(&[cmd], None),
            EditConfig => {
                let path = bundle.join("config.json");
                let mut cfg: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).expect("config.json"))
                        .expect("json");
                cfg["process"]["args"] = sh("echo changed > /ran");
                std::fs::write(&path, cfg.to_string()).is_ok()
            }
            Kill(sig) => self.run(&["kill", ID, sig], None),
            Delete => self.run(&["delete", ID], None),
            ForceDelete => self.run(&["delete", "--force", ID], None),
            Ran => common::poll_until(Duration::from_secs(30), || {
                rootfs.join("ran").exists().then_some(())
            })
            .is_some(),
            NotRan => !rootfs.join("ran").exists(),
            UntilStopped => {
                let since = Instant::now();
                let stopped = common::poll_until(Duration::from_secs(30), || {
                    (self.status() == Is("stopped")).then_some(())
                })
                .is_some();
                eprintln!(
                    "{}: stopped {:?} after the kill",
                    self.name,
                    since.elapsed()
                );
                stopped
            }
        }
    }

    /// Reaps what `create` left (all gone once the container is deleted).
    fn reap(&mut self) {
        for pid in self.pids.drain(..) {
            let deadline = Instant::now() + LIMIT;
            loop {
                let mut st = 0;
                // SAFETY: waitpid on one pid with WNOHANG, writing into our local.
                let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
                if r != 0 || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn matches(want: Status, got: Status) -> bool {
    match want {
        Either(a, b) => got == Is(a) || got == Is(b),
        w => w == got,
    }
}

/// Runs `sc` on `d` with a fresh bundle; the lines of steps whose outcome is not the expected
/// one, and the `/ran` text (the process's RLIMIT_NOFILE line).
fn play(d: &mut Driver, sc: &Scenario, is_runc: bool) -> (Vec<String>, Option<String>) {
    let args: Vec<String> = sc.args.iter().map(|s| s.to_string()).collect();
    let bundle = Bundle::new(d.rt, |cfg| {
        cfg["process"]["args"] = serde_json::json!(args);
        cfg["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 3000, "hard": 4000}]);
    });
    match sc.args.first().copied() {
        Some("/no-rootfs") => std::fs::remove_dir_all(bundle.rootfs()).expect("rm rootfs"),
        Some("/dyn-true") => {
            std::fs::copy("/bin/true", bundle.rootfs().join("dyn-true")).expect("copy true");
        }
        _ => {}
    }
    d.bundle = bundle.path().to_path_buf();
    let mut bad = Vec::new();
    for (n, check) in sc.checks.iter().enumerate() {
        let ok = d.step(check.step, bundle.path(), &bundle.rootfs(), n);
        if is_runc && check.runc_settles {
            d.step(UntilStopped, bundle.path(), &bundle.rootfs(), n);
        }
        let status = d.status();
        let (want_ok, want_status) = match check.runc_differs {
            Some(r) if is_runc => r,
            _ => (check.ok, check.status),
        };
        if ok != want_ok || !matches(want_status, status) {
            bad.push(format!(
                "{}: {}: step {n} {:?}: got ({ok}, {status:?}), want ({want_ok}, \
                 {want_status:?}) — {}; stderr: {}",
                d.name,
                sc.name,
                check.step,
                check.must,
                d.last_err.trim()
            ));
        }
        // What a failed start says must name the cause.
        if !is_runc && check.step == Start && sc.args == ["/dyn-true"] && !ok {
            assert!(
                d.last_err.contains("ELF interpreter /lib"),
                "the start error does not name the missing loader: {}",
                d.last_err
            );
        }
    }
    let ran = std::fs::read_to_string(bundle.rootfs().join("ran")).ok();
    let _ = d.run(&["delete", "--force", ID], None);
    d.reap();
    // What the container did not create is not deleted with it: the bundle stays.
    if !bundle.path().join("config.json").is_file() {
        bad.push(format!(
            "{}: {}: delete removed the bundle",
            d.name, sc.name
        ));
    }
    if let Some(text) = &ran {
        // The program as configured at create ran, not the one config.json says now.
        if !text.contains("open files") {
            bad.push(format!(
                "{}: {}: the process wrote {text:?}",
                d.name, sc.name
            ));
        }
    }
    bad.append(&mut d.bad_state);
    (bad, ran)
}

/// runc at /usr/sbin/runc that can run a container here.
fn runc_usable() -> Result<(), String> {
    let out = Command::new(RUNC)
        .arg("--version")
        .output()
        .map_err(|e| format!("{RUNC}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{RUNC} --version failed"));
    }
    Ok(())
}

#[test]
fn lifecycle_contract_beside_runc() {
    let test = "lifecycle_contract_beside_runc";
    let Some(rt) = Rt::new(test) else { return };
    let mut husk = Driver {
        name: "husk-runtime",
        rt: &rt,
        runc_root: None,
        pids: Vec::new(),
        last_err: String::new(),
        bundle: PathBuf::new(),
        bad_state: Vec::new(),
    };
    let mut runc = Driver {
        name: "runc",
        rt: &rt,
        runc_root: Some(rt.tmp.path().join("runc-root")),
        pids: Vec::new(),
        last_err: String::new(),
        bundle: PathBuf::new(),
        bad_state: Vec::new(),
    };
    let with_runc = match runc_usable() {
        Ok(()) => true,
        Err(why) => {
            // husk-runtime is still held to the spec; only the comparison is skipped.
            common::not_run(&format!("{test} (the runc half)"), &why, false);
            false
        }
    };
    let mut bad = Vec::new();
    for sc in scenarios() {
        let started = Instant::now();
        let (husk_bad, husk_ran) = play(&mut husk, &sc, false);
        eprintln!("{test}: husk-runtime: {}: {:?}", sc.name, started.elapsed());
        bad.extend(husk_bad);
        rt.assert_clean();
        if with_runc {
            let (runc_bad, runc_ran) = play(&mut runc, &sc, true);
            bad.extend(runc_bad);
            // The process's limits as configured (soft 3000, hard 4000), the same under both.
            if let Some(line) = &husk_ran {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields.get(3..5), Some(&["3000", "4000"][..]), "{line:?}");
            }
            assert_eq!(husk_ran, runc_ran, "{}: what the process saw", sc.name);
        }
    }
    assert!(
        bad.is_empty(),
        "steps off the spec:\n{}\n{}",
        bad.join("\n"),
        rt.console_tails()
    );
}

/// `delete` of a created (never started) container is refused and leaves it created (the
/// spec); `delete --force` ends its VM holder and VM; and a few create → start → exit →
/// delete cycles leave nothing behind.
#[test]
fn delete_of_a_created_container_and_repeated_cycles_leak_nothing() {
    let test = "delete_of_a_created_container_and_repeated_cycles_leak_nothing";
    let Some(rt) = Rt::new(test) else { return };
    let b = Bundle::new(&rt, |c| c["process"]["args"] = sh("echo cycle"));
    let mut c = rt.create(&b, "d", &[]);
    let out = rt.run(&["delete", "d"]);
    let err = common::text(&out.stderr);
    assert!(!out.status.success(), "delete of a created container");
    assert!(err.contains("container d is created"), "{err}");
    assert_eq!(rt.state("d")["status"], "created");
    rt.ok(&["delete", "--force", "d"]);
    assert_eq!(c.wait(LIMIT), 137);
    assert_eq!(c.read_stdout(), "");
    rt.assert_clean();
    for i in 0..3 {
        let id = format!("cycle{i}");
        let mut c = rt.create(&b, &id, &[]);
        rt.ok(&["start", &id]);
        assert_eq!(c.wait(LIMIT), 0);
        assert_eq!(c.read_stdout(), "cycle\n");
        rt.ok(&["delete", &id]);
        // Engines delete twice.
        rt.ok(&["delete", "--force", &id]);
        rt.assert_clean();
    }
}

/// A process that cannot be executed: `start` fails and says why, the container is stopped
/// (not left "created" or "running" with its VM up), `delete` without --force then works and
/// leaves nothing, and the id can be created again. A `kill -9` ends the container before it
/// returns, so a `delete` right after it succeeds (as conformance tools drive runc).
#[test]
fn a_failed_start_stops_the_container_and_kill_9_is_final() {
    let test = "a_failed_start_stops_the_container_and_kill_9_is_final";
    let Some(rt) = Rt::new(test) else { return };
    let bad = Bundle::new(&rt, |c| {
        c["process"]["args"] = serde_json::json!(["/no/such/binary"])
    });
    let mut c = rt.create(&bad, "x", &[]);
    // What the container leaves on the host is its owner's alone.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&rt.root()), 0o700);
    assert_eq!(mode(&rt.root().join("x")), 0o700);
    let sock_dirs: Vec<_> = std::fs::read_dir(rt.tmp.path().join("t"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("console.log").exists())
        .collect();
    assert_eq!(sock_dirs.len(), 1, "{sock_dirs:?}");
    assert_eq!(mode(&sock_dirs[0]), 0o700);
    assert_eq!(mode(&sock_dirs[0].join("console.log")), 0o600);
    let out = rt.run(&["start", "x"]);
    let err = common::text(&out.stderr);
    assert!(!out.status.success(), "start of a missing binary: {err}");
    assert!(err.contains("/no/such/binary"), "{err}");
    // Stopped as soon as `start` has said so, not once the VM holder is done.
    assert_eq!(rt.state("x")["status"], "stopped");
    rt.ok(&["delete", "x"]);
    assert_ne!(c.wait(LIMIT), 0, "the VM holder ends with a failure status");
    rt.assert_clean();
    let good = Bundle::new(&rt, |c| c["process"]["args"] = sh("sleep 1000"));
    let mut c = rt.create(&good, "x", &[]);
    rt.ok(&["start", "x"]);
    rt.ok(&["kill", "x", "KILL"]);
    rt.ok(&["delete", "x"]);
    assert_eq!(c.wait(LIMIT), 137);
    rt.assert_clean();
}
