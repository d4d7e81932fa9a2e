//! `kill -9` of husk-runtime's per-container process, the VM holder, at each phase of a
//! container's life: created (the VM up, the process not started), running, and while an
//! `exec` runs in it. As with runc's init: the engine's next `state` says stopped, an
//! `exec` in flight ends in bounded time with a failure, `delete` (without --force) removes
//! the container, and no VMM, virtiofsd, husk-agent-mux, socket directory or state is
//! left.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::faults::kill9;
use crate::harness::{wait_child, wait_pid, Bundle, Rt, LIMIT};
use crate::sh;

/// How long `state` may keep saying anything but stopped after the holder's death.
const STOPPED_WITHIN: Duration = Duration::from_secs(15);

/// Waits for `state ID` to say stopped; the last status seen otherwise.
fn wait_stopped(rt: &Rt, id: &str, ctx: &str) {
    let deadline = Instant::now() + STOPPED_WITHIN;
    loop {
        let s = rt.state(id);
        if s["status"] == "stopped" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ctx}: state still says {} {STOPPED_WITHIN:?} after the VM holder's death",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cgroup directories of container `id`'s VMM (its pid from husk-runtime's own
/// `state.json`), read while it runs.
fn vm_cgroups(rt: &Rt, id: &str) -> Vec<PathBuf> {
    let path = rt.root().join(id).join("state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("state.json")).expect("JSON");
    let pid = state["vm"]["pid"].as_i64().expect("the VMM's pid") as i32;
    let dirs = common::faults::cgroups_of(pid);
    assert!(!dirs.is_empty(), "the VMM {pid} is in no VM cgroup");
    dirs
}

/// The holder is reaped (this test is its subreaper), `state` says stopped, a plain `delete`
/// works and nothing is left: no process, state or socket directory, and not the VM's
/// cgroup (`cgroups`, seen while it ran), which the dead holder never removed.
fn ends_and_deletes(rt: &Rt, holder: i32, id: &str, cgroups: &[PathBuf], ctx: &str) {
    let code = wait_pid(holder, LIMIT);
    assert_eq!(code, 137, "{ctx}: the VM holder's status");
    wait_stopped(rt, id, ctx);
    let out = rt.run(&["delete", id]);
    assert!(
        out.status.success(),
        "{ctx}: delete: {}",
        common::text(&out.stderr)
    );
    rt.assert_clean();
    common::faults::assert_cgroups_gone(cgroups, ctx);
}

#[test]
fn kill_9_of_the_vm_holder_when_created_running_and_during_an_exec() {
    let test = "kill_9_of_the_vm_holder_when_created_running_and_during_an_exec";
    let Some(rt) = Rt::new(test) else { return };
    let b = Bundle::new(&rt, |c| c["process"]["args"] = sh("sleep 1000"));

    let ctx = "kill -9 of the VM holder of a created container";
    let c = rt.create(&b, "h1", &[]);
    let cgroups = vm_cgroups(&rt, "h1");
    assert_eq!(rt.state("h1")["status"], "created", "{ctx}");
    kill9(c.pid);
    ends_and_deletes(&rt, c.pid, "h1", &cgroups, ctx);

    let ctx = "kill -9 of the VM holder of a running container";
    let c = rt.create(&b, "h2", &[]);
    rt.ok(&["start", "h2"]);
    let cgroups = vm_cgroups(&rt, "h2");
    assert_eq!(rt.state("h2")["status"], "running", "{ctx}");
    kill9(c.pid);
    ends_and_deletes(&rt, c.pid, "h2", &cgroups, ctx);

    let ctx = "kill -9 of the VM holder during an exec";
    let c = rt.create(&b, "h3", &[]);
    rt.ok(&["start", "h3"]);
    let cgroups = vm_cgroups(&rt, "h3");
    let args = ["exec", "h3", "sh", "-c", "echo started; sleep 30"];
    let mut exec = rt
        .cmd(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exec");
    let mut lines = BufReader::new(exec.stdout.take().expect("piped")).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(first.as_deref(), Some("started"), "{ctx}");
    kill9(c.pid);
    // It ends long before its `sleep 30` would have.
    let status = wait_child(&mut exec, Duration::from_secs(20), &args);
    assert!(!status.success(), "{ctx}: the exec succeeded");
    ends_and_deletes(&rt, c.pid, "h3", &cgroups, ctx);
}
