//! x86_64 boot: memory layout, boot_params/e820, GDT, page tables, registers, CPUID, MSRs, MP table.

pub mod gdt;
pub mod layout;
pub mod paging;
pub mod boot_params;
pub mod regs;
pub mod msrs;
pub mod interrupts;
pub mod mptable;
