//! Guest physical memory layout of a husk microVM.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)             0x0000_0520  IDT (one null gate)
//! 0x0000_7000  zero page (boot_params)     0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4 / 0xa000 PDPTE / 0xb000 PDE (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line (4 KiB)
//! 0x0009_fc00  EBDA: MP floating pointer + MP config table (not RAM in e820)
//! 0x0010_0000  kernel (HIMEM_START) ... RAM up to the MMIO gap
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM that did not fit below the gap
//! ```

use vm_memory::GuestAddress;

/// Where the kernel is loaded and where RAM above the legacy hole starts (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// The zero page (`struct boot_params`); `rsi` points here at kernel entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 table; CR3 points here.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Boot GDT.
pub const BOOT_GDT_OFFSET: u64 = 0x500;
/// Boot IDT.
pub const BOOT_IDT_OFFSET: u64 = 0x520;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Extended BIOS data area; RAM in e820 stops here.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer and config table (inside the EBDA, where Linux scans for them).
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of the legacy low memory (640 KiB); the MP table must fit below it.
pub const LOW_MEM_END: u64 = 0xa0000;
/// Start of the 32-bit MMIO gap (3 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO gap (1 GiB, up to 4 GiB).
pub const MMIO_GAP_SIZE: u64 = 0x4000_0000;
/// First address past the MMIO gap (4 GiB): RAM resumes here.
pub const MMIO_GAP_END: u64 = MMIO_GAP_START + MMIO_GAP_SIZE;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// First GSI handed to devices (below are legacy ISA: timer, keyboard, serial...).
pub const IRQ_BASE: u32 = 5;
/// Last GSI the IOAPIC has (24 pins).
pub const IRQ_MAX: u32 = 23;

/// Guest RAM regions for `mem_size` bytes of RAM: one region from 0, and the part that
/// would overlap the MMIO gap moved above 4 GiB.
pub fn arch_memory_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (mem_size - MMIO_GAP_START) as usize),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(
            arch_memory_regions(256 * MIB),
            vec![(GuestAddress(0), (256 * MIB) as usize)]
        );
        assert_eq!(
            arch_memory_regions(3 * GIB),
            vec![(GuestAddress(0), (3 * GIB) as usize)]
        );
    }

    #[test]
    fn memory_overlapping_the_gap_moves_above_4g() {
        let r = arch_memory_regions(4 * GIB);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), GIB as usize)
            ]
        );
        let r = arch_memory_regions(6 * GIB);
        assert_eq!(r[1], (GuestAddress(4 * GIB), (3 * GIB) as usize));
        let total: usize = r.iter().map(|(_, s)| s).sum();
        assert_eq!(total as u64, 6 * GIB);
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        assert!(BOOT_IDT_OFFSET >= BOOT_GDT_OFFSET + 4 * 8);
        assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
        assert!(BOOT_STACK_POINTER < PML4_START);
        assert!(PDE_START + 4096 <= CMDLINE_START);
        assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
        assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START);
        assert!(u64::from(IOAPIC_ADDR) < MMIO_GAP_END);
    }
}
