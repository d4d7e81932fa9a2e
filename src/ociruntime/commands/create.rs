//! `create` (spawn the VM holder, wait for `ok`, run the create-time hooks, write the pid file)
//! and `run` (the same in this process, then start, wait and delete; with `--detach`,
//! `create` and `start`).

use std::ffi::OsStr;

use super::super::bundle::{self, Plan};
use super::super::state::{check_id, ContainerState, Status, Store};
use super::super::{hooks, vm_holder, Error};
use super::lifecycle::destroy;
use super::{read_ready, spawn_helper, write_pid_file};
use crate::cli::runtime::{CreateArgs, RunArgs, RuntimeGlobal};
use crate::pod::proc::ProcessRef;
use crate::util::fs::create_private_dir;
use crate::util::time::rfc3339_now;

/// Records a new container (status `creating`) under the store lock; fails on a duplicate id.
fn register(store: &Store, id: &str, plan: &Plan) -> Result<ContainerState, Error> {
    let _lock = store.lock()?;
    if store.exists(id) || store.dir(id).exists() {
        return Err(Error::Exists(id.to_string()));
    }
    let state = ContainerState {
        id: id.to_string(),
        bundle: plan.bundle.clone(),
        rootfs: plan.rootfs.clone(),
        created: rfc3339_now(),
        annotations: plan.annotations.clone(),
        status: Status::Creating,
        vm_holder: None,
        vm: None,
        sock_dir: store.sock_dir(id),
        vsock_cid: store.free_cid()?,
        exit_code: None,
        netns: plan.netns.clone(),
        network: None,
        execs: Vec::new(),
        poststart: plan.hooks.poststart.clone(),
        poststop: plan.hooks.poststop.clone(),
    };
    let dir = store.dir(id);
    create_private_dir(&dir).map_err(Error::io(&dir))?;
    let _ = std::fs::remove_dir_all(&state.sock_dir);
    create_private_dir(&state.sock_dir).map_err(Error::io(&state.sock_dir))?;
    if let Err(e) = store.save(&state) {
        let _ = store.remove(&state);
        return Err(e);
    }
    Ok(state)
}

/// The prestart and createRuntime hooks, once the container is created; where the VM holder
/// made the container's network namespace it ran them itself, in it ([`Plan::new_netns`]).
fn create_hooks(plan: &Plan, state: &ContainerState) -> Result<(), Error> {
    if plan.new_netns {
        return Ok(());
    }
    let doc = state.hook_json(Status::Created);
    hooks::run("prestart", &plan.hooks.prestart, &doc)?;
    hooks::run("createRuntime", &plan.hooks.create_runtime, &doc)
}

pub fn create(store: &Store, g: &RuntimeGlobal, a: &CreateArgs) -> Result<i32, Error> {
    check_id(&a.id)?;
    if store.exists(&a.id) {
        return Err(Error::Exists(a.id.clone()));
    }
    let plan = bundle::plan(&a.id, &a.bundle)?;
    if plan.container.process.terminal && a.console_socket.is_none() {
        return Err(Error::Usage(
            "process.terminal is set but no --console-socket was given for the pty".into(),
        ));
    }
    let state = register(store, &a.id, &plan)?;
    let mut args: Vec<&OsStr> = vec![OsStr::new(vm_holder::SUBCOMMAND)];
    if let Some(s) = &a.console_socket {
        args.push(OsStr::new("--console-socket"));
        args.push(s.as_os_str());
    }
    args.push(OsStr::new(&a.id));
    let (mut child, ready) = match spawn_helper(g, &args) {
        Ok(c) => c,
        Err(e) => {
            let _ = store.remove(&state);
            return Err(e);
        }
    };
    let fail = |child: &mut std::process::Child, e: Error| {
        let now = store.load(&a.id).unwrap_or_else(|_| state.clone());
        destroy(&now);
        let _ = child.kill();
        let _ = child.wait();
        let _ = store.remove(&now);
        Err(e)
    };
    let recorded = store.update(&a.id, |s| s.vm_holder = ProcessRef::of(child.id()));
    if let Err(e) = recorded {
        return fail(&mut child, e);
    }
    if let Err(detail) = read_ready(ready) {
        return fail(
            &mut child,
            Error::VmHolder {
                id: a.id.clone(),
                detail,
            },
        );
    }
    let state = store.load(&a.id)?;
    if let Err(e) = create_hooks(&plan, &state) {
        return fail(&mut child, e);
    }
    if let Some(p) = &a.pid_file {
        if let Err(e) = write_pid_file(p, child.id()) {
            return fail(&mut child, e);
        }
    }
    // The VM holder lives on; it is reparented (to the engine's subreaper) when we exit.
    std::mem::forget(child);
    Ok(0)
}

/// `run --detach` (runc's `run -d`): `create`, then `start`; returns once the process runs.
/// The VM holder keeps the stdio it inherited from here, as after `create`.
fn run_detached(store: &Store, g: &RuntimeGlobal, a: &RunArgs) -> Result<i32, Error> {
    let c = CreateArgs {
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: 0,
        id: a.id.clone(),
    };
    create(store, g, &c)?;
    if let Err(e) = super::lifecycle::start(store, &a.id) {
        // As runc: a container that cannot start is not left behind.
        if let Ok(now) = store.load(&a.id) {
            destroy(&now);
            super::lifecycle::run_poststop(&now);
            let _ = store.remove(&now);
        }
        return Err(e);
    }
    Ok(0)
}

pub fn run(store: &Store, g: &RuntimeGlobal, a: &RunArgs) -> Result<i32, Error> {
    check_id(&a.id)?;
    if a.detach {
        return run_detached(store, g, a);
    }
    if store.exists(&a.id) {
        return Err(Error::Exists(a.id.clone()));
    }
    let plan = bundle::plan(&a.id, &a.bundle)?;
    let state = register(store, &a.id, &plan)?;
    let me = std::process::id();
    let state = store.update(&state.id, |s| s.vm_holder = ProcessRef::of(me))?;
    if let Some(p) = &a.pid_file {
        if let Err(e) = write_pid_file(p, me) {
            let _ = store.remove(&state);
            return Err(e);
        }
    }
    let created = || {
        let now = store.load(&a.id)?;
        create_hooks(&plan, &now)
    };
    let code = vm_holder::run(store, &a.id, a.console_socket.as_deref(), Some(&created));
    if let Ok(now) = store.load(&a.id) {
        if !a.keep {
            super::lifecycle::run_poststop(&now);
            destroy(&now);
            let _ = store.remove(&now);
        }
    }
    Ok(code)
}
