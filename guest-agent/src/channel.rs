//! Where the host's connections come from: husk-vmm gives the guest a virtio-vsock device
//! (the agent listens on its port), QEMU a virtio-serial port named [`PORT_NAME`] instead,
//! over which husk-agent-mux carries every connection ([`husk_mux`]; QEMU 7.2 cannot migrate
//! a vhost-user vsock device, and a serial port migrates). Either way the server gets one
//! socket per connection.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::AGENT_VSOCK_PORT;

use crate::vsock::{self, VsockStream};

/// The virtio-serial port QEMU names for the agent (`virtserialport,name=husk.agent`).
pub const PORT_NAME: &str = "husk.agent";
/// How long a guest with a virtio console device but no vsock waits for the port's name to
/// appear (the host names ports after the driver has probed).
const PORT_WAIT: Duration = Duration::from_secs(5);
const VIRTIO_ID_CONSOLE: &str = "0x0003";
const VIRTIO_ID_VSOCK: &str = "0x0013";

/// The serial channel's flusher, once it serves.
static FLUSHER: std::sync::OnceLock<husk_mux::guest::Flusher> = std::sync::OnceLock::new();
/// How long the agent waits for its last answer to leave before it ends the VM.
const FLUSH_WAIT: Duration = Duration::from_millis(500);

/// Waits until what the agent wrote to its connections is on its way to the host: on the
/// serial channel, until the mux thread has put it on the port (a reset right after an
/// answer would otherwise lose it); a vsock socket's write has already queued it.
pub fn flush() {
    if let Some(f) = FLUSHER.get() {
        if !f.flush(FLUSH_WAIT) {
            say!(
                "husk-agent: the host channel did not take the last answers within {FLUSH_WAIT:?}"
            );
        }
    }
}

pub enum Listener {
    Vsock(vsock::Listener),
    Serial(husk_mux::guest::Acceptor),
}

impl Listener {
    pub fn accept(&self) -> std::io::Result<VsockStream> {
        match self {
            Listener::Vsock(l) => l.accept(),
            Listener::Serial(a) => a.accept().map(VsockStream::from),
        }
    }
}

/// The serial port's device node when this VM has one and no vsock device.
pub fn serial_port() -> Option<PathBuf> {
    let ids = virtio_ids(Path::new("/sys/bus/virtio/devices"));
    if ids.iter().any(|i| i == VIRTIO_ID_VSOCK) || !ids.iter().any(|i| i == VIRTIO_ID_CONSOLE) {
        return None;
    }
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        if let Some(dev) = find_port(Path::new("/sys/class/virtio-ports"), PORT_NAME) {
            return Some(Path::new("/dev").join(dev));
        }
        if Instant::now() >= deadline {
            say!("husk-agent: no virtio-serial port named {PORT_NAME} within {PORT_WAIT:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts the mux on the serial port `dev`.
pub fn open_serial(dev: &Path) -> std::io::Result<Listener> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)?;
    let link = OwnedFd::from(file);
    let acceptor = husk_mux::guest::start(link, AGENT_VSOCK_PORT, |e| {
        say!("husk-agent: the host channel's mux ended: {e}");
    })
    .map_err(std::io::Error::other)?;
    let _ = FLUSHER.set(acceptor.flusher());
    Ok(Listener::Serial(acceptor))
}

/// The `device` ids of the virtio devices under `dir`.
fn virtio_ids(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("device")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// The port (`vport0p1`) under `dir` (`/sys/class/virtio-ports`) whose name is `name`.
fn find_port(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim_end() == name).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_named_port_and_device_ids() {
        let tmp = tempfile::tempdir().unwrap();
        for (port, name) in [
            ("vport0p0", ""),
            ("vport0p1", "husk.agent\n"),
            ("vport1p1", "other\n"),
        ] {
            std::fs::create_dir(tmp.path().join(port)).unwrap();
            std::fs::write(tmp.path().join(port).join("name"), name).unwrap();
        }
        assert_eq!(
            find_port(tmp.path(), PORT_NAME).as_deref(),
            Some("vport0p1")
        );
        assert_eq!(find_port(tmp.path(), "nope"), None);
        let devs = tempfile::tempdir().unwrap();
        for (d, id) in [("virtio0", "0x0003\n"), ("virtio1", "0x0002\n")] {
            std::fs::create_dir(devs.path().join(d)).unwrap();
            std::fs::write(devs.path().join(d).join("device"), id).unwrap();
        }
        let mut ids = virtio_ids(devs.path());
        ids.sort();
        assert_eq!(ids, ["0x0002", "0x0003"]);
    }
}
