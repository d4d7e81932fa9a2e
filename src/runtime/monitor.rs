//! Driving a container from boot to exit, in the foreground (`husk run`) or in a detached
//! monitor process (`husk run -d`, `husk start`): a `husk` child in its own session that owns
//! the VM handle, writes the container's output to its log file, records the exit status and
//! applies `--rm`, so the command that started it can return at once.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::attach::{self, Stdio};
use super::lifecycle::{Runtime, VM_DIED_EXIT_CODE};
use super::Error;

/// The hidden subcommand a monitor runs as.
pub const MONITOR_SUBCOMMAND: &str = "container-monitor";
/// The fd number on which a monitor reports `ok` (or why it failed) to its parent.
pub const READY_FD_ENV: &str = "HUSK_MONITOR_READY_FD";
const READY_FD: i32 = 3;

/// Runs container `id` with husk's own stdio; returns the container's exit code.
pub fn run_foreground(rt: &Runtime, id: &str, stdin: bool) -> Result<i32, Error> {
    let tty = rt.load(id)?.config.tty;
    drive(rt, id, Stdio::Host { stdin, tty }, || {})
}

/// The body of a monitor process: boots the container, reports readiness on the ready fd,
/// waits for the end. Returns the container's exit code.
pub fn run_monitor(rt: &Runtime, id: &str) -> Result<i32, Error> {
    let state = rt.load(id)?;
    let mut ready = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        // SAFETY: the parent passed this fd for us alone; we take ownership once, and keep
        // it from the VMM and helpers we spawn (which would hold the parent's read open).
        .map(|fd| unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            File::from_raw_fd(fd)
        });
    let stdio = Stdio::Log {
        path: state.log_file.clone(),
        tty: state.config.tty,
    };
    let result = drive(rt, id, stdio, || {
        if let Some(mut f) = ready.take() {
            let _ = f.write_all(b"ok\n");
        }
    });
    if let (Err(e), Some(mut f)) = (&result, ready.take()) {
        let _ = writeln!(f, "{e}");
    }
    result
}

/// Starts a monitor for container `id` and waits until its process has started (or the
/// monitor says why not).
pub fn spawn(rt: &Runtime, id: &str) -> Result<(), Error> {
    let state = rt.load(id)?;
    if !state.can_start() {
        return Err(Error::WrongState {
            id: state.name.clone(),
            status: state.effective_status().as_str(),
            what: "it is already running".into(),
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
        .open(&log_path)
        .map_err(io(&log_path))?;
    let exe = std::env::current_exe().map_err(io(std::path::Path::new("/proc/self/exe")))?;

    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::Io {
            path: "pipe".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh fds from pipe2, owned here.
    let (mut read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };

    let mut cmd = Command::new(&exe);
    cmd.arg("--root").arg(rt.store.root());
    cmd.arg("--vmm").arg(rt.backend.to_string());
    if let Some(k) = &rt.kernel {
        cmd.arg("--kernel").arg(k);
    }
    if let Some(i) = &rt.initramfs {
        cmd.arg("--initramfs").arg(i);
    }
    cmd.arg(MONITOR_SUBCOMMAND).arg(id);
    cmd.env(READY_FD_ENV, READY_FD.to_string());
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let wfd = write_end.into_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 leaves the new fd without CLOEXEC, so it survives the exec.
            if libc::dup2(wfd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // SAFETY: our copy of the write end; the child has its own.
    unsafe { libc::close(wfd) };
    let mut child = spawned.map_err(io(&exe))?;

    // One line: `ok`, or why not. EOF without it means the monitor died.
    let mut answer = String::new();
    let _ = std::io::BufReader::new(&mut read_end).read_line(&mut answer);
    if answer.trim() == "ok" {
        // The monitor lives on; it is reparented when this process exits.
        std::mem::forget(child);
        return Ok(());
    }
    let status = child.wait().ok();
    let detail = match answer.trim() {
        "" => format!("it exited ({status:?}) without saying why"),
        msg => msg.to_string(),
    };
    Err(Error::Monitor {
        id: id.to_string(),
        detail,
        log: log_path,
    })
}

fn drive(rt: &Runtime, id: &str, stdio: Stdio, on_started: impl FnOnce()) -> Result<i32, Error> {
    let target = attach::forward_signals();
    let tty = matches!(stdio, Stdio::Host { tty: true, .. });
    let console = if tty { attach::terminal_size() } else { None };
    let booted = rt.boot(id, console.or(Some((24, 80))))?;
    target.lock().unwrap_or_else(|p| p.into_inner()).vm = Some(booted.vm.clone());
    let agent_err = |b: &super::lifecycle::Booted, source| Error::Agent {
        id: id.to_string(),
        console: b.state.console_log.clone(),
        source: Box::new(source),
    };
    let uds = booted.state.vsock_uds.clone();
    let attached = attach::attach(&booted.agent, &uds, id, None, &stdio)
        .and_then(|a| booted.agent.start_container(id).map(|_| a));
    let mut attached = match attached {
        Ok(a) => a,
        Err(source) => {
            let e = agent_err(&booted, source);
            let _ = rt.finish(
                booted,
                Err(crate::agent::Error::Disconnected("start failed".into())),
            );
            return Err(e);
        }
    };
    {
        let mut t = target.lock().unwrap_or_else(|p| p.into_inner());
        t.agent = Some((booted.agent.clone(), id.to_string(), None));
        t.tty = tty;
    }
    on_started();
    let exit = booted.agent.wait(id, None);
    let _ = attached.pump.wait_output();
    drop(attached.raw.take());
    {
        let mut t = target.lock().unwrap_or_else(|p| p.into_inner());
        t.agent = None;
    }
    let code = exit.as_ref().map(|s| s.code).unwrap_or(VM_DIED_EXIT_CODE);
    rt.finish(booted, exit)?;
    Ok(code)
}
