//! The host bridge guests' TAPs join (`husk0` by default), created on first use with the
//! subnet's first address, IPv4 forwarding on, and `route_localnet` so a published port
//! answers on 127.0.0.1 too (see [`super::nat`]).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::cmd;
use super::ipam::Subnet;
use super::Error;

/// Whether a network interface `name` exists in this namespace.
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates bridge `name` unless it exists, gives it `subnet`'s gateway address, and turns
/// forwarding on. Callers hold their root's network lock; the bridge is the host's, so a
/// command of another husk root (another lock) may make it at the same moment.
pub fn ensure(name: &str, subnet: &Subnet) -> Result<(), Error> {
    create(name)?;
    // Also on a bridge that exists (made by hand, or for another subnet before): the
    // guests' gateway must be on it. Looked up first: each `ip` run costs milliseconds on
    // every container start.
    if !has_address(name, subnet.gateway()) {
        let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
        match cmd::run(None, "ip", &["addr", "add", &addr, "dev", name]) {
            Err(Error::Tool { detail, .. })
                if detail.contains("already assigned") || detail.contains("File exists") => {}
            other => {
                other?;
            }
        }
    }
    if !is_up(name) {
        cmd::run(None, "ip", &["link", "set", name, "up"])?;
    }
    cmd::sysctl("net.ipv4.ip_forward", "1")?;
    cmd::sysctl(&format!("net.ipv4.conf.{name}.route_localnet"), "1")?;
    Ok(())
}

/// Makes bridge `name` unless a bridge of that name exists (or another command made it
/// meanwhile); an interface of that name that is no bridge is an error.
fn create(name: &str) -> Result<(), Error> {
    if !exists(name) {
        match cmd::run(None, "ip", &["link", "add", name, "type", "bridge"]) {
            Ok(_) => {}
            Err(Error::Tool { detail, .. }) if detail.contains("File exists") => {}
            Err(e) => return Err(e),
        }
    }
    match is_bridge(name) {
        true => Ok(()),
        false => Err(Error::NotABridge(name.to_string())),
    }
}

fn is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
}

/// An interface `name` that exists and is no bridge is an error; a missing one is not
/// ([`ensure`] makes it).
pub fn refuse_non_bridge(name: &str) -> Result<(), Error> {
    match exists(name) && !is_bridge(name) {
        true => Err(Error::NotABridge(name.to_string())),
        false => Ok(()),
    }
}

/// `SIOCBRADDIF` (linux/sockios.h), which the libc crate lacks: adds the interface whose
/// index is in the `ifreq` to the bridge it names.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Puts TAP `tap` on bridge `bridge` and brings it up: the bridge's and the link's ioctls on
/// one socket, no `ip` run.
pub fn join(tap: &str, bridge: &str) -> Result<(), Error> {
    let failed = |source| Error::Join {
        tap: tap.to_string(),
        bridge: bridge.to_string(),
        source,
    };
    let index = nix::net::if_::if_nametoindex(tap).map_err(|e| failed(e.into()))?;
    // SAFETY: socket takes no pointers; the fd it returns is owned here at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ioctl = |request: libc::c_ulong, ifr: &mut libc::ifreq| {
        // SAFETY: each request used here reads (and SIOCGIFFLAGS writes) one ifreq, which
        // `ifr` is.
        match unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr as *mut libc::ifreq) } {
            0 => Ok(()),
            _ => Err(failed(std::io::Error::last_os_error())),
        }
    };
    let mut on_bridge = ifreq_for(bridge);
    on_bridge.ifr_ifru.ifru_ifindex = index as libc::c_int;
    ioctl(SIOCBRADDIF, &mut on_bridge)?;
    let mut link = ifreq_for(tap);
    ioctl(libc::SIOCGIFFLAGS, &mut link)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { link.ifr_ifru.ifru_flags };
    link.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut link)
}

/// A zeroed `ifreq` naming `name` (callers pass valid interface names: under 16 bytes).
fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name and a union of integers, arrays, sockaddrs and a
    // pointer, null when zeroed); all zeroes is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    ifr
}

/// Whether interface `name` is administratively up (`IFF_UP` in its sysfs flags).
fn is_up(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & libc::IFF_UP as u32 != 0)
}

/// Whether interface `name` holds IPv4 address `addr`.
fn has_address(name: &str, addr: Ipv4Addr) -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .any(|ip| ip == addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_up_and_holds_127_0_0_1() {
        assert!(is_up("lo"));
        assert!(has_address("lo", Ipv4Addr::LOCALHOST));
        assert!(!has_address("lo", Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!is_up("husk-no-such-if"));
    }

    /// Two roots' commands making the host's bridge at once: whoever comes second finds it
    /// made and goes on; a non-bridge of that name is still refused.
    #[test]
    fn a_bridge_made_meanwhile_is_taken_and_a_non_bridge_refused() {
        // SAFETY: geteuid only reads this process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            println!("NOT RUN: a_bridge_made_meanwhile_is_taken: needs root (ip link add)");
            return;
        }
        let (br, tap) = ("hk-ut-br0", "hk-ut-tap0");
        let del = |n: &str| {
            let _ = cmd::run(None, "ip", &["link", "del", n]);
        };
        del(br);
        del(tap);
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || create(br)))
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        cmd::run(None, "ip", &["tuntap", "add", "dev", tap, "mode", "tap"]).unwrap();
        let refused = create(tap);
        let refused_early = refuse_non_bridge(tap);
        let taken = (refuse_non_bridge(br), refuse_non_bridge("hk-ut-none0"));
        del(br);
        del(tap);
        for r in results {
            r.expect("every racing create succeeds");
        }
        assert!(
            matches!(refused, Err(Error::NotABridge(ref n)) if n == tap),
            "{refused:?}"
        );
        assert!(
            matches!(refused_early, Err(Error::NotABridge(_))),
            "{refused_early:?}"
        );
        assert!(
            taken.0.is_ok() && taken.1.is_ok(),
            "a bridge and a missing name pass"
        );
    }

    /// The TAP ends on the bridge and up, and a missing TAP is one clear error.
    #[test]
    fn a_tap_joins_its_bridge_up() {
        // SAFETY: geteuid only reads this process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            println!("NOT RUN: a_tap_joins_its_bridge_up: needs root (ip link add)");
            return;
        }
        let (br, tap) = ("hk-ut-br1", "hk-ut-tap1");
        let _ = cmd::run(None, "ip", &["link", "del", br]);
        create(br).unwrap();
        let fd = super::super::tap::open(tap).unwrap();
        let joined = join(tap, br);
        let master = std::fs::read_link(format!("/sys/class/net/{tap}/master"));
        let up = is_up(tap);
        let missing = join("hk-ut-none1", br);
        drop(fd);
        let _ = cmd::run(None, "ip", &["link", "del", br]);
        joined.unwrap();
        assert!(master.unwrap().ends_with(br));
        assert!(up, "{tap} is up");
        let e = missing.unwrap_err().to_string();
        assert!(
            e.starts_with("putting hk-ut-none1 on bridge hk-ut-br1: "),
            "{e}"
        );
    }
}
