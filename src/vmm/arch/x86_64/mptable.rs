//! Intel MultiProcessor Specification 1.4 tables: how an ACPI-less Linux finds the vCPUs,
//! the IOAPIC and the IRQ wiring. The MP floating pointer sits at MPTABLE_START, where Linux
//! scans the last KiB of base memory, and the config table follows it within that KiB.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IRQ_MAX, LOW_MEM_END, MPTABLE_START};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A VM needs at least one vCPU
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    /// Too many vCPUs for the space below 640 KiB
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// Failed to write the MP table into guest memory
    #[error("failed to write the MP table at {MPTABLE_START:#x}: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const CPU_ENTRY_SIZE: usize = 20;
const ENTRY_SIZE: usize = 8;
/// Bus, IOAPIC, one interrupt per IOAPIC pin, LINT0 and LINT1.
const FIXED_ENTRIES: usize = 2 + (IRQ_MAX as usize + 1) + 2;
const SPACE: usize = (LOW_MEM_END - MPTABLE_START) as usize;

/// Most vCPUs whose entries fit (37).
pub const MAX_CPUS: u8 =
    ((SPACE - FLOATING_POINTER_SIZE - HEADER_SIZE - FIXED_ENTRIES * ENTRY_SIZE) / CPU_ENTRY_SIZE)
        as u8;

const MP_SPEC_REV: u8 = 4;
/// Version the in-kernel LAPIC reports.
const APIC_VERSION: u8 = 0x14;
/// Version the in-kernel IOAPIC reports.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature: family 6.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1 EDX feature flags: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// Bytes of the floating pointer plus config table for `num_cpus` vCPUs, to be placed at
/// guest address `base`. The IOAPIC takes APIC id `num_cpus`.
pub fn build_mptable(num_cpus: u8, base: u32) -> Result<Vec<u8>, Error> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;

    let mut table = Vec::with_capacity(SPACE);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&[0, 0]); // length, below
    table.push(MP_SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&[0, 0]); // entry count, below
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // no extended table

    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        table.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        table.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        table.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        table.extend_from_slice(&[0; 8]);
    }
    table.extend_from_slice(&[ENTRY_BUS, 0]);
    table.extend_from_slice(b"ISA   ");
    table.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    table.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for irq in 0..=IRQ_MAX as u8 {
        // ISA bus irq n -> IOAPIC pin n, default (bus) polarity and trigger.
        table.extend_from_slice(&[ENTRY_IOINT, IRQ_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // LINT0 of the BSP takes the PIC (virtual wire); LINT1 of every CPU takes NMIs.
    table.extend_from_slice(&[ENTRY_LINT, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    table.extend_from_slice(&[ENTRY_LINT, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);

    let entries = num_cpus as u16 + FIXED_ENTRIES as u16;
    let len = table.len() as u16;
    table[4..6].copy_from_slice(&len.to_le_bytes());
    table[34..36].copy_from_slice(&entries.to_le_bytes());
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(SPACE);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(base + FLOATING_POINTER_SIZE as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(MP_SPEC_REV);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature byte 1 = 0: the config table is present
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP tables for `num_cpus` vCPUs at MPTABLE_START.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), Error> {
    let bytes = build_mptable(num_cpus, MPTABLE_START as u32)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    /// Reads the tables back from guest memory and returns the config table's entries.
    fn parse(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(fp[8], 1);
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        let table_addr = u64::from(u32_at(&fp, 4));
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(table_addr)).unwrap();
        assert_eq!(&hdr[0..4], b"PCMP");
        assert_eq!(u32_at(&hdr, 36), APIC_ADDR);
        let len = usize::from(u16_at(&hdr, 4));
        assert!(table_addr + len as u64 <= LOW_MEM_END);
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr)).unwrap();
        assert_eq!(sum(&table), 0, "config table checksum");

        let mut entries = Vec::new();
        let mut off = HEADER_SIZE;
        while off < len {
            let size = if table[off] == ENTRY_PROCESSOR { 20 } else { 8 };
            entries.push(table[off..off + size].to_vec());
            off += size;
        }
        assert_eq!(off, len);
        assert_eq!(entries.len(), usize::from(u16_at(&hdr, 34)));
        entries
    }

    #[test]
    fn four_cpus() {
        let m = mem();
        setup_mptable(&m, 4).unwrap();
        let entries = parse(&m);
        let of = |t: u8| entries.iter().filter(move |e| e[0] == t);
        let cpus: Vec<_> = of(ENTRY_PROCESSOR).collect();
        assert_eq!(cpus.len(), 4);
        assert_eq!((cpus[0][1], cpus[0][3]), (0, 3));
        assert_eq!((cpus[3][1], cpus[3][3]), (3, 1));
        let bus: Vec<_> = of(ENTRY_BUS).collect();
        assert_eq!(&bus[0][2..8], b"ISA   ");
        let ioapic: Vec<_> = of(ENTRY_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(ioapic[0][1], 4);
        assert_eq!(u32_at(ioapic[0], 4), 0xfec0_0000);
        let ints: Vec<_> = of(ENTRY_IOINT).collect();
        assert_eq!(ints.len(), 24);
        for (n, e) in ints.iter().enumerate() {
            assert_eq!((e[5], e[6], e[7]), (n as u8, 4, n as u8));
        }
        let lints: Vec<_> = of(ENTRY_LINT).collect();
        assert_eq!(lints[0][1], IRQ_TYPE_EXTINT);
        assert_eq!((lints[1][1], lints[1][6], lints[1][7]), (IRQ_TYPE_NMI, 0xff, 1));
    }

    #[test]
    fn largest_table_fits_below_640k() {
        assert_eq!(MAX_CPUS, 37);
        let m = mem();
        setup_mptable(&m, MAX_CPUS).unwrap();
        assert_eq!(parse(&m).len(), MAX_CPUS as usize + FIXED_ENTRIES);
    }

    #[test]
    fn cpu_count_limits() {
        let m = mem();
        assert!(matches!(setup_mptable(&m, 0), Err(Error::NoCpus)));
        assert!(matches!(
            setup_mptable(&m, MAX_CPUS + 1),
            Err(Error::TooManyCpus(38))
        ));
    }

    #[test]
    fn memory_too_small() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(setup_mptable(&m, 1), Err(Error::Write(_))));
    }
}
