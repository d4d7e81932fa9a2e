//! Confining the VMM: what stands between a hostile guest that broke its device models and
//! the host (see docs/security.md).
//!
//! - [`seccomp`], [`syscalls`]: a seccomp filter per husk-vmm thread kind, and the SIGSYS
//!   line a forbidden syscall ends husk-vmm with;
//! - [`threads`]: starting filtered threads, device workers through one spawner thread;
//! - [`jail`]: husk-vmm's own jail, entered once the VM is built (namespaces, `pivot_root`
//!   into an empty root, rlimits, an unprivileged uid, no capabilities, `no_new_privs`);
//! - [`launch`], [`cgroup`]: the host side, for husk-vmm and QEMU alike: uid/gid from husk's
//!   range, a cgroup per VM, namespaces and a PID namespace at spawn.

pub mod cgroup;
pub mod jail;
pub mod launch;
pub mod seccomp;
mod syscall_names;
pub mod syscalls;
pub mod thread_kind;
pub mod threads;
