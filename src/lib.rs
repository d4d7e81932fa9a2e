//! husk: containers in KVM microVMs.
//!
//! - [`vmm`]: builds and runs one microVM (KVM, x86_64).
//! - [`devices`]: the buses and the devices husk-vmm emulates.
//! - [`agent`]: the host client of the guest agent, over the VM's vsock socket.
//! - [`backend`]: the VM-backend seam (husk-vmm or QEMU) the runtime starts VMs through.
//! - [`image`]: the image store: blobs, references, import, pull, layers as erofs disks.
//! - [`network`]: container networks on the host: bridge, TAPs, addresses, NAT, `-p`,
//!   engines' network namespaces.
//! - [`pod`]: the container core every front-end drives: a VM holding one or more
//!   containers, guest assets, stdio attach, the ready pipe of re-executed holders.
//! - [`runtime`]: the `husk` CLI's containers: state on disk, lifecycle, the monitor of
//!   detached ones.
//! - [`ociruntime`]: `husk-runtime`, the runc-compatible OCI runtime: bundles, the VM holder
//!   process per container, runc's commands.
//! - [`confine`]: the VMM's seccomp filters per thread, its jail, and the host side of both
//!   (uids, cgroups, namespaces) for husk-vmm and QEMU.
//! - [`cli`]: the command lines of `husk` and `husk-runtime` (clap definitions, and `husk`'s
//!   commands).
//! - [`flock`]: `flock(2)` lock files for the stores several processes change at once.
//! - [`util`]: helpers written once: `which`, atomic file writes, time stamps.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod backend;
pub mod cli;
pub mod confine;
pub mod devices;
pub mod flock;
pub mod image;
pub mod network;
pub mod ociruntime;
pub mod pod;
pub mod runtime;
pub mod shim;
pub mod util;
pub mod vmm;
