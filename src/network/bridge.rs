//! The host bridge guests' TAPs join (`husk0` by default), created on first use with the
//! subnet's first address, IPv4 forwarding on, and `route_localnet` so a published port
//! answers on 127.0.0.1 too (see [`super::nat`]).

use std::path::Path;

use super::cmd;
use super::ipam::Subnet;
use super::Error;

/// Whether a network interface `name` exists in this namespace.
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates bridge `name` unless it exists, gives it `subnet`'s gateway address, and turns
/// forwarding on (callers hold the network lock, so two husk commands never race here).
pub fn ensure(name: &str, subnet: &Subnet) -> Result<(), Error> {
    if !exists(name) {
        cmd::run(None, "ip", &["link", "add", name, "type", "bridge"])?;
    } else if !Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
    {
        return Err(Error::NotABridge(name.to_string()));
    }
    // Also on a bridge that exists (made by hand, or for another subnet before): the
    // guests' gateway must be on it.
    let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
    match cmd::run(None, "ip", &["addr", "add", &addr, "dev", name]) {
        Err(Error::Tool { detail, .. })
            if detail.contains("already assigned") || detail.contains("File exists") => {}
        other => {
            other?;
        }
    }
    cmd::run(None, "ip", &["link", "set", name, "up"])?;
    cmd::sysctl("net.ipv4.ip_forward", "1")?;
    cmd::sysctl(&format!("net.ipv4.conf.{name}.route_localnet"), "1")?;
    Ok(())
}
