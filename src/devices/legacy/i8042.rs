//! The i8042 keyboard controller, reduced to what a guest without a keyboard touches: the
//! status/command port, the controller command byte, self-tests, and the reset line —
//! command 0xfe on port 0x64, which Linux uses for `reboot=k` and which ends the VM.
//!
//! It sits at 0x60..0x65; port 0x61 (speaker/PIT gate) inside that range is taken by KVM's
//! in-kernel PIT first, so offsets other than 0 (data) and 4 (command) read 0 here.

use std::collections::VecDeque;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;
use vm_superio::Trigger;

pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard IRQ; raised when a reply waits in the output buffer and the guest enabled it.
pub const I8042_KBD_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;

// Controller command byte bits.
const CB_KBD_INT: u8 = 0x01;
const CB_SYSTEM: u8 = 0x04;
const CB_KBD_DISABLE: u8 = 0x10;
const CB_AUX_DISABLE: u8 = 0x20;
const CB_XLATE: u8 = 0x40;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;
/// Bounded so a guest hammering the data port cannot grow host memory.
const OUT_BUF_MAX: usize = 16;

pub struct I8042Device {
    on_reset: Box<dyn Fn() + Send>,
    kbd_irq: Option<EventFdTrigger>,
    status: u8,
    control: u8,
    /// The command waiting for a data byte on port 0x60, if any.
    pending: Option<u8>,
    out: VecDeque<u8>,
}

impl I8042Device {
    /// `on_reset` runs on the vCPU thread that pulsed the reset line, before that vCPU runs
    /// again: a guest that falls through to a triple fault after asking for a reset (as
    /// Linux does if the reset seems slow) is then already recorded as a clean reset.
    pub fn new(on_reset: impl Fn() + Send + 'static, kbd_irq: Option<EventFdTrigger>) -> Self {
        Self {
            on_reset: Box::new(on_reset),
            kbd_irq,
            status: SB_SYSTEM,
            control: CB_KBD_INT | CB_SYSTEM | CB_XLATE | CB_AUX_DISABLE,
            pending: None,
            out: VecDeque::new(),
        }
    }

    fn push(&mut self, b: u8) {
        if self.out.len() < OUT_BUF_MAX {
            self.out.push_back(b);
        }
        self.status |= SB_OUT_FULL;
        if self.control & CB_KBD_INT != 0 {
            if let Some(irq) = &self.kbd_irq {
                if let Err(e) = irq.trigger() {
                    tracing::debug!("i8042 irq: {e}");
                }
            }
        }
    }

    fn pop(&mut self) -> u8 {
        let b = self.out.pop_front().unwrap_or(0);
        if self.out.is_empty() {
            self.status &= !SB_OUT_FULL;
        }
        b
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_CMD;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.control |= CB_AUX_DISABLE,
            CMD_AUX_ENABLE => self.control &= !CB_AUX_DISABLE,
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.control |= CB_KBD_DISABLE,
            CMD_KBD_ENABLE => self.control &= !CB_KBD_DISABLE,
            // Output port: bit 0 is the (inactive, high) reset line, bit 1 the A20 gate.
            CMD_READ_OUTP => self.push(0x03),
            CMD_RESET_CPU => (self.on_reset)(),
            // Everything else (aux commands, pulses of other lines) has nothing behind it.
            _ => {}
        }
    }

    fn data(&mut self, b: u8) {
        self.status &= !SB_LAST_WAS_CMD;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.control = b,
            // A byte for the keyboard itself: no keyboard is attached, but acknowledging
            // keeps drivers from waiting out their timeouts.
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            DATA => self.pop(),
            COMMAND => self.status,
            _ => 0,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match offset {
            DATA => self.data(b),
            COMMAND => self.command(b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn dev() -> (I8042Device, Arc<AtomicUsize>) {
        let resets = Arc::new(AtomicUsize::new(0));
        let r = resets.clone();
        (
            I8042Device::new(
                move || {
                    r.fetch_add(1, Ordering::SeqCst);
                },
                None,
            ),
            resets,
        )
    }

    fn read(d: &mut I8042Device, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_calls_back() {
        let (mut d, resets) = dev();
        // Linux waits for the input buffer to drain (status bit 1) before the pulse.
        assert_eq!(read(&mut d, COMMAND) & 0x02, 0);
        d.write(COMMAND, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn self_test_and_command_byte() {
        let (mut d, resets) = dev();
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut d, COMMAND) & SB_OUT_FULL, 0);
        assert_eq!(read(&mut d, DATA), SELF_TEST_OK);
        assert_eq!(read(&mut d, COMMAND) & SB_OUT_FULL, 0);
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[0x45]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA), 0x45);
        d.write(DATA, &[0xf2]);
        assert_eq!(read(&mut d, DATA), KBD_ACK);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn output_buffer_is_bounded() {
        let (mut d, _) = dev();
        for _ in 0..1000 {
            d.write(DATA, &[0xff]);
        }
        assert_eq!(d.out.len(), OUT_BUF_MAX);
        assert_eq!(read(&mut d, 1), 0);
    }
}
