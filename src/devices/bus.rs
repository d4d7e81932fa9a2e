//! Address buses that route vCPU port-I/O and MMIO exits to devices.
//!
//! A device owns a half-open range `[base, base + len)`. Ranges never overlap; the bus
//! answers an access with the device and the offset inside its range. An access nobody
//! owns is ignored (reads return all ones), as on real hardware.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus. `offset` is relative to the start of its range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange { base: u64, len: u64 },
    /// Range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A bus: cheap to clone (devices are shared), one clone per vCPU thread.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The closest device starting at or below `end - 1` is the only one that can overlap.
        if let Some((&b, e)) = self.devices.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= entry.len).then_some((offset, entry))
    }

    /// Reads into `data`; returns false (and fills with 0xff) when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, entry)) => {
                // A poisoned lock means a device panicked earlier; keep serving rather
                // than take the whole VMM down from a vCPU thread.
                let mut dev = entry.device.lock().unwrap_or_else(|p| p.into_inner());
                dev.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes `data`; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, entry)) => {
                let mut dev = entry.device.lock().unwrap_or_else(|p| p.into_inner());
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b, [3]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().last, Some((1, vec![7])));
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn access_straddling_the_end_is_unowned() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10).unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x100e, &mut b));
        assert!(bus.read(0x100c, &mut b));
    }

    #[test]
    fn rejects_overlap_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x1000, 0x100).unwrap();
        assert!(matches!(bus.insert(d(), 0x10ff, 1), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(d(), 0xf00, 0x101), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(d(), 0x2000, 0), Err(BusError::InvalidRange { .. })));
        assert!(matches!(bus.insert(d(), u64::MAX, 2), Err(BusError::InvalidRange { .. })));
        bus.insert(d(), 0x1100, 0x100).unwrap();
        bus.insert(d(), 0xf00, 0x100).unwrap();
    }
}
