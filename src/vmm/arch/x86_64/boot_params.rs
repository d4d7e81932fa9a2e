//! The Linux zero page (`struct boot_params`) and its e820 memory map.

use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_START, ZERO_PAGE_START};

/// Errors building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory has no region at address 0, or it ends below HIMEM_START
    #[error("guest memory must start at 0 and reach past 1 MiB (HIMEM_START) to boot Linux")]
    NoLowMemory,
    /// More e820 entries than the zero page holds
    #[error("{0} e820 entries do not fit in the zero page (at most 128)")]
    TooManyE820Entries(usize),
    /// The initrd does not fit between the kernel and the top of low memory
    #[error("initrd of {size} bytes does not fit in guest RAM below {top:#x}; give the VM more memory")]
    InitrdTooBig {
        /// Initrd size.
        size: usize,
        /// Top of RAM below the MMIO gap.
        top: u64,
    },
    /// The command line or initrd is out of the 32-bit range the boot protocol addresses
    #[error("{what} at {addr:#x} (+{size:#x}) is out of the 32-bit range the zero page can describe")]
    Above4G {
        /// Command line or initrd.
        what: &'static str,
        /// Its address.
        addr: u64,
        /// Its size.
        size: usize,
    },
    /// Failed to write the zero page into guest memory
    #[error("failed to write the zero page at {ZERO_PAGE_START:#x}: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// "HdrS": the setup header magic.
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// 0xaa55: the boot sector signature.
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Boot loader id "undefined" (0xff): husk is not a registered loader.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Alignment a relocatable kernel is asked for when no setup header gives one (16 MiB).
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

const PAGE_SIZE: u64 = 0x1000;

/// `boot_params` as plain bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParams(boot_params);

// SAFETY: boot_params is a packed C struct of integers and arrays of integers: no padding,
// no pointers, every bit pattern valid.
unsafe impl ByteValued for BootParams {}

/// The e820 map (addr, size, type) for guest RAM laid out as `regions`: low RAM stops at the
/// EBDA, the legacy hole [EBDA_START, HIMEM_START) is left out, other regions are RAM as is.
pub fn e820_from_regions(regions: &[(GuestAddress, usize)]) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::new();
    for (start, len) in regions {
        let (start, end) = (start.raw_value(), start.raw_value() + *len as u64);
        if start < HIMEM_START {
            map.push((start, end.min(EBDA_START) - start, E820_RAM));
            if end > HIMEM_START {
                map.push((HIMEM_START, end - HIMEM_START, E820_RAM));
            }
        } else {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// The e820 map for `mem_size` bytes of RAM laid out by [`super::layout::arch_memory_regions`].
pub fn e820_entries(mem_size: u64) -> Vec<(u64, u64, u32)> {
    e820_from_regions(&super::layout::arch_memory_regions(mem_size))
}

fn regions(mem: &GuestMemoryMmap) -> Vec<(GuestAddress, usize)> {
    mem.iter()
        .map(|r| (r.start_addr(), r.len() as usize))
        .collect()
}

/// End (exclusive) of the RAM region that starts at 0, clipped to the MMIO gap.
fn low_mem_end(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    let end = mem
        .iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len().min(MMIO_GAP_START))
        .ok_or(Error::NoLowMemory)?;
    if end <= HIMEM_START {
        return Err(Error::NoLowMemory);
    }
    Ok(end)
}

/// Where to load an initrd of `initrd_size` bytes: page-aligned, as high as possible in the
/// RAM below the MMIO gap, so the kernel loaded at HIMEM_START has the room below it.
/// 64-bit kernels accept an initrd above the header's `initrd_addr_max` (they relocate it).
pub fn initrd_load_addr(mem: &GuestMemoryMmap, initrd_size: usize) -> Result<GuestAddress, Error> {
    let top = low_mem_end(mem)?;
    let too_big = Error::InitrdTooBig { size: initrd_size, top };
    let start = top.checked_sub(initrd_size as u64).ok_or(too_big)?;
    let start = start & !(PAGE_SIZE - 1);
    if start < HIMEM_START {
        return Err(Error::InitrdTooBig { size: initrd_size, top });
    }
    Ok(GuestAddress(start))
}

fn low32(what: &'static str, addr: GuestAddress, size: usize) -> Result<u32, Error> {
    let end = addr.raw_value().checked_add(size as u64);
    match (u32::try_from(addr.raw_value()), end) {
        (Ok(a), Some(e)) if e <= 1 << 32 => Ok(a),
        _ => Err(Error::Above4G { what, addr: addr.raw_value(), size }),
    }
}

/// Builds the zero page without touching memory: starts from the kernel's own setup header
/// when there is one (the boot protocol asks loaders to keep it), else from a blank one.
pub fn build_boot_params(
    regions: &[(GuestAddress, usize)],
    cmdline_addr: GuestAddress,
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
    header: Option<setup_header>,
) -> Result<boot_params, Error> {
    let mut params = boot_params::default();
    match header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES,
    }
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = low32("command line", cmdline_addr, cmdline_size)?;
    // cmdline_size in the header is the kernel's maximum; the loader passes the actual one.
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = low32("initrd", addr, size)?;
        params.hdr.ramdisk_size = size as u32;
    }

    let map = e820_from_regions(regions);
    if map.len() > params.e820_table.len() {
        return Err(Error::TooManyE820Entries(map.len()));
    }
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = *addr;
        slot.size = *size;
        slot.r#type = *kind;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at ZERO_PAGE_START for a kernel whose command line is at
/// `cmdline_addr` (`cmdline_size` bytes, NUL included) and whose initrd, if any, is at
/// `initrd`. `setup_header` is the one read from a bzImage, if the kernel is one.
pub fn configure_boot_params(
    mem: &GuestMemoryMmap,
    cmdline_addr: GuestAddress,
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
    setup_header: Option<setup_header>,
) -> Result<(), Error> {
    low_mem_end(mem)?;
    let params = build_boot_params(
        &regions(mem),
        cmdline_addr,
        cmdline_size,
        initrd,
        setup_header,
    )?;
    mem.write_obj(BootParams(params), GuestAddress(ZERO_PAGE_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::super::layout::{arch_memory_regions, CMDLINE_START, MMIO_GAP_END};
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&arch_memory_regions(size)).unwrap()
    }

    fn read_params(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj::<BootParams>(GuestAddress(ZERO_PAGE_START))
            .unwrap()
            .0
    }

    #[test]
    fn e820_small_vm() {
        assert_eq!(
            e820_entries(256 * MIB),
            vec![(0, 0x9fc00, 1), (0x10_0000, 256 * MIB - 0x10_0000, 1)]
        );
    }

    #[test]
    fn e820_4g_leaves_the_gap_out() {
        assert_eq!(
            e820_entries(4 * GIB),
            vec![
                (0, 0x9fc00, 1),
                (0x10_0000, MMIO_GAP_START - 0x10_0000, 1),
                (MMIO_GAP_END, GIB, 1)
            ]
        );
    }

    #[test]
    fn e820_6g() {
        let map = e820_entries(6 * GIB);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].0 + map[1].1, 0xc000_0000);
        assert_eq!(map[2], (4 * GIB, 3 * GIB, 1));
        for (addr, size, _) in &map {
            assert!(addr + size <= MMIO_GAP_START || *addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn zero_page_fields_read_back() {
        let m = mem(256 * MIB);
        let initrd = (GuestAddress(0x0f00_0000), 0x12345);
        configure_boot_params(&m, GuestAddress(CMDLINE_START), 42, Some(initrd), None).unwrap();
        let p = read_params(&m);
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12345);
        assert_eq!({ hdr.kernel_alignment }, 0x0100_0000);
        assert_eq!(p.e820_entries, 2);
        let e1 = p.e820_table[1];
        assert_eq!(({ e1.addr }, { e1.size }, { e1.r#type }), (0x10_0000, 255 * MIB, 1));
        let e2 = p.e820_table[2];
        assert_eq!({ e2.size }, 0);
    }

    #[test]
    fn setup_header_is_kept_and_loader_fields_overridden() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            xloadflags: 0x7f,
            cmdline_size: 2047,
            type_of_loader: 0,
            ..Default::default()
        };
        let m = mem(512 * MIB);
        configure_boot_params(&m, GuestAddress(CMDLINE_START), 10, None, Some(hdr)).unwrap();
        let h = read_params(&m).hdr;
        assert_eq!(h.setup_sects, 27);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.kernel_alignment }, 0x20_0000);
        assert_eq!({ h.xloadflags }, 0x7f);
        assert_eq!(h.type_of_loader, 0xff);
        assert_eq!({ h.cmdline_size }, 10);
        assert_eq!({ h.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ h.ramdisk_image }, 0);
    }

    #[test]
    fn zero_page_for_6g_vm_has_high_ram() {
        let m = mem(6 * GIB);
        configure_boot_params(&m, GuestAddress(CMDLINE_START), 1, None, None).unwrap();
        let p = read_params(&m);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table[2];
        assert_eq!(({ e.addr }, { e.size }), (4 * GIB, 3 * GIB));
    }

    #[test]
    fn initrd_goes_to_top_of_low_ram() {
        let m = mem(256 * MIB);
        assert_eq!(initrd_load_addr(&m, 0x1000).unwrap(), GuestAddress(256 * MIB - 0x1000));
        assert_eq!(initrd_load_addr(&m, 0x1001).unwrap(), GuestAddress(256 * MIB - 0x2000));
        let m = mem(6 * GIB);
        assert_eq!(
            initrd_load_addr(&m, 10 * MIB as usize).unwrap(),
            GuestAddress(MMIO_GAP_START - 10 * MIB)
        );
    }

    #[test]
    fn initrd_too_big_is_an_error() {
        let m = mem(16 * MIB);
        assert!(matches!(
            initrd_load_addr(&m, 16 * MIB as usize),
            Err(Error::InitrdTooBig { .. })
        ));
        assert!(initrd_load_addr(&m, usize::MAX).is_err());
    }

    #[test]
    fn initrd_above_4g_is_rejected() {
        let m = mem(256 * MIB);
        let err = configure_boot_params(
            &m,
            GuestAddress(CMDLINE_START),
            1,
            Some((GuestAddress(5 * GIB), 10)),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Above4G { what: "initrd", .. }));
    }

    #[test]
    fn memory_without_low_ram_is_rejected() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            configure_boot_params(&m, GuestAddress(CMDLINE_START), 1, None, None),
            Err(Error::NoLowMemory)
        ));
    }

    #[test]
    fn boot_params_is_one_page() {
        assert_eq!(std::mem::size_of::<BootParams>(), 4096);
    }
}
