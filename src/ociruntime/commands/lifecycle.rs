//! `start`, `state`, `kill`, `delete`, `pause`/`resume`, and tearing a container down.

use std::time::Duration;

use super::super::control::{self, Request};
use super::super::state::{ContainerState, Status, Store};
use super::super::{hooks, network, runc_log, Error};
use super::parse_signal;
use crate::cli::runtime::KillArgs;
use crate::pod::proc;

/// How long the VM holder may take to start the process (an agent round trip).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed VM holder may take to power its VM off and exit.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// How long `delete` of a container that looks running waits for an exit its VM holder has
/// not recorded yet (a process that a `kill` just ended: the agent's word reaches the holder
/// within milliseconds); only then is the container running and the delete refused.
const EXIT_GRACE: Duration = Duration::from_secs(2);

fn wrong(state: &ContainerState, what: &str) -> Error {
    Error::WrongState {
        id: state.id.clone(),
        status: state.effective_status().as_str(),
        what: what.into(),
    }
}

pub fn start(store: &Store, id: &str) -> Result<i32, Error> {
    let state = store.load(id)?;
    if state.effective_status() != Status::Created {
        return Err(wrong(&state, "only a created container can be started"));
    }
    control::send(&state.control_socket(), Request::Start, START_TIMEOUT).map_err(|detail| {
        Error::VmHolder {
            id: id.to_string(),
            detail,
        }
    })?;
    let state = store.load(id)?;
    // As runc: a failing poststart hook is a warning, the container runs on.
    if let Err(e) = hooks::run(
        "poststart",
        &state.poststart,
        &state.hook_json(Status::Running),
    ) {
        runc_log::warn(&e.to_string());
    }
    Ok(0)
}

pub fn state(store: &Store, id: &str) -> Result<i32, Error> {
    let s = store.load(id)?;
    let text = serde_json::to_string_pretty(&s.oci_json()).unwrap_or_default();
    println!("{text}");
    Ok(0)
}

pub fn kill(store: &Store, a: &KillArgs) -> Result<i32, Error> {
    let sig = parse_signal(&a.signal)?;
    let state = store.load(&a.id)?;
    match state.effective_status() {
        Status::Created | Status::Running => {
            let req = if a.all {
                Request::KillAll(sig)
            } else {
                Request::Kill(sig)
            };
            control::send(&state.control_socket(), req, KILL_TIMEOUT).map_err(|detail| {
                Error::VmHolder {
                    id: a.id.clone(),
                    detail,
                }
            })?;
            if sig == libc::SIGKILL {
                // A container is stopped once `kill KILL` returns (runc's returns once the
                // signal is sent, and its process dies at once): a `delete` right after it
                // must not find it running.
                if !wait_stopped(store, &a.id, STOP_WAIT) {
                    runc_log::warn(&format!(
                        "container {}: not stopped {STOP_WAIT:?} after KILL",
                        a.id
                    ));
                }
            }
        }
        Status::Paused if sig == libc::SIGKILL => {
            // The VMM is stopped and cannot answer: kill it; the VM holder sees the VM end.
            if let Some(vm) = &state.vm {
                vm.signal(libc::SIGKILL);
            }
        }
        Status::Paused => return Err(wrong(&state, "resume it first, or send KILL")),
        Status::Creating | Status::Stopped => {
            return Err(wrong(
                &state,
                "only a created or running container can be signalled",
            ))
        }
    }
    Ok(0)
}

/// Waits up to `limit` for container `id` to be stopped (or gone); whether it is.
fn wait_stopped(store: &Store, id: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match store.load(id) {
            Ok(s) if s.effective_status() != Status::Stopped => {}
            _ => return true,
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `delete`: as the runtime spec says, a container that is not stopped is an error and is left
/// as it is (runc deletes a `created` one anyway; engines that mean it pass `--force`, as
/// podman, CRI-O and the containerd client after its kill do). `--force` kills and deletes.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<i32, Error> {
    let mut state = match store.load(id) {
        // Engines delete twice (containerd's shim, podman's cleanup); runc's `delete --force`
        // of an id that is already gone succeeds.
        Err(Error::NoSuchContainer(_)) if force => return Ok(0),
        other => other?,
    };
    if !force && state.effective_status() == Status::Running {
        // A process that just ended (a `kill` a moment ago) is not running: give its VM
        // holder the moment it takes to record the exit before calling it so.
        wait_stopped(store, id, EXIT_GRACE);
        state = store.load(id)?;
    }
    if !force && state.effective_status() != Status::Stopped {
        return Err(wrong(
            &state,
            "only a stopped container can be deleted; stop it first or use delete --force",
        ));
    }
    destroy(&state);
    run_poststop(&state);
    store.remove(&state)?;
    Ok(0)
}

/// poststop hooks: failures are logged, the container is gone regardless.
pub fn run_poststop(state: &ContainerState) {
    if let Err(e) = hooks::run(
        "poststop",
        &state.poststop,
        &state.hook_json(Status::Stopped),
    ) {
        runc_log::warn(&e.to_string());
    }
}

/// Ends everything a container runs on the host: the VM holder (asked to kill the VM first),
/// then anything still using its socket directory (VMM, virtiofsd, husk-agent-mux), and
/// the VM's attachment to the engine's network namespace.
pub fn destroy(state: &ContainerState) {
    if let Some(vm) = &state.vm {
        // A paused VM cannot power off: let it go first.
        vm.signal(libc::SIGCONT);
    }
    if let Some(sb) = state
        .vm_holder
        .filter(|s| s.is_alive() && s.pid != std::process::id())
    {
        let _ = control::send(
            &state.control_socket(),
            Request::Kill(libc::SIGKILL),
            KILL_TIMEOUT,
        );
        if !sb.wait_gone(STOP_WAIT) {
            sb.signal(libc::SIGKILL);
            sb.wait_gone(Duration::from_secs(5));
        }
    }
    for e in &state.execs {
        e.signal(libc::SIGKILL);
    }
    for p in proc::processes_using(&state.sock_dir) {
        p.signal(libc::SIGKILL);
        p.wait_gone(Duration::from_secs(5));
    }
    // A VM holder killed with -9 never detached its NIC (the TAP went with the VMM; the
    // veth's tc mirroring is still there).
    if let Some(link) = &state.network {
        network::detach(link);
    }
    // Nor removed the VM's cgroup.
    crate::confine::launch::sweep_dead_leases();
}

pub fn pause(store: &Store, id: &str, pause: bool) -> Result<i32, Error> {
    let state = store.load(id)?;
    let (from, to, sig) = if pause {
        (Status::Running, Status::Paused, libc::SIGSTOP)
    } else {
        (Status::Paused, Status::Running, libc::SIGCONT)
    };
    if state.effective_status() != from {
        return Err(wrong(
            &state,
            if pause {
                "only a running container can be paused"
            } else {
                "only a paused container can be resumed"
            },
        ));
    }
    let vm = state
        .vm
        .filter(|v| v.is_alive())
        .ok_or_else(|| Error::VmHolder {
            id: id.into(),
            detail: "its VM process is gone".into(),
        })?;
    // Stopping the VMM process stops every vCPU thread with it, on any backend.
    vm.signal(sig);
    store.update(id, |s| s.status = to)?;
    Ok(0)
}
