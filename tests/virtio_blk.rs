//! virtio-blk through the driver-side harness: the real virtio-mmio transport, the real
//! block device and its worker thread, real guest memory and a real host file. No KVM.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use husk::devices::virtio::block::composite::{layer, CompositeDisk};
use husk::devices::virtio::block::{Block, RawFile};
use husk::devices::virtio::mmio::{reg, status};
use husk::devices::virtio::testing::blk::{self, prepare};
use husk::devices::virtio::testing::{Buf, Harness, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use husk::devices::virtio::{TYPE_BLOCK, VIRTIO_F_VERSION_1, VIRTIO_INT_USED_RING};
use virtio_bindings::virtio_blk::*;
use vm_memory::GuestAddress;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const DISK_SECTORS: u64 = 64;
const WAIT: Duration = Duration::from_secs(5);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn disk_file(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::File::create(&p).unwrap().write_all(content).unwrap();
    p
}

/// A live harness over a fresh 32 KiB image with a known pattern.
fn setup(read_only: bool) -> (tempfile::TempDir, std::path::PathBuf, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let path = disk_file(
        dir.path(),
        "disk.img",
        &pattern((DISK_SECTORS * 512) as usize, 7),
    );
    let dev = Block::open("blk-test", &path, read_only).unwrap();
    let mut h = Harness::new(Box::new(dev));
    assert_eq!(h.probe(), TYPE_BLOCK);
    h.init(
        !(1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX),
        1,
        16,
    );
    (dir, path, h)
}

/// The queue still serves a normal read after whatever the test did.
fn assert_queue_alive(h: &mut Harness, path: &Path) {
    let (s, data) = blk::read(h, 1, 512);
    assert_eq!(s, S_OK, "queue broken after hostile input");
    assert_eq!(data, fs::read(path).unwrap()[512..1024]);
}

#[test]
fn probe_reports_identity_config_and_cmdline() {
    let (_d, _p, h) = setup(false);
    assert_eq!(
        h.read32(reg::VENDOR_ID),
        husk::devices::virtio::mmio::VENDOR_ID
    );
    let cap = u64::from_le_bytes(h.read_config(0, 8).try_into().unwrap());
    assert_eq!(cap, DISK_SECTORS);
    let seg_max = u32::from_le_bytes(h.read_config(12, 4).try_into().unwrap());
    assert_eq!(seg_max, 254);
    let f = h.device_features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    // Config byte-granular reads work too (Linux reads capacity as two u32 / bytes).
    assert_eq!(h.read_config(0, 1)[0], DISK_SECTORS as u8);
    let cmd = h.cmdline.as_cstring().unwrap().into_string().unwrap();
    assert_eq!(cmd, "virtio_mmio.device=4K@0xd0000000:5");
}

#[test]
fn read_returns_file_bytes_and_raises_interrupt() {
    let (_d, path, mut h) = setup(false);
    h.take_interrupts();
    let (s, data) = blk::read(&mut h, 3, 4096);
    assert_eq!(s, S_OK);
    assert_eq!(data, fs::read(&path).unwrap()[3 * 512..3 * 512 + 4096]);
    assert!(h.take_interrupts() >= 1, "no interrupt on the irq eventfd");
    assert_eq!(
        h.ack_interrupt() & VIRTIO_INT_USED_RING,
        VIRTIO_INT_USED_RING
    );
    assert_eq!(
        h.read32(reg::INTERRUPT_STATUS),
        0,
        "ack did not clear the bit"
    );
}

#[test]
fn used_len_counts_data_and_status() {
    let (_d, _p, mut h) = setup(false);
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 1024);
    assert_eq!(blk::submit(&mut h, &r, VIRTIO_BLK_T_IN), (S_OK, 1025));
    let r = prepare(&mut h, VIRTIO_BLK_T_OUT, 0, 512);
    assert_eq!(blk::submit(&mut h, &r, VIRTIO_BLK_T_OUT), (S_OK, 1));
}

#[test]
fn write_reaches_host_file() {
    let (_d, path, mut h) = setup(false);
    let data = pattern(8192, 99);
    assert_eq!(blk::write(&mut h, 8, &data), S_OK);
    let file = fs::read(&path).unwrap();
    assert_eq!(&file[8 * 512..8 * 512 + 8192], &data[..]);
    // Untouched bytes around it.
    assert_eq!(
        &file[..8 * 512],
        &pattern((DISK_SECTORS * 512) as usize, 7)[..8 * 512]
    );
    let (s, back) = blk::read(&mut h, 8, 8192);
    assert_eq!((s, back), (S_OK, data));
}

#[test]
fn flush_succeeds() {
    let (_d, _p, mut h) = setup(false);
    assert_eq!(blk::write(&mut h, 0, &[1u8; 512]), S_OK);
    assert_eq!(blk::flush(&mut h), S_OK);
}

#[test]
fn get_id_is_20_bytes_and_stable() {
    let (_d, path, mut h) = setup(false);
    let (s, len, id) = blk::get_id(&mut h);
    assert_eq!((s, len), (S_OK, 21));
    assert!(id.starts_with(b"husk"), "id {id:?}");
    let again = RawFile::open(&path, true).unwrap();
    use husk::devices::virtio::block::DiskBackend;
    assert_eq!(
        &again.id()[..],
        &id[..],
        "id must follow the file, not the open"
    );
}

#[test]
fn unsupported_type_is_unsupp() {
    let (_d, path, mut h) = setup(false);
    let r = prepare(&mut h, VIRTIO_BLK_T_DISCARD, 0, 16);
    assert_eq!(blk::submit(&mut h, &r, VIRTIO_BLK_T_OUT).0, S_UNSUPP);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn read_only_disk_refuses_writes_and_keeps_file() {
    let (_d, path, mut h) = setup(true);
    assert_ne!(h.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let before = fs::read(&path).unwrap();
    assert_eq!(blk::write(&mut h, 0, &[0u8; 512]), S_IOERR);
    assert_eq!(fs::read(&path).unwrap(), before, "read-only file changed");
    assert_eq!(blk::flush(&mut h), S_OK);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn read_only_disk_is_opened_o_rdonly() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk_file(dir.path(), "ro.img", &[0u8; 4096]);
    let mut perms = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    fs::set_permissions(&path, perms).unwrap();
    // As root the mode does not stop O_RDWR, so check the open flags of the fd itself.
    let rf = RawFile::open(&path, true).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: F_GETFL on a valid fd.
    let fl = unsafe { libc::fcntl(rf.file().as_raw_fd(), libc::F_GETFL) };
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);
}

#[test]
fn sector_past_the_end_is_ioerr() {
    let (_d, path, mut h) = setup(false);
    let before = fs::read(&path).unwrap();
    // Starts inside, ends outside.
    assert_eq!(blk::read(&mut h, DISK_SECTORS - 1, 1024).0, S_IOERR);
    assert_eq!(blk::write(&mut h, DISK_SECTORS, &[9u8; 512]), S_IOERR);
    // Sector whose byte offset overflows u64.
    assert_eq!(blk::read(&mut h, u64::MAX / 256, 512).0, S_IOERR);
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "out-of-range write changed the file"
    );
    // The very last sector is fine.
    assert_eq!(blk::read(&mut h, DISK_SECTORS - 1, 512).0, S_OK);
}

#[test]
fn unaligned_data_length_is_ioerr() {
    let (_d, path, mut h) = setup(false);
    assert_eq!(blk::read(&mut h, 0, 100).0, S_IOERR);
    assert_queue_alive(&mut h, &path);
}

// ---- hostile chains ----

#[test]
fn device_writable_header_is_ioerr() {
    let (_d, path, mut h) = setup(false);
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
    h.write(r.data, &[0xaa; 512]);
    h.add_chain(
        0,
        &[Buf::w(r.hdr, 16), Buf::w(r.data, 512), Buf::w(r.status, 1)],
    );
    h.notify(0);
    let (_, len) = h.wait_one(0).unwrap();
    assert_eq!((h.read(r.status, 1)[0], len), (S_IOERR, 1));
    assert_eq!(
        h.read(r.data, 512),
        vec![0xaa; 512],
        "device wrote data for a bad chain"
    );
    assert_queue_alive(&mut h, &path);
}

#[test]
fn readable_after_writable_is_ioerr() {
    let (_d, path, mut h) = setup(false);
    let r = prepare(&mut h, VIRTIO_BLK_T_OUT, 0, 512);
    let before = fs::read(&path).unwrap();
    h.add_chain(
        0,
        &[
            Buf::r(r.hdr, 16),
            Buf::w(r.status, 1),
            Buf::r(r.data, 512),
            Buf::w(r.status, 1),
        ],
    );
    h.notify(0);
    let (_, len) = h.wait_one(0).unwrap();
    assert_eq!((h.read(r.status, 1)[0], len), (S_IOERR, 1));
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn out_of_range_data_address_is_ioerr() {
    let (_d, path, mut h) = setup(false);
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
    let beyond = GuestAddress(h.mem_size() - 256); // straddles the end of RAM
    h.add_chain(
        0,
        &[Buf::r(r.hdr, 16), Buf::w(beyond, 512), Buf::w(r.status, 1)],
    );
    h.notify(0);
    let (_, len) = h.wait_one(0).unwrap();
    assert_eq!((h.read(r.status, 1)[0], len), (S_IOERR, 1));
    // Far outside: in the MMIO hole / past 4 GiB.
    let r = prepare(&mut h, VIRTIO_BLK_T_OUT, 0, 512);
    h.add_chain(
        0,
        &[
            Buf::r(r.hdr, 16),
            Buf::r(GuestAddress(1 << 40), 512),
            Buf::w(r.status, 1),
        ],
    );
    h.notify(0);
    h.wait_one(0).unwrap();
    assert_eq!(h.read(r.status, 1)[0], S_IOERR);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn header_out_of_range_is_ioerr() {
    let (_d, path, mut h) = setup(false);
    let status = h.alloc(1);
    h.add_chain(
        0,
        &[Buf::r(GuestAddress(u64::MAX - 8), 16), Buf::w(status, 1)],
    );
    h.notify(0);
    let (_, len) = h.wait_one(0).unwrap();
    assert_eq!((h.read(status, 1)[0], len), (S_IOERR, 1));
    assert_queue_alive(&mut h, &path);
}

#[test]
fn status_descriptor_read_only_or_empty_is_dropped() {
    let (_d, path, mut h) = setup(false);
    for status_buf in [Buf::r(GuestAddress(0), 0), Buf::w(GuestAddress(0), 0)] {
        let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
        let status = Buf {
            addr: r.status,
            ..status_buf
        };
        h.add_chain(0, &[Buf::r(r.hdr, 16), Buf::w(r.data, 512), status]);
        h.notify(0);
        let (_, len) = h.wait_one(0).expect("dropped chain must still be returned");
        assert_eq!(len, 0);
        assert_eq!(
            h.read(r.status, 1)[0],
            0xff,
            "status written into a bad status buffer"
        );
    }
    // Read-only 1-byte status.
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
    h.add_chain(
        0,
        &[Buf::r(r.hdr, 16), Buf::w(r.data, 512), Buf::r(r.status, 1)],
    );
    h.notify(0);
    assert_eq!(h.wait_one(0).unwrap().1, 0);
    assert_eq!(h.read(r.status, 1)[0], 0xff);
    // Status byte outside RAM.
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
    h.add_chain(0, &[Buf::r(r.hdr, 16), Buf::w(GuestAddress(1 << 40), 1)]);
    h.notify(0);
    assert_eq!(h.wait_one(0).unwrap().1, 0);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn descriptor_loop_is_dropped() {
    let (_d, path, mut h) = setup(false);
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
    // 0 -> 1 -> 2 -> 1 -> 2 … never ends.
    h.write_desc(0, 0, r.hdr.0, 16, VIRTQ_DESC_F_NEXT, 1);
    h.write_desc(
        0,
        1,
        r.data.0,
        512,
        VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
        2,
    );
    h.write_desc(
        0,
        2,
        r.status.0,
        1,
        VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
        1,
    );
    h.push_avail(0, 0);
    h.notify(0);
    let (id, len) = h.wait_one(0).unwrap();
    assert_eq!((id, len), (0, 0));
    assert_eq!(h.read(r.status, 1)[0], 0xff);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn chain_longer_than_queue_or_next_out_of_table_is_dropped() {
    let (_d, path, mut h) = setup(false);
    let size = h.queues[0].size;
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
    // A straight chain using every descriptor and pointing past the table.
    h.write_desc(0, 0, r.hdr.0, 16, VIRTQ_DESC_F_NEXT, 1);
    for i in 1..size {
        h.write_desc(
            0,
            i,
            r.data.0,
            512,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            i + 1,
        );
    }
    h.push_avail(0, 0);
    h.notify(0);
    assert_eq!(h.wait_one(0).unwrap(), (0, 0));
    assert_queue_alive(&mut h, &path);
}

#[test]
fn head_index_out_of_table_does_not_wedge_device() {
    let (_d, path, mut h) = setup(false);
    let size = h.queues[0].size;
    h.push_avail(0, size + 3);
    h.notify(0);
    // Such a head cannot be put on the used ring (add_used refuses it); the device must
    // skip it and keep serving.
    assert!(h.expect_no_used(0, Duration::from_millis(100)));
    assert_queue_alive(&mut h, &path);
}

#[test]
fn bogus_avail_index_stops_queue_without_panic() {
    let (_d, _path, mut h) = setup(false);
    let size = h.queues[0].size;
    h.set_avail_idx(0, size * 3 + 1); // more entries than the ring holds
    h.notify(0);
    assert!(h.expect_no_used(0, Duration::from_millis(200)));
    // The transport still answers and a reset brings the device back.
    assert_eq!(h.read32(reg::MAGIC), 0x7472_6976);
    h.reset();
    assert_eq!(h.status(), 0);
    h.init(VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH, 1, 16);
    assert_eq!(blk::flush(&mut h), S_OK);
}

// ---- negotiation / lifecycle ----

#[test]
fn features_without_version_1_are_refused() {
    let (_d, _p, h) = setup(false);
    assert!(!h.negotiate(1 << VIRTIO_BLK_F_FLUSH));
    // DRIVER_OK is not reachable from there.
    h.driver_ok();
    assert_eq!(h.status() & status::DRIVER_OK, 0);
}

#[test]
fn unoffered_features_are_refused() {
    let (_d, _p, h) = setup(true);
    assert!(!h.negotiate(VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_DISCARD));
    assert!(!h.negotiate(VIRTIO_F_VERSION_1 | 1 << 63));
    // Acking through a bogus feature-select window is refused too.
    h.write32(reg::STATUS, 0);
    h.write32(reg::STATUS, status::ACKNOWLEDGE);
    h.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    h.write32(reg::DRIVER_FEATURES_SEL, 0);
    h.write32(reg::DRIVER_FEATURES, 0);
    h.write32(reg::DRIVER_FEATURES_SEL, 1);
    h.write32(reg::DRIVER_FEATURES, 1); // VERSION_1 (bit 32)
    h.write32(reg::DRIVER_FEATURES_SEL, 7);
    h.write32(reg::DRIVER_FEATURES, 1);
    h.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(h.status() & status::FEATURES_OK, 0);
    // Exactly the offered set is fine.
    assert!(h.negotiate(h.device_features()));
}

#[test]
fn status_must_follow_the_handshake_order() {
    let (_d, _p, h) = setup(false);
    h.write32(reg::STATUS, 0);
    h.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_eq!(h.status(), 0, "skipping steps must be refused");
    h.write32(reg::STATUS, status::ACKNOWLEDGE);
    h.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    h.write32(reg::STATUS, status::DRIVER); // clearing ACK is not allowed
    assert_eq!(h.status(), status::ACKNOWLEDGE | status::DRIVER);
    h.write32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FAILED,
    );
    assert_ne!(h.status() & status::FAILED, 0);
}

#[test]
fn invalid_queue_setup_sets_needs_reset() {
    let (_d, path, mut h) = setup(false);
    // Size not a power of two.
    assert!(h.negotiate(VIRTIO_F_VERSION_1));
    h.setup_queues(1, 16);
    h.write32(reg::QUEUE_READY, 0);
    h.write32(reg::QUEUE_NUM, 12);
    h.write32(reg::QUEUE_READY, 1);
    h.driver_ok();
    assert_ne!(h.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(h.status() & status::DRIVER_OK, 0);
    // Rings outside guest memory.
    assert!(h.negotiate(VIRTIO_F_VERSION_1));
    h.setup_queues(1, 16);
    h.write32(reg::QUEUE_READY, 0);
    let far = GuestAddress(1 << 40);
    h.set_queue_addrs(far, far, far);
    h.write32(reg::QUEUE_READY, 1);
    h.driver_ok();
    assert_ne!(h.status() & status::DEVICE_NEEDS_RESET, 0);
    // Queue not enabled at all.
    assert!(h.negotiate(VIRTIO_F_VERSION_1));
    h.driver_ok();
    assert_ne!(h.status() & status::DEVICE_NEEDS_RESET, 0);
    // Reset recovers.
    h.reset();
    h.init(VIRTIO_F_VERSION_1, 1, 16);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn queue_registers_locked_after_driver_ok() {
    let (_d, path, mut h) = setup(false);
    let far = GuestAddress(1 << 40);
    h.write32(reg::QUEUE_SEL, 0);
    h.set_queue_addrs(far, far, far);
    h.write32(reg::QUEUE_NUM, 2);
    assert_queue_alive(&mut h, &path);
}

#[test]
fn reset_mid_flight_then_reinit() {
    let (_d, path, mut h) = setup(false);
    // Queue a batch without waiting, then reset at once.
    for i in 0..4 {
        let r = prepare(&mut h, VIRTIO_BLK_T_IN, i, 4096);
        h.add_chain(0, &blk::chain(&r, true));
    }
    h.notify(0);
    h.reset();
    assert_eq!(h.status(), 0);
    assert_eq!(h.read32(reg::INTERRUPT_STATUS), 0);
    {
        let t = h.transport.lock().unwrap();
        assert!(!t.is_activated());
    }
    // Requests published after the reset must not be served by a leftover worker.
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 0, 512);
    h.add_chain(0, &blk::chain(&r, true));
    h.notify(0);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        h.used_idx(0) <= 4,
        "a request published after reset was served"
    );
    // A fresh driver session works.
    h.free_all();
    h.init(VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH, 1, 16);
    assert_queue_alive(&mut h, &path);
    assert_eq!(blk::flush(&mut h), S_OK);
}

#[test]
fn many_requests_in_one_notify() {
    let (_d, path, mut h) = setup(false);
    let file = fs::read(&path).unwrap();
    let reqs: Vec<_> = (0..5)
        .map(|i| {
            let r = prepare(&mut h, VIRTIO_BLK_T_IN, i * 4, 2048);
            h.add_chain(0, &blk::chain(&r, true));
            r
        })
        .collect();
    h.notify(0);
    let used = h.wait_used(0, 5, WAIT).unwrap();
    assert_eq!(used.len(), 5);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(h.read(r.status, 1)[0], S_OK);
        let off = i * 4 * 512;
        assert_eq!(h.read(r.data, 2048), file[off..off + 2048]);
    }
}

#[test]
fn scattered_data_descriptors() {
    let (_d, path, mut h) = setup(false);
    let r = prepare(&mut h, VIRTIO_BLK_T_IN, 2, 0);
    let a = h.alloc(512);
    let b = h.alloc(1024);
    h.add_chain(
        0,
        &[
            Buf::r(r.hdr, 16),
            Buf::w(a, 512),
            Buf::w(b, 1024),
            Buf::w(r.status, 1),
        ],
    );
    h.notify(0);
    assert_eq!(h.wait_one(0).unwrap().1, 1537);
    let file = fs::read(&path).unwrap();
    assert_eq!(h.read(a, 512), file[1024..1536]);
    assert_eq!(h.read(b, 1024), file[1536..2560]);
}

#[test]
fn sixteen_plus_devices_attach_with_distinct_windows_and_gsis() {
    use husk::devices::bus::Bus;
    use husk::devices::virtio::mmio::attach::NoKvm;
    use husk::devices::virtio::mmio::{attach_virtio_mmio, AttachError, MmioAllocator};
    let dir = tempfile::tempdir().unwrap();
    let mem =
        husk::devices::virtio::GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut bus = Bus::new();
    let mut cmdline = linux_loader::cmdline::Cmdline::new(8192).unwrap();
    let mut alloc = MmioAllocator::new(0xd000_0000, 0x1000, 5..=23);
    let path = disk_file(dir.path(), "d.img", &[0u8; 4096]);
    let mut seen = Vec::new();
    for i in 0..19 {
        let dev = Block::open(&format!("blk{i}"), &path, true).unwrap();
        let a = attach_virtio_mmio(
            &NoKvm,
            &mut bus,
            &mut cmdline,
            &mem,
            &mut alloc,
            Box::new(dev),
        )
        .unwrap();
        seen.push((a.base, a.gsi));
        let mut b = [0u8; 4];
        assert!(bus.read(a.base + reg::DEVICE_ID, &mut b));
        assert_eq!(u32::from_le_bytes(b), TYPE_BLOCK);
    }
    assert_eq!(seen[18], (0xd000_0000 + 18 * 0x1000, 23));
    let dev = Block::open("blk19", &path, true).unwrap();
    let err = attach_virtio_mmio(
        &NoKvm,
        &mut bus,
        &mut cmdline,
        &mem,
        &mut alloc,
        Box::new(dev),
    );
    assert!(matches!(err, Err(AttachError::OutOfSlots(19))));
    let cmd = cmdline.as_cstring().unwrap().into_string().unwrap();
    assert_eq!(cmd.matches("virtio_mmio.device=4K@").count(), 19);
    assert!(cmd.contains("virtio_mmio.device=4K@0xd0012000:23"));
}

#[test]
fn composite_disk_serves_layers_as_gpt_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let l0 = pattern(3 * 4096, 1);
    let l1 = pattern(5000, 2); // not sector aligned: padded with zeros
    let layers = vec![
        layer(disk_file(dir.path(), "l0", &l0), "sha256-aaaa"),
        layer(disk_file(dir.path(), "l1", &l1), "sha256-bbbb"),
    ];
    let disk = CompositeDisk::open(&layers).unwrap();
    let parts = disk.partitions();
    let mut h = Harness::new(Box::new(Block::new("blk-comp", Arc::new(disk))));
    h.init(
        !(1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX),
        1,
        16,
    );
    assert_ne!(h.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    // GPT header at LBA 1.
    let (s, lba1) = blk::read(&mut h, 1, 512);
    assert_eq!(s, S_OK);
    assert_eq!(&lba1[..8], b"EFI PART");
    // Partition 1 data, read across its unaligned end into the padding.
    let (start1, len1) = parts[1];
    let (s, data) = blk::read(&mut h, start1 / 512, 5120);
    assert_eq!(s, S_OK);
    assert_eq!(&data[..len1 as usize], &l1[..]);
    assert!(data[len1 as usize..].iter().all(|&b| b == 0));
    let (s, data) = blk::read(&mut h, parts[0].0 / 512 + 8, 4096);
    assert_eq!((s, data), (S_OK, l0[4096..8192].to_vec()));
    assert_eq!(blk::write(&mut h, parts[0].0 / 512, &[0u8; 512]), S_IOERR);
    assert_eq!(fs::read(dir.path().join("l0")).unwrap(), l0);
}

/// `--disk PATH,ro,serial=ID` as husk-vmm parses it, built into a device the way husk-vmm
/// attaches it: GET_ID answers the configured serial, NUL-padded to 20 bytes, and the data
/// path still reads the file.
#[test]
fn get_id_answers_the_serial_of_a_parsed_disk_flag() {
    use husk::vmm::attach::block_device;
    use husk::vmm::config::DiskConfig;
    let dir = tempfile::tempdir().unwrap();
    let content = pattern(8192, 3);
    let path = disk_file(dir.path(), "layer.img", &content);
    for (serial, read_only) in [("husk-layer-0", true), ("husk-scratch", false)] {
        let mode = if read_only { ",ro" } else { "" };
        let cfg: DiskConfig = format!("{}{mode},serial={serial}", path.display())
            .parse()
            .unwrap();
        let mut h = Harness::new(Box::new(block_device(0, &cfg).unwrap()));
        assert_eq!(h.probe(), TYPE_BLOCK);
        h.init(
            !(1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX),
            1,
            16,
        );
        let ro_bit = h.device_features() & (1 << VIRTIO_BLK_F_RO) != 0;
        assert_eq!(ro_bit, read_only, "{serial}");
        let (s, len, id) = blk::get_id(&mut h);
        assert_eq!((s, len), (S_OK, 21));
        let mut want = [0u8; 20];
        want[..serial.len()].copy_from_slice(serial.as_bytes());
        assert_eq!(id, want, "GET_ID of {serial}");
        let (s, data) = blk::read(&mut h, 2, 512);
        assert_eq!((s, data.as_slice()), (S_OK, &content[1024..1536]));
    }
    // A full 20-byte serial fills the answer with no NUL at all, as virtio allows.
    let full = "abcdefghij0123456789";
    let cfg: DiskConfig = format!("{},serial={full}", path.display()).parse().unwrap();
    let mut h = Harness::new(Box::new(block_device(1, &cfg).unwrap()));
    h.init(
        !(1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX),
        1,
        16,
    );
    assert_eq!(blk::get_id(&mut h).2, full.as_bytes());
}
