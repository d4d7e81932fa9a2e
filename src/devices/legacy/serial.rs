//! The 8250/16550 UART at 0x3f8 (COM1): vm-superio's register model on the PIO bus.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// COM1's port base and its legacy IRQ.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Where the guest's console bytes go.
pub type ConsoleOut = Box<dyn Write + Send>;

pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, ConsoleOut>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFdTrigger, out: ConsoleOut) -> Self {
        Self {
            serial: Serial::new(interrupt, out),
        }
    }

    /// Feeds host input to the guest; returns how many bytes the FIFO took.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.serial
            .enqueue_raw_bytes(bytes)
            .map_err(|e| io::Error::other(format!("serial input: {e:?}")))
    }

    /// Room left in the receive FIFO: the input handler reads no more than this so nothing
    /// typed is dropped.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider accesses read as floating bus.
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) => data[0] = self.serial.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            // A failed console write (closed pipe, full disk) must not stop the guest: the
            // byte is lost, as on a UART with nothing attached.
            if let Err(e) = self.serial.write(off, data[0]) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

/// stdout without Rust's line buffer: vm-superio flushes after every byte anyway, and a
/// direct write(2) keeps the console's first byte as early as the guest sent it.
pub struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: writes from a valid slice to fd 1, which the process owns for its lifetime.
        let n = unsafe { libc::write(libc::STDOUT_FILENO, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let out = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(out.clone()),
        );
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // LSR (offset 5): transmitter empty bits set, so drivers never wait.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn input_is_readable_and_raises_the_irq_when_enabled() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(io::sink()),
        );
        dev.write(1, &[0x01]); // IER: received-data interrupt
        let _ = irq.read();
        assert_eq!(dev.enqueue_input(b"x").unwrap(), 1);
        assert!(irq.read().is_ok());
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
