//! virtio-blk over raw files.
//!
//! - [`backend`]: the [`DiskBackend`](backend::DiskBackend) trait and [`RawFile`](backend::RawFile)
//!   (read-only images are opened `O_RDONLY`);
//! - [`composite`]: a read-only GPT disk synthesised from many layer files;
//! - [`request`]: pure request processing (one chain → status + used length);
//! - [`handler`]: the worker's event subscriber (drain queue, raise interrupt);
//! - [`device`]: [`Block`](device::Block), the [`VirtioDevice`](super::VirtioDevice).
//!
//! Supported requests: IN, OUT, FLUSH, GET_ID; anything else is answered `UNSUPP`. Offered
//! features: VERSION_1, RING_EVENT_IDX, RING_INDIRECT_DESC, BLK_F_FLUSH, BLK_F_SEG_MAX,
//! BLK_F_BLK_SIZE (512), and BLK_F_RO for read-only disks (whose writes get IOERR).
//!
//! # Many layers per VM
//!
//! An image can have up to 127 layers, but a VM has only 19 virtio-mmio GSIs (5..=23 on
//! x86_64), shared with vsock, scratch disk, net and fs. One virtio-blk device per layer
//! cannot reach 127. husk therefore follows crosvm's *composite disk*: the read-only layers
//! of a container become **one** virtio-blk device whose backend is a GPT-partitioned
//! concatenation of the layer files — partition *i* is layer *i* — synthesised in memory
//! (protective MBR, primary GPT header + entry array, each layer aligned to 1 MiB, backup
//! entries + header at the end). Nothing is copied: reads are routed by offset to the layer
//! file (or to the synthesised header bytes, or zeros for alignment padding). The guest sees
//! `/dev/vda1 … /dev/vdaN`, the agent mounts each as an erofs/ext4 lower dir by partition
//! index (partition names carry the layer digest for cross-checking). The device is
//! read-only (BLK_F_RO), so the layers stay shareable between VMs in the host page cache.
//! The writable scratch disk stays a separate plain device. GPT allows 128 entries in the
//! standard 16 KiB array, which is where the 127-layer ceiling comes from with room to spare.
//!
//! Plain devices remain available for small images: up to 19 devices per VM.

pub mod backend;
pub mod composite;
pub mod device;
pub mod handler;
pub mod request;

pub use backend::{BackendError, DiskBackend, RawFile};
pub use composite::{CompositeDisk, CompositeError};
pub use device::Block;
