//! husk-agent-mux: the host side of the agent channel of husk's QEMU backend. The guest's
//! agent listens on a virtio-serial port (`husk.agent`); this serves Firecracker's hybrid
//! vsock protocol on a unix socket (`CONNECT <port>\n` → `OK <port>\n`, then the stream) and
//! carries every such connection over that one port ([`husk_mux`]), so husk's clients reach
//! the agent the same way as through husk-vmm's vsock device.
//!
//! The QEMU backend starts it confined (the VM's own uid, no capabilities, its own
//! namespaces, the VM's cgroup) and hands it its two sockets already listening: `--listen-fd`
//! (clients) and `--link-fd` (QEMU's chardev connects there, once). `--listen PATH` and
//! `--link PATH` bind them by hand. It exits 0 when QEMU hangs up; 1 with one line on stderr
//! for any failure, the guest's breaches of the protocol included.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use husk::util::inherited;

/// Carry unix-socket connections to the guest agent over one serial link.
#[derive(Debug, Parser)]
#[command(name = "husk-agent-mux", version)]
struct Args {
    /// The clients' listening unix socket, inherited.
    #[arg(long, conflicts_with = "listen")]
    listen_fd: Option<RawFd>,
    /// Or bind it here (replacing a stale socket file).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// The listening unix socket QEMU's chardev connects to, inherited.
    #[arg(long, conflicts_with = "link")]
    link_fd: Option<RawFd>,
    /// Or bind that one here.
    #[arg(long)]
    link: Option<PathBuf>,
}

fn main() {
    // A client gone mid-write is an EPIPE on its stream, not the end of every stream.
    // SAFETY: signal() only changes this process's disposition of SIGPIPE to a valid one.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if let Err(e) = run(Args::parse()) {
        eprintln!("husk-agent-mux: {e:#}");
        std::process::exit(1);
    }
}

fn bind(path: &Path) -> anyhow::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    Ok(l.into())
}

fn run(args: Args) -> anyhow::Result<()> {
    let named: Vec<(RawFd, &str)> = [(args.listen_fd, "listen"), (args.link_fd, "link")]
        .into_iter()
        .filter_map(|(fd, what)| fd.map(|fd| (fd, what)))
        .collect();
    let mut taken = inherited::take(&named)?.into_iter();
    let mut socket = |fd: Option<RawFd>, path: Option<&Path>, what: &str| match (fd, path) {
        (Some(_), _) => taken.next().context("an inherited descriptor went missing"),
        (None, Some(p)) => bind(p),
        (None, None) => bail!("give --{what}-fd or --{what}"),
    };
    let listen = socket(args.listen_fd, args.listen.as_deref(), "listen")?;
    let link = socket(args.link_fd, args.link.as_deref(), "link")?;
    // QEMU connects once, at its start; no one else may take its place afterwards.
    let (qemu, _) = UnixListener::from(link)
        .accept()
        .context("waiting for QEMU's connection")?;
    husk_mux::host::run(qemu.into(), listen)?;
    Ok(())
}
