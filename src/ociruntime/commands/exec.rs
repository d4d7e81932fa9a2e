//! `exec`: another process in a running container, through the agent. In the foreground it
//! relays this process's stdio; with `--detach` a helper (`exec-holder`) does, and its pid
//! goes to `--pid-file` so the engine waits on it for the exit status.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use husk_protocol::ProcessSpec;
use oci_spec::runtime::Process;

use super::super::state::{Status, Store};
use super::super::{bundle, console, process, runc_log, vm_holder, Error};
use super::{read_ready, spawn_helper, write_pid_file};
use crate::cli::runtime::{ExecArgs, ExecHolderArgs, RuntimeGlobal};
use crate::pod::attach::{self, Stdio};
use crate::pod::exec::{new_exec_id, RunningExec};
use crate::pod::proc::ProcessRef;
use crate::pod::ready_pipe::Reporter;
use crate::pod::{self, VM_DIED_EXIT_CODE};

/// The process to exec: `--process FILE`, or the container's own process with ARGS and the
/// flags applied (as runc builds it).
fn process_for(store: &Store, a: &ExecArgs) -> Result<ProcessSpec, Error> {
    let state = store.load(&a.id)?;
    let bad = |path: &Path, detail: String| Error::BadConfig {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(path) = &a.process {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let p: Process = serde_json::from_slice(&bytes)
            .map_err(|e| bad(path, format!("not an OCI process: {e}")))?;
        return process::convert(&p, (24, 80)).map_err(|source| Error::BadProcess {
            path: path.to_path_buf(),
            source,
        });
    }
    if a.args.is_empty() {
        return Err(Error::Usage(
            "exec needs a command after the container id, or --process FILE".into(),
        ));
    }
    let spec = bundle::load_spec(&state.bundle)?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.args.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    let mut env = p.env().clone().unwrap_or_default();
    for e in &a.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    p.set_env(Some(env));
    if let Some(c) = &a.cwd {
        p.set_cwd(c.into());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse(), g.parse()),
            None => (u.parse(), Ok(0)),
        };
        let (Ok(uid), Ok(gid)) = (uid, gid) else {
            return Err(Error::Usage(format!("--user {u:?}: use UID[:GID]")));
        };
        let user = p.user_mut();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_additional_gids(Some(a.additional_gids.clone()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    let path = state.bundle.join("config.json");
    process::convert(&p, (24, 80)).map_err(|source| Error::BadProcess { path, source })
}

pub fn exec(store: &Store, g: &RuntimeGlobal, a: &ExecArgs) -> Result<i32, Error> {
    let state = store.load(&a.id)?;
    if !matches!(state.effective_status(), Status::Running | Status::Created) {
        return Err(Error::WrongState {
            id: a.id.clone(),
            status: state.effective_status().as_str(),
            what: "exec needs a running container".into(),
        });
    }
    let spec = process_for(store, a)?;
    if spec.terminal && a.detach && a.console_socket.is_none() {
        return Err(Error::Usage(
            "a terminal exec with --detach needs --console-socket".into(),
        ));
    }
    if !a.detach {
        let target = attach::forward_signals();
        return foreground(
            &state,
            spec,
            a.console_socket.as_deref(),
            Some(&target),
            Reporter::default(),
        );
    }
    let exec_id = new_exec_id().map_err(Error::io("/dev/urandom"))?;
    let file = store.dir(&a.id).join(format!("{exec_id}.json"));
    let json = serde_json::to_vec(&spec).map_err(|e| Error::io(&file)(std::io::Error::other(e)))?;
    std::fs::write(&file, json).map_err(Error::io(&file))?;
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("exec-holder"),
        OsStr::new("--spec"),
        file.as_os_str(),
    ];
    if let Some(s) = &a.console_socket {
        args.push(OsStr::new("--console-socket"));
        args.push(s.as_os_str());
    }
    args.push(OsStr::new(&a.id));
    let (mut child, ready) = spawn_helper(g, &args)?;
    if let Err(detail) = read_ready(ready) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&file);
        return Err(Error::ExecHolder {
            id: a.id.clone(),
            detail,
        });
    }
    let holder = ProcessRef::of(child.id());
    let _ = store.update(&a.id, |s| {
        s.execs.retain(ProcessRef::is_alive);
        s.execs.extend(holder);
    });
    if let Some(p) = &a.pid_file {
        write_pid_file(p, child.id())?;
    }
    std::mem::forget(child);
    Ok(0)
}

/// The body of `exec-holder`: runs the exec with this process's stdio (or a pty sent over
/// the console socket), reports `ok` on the ready fd, and exits with its status.
pub fn holder(store: &Store, a: &ExecHolderArgs) -> Result<i32, Error> {
    let target = attach::forward_signals();
    let mut ready = Reporter::take(vm_holder::READY_FD_ENV);
    let state = match store.load(&a.id) {
        Ok(s) => s,
        Err(e) => {
            ready.fail(&e.to_string());
            return Err(e);
        }
    };
    let result = std::fs::read(&a.spec)
        .map_err(Error::io(&a.spec))
        .and_then(|b| {
            serde_json::from_slice::<ProcessSpec>(&b).map_err(|e| Error::BadConfig {
                path: a.spec.clone(),
                detail: e.to_string(),
            })
        });
    let _ = std::fs::remove_file(&a.spec);
    let spec = match result {
        Ok(s) => s,
        Err(e) => {
            ready.fail(&e.to_string());
            return Err(e);
        }
    };
    foreground(
        &state,
        spec,
        a.console_socket.as_deref(),
        Some(&target),
        ready,
    )
}

/// Runs `spec` in the container with this process's stdio; `ready` hears `ok` once it runs.
fn foreground(
    state: &super::super::state::ContainerState,
    spec: ProcessSpec,
    console_socket: Option<&Path>,
    target: Option<&Arc<std::sync::Mutex<attach::SignalTarget>>>,
    mut ready: Reporter,
) -> Result<i32, Error> {
    let id = state.id.clone();
    let agent_err = |source| Error::Agent {
        id: id.clone(),
        console: state.console_log(),
        source: Box::new(source),
    };
    let run = || -> Result<RunningExec, Error> {
        // The agent first: an engine is handed a pty only for an exec that can run.
        let agent = pod::exec::connect(&state.vsock_uds()).map_err(agent_err)?;
        let exec_id = new_exec_id().map_err(Error::io("/dev/urandom"))?;
        if let (true, Some(sock)) = (spec.terminal, console_socket) {
            let size = spec.console_size.map(|c| (c.rows, c.cols));
            console::become_pty_of(sock, size).map_err(Error::io(sock))?;
        }
        let stdio = Stdio::Host {
            stdin: true,
            tty: spec.terminal,
        };
        pod::exec::start(agent, &state.vsock_uds(), &id, &exec_id, spec, &stdio).map_err(agent_err)
    };
    let running = match run() {
        Ok(r) => r,
        Err(e) => {
            ready.fail(&e.to_string());
            return Err(e);
        }
    };
    if let Some(t) = target {
        running.follow(t);
    }
    ready.ok();
    // As runc's exec'd processes die with the container's init: the VM holder's death
    // (a `kill -9`) takes the VM, and so this exec (137), with it.
    if let (Some(holder), Some(vm)) = (state.vm_holder, state.vm) {
        std::thread::spawn(move || {
            holder.wait_exit();
            vm.signal(libc::SIGKILL);
        });
    }
    let exec_id = running.exec_id().to_string();
    let exit = running.wait(target.map(|t| &**t));
    Ok(match exit {
        Ok(s) => s.code,
        Err(e) => {
            runc_log::error_to_file(&format!("container {id}: exec {exec_id}: {e}"));
            VM_DIED_EXIT_CODE
        }
    })
}
