//! One container's life: create (record + writable layer), boot (VM + agent + guest
//! container), finish (exit status, VM down, `--rm`), stop, kill, remove.
//!
//! Whoever boots a container owns its [`PodVm`] until the VM is gone: the foreground
//! `husk run`, or the detached monitor of `husk run -d` / `husk start`. That process is
//! recorded as the container's `monitor` and is the one that writes the exit status; other
//! commands only signal (through the agent, or the VMM pid as the last resort) and wait for
//! it to finish.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::ExitStatus;

pub use super::guest_spec::{
    container_spec, layer_ref, vm_spec, volume_tag, LAYERS_SERIAL, SCRATCH_SERIAL,
};
use super::spec::{self, ProcessFlags};
use super::state::{now, ContainerConfig, State, Status};
use super::store::ContainerStore;
use super::Error;
use crate::agent::AgentClient;
use crate::backend::{self, BackendKind, VsockSpec};
use crate::image::ImageSource;
use crate::pod::proc::{self, ProcessRef};
use crate::pod::{
    BootError, GuestAssets, PodVm, PoweredOff, AGENT_REACH_TIMEOUT, VM_DIED_EXIT_CODE,
    VM_EXIT_TIMEOUT,
};
use crate::util::fs::create_private_dir;
use crate::util::timings;

/// Apparent size of a writable layer; sparse, so it costs what the container writes.
pub const SCRATCH_SIZE: u64 = 8 << 30;

/// `husk run` settings besides the image.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub process: ProcessFlags,
    pub hostname: Option<String>,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// `--pids-limit`: the container cgroup's `pids.max` (None: unlimited).
    pub pids_limit: Option<u64>,
    /// `--storage-opt size=`: the writable layer's apparent size (None: [`SCRATCH_SIZE`]).
    pub scratch_size: Option<u64>,
    pub stdin: bool,
    pub auto_remove: bool,
    /// `-v`: parsed and checked ([`spec::parse_volumes`]).
    pub volumes: Vec<super::state::Volume>,
    /// `--network` and `-p`.
    pub network: crate::network::NetworkSettings,
}

/// The runtime under one `--root`, with the backend and guest assets to boot with.
pub struct Runtime {
    pub store: ContainerStore,
    pub backend: BackendKind,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
}

/// A booted container: its VM, with the container created in it by the agent.
pub struct Booted {
    pub state: State,
    pub pod: PodVm,
    /// Held by the container's one monitor until it is done with the VM ([`BOOT_LOCK`]).
    _booting: crate::flock::FileLock,
}

/// The lock file in a container's directory that whoever boots it holds for as long as it
/// owns the VM: two `husk start`s at once would otherwise both find it startable and boot two
/// VMs over one scratch disk and one vsock socket.
pub const BOOT_LOCK: &str = "boot.lock";

impl Runtime {
    pub fn new(root: &Path, backend: BackendKind) -> Result<Runtime, Error> {
        let rt = Runtime {
            store: ContainerStore::open(root)?,
            backend,
            kernel: None,
            initramfs: None,
        };
        rt.repair();
        Ok(rt)
    }

    /// Records a container for `image`: resolves it, merges its config with the flags,
    /// creates the directory and the sparse writable layer. Boots nothing.
    pub fn create(
        &self,
        images: &dyn ImageSource,
        image: &str,
        opts: &RunOptions,
    ) -> Result<State, Error> {
        let img = images.resolve(image)?;
        timings::mark("image resolve");
        // Names in `-u` or the image's User become numbers here, from the image's files.
        let mut process = opts.process.clone();
        let mut additional_gids = Vec::new();
        if let Some(u) = process.user.as_deref().or(img.config.user.as_deref()) {
            if let Err(Error::UserName(_)) = spec::parse_user(u) {
                let (uid, gid, groups) = images.user_ids(&img, u)?;
                process.user = Some(format!("{uid}:{gid}"));
                additional_gids = groups;
            }
        }
        self.store
            .create(opts.name.as_deref(), |id, dir, cid, name| {
                let hostname = opts
                    .hostname
                    .clone()
                    .unwrap_or_else(|| id[..12].to_string());
                let p = spec::merge(&img.config, &process, &hostname, |k| std::env::var(k).ok())?;
                let layers = hold_layers(dir, &still_there(images, image, &img)?)?;
                let scratch_disk = dir.join("scratch.ext4");
                crate::image::scratch::from_template(
                    &scratch_disk,
                    opts.scratch_size.unwrap_or(SCRATCH_SIZE),
                    &self.store.root().join("templates"),
                )?;
                timings::mark("disk preparation");
                let vsock_uds = backend::vsock_socket_path(dir, &short_dir(id));
                if let Some(d) = vsock_uds.parent() {
                    create_private_dir(d).map_err(|source| Error::Io {
                        path: d.to_path_buf(),
                        source,
                    })?;
                }
                Ok(State {
                    id: id.to_string(),
                    name: name.to_string(),
                    image: img.reference.clone(),
                    image_id: img.id.clone(),
                    created: now(),
                    status: Status::Created,
                    pid: None,
                    monitor: None,
                    exit_code: None,
                    started_at: None,
                    finished_at: None,
                    stop_requested: false,
                    booting: false,
                    backend: None,
                    vsock_cid: cid,
                    vsock_uds,
                    scratch_disk,
                    // `boot` makes its directory (and the socket's) when it is short_dir.
                    console_log: backend::console_log_path(dir, &short_dir(id), opts.volumes.len()),
                    log_file: dir.join("container.log"),
                    config: ContainerConfig {
                        args: p.args,
                        env: p.env,
                        cwd: p.cwd,
                        uid: p.uid,
                        gid: p.gid,
                        hostname,
                        tty: opts.process.tty,
                        stdin: opts.stdin,
                        vcpus: opts.vcpus.max(1),
                        memory_mib: opts.memory_mib,
                        pids_limit: opts.pids_limit,
                        layers,
                        layer_fs: img.layer_fs.clone(),
                        auto_remove: opts.auto_remove,
                        volumes: opts.volumes.clone(),
                        network: opts.network.clone(),
                        additional_gids: additional_gids.clone(),
                    },
                    network: None,
                })
            })
    }

    pub fn load(&self, id: &str) -> Result<State, Error> {
        self.store.load(id)
    }

    /// Boots the VM of container `id` and creates the container in it (not started yet).
    /// The calling process becomes the container's monitor. `console`: the host terminal
    /// size for a tty container. `on_vm` sees the VM as soon as it runs, before the guest
    /// is up (a signal that ends husk meanwhile must take the VM with it).
    pub fn boot(
        &self,
        id: &str,
        console: Option<(u16, u16)>,
        on_vm: impl FnOnce(&Arc<dyn crate::backend::VmHandle>),
    ) -> Result<Booted, Error> {
        let lock = self.store.dir(id).join(BOOT_LOCK);
        let booting = match crate::flock::FileLock::try_exclusive(&lock) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(Error::WrongState {
                    id: self.load(id)?.name,
                    status: "starting",
                    what: "another husk command boots it".into(),
                })
            }
            Err(source) => return Err(Error::Io { path: lock, source }),
        };
        let state = self.load(id)?;
        if !state.can_start() {
            return Err(wrong_state(&state, "it is already running"));
        }
        let assets = GuestAssets::find(self.kernel.as_deref(), self.initramfs.as_deref())?;
        let vm_err = |source| Error::Vm {
            id: id.to_string(),
            source: Box::new(source),
        };
        let backend = backend::backend(self.backend).map_err(vm_err)?;
        // Auto and husk-vmm ask `husk-vmm --probe` first (once per process).
        timings::mark("VM backend choice");
        let vm_spec = vm_spec(&state, &assets);
        // The short socket directory under the temp dir may have been cleaned since `create`.
        for p in [&state.console_log, &state.vsock_uds] {
            if let Some(d) = p.parent() {
                create_private_dir(d).map_err(|source| Error::Io {
                    path: d.to_path_buf(),
                    source,
                })?;
            }
        }
        remove_sockets(&state);
        let mut vm_spec = vm_spec;
        let guest_net = self.attach_network(&state, &mut vm_spec)?;
        timings::mark("network attach");
        let started = backend.start(&vm_spec);
        // The VMM holds the TAP fd now; ours would keep the TAP alive after it.
        drop(vm_spec);
        let vm: Arc<dyn crate::backend::VmHandle> = match started {
            Ok(vm) => Arc::from(vm),
            Err(e) => {
                // The set-up's end first: it holds the network lock the release takes.
                drop(guest_net);
                self.release_network(id);
                return Err(vm_err(e));
            }
        };
        on_vm(&vm);
        let guest_net = self.network_wired(id, &*vm, guest_net)?;
        let vm_pid = ProcessRef::of(vm.pid());
        let state = self.store.update(id, |s| {
            s.status = Status::Running;
            s.pid = vm_pid;
            s.monitor = ProcessRef::of(std::process::id());
            s.backend = Some(backend.name().to_string());
            s.started_at = Some(now());
            s.finished_at = None;
            s.exit_code = None;
            s.stop_requested = false;
            s.booting = true;
        })?;
        let agent_err = |state: &State, source| Error::Agent {
            id: id.to_string(),
            console: state.console_log.clone(),
            source: Box::new(source),
        };
        let mut spec = container_spec(&state, console);
        spec.network = guest_net;
        let pod = match PodVm::boot(vm, &state.vsock_uds, spec) {
            Ok(pod) => pod,
            Err(e) => {
                let _ = self.record_exit(&state, None);
                return Err(match e {
                    BootError::Vm(source) => vm_err(source),
                    BootError::Agent(source) => agent_err(&state, source),
                });
            }
        };
        Ok(Booted {
            state,
            pod,
            _booting: booting,
        })
    }

    /// Records how the container's process ended, powers the VM off (killing it if it does
    /// not go), and removes the container if it was run with `--rm`.
    pub fn finish(
        &self,
        booted: Booted,
        exit: Result<ExitStatus, crate::agent::Error>,
    ) -> Result<Option<State>, Error> {
        let Booted { state, pod, .. } = booted;
        let code = match &exit {
            Ok(s) => Some(s.code),
            Err(e) => {
                tracing::debug!(id = %state.id, "waiting for the container failed: {e}");
                None
            }
        };
        // `--rm` without a writable volume: nothing in the VM is worth the guest's sync and
        // shutdown (~15 ms under QEMU's TCG), its scratch disk goes next.
        let disposable =
            state.config.auto_remove && state.config.volumes.iter().all(|v| v.read_only);
        let ended = match disposable {
            true => pod.discard(),
            false => pod.power_off(),
        };
        // A helper (virtiofsd) died and the VM was stopped for it: say so.
        let failure = match ended {
            Ok(PoweredOff::Cleanly) => None,
            Ok(PoweredOff::Killed) => {
                tracing::warn!(id = %state.id, "VM did not power off; killed it");
                None
            }
            Err(e) => Some(e),
        };
        let saved = self.record_exit(&state, code)?;
        match failure {
            Some(cause) => Err(Error::VmFailed {
                id: state.id.clone(),
                cause: Box::new(cause),
            }),
            None => Ok(saved),
        }
    }

    /// Records that the container's process ended with `code`: stopped if a stop was asked
    /// for, else exited. Its monitor may still be powering the VM off.
    pub fn record_status(&self, id: &str, code: i32) -> Result<State, Error> {
        self.store.update(id, |s| {
            s.status = if s.stop_requested {
                Status::Stopped
            } else {
                Status::Exited
            };
            s.exit_code = Some(code);
            s.booting = false;
            // The first record of the end is the time of it (`boot` clears it).
            if s.finished_at.is_none() {
                s.finished_at = Some(now());
            }
        })
    }

    /// Writes the final status (stopped if a stop was asked for, else exited) and applies
    /// `--rm`. Returns the state, or `None` when the container was removed.
    pub(super) fn record_exit(
        &self,
        state: &State,
        code: Option<i32>,
    ) -> Result<Option<State>, Error> {
        remove_sockets(state);
        self.release_network(&state.id);
        let code = code.unwrap_or(VM_DIED_EXIT_CODE);
        let saved = match self.record_status(&state.id, code) {
            Ok(s) => s,
            // Removed meanwhile (`rm -f`).
            Err(Error::NoSuchContainer(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if saved.config.auto_remove {
            self.remove_files(&saved)?;
            return Ok(None);
        }
        Ok(Some(saved))
    }

    /// A fresh control connection to a running container's agent (for exec, stop, kill).
    pub fn connect(&self, state: &State) -> Result<AgentClient, Error> {
        must_be_running(state)?;
        AgentClient::connect(&state.vsock_uds, AGENT_REACH_TIMEOUT).map_err(|source| Error::Agent {
            id: state.id.clone(),
            console: state.console_log.clone(),
            source: Box::new(source),
        })
    }

    /// SIGTERM, then after `timeout` SIGKILL, then (if the VM still runs) the VMM process
    /// itself; returns once the monitor has recorded the end. A container that is not
    /// running is left as it is.
    pub fn stop(&self, query: &str, timeout: Duration) -> Result<State, Error> {
        let state = self.store.resolve(query)?;
        self.stop_resolved(&state, timeout)
            .map_err(|e| asked_as(e, query))
    }

    fn stop_resolved(&self, state: &State, timeout: Duration) -> Result<State, Error> {
        let state = state.clone();
        if !state.can_signal() {
            return self.settle(&state);
        }
        self.store.update(&state.id, |s| s.stop_requested = true)?;
        if let Ok(agent) = self.connect(&state) {
            let _ = agent.signal(&state.id, None, libc::SIGTERM);
            if !wait_ended(&state, timeout) {
                let _ = agent.signal(&state.id, None, libc::SIGKILL);
            }
        }
        if !wait_ended(&state, Duration::from_secs(5)) {
            if let Some(p) = &state.pid {
                p.signal(libc::SIGKILL);
            }
            wait_ended(&state, VM_EXIT_TIMEOUT);
        }
        self.settle(&state)
    }

    /// Sends `signal` to the container's process. A SIGKILL that cannot reach the agent
    /// kills the VM.
    pub fn kill(&self, query: &str, signal: i32) -> Result<State, Error> {
        let state = self.store.resolve(query)?;
        if !state.can_signal() {
            return Err(wrong_state(
                &state,
                "only a running container can be signalled",
            ));
        }
        if matches!(
            signal,
            libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT
        ) {
            self.store
                .update(&state.id, |s| s.stop_requested = true)
                .map_err(|e| asked_as(e, query))?;
        }
        match self.connect(&state) {
            Ok(agent) => {
                if let Err(source) = agent.signal(&state.id, None, signal) {
                    if signal != libc::SIGKILL {
                        return Err(Error::Agent {
                            id: state.id.clone(),
                            console: state.console_log.clone(),
                            source: Box::new(source),
                        });
                    }
                    if let Some(p) = &state.pid {
                        p.signal(libc::SIGKILL);
                    }
                }
            }
            Err(e) if signal != libc::SIGKILL => return Err(e),
            Err(_) => {
                if let Some(p) = &state.pid {
                    p.signal(libc::SIGKILL);
                }
            }
        }
        Ok(state)
    }

    /// Removes a container and everything it has on the host: VM processes, sockets,
    /// scratch disk, logs, directory. A running one needs `force` (it is killed first).
    pub fn remove(&self, query: &str, force: bool) -> Result<String, Error> {
        let state = match self.store.resolve(query) {
            Ok(s) => s,
            Err(Error::NoSuchContainer(q)) => match self.store.unreadable(&q) {
                Some(id) => return self.remove_unreadable(&id),
                None => return Err(Error::NoSuchContainer(q)),
            },
            Err(e) => return Err(e),
        };
        if !state.can_delete() {
            if !force {
                return Err(wrong_state(
                    &state,
                    "stop it first (`husk stop`) or remove it with `husk rm -f`",
                ));
            }
            let _ = self.store.update(&state.id, |s| s.stop_requested = true);
            if let Some(p) = &state.pid {
                p.signal(libc::SIGKILL);
            }
        }
        // The VM is gone or going; its monitor may still be recording the end.
        if !wait_ended(&state, VM_EXIT_TIMEOUT) {
            for p in state.monitor.iter().chain(&state.pid) {
                p.signal(libc::SIGKILL);
            }
        }
        self.remove_files(&state)?;
        Ok(state.id)
    }

    /// Removes container `id` whose state file cannot be read (a corrupt `state.json`):
    /// whatever still runs from its directory or its short socket directory (named after the
    /// id), its network leases and rules, and both directories.
    fn remove_unreadable(&self, id: &str) -> Result<String, Error> {
        tracing::warn!(
            id,
            "its state file cannot be read; removing what is left of it"
        );
        let short = short_dir(id);
        kill_processes_in(&[self.store.dir(id), short.clone()]);
        let _ = std::fs::remove_dir_all(&short);
        self.release_all_network(id);
        self.store.remove_dir(id)?;
        Ok(id.to_string())
    }

    /// The container's directory, then the short directories its sockets and console log
    /// may live in under the temp dir (unix socket paths are short).
    pub(super) fn dirs_of(&self, state: &State) -> Vec<PathBuf> {
        let mut dirs = vec![self.store.dir(&state.id)];
        for p in [&state.vsock_uds, &state.console_log] {
            if let Some(d) = p.parent().filter(|d| !dirs.iter().any(|o| o == d)) {
                dirs.push(d.to_path_buf());
            }
        }
        dirs
    }

    fn remove_files(&self, state: &State) -> Result<(), Error> {
        // Anything still running from this container's files (a VMM or husk-agent-mux
        // whose monitor was itself killed) goes first, so nothing holds the disk or sockets.
        let dirs = self.dirs_of(state);
        kill_processes_in(&dirs);
        for d in &dirs[1..] {
            let _ = std::fs::remove_dir_all(d);
        }
        self.release_all_network(&state.id);
        self.store.remove_dir(&state.id)
    }

    /// After a stop: the state as the monitor left it; if the monitor is gone without
    /// recording (killed itself), end the helpers it would have stopped with the VM and
    /// record the end here.
    fn settle(&self, state: &State) -> Result<State, Error> {
        let now_state = self.load(&state.id)?;
        if now_state.status == Status::Running
            && !now_state.vm_alive()
            && !now_state.monitor_alive()
        {
            kill_processes_in(&self.dirs_of(&now_state));
            return Ok(self.record_exit(&now_state, None)?.unwrap_or(now_state));
        }
        Ok(now_state)
    }
}

/// Kills (and waits out, 5 s each) every process that has a file open or its working
/// directory under one of `dirs`.
pub(super) fn kill_processes_in(dirs: &[PathBuf]) {
    for d in dirs {
        for p in proc::processes_using(d) {
            p.signal(libc::SIGKILL);
            p.wait_gone(Duration::from_secs(5));
        }
    }
    // Their launcher (the monitor) may have died without removing the VM's cgroup.
    crate::confine::launch::sweep_dead_leases();
}

/// A container removed while a command worked on it (`rm -f` racing `stop`) is named as the
/// command was asked for it, not by the id it had resolved to.
fn asked_as(e: Error, query: &str) -> Error {
    match e {
        Error::NoSuchContainer(_) => Error::NoSuchContainer(query.to_string()),
        e => e,
    }
}

/// Exec, stop and kill need a running container.
pub(super) fn must_be_running(state: &State) -> Result<(), Error> {
    if state.can_signal() {
        Ok(())
    } else {
        Err(wrong_state(state, "start it first (`husk start`)"))
    }
}

fn wrong_state(state: &State, what: &str) -> Error {
    Error::WrongState {
        id: state.name.clone(),
        status: state.effective_status().as_str(),
        what: what.to_string(),
    }
}

/// Waits until the VM process and the monitor are both gone; true when they are.
fn wait_ended(state: &State, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let vm = state.pid.as_ref().is_some_and(ProcessRef::is_alive);
        let mon = state
            .monitor
            .as_ref()
            .is_some_and(|m| m.pid != std::process::id() && m.is_alive());
        if !vm && !mon {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A short per-container directory under the temp dir, for the VM files whose paths would not
/// fit a unix socket address in the container's directory (the backend decides which).
fn short_dir(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("husk-{}", &id[..16]))
}

/// The layer disks of `img` (resolved from `image` before the containers' lock was taken),
/// looked up again under it: `rmi` takes an image out under the same lock, so an image
/// removed meanwhile fails this `run` as if it had never been there ("no such image"), and
/// one still there is linked before an `rmi` can look for its users.
fn still_there(
    images: &dyn ImageSource,
    image: &str,
    img: &crate::image::ResolvedImage,
) -> Result<Vec<PathBuf>, Error> {
    let Some(id) = img.id.as_deref() else {
        return Ok(img.layer_disks.clone());
    };
    match images.resolve(id) {
        Ok(now) => Ok(now.layer_disks),
        Err(e) => Err(crate::image::SourceError {
            reference: image.to_string(),
            detail: e.detail,
        }
        .into()),
    }
}

/// Hard-links the image's layer disks into the container's directory and returns the links:
/// the container owns its layers from now on, so `husk rmi -f` (and the store's garbage
/// collection) can drop the image without breaking a later `husk start`, and the disk space
/// comes back when the last container using a layer is removed. Same inode, so the host
/// page cache is still shared. A store on another filesystem is referenced in place.
fn hold_layers(dir: &Path, disks: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let held = dir.join("layers");
    std::fs::create_dir_all(&held).map_err(|source| Error::Io {
        path: held.clone(),
        source,
    })?;
    disks
        .iter()
        .enumerate()
        .map(|(i, disk)| {
            let ext = disk.extension().and_then(|e| e.to_str()).unwrap_or("img");
            let link = held.join(format!("{i}.{ext}"));
            match std::fs::hard_link(disk, &link) {
                Ok(()) => Ok(link),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Ok(disk.clone()),
                Err(source) => Err(Error::Io {
                    path: disk.clone(),
                    source,
                }),
            }
        })
        .collect()
}

/// Removes the sockets a killed VM (or monitor) left behind ([`backend::remove_sockets`]).
fn remove_sockets(state: &State) {
    let vsock = VsockSpec {
        cid: state.vsock_cid,
        uds_path: state.vsock_uds.clone(),
    };
    backend::remove_sockets(&vsock, &state.console_log, state.config.volumes.len());
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::sample;
    use super::*;
    use crate::image::SourceError;
    use husk_protocol::{DiskRef, FsType, RootfsSpec};

    /// An image source whose images are gone (an `rmi` won the race).
    struct Emptied;

    impl ImageSource for Emptied {
        fn resolve(&self, reference: &str) -> Result<crate::image::ResolvedImage, SourceError> {
            Err(SourceError {
                reference: reference.into(),
                detail: "no such image".into(),
            })
        }

        fn user_ids(
            &self,
            image: &crate::image::ResolvedImage,
            _: &str,
        ) -> Result<(u32, u32, Vec<u32>), SourceError> {
            self.resolve(&image.reference).map(|_| (0, 0, Vec::new()))
        }
    }

    #[test]
    fn a_container_removed_under_a_command_is_named_as_asked() {
        let gone = asked_as(Error::NoSuchContainer("f".repeat(64)), "web");
        assert_eq!(
            gone.to_string(),
            "no such container: web (see `husk ps -a`)"
        );
        let other = asked_as(Error::NoCommand, "web");
        assert!(matches!(other, Error::NoCommand));
    }

    #[test]
    fn an_image_removed_before_the_lock_fails_the_run_by_the_name_it_was_given() {
        let img = crate::image::ResolvedImage {
            reference: "docker.io/library/busybox:latest".into(),
            id: Some(format!("sha256:{}", "a".repeat(64))),
            config: Default::default(),
            layer_disks: vec!["/store/layers/x.erofs".into()],
            layer_fs: "erofs".into(),
        };
        let e = still_there(&Emptied, "busybox", &img).unwrap_err();
        assert_eq!(e.to_string(), "image busybox: no such image");
        // An image without an id (another source) is taken as resolved.
        let no_id = crate::image::ResolvedImage { id: None, ..img };
        assert_eq!(
            still_there(&Emptied, "busybox", &no_id).unwrap(),
            no_id.layer_disks
        );
    }

    #[test]
    fn vm_and_container_specs_agree_on_disks() {
        let mut s = sample(&"c".repeat(64));
        s.config.layers = vec!["/l/0.erofs".into(), "/l/1.erofs".into()];
        s.config.tty = true;
        let assets = GuestAssets {
            kernel: "/k".into(),
            initramfs: "/i".into(),
        };
        let vm = vm_spec(&s, &assets);
        let layers = vm.layer_disk.as_ref().unwrap();
        assert_eq!(layers.layers, s.config.layers);
        assert_eq!(layers.serial, "husk-layers");
        let serials: Vec<_> = vm.disks.iter().map(|d| d.serial.clone().unwrap()).collect();
        assert_eq!(serials, ["husk-scratch"]);
        assert!(!vm.disks[0].read_only);
        assert_eq!(vm.vsock.as_ref().unwrap().cid, s.vsock_cid);
        let c = container_spec(&s, Some((24, 80)));
        c.validate().unwrap();
        match &c.rootfs {
            RootfsSpec::Overlay { layers, scratch } => {
                assert_eq!(layers.len(), 2);
                assert_eq!(
                    layers[1].disk,
                    DiskRef::Partition {
                        serial: "husk-layers".into(),
                        number: 2
                    }
                );
                assert_eq!(scratch.as_ref().unwrap().fs_type, FsType::Ext4);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.process.console_size.unwrap().cols, 80);
    }

    #[test]
    fn volumes_become_shares_and_mounts_with_matching_tags() {
        use super::super::state::Volume;
        let mut s = sample(&"f".repeat(64));
        s.config.layers = vec!["/l/0.erofs".into()];
        s.config.volumes = vec![
            Volume {
                host: "/srv/a".into(),
                guest: "/data/sub".into(),
                read_only: true,
            },
            Volume {
                host: "/srv/b".into(),
                guest: "/data".into(),
                read_only: false,
            },
        ];
        let assets = GuestAssets {
            kernel: "/k".into(),
            initramfs: "/i".into(),
        };
        let vm = vm_spec(&s, &assets);
        assert_eq!(vm.shared_dirs.len(), 2);
        assert_eq!(vm.shared_dirs[0].tag, "husk-vol-0");
        assert!(vm.shared_dirs[0].read_only && !vm.shared_dirs[1].read_only);
        assert_eq!(vm.shared_dirs[0].cache, backend::ShareCache::Never);
        let c = container_spec(&s, None);
        c.validate().unwrap();
        let m: Vec<_> = c
            .mounts
            .iter()
            .map(|m| {
                (
                    m.destination.as_str(),
                    m.source.as_str(),
                    m.options[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            m[2..],
            [
                ("/data", "husk-vol-1", "rw"),
                ("/data/sub", "husk-vol-0", "ro")
            ]
        );
        assert_eq!((m[0].0, m[1].0), ("/proc", "/sys"));
    }
}
