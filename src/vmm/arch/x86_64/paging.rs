//! Identity-mapped boot page tables: the first 1 GiB with 2 MiB pages, enough for the
//! kernel's 64-bit entry code, which builds its own tables right away.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// Errors writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Failed to write a page table into guest memory
    #[error("failed to write the {table} boot page table into guest memory: {source}")]
    Write {
        /// Which table: PML4, PDPTE or PDE.
        table: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Present | writable.
const PRESENT_RW: u64 = 0x3;
/// Present | writable | page size (2 MiB leaf in a PDE).
const PRESENT_RW_HUGE: u64 = 0x83;

/// The PDE for the `i`-th 2 MiB page of the identity map.
pub const fn pde_entry(i: u64) -> u64 {
    (i << 21) | PRESENT_RW_HUGE
}

/// Writes PML4[0] -> PDPTE, PDPTE[0] -> PDE, 512 x 2 MiB PDEs; returns the CR3 value.
pub fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    let write = |table: &'static str, val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| Error::Write { table, source })
    };
    write("PML4", PDPTE_START | PRESENT_RW, PML4_START)?;
    write("PDPTE", PDE_START | PRESENT_RW, PDPTE_START)?;
    for i in 0..512u64 {
        write("PDE", pde_entry(i), PDE_START + i * 8)?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_map_first_gib_identity() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let cr3 = setup_page_tables(&mem).unwrap();
        assert_eq!(cr3, 0x9000);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, 0xb003);
        let pde0: u64 = mem.read_obj(GuestAddress(PDE_START)).unwrap();
        assert_eq!(pde0, 0x83);
        let pde1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde1, 0x20_0083);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, 0x3fe0_0083);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        let err = setup_page_tables(&mem).unwrap_err();
        assert!(err.to_string().contains("PML4"), "{err}");
    }
}
