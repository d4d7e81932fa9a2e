//! A vCPU's boot state (CPUID, MSRs, registers, long-mode sregs, FPU, LAPIC LINTs),
//! assembled from `arch::x86_64`'s pieces.
//!
//! Stands in for `arch::x86_64::configure_vcpu`, which has not landed on the `arch` branch
//! yet (nor its CPUID filtering): this applies KVM's supported CPUID with only the per-CPU
//! topology fields patched. Replace the call in `builder.rs` once the arch version lands.

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::arch::x86_64::{interrupts, msrs, regs};

#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2: {0}")]
    Cpuid(kvm_ioctls::Error),
    /// Boot MSRs could not be set.
    #[error(transparent)]
    Msrs(#[from] msrs::Error),
    /// Registers, sregs, GDT/page tables or FPU could not be set.
    #[error(transparent)]
    Regs(#[from] regs::Error),
    /// The LAPIC LINT pins could not be programmed.
    #[error(transparent)]
    Lapic(#[from] interrupts::Error),
}

/// Leaf 1 EBX: initial APIC id in bits 31..24, logical processor count in 23..16.
fn patch_topology(cpuid: &mut CpuId, vcpu_id: u8, nr_vcpus: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | (u32::from(vcpu_id) << 24)
                    | (u32::from(nr_vcpus) << 16);
            }
            // Extended topology: x2APIC id of this CPU.
            0xb | 0x1f => e.edx = u32::from(vcpu_id),
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    vcpu_id: u8,
    nr_vcpus: u8,
    entry: u64,
    supported_cpuid: &CpuId,
    msr_list: &[u32],
) -> Result<(), VcpuSetupError> {
    let mut cpuid = supported_cpuid.clone();
    patch_topology(&mut cpuid, vcpu_id, nr_vcpus);
    vcpu.set_cpuid2(&cpuid).map_err(VcpuSetupError::Cpuid)?;
    msrs::setup_msrs(vcpu, msr_list)?;
    regs::setup_regs(vcpu, entry)?;
    regs::setup_sregs(mem, vcpu)?;
    regs::setup_fpu(vcpu)?;
    interrupts::set_lint(vcpu)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_fields_carry_the_vcpu_id() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xaabb_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                edx: 7,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch_topology(&mut cpuid, 3, 4);
        let s = cpuid.as_slice();
        assert_eq!(s[0].ebx, 0x0304_1234);
        assert_eq!(s[1].edx, 3);
    }
}
