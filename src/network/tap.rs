//! TAP devices: created by opening `/dev/net/tun` (in whichever network namespace the
//! caller is in), so the device lives exactly as long as some process holds its fd. The VMM
//! inherits the fd; when the VMM and its monitor are gone, even by `kill -9`, the kernel
//! removes the TAP, and no sweep is needed for it.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::Error;

/// Opens (creating) TAP `name` in the calling thread's network namespace, with a virtio-net
/// header (`IFF_VNET_HDR`), as QEMU and husk-vmm expect.
pub fn open(name: &str) -> Result<OwnedFd, Error> {
    let dev = Path::new("/dev/net/tun");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|source| Error::Io {
            path: dev.to_path_buf(),
            source,
        })?;
    // struct ifreq: 16 bytes of name, then a union whose first member is the short flags.
    let mut ifr = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 15 {
        return Err(Error::Tap {
            name: name.to_string(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    ifr[..bytes.len()].copy_from_slice(bytes);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is large enough to hold.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(Error::Tap {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(f.into())
}

/// Opens TAP `name` inside the network namespace at `netns` (a helper thread joins it, so
/// this process stays where it is).
pub fn open_in(netns: &Path, name: &str) -> Result<OwnedFd, Error> {
    let ns = std::fs::File::open(netns).map_err(|source| Error::Io {
        path: netns.to_path_buf(),
        source,
    })?;
    let name = name.to_string();
    let path = netns.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: setns on this helper thread only; it ends right after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::Io {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        open(&name)
    })
    .join()
    .map_err(|_| Error::Tap {
        name: "?".into(),
        source: std::io::Error::other("helper thread panicked"),
    })?
}

/// The TAP name of a container: `hk` + 12 hex digits of its id (15 bytes at most).
pub fn name_for(id: &str) -> String {
    format!("hk{}", &id[..12.min(id.len())])
}

/// The guest MAC for address `ip`: locally administered, `02:68:6b` ("hk") + the last three
/// bytes of the address, so it is unique on its bridge.
pub fn mac_for(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x68, 0x6b, o[1], o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_are_derived() {
        assert_eq!(name_for(&"ab".repeat(32)), "hkabababababab");
        assert!(name_for(&"a".repeat(64)).len() <= 15);
        let m = mac_for("172.31.250.9".parse().unwrap());
        assert_eq!(m, [2, 0x68, 0x6b, 31, 250, 9]);
        assert_eq!(m[0] & 1, 0, "unicast");
    }

    /// A TAP exists while its fd is open and is gone after (root only).
    #[test]
    fn taps_live_as_long_as_their_fd() {
        let name = format!("hkt{}", std::process::id() % 100000);
        match open(&name) {
            Ok(fd) => {
                assert!(super::super::bridge::exists(&name));
                drop(fd);
                assert!(!super::super::bridge::exists(&name));
            }
            Err(e) => eprintln!("NOT RUN: taps_live_as_long_as_their_fd: {e}"),
        }
    }
}
