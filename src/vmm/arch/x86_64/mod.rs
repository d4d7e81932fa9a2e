//! x86_64 boot: memory layout, boot_params/e820, GDT, page tables, registers, CPUID, MSRs, MP table.
//!
//! Per VM: [`layout::arch_memory_regions`] for guest memory, [`boot_params::configure_boot_params`]
//! and [`mptable::setup_mptable`] once the kernel is loaded. Per vCPU (after the in-kernel
//! irqchip exists): [`configure_vcpu`].

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod regs;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

/// Errors configuring a vCPU for boot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Filtering CPUID failed
    #[error("vCPU {vcpu_id}: CPUID: {source}")]
    Cpuid {
        /// The vCPU.
        vcpu_id: u8,
        /// What failed.
        source: cpuid::Error,
    },
    /// KVM_SET_CPUID2 failed
    #[error("vCPU {vcpu_id}: KVM_SET_CPUID2 failed: {source}")]
    SetCpuid {
        /// The vCPU.
        vcpu_id: u8,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// Setting the boot MSRs failed
    #[error("vCPU {vcpu_id}: MSRs: {source}")]
    Msrs {
        /// The vCPU.
        vcpu_id: u8,
        /// What failed.
        source: msrs::Error,
    },
    /// Setting registers failed
    #[error("vCPU {vcpu_id}: registers: {source}")]
    Regs {
        /// The vCPU.
        vcpu_id: u8,
        /// What failed.
        source: regs::Error,
    },
    /// Programming the local APIC failed
    #[error("vCPU {vcpu_id}: local APIC: {source}")]
    Lapic {
        /// The vCPU.
        vcpu_id: u8,
        /// What failed.
        source: interrupts::Error,
    },
}

/// Prepares vCPU `vcpu_id` of `nr_vcpus` to enter a 64-bit kernel at `entry`:
/// CPUID (a filtered copy of `supported_cpuid`, from KVM_GET_SUPPORTED_CPUID), the boot
/// MSRs among `msr_list` (KVM_GET_MSR_INDEX_LIST), general, special and FPU registers, then
/// LINT0/LINT1. CPUID goes first because KVM checks MSR writes against it. The in-kernel
/// irqchip must exist. Application processors get the same state; KVM resets them on
/// INIT/SIPI when the kernel starts them.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    vcpu_id: u8,
    nr_vcpus: u8,
    entry: u64,
    supported_cpuid: &CpuId,
    msr_list: &[u32],
) -> Result<(), Error> {
    let mut cpuid = supported_cpuid.clone();
    cpuid::filter_cpuid(&mut cpuid, vcpu_id, nr_vcpus)
        .map_err(|source| Error::Cpuid { vcpu_id, source })?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|source| Error::SetCpuid { vcpu_id, source })?;
    msrs::setup_msrs(vcpu, msr_list).map_err(|source| Error::Msrs { vcpu_id, source })?;
    let regs_err = |source| Error::Regs { vcpu_id, source };
    regs::setup_regs(vcpu, entry).map_err(regs_err)?;
    regs::setup_sregs(mem, vcpu).map_err(regs_err)?;
    regs::setup_fpu(vcpu).map_err(regs_err)?;
    interrupts::set_lint(vcpu).map_err(|source| Error::Lapic { vcpu_id, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::Kvm;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn configure_two_vcpus_on_real_kvm() {
        let kvm = Kvm::new().unwrap();
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let msr_list = kvm.get_msr_index_list().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&layout::arch_memory_regions(64 << 20)).unwrap();
        for id in 0..2u8 {
            let vcpu = vm.create_vcpu(u64::from(id)).unwrap();
            configure_vcpu(&vcpu, &mem, id, 2, 0x100_0000, &cpuid, msr_list.as_slice()).unwrap();
            let l1 = vcpu
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .unwrap()
                .as_slice()
                .iter()
                .find(|e| e.function == 1)
                .copied()
                .unwrap();
            assert_eq!(l1.ebx >> 24, u32::from(id));
            assert_eq!(vcpu.get_regs().unwrap().rip, 0x100_0000);
            assert_eq!(vcpu.get_sregs().unwrap().cr3, layout::PML4_START);
        }
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, layout::PDPTE_START | 3);
    }

    #[test]
    fn bad_vcpu_id_names_the_vcpu() {
        let kvm = Kvm::new().unwrap();
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&layout::arch_memory_regions(16 << 20)).unwrap();
        let err = configure_vcpu(&vcpu, &mem, 3, 2, 0, &cpuid, &[]).unwrap_err();
        assert!(matches!(err, Error::Cpuid { vcpu_id: 3, .. }));
        assert!(err.to_string().starts_with("vCPU 3: CPUID"), "{err}");
    }
}
