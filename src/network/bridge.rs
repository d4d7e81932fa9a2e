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

/// Creates bridge `name` with `subnet`'s gateway address unless it exists (callers hold the
/// network lock, so two husk commands never race here), and turns forwarding on.
pub fn ensure(name: &str, subnet: &Subnet) -> Result<(), Error> {
    if !exists(name) {
        cmd::run(None, "ip", &["link", "add", name, "type", "bridge"])?;
        let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
        cmd::run(None, "ip", &["addr", "add", &addr, "dev", name])?;
    } else if !Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
    {
        return Err(Error::NotABridge(name.to_string()));
    }
    cmd::run(None, "ip", &["link", "set", name, "up"])?;
    cmd::sysctl("net.ipv4.ip_forward", "1")?;
    cmd::sysctl(&format!("net.ipv4.conf.{name}.route_localnet"), "1")?;
    Ok(())
}
