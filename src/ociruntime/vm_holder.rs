//! The VM holder process: what `create` leaves running for one container (runsc's model).
//!
//! It boots the VM (rootfs and bind mounts over virtio-fs), has the agent create the
//! container, attaches the stdio it inherited from `create` (or the slave of the pty whose
//! master went to `--console-socket`) to the process's streams, reports `ok` to `create` on
//! the ready fd and serves its control socket. On `start` the process runs; the VM holder then
//! waits for it, powers the VM off and exits with its status (128+N for signal N), which is
//! what an engine waiting on the pid in `--pid-file` gets. Its own messages go to `--log`
//! only: its stdout and stderr belong to the container.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::bundle::{self, Plan};
use super::control::{self, Request};
use super::state::{ContainerState, Status, Store};
use super::{console, exec_check, network, runc_log, Error};
use crate::backend::{self, BackendKind, VmHandle, VsockSpec};
use crate::network::Wiring;
use crate::pod::attach::{self, Stdio};
use crate::pod::proc::ProcessRef;
use crate::pod::ready_pipe::Reporter;
use crate::pod::{base_spec, BootError, GuestAssets, PodVm, PoweredOff, VM_DIED_EXIT_CODE};
use crate::util::timings;

/// The hidden subcommand `create` re-executes husk-runtime as.
pub const SUBCOMMAND: &str = "vm-holder";
/// The environment variable naming the fd on which a holder (of a VM or an exec) reports `ok`
/// or why not to the command that spawned it ([`crate::pod::ready_pipe`]).
pub const READY_FD_ENV: &str = "HUSK_RUNTIME_READY_FD";

/// What the control socket tells the main thread.
enum Event {
    Started,
    /// The process could not be started (a missing binary): the exit code to report.
    StartFailed(i32),
    Killed(i32),
}

/// The exit code of a process that could not be started, as a shell reports a command it
/// cannot run: 127 when it does not exist, 126 otherwise.
pub fn start_failure_code(why: &str) -> i32 {
    if why.contains("No such file or directory") {
        127
    } else {
        126
    }
}

/// How the VM holder's stdio reaches the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Inherited fds (pipes from conmon or the shim): stdin, stdout, stderr as they are.
    Pipes,
    /// A host pty made here, its master sent over `--console-socket`.
    Socket,
    /// The VM holder's own stdio is a terminal (`run` in the foreground with `terminal: true`).
    Inherited,
}

/// The VM holder body; returns the exit code for the process. `run_now`: `husk-runtime run`
/// in the foreground, which calls it once the container is created (the create-time hooks)
/// and then starts the process itself.
pub fn run(
    store: &Store,
    id: &str,
    console_socket: Option<&Path>,
    run_now: Option<&dyn Fn() -> Result<(), Error>>,
) -> i32 {
    let foreground = run_now.is_some();
    // Before any thread starts: the forwarded signals are blocked in every thread after.
    let target = attach::forward_signals();
    let mut ready = Reporter::take(READY_FD_ENV);
    // Phases for the --debug log (cheap when unused).
    timings::record();
    let booted = boot(store, id, console_socket, foreground, &target);
    let booted = match booted {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            // `create` logs what it is told: one line per failure.
            if !ready.fail(&msg) {
                runc_log::error_to_file(&msg);
                eprintln!("husk-runtime: {msg}");
            }
            let _ = store.update(id, |s| s.status = Status::Stopped);
            // The VM went with `boot`'s handles.
            release_network(store, id);
            // A signal that ended the boot (killing the VM) is the outcome.
            return attach::ending_for_signal().unwrap_or(1);
        }
    };
    let Booted {
        pod,
        attached,
        tty,
        state,
        process,
    } = booted;
    let (vm, agent) = (pod.vm.clone(), pod.agent.clone());

    let (tx, rx) = mpsc::channel();
    let started = Arc::new(AtomicBool::new(false));
    let handler = {
        let (agent, vm, started, store_root, id) = (
            agent.clone(),
            vm.clone(),
            started.clone(),
            store.root().to_path_buf(),
            id.to_string(),
        );
        let rootfs = state.rootfs.clone();
        let program = process.args.first().cloned().unwrap_or_default();
        let env = process.env.clone();
        let tx = std::sync::Mutex::new(tx);
        Arc::new(move |req: Request| -> Result<(), String> {
            match req {
                Request::Start => {
                    if started.swap(true, Ordering::SeqCst) {
                        return Err(format!("container {id} was already started"));
                    }
                    if let Err(e) = agent.start_container(&id) {
                        // The container is over: it never ran and never will. It is recorded
                        // stopped before `start` hears of the failure, so that a `delete`
                        // right after it finds it stopped.
                        let mut why = format!("starting the container's process: {e}");
                        let code = start_failure_code(&why);
                        if code == 127 {
                            if let Some(more) = exec_check::explain(&rootfs, &program, &env) {
                                why = format!("{why} ({more})");
                            }
                        }
                        if let Ok(store) = Store::open(&store_root) {
                            let _ = store.update(&id, |s| {
                                s.status = Status::Stopped;
                                s.exit_code = Some(code);
                            });
                        }
                        let _ = tx
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .send(Event::StartFailed(code));
                        return Err(why);
                    }
                    if let Ok(store) = Store::open(&store_root) {
                        let _ = store.update(&id, |s| s.status = Status::Running);
                    }
                    let _ = tx
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(Event::Started);
                    Ok(())
                }
                Request::Kill(sig) if started.load(Ordering::SeqCst) => {
                    match agent.signal(&id, None, sig) {
                        Ok(()) => Ok(()),
                        Err(_) if sig == libc::SIGKILL => vm.kill().map_err(|e| e.to_string()),
                        Err(e) => Err(format!("signalling the container's process: {e}")),
                    }
                }
                Request::KillAll(sig) if started.load(Ordering::SeqCst) => {
                    match agent.signal_all(&id, sig) {
                        Ok(()) => Ok(()),
                        Err(_) if sig == libc::SIGKILL => vm.kill().map_err(|e| e.to_string()),
                        Err(e) => Err(format!("signalling the container's processes: {e}")),
                    }
                }
                // Before start the container has no process but the one waiting to run.
                Request::Kill(sig) | Request::KillAll(sig) => {
                    let _ = tx
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(Event::Killed(sig));
                    Ok(())
                }
            }
        })
    };
    let sock = state.control_socket();
    let _ = std::fs::remove_file(&sock);
    let served = UnixListener::bind(&sock)
        .map_err(|e| format!("control socket {}: {e}", sock.display()))
        .and_then(|l| control::serve(l, handler.clone()).map_err(|e| e.to_string()));
    let recorded = store.update(id, |s| {
        s.status = Status::Created;
        s.vm = ProcessRef::of(vm.pid());
    });
    if let Err(e) = served.map_err(Error::Usage).and(recorded.map(|_| ())) {
        let msg = e.to_string();
        runc_log::error_to_file(&msg);
        ready.fail(&msg);
        let _ = vm.kill();
        release_network(store, id);
        return 1;
    }
    ready.ok();
    timings::mark("stdio attach + control socket");
    runc_log::debug(&format!(
        "container {id}: created in: {}",
        timings::line(&timings::take())
    ));
    if let Some(created) = run_now {
        let go = created()
            .map_err(|e| e.to_string())
            .and_then(|()| handler(Request::Start));
        if let Err(e) = go {
            eprintln!("husk-runtime: {e}");
            runc_log::error_to_file(&e);
            let _ = vm.kill();
            let _ = store.update(id, |s| s.status = Status::Stopped);
            release_network(store, id);
            return 1;
        }
        // As `start` does for `create`d containers; a failure is a warning.
        let doc = state.hook_json(Status::Running);
        if let Err(e) = super::hooks::run("poststart", &state.poststart, &doc) {
            runc_log::warn(&e.to_string());
        }
    }

    // Created: wait for `start` (or a kill, or the VM dying under us).
    let code = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Started) => {
                attach::follow(&target, &agent, id, None, tty);
                let exit = attached.wait(&agent, id, None, Some(&target));
                break match exit {
                    Ok(s) => s.code,
                    Err(e) => {
                        runc_log::error_to_file(&format!("container {id}: waiting for it: {e}"));
                        VM_DIED_EXIT_CODE
                    }
                };
            }
            Ok(Event::StartFailed(code)) => break code,
            Ok(Event::Killed(sig)) => break 128 + sig,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !matches!(vm.try_wait(), Ok(None)) {
                    runc_log::error_to_file(&format!("container {id}: the VM ended before start"));
                    break VM_DIED_EXIT_CODE;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break VM_DIED_EXIT_CODE,
        }
    };
    let _ = store.update(id, |s| {
        s.status = Status::Stopped;
        s.exit_code = Some(code);
    });
    drop((vm, agent));
    timings::mark("created to exit");
    match pod.power_off() {
        Ok(PoweredOff::Cleanly) => {}
        Ok(PoweredOff::Killed) => runc_log::warn(&format!(
            "container {id}: the VM did not power off; killed it"
        )),
        Err(e) => runc_log::error_to_file(&format!("container {id}: {e}")),
    }
    release_network(store, id);
    let _ = std::fs::remove_file(&sock);
    timings::mark("power-off + cleanup");
    runc_log::debug(&format!(
        "container {id}: ended with {code}: {}",
        timings::line(&timings::take())
    ));
    code
}

struct Booted {
    pod: PodVm,
    attached: attach::Attached,
    tty: bool,
    state: ContainerState,
    /// The container's process as the guest was given it (to explain a failed start).
    process: husk_protocol::ProcessSpec,
}

/// Starts the VM and creates the container in it; `target` takes the VM as soon as it runs,
/// so that a signal ending the holder during the boot takes the VM with it.
fn boot(
    store: &Store,
    id: &str,
    console_socket: Option<&Path>,
    foreground: bool,
    target: &std::sync::Mutex<attach::SignalTarget>,
) -> Result<Booted, Error> {
    if let Ok(kind) = BackendKind::from_env() {
        // Beside the bundle's plan.
        kind.probe_ahead();
    }
    let state = store.load(id)?;
    let mut plan = bundle::plan(id, &state.bundle)?;
    let tty = plan.container.process.terminal;
    let mode = match (tty, console_socket, foreground) {
        (false, _, _) => Console::Pipes,
        (true, Some(_), _) => Console::Socket,
        (true, None, true) => Console::Inherited,
        (true, None, false) => {
            return Err(Error::Usage(
                "process.terminal is set: give --console-socket for the pty".into(),
            ))
        }
    };
    let (vm, network) = start_vm(store, &state, &mut plan)?;
    attach::guard_vm(target, &vm);
    // The NIC's set-up ran beside the VMM's start; the guest boots on while it ends.
    if let Some((netns, wiring)) = network {
        match wiring.wait() {
            Ok(net) => plan.container.network = Some(net),
            Err(source) => {
                let _ = vm.kill();
                release_network(store, id);
                return Err(Error::Network {
                    id: id.to_string(),
                    netns,
                    source: Box::new(source),
                });
            }
        }
        timings::mark("waiting for the network");
    }
    let agent_err = |source| Error::Agent {
        id: id.to_string(),
        console: state.console_log(),
        source: Box::new(source),
    };
    let vm_err = |source| Error::Vm {
        id: id.to_string(),
        source: Box::new(source),
    };
    let pod = PodVm::boot(vm, &state.vsock_uds(), plan.container.clone()).map_err(|e| match e {
        BootError::Vm(source) => vm_err(source),
        BootError::Agent(source) => agent_err(source),
    })?;
    if mode == Console::Socket {
        let size = plan
            .container
            .process
            .console_size
            .map(|c| (c.rows, c.cols));
        let sock = console_socket.unwrap_or(Path::new(""));
        console::become_pty_of(sock, size).map_err(Error::io(sock))?;
    }
    let attached = match attach::attach(
        &pod.agent,
        pod.vsock_uds(),
        id,
        None,
        &Stdio::Host { stdin: true, tty },
    ) {
        Ok(a) => a,
        Err(source) => {
            let _ = pod.vm.kill();
            return Err(agent_err(source));
        }
    };
    Ok(Booted {
        pod,
        attached,
        tty,
        state,
        process: plan.container.process,
    })
}

/// The network namespace a NIC is in, and the rest of its set-up, going on beside the boot.
type PendingNic = (String, Wiring);

/// Starts the VM; with it, its NIC's pending set-up.
fn start_vm(
    store: &Store,
    state: &ContainerState,
    plan: &mut Plan,
) -> Result<(Arc<dyn VmHandle>, Option<PendingNic>), Error> {
    let assets = GuestAssets::find(None, None)?;
    let vm_err = |source| Error::Vm {
        id: state.id.clone(),
        source: Box::new(source),
    };
    let kind = BackendKind::from_env().map_err(|e| Error::Usage(e.to_string()))?;
    let backend = backend::backend(kind).map_err(vm_err)?;
    crate::util::fs::create_private_dir(&state.sock_dir).map_err(Error::io(&state.sock_dir))?;
    let vsock = VsockSpec {
        cid: state.vsock_cid,
        uds_path: state.vsock_uds(),
    };
    let mut spec = base_spec(
        &assets,
        &state.console_log(),
        plan.vcpus,
        plan.memory_mib,
        vsock,
    );
    spec.shared_dirs = plan.shares.clone();
    let netns = if plan.new_netns {
        own_netns_and_hooks(state, plan)?
    } else {
        plan.netns.clone()
    };
    let mut wiring = None;
    if let Some(ns) = &netns {
        if let Some(nic) = network::attach(&state.id, ns, &plan.container)? {
            // Recorded before the VM exists: a VM holder killed from here on is cleaned up
            // by `delete`.
            let link = nic.link.clone();
            if let Err(e) = store.update(&state.id, |s| s.network = Some(link)) {
                // Its end first: what it sets up is what the detach removes.
                drop(nic.guest);
                network::detach(&nic.link);
                return Err(e);
            }
            spec.taps.push(nic.tap);
            wiring = Some((ns.clone(), nic.guest));
        }
    }
    timings::mark("bundle plan + network attach");
    // `spec` (and the TAP fd in it) goes at the end of this function: from then on the VMM
    // holds the only fd, and the TAP ends with it.
    let vm = backend.start(&spec).map_err(vm_err)?;
    Ok((Arc::from(vm), wiring))
}

/// The container's own network namespace ([`Plan::new_netns`]), with the prestart and
/// createRuntime hooks run in it (as runc runs them once the container's namespaces exist):
/// docker's `libnetwork-setkey` moves the container's veth into `/proc/<pid>/ns/net` of the
/// pid it is given, which is this process's. Returns the namespace's path; None where this
/// user may not make one (not root) and no hook would see it: as before such specs were
/// honoured this way, the VM then has no NIC.
fn own_netns_and_hooks(state: &ContainerState, plan: &Plan) -> Result<Option<String>, Error> {
    let no_hooks = plan.hooks.prestart.is_empty() && plan.hooks.create_runtime.is_empty();
    let ns = match network::own_namespace(&state.id) {
        Ok(ns) => ns,
        Err(Error::NewNetns { source, .. })
            if no_hooks && source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            runc_log::debug(&format!(
                "container {}: no network namespace of its own ({source}); no hooks, no NIC",
                state.id
            ));
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut doc = state.hook_json(Status::Created);
    // `create` records this pid too, perhaps not yet.
    doc["pid"] = serde_json::json!(std::process::id());
    super::hooks::run("prestart", &plan.hooks.prestart, &doc)?;
    super::hooks::run("createRuntime", &plan.hooks.create_runtime, &doc)?;
    timings::mark("own network namespace + create-time hooks");
    Ok(Some(ns))
}

/// Detaches the VM's NIC from the engine's namespace once the VM is gone, and forgets it.
fn release_network(store: &Store, id: &str) {
    let Ok(state) = store.load(id) else { return };
    if let Some(link) = &state.network {
        network::detach(link);
        let _ = store.update(id, |s| s.network = None);
    }
}
