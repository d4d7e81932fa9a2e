//! Model-specific registers the boot vCPU starts with: syscall/sysenter MSRs cleared, TSC at
//! 0, fast strings on, MTRRs enabled with write-back default, and nothing KVM cannot save.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// Errors setting the boot MSRs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not build the kvm_msrs array
    #[error("could not build the kvm_msrs array for KVM_SET_MSRS: {0:?}")]
    Build(vmm_sys_util::fam::Error),
    /// KVM_SET_MSRS failed
    #[error("KVM_SET_MSRS failed: {0}")]
    SetMsrs(kvm_ioctls::Error),
    /// KVM_SET_MSRS stopped before the end of the list
    #[error("KVM_SET_MSRS set {set} of {total} MSRs; MSR {index:#x} was refused by KVM")]
    NotAllSet {
        /// How many were set.
        set: usize,
        /// How many were asked for.
        total: usize,
        /// The first MSR not set.
        index: u32,
    },
}

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_ARCH_CAPABILITIES (read-only for the guest; KVM on these hosts accepts only 0).
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// STAR: syscall segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR: 64-bit syscall entry.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR: compat-mode syscall entry.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL_MASK (FMASK).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE (swapgs).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// MISC_ENABLE bit 0: fast string operations (rep movs/stos).
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRR_DEF_TYPE bit 11: MTRRs enabled.
pub const MTRR_ENABLE: u64 = 1 << 11;
/// Memory type write-back.
pub const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// Every MSR husk sets at boot, with its value, before filtering.
pub fn boot_msr_values() -> [(u32, u64); 12] {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
        (MSR_IA32_ARCH_CAPABILITIES, 0),
    ]
}

/// The boot MSRs that KVM can set: those in `supported` (from KVM_GET_MSR_INDEX_LIST).
pub fn boot_msr_entries(supported: &[u32]) -> Vec<kvm_msr_entry> {
    boot_msr_values()
        .into_iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Sets the boot MSRs KVM supports; KVM_SET_MSRS stops at the first MSR it refuses, and
/// that is reported as an error naming it.
pub fn setup_msrs(vcpu: &VcpuFd, supported: &[u32]) -> Result<(), Error> {
    set_all(vcpu, &boot_msr_entries(supported))
}

fn set_all(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), Error> {
    let msrs = Msrs::from_entries(entries).map_err(Error::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::SetMsrs)?;
    if set != entries.len() {
        return Err(Error::NotAllSet {
            set,
            total: entries.len(),
            index: entries.get(set).map_or(0, |e| e.index),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn all_values_when_all_supported() {
        let all: Vec<u32> = boot_msr_values().iter().map(|(i, _)| *i).collect();
        let entries = boot_msr_entries(&all);
        assert_eq!(entries.len(), 12);
        let get = |idx| entries.iter().find(|e| e.index == idx).unwrap().data;
        assert_eq!(get(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(get(MSR_IA32_TSC), 0);
        assert_eq!(get(MSR_IA32_ARCH_CAPABILITIES), 0);
    }

    #[test]
    fn unsupported_msrs_are_dropped() {
        let entries = boot_msr_entries(&[MSR_LSTAR, MSR_IA32_TSC, 0x1234]);
        let idx: Vec<u32> = entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![MSR_LSTAR, MSR_IA32_TSC]);
        assert!(boot_msr_entries(&[]).is_empty());
    }

    #[test]
    fn msrs_set_on_a_real_vcpu() {
        let kvm = Kvm::new().unwrap();
        let supported = kvm.get_msr_index_list().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        setup_msrs(&vcpu, supported.as_slice()).unwrap();
        let entries = boot_msr_entries(supported.as_slice());
        assert!(entries.iter().any(|e| e.index == MSR_LSTAR));
        let mut read = Msrs::from_entries(&entries).unwrap();
        assert_eq!(vcpu.get_msrs(&mut read).unwrap(), entries.len());
        for e in read.as_slice() {
            if e.index == MSR_IA32_MISC_ENABLE {
                assert_eq!(e.data & MISC_ENABLE_FAST_STRING, 1);
            } else if e.index == MSR_MTRR_DEF_TYPE {
                assert_eq!(e.data, 0x806);
            } else if e.index != MSR_IA32_TSC {
                assert_eq!(e.data, 0, "MSR {:#x}", e.index);
            }
        }
    }

    #[test]
    fn refused_msr_is_named() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let entry = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        // No CPU has MSR 0x4fff_ffff: KVM sets LSTAR, then stops.
        let err = set_all(&vcpu, &[entry(MSR_LSTAR), entry(0x4fff_ffff)]).unwrap_err();
        assert!(matches!(
            err,
            Error::NotAllSet {
                set: 1,
                total: 2,
                index: 0x4fff_ffff
            }
        ));
        assert!(err.to_string().contains("0x4fffffff"), "{err}");
    }
}
