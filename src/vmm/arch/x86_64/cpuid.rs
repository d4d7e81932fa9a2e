//! CPUID for one vCPU, derived from what KVM supports: the vCPU's APIC id and a topology of
//! `nr_vcpus` single-threaded cores in one package, the hypervisor bit, and no thermal,
//! power or PMU features the guest cannot use. Entries are only edited, never added.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Errors filtering CPUID.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A VM needs at least one vCPU
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    /// The vCPU id is not below the vCPU count
    #[error("vCPU id {vcpu_id} is out of range for a VM with {nr_vcpus} vCPUs")]
    VcpuIdOutOfRange {
        /// The vCPU id.
        vcpu_id: u8,
        /// The vCPU count.
        nr_vcpus: u8,
    },
}

/// Leaf 1 ECX bit 31: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 24: TSC-deadline LAPIC timer.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX bit 28: the logical processor count in EBX[23:16] is valid.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 EAX bit 2: APIC timer always running (the only leaf 6 bit KVM makes true).
pub const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// Extended topology level type: SMT.
const LEVEL_TYPE_SMT: u32 = 1;
/// Extended topology level type: core.
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed for APIC ids 0..n-1.
fn id_bits(n: u8) -> u32 {
    u32::from(n).next_power_of_two().trailing_zeros()
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| {
        e.function == 0
            && ((e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) // AuthenticAMD
                || (e.ebx, e.edx, e.ecx) == (0x6f67_7948, 0x6e65_476e, 0x656e_6975))
        // HygonGenuine
    })
}

/// Logical processors sharing a cache of `level` - 1: L1 and L2 are per core, L3 per package.
fn cache_sharing(level: u32, nr_vcpus: u8) -> u32 {
    if level <= 2 {
        0
    } else {
        u32::from(nr_vcpus) - 1
    }
}

fn extended_topology(e: &mut kvm_cpuid_entry2, vcpu_id: u8, nr_vcpus: u8) {
    e.edx = u32::from(vcpu_id);
    match e.index {
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx = LEVEL_TYPE_SMT << 8;
        }
        1 => {
            e.eax = id_bits(nr_vcpus);
            e.ebx = u32::from(nr_vcpus);
            e.ecx = (LEVEL_TYPE_CORE << 8) | 1;
        }
        n => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = n & 0xff;
        }
    }
}

/// Whether KVM describes extended topology `leaf` (0xb or 0x1f) well enough to rewrite:
/// a valid SMT level at subleaf 0 and a subleaf 1 for the core level. A host that zeroes
/// the leaf (as nested hosts do) keeps it zeroed: the guest then ignores it and uses the
/// other topology leaves, instead of seeing an SMT level with no core level above it.
fn rewrites_topology(entries: &[kvm_cpuid_entry2], leaf: u32) -> bool {
    let has = |index, valid: fn(&kvm_cpuid_entry2) -> bool| {
        entries
            .iter()
            .any(|e| e.function == leaf && e.index == index && valid(e))
    };
    has(0, |e| e.ebx & 0xffff != 0) && has(1, |_| true)
}

/// Sets the features KVM emulates in its in-kernel LAPIC but leaves out of
/// KVM_GET_SUPPORTED_CPUID: the TSC-deadline timer, when `tsc_deadline_timer`
/// (KVM_CAP_TSC_DEADLINE_TIMER) says KVM supports it. Older KVM reports it only through the
/// capability (measured: Debian 12's 6.1 leaves the bit clear with the cap present; 6.18 sets
/// it). A guest without it calibrates the LAPIC timer instead, which under nesting failed
/// ("APIC timer disabled due to verification failure", "lapic is not functional"), leaving
/// it with no one-shot timer and no high-resolution timers.
/// QEMU, crosvm and Firecracker set the bit the same way. Call once on the supported CPUID,
/// before [`filter_cpuid`]; the in-kernel irqchip it needs is one of husk-vmm's required caps.
pub fn add_emulated_features(cpuid: &mut CpuId, tsc_deadline_timer: bool) {
    if !tsc_deadline_timer {
        return;
    }
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID, after [`add_emulated_features`]) for vCPU
/// `vcpu_id` of `nr_vcpus`. TSC-deadline is left as given: never invented here.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_id: u8, nr_vcpus: u8) -> Result<(), Error> {
    if nr_vcpus == 0 {
        return Err(Error::NoVcpus);
    }
    if vcpu_id >= nr_vcpus {
        return Err(Error::VcpuIdOutOfRange { vcpu_id, nr_vcpus });
    }
    let amd = is_amd(cpuid.as_slice());
    let leaf_b = rewrites_topology(cpuid.as_slice(), 0xb);
    let leaf_1f = rewrites_topology(cpuid.as_slice(), 0x1f);
    let nr = u32::from(nr_vcpus);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors, [15:0] kept.
                e.ebx = (u32::from(vcpu_id) << 24) | (nr << 16) | (e.ebx & 0xffff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if nr_vcpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Subleaves with cache type 0 end the list and stay zero.
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                e.eax &= 0x3fff;
                e.eax |= ((nr - 1).min(63) << 26) | (cache_sharing(level, nr_vcpus) << 14);
            }
            6 => {
                e.eax &= LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb if leaf_b => extended_topology(e, vcpu_id, nr_vcpus),
            0x1f if leaf_1f => extended_topology(e, vcpu_id, nr_vcpus),
            0x8000_0008 if amd => {
                // ECX: [15:12] APIC id bits for cores, [7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(nr_vcpus) << 12) | (nr - 1);
            }
            0x8000_001d if amd && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                e.eax = (e.eax & !(0xfff << 14)) | (cache_sharing(level, nr_vcpus) << 14);
            }
            0x8000_001e if amd => {
                // Extended APIC id; one thread per compute unit, one node.
                e.eax = u32::from(vcpu_id);
                e.ebx = u32::from(vcpu_id);
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::Kvm;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn intel() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            leaf(1, 0, [0x806f8, 0x0710_0800, 0x0100_0000, 0x1000_0000]),
            leaf(4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]), // L1d
            leaf(4, 2, [0x1c00_4143, 0x03c0_003f, 0x7ff, 0]), // L2
            leaf(4, 3, [0x1c07_c163, 0x0380_003f, 0xbfff, 4]), // L3
            leaf(4, 4, [0, 0, 0, 0]),
            leaf(6, 0, [0x77, 0x2, 0x9, 0]),
            leaf(0xa, 0, [0x0803_0305, 0, 0, 0x603]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [7, 112, 0x201, 7]),
            leaf(0xb, 2, [0, 0, 2, 7]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
        ])
        .unwrap()
    }

    #[test]
    fn leaf1_apic_id_count_and_hypervisor() {
        let mut c = intel();
        filter_cpuid(&mut c, 2, 4).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx, 0x0204_0800);
        assert_eq!(l1.ecx & LEAF1_ECX_HYPERVISOR, LEAF1_ECX_HYPERVISOR);
        assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, LEAF1_ECX_TSC_DEADLINE);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, LEAF1_EDX_HTT);
        assert_eq!(l1.eax, 0x806f8);
    }

    #[test]
    fn tsc_deadline_not_invented_and_single_cpu_has_no_htt() {
        let mut c = CpuId::from_entries(&[leaf(1, 0, [0, 0, 0, LEAF1_EDX_HTT])]).unwrap();
        filter_cpuid(&mut c, 0, 1).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ecx, LEAF1_ECX_HYPERVISOR);
        assert_eq!(l1.edx, 0);
        assert_eq!(l1.ebx, 0x0001_0000);
    }

    #[test]
    fn tsc_deadline_added_only_where_kvm_has_the_cap() {
        let mut without = CpuId::from_entries(&[leaf(1, 0, [0, 0, 0x8, 0])]).unwrap();
        add_emulated_features(&mut without, false);
        assert_eq!(find(&without, 1, 0).ecx, 0x8);
        let mut with = without.clone();
        add_emulated_features(&mut with, true);
        assert_eq!(find(&with, 1, 0).ecx, 0x8 | LEAF1_ECX_TSC_DEADLINE);
        // Already reported (newer KVM): unchanged, and it survives the per-vCPU filter.
        add_emulated_features(&mut with, true);
        filter_cpuid(&mut with, 0, 2).unwrap();
        assert_eq!(
            find(&with, 1, 0).ecx,
            0x8 | LEAF1_ECX_TSC_DEADLINE | LEAF1_ECX_HYPERVISOR
        );
        assert_eq!(with.as_slice().len(), 1);
    }

    #[test]
    fn leaf4_cache_topology() {
        let mut c = intel();
        filter_cpuid(&mut c, 0, 4).unwrap();
        // cores per package - 1 = 3 in [31:26]; L1/L2 private, L3 shared by 4.
        assert_eq!(find(&c, 4, 0).eax, (3 << 26) | 0x121);
        assert_eq!(find(&c, 4, 2).eax, (3 << 26) | 0x143);
        assert_eq!(find(&c, 4, 3).eax, (3 << 26) | (3 << 14) | 0x163);
        assert_eq!(find(&c, 4, 3).edx, 4);
        assert_eq!(find(&c, 4, 4).eax, 0);
    }

    #[test]
    fn leaf_b_topology_per_vcpu() {
        let mut c = intel();
        filter_cpuid(&mut c, 5, 6).unwrap();
        let smt = find(&c, 0xb, 0);
        assert_eq!([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, 5]);
        let core = find(&c, 0xb, 1);
        assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [3, 6, 0x201, 5]);
        let end = find(&c, 0xb, 2);
        assert_eq!([end.eax, end.ebx, end.ecx, end.edx], [0, 0, 2, 5]);
    }

    #[test]
    fn leaf_1f_like_leaf_b() {
        let mut c = CpuId::from_entries(&[
            leaf(0x1f, 0, [1, 2, 0x100, 9]),
            leaf(0x1f, 1, [8, 200, 0x201, 9]),
        ])
        .unwrap();
        filter_cpuid(&mut c, 1, 2).unwrap();
        assert_eq!(find(&c, 0x1f, 1).eax, 1);
        assert_eq!(find(&c, 0x1f, 1).ebx, 2);
        assert_eq!(find(&c, 0x1f, 0).edx, 1);
    }

    #[test]
    fn zeroed_topology_leaf_stays_zeroed() {
        let mut c =
            CpuId::from_entries(&[leaf(0xb, 0, [0; 4]), leaf(0x1f, 0, [1, 2, 0x100, 0])]).unwrap();
        filter_cpuid(&mut c, 1, 2).unwrap();
        assert_eq!(find(&c, 0xb, 0), leaf(0xb, 0, [0; 4]));
        // Valid SMT level but no core level: left as KVM gave it.
        assert_eq!(find(&c, 0x1f, 0), leaf(0x1f, 0, [1, 2, 0x100, 0]));
    }

    #[test]
    fn thermal_and_pmu_cleared_kvm_leaf_kept() {
        let mut c = intel();
        filter_cpuid(&mut c, 0, 1).unwrap();
        let l6 = find(&c, 6, 0);
        assert_eq!([l6.eax, l6.ebx, l6.ecx, l6.edx], [LEAF6_EAX_ARAT, 0, 0, 0]);
        let la = find(&c, 0xa, 0);
        assert_eq!([la.eax, la.ebx, la.ecx, la.edx], [0, 0, 0, 0]);
        assert_eq!(find(&c, 0x4000_0000, 0), intel().as_slice()[11]);
        assert_eq!(c.as_slice().len(), intel().as_slice().len());
    }

    #[test]
    fn amd_topology_leaves() {
        let mut c = CpuId::from_entries(&[
            leaf(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0x0001_703f, 0]),
            leaf(0x8000_001d, 0, [0x0000_4121, 0, 0, 0]),
            leaf(0x8000_001d, 3, [0x0003_c163, 0, 0, 0]),
            leaf(0x8000_001e, 0, [0x11, 0x0100, 0x0300, 0]),
        ])
        .unwrap();
        filter_cpuid(&mut c, 3, 5).unwrap();
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, 0x0001_3004);
        assert_eq!(find(&c, 0x8000_001d, 0).eax, 0x121);
        assert_eq!(find(&c, 0x8000_001d, 3).eax, (4 << 14) | 0x163);
        let t = find(&c, 0x8000_001e, 0);
        assert_eq!([t.eax, t.ebx, t.ecx, t.edx], [3, 3, 0, 0]);
    }

    #[test]
    fn amd_leaves_untouched_on_intel() {
        let mut c = intel();
        c.push(leaf(0x8000_0008, 0, [0x3030, 0, 0x17, 0])).unwrap();
        filter_cpuid(&mut c, 0, 4).unwrap();
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, 0x17);
    }

    #[test]
    fn bad_ids_are_rejected() {
        let mut c = intel();
        assert!(matches!(filter_cpuid(&mut c, 0, 0), Err(Error::NoVcpus)));
        assert!(matches!(
            filter_cpuid(&mut c, 4, 4),
            Err(Error::VcpuIdOutOfRange {
                vcpu_id: 4,
                nr_vcpus: 4
            })
        ));
    }

    #[test]
    fn filtered_host_cpuid_is_accepted_by_kvm() {
        let kvm = Kvm::new().unwrap();
        let mut c = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        add_emulated_features(&mut c, tsc_deadline);
        filter_cpuid(&mut c, 1, 2).unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(1).unwrap();
        vcpu.set_cpuid2(&c).unwrap();
        let back = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let l1 = find(&back, 1, 0);
        assert_eq!(l1.ebx >> 24, 1);
        assert_eq!(l1.ecx & LEAF1_ECX_HYPERVISOR, LEAF1_ECX_HYPERVISOR);
        if tsc_deadline {
            assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, LEAF1_ECX_TSC_DEADLINE);
        }
    }
}
