//! A network namespace the test owns (`ip netns add`, deleted on drop) and a way to run
//! code inside it: setns(CLONE_NEWNET) only changes the calling thread, so a helper thread
//! enters the namespace, creates what is asked (a TAP fd, a socket) and hands it back — fds
//! keep their namespace wherever they are used afterwards.

#![allow(dead_code)] // each test file uses part of it

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why the net tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces and TAP devices)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist (tun module not loaded)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the ip command (iproute2) is not installed".into()),
    }
}

pub fn ip(ns: Option<&str>, args: &[&str]) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["netns", "exec", ns, "ip"]);
    }
    let out = cmd.args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} in {ns:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "husk-nt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(None, &["netns", "add", &name]);
        ip(Some(&name), &["link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on an fd we just opened; affects this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }

    pub fn ip(&self, args: &[&str]) {
        ip(Some(&self.name), args);
    }

    /// The MAC address of `dev` inside the namespace.
    pub fn mac_of(&self, dev: &str) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat"])
            .arg(format!("/sys/class/net/{dev}/address"))
            .output()
            .expect("read MAC");
        let s = String::from_utf8_lossy(&out.stdout);
        let mut m = [0u8; 6];
        for (o, p) in m.iter_mut().zip(s.trim().split(':')) {
            *o = u8::from_str_radix(p, 16).expect("MAC hex");
        }
        m
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Netns {
    /// Opens TUN/TAP `name` inside the namespace the way host network code would (raw
    /// TUNSETIFF with `flags`), returning the fd; the interface lives while the fd does.
    pub fn open_tun(&self, name: &'static str, flags: libc::c_int) -> std::os::fd::OwnedFd {
        self.enter(move || {
            use std::os::fd::FromRawFd;
            // SAFETY: plain open/ioctl; the 40-byte buffer is the ifreq TUNSETIFF expects.
            unsafe {
                let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                assert!(fd >= 0, "open /dev/net/tun");
                let mut req = [0u8; 40];
                req[..name.len()].copy_from_slice(name.as_bytes());
                req[16..18].copy_from_slice(&(flags as i16).to_ne_bytes());
                assert_eq!(libc::ioctl(fd, libc::TUNSETIFF, req.as_mut_ptr()), 0);
                std::os::fd::OwnedFd::from_raw_fd(fd)
            }
        })
    }

    /// Turns IPv6 off in the namespace, so no router solicitation or MLD frame reaches a
    /// guest that only expects the test's traffic (/proc/sys/net is the namespace of the
    /// thread that opens it).
    pub fn disable_ipv6(&self) {
        self.enter(|| {
            for k in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1")
                    .expect("disable IPv6 in the namespace");
            }
        });
    }
}
