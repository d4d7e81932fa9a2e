//! The host side of a virtio-net device: a TAP interface with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, its vnet header size set to [`HDR_LEN`], in non-blocking mode.
//!
//! It is opened by name through `/dev/net/tun` (the interface is created if it does not
//! exist, or attached to if it is a persistent one), or taken as an fd someone else opened
//! — the host network code may open the TAP inside another network namespace and hand the
//! fd to husk-vmm, which cannot open it by name from its own namespace.
//!
//! Which offloads the device may offer depends on what the TAP accepts through
//! `TUNSETOFFLOAD`; [`Tap::supported_offloads`] is probed once. Until the guest has
//! negotiated, the TAP is set to no offloads, so the kernel hands it only complete frames.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::frame::GuestSlice;
use super::HDR_LEN;

/// Most guest slices one frame may be written from: a chain is at most a queue (256
/// descriptors), each split at most once at a memory region boundary, plus slack; below
/// the kernel's IOV_MAX (1024) with the header.
pub const MAX_PARTS: usize = 1000;

/// Longest interface name (IFNAMSIZ minus the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "invalid TAP name {0:?}: use 1 to {MAX_NAME_LEN} bytes, no '/', ':', whitespace or NUL"
    )]
    InvalidName(String),
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and are we root or CAP_NET_ADMIN?)")]
    OpenTun(io::Error),
    #[error("cannot attach to TAP {name}: {source} (EBUSY: another process holds it; EPERM: needs CAP_NET_ADMIN or the TAP's owner)")]
    SetIff { name: String, source: io::Error },
    #[error("fd {fd} is not an open TUN/TAP fd: {source}")]
    NotTun { fd: RawFd, source: io::Error },
    #[error(
        "fd {fd} is TAP {name} without {missing}; open it with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"
    )]
    WrongFlags {
        fd: RawFd,
        name: String,
        missing: &'static str,
    },
    #[error("TAP {name}: {what}: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: name, then the flags (the rest of the
/// 24-byte union is padding for this use).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn zeroed() -> Self {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// The TUN_F_* offload flags husk-vmm knows how to map to virtio features.
pub const OFFLOADS_ALL: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads: u32,
}

impl Tap {
    /// Opens (or creates) TAP `name` in the current network namespace.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::zeroed();
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is (40 bytes).
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Self::finish(file, req.name())
    }

    /// Takes an fd that is already a TAP queue (opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR,
    /// possibly in another network namespace). Makes it non-blocking and close-on-exec.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq::zeroed();
        // SAFETY: TUNGETIFF writes one ifreq into `req`; on a non-TUN fd it fails cleanly.
        if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::NotTun {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        let name = req.name();
        let flags = i32::from(req.flags);
        for (bit, missing) in [
            (libc::IFF_TAP, "IFF_TAP (it is a TUN)"),
            (libc::IFF_NO_PI, "IFF_NO_PI"),
            (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
        ] {
            if flags & bit == 0 {
                return Err(TapError::WrongFlags {
                    fd: raw,
                    name,
                    missing,
                });
            }
        }
        let ioctl_err = |what, source| TapError::Ioctl {
            name: name.clone(),
            what,
            source,
        };
        // SAFETY: plain fcntl calls on an fd we own.
        unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            if fl < 0 || libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(ioctl_err("O_NONBLOCK", io::Error::last_os_error()));
            }
            if libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                return Err(ioctl_err("FD_CLOEXEC", io::Error::last_os_error()));
            }
        }
        Self::finish(File::from(fd), name)
    }

    /// Takes inherited fd number `fd` (from the command line): checks it is open first, so a
    /// wrong number is an error rather than someone else's fd being closed later.
    pub fn from_raw_fd_checked(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: F_GETFD only queries the descriptor table.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotTun {
                fd,
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        }
        // SAFETY: the fd is open, and the caller hands its ownership over (an fd inherited
        // for this purpose, used by nothing else in the process).
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn finish(file: File, name: String) -> Result<Tap, TapError> {
        let mut tap = Tap {
            file,
            name,
            offloads: 0,
        };
        let sz = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        if unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &sz) } < 0 {
            return Err(tap.ioctl_err("TUNSETVNETHDRSZ"));
        }
        tap.offloads = [OFFLOADS_ALL, libc::TUN_F_CSUM]
            .into_iter()
            .find(|&f| tap.set_offload(f).is_ok())
            .unwrap_or(0);
        tap.set_offload(0)?;
        Ok(tap)
    }

    fn ioctl_err(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Tells the kernel which offloads the reader handles (TUN_F_* bits): frames with
    /// partial checksums (TUN_F_CSUM) or GSO (TUN_F_TSO*) are only handed over when set.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(self.ioctl_err("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The TUN_F_* offloads this TAP accepted when probed (a subset of [`OFFLOADS_ALL`]).
    pub fn supported_offloads(&self) -> u32 {
        self.offloads
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another handle on the same queue (for a device's worker).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
            offloads: self.offloads,
        })
    }

    /// Reads one frame (vnet header first); `WouldBlock` when none is queued.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (vnet header first).
    pub fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    /// Reads one frame straight into guest memory slices with one readv, and whatever does
    /// not fit into `spill`; returns the bytes read (the kernel truncates silently, so a
    /// frame that reaches `spill` did not fit the slices). At most [`MAX_PARTS`] slices.
    pub fn read_frame_parts(
        &mut self,
        parts: &[GuestSlice<'_>],
        spill: &mut [u8],
    ) -> io::Result<usize> {
        if parts.len() > MAX_PARTS {
            return Err(too_many(parts.len()));
        }
        let guards: Vec<_> = parts.iter().map(|p| p.ptr_guard_mut()).collect();
        let mut iov: Vec<libc::iovec> = parts
            .iter()
            .zip(&guards)
            .map(|(p, g)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: p.len(),
            })
            .collect();
        iov.push(libc::iovec {
            iov_base: spill.as_mut_ptr().cast(),
            iov_len: spill.len(),
        });
        // SAFETY: each iovec is a guest memory slice kept mapped by its guard for the call,
        // or `spill`, borrowed mutably; the kernel writes at most iov_len bytes into each.
        // The guest may look at its rx buffers meanwhile, which is its own business.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame given as the vnet header and guest memory slices, with one writev
    /// and no copy of the frame. At most [`MAX_PARTS`] slices.
    pub fn write_frame_parts(&mut self, hdr: &[u8], parts: &[GuestSlice<'_>]) -> io::Result<usize> {
        if parts.len() > MAX_PARTS {
            return Err(too_many(parts.len()));
        }
        let guards: Vec<_> = parts.iter().map(|p| p.ptr_guard()).collect();
        let mut iov = Vec::with_capacity(parts.len() + 1);
        iov.push(libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        });
        for (p, g) in parts.iter().zip(&guards) {
            iov.push(libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        // SAFETY: every iovec points at memory that stays mapped and unaliased-for-writes by
        // us for the call: `hdr` is borrowed, and each guest slice is held by its guard (the
        // guest may write into it concurrently, which only changes the bytes sent). writev
        // only reads from the buffers.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn too_many(n: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{n} buffers in one frame (at most {MAX_PARTS})"),
    )
}

/// What the kernel accepts as an interface name (dev_valid_name), minus the `%d` template.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "tap%d",
            "a b",
            "0123456789abcdef",
        ] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(valid_name("husk-tap0"));
        assert!(valid_name("0123456789abcde"));
    }

    #[test]
    fn a_non_tun_fd_is_refused() {
        let f = tempfile::tempfile().unwrap();
        let e = Tap::from_fd(OwnedFd::from(f)).unwrap_err();
        assert!(matches!(e, TapError::NotTun { .. }), "{e}");
        assert!(matches!(
            Tap::from_raw_fd_checked(-1),
            Err(TapError::NotTun { .. })
        ));
    }
}
