//! A mux with nothing to move uses no CPU, also once a stream's local ends have hung up (a
//! hung-up socket is always ready to poll). Its own test binary: the process's CPU time is
//! what is measured.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::Duration;

use husk_mux::{guest, host};

fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; RUSAGE_SELF is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

#[test]
fn hung_up_streams_cost_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock");
    let listener: OwnedFd = UnixListener::bind(&uds).unwrap().into();
    let (h, g) = UnixStream::pair().unwrap();
    thread::spawn(move || host::run(h.into(), listener));
    let acceptor = guest::start(g.into(), 1024, |e| panic!("guest mux: {e}")).unwrap();

    // Two streams: the host's client hangs up on one, the guest's end of the other.
    let mut ends = Vec::new();
    for _ in 0..2 {
        let mut c = UnixStream::connect(&uds).unwrap();
        c.write_all(b"CONNECT 1024\n").unwrap();
        let mut ok = [0u8; 8];
        c.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"OK 1024\n");
        ends.push((c, UnixStream::from(acceptor.accept().unwrap())));
    }
    let (client_gone, guest_kept) = ends.remove(0);
    let (client_kept, guest_gone) = ends.remove(0);
    client_gone.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client_gone);
    guest_gone.shutdown(std::net::Shutdown::Both).unwrap();
    drop(guest_gone);
    thread::sleep(Duration::from_millis(300));

    let before = cpu_secs();
    thread::sleep(Duration::from_secs(1));
    let used = cpu_secs() - before;
    assert!(used < 0.2, "an idle mux used {used:.2} s of CPU in 1 s");
    drop((guest_kept, client_kept));
}
