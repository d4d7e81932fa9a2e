//! husk-vmm's vhost-user-fs frontend against a real virtiofsd, driven from the driver side:
//! the test plays the guest's virtio-mmio driver (`devices::virtio::testing::Harness`) over
//! memfd-backed guest memory, as husk-vmm builds it when a share is configured, and speaks
//! FUSE on the request queue. No KVM needed, so this runs on hosts whose KVM cannot boot a
//! stock guest.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk::backend::{listening, virtiofsd, SharedDirSpec};
use husk::devices::virtio::fs::{VhostUserFs, TAG_LEN};
use husk::devices::virtio::testing::{Buf, Harness};
use vm_memory::GuestAddress;

const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
const REQUEST: usize = 1;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts virtiofsd on `dir` and waits until it listens on `sock`.
fn start_virtiofsd(test: &str, dir: &Path, sock: &Path) -> Option<Daemon> {
    let bin = match virtiofsd::find_binary() {
        Ok(b) => b,
        Err(e) => {
            common::not_run(test, &e.to_string(), true);
            return None;
        }
    };
    let share = SharedDirSpec::volume(dir, "t", false);
    let child = Command::new(bin)
        .args(virtiofsd::args(&share, sock, virtiofsd::Sandbox::Namespace))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn virtiofsd");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening::is_listening(sock) {
        assert!(
            Instant::now() < deadline,
            "virtiofsd never listened on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(d)
}

fn in_header(len: u32, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    h
}

/// Sends one FUSE request on the request queue; returns (error, reply body).
fn fuse(h: &mut Harness, req: &[u8], reply_len: u32) -> (i32, Vec<u8>) {
    let rin = h.alloc(req.len() as u64);
    h.write(rin, req);
    let rout = h.alloc(u64::from(16 + reply_len));
    h.add_chain(
        REQUEST,
        &[Buf::r(rin, req.len() as u32), Buf::w(rout, 16 + reply_len)],
    );
    h.notify(REQUEST);
    let (_, written) = h.wait_one(REQUEST).expect("virtiofsd answered");
    let out = h.read(rout, written as usize);
    let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
    (error, out[16..].to_vec())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn fuse_requests_reach_virtiofsd_and_a_dead_backend_is_reported() {
    let test = "fuse_requests_reach_virtiofsd_and_a_dead_backend_is_reported";
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "hello from the host\n").unwrap();
    let sock = tmp.path().join("fs.sock");
    let Some(mut daemon) = start_virtiofsd(test, &share, &sock) else {
        return;
    };

    let (gone_tx, gone_rx) = mpsc::channel::<String>();
    let gone_tx = std::sync::Mutex::new(gone_tx);
    let dev = VhostUserFs::connect(
        "myshare",
        &sock,
        std::sync::Arc::new(move |why| {
            let _ = gone_tx.lock().unwrap().send(why);
        }),
    )
    .expect("connect to virtiofsd");
    // Guest memory as husk-vmm makes it with --fs: one memfd, MAP_SHARED.
    let mem = husk::vmm::memory::create_shared(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let mut h = Harness::with_mem(Box::new(dev), mem);
    assert_eq!(h.probe(), 26, "virtio-fs device id");
    let cfg = h.read_config(0, TAG_LEN + 4);
    assert_eq!(&cfg[..7], b"myshare");
    assert!(cfg[7..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(u32_at(&cfg, TAG_LEN), 1, "one request queue");
    // Queue 0 is hiprio (FORGET, INTERRUPT), queue 1 the request queue.
    h.init(0, 2, 128);

    // FUSE_INIT: virtiofsd answers with protocol 7.x.
    let mut init = in_header(40 + 64, FUSE_INIT, 1, 0);
    init.extend_from_slice(&7u32.to_le_bytes());
    init.extend_from_slice(&38u32.to_le_bytes());
    init.extend_from_slice(&[0u8; 56]);
    let (err, body) = fuse(&mut h, &init, 64);
    assert_eq!(err, 0, "FUSE_INIT failed");
    assert_eq!(u32_at(&body, 0), 7, "FUSE major version");

    // LOOKUP of a host file: the attributes are the host's.
    let name = b"hello.txt\0";
    let mut lookup = in_header(40 + name.len() as u32, FUSE_LOOKUP, 2, 1);
    lookup.extend_from_slice(name);
    let (err, entry) = fuse(&mut h, &lookup, 128);
    assert_eq!(err, 0, "LOOKUP hello.txt failed");
    assert_eq!(u64_at(&entry, 40 + 8), 20, "st_size of hello.txt");
    assert_eq!(
        u32_at(&entry, 40 + 60) & 0o170000,
        0o100000,
        "a regular file"
    );
    let missing = b"nope\0";
    let mut lookup = in_header(40 + missing.len() as u32, FUSE_LOOKUP, 3, 1);
    lookup.extend_from_slice(missing);
    assert_eq!(fuse(&mut h, &lookup, 128).0, -libc::ENOENT);

    // The backend dies: the device reports it once, promptly, instead of leaving the guest
    // waiting on queues nobody serves.
    let t = Instant::now();
    daemon.0.kill().unwrap();
    let why = gone_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a dead backend is reported");
    eprintln!(
        "{test}: backend killed -> reported in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        why.contains("virtio-fs myshare") && why.contains("hung up"),
        "{why}"
    );
    assert!(
        gone_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "reported twice"
    );
}
