//! husk-layer-disk's NBD export: whatever a client (QEMU, which a guest may have taken over)
//! sends — during the handshake or the transmission phase — is answered or ends the
//! connection, never a panic, never a read past the disk (the in-memory disk panics on one).
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use husk::devices::nbd_export;
use husk_fuzz::MemDisk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sectors, client)) = data.split_first() else {
        return;
    };
    let disk = MemDisk::new(sectors.into(), true);
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut reader = ours.try_clone().expect("dup");
    let input = client.to_vec();
    let writer = std::thread::spawn(move || {
        // The server may end the connection before it has read everything.
        let _ = ours.write_all(&input);
        let _ = ours.shutdown(Shutdown::Write);
    });
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let _ = nbd_export::serve(theirs, &disk);
    writer.join().expect("writer");
    drain.join().expect("drain");
});
