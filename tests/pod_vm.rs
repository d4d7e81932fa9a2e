//! The container core's pod (`husk::pod::PodVm`): one VM holding two containers at once, each
//! on its own root filesystem and in its own pid namespace, driven through the same calls
//! `husk` and `husk-runtime` use (connect, create, attach, start, wait, power off). Runs on the
//! QEMU backend (TCG where the host's KVM cannot run a stock guest).

mod common;
#[path = "agent_guest/harness.rs"]
mod harness;

use std::sync::Arc;

use harness::{container, ext4_disk, process, Planned};
use husk::backend::DiskSpec;
use husk::pod::attach::{self, Stdio};
use husk::pod::{PodVm, PoweredOff};
use husk_protocol::{DiskRef, RootfsSpec};

#[test]
fn one_vm_holds_two_containers_and_powers_off() {
    let test = "one_vm_holds_two_containers_and_powers_off";
    let dir = tempfile::tempdir().unwrap();
    let second_scratch = dir.path().join("scratch1.ext4");
    if let Err(why) = ext4_disk(&second_scratch) {
        common::not_run(test, &why, true);
        return;
    }
    let extra = vec![DiskSpec {
        path: second_scratch,
        read_only: false,
        serial: Some("scratch1".into()),
    }];
    let Some(Planned {
        backend,
        spec,
        uds,
        dir: _vm_dir,
    }) = Planned::new(test, extra)
    else {
        return;
    };
    let vm = Arc::from(backend.start(&spec).unwrap());
    let pod = PodVm::connect(vm, &uds)
        .unwrap_or_else(|e| panic!("{e}\n{}", harness::tail(&spec.console_log)));

    // Both write the same path at once and read it back: each sees only its own file.
    let body = |who: &str, code: i32| {
        format!("echo {who} > /tmp/who; sleep 1; echo \"$(cat /tmp/who) pid $$\"; exit {code}")
    };
    let a = container("a", process(&["sh", "-c", &body("from-a", 3)]));
    let mut b = container("b", process(&["sh", "-c", &body("from-b", 4)]));
    let RootfsSpec::Overlay { scratch, .. } = &mut b.rootfs else {
        panic!("{:?}", b.rootfs)
    };
    scratch.as_mut().unwrap().disk = DiskRef::Serial("scratch1".into());
    pod.create_container(a.clone()).unwrap();
    pod.create_container(b).unwrap();
    // A pod keeps its containers apart by id.
    let again = pod.create_container(a).unwrap_err().to_string();
    assert!(again.contains("container \"a\" already exists"), "{again}");

    let mut running = Vec::new();
    for id in ["a", "b"] {
        let log = dir.path().join(format!("{id}.log"));
        let stdio = Stdio::Log {
            path: log.clone(),
            tty: false,
        };
        let attached = attach::attach(&pod.agent, pod.vsock_uds(), id, None, &stdio).unwrap();
        pod.agent.start_container(id).unwrap();
        running.push((id, attached, log));
    }
    for ((id, attached, log), (want_out, want_code)) in running
        .into_iter()
        .zip([("from-a pid 1\n", 3), ("from-b pid 1\n", 4)])
    {
        let exit = attached.wait(&pod.agent, id, None, None).unwrap();
        assert_eq!(exit.code, want_code, "{id}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), want_out, "{id}");
    }
    let vm = pod.vm.clone();
    assert_eq!(pod.power_off().unwrap(), PoweredOff::Cleanly);
    assert!(vm.try_wait().unwrap().is_some(), "the VM is gone");
}
