//! The vsock packet path and muxer: a hostile driver's tx queue (packets: headers, data,
//! chains) and rx buffers, host programs connecting to the hybrid socket (CONNECT lines or
//! garbage) and answering guest connections, all run through the real `VsockHandler` in a
//! real event loop, the way the device's worker runs it.
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use arbitrary::Arbitrary;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use husk::devices::virtio::vsock::handler::{VsockHandler, EVQ, RXQ, TXQ};
use husk::devices::virtio::vsock::muxer::Muxer;
use husk::devices::virtio::vsock::unix::guest_target;
use husk::devices::virtio::VirtioInterrupt;
use husk_fuzz::guest::{self, QueueInput};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The guest's CID (headers must carry it to be accepted).
const CID: u64 = 3;
/// A host port with a listener behind it, so guest connections can succeed.
const HOST_PORT: u32 = 1024;

#[derive(Arbitrary, Debug)]
struct Input {
    rx: QueueInput,
    tx: QueueInput,
    /// What host programs write after connecting to the hybrid socket (at most 3).
    host_connects: Vec<Vec<u8>>,
    /// What the host service on `HOST_PORT` writes to each guest connection it accepts.
    host_reply: Vec<u8>,
    /// Event-loop rounds to run (1 to 4).
    rounds: u8,
    data: Vec<u8>,
}

type Sub = Box<dyn MutEventSubscriber + Send>;

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("temp dir");
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).expect("bind hybrid socket");
    let service = UnixListener::bind(guest_target(&uds, HOST_PORT)).expect("bind host port");
    service.set_nonblocking(true).expect("nonblocking");
    let mut hosts: Vec<UnixStream> = Vec::new();
    for bytes in input.host_connects.iter().take(3) {
        let mut s = UnixStream::connect(&uds).expect("connect hybrid socket");
        s.set_nonblocking(true).expect("nonblocking");
        let _ = s.write(bytes);
        hosts.push(s);
    }

    let mem = guest::memory(&input.data);
    let queues = vec![
        guest::queue(&mem, RXQ, &input.rx),
        guest::queue(&mem, TXQ, &input.tx),
        guest::queue(
            &mem,
            EVQ,
            &QueueInput {
                size_log2: 0,
                event_idx: false,
                descs: Vec::new(),
                avail: Vec::new(),
                bogus_avail_idx: None,
                used_event: 0,
            },
        ),
    ];
    let evts: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let muxer = Muxer::new(CID, uds.clone(), listener).expect("muxer");
    let handler = VsockHandler::new(
        mem,
        queues,
        evts,
        Arc::new(VirtioInterrupt::new().expect("eventfd")),
        muxer,
    );
    let mut em: EventManager<Sub> = EventManager::new().expect("event manager");
    // init(): drains the tx queue, serves waiting host programs, fills rx buffers.
    em.add_subscriber(Box::new(handler));
    for _ in 0..(input.rounds % 4) + 1 {
        while let Ok((mut s, _)) = service.accept() {
            s.set_nonblocking(true).expect("nonblocking");
            let _ = s.write(&input.host_reply);
            hosts.push(s);
        }
        em.run_with_timeout(0).expect("event loop");
    }
});
