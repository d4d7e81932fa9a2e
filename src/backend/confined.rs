//! How both backends start their VMM confined (see `confine` and docs/security.md): the
//! uid/gid from husk's range, a cgroup sized from the VM, the namespaces it is born in and
//! a PID namespace of its own. `HUSK_JAIL=off` turns all of it off, with seccomp.

use std::process::Command;

use super::child::Guarded;
use super::{Error, VmSpec};
use crate::confine::cgroup::Limits;
use crate::confine::launch::{self, Confinement};

/// The VMM's own memory on top of the guest's, in MiB, per backend: what its cgroup allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Overhead {
    pub memory_mib: u64,
    pub pids: u64,
}

/// The confinement of `spec`'s VMM, or `None` when the backend starts it unconfined
/// (`HUSK_JAIL=off`): an id leased from husk's range and a cgroup named after it (`vm-<uid>`).
pub(super) fn for_vm(
    spec: &VmSpec,
    overhead: Overhead,
    enabled: bool,
) -> Result<Option<Confinement>, Error> {
    if !enabled {
        return Ok(None);
    }
    let lease = launch::lease_ids().map_err(|source| Error::File {
        path: launch::ID_LEASE_DIR.into(),
        source,
    })?;
    let limits = Limits {
        memory_bytes: (u64::from(spec.memory_mib) + overhead.memory_mib) << 20,
        pids: overhead.pids,
    };
    let cgroup = launch::cgroup(
        &crate::confine::cgroup::vm_name(lease.ids.uid),
        limits,
        spec.cgroup_parent.as_deref(),
    );
    Ok(Some(Confinement { cgroup, lease }))
}

/// Spawns `cmd` as `program`: with `conf`, in its cgroup, in new namespaces (`ns_flags`,
/// entered between fork and exec) and in a new PID namespace, with only `keep_caps` left in
/// its capability bounding set when given.
pub(super) fn spawn(
    program: &str,
    cmd: &mut Command,
    conf: Option<&Confinement>,
    ns_flags: libc::c_int,
    keep_caps: Option<&'static [u32]>,
) -> Result<Guarded, Error> {
    let Some(conf) = conf else {
        return Guarded::spawn(program, cmd);
    };
    let procs = match &conf.cgroup {
        Some(cg) => cg.procs_files()?,
        None => Vec::new(),
    };
    launch::in_child(cmd, procs, ns_flags, keep_caps, conf.lease.lock_fd());
    launch::in_new_pid_namespace(|| Guarded::spawn(program, cmd)).map_err(|source| {
        Error::Spawn {
            program: program.to_string(),
            source,
        }
    })?
}

/// Makes `cmd` a confined helper daemon of the VM (husk-agent-mux, husk-layer-disk): in
/// the VM's cgroup first, while still root; then new IPC, UTS and network namespaces, the VM's
/// uid/gid, no capability and `no_new_privs`.
pub(super) fn as_helper(cmd: &mut Command, conf: &Confinement) -> Result<(), Error> {
    let procs = match &conf.cgroup {
        Some(cg) => cg.procs_files()?,
        None => Vec::new(),
    };
    launch::in_child_cgroup(cmd, procs);
    launch::as_ids_in_child(
        cmd,
        conf.ids(),
        libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET,
    );
    Ok(())
}
