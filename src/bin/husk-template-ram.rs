//! husk-template-ram: keeps one VM template's RAM, a sealed memfd, and hands it to each
//! clone that asks (see `husk::backend::template::ram`): every clone of the template then
//! maps the same physical pages for what it only reads.
//!
//! husk starts it detached, as an id of its own, with no capability and `no_new_privs`, and hands it
//! everything as inherited descriptors: the memfd (`--ram-fd`), a listening unix socket in
//! the root-only templates directory (`--socket-fd`) and the template's directory
//! (`--dir-fd`), and the lease on the id of husk's range it runs as (`--lease-fd`), held
//! while it lives. It reads nothing from its clients: each connection gets one byte and the
//! memfd. Before it serves it confines itself to the few syscalls that takes (seccomp; any
//! other kills it). It exits 0 once the template's directory is removed or no clone asked for
//! `--idle-secs`; 1 with one line on stderr for any failure.

use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use clap::Parser;
use husk::backend::template::ram;
use husk::util::inherited;

/// Keep a VM template's RAM and hand it to its clones.
#[derive(Debug, Parser)]
#[command(name = "husk-template-ram", version)]
struct Args {
    /// The template's RAM: a sealed memfd, inherited.
    #[arg(long)]
    ram_fd: RawFd,
    /// A listening unix socket, inherited.
    #[arg(long)]
    socket_fd: RawFd,
    /// The template's directory, inherited: its removal ends the keeper.
    #[arg(long)]
    dir_fd: RawFd,
    /// The lease on the id it runs as, inherited: held while it lives.
    #[arg(long)]
    lease_fd: RawFd,
    /// Exit after this many seconds with no clone asking.
    #[arg(long, default_value_t = ram::KEEPER_IDLE.as_secs())]
    idle_secs: u64,
}

fn main() {
    let args = Args::parse();
    let taken = inherited::take(&[
        (args.ram_fd, "RAM"),
        (args.socket_fd, "socket"),
        (args.dir_fd, "directory"),
        (args.lease_fd, "lease"),
    ]);
    let result = taken.map_err(anyhow::Error::from).and_then(|fds| {
        let [ram, socket, dir, _lease]: [_; 4] = fds.try_into().expect("four descriptors taken");
        ram::confine_keeper()?;
        ram::serve(
            &File::from(ram),
            &UnixListener::from(socket),
            &File::from(dir),
            Duration::from_secs(args.idle_secs),
        )
        .map_err(anyhow::Error::from)
    });
    if let Err(e) = result {
        eprintln!("husk-template-ram: {e:#}");
        std::process::exit(1);
    }
}
