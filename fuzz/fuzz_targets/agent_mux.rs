//! husk-agent-mux's host side as a hostile guest drives it: the guest's end of the serial
//! link sends fuzz bytes (echoing the host's Hello first, or not), while a host client may
//! connect and say `CONNECT <port>` with fuzz bytes of its own. Nothing the guest sends may
//! crash the host side or keep it from ending when the link does.
#![no_main]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Echo the host's Hello before `link` (the link is then in step).
    echo: bool,
    /// The guest's bytes on the link, in writes of these sizes.
    link: Vec<Vec<u8>>,
    /// A client's first bytes on the hybrid socket, if one connects.
    client: Option<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vsock");
    let listener: OwnedFd = UnixListener::bind(&uds).expect("bind").into();
    let (host_end, mut guest) = UnixStream::pair().expect("socketpair");
    let host = std::thread::spawn(move || husk_mux::host::run(host_end.into(), listener));
    guest
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut hello = [0u8; husk_mux::frame::HELLO_LEN];
    guest.read_exact(&mut hello).expect("the host's hello");
    let client = input.client.as_ref().and_then(|first| {
        let mut c = UnixStream::connect(&uds).ok()?;
        let _ = c.write_all(first);
        Some(c)
    });
    if input.echo {
        let _ = guest.write_all(&hello);
    }
    // The host may stop reading (it ended, or it pushes back): writes must not block.
    guest.set_nonblocking(true).expect("nonblocking");
    for chunk in &input.link {
        if guest.write(chunk).is_err() {
            break;
        }
    }
    // The link's end (QEMU exiting) ends the host side, whatever came before it.
    drop(guest);
    drop(client);
    let _ = host.join().expect("the host side panicked");
});
