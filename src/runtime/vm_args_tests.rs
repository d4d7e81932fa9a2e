//! A container's VM as the husk-vmm backend hands it over: [`vm_spec`] through
//! `backend::husk_vmm::config`, as JSON, into husk-vmm's own `--config` reader and validation.
//! The boot tests on this host run QEMU, so this is where a field husk-vmm would refuse, or a
//! disk serial it would drop, shows up without hardware KVM.

use husk_protocol::{DiskRef, RootfsSpec};

use super::lifecycle::{container_spec, vm_spec};
use super::state::tests::sample;
use super::state::Volume;
use crate::backend::{husk_vmm, TapSpec};
use crate::pod::GuestAssets;
use crate::vmm::cli::Args;

#[test]
fn husk_vmm_parses_a_containers_vm_and_keeps_the_serials_the_agent_looks_for() {
    let mut s = sample(&"d".repeat(64));
    s.config.layers = vec!["/l/0.erofs".into(), "/l/1.erofs".into()];
    s.config.volumes = vec![Volume {
        host: "/srv/a".into(),
        guest: "/data".into(),
        read_only: false,
    }];
    let assets = GuestAssets {
        kernel: "/k".into(),
        initramfs: "/i".into(),
    };
    let mut vm = vm_spec(&s, &assets);
    // What `attach_network` adds for a bridged container.
    vm.taps
        .push(TapSpec::new("husk-abcdef", [2, 0x68, 0x6b, 0, 0, 7]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.json");
    std::fs::write(&file, serde_json::to_vec(&husk_vmm::config(&vm)).unwrap()).unwrap();
    let cfg =
        <Args as clap::Parser>::try_parse_from(["husk-vmm", "--config", file.to_str().unwrap()])
            .unwrap()
            .into_config()
            .unwrap();
    cfg.validate().unwrap();

    let layer_disk = cfg.layer_disk.as_ref().unwrap();
    assert_eq!(layer_disk.layers, s.config.layers);
    let mut serials: Vec<_> = cfg.disks.iter().map(|d| d.serial.as_deref()).collect();
    assert_eq!(serials, [Some("husk-scratch")]);
    assert!(!cfg.disks[0].read_only);
    assert_eq!(cfg.disks[0].path, s.scratch_disk);
    serials.push(layer_disk.serial.as_deref());
    // Every disk the agent will look up by serial is one husk-vmm gives that serial.
    let c = container_spec(&s, None);
    let RootfsSpec::Overlay { layers, scratch } = &c.rootfs else {
        panic!("{:?}", c.rootfs)
    };
    let wanted = layers
        .iter()
        .map(|l| &l.disk)
        .chain(scratch.as_ref().map(|s| &s.disk));
    for (i, disk) in wanted.enumerate() {
        let want = match disk {
            DiskRef::Serial(s) => s,
            // Layer i is partition i+1 of the layer disk, which holds one partition per layer.
            DiskRef::Partition { serial, number } => {
                assert_eq!(*number as usize, i + 1);
                assert!(i < layer_disk.layers.len());
                serial
            }
            DiskRef::Device(_) => panic!("the agent would look up {disk:?} by device path"),
        };
        assert!(serials.contains(&Some(want.as_str())), "{want}");
    }
    let v = cfg.vsock.as_ref().unwrap();
    assert_eq!((v.cid, &v.uds), (s.vsock_cid, &s.vsock_uds));
    assert_eq!(cfg.fs.len(), 1);
    assert_eq!(cfg.fs[0].tag, "husk-vol-0");
    assert_eq!(cfg.net[0].tap.as_deref(), Some("husk-abcdef"));
    assert_eq!(cfg.initramfs.as_deref(), Some(std::path::Path::new("/i")));
    assert!(cfg.kernel_cmdline().ends_with(" quiet"));
}
