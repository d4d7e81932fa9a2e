//! virtio-mmio under the real /dev/kvm: a tiny guest exercises the wiring that
//! `attach_virtio_mmio` sets up with a real `VmFd` (MMIO exits, ioeventfd, irqfd).

#![deny(clippy::undocumented_unsafe_blocks)]

use husk::devices::virtio::block::Block;
use husk::devices::virtio::mmio::reg;
use husk::devices::virtio::TYPE_BLOCK;
use vm_memory::GuestAddress;

mod common;

/// A tiny 32-bit guest (flat protected mode, no paging) reads MagicValue and DeviceID of a
/// block device through real MMIO exits and kicks queue 0 through the ioeventfd that
/// `attach_virtio_mmio` registered with the real `VmFd` (no exit; the EventFd fires).
#[test]
fn tiny_guest_probes_registers_and_notifies_through_ioeventfd() {
    use husk::devices::bus::Bus;
    use husk::devices::virtio::mmio::{attach_virtio_mmio, MmioAllocator};
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    const TEST: &str = "tiny_guest_probes_registers_and_notifies_through_ioeventfd";
    if !common::kvm_available(TEST) {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let mem =
        husk::devices::virtio::GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region outlives the VM in this test.
        unsafe { vm.set_user_memory_region(r).unwrap() };
    }
    if let Err(e) = vm.create_irq_chip() {
        common::not_run(TEST, &format!("KVM_CREATE_IRQCHIP failed here: {e}"), false);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.img");
    std::fs::write(&path, [0u8; 4096]).unwrap();
    let mut bus = Bus::new();
    let mut cmdline = linux_loader::cmdline::Cmdline::new(512).unwrap();
    let mut alloc = MmioAllocator::new(0xd000_0000, 0x1000, 5..=23);
    let dev = Block::open("blk-kvm", &path, true).unwrap();
    let attached = attach_virtio_mmio(&vm, &mut bus, &mut cmdline, &mem, &mut alloc, Box::new(dev))
        .expect("attach with a real VmFd (ioeventfd + irqfd)");

    #[rustfmt::skip]
    let code: &[u8] = &[
        0x8b, 0x0d, 0x00, 0x00, 0x00, 0xd0,                         // mov ecx, [0xd0000000]
        0x8b, 0x1d, 0x08, 0x00, 0x00, 0xd0,                         // mov ebx, [0xd0000008]
        0xc7, 0x05, 0x50, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov dword [0xd0000050], 0
        0xb0, 0x42,                                                 // mov al, 0x42
        0xe6, 0xf4,                                                 // out 0xf4, al  (done)
        0xf4,                                                       // hlt
    ];
    mem.write_slice(code, GuestAddress(0x1000)).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    let seg = |sel: u16, type_: u8| kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: sel,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(8, 11);
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.ss,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        *s = seg(16, 3);
    }
    sregs.cr0 |= 1;
    if let Err(e) = vcpu.set_sregs(&sregs) {
        common::not_run(
            TEST,
            &format!("KVM_SET_SREGS (flat protected mode) refused: {e}"),
            false,
        );
        return;
    }
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();

    let mut vcpu = vcpu;
    let mut mmio_reads = 0;
    let mut notify_writes_on_bus = 0;
    let mut done = false;
    for _ in 0..100 {
        match vcpu.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                assert!(bus.read(addr, data));
                mmio_reads += 1;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if addr == attached.base + reg::QUEUE_NOTIFY {
                    notify_writes_on_bus += 1;
                }
                bus.write(addr, data);
            }
            // With the in-kernel irqchip HLT never exits to us, so the guest says "done" on a port.
            Ok(VcpuExit::IoOut(0xf4, _)) => {
                done = true;
                break;
            }
            Ok(other) => {
                common::not_run(
                    TEST,
                    &format!("tiny guest could not run here: exit {other:?}"),
                    false,
                );
                return;
            }
            Err(e) => {
                common::not_run(TEST, &format!("KVM_RUN failed here: {e}"), false);
                return;
            }
        }
    }
    assert!(done, "tiny guest did not finish");
    let regs = vcpu.get_regs().unwrap();
    assert_eq!(mmio_reads, 2);
    assert_eq!(
        regs.rcx as u32, 0x7472_6976,
        "MagicValue through an MMIO exit"
    );
    assert_eq!(regs.rbx as u32, TYPE_BLOCK, "DeviceID through an MMIO exit");
    assert_eq!(
        notify_writes_on_bus, 0,
        "QueueNotify should be caught by the ioeventfd"
    );
    let t = attached.transport.lock().unwrap();
    assert_eq!(
        t.queue_evts()[0].read().unwrap(),
        1,
        "ioeventfd did not fire"
    );

    // irqfd: a used-ring signal pulses GSI 5; the (edge-triggered) 8259 latches it in IRR.
    let pic_irr = || {
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id: kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).unwrap();
        // SAFETY: chip_id PIC_MASTER selects the `pic` member of the union.
        unsafe { chip.chip.pic.irr }
    };
    assert_eq!(attached.gsi, 5);
    assert_eq!(pic_irr() & (1 << 5), 0);
    t.interrupt().signal_used_queue().unwrap();
    // KVM injects a non-MSI irqfd from a workqueue, a moment after the eventfd write: poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while pic_irr() & (1 << 5) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_ne!(
        pic_irr() & (1 << 5),
        0,
        "irqfd did not raise GSI 5 within 2 s"
    );
}
