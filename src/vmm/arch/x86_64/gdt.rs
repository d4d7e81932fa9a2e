//! The boot GDT and IDT: a flat 64-bit code segment, a flat data segment and a TSS,
//! written into guest memory and converted to the `kvm_segment`s loaded into the vCPU.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_OFFSET, BOOT_IDT_OFFSET};

/// Errors writing the descriptor tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Failed to write the boot GDT into guest memory
    #[error("failed to write the boot GDT into guest memory: {0}")]
    WriteGdt(vm_memory::GuestMemoryError),
    /// Failed to write the boot IDT into guest memory
    #[error("failed to write the boot IDT into guest memory: {0}")]
    WriteIdt(vm_memory::GuestMemoryError),
}

/// Access/flags of a 64-bit code segment: G, L, P, S, execute/read, accessed.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Access/flags of a flat data segment: G, D/B, P, S, read/write, accessed.
pub const DATA_FLAGS: u16 = 0xc093;
/// Access/flags of a busy 64-bit TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// GDT index of the code segment (selector 0x08).
pub const CODE_INDEX: u8 = 1;
/// GDT index of the data segment (selector 0x10).
pub const DATA_INDEX: u8 = 2;
/// GDT index of the TSS (selector 0x18).
pub const TSS_INDEX: u8 = 3;

/// Packs a segment descriptor. `flags` holds the access byte in bits 0..8 and the
/// G/DB/L/AVL nibble in bits 12..16, as in `0xa09b`.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code64, data, TSS, all flat over 4 GiB (limit ignored in long mode).
pub fn boot_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32) | ((entry & 0x0000_00ff_ffff_0000) >> 16)
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    // KVM wants the limit in bytes: scale 4 KiB granularity by hand.
    if bit(entry, 55) == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The `kvm_segment` KVM loads for descriptor `entry` at GDT slot `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes `gdt` at BOOT_GDT_OFFSET and a single null IDT gate at BOOT_IDT_OFFSET.
pub fn write_gdt_idt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), Error> {
    for (i, entry) in gdt.iter().enumerate() {
        let addr = GuestAddress(BOOT_GDT_OFFSET + (i * 8) as u64);
        mem.write_obj(*entry, addr).map_err(Error::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_OFFSET))
        .map_err(Error::WriteIdt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_have_known_bit_patterns() {
        let gdt = boot_gdt();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[3], 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0x1234_5678, 0xabcde), 0x128a_8b34_5678_bcde);
    }

    #[test]
    fn code_segment_is_long_mode() {
        let cs = kvm_segment_from_gdt(boot_gdt()[1], CODE_INDEX);
        assert_eq!(cs.selector, 0x8);
        assert_eq!(cs.type_, 0xb);
        assert_eq!((cs.present, cs.s, cs.l, cs.db, cs.g, cs.dpl), (1, 1, 1, 0, 1, 0));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = kvm_segment_from_gdt(boot_gdt()[2], DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l, ds.s), (0x10, 0x3, 1, 0, 1));
        let tr = kvm_segment_from_gdt(boot_gdt()[3], TSS_INDEX);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.present), (0x18, 0xb, 0, 1));
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn base_and_byte_granular_limit_round_trip() {
        let seg = kvm_segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0x5_4321), 5);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0x5_4321);
        assert_eq!(seg.g, 0);
    }

    #[test]
    fn tables_are_written_to_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_obj(0xdead_beef_u64, GuestAddress(BOOT_IDT_OFFSET)).unwrap();
        write_gdt_idt(&mem, &boot_gdt()).unwrap();
        for (i, e) in boot_gdt().iter().enumerate() {
            let v: u64 = mem.read_obj(GuestAddress(BOOT_GDT_OFFSET + 8 * i as u64)).unwrap();
            assert_eq!(v, *e);
        }
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_OFFSET)).unwrap();
        assert_eq!(idt, 0);
    }

    #[test]
    fn writing_outside_memory_fails() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(matches!(write_gdt_idt(&mem, &boot_gdt()), Err(Error::WriteGdt(_))));
    }
}
