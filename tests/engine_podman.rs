//! podman drives the OCI runtime under test (husk-runtime by default, any runc-compatible
//! runtime through `HUSK_ENGINE_RUNTIME`): `podman --runtime R run --rm --network none busybox …`
//! output and exit code, `-i`, `-t`, `-d` + logs + stop + rm, exec, volumes, `--memory`/`--cpus`,
//! the kernel the container sees, `init` + `rm` of a created container and a failed start, and
//! 20 run/rm cycles that must leave nothing behind.
//! Each test has its own podman store and runtime `--root` (tests/common/engine.rs).

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use common::engine::{self, Podman, Runtime};
use common::text;

/// The runtime and a private podman, or None when this host cannot run the test (NOT RUN).
fn setup(test: &str) -> Option<(Runtime, Podman)> {
    let rt = engine::runtime(test)?;
    let podman = Podman::new(test, &rt)?;
    Some((rt, podman))
}

#[test]
fn podman_run_output_and_exit_code() {
    let Some((_rt, podman)) = setup("podman_run_output_and_exit_code") else {
        return;
    };
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the container's exit status is podman's: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "to-stdout\n");
    assert!(
        text(&out.stderr).contains("to-stderr"),
        "stderr: {}",
        text(&out.stderr)
    );

    let ok = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "echo",
        "hello",
        "world",
    ]);
    assert_eq!(ok, "hello world\n");
    assert!(
        podman.all_containers().is_empty(),
        "--rm left containers: {:?}",
        podman.all_containers()
    );
}

#[test]
fn podman_run_interactive_stdin() {
    let Some((_rt, podman)) = setup("podman_run_interactive_stdin") else {
        return;
    };
    let input: Vec<u8> = (0..2000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let out = podman.run_with_input(
        &[
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "wc -l; exit 0",
        ],
        &input,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "2000",
        "stdin reached the container whole"
    );

    let out = podman.run_with_input(
        &["run", "--rm", "-i", "--network", "none", "busybox", "cat"],
        b"through stdin\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "through stdin\n");
}

#[test]
fn podman_run_tty() {
    let Some((_rt, podman)) = setup("podman_run_tty") else {
        return;
    };
    let out = podman.ok(&[
        "run",
        "--rm",
        "-t",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "tty; [ -t 0 ] && [ -t 1 ] && echo both-tty",
    ]);
    // A terminal's output discipline turns \n into \r\n: the output went through a pty.
    assert!(
        out.contains("/dev/pts/") && out.contains("both-tty\r\n"),
        "not a terminal: {out:?}"
    );

    let out = podman.run(&["run", "--rm", "--network", "none", "busybox", "tty"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "tty(1) fails without a terminal"
    );
    assert_eq!(
        text(&out.stdout),
        "not a tty\n",
        "without -t there is no terminal"
    );
}

/// The runtime contract as podman relies on it: `podman init` leaves the container `created`
/// in the runtime and `podman rm` of it works (podman deletes with `--force`: a plain
/// `delete` of a created container is an error under the runtime spec); a process that
/// cannot be exec'd fails `podman run` and leaves nothing, in podman or in the runtime.
#[test]
fn podman_rm_of_a_created_container_and_a_failed_start() {
    let Some((_rt, podman)) = setup("podman_rm_of_a_created_container_and_a_failed_start") else {
        return;
    };
    let name = "husk-created";
    podman.ok(&[
        "create",
        "--name",
        name,
        "--network",
        "none",
        "busybox",
        "true",
    ]);
    podman.ok(&["init", name]);
    let state = podman.ok(&["inspect", name, "--format", "{{.State.Status}}"]);
    assert_eq!(state.trim(), "initialized");
    podman.ok(&["rm", name]);
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "/no/such/program",
    ]);
    assert!(!out.status.success(), "run of a missing program succeeded");
    assert!(
        text(&out.stderr).contains("/no/such/program"),
        "podman does not say what failed: {}",
        text(&out.stderr)
    );
    assert!(
        podman.all_containers().is_empty(),
        "left in podman: {:?}",
        podman.all_containers()
    );
    let state = engine::runtime_state(&podman.runtime_root);
    assert!(
        state.is_empty(),
        "runtime state left in its --root: {state:?}"
    );
}

#[test]
fn podman_detached_logs_stop_rm() {
    let Some((_rt, podman)) = setup("podman_detached_logs_stop_rm") else {
        return;
    };
    let name = "husk-detached";
    let id = podman.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done",
    ]);
    assert_eq!(id.trim().len(), 64, "podman run -d prints the id: {id:?}");
    podman.wait_for_log(name, "started");
    let state = podman.ok(&["inspect", name, "--format", "{{.State.Status}}"]);
    assert_eq!(state.trim(), "running");

    // The container traps SIGTERM: a clean exit 0 proves the signal reached it.
    podman.ok(&["stop", "-t", "60", name]);
    let state = podman.ok(&[
        "inspect",
        name,
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
    ]);
    assert_eq!(state.trim(), "exited 0");
    let logs = podman.ok(&["logs", name]);
    assert_eq!(logs, "started\ngot-term\n");

    podman.ok(&["rm", name]);
    assert!(
        podman.all_containers().is_empty(),
        "rm left: {:?}",
        podman.all_containers()
    );

    // A container that ignores SIGTERM is killed after the timeout: 128 + SIGKILL.
    let name = "husk-stubborn";
    podman.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    podman.wait_for_log(name, "ready");
    podman.ok(&["stop", "-t", "1", name]);
    let code = podman.ok(&["inspect", name, "--format", "{{.State.ExitCode}}"]);
    assert_eq!(code.trim(), "137");
    podman.ok(&["rm", name]);
}

#[test]
fn podman_exec_into_running_container() {
    let Some((_rt, podman)) = setup("podman_exec_into_running_container") else {
        return;
    };
    let name = "husk-exec";
    podman.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo $$ > /tmp/main-pid; echo up; while :; do sleep 0.1; done",
    ]);
    podman.wait_for_log(name, "up");

    // The exec'd process sees the container's own files, and its exit status is exec's.
    let out = podman.run(&["exec", name, "sh", "-c", "cat /tmp/main-pid; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "1\n",
        "the main process is the container's pid 1"
    );

    let out = podman.run_with_input(&["exec", "-i", name, "cat"], b"exec stdin\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec stdin\n");

    let out = podman.ok(&["exec", "-t", name, "tty"]);
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\n"),
        "{out:?}"
    );

    let out = podman.ok(&[
        "exec",
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        name,
        "sh",
        "-c",
        "echo $GREETING $PWD",
    ]);
    assert_eq!(out, "hi /tmp\n");

    // The main process is still running after the execs.
    let state = podman.ok(&["inspect", name, "--format", "{{.State.Status}}"]);
    assert_eq!(state.trim(), "running");
    podman.ok(&["rm", "-f", "-t", "0", name]);
}

#[test]
fn podman_volumes() {
    let Some((_rt, podman)) = setup("podman_volumes") else {
        return;
    };
    let vol = tempfile::tempdir().expect("volume dir");
    std::fs::write(vol.path().join("from-host"), "host data\n").expect("write");
    let rw = format!("{}:/data", vol.path().display());
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; echo guest data > /data/from-guest",
    ]);
    assert_eq!(out, "host data\n");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("from-guest")).expect("the container's file"),
        "guest data\n"
    );

    let ro = format!("{}:/data:ro", vol.path().display());
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; echo x > /data/denied",
    ]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a :ro volume must refuse writes"
    );
    assert_eq!(text(&out.stdout), "host data\n");
    assert!(!vol.path().join("denied").exists());
}

#[test]
fn podman_memory_and_cpus_visible_inside() {
    let Some((rt, podman)) = setup("podman_memory_and_cpus_visible_inside") else {
        return;
    };
    // cgroup v2 or v1, whichever the container's kernel mounts. On v2 the limits are in the
    // container's own cgroup: at /sys/fs/cgroup itself when the runtime mounts just that
    // (runc, or a cgroup namespace), else at its path from /proc/self/cgroup.
    let script = r#"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    p=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
    [ -f "$p/memory.max" ] || p=/sys/fs/cgroup
    cat "$p/memory.max" "$p/cpu.max"
else
    cat /sys/fs/cgroup/memory/memory.limit_in_bytes
    echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
fi
nproc
grep MemTotal /proc/meminfo
"#;
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--memory",
        "384m",
        "--cpus",
        "2",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], (384u64 << 20).to_string(), "memory limit: {out}");
    assert_eq!(lines[1], "200000 100000", "cpu quota/period: {out}");
    if rt.is_husk {
        // The VM itself is sized from the limits: 2 vCPUs, and memory above husk's 256 MiB
        // default but not above the limit (plus room for what the runtime may add).
        assert_eq!(lines[2], "2", "vCPUs from --cpus 2: {out}");
        let kib: u64 = lines[3]
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("MemTotal: {out}"));
        assert!(
            kib > 256 * 1024 && kib <= (384 + 64) * 1024,
            "guest MemTotal {kib} KiB does not follow --memory 384m"
        );
    }
}

#[test]
fn podman_uname_is_the_runtime_kernel() {
    let test = "podman_uname_is_the_runtime_kernel";
    let Some((rt, podman)) = setup(test) else {
        return;
    };
    let expected = if rt.is_husk {
        match engine::husk_kernel_release(test) {
            Some(r) => r,
            None => return,
        }
    } else {
        // runc and crun share the host's kernel: the check is real either way.
        engine::host_kernel_release()
    };
    let out = podman.ok(&["run", "--rm", "--network", "none", "busybox", "uname", "-r"]);
    assert_eq!(out.trim(), expected);
    if rt.is_husk {
        assert_ne!(
            out.trim(),
            engine::host_kernel_release(),
            "the container must run on the guest kernel, not the host's"
        );
    }
}

#[test]
fn podman_twenty_run_rm_cycles_leave_nothing() {
    let Some((_rt, podman)) = setup("podman_twenty_run_rm_cycles_leave_nothing") else {
        return;
    };
    let dir = podman.dir.path().to_path_buf();
    // One run first, so the store's own mounts (podman keeps its overlay dir bind-mounted)
    // are in the "before" picture.
    podman.ok(&["run", "--rm", "--network", "none", "busybox", "true"]);
    let mounts_before = engine::mounts();
    for i in 0..20 {
        let name = format!("cycle-{i}");
        let out = podman.ok(&[
            "run",
            "--name",
            &name,
            "--network",
            "none",
            "busybox",
            "echo",
            &name,
        ]);
        assert_eq!(out.trim(), name);
        podman.ok(&["rm", &name]);
    }
    assert!(podman.all_containers().is_empty());

    let state = engine::runtime_state(&podman.runtime_root);
    assert!(
        state.is_empty(),
        "runtime state left in its --root: {state:?}"
    );

    let procs = engine::processes_using(&dir);
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");

    // Only mounts of this instance count: other tests mount and unmount beside this one.
    let default_root = "/run/husk-runtime";
    let dir_str = dir.to_str().expect("utf-8");
    let leaked: Vec<_> = engine::mounts()
        .difference(&mounts_before)
        .filter(|(point, source)| {
            point.contains(dir_str) || source.contains(dir_str) || point.starts_with(default_root)
        })
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "mounts left behind: {leaked:#?}");
}

const PAGE: &str = "served-by-busybox-httpd";

/// `printf 'GET /index.html …' | nc` to `host:port`, in a shell inside a container (this
/// busybox's `wget -T` dies of SIGSEGV under runc and husk alike; nc has a timeout that works).
fn http_get_cmd(host: &str, port: &str) -> String {
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {host} {port}; echo")
}

/// podman's bridge network (netavark, a test-private bridge and /24) with `-p`: busybox
/// httpd in a container serves a file to curl on the host, at 127.0.0.1 and at the bridge
/// address; another container reaches it by IP and the host through the bridge, and sees
/// podman's /etc/hosts and /etc/resolv.conf. A `kill -9` of the container's pid (husk: the
/// VM holder) and `podman rm` then leave no netns, TAP, state, process or bridge behind.
#[test]
fn podman_bridge_network_publish_and_reach() {
    let test = "podman_bridge_network_publish_and_reach";
    let Some((rt, podman)) = setup(test) else {
        return;
    };
    if !engine::tool_present(test, "curl") || !engine::tool_present(test, "nsenter") {
        return;
    }
    let net = podman.private_network("husknet");
    let www = podman.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), format!("{PAGE}\n")).expect("index.html");
    let port = engine::free_port().to_string();
    let publish = format!("{port}:80");
    let volume = format!("{}:/www:ro", www.display());
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net.name,
        "-p",
        &publish,
        "-v",
        &volume,
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    for host in ["127.0.0.1", net.gateway.as_str()] {
        let body = engine::curl_until_up(&format!("http://{host}:{port}/index.html"));
        assert_eq!(body.trim(), PAGE, "curl via {host}:{port}");
    }
    let inspect = |what: &str| {
        podman
            .ok(&["inspect", "web", "--format", what])
            .trim()
            .to_string()
    };
    let web_ip = inspect(&format!(
        "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
        net.name
    ));
    assert!(web_ip.starts_with("10.89."), "web's address: {web_ip:?}");
    let netns = inspect("{{.NetworkSettings.SandboxKey}}");
    assert!(netns.starts_with('/'), "web's network namespace: {netns:?}");
    let tap = format!("hk{}", &inspect("{{.Id}}")[..12]);
    if rt.is_husk {
        // The VM's TAP sits beside podman's veth, and tc mirrors the veth into it.
        assert!(
            engine::links(Some(&netns)).contains(&tap),
            "no TAP {tap} in {netns}: {:?}",
            engine::links(Some(&netns))
        );
        let mut tc = std::process::Command::new("nsenter");
        tc.arg(format!("--net={netns}"))
            .args(["--", "tc", "qdisc", "show", "dev", "eth0"])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let qdiscs = text(&engine::run_bounded(tc, None, engine::LIMIT).stdout);
        assert!(qdiscs.contains("ingress"), "eth0's qdiscs: {qdiscs}");
    }

    // Container → container by IP, container → host through the bridge (the published port).
    let script = format!(
        "{}; {}; echo ---; cat /etc/hosts /etc/resolv.conf",
        http_get_cmd(&web_ip, "80"),
        http_get_cmd(&net.gateway, &port)
    );
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        &net.name,
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    let (replies, files) = out.split_once("---").unwrap_or((&out, ""));
    assert_eq!(replies.matches(PAGE).count(), 2, "replies: {replies}");
    assert!(replies.contains("200 OK"), "replies: {replies}");
    // podman's own files (bind-mounted), as runc's containers see them.
    assert!(
        files.contains("host.containers.internal") && files.contains(&net.gateway),
        "/etc/hosts: {files}"
    );
    assert!(files.contains("nameserver "), "/etc/resolv.conf: {files}");

    // kill -9 of what podman thinks is the container (husk: the VM holder), then rm.
    let pid = inspect("{{.State.Pid}}");
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 0), "pid {pid:?}");
    let mut kill = std::process::Command::new("kill");
    kill.args(["-9", &pid]);
    assert!(engine::run_bounded(kill, None, engine::LIMIT)
        .status
        .success());
    podman.ok(&["rm", "-f", "-t", "0", "web"]);
    assert!(podman.all_containers().is_empty());
    assert!(
        !std::path::Path::new(&netns).exists(),
        "{netns} outlived its container"
    );
    let host_links = engine::links(None);
    assert!(
        !host_links.contains(&tap) && !host_links.contains(&net.bridge),
        "links left on the host: {host_links:?}"
    );
    let state = engine::runtime_state(&podman.runtime_root);
    assert!(state.is_empty(), "runtime state left: {state:?}");
    let procs = engine::processes_using(podman.dir.path());
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");
    podman.ok(&["network", "rm", &net.name]);
}
