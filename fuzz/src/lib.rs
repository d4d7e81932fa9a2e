//! Shared pieces of husk's fuzz targets (see docs/fuzzing.md):
//!
//! - [`guest`]: a small guest RAM with split virtqueues laid out from fuzz input (descriptor
//!   tables, available rings, data), the shape a hostile driver controls.
//! - [`archive`]: a line-based description of a tar archive (entry types, modes, hostile
//!   names, digest references) that a target turns into a real tar/tar.gz/tar.zst, so the
//!   fuzzer mutates the contents of an image archive or layer instead of tar checksums.
//! - [`MemDisk`]: an in-memory `DiskBackend` for the block request path.

pub mod archive;
pub mod guest;

use std::io;
use std::sync::Mutex;

use husk::devices::virtio::block::backend::{GuestSlice, ID_BYTES};
use husk::devices::virtio::block::DiskBackend;

/// A disk held in memory; `read_only` refuses writes the way the request path must check
/// before it gets here (a write reaching a read-only `MemDisk` is a bug: it panics).
pub struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemDisk {
    /// `sectors` 512-byte sectors, filled with a pattern so reads are visible.
    pub fn new(sectors: u64, read_only: bool) -> MemDisk {
        let len = (sectors * 512) as usize;
        MemDisk {
            data: Mutex::new((0..len).map(|i| i as u8).collect()),
            read_only,
        }
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let cap = self.capacity();
        let end = offset.checked_add(len as u64).filter(|&e| e <= cap);
        // The request path bounds-checks against capacity() first: anything else is a bug.
        assert!(
            end.is_some(),
            "request {offset}+{len} past a {cap}-byte disk reached the backend"
        );
        Ok(offset as usize..offset as usize + len)
    }
}

impl DiskBackend for MemDisk {
    fn capacity(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn id(&self) -> [u8; ID_BYTES] {
        *b"husk-fuzz-disk\0\0\0\0\0\0"
    }
    fn read_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from(&self.data.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
        assert!(!self.read_only, "a write reached a read-only disk");
        let r = self.range(offset, buf.len())?;
        buf.copy_to(&mut self.data.lock().unwrap()[r]);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
