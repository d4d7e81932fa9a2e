//! `Restored`: making a VM restored from a template its own, before its first container.
//!
//! A clone wakes up as an exact copy of the template's guest (see the protocol's
//! `Restored`). In order, so that nothing later runs on stale state:
//!
//! 1. the host's entropy is mixed into the kernel's input pool (`RNDADDENTROPY`) and the CRNG
//!    reseeded from it at once (`RNDRESEEDCRNG`), instead of at its next scheduled reseed
//!    (up to a minute away) — until then every clone would draw the template's numbers. The
//!    kernel's vmgenid driver would do this by itself, but it needs ACPI, which microvm
//!    guests do not have;
//! 2. `CLOCK_REALTIME` is set to the host's time;
//! 3. each virtio disk drops its cached blocks (`BLKFLSBUF`) and re-reads its partition
//!    table (`BLKRRPART`): the kernel still lists the template's partitions, and a clone's
//!    layer disk has the same capacity but maybe other partitions. The flush comes first so
//!    the re-read cannot find the template's blocks in the cache. (Measured on the 6.12 guest
//!    kernel, with the host rewriting a running guest's partition table: an unopened disk
//!    keeps no cache — the kernel drops it on the last close, and `BLKRRPART` invalidates
//!    too — but its partition list stays the old one until `BLKRRPART`, so the flush is
//!    cheap insurance and the re-read is what matters.) A disk whose GPT holds exactly the
//!    partitions the kernel lists (the template's image again) is not re-read
//!    ([`crate::gpt`]): `BLKRRPART` took ~60 ms of a clone under TCG, ~20 more than reading
//!    the table (its deletion and re-adding of every partition device).
//!    Nothing from these disks is mounted yet (the agent mounts them at `CreateContainer`),
//!    so `EBUSY` is a real error;
//! 4. each NIC found by its template MAC gets its new one (rtnetlink, as the rest of the
//!    NIC set-up). Every template MAC is looked up before any is changed, so swapped pairs
//!    cannot find a NIC that was just renamed.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use husk_protocol::limits::MAX_RESTORE_ENTROPY;
use husk_protocol::{format_mac, ErrorCode, ErrorReply, MacPair, ResponseBody, Restored};

use crate::gpt;
use crate::net::{self, Nic};
use crate::netlink::Netlink;

/// `_IOW('R', 0x03, int[2])` from linux/random.h; libc does not define it.
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
/// `_IO('R', 0x07)` from linux/random.h; libc does not define it.
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;
/// `_IO(0x12, 95)` from linux/fs.h; libc does not define it.
const BLKRRPART: libc::Ioctl = 0x125f;
/// `_IO(0x12, 97)` from linux/fs.h; libc does not define it.
const BLKFLSBUF: libc::Ioctl = 0x1261;

const URANDOM: &str = "/dev/urandom";
const SYS_BLOCK: &str = "/sys/block";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("mixing the host's entropy into the kernel's pool: {op} on {URANDOM}: {source}")]
    Entropy {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("setting CLOCK_REALTIME to the host's time {secs}.{nanos:09}: {source}")]
    Clock {
        secs: u64,
        nanos: u32,
        #[source]
        source: io::Error,
    },
    #[error("listing the disks in {SYS_BLOCK}: {source}")]
    ListDisks {
        #[source]
        source: io::Error,
    },
    #[error("disk /dev/{disk}: {op}: {source}{hint}")]
    Disk {
        disk: String,
        op: &'static str,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error(
        "no network interface has the template's MAC {} (to become {}); was the clone \
         given the template's NICs?",
        format_mac(&pair.template),
        format_mac(&pair.new)
    )]
    NoSuchNic { pair: MacPair },
    #[error("netlink socket: {source}")]
    Netlink {
        #[source]
        source: io::Error,
    },
    #[error("giving {dev} the MAC {pair}: {source}")]
    SetMac {
        dev: String,
        pair: MacPair,
        #[source]
        source: io::Error,
    },
}

/// What [`apply`] did, for the console log.
#[derive(Debug)]
pub struct Applied {
    entropy_bytes: usize,
    /// How far the guest's wall clock moved (negative: back).
    clock_moved_secs: i64,
    /// Each virtio disk, and whether its partition table was re-read (`false`: the kernel
    /// already listed what the disk holds).
    disks: Vec<(String, bool)>,
    nics: Vec<(String, MacPair)>,
    /// Microseconds each step took: reseed, clock, disks, NICs.
    took_us: [u128; 4],
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes of entropy mixed in and the CRNG reseeded; clock moved {:+} s; disks: [",
            self.entropy_bytes, self.clock_moved_secs,
        )?;
        for (i, (disk, reread)) in self.disks.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let what = if *reread { "re-read" } else { "kept" };
            write!(f, "{sep}{disk} {what}")?;
        }
        write!(f, "]; NICs: [")?;
        for (i, (dev, pair)) in self.nics.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{dev} {pair}")?;
        }
        let [r, c, d, n] = self.took_us.map(|us| us / 1000);
        write!(f, "] (ms: reseed {r}, clock {c}, disks {d}, NICs {n})")
    }
}

/// The `Restored` request: applies it, logs what it did, and answers `Done` or why not.
pub fn handle(r: &Restored) -> Result<ResponseBody, ErrorReply> {
    match apply(r) {
        Ok(done) => {
            say!("husk-agent: restored from a template: {done}");
            Ok(ResponseBody::Done)
        }
        Err(e) => {
            say!("husk-agent: restoring from a template failed: {e}");
            Err(ErrorReply::new(
                ErrorCode::Internal,
                format!("restoring from the template: {e}"),
            ))
        }
    }
}

/// Reseeds, sets the clock, re-reads the disks and renames the NICs, in that order; stops at
/// the first failure.
pub fn apply(r: &Restored) -> Result<Applied, RestoreError> {
    let t = std::time::Instant::now();
    reseed(&r.entropy)?;
    let t_reseed = t.elapsed().as_micros();
    let before = realtime_secs();
    set_clock(r.realtime_secs, r.realtime_nanos)?;
    let clock_moved_secs = realtime_secs().saturating_sub(before);
    let t_clock = t.elapsed().as_micros();
    let disks = virtio_disks(Path::new(SYS_BLOCK))?;
    let mut reread_disks = Vec::with_capacity(disks.len());
    for d in disks {
        let reread = reread(&d)?;
        reread_disks.push((d, reread));
    }
    let t_disks = t.elapsed().as_micros();
    let nics = resolve_nics(Path::new(net::SYS_NET), &r.macs)?;
    if !nics.is_empty() {
        let mut nl = Netlink::open().map_err(|source| RestoreError::Netlink { source })?;
        for (nic, pair) in &nics {
            nl.set_mac(nic.index, &pair.new)
                .map_err(|source| RestoreError::SetMac {
                    dev: nic.name.clone(),
                    pair: *pair,
                    source,
                })?;
        }
    }
    Ok(Applied {
        entropy_bytes: r.entropy.len(),
        clock_moved_secs,
        disks: reread_disks,
        nics: nics.into_iter().map(|(n, p)| (n.name, p)).collect(),
        took_us: [
            t_reseed,
            t_clock - t_reseed,
            t_disks - t_clock,
            t.elapsed().as_micros() - t_disks,
        ],
    })
}

/// `struct rand_pool_info` with room for the most entropy a request may carry.
#[repr(C)]
struct RandPoolInfo {
    /// Bits of entropy credited.
    entropy_count: libc::c_int,
    /// Bytes of `buf` to mix in.
    buf_size: libc::c_int,
    buf: [u8; MAX_RESTORE_ENTROPY],
}

/// The `RNDADDENTROPY` argument for `entropy`, every bit credited (the host drew it from its
/// own CRNG); `None` if it is longer than a request may carry.
fn pool_info(entropy: &[u8]) -> Option<RandPoolInfo> {
    let mut info = RandPoolInfo {
        entropy_count: libc::c_int::try_from(entropy.len().checked_mul(8)?).ok()?,
        buf_size: libc::c_int::try_from(entropy.len()).ok()?,
        buf: [0; MAX_RESTORE_ENTROPY],
    };
    info.buf.get_mut(..entropy.len())?.copy_from_slice(entropy);
    Some(info)
}

fn reseed(entropy: &[u8]) -> Result<(), RestoreError> {
    let err = |op| move |source| RestoreError::Entropy { op, source };
    let info = pool_info(entropy).ok_or_else(|| {
        err("RNDADDENTROPY")(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} bytes, at most {MAX_RESTORE_ENTROPY}", entropy.len()),
        ))
    })?;
    let urandom = File::open(URANDOM).map_err(err("open"))?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info from `info`, a live repr(C) value whose
    // buffer holds at least `buf_size` bytes; the fd is held open by `urandom`.
    cvt(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, &info) })
        .map_err(err("RNDADDENTROPY"))?;
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no memory of ours.
    cvt(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) }).map_err(err("RNDRESEEDCRNG"))
}

fn set_clock(secs: u64, nanos: u32) -> Result<(), RestoreError> {
    let err = |source| RestoreError::Clock {
        secs,
        nanos,
        source,
    };
    let tv_sec = libc::time_t::try_from(secs)
        .map_err(|_| err(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
    let ts = libc::timespec {
        tv_sec,
        tv_nsec: libc::c_long::from(nanos),
    };
    // SAFETY: clock_settime reads one timespec from `ts`, a live local.
    cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map_err(err)
}

/// Whole seconds of `CLOCK_REALTIME`, for the log (0 if it cannot be read).
fn realtime_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The virtio disks in `sys_block` (`/sys/block`, or a fake one in tests), by name.
fn virtio_disks(sys_block: &Path) -> Result<Vec<String>, RestoreError> {
    let entries = fs::read_dir(sys_block).map_err(|source| RestoreError::ListDisks { source })?;
    let mut disks: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("vd"))
        .collect();
    disks.sort();
    Ok(disks)
}

/// Drops `/dev/<disk>`'s cached blocks, then re-reads its partition table unless the kernel
/// already lists the partitions the disk's GPT holds ([`gpt::kernel_matches`]). Whether it
/// re-read.
fn reread(disk: &str) -> Result<bool, RestoreError> {
    let err = |op, source: io::Error| {
        let hint = if source.raw_os_error() == Some(libc::EBUSY) {
            " (something holds the disk or one of its partitions open: nothing may use the \
             disks before the clone's first container)"
        } else {
            ""
        };
        RestoreError::Disk {
            disk: disk.to_string(),
            op,
            source,
            hint,
        }
    };
    let dev = File::open(Path::new("/dev").join(disk)).map_err(|e| err("open", e))?;
    // SAFETY: BLKFLSBUF takes no argument and touches no memory of ours; the fd is held open
    // by `dev`.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF, 0) })
        .map_err(|e| err("BLKFLSBUF (dropping its cached blocks)", e))?;
    if gpt::kernel_matches(&dev, &Path::new(SYS_BLOCK).join(disk)) {
        return Ok(false);
    }
    // SAFETY: as above, for BLKRRPART.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), BLKRRPART, 0) })
        .map_err(|e| err("BLKRRPART (re-reading its partition table)", e))?;
    Ok(true)
}

/// The NIC each pair names by its template MAC, all looked up before any is changed.
fn resolve_nics(sys_net: &Path, pairs: &[MacPair]) -> Result<Vec<(Nic, MacPair)>, RestoreError> {
    pairs
        .iter()
        .map(|p| {
            net::find_by_mac(sys_net, &p.template)
                .map(|nic| (nic, *p))
                .ok_or(RestoreError::NoSuchNic { pair: *p })
        })
        .collect()
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        let int2 = std::mem::size_of::<[libc::c_int; 2]>();
        assert_eq!(
            RNDADDENTROPY,
            nix::request_code_write!(b'R', 0x03, int2) as libc::Ioctl
        );
        assert_eq!(
            RNDRESEEDCRNG,
            nix::request_code_none!(b'R', 0x07) as libc::Ioctl
        );
        assert_eq!(BLKRRPART, nix::request_code_none!(0x12, 95) as libc::Ioctl);
        assert_eq!(BLKFLSBUF, nix::request_code_none!(0x12, 97) as libc::Ioctl);
    }

    #[test]
    fn the_pool_gets_every_byte_credited_in_bits() {
        let e: Vec<u8> = (1..=64).collect();
        let info = pool_info(&e).unwrap();
        assert_eq!((info.entropy_count, info.buf_size), (512, 64));
        assert_eq!(&info.buf[..64], &e[..]);
        assert!(info.buf[64..].iter().all(|b| *b == 0));
        // The kernel reads the header as two ints and the bytes right after them.
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf), 8);
        assert!(pool_info(&[0; MAX_RESTORE_ENTROPY]).is_some());
        assert!(pool_info(&[0; MAX_RESTORE_ENTROPY + 1]).is_none());
    }

    #[test]
    fn only_virtio_disks_are_re_read_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        for n in ["vdb", "loop0", "vda", "sr0", "vdaa"] {
            fs::create_dir(d.path().join(n)).unwrap();
        }
        assert_eq!(virtio_disks(d.path()).unwrap(), ["vda", "vdaa", "vdb"]);
        let e = virtio_disks(&d.path().join("nope")).unwrap_err();
        assert!(e.to_string().starts_with("listing the disks"), "{e}");
    }

    #[test]
    fn a_disk_error_names_the_disk_and_explains_ebusy() {
        let e = RestoreError::Disk {
            disk: "vdb".into(),
            op: "BLKRRPART (re-reading its partition table)",
            source: io::Error::from_raw_os_error(libc::EBUSY),
            hint: "",
        };
        assert!(e.to_string().starts_with("disk /dev/vdb: BLKRRPART"), "{e}");
        // A device node that is not there: the error comes from `open` and names the disk.
        let e = reread("vd-husk-test-none").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("disk /dev/vd-husk-test-none: open:"),
            "{e}"
        );
    }

    /// A fake /sys/class/net: lo, eth0 and eth1 with their template MACs.
    fn sys_net() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, mac, index) in [
            ("lo", "00:00:00:00:00:00", 1),
            ("eth0", "52:54:00:12:34:56", 2),
            ("eth1", "52:54:00:12:34:57", 3),
        ] {
            let dir = d.path().join(name);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
            fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
        }
        d
    }

    const A: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const B: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x57];

    #[test]
    fn nics_are_found_by_template_mac_before_any_changes() {
        let d = sys_net();
        // Swapped: each must still find the NIC that had its template MAC.
        let pairs = [
            MacPair {
                template: A,
                new: B,
            },
            MacPair {
                template: B,
                new: A,
            },
        ];
        let got = resolve_nics(d.path(), &pairs).unwrap();
        let names: Vec<(&str, u32)> = got
            .iter()
            .map(|(n, _)| (n.name.as_str(), n.index))
            .collect();
        assert_eq!(names, [("eth0", 2), ("eth1", 3)]);
        assert_eq!(got[1].1, pairs[1]);
        assert!(resolve_nics(d.path(), &[]).unwrap().is_empty());
    }

    #[test]
    fn a_template_mac_no_nic_has_fails_naming_it() {
        let d = sys_net();
        let pairs = [
            MacPair {
                template: A,
                new: [2, 0, 0, 0, 0, 1],
            },
            MacPair {
                template: [2, 0, 0, 0, 0, 9],
                new: [2, 0, 0, 0, 0, 2],
            },
        ];
        let e = resolve_nics(d.path(), &pairs).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("no network interface has the template's MAC 02:00:00:00:00:09"),
            "{text}"
        );
        assert!(text.contains("to become 02:00:00:00:00:02"), "{text}");
    }

    #[test]
    fn the_log_line_says_what_was_done() {
        let a = Applied {
            entropy_bytes: 64,
            clock_moved_secs: 3600,
            disks: vec![("vda".into(), false), ("vdb".into(), true)],
            nics: vec![(
                "eth0".into(),
                MacPair {
                    template: A,
                    new: B,
                },
            )],
            took_us: [14_100, 1_500, 2_999, 24_000],
        };
        assert_eq!(
            a.to_string(),
            "64 bytes of entropy mixed in and the CRNG reseeded; clock moved +3600 s; disks: \
             [vda kept, vdb re-read]; NICs: [eth0 52:54:00:12:34:56 -> 52:54:00:12:34:57] \
             (ms: reseed 14, clock 1, disks 2, NICs 24)"
        );
    }
}
