//! The kinds of threads husk-vmm runs: each has its own seccomp allow-list
//! ([`super::syscalls`]) and installs it itself ([`super::seccomp::install`]).

/// The kinds of threads husk-vmm runs, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ThreadKind {
    /// The main thread: the event loop (serial input, exit requests, the watchdog).
    Main,
    /// A vCPU: KVM_RUN and the device registers the guest reads and writes.
    Vcpu,
    /// A virtio-blk worker: requests from the guest's queue to its disk file.
    Block,
    /// The virtio-vsock worker: packets to and from host unix sockets.
    Vsock,
    /// A virtio-net worker: frames to and from the TAP.
    Net,
    /// The vhost-user frontend of a virtio-fs device: the relay to virtiofsd.
    Fs,
    /// The thread that starts device workers (they inherit its filter and add their own).
    Spawner,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Block,
        ThreadKind::Vsock,
        ThreadKind::Net,
        ThreadKind::Fs,
        ThreadKind::Spawner,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Block => "block",
            ThreadKind::Vsock => "vsock",
            ThreadKind::Net => "net",
            ThreadKind::Fs => "fs",
            ThreadKind::Spawner => "spawner",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
