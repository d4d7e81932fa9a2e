//! containerd-shim-husk-v2 driven the way Kubernetes drives it: containerd's CRI plugin,
//! RunPodSandbox → PullImage → two containers in one pod → ExecSync → exit codes →
//! StopPodSandbox → RemovePodSandbox, then nothing left on the host. Every test runs the
//! same flow on containerd's own runc runtime too (`*_runc`), which proves the harness; the
//! husk variants say NOT RUN (a failure under CI=true) until the shim is built.
//!
//! Each test has a containerd, a registry and a CNI bridge of its own (tests/common/cri.rs).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::cri::{husk_shim, Cri, Handler};
use common::cri_leaks::{husk_run_dirs, instance_programs, Footprint, HUSK_RUN_DIR};
use common::engine;

/// The containerd for `handler`: with the husk shim on its PATH for husk; None when the test
/// cannot run here (already reported).
fn cri_for(test: &str, handler: Handler) -> Option<Cri> {
    match handler {
        Handler::Runc => Cri::start(test, None),
        Handler::Husk => {
            let shim = husk_shim(test)?;
            Cri::start(test, Some(&shim))
        }
    }
}

/// What only a VM runtime leaves: its VMM and device daemons. Programs a husk pod runs.
const VM_PROGRAMS: &[&str] = &["qemu-system", "husk-vmm", "virtiofsd", "husk-agent-mux"];

fn vm_processes(cri: &Cri, fp: &Footprint) -> Vec<String> {
    let mut ids: Vec<&str> = vec![fp.pod.as_str()];
    ids.extend(fp.containers.iter().map(String::as_str));
    instance_programs(cri.dir(), &ids, VM_PROGRAMS)
}

/// What a TCP server at `addr` sends, retried for up to 10 s while it comes up.
fn read_from(addr: &str) -> String {
    use std::io::Read;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = std::net::TcpStream::connect_timeout(
            &addr.parse().expect("an address"),
            std::time::Duration::from_secs(2),
        )
        .and_then(|mut s| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            let mut out = String::new();
            s.read_to_string(&mut out).map(|_| out)
        });
        match got {
            Ok(out) if !out.is_empty() => return out,
            other if Instant::now() >= deadline => panic!("reading from {addr}: {other:?}"),
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// The runtime's own leak checks after the pod is gone: none for runc (the common ones cover
/// it); for husk no VMM or device daemon, and none of `run_dirs` (the shim's working
/// directories the pod's VM used).
fn runtime_leftovers(
    handler: Handler,
    run_dirs: Vec<PathBuf>,
) -> impl Fn(&Cri, &Footprint) -> Vec<String> {
    move |cri, fp| match handler {
        Handler::Runc => Vec::new(),
        Handler::Husk => vm_processes(cri, fp)
            .into_iter()
            .map(|p| format!("VM process {p}"))
            .chain(
                run_dirs
                    .iter()
                    .filter(|d| d.exists())
                    .map(|d| format!("shim working dir {}", d.display())),
            )
            .collect(),
    }
}

/// The kernel release containers of `handler` must see: the host's for runc, the guest
/// kernel's (HUSK_BZIMAGE / HUSK_KERNEL) for husk.
fn expected_kernel(test: &str, handler: Handler) -> String {
    match handler {
        Handler::Runc => engine::host_kernel_release(),
        Handler::Husk => engine::husk_kernel_release(test)
            .unwrap_or_else(|| panic!("{test}: no guest kernel to compare uname -r with")),
    }
}

const SERVER: &str =
    "mkdir -p /www && echo hi-from-a > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www";
/// Reaches A on the pod's localhost, retrying while A starts; prints A's page. (nc, not wget:
/// Debian's static busybox wget crashes in its resolver.)
const CLIENT: &str = "i=0; while [ $i -lt 150 ]; do \
     page=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 8080) && \
     case \"$page\" in *hi-from-a*) echo \"$page\" | tail -n 1; exit 0 ;; esac; \
     i=$((i+1)); sleep 0.2; done; echo never reached A >&2; exit 1";

fn pod_two_containers_share_localhost(test: &str, handler: Handler) {
    let Some(cri) = cri_for(test, handler) else {
        return;
    };
    let t0 = Instant::now();
    let config = cri.pod_config(&format!("share-{}", handler.name()));
    let pod = cri.run_pod(&config, handler);
    let ran_pod = t0.elapsed();

    let image_ref = cri.pull(&cri.busybox);
    assert!(!image_ref.is_empty(), "PullImage gave no image ref");

    let a = cri.create_container(&pod, &config, "a", &cri.busybox, &["sh", "-c", SERVER]);
    cri.start_container(&a);

    // ExecSync: output and exit code come back through the shim.
    let r = cri.exec_sync(&a, &["sh", "-c", "echo x; exit 3"], 60);
    assert_eq!(
        (r.exit_code, common::text(&r.stdout).as_str()),
        (3, "x\n"),
        "ExecSync in A; stderr: {}",
        common::text(&r.stderr)
    );
    let r = cri.exec_sync(&a, &["hostname"], 60);
    assert_eq!(
        common::text(&r.stdout).trim(),
        config.hostname,
        "A's hostname is the pod's"
    );

    let r = cri.exec_sync(&a, &["uname", "-r"], 60);
    assert_eq!(
        common::text(&r.stdout).trim(),
        expected_kernel(test, handler),
        "the kernel A runs on ({} pod)",
        handler.name()
    );

    let b = cri.create_container(&pod, &config, "b", &cri.busybox, &["sh", "-c", CLIENT]);
    cri.start_container(&b);
    let b_status = cri.wait_exited(&b);
    let b_log = std::fs::read_to_string(std::path::Path::new(&config.log_directory).join("b.log"))
        .unwrap_or_else(|e| panic!("B's log in {}: {e}", config.log_directory));
    assert_eq!(
        b_status.exit_code, 0,
        "B did not reach A on localhost: {b_status:?}\nB's log:\n{b_log}"
    );
    assert!(
        b_log.lines().any(|l| l.ends_with(" stdout F hi-from-a")),
        "B's log (CRI format) lacks A's page:\n{b_log}"
    );

    let fp = cri.footprint(&pod, &[&a, &b]);
    assert!(
        fp.ip.starts_with("10.77."),
        "the pod's address {:?} is not on the test's CNI network",
        fp.ip
    );
    assert!(fp.netns.is_some(), "no netns path in the pod's status");
    // The pod's CNI address is the pod's own (husk: the guest's NIC, mirrored to the veth in
    // CNI's namespace), reachable from the host over the CNI bridge.
    let r = cri.exec_sync(&a, &["ip", "-4", "-o", "addr", "show"], 60);
    assert!(
        common::text(&r.stdout).contains(&format!("inet {}/", fp.ip)),
        "A does not hold the pod's address {}: {}",
        fp.ip,
        common::text(&r.stdout)
    );
    let r = cri.exec_sync(
        &a,
        &[
            "sh",
            "-c",
            // The listener lets go of the exec's output, or ExecSync waits for it.
            "({ echo pong-from-pod | nc -l -p 9090; } </dev/null >/dev/null 2>&1 &); sleep 0.2",
        ],
        60,
    );
    assert_eq!(
        r.exit_code,
        0,
        "a listener in A: {}",
        common::text(&r.stderr)
    );
    assert_eq!(
        read_from(&format!("{}:9090", fp.ip)),
        "pong-from-pod\n",
        "the host reaches the pod on its CNI address"
    );
    assert!(
        !fp.processes.is_empty(),
        "no shim or container process carries the instance's marker"
    );
    let mut run_dirs = Vec::new();
    if handler == Handler::Husk {
        let vms = vm_processes(&cri, &fp);
        assert!(
            !vms.is_empty(),
            "no VM runs the husk pod: {:#?}",
            fp.processes
        );
        run_dirs = husk_run_dirs(&vms);
        // The VMM's cgroup lies under the pod's (the kubelet counts the VM against the pod).
        let parent = cri.cgroup_parent();
        for vm in vms
            .iter()
            .filter(|p| p.contains("qemu-system") || p.contains("husk-vmm"))
        {
            let pid = vm
                .strip_prefix("pid ")
                .and_then(|r| r.split(':').next())
                .unwrap_or_default();
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            assert!(
                cgroup.lines().any(|l| l.contains(&format!(":{parent}/"))),
                "the VMM {vm} is not under the pod's cgroup {parent}: {cgroup}"
            );
        }
        assert!(
            !run_dirs.is_empty(),
            "the pod's VM processes name no {HUSK_RUN_DIR}*: {vms:#?}"
        );
    }

    // The leak checks see the live pod (so they can fail): its processes, mounts, netns,
    // address, veth, cgroups, shim bundle and records.
    let live = cri.leftovers(&fp);
    let mut expected = vec![
        "process ",
        "mount ",
        "netns ",
        "CNI address ",
        "veth ",
        "shim bundle ",
        "CRI pod ",
        "CRI container ",
        "containerd tasks: ",
    ];
    // Host cgroups under the pod's parent: runc's containers', husk's VMM's. runc's state:
    // its containers are host processes (husk's live in the VM).
    expected.push("cgroup ");
    if handler == Handler::Runc {
        expected.push("runc state ");
    }
    for what in expected {
        assert!(
            live.iter().any(|l| l.starts_with(what)),
            "the leak check sees no {what:?} of the running pod: {live:#?}"
        );
    }

    // A ignores SIGTERM (PID 1 without a handler): SIGKILL after the timeout, 137.
    cri.stop_container(&a, 2);
    let a_status = cri.wait_exited(&a);
    assert!(
        [137, 143].contains(&a_status.exit_code),
        "A stopped with exit code {}: {a_status:?}",
        a_status.exit_code
    );

    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    cri.assert_pod_gone(&fp, &runtime_leftovers(handler, run_dirs));
    eprintln!(
        "{test}: RunPodSandbox {ran_pod:?}, whole flow {:?}",
        t0.elapsed()
    );
}

#[test]
fn cri_pod_two_containers_share_localhost_runc() {
    pod_two_containers_share_localhost(
        "cri_pod_two_containers_share_localhost_runc",
        Handler::Runc,
    );
}

#[test]
fn cri_pod_two_containers_share_localhost_husk() {
    pod_two_containers_share_localhost(
        "cri_pod_two_containers_share_localhost_husk",
        Handler::Husk,
    );
}

/// `ctr run --runtime TYPE --rm`: stdout and the exit code come back, nothing is left.
fn ctr_run(test: &str, handler: Handler) {
    let Some(cri) = cri_for(test, handler) else {
        return;
    };
    // containerd puts a `ctr run` container's cgroup at /<namespace>/<id>: the two handlers'
    // tests run at once, each with its own containerd, and a shared namespace had runc's `oom`
    // join the cgroup husk's VM of the same name had just charged ~100 MB to (cgroup v1: runc
    // then cannot set the 32 MiB limit).
    let ns = match handler {
        Handler::Husk => "husk",
        Handler::Runc => "husk-runc",
    };
    let pull = cri.run_ctr(ns, &["images", "pull", "--plain-http", &cri.busybox]);
    assert!(
        pull.status.success(),
        "ctr images pull {}: {}",
        cri.busybox,
        common::text(&pull.stderr)
    );
    let run = |id: &str, args: &[&str]| {
        let mut a = vec![
            "run",
            "--runtime",
            handler.runtime_type(),
            "--rm",
            &cri.busybox,
            id,
        ];
        a.extend_from_slice(args);
        cri.run_ctr(ns, &a)
    };
    let out = run("echo-hi", &["echo", "hi"]);
    assert!(
        out.status.success(),
        "ctr run echo hi: {}\n{}",
        out.status,
        common::text(&out.stderr)
    );
    assert_eq!(common::text(&out.stdout), "hi\n", "ctr run echo hi");

    let out = run("uname", &["uname", "-r"]);
    assert_eq!(
        common::text(&out.stdout).trim(),
        expected_kernel(test, handler),
        "the kernel a {} container runs on; stderr {}",
        handler.name(),
        common::text(&out.stderr)
    );

    let out = run("exit-3", &["sh", "-c", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "ctr run sh -c 'exit 3': stderr {}",
        common::text(&out.stderr)
    );

    // A container its memory limit gets OOM-killed (in the guest, for husk): exit 137 and
    // containerd's /tasks/oom event for it.
    let mut events = cri
        .ctr(ns, &["events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctr events");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (seen, out) = (seen.clone(), events.stdout.take().expect("piped"));
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                seen.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    let mut a = vec!["run", "--runtime", handler.runtime_type(), "--rm"];
    a.extend(["--memory-limit", "33554432", &cri.busybox, "oom"]);
    a.extend(["sh", "-c", "x=a; while :; do x=$x$x; done"]);
    let out = cri.run_ctr(ns, &a);
    assert_eq!(
        out.status.code(),
        Some(137),
        "a container over its 32 MiB limit: stderr {}",
        common::text(&out.stderr)
    );
    let start = Instant::now();
    while !seen
        .lock()
        .unwrap()
        .lines()
        .any(|l| l.contains("/tasks/oom") && l.contains("\"oom\""))
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no /tasks/oom event for container oom; events:\n{}",
            seen.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = events.kill();
    let _ = events.wait();
    let _ = reader.join();

    if handler == Handler::Husk {
        // A pod by the CRI annotations: a member goes into the sandbox's VM, and once deleted
        // is gone from the guest too (the same id runs there again).
        let pod = |kind: &str| {
            [
                "--annotation".to_string(),
                format!("io.kubernetes.cri.container-type={kind}"),
                "--annotation".to_string(),
                "io.kubernetes.cri.sandbox-id=pod-x".to_string(),
            ]
        };
        let mut a: Vec<String> = ["run", "-d", "--runtime", handler.runtime_type()]
            .map(String::from)
            .to_vec();
        a.extend(pod("sandbox"));
        a.extend([&cri.busybox, "pod-x", "sleep", "100000"].map(String::from));
        let out = cri.run_ctr(ns, &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "the sandbox: {}",
            common::text(&out.stderr)
        );
        let vms = |cri: &Cri| {
            cri.processes()
                .iter()
                .filter(|p| p.contains("qemu-system") || p.contains("husk-vmm"))
                .count()
        };
        let before = vms(&cri);
        for round in 1..=2 {
            let mut a: Vec<String> = ["run", "--rm", "--runtime", handler.runtime_type()]
                .map(String::from)
                .to_vec();
            a.extend(pod("container"));
            a.extend([&cri.busybox, "member", "sh", "-c", "echo in-pod"].map(String::from));
            let out = cri.run_ctr(ns, &a.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(
                (out.status.code(), common::text(&out.stdout).as_str()),
                (Some(0), "in-pod\n"),
                "member run {round}: stderr {}",
                common::text(&out.stderr)
            );
        }
        assert_eq!(vms(&cri), before, "members run in the sandbox's VM");
        for args in [
            &["task", "delete", "--force", "pod-x"][..],
            &["containers", "rm", "pod-x"][..],
        ] {
            let out = cri.run_ctr(ns, args);
            assert!(
                out.status.success(),
                "ctr {args:?}: {}",
                common::text(&out.stderr)
            );
        }
    }

    for what in ["containers", "tasks"] {
        let out = cri.run_ctr(ns, &[what, "ls", "-q"]);
        assert_eq!(
            common::text(&out.stdout).trim(),
            "",
            "ctr {what} left after --rm"
        );
    }
    let fp = Footprint {
        pod: "echo-hi".to_string(),
        containers: vec!["exit-3".to_string()],
        netns: None,
        ip: String::new(),
        processes: Vec::new(),
    };
    let check = runtime_leftovers(handler, Vec::new());
    let start = Instant::now();
    loop {
        let mut left = cri.processes();
        left.extend(check(&cri, &fp));
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "left after ctr run --rm: {left:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn ctr_run_with_runc_runtime() {
    ctr_run("ctr_run_with_runc_runtime", Handler::Runc);
}

#[test]
fn ctr_run_with_husk_runtime() {
    ctr_run("ctr_run_with_husk_runtime", Handler::Husk);
}

#[test]
fn husk_run_dirs_are_read_from_the_vm_command_lines() {
    let vms = [
        "pid 1: /usr/bin/qemu-system-x86_64 -chardev file,id=console,path=/run/husk-shim/3cf5/console.log,append=on -chardev socket,path=/run/husk-shim/3cf5/vsock.serial".to_string(),
        "pid 2: virtiofsd --shared-dir=/run/husk-shim/77ab/share".to_string(),
        "pid 3: husk-agent-mux --listen-fd 3 --link-fd 4".to_string(),
    ];
    assert_eq!(
        husk_run_dirs(&vms),
        [
            PathBuf::from("/run/husk-shim/3cf5"),
            PathBuf::from("/run/husk-shim/77ab")
        ]
    );
    assert!(husk_run_dirs(&["pid 4: qemu /run/husk-shim/".to_string()]).is_empty());
}

/// A husk pod's ContainerStats are the guest cgroup's numbers; then `kill -9` of the pod's
/// shim: containerd runs the shim's `delete` action, which ends the VM and its helpers, and
/// the pod can still be stopped and removed with nothing left.
#[test]
fn cri_husk_stats_then_kill_9_of_the_shim_leaves_nothing() {
    let test = "cri_husk_stats_then_kill_9_of_the_shim_leaves_nothing";
    let Some(cri) = cri_for(test, Handler::Husk) else {
        return;
    };
    let config = cri.pod_config("stats-kill");
    let pod = cri.run_pod(&config, Handler::Husk);
    cri.pull(&cri.busybox);
    // Holds 8 MB in a shell variable (the loop keeps the shell from exec'ing its last
    // command, which would drop it), burns a little CPU, then idles.
    let hold =
        "x=$(head -c 8000000 /dev/zero | tr '\\0' a); echo held; while :; do sleep 1000; done";
    let a = cri.create_container(&pod, &config, "a", &cri.busybox, &["sh", "-c", hold]);
    cri.start_container(&a);
    let log = Path::new(&config.log_directory).join("a.log");
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("held")
    {
        assert!(Instant::now() < deadline, "A never said it held its memory");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stats = cri.container_stats(&a);
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    assert!(
        memory.is_some_and(|m| m >= 8_000_000),
        "A's working set {memory:?} does not count the 8 MB it holds"
    );
    assert!(cpu.is_some_and(|c| c > 0), "A's CPU time is {cpu:?}");

    let fp = cri.footprint(&pod, &[&a]);
    let run_dirs = husk_run_dirs(&vm_processes(&cri, &fp));
    assert!(!run_dirs.is_empty(), "no VM runs the pod");
    let shims: Vec<i32> = cri
        .processes()
        .iter()
        .filter(|p| p.contains("containerd-shim-husk-v2"))
        .filter_map(|p| p.strip_prefix("pid ")?.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(
        shims.len(),
        1,
        "one shim serves the pod: {:#?}",
        cri.processes()
    );
    // SAFETY: SIGKILL to the shim process this test's containerd started.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);

    // containerd sees the shim go and cleans up after it; the pod then stops and goes.
    let status = cri.wait_exited(&a);
    assert_ne!(
        status.exit_code, 0,
        "A after its shim was killed: {status:?}"
    );
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    cri.assert_pod_gone(&fp, &runtime_leftovers(Handler::Husk, run_dirs));
}
