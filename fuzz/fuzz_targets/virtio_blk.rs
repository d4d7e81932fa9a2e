//! The virtio-blk request path: a hostile driver's queue (descriptor chains anywhere in or
//! out of RAM, loops, wrong directions, lying available index) drained by the real
//! `BlockHandler` against an in-memory disk.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use husk::devices::virtio::block::handler::BlockHandler;
use husk::devices::virtio::VirtioInterrupt;
use husk_fuzz::guest::{self, QueueInput};
use husk_fuzz::MemDisk;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
struct Input {
    queue: QueueInput,
    /// Disk size in sectors (0 to 255).
    sectors: u8,
    read_only: bool,
    /// Initial bytes of the data area (request headers, data).
    data: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mem = guest::memory(&input.data);
    let queue = guest::queue(&mem, 0, &input.queue);
    let disk = Arc::new(MemDisk::new(input.sectors.into(), input.read_only));
    let interrupt = Arc::new(VirtioInterrupt::new().expect("eventfd"));
    let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut h = BlockHandler::new(mem, queue, evt, interrupt, disk);
    let done = h.process_queue();
    // A driver may point device-writable buffers at its own rings, so a request's data can
    // publish more chains; the counts below only hold when the ring was left alone.
    let (_, avail, _) = guest::ring_addrs(0);
    let published = |h: &BlockHandler| h.mem.read_obj::<u16>(GuestAddress(avail + 2)).ok();
    if published(&h) == Some(input.queue.avail_idx()) {
        // Never more chains than the driver made available…
        assert!(done <= usize::from(input.queue.avail_idx()));
    }
    let again = h.process_queue();
    if published(&h) == Some(input.queue.avail_idx()) {
        // …and none twice: with nothing new published, a second pass completes nothing.
        assert_eq!(again, 0, "a second pass over the same ring did work");
    }
});
