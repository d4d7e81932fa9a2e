//! Boot vCPU registers: general purpose (entry point, stack, zero page), special (flat
//! segments, long mode with the identity page tables) and FPU. The values are computed by
//! pure functions; the `setup_*` functions only add the ioctls.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::gdt::{self, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_GDT_OFFSET, BOOT_IDT_OFFSET, BOOT_STACK_POINTER, ZERO_PAGE_START};
use super::paging;

/// Errors setting up the vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_SET_REGS failed
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    /// KVM_GET_SREGS failed
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    /// KVM_SET_SREGS failed
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    /// KVM_SET_FPU failed
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
    /// Writing the GDT/IDT failed
    #[error(transparent)]
    Gdt(#[from] gdt::Error),
    /// Writing the page tables failed
    #[error(transparent)]
    Paging(#[from] paging::Error),
}

/// CR0: protection enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: native FPU error reporting, which Linux requires.
pub const X86_CR0_NE: u64 = 1 << 5;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required for long mode).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Reserved bit 1 of RFLAGS, which must be set; interrupts stay off.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
const FPU_FCW: u16 = 0x37f;
/// MXCSR at reset: all SSE exceptions masked.
const FPU_MXCSR: u32 = 0x1f80;

/// General purpose registers at the 64-bit kernel entry: `rsi` points at the zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// `base` (what KVM_GET_SREGS returned) switched to 64-bit long mode with the boot GDT/IDT
/// and the page tables at `cr3`. Everything else (APIC base, pending interrupts) is kept.
pub fn boot_sregs(base: &kvm_sregs, cr3: u64) -> kvm_sregs {
    let gdt_table = gdt::boot_gdt();
    let code = gdt::kvm_segment_from_gdt(gdt_table[CODE_INDEX as usize], CODE_INDEX);
    let data = gdt::kvm_segment_from_gdt(gdt_table[DATA_INDEX as usize], DATA_INDEX);
    let tss = gdt::kvm_segment_from_gdt(gdt_table[TSS_INDEX as usize], TSS_INDEX);

    let mut sregs = *base;
    sregs.gdt.base = BOOT_GDT_OFFSET;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt_table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_OFFSET;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    // Set CR0 outright: the reset value has CD|NW (caches off), which the kernel should not
    // start with.
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// FPU state after FNINIT/reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    }
}

/// Sets rip to `entry`, the boot stack, `rsi` to the zero page and rflags.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), Error> {
    vcpu.set_regs(&boot_regs(entry)).map_err(Error::SetRegs)
}

/// Writes the GDT, IDT and page tables into `mem` and puts the vCPU in long mode on them.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), Error> {
    gdt::write_gdt_idt(mem, &gdt::boot_gdt())?;
    let cr3 = paging::setup_page_tables(mem)?;
    let base = vcpu.get_sregs().map_err(Error::GetSregs)?;
    vcpu.set_sregs(&boot_sregs(&base, cr3))
        .map_err(Error::SetSregs)
}

/// Sets the x87 control word and MXCSR to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), Error> {
    vcpu.set_fpu(&boot_fpu()).map_err(Error::SetFpu)
}

#[cfg(test)]
mod tests {
    use super::super::layout::{arch_memory_regions, PML4_START};
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn general_registers() {
        let r = boot_regs(0x100_0200);
        assert_eq!(r.rip, 0x100_0200);
        assert_eq!((r.rsp, r.rbp), (0x8ff0, 0x8ff0));
        assert_eq!(r.rsi, 0x7000);
        assert_eq!(r.rflags, 2);
        assert_eq!((r.rax, r.rdi), (0, 0));
    }

    #[test]
    fn special_registers_enter_long_mode() {
        let base = kvm_sregs {
            cr0: 0x6000_0010,
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        let s = boot_sregs(&base, 0x9000);
        assert_eq!(s.cr0, 0x8000_0031);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(s.efer, 0x500);
        assert_eq!(s.apic_base, 0xfee0_0900);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));
        assert_eq!((s.cs.selector, s.cs.l), (0x8, 1));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.selector, seg.type_, seg.present), (0x10, 3, 1));
        }
        assert_eq!(s.tr.selector, 0x18);
    }

    #[test]
    fn fpu_values() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr, f.fsw), (0x37f, 0x1f80, 0));
    }

    #[test]
    fn registers_load_into_a_real_vcpu() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&arch_memory_regions(16 << 20)).unwrap();
        setup_regs(&vcpu, 0x100_0000).unwrap();
        setup_sregs(&mem, &vcpu).unwrap();
        setup_fpu(&vcpu).unwrap();
        let r = vcpu.get_regs().unwrap();
        assert_eq!((r.rip, r.rsi), (0x100_0000, 0x7000));
        let s = vcpu.get_sregs().unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cs.l, 1);
        // Only fcw: KVM_GET_FPU on this host (PVM) reports mxcsr as 0 whatever was set.
        assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
    }
}
