//! VM templates for the QEMU backend: a container's VM restored from a saved VM that already
//! booted the same kernel and agent, instead of booting.
//!
//! Under TCG a boot costs most of `husk run`; restoring a booted VM costs about a quarter of
//! it (measured by `scripts/bench/template.py`). A template is one VM booted, given the same
//! devices as the containers it serves, stopped once its agent answered `Hello`, and saved:
//! its guest RAM, a memfd of husk's mapped shared, into the template's sparse `ram` file;
//! its device state (QMP `migrate` with `x-ignore-shared`, no RAM in it) into `state`. A
//! container's VM then starts QEMU with the same command line, its RAM the template's RAM
//! mapped private, and loads the device state (`migrate-incoming`, over a QMP link QEMU
//! inherits). The RAM is one sealed memfd per template ([`ram`]), kept by a
//! `husk-template-ram` process and mapped by every clone: what a clone only reads is one
//! copy in host memory for all of them, what it writes its own. Sealed (no write, no
//! resize), so a guest that took over its QEMU (which opens its RAM read-write) can change
//! nothing another clone maps.
//!
//! What a clone's guest must not keep from its template is fixed by the agent's `Restored`
//! request, sent before anything else: the wall clock, the CRNG (reseeded from host
//! entropy), the disks' cached blocks and partition tables, the NICs' MACs. Its disks have
//! the template's capacities: the layer disk is padded to a size class
//! ([`layer_disk::capacity`]), the scratch disk has one size, and both are in the key.
//!
//! Templates are keyed by everything that makes a saved VM fit a command line: QEMU's binary,
//! the kernel and the initramfs (path, inode, size, change time), the command line itself with
//! its per-VM paths and MACs set to placeholders (VM shape, accelerator, devices, kernel
//! arguments), the disks' sizes and husk's version. One is built, under a lock, by the first
//! VM that finds none for its key, and the least recently used beyond [`KEEP`] are removed.
//! A VM with a shared directory (virtio-fs cannot migrate) or no agent channel boots.
//! `HUSK_VM_TEMPLATES=off` turns templates off; a path puts them there instead of
//! [`DEFAULT_DIR`]. Anything that fails on the way (a template that cannot be built or
//! restored) is logged and the VM boots; a template that failed to restore is removed.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::process_vm::ProcessVm;
use super::qemu::{self, Boot, Inherit, QemuBackend};
use super::qmp::{Qmp, QmpError};
use super::{layer_disk, Error, TapSpec, VmHandle, VmSpec, VsockSpec};
use crate::agent::{self, AgentClient};
use crate::flock::FileLock;
use crate::util::timings;

/// `off` (or `0`) turns VM templates off; a path keeps them there.
pub const DIR_ENV: &str = "HUSK_VM_TEMPLATES";
/// Where templates are kept by default: derived data, rebuilt when missing.
pub const DEFAULT_DIR: &str = "/var/cache/husk/vm-templates";
/// The templates kept; building one more removes the least recently used.
pub const KEEP: usize = 8;
/// Bumped when what a template holds or how it is restored changes.
const FORMAT: &str = "husk-vm-template-2";
/// A template's saved state, its boot console and what it was built from.
const STATE: &str = "state";
const BOOT_LOG: &str = "boot.log";
const INFO: &str = "template.json";
/// Boot to the agent's answer, and the save, of a template VM.
const BUILD_LIMIT: Duration = Duration::from_secs(120);
/// How long a template VM's guest may take to print its boot facts after `Hello`.
const FACTS_LIMIT: Duration = Duration::from_secs(5);
/// A clone's load and its agent's answer to `Restored`.
const RESTORE_LIMIT: Duration = Duration::from_secs(60);
/// A key whose build failed is not tried again for this long (its reason is kept).
const FAILED_RETRY: Duration = Duration::from_secs(3600);

/// Why a VM did not start from a template (it boots instead).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the template VM: {0}")]
    Vm(#[source] Error),
    #[error("the template VM's agent: {0}")]
    Agent(#[source] agent::Error),
    #[error("saving the template VM: {0}")]
    Qmp(#[source] QmpError),
    #[error("saving the template VM: {0}")]
    Save(String),
    #[error("the template's RAM: {0}")]
    Ram(#[source] ram::RamError),
    #[error("loading the template VM: {0}")]
    Load(#[source] QmpError),
    #[error(
        "building template {key} failed {ago} s ago ({reason}); not tried again before {retry} s"
    )]
    Failed {
        key: String,
        ago: u64,
        reason: String,
        retry: u64,
    },
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TemplateError {
    let path = path.to_path_buf();
    move |source| TemplateError::File { what, path, source }
}

/// Where templates are kept: `$HUSK_VM_TEMPLATES`, else [`DEFAULT_DIR`]; `None` when off.
pub fn dir_from_env() -> Option<PathBuf> {
    match std::env::var_os(DIR_ENV) {
        Some(v) if v == "off" || v == "0" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(PathBuf::from(DEFAULT_DIR)),
    }
}

/// Whether `spec` may start from a template: it asks to, and has nothing a saved VM cannot
/// carry (virtio-fs) and the agent's channel the restore is finished through.
fn eligible(spec: &VmSpec) -> bool {
    spec.template && spec.shared_dirs.is_empty() && spec.vsock.is_some()
}

/// The host socket of `spec`'s agent channel ([`eligible`] VMs have one).
fn agent_socket(spec: &VmSpec) -> Result<&Path, TemplateError> {
    spec.vsock
        .as_ref()
        .map(|v| v.uds_path.as_path())
        .ok_or_else(|| TemplateError::Save("the VM has no agent channel".into()))
}

/// Starts `spec`'s VM from its template when templates are on and it is eligible, building
/// the template first if there is none. `None`: the caller boots it (why is logged).
pub(super) fn start_from_template(backend: &QemuBackend, spec: &VmSpec) -> Option<ProcessVm> {
    let dir = backend.templates.as_ref()?;
    if !eligible(spec) {
        return None;
    }
    match restore_or_build(backend, dir, spec) {
        Ok(vm) => Some(vm),
        // Said once, when the build failed; not again on every VM until it is retried.
        Err(e @ TemplateError::Failed { .. }) => {
            tracing::debug!("booting the VM instead of restoring a VM template: {e}");
            None
        }
        Err(e) => {
            tracing::warn!("booting the VM instead of restoring a VM template: {e}");
            None
        }
    }
}

fn restore_or_build(
    backend: &QemuBackend,
    dir: &Path,
    spec: &VmSpec,
) -> Result<ProcessVm, TemplateError> {
    // Root's alone: a saved guest holds what its kernel drew at boot (its KASLR offset among
    // them), the same in every clone.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(file_err("creating", dir))?;
    // One made by an older husk (or by hand) is made root's alone too.
    if std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(file_err("restricting", dir))?;
    }
    let key = key(backend, spec)?;
    let at = dir.join(&key);
    let mut built = false;
    if !at.join(STATE).exists() {
        let lock_path = lock_path(dir, &key);
        let _lock = FileLock::exclusive(&lock_path).map_err(file_err("locking", &lock_path))?;
        // Another VM may have built it while this one waited for the lock.
        if !at.join(STATE).exists() {
            // Its age says the lock is in use (prune leaves recent ones).
            let _ = File::open(&lock_path).and_then(|f| f.set_modified(SystemTime::now()));
            let result = timings::unrecorded(|| build(backend, dir, &key, spec));
            timings::mark("VM template build");
            result?;
            built = true;
        }
    }
    let restored = restore(backend, &at, spec);
    if let Err(e) = &restored {
        // A template that no longer loads (or whose guest does not answer) is rebuilt next
        // time rather than tried by every VM; one that failed the first restore after its
        // build is a build that failed (an agent without `Restored`, say): not built again
        // by every VM of the hour.
        tracing::debug!(template = %at.display(), "removing a template that failed: {e}");
        let _ = std::fs::remove_dir_all(&at);
        if built {
            record_failure(&failed_path(dir, &key), e, &spec.console_log);
        }
    }
    restored
}

/// What a key's build lock and its recorded failure are named after the key.
const LOCK_SUFFIX: &str = ".lock";
const FAILED_SUFFIX: &str = ".failed";

/// The lock a build of `key` holds.
fn lock_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}{LOCK_SUFFIX}"))
}

/// Where the last failed build of `key` is recorded.
fn failed_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}{FAILED_SUFFIX}"))
}

/// Records why `key` failed at `failed`, then the console of the VM it failed in (QEMU's own
/// errors land there too).
fn record_failure(failed: &Path, e: &TemplateError, console: &Path) {
    let console = std::fs::read_to_string(console).unwrap_or_default();
    let _ = std::fs::write(failed, format!("{e}\n--- its console:\n{console}"));
}

/// The template key of `spec`: a SHA-256 over everything a saved VM must match.
fn key(backend: &QemuBackend, spec: &VmSpec) -> Result<String, TemplateError> {
    let base = Path::new("/husk-template");
    let placeholder = template_spec(spec, base);
    let layer_socket = base.join("layers.blk");
    let args = qemu::args(
        &placeholder,
        backend.accel,
        backend.tsc_khz,
        Some(&base.join("agent.serial")),
        &[],
        spec.layer_disk.as_ref().map(|_| layer_socket.as_path()),
        Boot::Restore,
    );
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field(FORMAT);
    field(env!("CARGO_PKG_VERSION"));
    for a in &args {
        field(a);
    }
    let files = [
        Some(&backend.qemu),
        Some(&spec.kernel),
        spec.initramfs.as_ref(),
    ];
    for p in files.into_iter().flatten() {
        field(&identity(p)?);
    }
    if let Some(l) = &spec.layer_disk {
        let capacity = layer_disk::capacity(l).map_err(TemplateError::Vm)?;
        field(&format!("layer disk {capacity}"));
    }
    for d in &spec.disks {
        let len = std::fs::metadata(&d.path)
            .map_err(file_err("reading", &d.path))?
            .len();
        field(&format!("disk {len}"));
    }
    Ok(h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What identifies the file at `path`'s current content without reading it all.
fn identity(path: &Path) -> Result<String, TemplateError> {
    let real = std::fs::canonicalize(path).map_err(file_err("reading", path))?;
    let m = std::fs::metadata(&real).map_err(file_err("reading", &real))?;
    Ok(format!(
        "{} {}:{} {} {}.{}",
        real.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The MAC a template gives NIC `i` (locally administered, "husk"), and a clone's agent
/// finds that NIC by.
pub fn template_mac(i: usize) -> [u8; 6] {
    [0x02, 0x68, 0x75, 0x73, 0x6b, i as u8]
}

/// The template VM of `spec` with its files under `dir`: the same kernel, initramfs, kernel
/// arguments, shape, layers and disks (empty files of the same sizes, made by [`build`]),
/// and NICs with [`template_mac`]s and no TAP.
fn template_spec(spec: &VmSpec, dir: &Path) -> VmSpec {
    let mut t = VmSpec::new(&spec.kernel, dir.join(BOOT_LOG));
    t.initramfs = spec.initramfs.clone();
    t.cmdline = spec.cmdline.clone();
    t.vcpus = spec.vcpus;
    t.memory_mib = spec.memory_mib;
    t.layer_disk = spec.layer_disk.clone();
    t.disks = spec
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| super::DiskSpec {
            path: dir.join(format!("disk{i}")),
            read_only: d.read_only,
            serial: d.serial.clone(),
        })
        .collect();
    t.vsock = spec.vsock.as_ref().map(|_| VsockSpec {
        cid: 3,
        uds_path: dir.join("vsock"),
    });
    t.taps = (0..spec.taps.len())
        .map(|i| TapSpec::new(format!("tpl{i}"), template_mac(i)))
        .collect();
    t.template = true;
    t
}

/// Boots `spec`'s template VM in a directory of its own under `dir`, saves it once its agent
/// answered, and moves the directory to `dir/key`. A failure is remembered for
/// [`FAILED_RETRY`] so that every VM does not pay for it again.
fn build(backend: &QemuBackend, dir: &Path, key: &str, spec: &VmSpec) -> Result<(), TemplateError> {
    let failed = failed_path(dir, key);
    if let Some(e) = recent_failure(key, &failed) {
        return Err(e);
    }
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(dir)
        .map_err(file_err("creating a directory in", dir))?;
    let result = save_template(backend, work.path(), spec);
    if let Err(e) = &result {
        record_failure(&failed, e, &work.path().join(BOOT_LOG));
        return result;
    }
    let info = json!({
        "key": key,
        "format": FORMAT,
        "husk": env!("CARGO_PKG_VERSION"),
        "qemu": backend.qemu,
        "kernel": spec.kernel,
        "initramfs": spec.initramfs,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "built_in_ms": started.elapsed().as_millis() as u64,
    });
    let info_path = work.path().join(INFO);
    std::fs::write(&info_path, info.to_string()).map_err(file_err("writing", &info_path))?;
    let at = dir.join(key);
    let work = work.keep();
    std::fs::rename(&work, &at).map_err(file_err("moving the template to", &at))?;
    let _ = std::fs::remove_file(&failed);
    tracing::info!(
        template = %at.display(),
        ms = started.elapsed().as_millis() as u64,
        "VM template built"
    );
    prune(dir, KEEP);
    Ok(())
}

/// The failure recorded at `failed` if it is more recent than [`FAILED_RETRY`].
fn recent_failure(key: &str, failed: &Path) -> Option<TemplateError> {
    let m = std::fs::metadata(failed).ok()?;
    let ago = m.modified().ok()?.elapsed().unwrap_or_default();
    (ago < FAILED_RETRY).then(|| TemplateError::Failed {
        key: key.to_string(),
        ago: ago.as_secs(),
        reason: std::fs::read_to_string(failed)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        retry: FAILED_RETRY.as_secs(),
    })
}

/// Boots the template VM of `spec` in `work` and saves it to `work/state`.
fn save_template(backend: &QemuBackend, work: &Path, spec: &VmSpec) -> Result<(), TemplateError> {
    let tspec = template_spec(spec, work);
    for (d, t) in spec.disks.iter().zip(&tspec.disks) {
        let len = std::fs::metadata(&d.path)
            .map_err(file_err("reading", &d.path))?
            .len();
        File::create(&t.path)
            .and_then(|f| f.set_len(len))
            .map_err(file_err("creating", &t.path))?;
    }
    let qmp_path = work.join("qmp.sock");
    let memory = ram::new_memfd(ram_len(spec)).map_err(TemplateError::Ram)?;
    let inherit = Inherit {
        ram: Some(&memory),
        ..Inherit::default()
    };
    let vm = backend
        .launch(&tspec, Boot::Template { qmp: &qmp_path }, inherit)
        .map_err(TemplateError::Vm)?;
    vm.wait_vsock_ready(BUILD_LIMIT)
        .map_err(TemplateError::Vm)?;
    let uds = agent_socket(&tspec)?;
    let running = || matches!(vm.try_wait(), Ok(None));
    // Its agent has answered Hello and printed the boot facts: the guest is idle, as every
    // clone will find it. (An agent that never says the facts' end is saved all the same,
    // its clones printing what is left.)
    let agent =
        AgentClient::connect_while(uds, BUILD_LIMIT, running).map_err(TemplateError::Agent)?;
    if let Err(e) = vm.wait_console_line(husk_protocol::GUEST_FACTS_END_MARKER, FACTS_LIMIT) {
        tracing::debug!("saving the template VM before its boot facts ended: {e}");
    }
    let mut q = Qmp::connect(&qmp_path, BUILD_LIMIT).map_err(TemplateError::Qmp)?;
    q.execute("stop", json!({})).map_err(TemplateError::Qmp)?;
    ignore_shared_ram(&mut q).map_err(TemplateError::Qmp)?;
    let state_path = work.join(STATE);
    let state = File::create(&state_path).map_err(file_err("creating", &state_path))?;
    q.pass_fd("state", &state).map_err(TemplateError::Qmp)?;
    q.execute("migrate", json!({ "uri": "fd:state" }))
        .map_err(TemplateError::Qmp)?;
    let deadline = Instant::now() + BUILD_LIMIT;
    loop {
        let r = q
            .execute("query-migrate", json!({}))
            .map_err(TemplateError::Qmp)?;
        match r.get("status").and_then(|s| s.as_str()) {
            Some("completed") => break,
            Some(s @ ("failed" | "cancelled")) => {
                let why = r.get("error-desc").and_then(|d| d.as_str()).unwrap_or("");
                return Err(TemplateError::Save(format!("migration {s}: {why}")));
            }
            _ if Instant::now() > deadline => {
                return Err(TemplateError::Save(format!(
                    "not done within {} s",
                    BUILD_LIMIT.as_secs()
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    drop(agent);
    drop(q);
    let _ = vm.kill();
    let _ = std::fs::remove_file(&qmp_path);
    state.sync_all().map_err(file_err("writing", &state_path))?;
    // The guest is stopped: its RAM is what every clone starts from.
    let saved = ram::save(&memory, &work.join(ram::RAM_FILE)).map_err(TemplateError::Ram)?;
    tracing::debug!(bytes = saved, "template RAM saved");
    for t in &tspec.disks {
        let _ = std::fs::remove_file(&t.path);
    }
    Ok(())
}

/// Starts `spec`'s VM from the template at `at` and has its agent take it over: its own
/// time, entropy, disks and MACs.
fn restore(backend: &QemuBackend, at: &Path, spec: &VmSpec) -> Result<ProcessVm, TemplateError> {
    let state_path = at.join(STATE);
    let state = File::open(&state_path).map_err(file_err("opening", &state_path))?;
    let keeper = || super::husk_vmm::find_husk_binary(ram::KEEPER_PROGRAM, ram::KEEPER_ENV).ok();
    let memory = ram::obtain(at, ram_len(spec), keeper).map_err(TemplateError::Ram)?;
    timings::mark("VM template RAM");
    let (qmp, qemu_end) = UnixStream::pair().map_err(|e| TemplateError::Load(QmpError::Io(e)))?;
    let inherit = Inherit {
        ram: Some(&memory),
        state: Some(&state),
        qmp: Some(&qemu_end),
    };
    let vm = backend
        .launch(spec, Boot::Restore, inherit)
        .map_err(TemplateError::Vm)?;
    drop((state, memory, qemu_end));
    let load = || -> Result<(), QmpError> {
        let mut q = Qmp::over(qmp, RESTORE_LIMIT)?;
        ignore_shared_ram(&mut q)?;
        let uri = format!("fd:{}", qemu::STATE_FD);
        q.execute("migrate-incoming", json!({ "uri": uri }))?;
        Ok(())
    };
    // QEMU loads the state after this answer, and runs the guest once loaded; QMP closed.
    load().map_err(TemplateError::Load)?;
    note_on_console(&spec.console_log, at);
    let uds = agent_socket(spec)?;
    let running = || matches!(vm.try_wait(), Ok(None));
    let agent = AgentClient::connect_while(uds, RESTORE_LIMIT, running).map_err(|e| {
        match vm.try_wait() {
            Ok(Some(status)) => TemplateError::Vm(Error::ExitedBeforeReady {
                status,
                log: spec.console_log.clone(),
                last_line: None,
            }),
            _ => TemplateError::Agent(e),
        }
    })?;
    timings::mark("VM template load");
    let macs = spec
        .taps
        .iter()
        .enumerate()
        .map(|(i, t)| husk_protocol::MacPair {
            template: template_mac(i),
            new: t.mac,
        })
        .collect();
    agent
        .restored(agent::restored_request(macs).map_err(TemplateError::Agent)?)
        .map_err(TemplateError::Agent)?;
    drop(agent);
    // Its use keeps it from being pruned first.
    let _ = File::open(at).and_then(|f| f.set_modified(SystemTime::now()));
    timings::mark("VM template restore");
    Ok(vm)
}

/// The bytes of guest RAM of `spec`'s VM.
fn ram_len(spec: &VmSpec) -> u64 {
    u64::from(spec.memory_mib) << 20
}

/// Leaves the guest's RAM out of the saved state, or expects it left out when loading: it
/// is the template's memfd, shared ([`ram`]).
fn ignore_shared_ram(q: &mut Qmp) -> Result<(), QmpError> {
    let caps = json!([{ "capability": "x-ignore-shared", "state": true }]);
    q.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
        .map(drop)
}

/// Says on the VM's console where its boot log is: this guest never booted.
fn note_on_console(console_log: &Path, at: &Path) {
    let line = format!(
        "husk: restored from VM template {} (its boot log: {})\n",
        at.display(),
        at.join(BOOT_LOG).display()
    );
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(console_log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

/// Removes all but the `keep` most recently used templates under `dir`, build directories
/// left by a builder that died, failures past [`FAILED_RETRY`], and the locks of keys with
/// no template that no build used for a while.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut templates = Vec::new();
    let mut locks = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(m) = e.metadata() else { continue };
        let used = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let age = used.elapsed().unwrap_or_default();
        if name.starts_with(".build-") {
            // One being built holds its key's lock for at most BUILD_LIMIT twice over.
            if age > 4 * BUILD_LIMIT {
                let _ = std::fs::remove_dir_all(e.path());
            }
        } else if m.is_dir() {
            templates.push((used, e.path()));
        } else if name.ends_with(FAILED_SUFFIX) {
            if age > FAILED_RETRY {
                let _ = std::fs::remove_file(e.path());
            }
        } else if let Some(key) = name.strip_suffix(LOCK_SUFFIX) {
            // A builder touches its lock once it holds it: an old one is no build's.
            if age > 4 * BUILD_LIMIT {
                locks.push((key.to_string(), e.path()));
            }
        }
    }
    templates.sort_by_key(|t| std::cmp::Reverse(t.0));
    for (_, old) in templates.into_iter().skip(keep) {
        tracing::debug!(template = %old.display(), "removing a least recently used VM template");
        let _ = std::fs::remove_dir_all(&old);
    }
    for (key, lock) in locks {
        if !dir.join(&key).exists() {
            let _ = std::fs::remove_file(lock);
        }
    }
}

pub mod cache;
pub mod ram;

#[cfg(test)]
mod tests;
