//! husk-layer-disk: serves a container's read-only image layers, as one composite GPT disk
//! (partition N = layer N-1, bottom first), as a read-only NBD export to QEMU's `nbd` block
//! driver behind a virtio-blk device. husk-vmm serves the same composite disk in-process;
//! this is how QEMU gets it too, so an image of any layer count up to 127 takes one
//! virtio-mmio slot on either backend. NBD, not vhost-user: the server never maps guest
//! memory, so a VM whose RAM is private to QEMU (one restored from a template) reads it too.
//!
//! The QEMU backend starts it confined (the VM's own uid, no capabilities, its own
//! namespaces, the VM's cgroup) and hands it everything it needs as open file descriptors: a
//! listening unix socket (`--socket-fd`) and each layer file (`--layer-fd`, read-only). It
//! reaches no path of its own, so the image store stays root's. `--socket PATH` and
//! `--layer PATH` are for running it by hand. It serves one client (QEMU) and exits 0 when
//! that one hangs up; 1 with one line on stderr for any failure.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use husk::devices::nbd_export;
use husk::devices::virtio::block::composite::{self, CompositeDisk};
use husk::util::inherited;

/// Serve image layers as one composite disk, a read-only NBD export, to one client.
#[derive(Debug, Parser)]
#[command(name = "husk-layer-disk", version)]
struct Args {
    /// A listening unix socket, inherited.
    #[arg(long, conflicts_with = "socket")]
    socket_fd: Option<RawFd>,
    /// Or bind and listen here (replacing a stale socket file).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// A layer file open for reading, inherited; bottom layer first.
    #[arg(long = "layer-fd")]
    layer_fds: Vec<RawFd>,
    /// Or a layer file by path; bottom layer first.
    #[arg(long = "layer", conflicts_with = "layer_fds")]
    layers: Vec<PathBuf>,
    /// Pad the disk with zeros to this many bytes (a size class: a VM restored from a
    /// template keeps the capacity its template probed); less than the layers need is ignored.
    #[arg(long)]
    capacity: Option<u64>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("husk-layer-disk: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let named: Vec<(RawFd, &str)> = args
        .layer_fds
        .iter()
        .map(|&fd| (fd, "layer"))
        .chain(args.socket_fd.map(|fd| (fd, "socket")))
        .collect();
    let mut taken = inherited::take(&named)?.into_iter();
    let mut layers = Vec::new();
    let mut files = Vec::new();
    if args.layer_fds.is_empty() {
        for l in composite::indexed_layers(&args.layers) {
            let f = File::open(&l.path)
                .with_context(|| format!("opening layer {}", l.path.display()))?;
            files.push(f);
            layers.push(l);
        }
    } else {
        for (i, (&fd, owned)) in args.layer_fds.iter().zip(taken.by_ref()).enumerate() {
            files.push(File::from(owned));
            layers.push(composite::layer(
                format!("fd {fd}"),
                &composite::layer_label(i),
            ));
        }
    }
    let disk = CompositeDisk::from_files_padded(&layers, files, args.capacity.unwrap_or(0))?;
    let listener = match (args.socket_fd, &args.socket) {
        (Some(_), _) => UnixListener::from(
            taken
                .next()
                .context("an inherited descriptor went missing")?,
        ),
        (None, Some(p)) => {
            let _ = std::fs::remove_file(p);
            UnixListener::bind(p).with_context(|| format!("listening on {}", p.display()))?
        }
        (None, None) => bail!("give --socket-fd or --socket"),
    };
    let (conn, _) = listener.accept().context("accepting the NBD client")?;
    // One VM, one client: nothing else may connect once it has.
    drop(listener);
    nbd_export::serve(conn, &disk)?;
    Ok(())
}
