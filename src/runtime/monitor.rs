//! Driving a container from boot to exit, in the foreground (`husk run`) or in a detached
//! monitor process (`husk run -d`, `husk start`): a `husk-monitor` child in its own session
//! (`src/bin/husk-monitor.rs`) that owns the VM handle, writes the container's output to its
//! log file, records the exit status and applies `--rm`, so the command that started it can
//! return at once.

use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use super::lifecycle::Runtime;
use super::state::Status;
use super::Error;
use crate::pod::attach::{self, Stdio};
use crate::pod::ready_pipe::{self, Reporter};
use crate::pod::VM_DIED_EXIT_CODE;
use crate::util::timings;

/// The monitor's program, found where husk-vmm is ([`find_binary`]).
const PROGRAM: &str = "husk-monitor";
/// Overrides where the monitor's binary is looked for.
pub const BINARY_ENV: &str = "HUSK_MONITOR_BIN";
/// The environment variable naming the fd on which a monitor reports `ok` (or why it failed)
/// to its parent ([`ready_pipe`]).
pub const READY_FD_ENV: &str = "HUSK_MONITOR_READY_FD";

/// Runs container `id` with husk's own stdio; returns the container's exit code.
/// `on_exit` gets that code as soon as the process has exited, its output is out and the
/// exit is recorded, before the VM is powered off (not called when the wait failed).
pub fn run_foreground(
    rt: &Runtime,
    id: &str,
    stdin: bool,
    on_exit: impl FnOnce(i32),
) -> Result<i32, Error> {
    let tty = rt.load(id)?.config.tty;
    drive(rt, id, Stdio::Host { stdin, tty }, || {}, on_exit)
}

/// The body of a monitor process: boots the container, reports readiness on the ready fd,
/// waits for the end. Returns the container's exit code.
pub fn run_monitor(rt: &Runtime, id: &str) -> Result<i32, Error> {
    let mut ready = Reporter::take(READY_FD_ENV);
    // After the ready fd became close-on-exec: the probe's process must not hold it.
    rt.backend.probe_ahead();
    let state = match rt.load(id) {
        Ok(s) => s,
        Err(e) => {
            ready.fail(&e.to_string());
            return Err(e);
        }
    };
    let stdio = Stdio::Log {
        path: state.log_file.clone(),
        tty: state.config.tty,
    };
    let result = drive(rt, id, stdio, || ready.ok(), |_| {});
    if let Err(e) = &result {
        ready.fail(&e.to_string());
    }
    result
}

/// Starts a monitor for container `id` and waits until its process has started (or the
/// monitor says why not).
pub fn spawn(rt: &Runtime, id: &str) -> Result<(), Error> {
    let mut state = rt.load(id)?;
    // Its end recorded, its monitor still powering the VM off (`husk run` answers before
    // the teardown): a `start` right after waits for that, as `docker start` just works.
    if matches!(state.status, Status::Exited | Status::Stopped) && state.monitor_alive() {
        if let Some(m) = state.monitor {
            m.wait_gone(super::store::FINISH_WAIT);
        }
        state = rt.load(id)?;
    }
    if !state.can_start() {
        let what = if state.effective_status() == Status::Running {
            "it is already running"
        } else {
            "its last run is still being torn down (try again)"
        };
        return Err(Error::WrongState {
            id: state.name.clone(),
            status: state.effective_status().as_str(),
            what: what.into(),
        });
    }
    let dir = rt.store.dir(id);
    let log_path = dir.join("monitor.log");
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let exe = find_binary().map_err(|source| Error::Vm {
        id: id.to_string(),
        source: Box::new(source),
    })?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--root").arg(rt.store.root());
    cmd.arg("--vmm").arg(rt.backend.to_string());
    if let Some(k) = &rt.kernel {
        cmd.arg("--kernel").arg(k);
    }
    if let Some(i) = &rt.initramfs {
        cmd.arg("--initramfs").arg(i);
    }
    cmd.arg("--").arg(id);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let (mut child, read_end) = ready_pipe::spawn(cmd, READY_FD_ENV).map_err(io(&exe))?;
    match ready_pipe::read_answer(read_end) {
        Ok(()) => {
            // The monitor lives on; it is reparented when this process exits.
            std::mem::forget(child);
            Ok(())
        }
        Err(said) => {
            let status = child.wait().ok();
            // Killed mid-boot, it said nothing and left the VM it started behind.
            rt.end_abandoned_boot(id);
            let detail = said.unwrap_or_else(|| match status {
                Some(s) => format!("it ended ({s}) before the container started"),
                None => "it ended before the container started".into(),
            });
            Err(Error::Monitor {
                id: id.to_string(),
                detail,
                log: log_path,
            })
        }
    }
}

/// Finds husk-monitor: `$HUSK_MONITOR_BIN`, then beside the running executable (and one level
/// up, for test binaries), then `PATH`.
pub fn find_binary() -> Result<std::path::PathBuf, crate::backend::Error> {
    crate::backend::husk_vmm::find_husk_binary(PROGRAM, BINARY_ENV)
}

fn drive(
    rt: &Runtime,
    id: &str,
    stdio: Stdio,
    on_started: impl FnOnce(),
    on_exit: impl FnOnce(i32),
) -> Result<i32, Error> {
    let target = attach::forward_signals();
    let tty = matches!(stdio, Stdio::Host { tty: true, .. });
    let console = if tty { attach::terminal_size() } else { None };
    let booted = rt.boot(id, console.or(Some((24, 80))), |vm| {
        attach::guard_vm(&target, vm)
    })?;
    let pod = &booted.pod;
    let attached = attach::attach(&pod.agent, pod.vsock_uds(), id, None, &stdio)
        .and_then(|a| pod.agent.start_container(id).map(|_| a));
    let attached = match attached {
        Ok(a) => a,
        Err(source) => {
            let e = Error::Agent {
                id: id.to_string(),
                console: booted.state.console_log.clone(),
                source: Box::new(source),
            };
            let _ = rt.finish(
                booted,
                Err(crate::agent::Error::Disconnected("start failed".into())),
            );
            return Err(e);
        }
    };
    // `Wait` is with the agent before the start is recorded or reported: from then on a
    // monitor's death (`run -d` has returned) leaves a working container whose agent powers
    // the VM off when the process ends. Killed before, the monitor leaves a boot that the
    // next command ends, not a VM that would run on with nobody to end it.
    let waiting = pod.agent.send_wait(id, None);
    if let Err(e) = rt.store.update(id, |s| s.booting = false) {
        tracing::debug!(id, "recording the container's start: {e}");
    }
    timings::mark("stdio attach + start");
    attach::follow(&target, &pod.agent, id, None, tty);
    on_started();
    let exit = attached.wait_sent(waiting, Some(&target));
    timings::mark("process run to exit");
    // Status 137 alone would read as a SIGKILL inside the container. Unless a stop or kill
    // asked for it, or the VM's end has a cause of its own to report, say that the VM (or the
    // way to its agent) went instead.
    let lost = match &exit {
        Err(e) if !rt.load(id).map(|s| s.stop_requested).unwrap_or(true) => Some(format!(
            "container {}: lost its process before it exited: {} ({e})",
            booted.state.name,
            super::lost::cause(rt, &booted.state)
        )),
        _ => None,
    };
    let console = booted.state.console_log.clone();
    let code = exit.as_ref().map(|s| s.code).unwrap_or(VM_DIED_EXIT_CODE);
    if exit.is_ok() {
        // Recorded first: whoever the caller runs next sees the container exited (and `start`
        // or a new container of its name waits for this monitor to finish).
        rt.record_status(id, code)?;
        on_exit(code);
    }
    rt.finish(booted, exit)?;
    timings::mark("power-off + cleanup");
    if let Some(line) = lost {
        // With --rm the console log went with the container.
        match console.exists() {
            true => tracing::warn!("{line}; see {}", console.display()),
            false => tracing::warn!("{line}"),
        }
    }
    Ok(code)
}
