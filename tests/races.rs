//! Two or more `husk` commands racing on one root: `run` against `rmi` of its image, ten
//! `run`s at once, two `run`s for one name, `rm -f` against `exec`, `stop` against `stop` and
//! against `rm -f`, `start` against `start`. Each ends in one of the outcomes the commands
//! promise (one clear line for the loser, never both "winning"), and nothing is left: no
//! process, no container directory, no socket directory, no lease, no TAP. Real microVMs,
//! each test with its own `--root` and its own temp dir (where the short socket directories
//! go), so "left" is exact.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::{husk_with_busybox, Husk, LIMIT};
use common::faults::files_under;
use common::text;

/// A root with busybox, the temp dir its commands use, and the network namespace they run
/// in (networked tests only: the bridge, its TAPs and rules live and die there).
struct Racer {
    husk: Husk,
    tmp: tempfile::TempDir,
    ns: Option<Ns>,
}

impl Racer {
    fn new(test: &str) -> Option<Racer> {
        let husk = husk_with_busybox(test)?;
        // Short: socket paths under it must fit a unix address.
        let tmp = tempfile::Builder::new()
            .prefix("hr")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Some(Racer {
            husk,
            tmp,
            ns: None,
        })
    }

    fn root(&self) -> &Path {
        self.husk.root.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("/usr/sbin/ip");
                c.args(["netns", "exec", &ns.name]).arg(common::bin("husk"));
                c
            }
            None => Command::new(common::bin("husk")),
        };
        c.arg("--root").arg(self.root()).args(args);
        c.env("HUSK_KERNEL", &self.husk.kernel)
            .env("HUSK_INITRAMFS", &self.husk.initramfs)
            .env(
                "HUSK_NETWORK",
                if self.ns.is_some() { "bridge" } else { "none" },
            )
            .env("TMPDIR", self.tmp.path());
        c
    }

    /// `husk args…`, bounded by [`LIMIT`] (a hang fails the test).
    fn run(&self, args: &[&str]) -> Output {
        common::run_bounded(self.cmd(args), None, LIMIT)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "husk {args:?} failed ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `husk args…` in the background, output piped.
    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn husk")
    }

    /// `ps -a --format json`.
    fn ps(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["ps", "-a", "--format", "json"])).expect("ps json");
        v.as_array().expect("ps array").clone()
    }

    /// What is left of the containers under this root: processes using the root or the
    /// temp dir, container directories, socket directories, leases, TAPs.
    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = [self.root(), self.tmp.path()]
            .iter()
            .flat_map(|d| common::engine::processes_using(d))
            .collect();
        left.extend(
            self.husk
                .container_ids()
                .into_iter()
                .map(|c| format!("container {c}")),
        );
        left.extend(
            std::fs::read_dir(self.tmp.path())
                .expect("tmp")
                .flatten()
                .map(|e| format!("temp {}", e.path().display())),
        );
        let leases = self.root().join("network/husk0.leases.json");
        if let Ok(b) = std::fs::read(&leases) {
            let v: serde_json::Value = serde_json::from_slice(&b).expect("lease json");
            if let Some(m) = v["leases"].as_object().filter(|m| !m.is_empty()) {
                left.push(format!("leases {m:?}"));
            }
        }
        if let Some(ns) = &self.ns {
            left.extend(ns.taps().into_iter().map(|t| format!("tap {t}")));
        }
        left
    }

    /// Nothing is left (processes get a few seconds to go).
    fn assert_clean(&self, what: &str) {
        let left = common::poll_until(Duration::from_secs(15), || {
            let l = self.leftovers();
            l.is_empty().then_some(())
        });
        assert!(left.is_some(), "{what}: left {:?}", self.leftovers());
    }
}

/// A network namespace of the test's own, deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    /// `None` (after saying NOT RUN) where this host cannot make one.
    fn new(test: &str, tag: &str) -> Option<Ns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            common::not_run(test, "needs root (network namespaces, TAPs)", true);
            return None;
        }
        for tool in ["/usr/sbin/ip", "/usr/sbin/nft"] {
            if !Path::new(tool).exists() {
                common::not_run(test, &format!("{tool} missing"), true);
                return None;
            }
        }
        let name = format!("hkr-{tag}-{}", std::process::id());
        let ok = Command::new("/usr/sbin/ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        Some(Ns { name })
    }

    fn taps(&self) -> Vec<String> {
        let o = Command::new("/usr/sbin/ip")
            .args(["-n", &self.name, "-o", "link", "show", "type", "tun"])
            .output()
            .expect("ip link");
        text(&o.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Waits for `child` (bounded by [`LIMIT`]); its output.
fn finish(child: Child) -> Output {
    let (out, ended) = common::finish_within(child, LIMIT);
    assert!(ended, "a husk command still ran after {LIMIT:?}");
    out
}

/// The one line a failed command printed, checked to be exactly one `husk: ` line.
fn one_line(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{what}: want one error line, got {err:?}");
    assert!(lines[0].starts_with("husk: "), "{what}: {err:?}");
    assert!(!err.contains("panicked"), "{what}: {err:?}");
    lines[0].to_string()
}

/// The archive to load busybox again after an `rmi` won.
fn busybox_archive() -> PathBuf {
    common::cli::busybox_archive()
}

#[test]
fn run_against_rmi_of_its_image_one_wins_cleanly() {
    let Some(r) = Racer::new("run_against_rmi_of_its_image_one_wins_cleanly") else {
        return;
    };
    let archive = busybox_archive();
    let (mut run_won, mut rmi_won) = (0, 0);
    // rmi starts this long after run (before it, when negative): before run resolves the
    // image, while it links the layers and records the container, and after.
    for (i, delay_ms) in [-20i64, -8, -4, -2, -1, 0, 0, 1, 2, 4, 8, 20, 60]
        .into_iter()
        .enumerate()
    {
        let name = format!("r{i}");
        // Every other round names its user: run reads the image's /etc/passwd from its
        // layer blobs too, which rmi may remove under it.
        let user = if i % 2 == 1 { "user" } else { "0" };
        let run_args = [
            "run", "-d", "--name", &name, "-u", user, "busybox", "sleep", "600",
        ];
        let pause = Duration::from_millis(delay_ms.unsigned_abs());
        let (run, rmi) = if delay_ms < 0 {
            let rmi = r.spawn(&["rmi", "busybox"]);
            std::thread::sleep(pause);
            (r.spawn(&run_args), rmi)
        } else {
            let run = r.spawn(&run_args);
            std::thread::sleep(pause);
            (run, r.spawn(&["rmi", "busybox"]))
        };
        let (run, rmi) = (finish(run), finish(rmi));
        let what = format!("rmi {delay_ms} ms after run");
        match (run.status.success(), rmi.status.success()) {
            (true, false) => {
                run_won += 1;
                let line = one_line(&rmi, &what);
                assert!(
                    line.contains("cannot remove image busybox")
                        && line.contains(&format!("({name})")),
                    "{what}: {line}"
                );
                let id = text(&run.stdout).trim().to_string();
                assert!(
                    line.contains(&id[..12]),
                    "{what}: {line} does not name {id}"
                );
                // The container runs on a whole image.
                assert_eq!(r.ok(&["exec", &name, "echo", "alive"]), "alive\n", "{what}");
                assert_eq!(r.ok(&["rm", "-f", &name]).trim(), name);
            }
            (false, true) => {
                rmi_won += 1;
                let line = one_line(&run, &what);
                assert!(line.contains("no such image"), "{what}: {line}");
                assert!(
                    text(&rmi.stdout).contains("Deleted: sha256:"),
                    "{what}: {}",
                    text(&rmi.stdout)
                );
                assert!(
                    r.husk.container_ids().is_empty(),
                    "{what}: the loser was kept"
                );
                assert_eq!(r.ok(&["images", "-q"]), "", "{what}");
                // Its blobs and layer disks went with it; nothing half-made stays.
                for d in ["blobs", "layers", "tmp"] {
                    let left = files_under(&r.root().join(d));
                    assert!(left.is_empty(), "{what}: {d}/ holds {left:?}");
                }
                r.ok(&["load", "-i", archive.to_str().unwrap()]);
            }
            (run_ok, rmi_ok) => panic!(
                "{what}: run ok {run_ok} ({}), rmi ok {rmi_ok} ({}{})",
                text(&run.stderr),
                text(&rmi.stdout),
                text(&rmi.stderr)
            ),
        }
        r.assert_clean(&what);
    }
    eprintln!("run won {run_won}, rmi won {rmi_won}");
    // Afterwards the store empties whole, and still answers.
    r.ok(&["rmi", "-f", "busybox"]);
    assert_eq!(r.ok(&["images", "-q"]), "");
    let files: Vec<String> = files_under(r.root())
        .into_iter()
        .filter(|f| !f.starts_with("containers/") && !f.starts_with("templates/"))
        .collect();
    assert_eq!(
        files,
        ["index.json", "index.lock", "lock"],
        "store left files"
    );
    r.assert_clean("after rmi -f");
}

#[test]
fn ten_parallel_runs_all_succeed_and_leave_nothing() {
    let test = "ten_parallel_runs_all_succeed_and_leave_nothing";
    let Some(mut r) = Racer::new(test) else {
        return;
    };
    // Foreground, --rm: each prints its own number, and removes itself.
    let runs: Vec<Child> = (0..10)
        .map(|n| r.spawn(&["run", "--rm", "busybox", "echo", &n.to_string()]))
        .collect();
    for (n, c) in runs.into_iter().enumerate() {
        let out = finish(c);
        assert!(out.status.success(), "run {n}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{n}\n"), "run {n}");
    }
    r.assert_clean("after 10 run --rm");

    // Detached, on a bridge made by whichever comes first (in a namespace of the test's).
    r.ns = Ns::new(test, "ten");
    let names: Vec<String> = (0..10).map(|n| format!("c{n}")).collect();
    let runs: Vec<Child> = names
        .iter()
        .map(|n| r.spawn(&["run", "-d", "--name", n, "busybox", "sleep", "600"]))
        .collect();
    for (n, c) in names.iter().zip(runs) {
        let out = finish(c);
        assert!(out.status.success(), "run -d {n}: {}", text(&out.stderr));
    }
    let ps = r.ps();
    assert_eq!(ps.len(), 10, "{ps:?}");
    let distinct = |key: &dyn Fn(&serde_json::Value) -> String| {
        let mut v: Vec<String> = ps.iter().map(key).collect();
        v.sort();
        v.dedup();
        v
    };
    assert!(ps.iter().all(|c| c["status"] == "running"), "{ps:?}");
    assert_eq!(distinct(&|c| c["id"].to_string()).len(), 10);
    assert_eq!(distinct(&|c| c["vsockCid"].to_string()).len(), 10);
    let mut got = distinct(&|c| c["name"].as_str().unwrap_or_default().to_string());
    let mut want = names.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    if let Some(ns) = &r.ns {
        let ips = distinct(&|c| c["network"]["addresses"][0].to_string());
        assert_eq!(ips.len(), 10, "{ips:?}");
        assert!(!ips.iter().any(|a| a == "null"), "{ips:?}");
        assert_eq!(ns.taps().len(), 10);
    }
    let rms: Vec<Child> = names.iter().map(|n| r.spawn(&["rm", "-f", n])).collect();
    for (n, c) in names.iter().zip(rms) {
        let out = finish(c);
        assert!(out.status.success(), "rm -f {n}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), n);
    }
    r.assert_clean("after 10 rm -f");
}

#[test]
fn two_runs_for_one_name_one_wins_the_other_says_why() {
    let Some(r) = Racer::new("two_runs_for_one_name_one_wins_the_other_says_why") else {
        return;
    };
    for round in 0..2 {
        let both: Vec<Child> = (0..2)
            .map(|_| r.spawn(&["run", "-d", "--name", "same", "busybox", "sleep", "600"]))
            .collect();
        let outs: Vec<Output> = both.into_iter().map(finish).collect();
        let (won, lost): (Vec<&Output>, Vec<&Output>) =
            outs.iter().partition(|o| o.status.success());
        assert_eq!(won.len(), 1, "round {round}: {} won", won.len());
        let line = one_line(lost[0], "the loser");
        assert!(
            line.contains("the name \"same\" is already used"),
            "round {round}: {line}"
        );
        let id = text(&won[0].stdout).trim().to_string();
        assert_eq!(r.husk.container_ids(), [id], "round {round}");
        let ps = r.ps();
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0]["status"], "running");
        assert_eq!(r.ok(&["rm", "-f", "same"]).trim(), "same");
        r.assert_clean(&format!("round {round}"));
    }
}

#[test]
fn rm_force_during_an_exec_ends_the_exec_and_a_later_exec_finds_nothing() {
    let Some(r) =
        Racer::new("rm_force_during_an_exec_ends_the_exec_and_a_later_exec_finds_nothing")
    else {
        return;
    };
    r.ok(&["run", "-d", "--name", "x", "busybox", "sleep", "600"]);
    let exec = r.spawn(&["exec", "x", "sleep", "20"]);
    // The exec's process runs in the guest.
    common::wait_for("the exec's sleep 20", common::SETTLE, || {
        let o = r.run(&["exec", "x", "ps"]);
        text(&o.stdout).contains("sleep 20").then_some(())
    });
    let t = Instant::now();
    assert_eq!(r.ok(&["rm", "-f", "x"]).trim(), "x");
    let out = finish(exec);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "exec ended {took:?} after rm -f"
    );
    assert!(!out.status.success(), "exec succeeded under rm -f");
    let line = one_line(&out, "the cut exec");
    assert!(
        line.contains("container x: the exec lost its process"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(137), "{line}");
    // Afterwards: gone.
    let late = r.run(&["exec", "x", "true"]);
    assert!(!late.status.success());
    let line = one_line(&late, "exec after rm");
    assert!(line.contains("no such container: x"), "{line}");
    r.assert_clean("after rm -f");
    // An exec that starts as the rm -f does: it runs, or says in one line why not.
    for delay_ms in [0, 10, 40, 150] {
        let what = format!("rm -f {delay_ms} ms after exec");
        r.ok(&["run", "-d", "--name", "x", "busybox", "sleep", "600"]);
        let exec = r.spawn(&["exec", "x", "sleep", "1"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let t = Instant::now();
        assert_eq!(r.ok(&["rm", "-f", "x"]).trim(), "x", "{what}");
        let out = finish(exec);
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{what}: {:?}",
            t.elapsed()
        );
        if !out.status.success() {
            let line = one_line(&out, &what);
            let code = out.status.code();
            // Gone before it looked; ended but not yet removed when it looked (rm -f records
            // the end before it removes the directory); going as it started; gone while it ran.
            let known = (line.contains("no such container: x") && code == Some(125))
                || (line.contains("start it first") && code == Some(125))
                || (line.contains("as the exec started") && code == Some(125))
                || (line.contains("the exec lost its process") && code == Some(137));
            assert!(known, "{what}: {code:?} {line}");
        }
        r.assert_clean(&what);
    }
}

#[test]
fn stop_against_stop_and_against_rm_both_end() {
    let Some(r) = Racer::new("stop_against_stop_and_against_rm_both_end") else {
        return;
    };
    // busybox sleep as the container's pid 1 ignores SIGTERM: the stops escalate after 1 s.
    r.ok(&["run", "-d", "--name", "s", "busybox", "sleep", "600"]);
    let stops: Vec<Child> = (0..2).map(|_| r.spawn(&["stop", "-t", "1", "s"])).collect();
    for c in stops {
        let out = finish(c);
        assert!(out.status.success(), "stop: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "s");
    }
    let ps = r.ps();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["status"], "stopped", "{ps:?}");
    assert_eq!(ps[0]["exitCode"], 137, "{ps:?}");
    assert_eq!(r.ok(&["rm", "s"]).trim(), "s");
    r.assert_clean("after stop + stop");

    // rm -f as the stop begins, while it waits out SIGTERM, as it escalates to SIGKILL.
    for delay_ms in [0, 300, 1000] {
        let what = format!("rm -f {delay_ms} ms after stop");
        r.ok(&["run", "-d", "--name", "s", "busybox", "sleep", "600"]);
        let stop = r.spawn(&["stop", "-t", "1", "s"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let rm = r.run(&["rm", "-f", "s"]);
        let stop = finish(stop);
        assert!(rm.status.success(), "{what}: {}", text(&rm.stderr));
        assert_eq!(text(&rm.stdout).trim(), "s", "{what}");
        // The stop saw the container stopped, or gone.
        if stop.status.success() {
            assert_eq!(text(&stop.stdout).trim(), "s", "{what}");
            assert_eq!(text(&stop.stderr), "", "{what}");
        } else {
            let line = one_line(&stop, &what);
            assert!(line.contains("no such container: s"), "{what}: {line}");
        }
        r.assert_clean(&what);
    }
}

#[test]
fn two_starts_of_one_container_boot_one_vm() {
    let Some(r) = Racer::new("two_starts_of_one_container_boot_one_vm") else {
        return;
    };
    let id = r.ok(&["run", "-d", "--name", "s", "busybox", "sleep", "600"]);
    let id = id.trim();
    for round in 0..3 {
        let what = format!("round {round}");
        assert_eq!(r.ok(&["stop", "-t", "0", "s"]).trim(), "s", "{what}");
        let both: Vec<Child> = (0..2).map(|_| r.spawn(&["start", "s"])).collect();
        let outs: Vec<Output> = both.into_iter().map(finish).collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        let errs: Vec<String> = outs.iter().map(|o| text(&o.stderr)).collect();
        assert!(won >= 1, "{what}: no start won: {errs:?}");
        for o in outs.iter().filter(|o| !o.status.success()) {
            let line = one_line(o, &what);
            // Found running, or found another start booting it.
            let known = line.contains("container s is running: it is already running")
                || line.contains("container s is starting: another husk command boots it");
            assert!(known, "{what}: {line}");
        }
        // One VM, running the container.
        let state = r.husk.state(id);
        let vm = state["pid"]["pid"].as_i64().expect("VMM pid");
        let scratch = state["scratchDisk"].as_str().expect("scratch").to_string();
        let users: Vec<String> = common::engine::processes_using(Path::new(&scratch));
        assert_eq!(users.len(), 1, "{what}: VMs on one scratch disk: {users:?}");
        assert!(
            users[0].starts_with(&format!("pid {vm}:")),
            "{what}: {users:?}"
        );
        assert_eq!(r.ok(&["exec", "s", "echo", "up"]), "up\n", "{what}");
    }
    assert_eq!(r.ok(&["rm", "-f", "s"]).trim(), "s");
    r.assert_clean("after rm -f");
}
