//! Local APIC LVT setup: LINT0 delivers the 8259 PIC's interrupts (ExtINT) and LINT1 NMIs,
//! the virtual-wire wiring Linux expects from a BIOS.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// Errors programming the local APIC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_LAPIC failed (was the in-kernel irqchip created before the vCPU?)
    #[error("KVM_GET_LAPIC failed (create the in-kernel irqchip before the vCPUs): {0}")]
    GetLapic(kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed
    #[error("KVM_SET_LAPIC failed: {0}")]
    SetLapic(kvm_ioctls::Error),
}

/// Offset of the LVT LINT0 register in the APIC page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the APIC page.
pub const APIC_LVT1: usize = 0x360;
/// Delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;
/// Delivery mode ExtINT.
pub const APIC_MODE_EXTINT: u32 = 0x7;

/// Reads the 32-bit APIC register at `offset`.
pub fn get_klapic_reg(klapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &klapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// Writes the 32-bit APIC register at `offset`.
pub fn set_klapic_reg(klapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in klapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// `reg` with its delivery mode (bits 8..11) replaced by `mode`.
pub const fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | ((mode & 0x7) << 8)
}

/// LINT0 = ExtINT and LINT1 = NMI in `klapic`, other LVT bits kept.
pub fn program_lints(klapic: &mut kvm_lapic_state) {
    let lvt0 = get_klapic_reg(klapic, APIC_LVT0);
    set_klapic_reg(klapic, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_klapic_reg(klapic, APIC_LVT1);
    set_klapic_reg(klapic, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Programs LINT0/LINT1 of the vCPU's in-kernel local APIC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut klapic = vcpu.get_lapic().map_err(Error::GetLapic)?;
    program_lints(&mut klapic);
    vcpu.set_lapic(&klapic).map_err(Error::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn registers_are_little_endian() {
        let mut k = kvm_lapic_state::default();
        set_klapic_reg(&mut k, APIC_LVT0, 0x1234_5678);
        assert_eq!(k.regs[APIC_LVT0] as u8, 0x78);
        assert_eq!(k.regs[APIC_LVT0 + 3] as u8, 0x12);
        assert_eq!(get_klapic_reg(&k, APIC_LVT0), 0x1234_5678);
    }

    #[test]
    fn lints_get_extint_and_nmi() {
        let mut k = kvm_lapic_state::default();
        // Reset value: masked, fixed mode; keep the mask and vector bits.
        set_klapic_reg(&mut k, APIC_LVT0, 0x0001_0000);
        set_klapic_reg(&mut k, APIC_LVT1, 0x0001_04ff);
        program_lints(&mut k);
        assert_eq!(get_klapic_reg(&k, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_klapic_reg(&k, APIC_LVT1), 0x0001_04ff);
        set_klapic_reg(&mut k, APIC_LVT1, 0x0000_0700);
        program_lints(&mut k);
        assert_eq!(get_klapic_reg(&k, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn set_lint_on_a_real_vcpu() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        set_lint(&vcpu).unwrap();
        let k = vcpu.get_lapic().unwrap();
        assert_eq!((get_klapic_reg(&k, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((get_klapic_reg(&k, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }

    #[test]
    fn set_lint_without_irqchip_fails() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        assert!(matches!(set_lint(&vcpu), Err(Error::GetLapic(_))));
    }
}
