//! The QEMU command line husk builds (`qemu::args`): devices, boot settings, per-accelerator
//! arguments, and the bench's bare boot agreeing with it.

use super::qemu::{self, Accel};
use super::tests::{pair, spec_in};
use super::*;

#[test]
fn qemu_args_give_each_tap_a_virtio_net_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec_in(dir.path());
    let null = std::fs::File::open("/dev/null").unwrap();
    s.taps = vec![
        TapSpec {
            tap_name: "hk0".into(),
            mac: [2, 0x68, 0x6b, 1, 2, 3],
            fd: None,
        },
        TapSpec {
            tap_name: "tap0".into(),
            mac: [2, 0, 0, 0, 0, 9],
            fd: Some(super::TapFd(std::sync::Arc::new(null.into()))),
        },
    ];
    let a = qemu::args(&s, Accel::Tcg, None, None, &[], None, qemu::Boot::Cold).join(" ");
    assert!(
        a.contains("-netdev tap,id=net0,ifname=hk0,script=no,downscript=no,vhost=off"),
        "{a}"
    );
    assert!(
        a.contains("-device virtio-net-device,netdev=net0,mac=02:68:6b:01:02:03"),
        "{a}"
    );
    assert!(
        a.contains(&format!(
            "-netdev tap,id=net1,fd={},vhost=off",
            qemu::tap_fd_number(1)
        )),
        "{a}"
    );
}

#[test]
fn qemu_args_have_the_devices_and_boot_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec_in(dir.path());
    s.initramfs = Some(dir.path().join("initrd"));
    s.cmdline = vec!["quiet".into()];
    s.vcpus = 2;
    s.disks = vec![
        DiskSpec {
            path: "/img/layer0".into(),
            read_only: true,
            serial: Some("layer0".into()),
        },
        DiskSpec {
            path: "/img/scratch".into(),
            read_only: false,
            serial: None,
        },
    ];
    s.vsock = Some(VsockSpec {
        cid: 7,
        uds_path: "/run/v.sock".into(),
    });
    let a = qemu::args(
        &s,
        Accel::Tcg,
        None,
        Some(Path::new("/run/v.sock.serial")),
        &[],
        None,
        qemu::Boot::Cold,
    );
    for f in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
        assert!(a.contains(&f.to_string()), "{f} missing from {a:?}");
    }
    assert_eq!(
        pair(&a, "-accel"),
        [format!("tcg,tb-size={}", qemu::TCG_TB_SIZE_MIB)]
    );
    assert!(pair(&a, "-M")[0].starts_with("microvm,acpi=off"));
    assert!(pair(&a, "-M")[0].contains("memory-backend=mem"));
    assert_eq!(
        pair(&a, "-object"),
        ["memory-backend-memfd,id=mem,size=128M,share=on"]
    );
    assert_eq!(pair(&a, "-m"), ["128M"]);
    assert_eq!(pair(&a, "-smp"), ["2"]);
    assert_eq!(
        pair(&a, "-append"),
        ["console=ttyS0 reboot=t panic=-1 no_timer_check lapic_timer_period=4000000 noreplace-smp quiet"]
    );
    assert_eq!(
        pair(&a, "-drive"),
        [
            "if=none,id=d0,file=/img/layer0,format=raw,readonly=on",
            "if=none,id=d1,file=/img/scratch,format=raw,readonly=off"
        ]
    );
    assert_eq!(
        pair(&a, "-device"),
        [
            "virtio-blk-device,drive=d0,serial=layer0",
            "virtio-blk-device,drive=d1",
            "virtio-serial-device,max_ports=2",
            "virtserialport,chardev=agent,name=husk.agent,nr=1"
        ]
    );
    let chardevs = pair(&a, "-chardev");
    assert!(
        chardevs
            .iter()
            .any(|c| c == "socket,id=agent,path=/run/v.sock.serial"),
        "{chardevs:?}"
    );
    assert!(
        chardevs[0].starts_with("file,id=console,path=") && chardevs[0].ends_with(",append=on")
    );
    assert_eq!(pair(&a, "-serial"), ["chardev:console"]);
}

#[test]
fn bench_bare_boot_boots_as_husk_does() {
    // scripts/bench.sh compares `husk run` to a bare QEMU boot: both must translate with
    // the same cache and boot with the same kernel arguments, or the ratio measures those.
    let boot_py = include_str!("../../scripts/bench/boot.py");
    for want in [
        format!("TCG_ACCEL = \"tcg,tb-size={}\"", qemu::TCG_TB_SIZE_MIB),
        format!("TCG_BOOT_ARGS = \"{}\"", qemu::TCG_BOOT_ARGS.join(" ")),
        format!("TSC_CACHE = \"{}\"", super::tsc::CACHE),
        "tsc_early_khz={int(khz)} tsc=reliable".to_string(),
    ] {
        assert!(
            boot_py.contains(&want),
            "scripts/bench/boot.py must say {want}"
        );
    }
}

#[test]
fn qemu_kvm_uses_the_host_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let a = qemu::args(
        &spec_in(dir.path()),
        Accel::Kvm,
        None,
        None,
        &[],
        None,
        qemu::Boot::Cold,
    );
    // The translation-cache size is TCG's alone; KVM has none.
    assert_eq!(pair(&a, "-accel"), ["kvm"]);
    assert_eq!(pair(&a, "-cpu"), ["host"]);
    assert!(
        !a.iter()
            .any(|x| x.contains("vsock") || x.contains("virtio-serial")),
        "no agent channel asked for: {a:?}"
    );
}

#[test]
fn qemu_adds_the_tcg_boot_args_under_tcg_only() {
    // TCG_BOOT_ARGS (APIC bus rate, UP patching) describe TCG; KVM keeps the plain line.
    let dir = tempfile::tempdir().unwrap();
    let s = spec_in(dir.path());
    let append = |accel, tsc| {
        pair(
            &qemu::args(&s, accel, tsc, None, &[], None, qemu::Boot::Cold),
            "-append",
        )
    };
    let tcg =
        "console=ttyS0 reboot=t panic=-1 no_timer_check lapic_timer_period=4000000 noreplace-smp";
    assert_eq!(append(Accel::Tcg, None), [tcg]);
    // A known host TSC frequency is told to a TCG guest, never to a KVM one (its own clock).
    assert_eq!(
        append(Accel::Tcg, Some(2_596_096)),
        [format!("{tcg} tsc_early_khz=2596096 tsc=reliable")]
    );
    for tsc in [None, Some(2_596_096)] {
        assert_eq!(
            append(Accel::Kvm, tsc),
            ["console=ttyS0 reboot=t panic=-1 no_timer_check"]
        );
    }
}
