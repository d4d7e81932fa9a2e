//! TEMPORARY stand-in for `arch::x86_64` (being written on branch `arch`), with the same
//! names and signatures, so the boot path can be built and tested before it lands. It does
//! the minimum the 64-bit boot protocol needs: identity page tables, flat GDT, boot_params
//! with e820, CPUID from KVM's supported set, LAPIC LINT0/1. No MP table, no MSR set-up.
//! Delete this file and point `builder.rs`'s `arch` import at `arch::x86_64` once merged.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, CpuId};
use kvm_ioctls::VcpuFd;
use linux_loader::bootparam::{boot_e820_entry, setup_header};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    /// Guest memory write failed.
    #[error("writing {0} to guest memory")]
    Write(&'static str),
    /// Initramfs does not fit.
    #[error("initramfs does not fit below {0:#x}")]
    InitrdTooBig(u64),
    /// vCPU ioctl failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

pub mod layout {
    use vm_memory::GuestAddress;

    pub const HIMEM_START: u64 = 0x10_0000;
    pub const ZERO_PAGE_START: u64 = 0x7000;
    pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
    pub const PML4_START: u64 = 0x9000;
    pub const PDPTE_START: u64 = 0xa000;
    pub const PDE_START: u64 = 0xb000;
    pub const GDT_START: u64 = 0x500;
    pub const IDT_START: u64 = 0x520;
    pub const EBDA_START: u64 = 0x9_fc00;
    pub const CMDLINE_START: u64 = 0x2_0000;
    pub const CMDLINE_MAX_SIZE: usize = 4096;
    pub const MMIO_GAP_START: u64 = 0xc000_0000;
    pub const MMIO_GAP_SIZE: u64 = 0x4000_0000;
    pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
    pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
    pub const IRQ_BASE: u32 = 5;
    pub const IRQ_MAX: u32 = 23;

    pub fn arch_memory_regions(size: usize) -> Vec<(GuestAddress, usize)> {
        let gap = MMIO_GAP_START as usize;
        if size <= gap {
            vec![(GuestAddress(0), size)]
        } else {
            vec![(GuestAddress(0), gap), (GuestAddress(1 << 32), size - gap)]
        }
    }
}

pub mod boot_params {
    use super::*;

    pub fn initrd_load_addr(mem: &GuestMemoryMmap, size: usize) -> Result<u64, FallbackError> {
        let first = mem.find_region(GuestAddress(0)).ok_or(FallbackError::Write("initrd"))?;
        let end = first.len().min(layout::MMIO_GAP_START);
        let addr = end.checked_sub(size as u64).ok_or(FallbackError::InitrdTooBig(end))? & !0xfff;
        if addr < layout::HIMEM_START {
            return Err(FallbackError::InitrdTooBig(end));
        }
        Ok(addr)
    }

    pub fn configure_boot_params(
        mem: &GuestMemoryMmap,
        cmdline_addr: GuestAddress,
        cmdline_size: usize,
        initrd: Option<(GuestAddress, usize)>,
        setup_header: Option<setup_header>,
    ) -> Result<(), FallbackError> {
        let mut p = linux_loader::bootparam::boot_params::default();
        if let Some(h) = setup_header {
            p.hdr = h;
        }
        p.hdr.type_of_loader = 0xff;
        p.hdr.boot_flag = 0xaa55;
        p.hdr.header = 0x5372_6448;
        p.hdr.cmd_line_ptr = cmdline_addr.raw_value() as u32;
        p.hdr.cmdline_size = cmdline_size as u32;
        p.hdr.kernel_alignment = 0x0100_0000;
        if let Some((a, s)) = initrd {
            p.hdr.ramdisk_image = a.raw_value() as u32;
            p.hdr.ramdisk_size = s as u32;
        }
        let mut n = 0;
        let mut add = |addr: u64, size: u64| {
            p.e820_table[n] = boot_e820_entry { addr, size, r#type: 1 };
            n += 1;
        };
        add(0, layout::EBDA_START);
        for r in mem.iter() {
            let start = r.start_addr().raw_value().max(layout::HIMEM_START);
            let end = r.start_addr().raw_value() + r.len();
            if end > start {
                add(start, end - start);
            }
        }
        p.e820_entries = n as u8;
        mem.write_obj(p, GuestAddress(layout::ZERO_PAGE_START))
            .map_err(|_| FallbackError::Write("boot_params"))
    }
}

pub mod mptable {
    use super::*;
    /// Not written by the fallback: tiny guests do not read it.
    pub fn setup_mptable(_mem: &GuestMemoryMmap, _num_cpus: u8) -> Result<(), FallbackError> {
        Ok(())
    }
}

fn segment(selector: u16, flags: u16) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: ((flags >> 15) & 1) as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

fn gdt_entry(flags: u16) -> u64 {
    // base 0, limit 0xfffff.
    let limit = 0xfffffu64;
    ((u64::from(flags) & 0xf0ff) << 40) | ((limit & 0xf_0000) << 32) | (limit & 0xffff)
}

#[allow(clippy::too_many_arguments)]
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    vcpu_id: u8,
    _nr_vcpus: u8,
    entry: u64,
    supported_cpuid: &CpuId,
    _msr_list: &[u32],
) -> Result<(), FallbackError> {
    let mut cpuid = supported_cpuid.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(vcpu_id) << 24),
            0xb => e.edx = u32::from(vcpu_id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(|e| FallbackError::Kvm("KVM_SET_CPUID2", e))?;

    // Identity map of the first 1 GiB with 2 MiB pages.
    let w = |v: u64, a: u64| mem.write_obj(v, GuestAddress(a)).map_err(|_| FallbackError::Write("page tables"));
    w(layout::PDPTE_START | 3, layout::PML4_START)?;
    w(layout::PDE_START | 3, layout::PDPTE_START)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, layout::PDE_START + i * 8)?;
    }
    let (code, data, tss) = (0xa09b, 0xc093, 0x808b);
    for (i, f) in [0u16, code, data, tss].iter().enumerate() {
        let v = if *f == 0 { 0 } else { gdt_entry(*f) };
        w(v, layout::GDT_START + i as u64 * 8)?;
    }
    w(0, layout::IDT_START)?;

    let mut s = vcpu.get_sregs().map_err(|e| FallbackError::Kvm("KVM_GET_SREGS", e))?;
    s.gdt.base = layout::GDT_START;
    s.gdt.limit = 4 * 8 - 1;
    s.idt.base = layout::IDT_START;
    s.idt.limit = 7;
    s.cs = segment(0x08, code);
    let d = segment(0x10, data);
    s.ds = d;
    s.es = d;
    s.fs = d;
    s.gs = d;
    s.ss = d;
    s.tr = segment(0x18, tss);
    s.cr3 = layout::PML4_START;
    s.cr4 |= 0x20; // PAE
    s.cr0 |= 0x8000_0001; // PG | PE
    s.efer |= 0x500; // LME | LMA
    vcpu.set_sregs(&s).map_err(|e| FallbackError::Kvm("KVM_SET_SREGS", e))?;

    let regs = kvm_regs {
        rflags: 2,
        rip: entry,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|e| FallbackError::Kvm("KVM_SET_REGS", e))?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| FallbackError::Kvm("KVM_SET_FPU", e))?;

    // LINT0 = ExtINT (PIC), LINT1 = NMI, as a BIOS leaves them.
    let mut lapic = vcpu.get_lapic().map_err(|e| FallbackError::Kvm("KVM_GET_LAPIC", e))?;
    let set = |regs: &mut [i8], off: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *x as i8;
        }
    };
    set(&mut lapic.regs, 0x350, 7);
    set(&mut lapic.regs, 0x360, 4);
    vcpu.set_lapic(&lapic).map_err(|e| FallbackError::Kvm("KVM_SET_LAPIC", e))?;
    Ok(())
}
