//! dockerd (Debian's docker.io) drives the OCI runtime under test, registered with
//! `--add-runtime husk=…` (husk-runtime by default, any runc-compatible runtime through
//! `HUSK_ENGINE_RUNTIME`): `docker run --runtime husk` output and exit code, `-i`, `-it`, the
//! kernel the container sees, `-d` + `logs` + `stop` + `rm`, `exec`, `-v` volumes, and `-p`
//! on docker's bridge network; stopping the daemon leaves nothing. Each test starts a dockerd
//! of its own (tests/common/engine/docker.rs, scripts/engine-setup.sh dockerd-start).

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use common::engine::docker::{Docker, RUNTIME_NAME};
use common::engine::{self, Runtime};
use common::text;

/// The runtime and a private dockerd, or None when this host cannot run the test (NOT RUN).
fn setup(test: &str) -> Option<(Runtime, Docker)> {
    let rt = engine::runtime(test)?;
    let docker = Docker::new(test, &rt)?;
    Some((rt, docker))
}

/// `docker run --runtime husk` + `rest`.
fn run_args<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    Docker::run_args(rest)
}

#[test]
fn docker_run_output_exit_code_stdin_and_kernel() {
    let test = "docker_run_output_exit_code_stdin_and_kernel";
    let Some((rt, docker)) = setup(test) else {
        return;
    };
    let out = docker.run(&run_args(&[
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 3",
    ]));
    assert_eq!(
        out.status.code(),
        Some(3),
        "the container's exit status is docker's: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "to-stdout\n");
    assert!(
        text(&out.stderr).contains("to-stderr"),
        "stderr: {}",
        text(&out.stderr)
    );

    let input: Vec<u8> = (0..2000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let out = docker.run_with_input(
        &run_args(&["--rm", "-i", "busybox", "sh", "-c", "wc -l; exit 0"]),
        &input,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "2000",
        "stdin reached the container whole"
    );

    let expected = if rt.is_husk {
        match engine::husk_kernel_release(test) {
            Some(r) => r,
            None => return,
        }
    } else {
        engine::host_kernel_release()
    };
    let out = docker.ok(&run_args(&["--rm", "busybox", "uname", "-r"]));
    assert_eq!(out.trim(), expected);
    if rt.is_husk {
        assert_ne!(
            out.trim(),
            engine::host_kernel_release(),
            "the container must run on the guest kernel, not the host's"
        );
    }
    assert!(
        docker.all_containers().is_empty(),
        "--rm left containers: {:?}",
        docker.all_containers()
    );
    let state = engine::runtime_state(&docker.runtime_root());
    assert!(state.is_empty(), "runtime state left: {state:?}");
}

#[test]
fn docker_run_it_is_a_terminal() {
    let test = "docker_run_it_is_a_terminal";
    let Some((_rt, docker)) = setup(test) else {
        return;
    };
    // `docker run -it` wants a terminal on its own stdin: script(1) gives it one.
    if !engine::tool_present(test, "script") {
        return;
    }
    let mut line = vec![
        "docker".to_string(),
        "--host".into(),
        format!("unix://{}", docker.socket.display()),
    ];
    line.extend(
        run_args(&[
            "--rm",
            "-it",
            "busybox",
            "sh",
            "-c",
            "tty; [ -t 0 ] && [ -t 1 ] && echo both-tty; stty size",
        ])
        .iter()
        .map(|a| a.to_string()),
    );
    let quoted: Vec<String> = line
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("DOCKER_CONFIG", docker.dir.path().join("docker/config"));
    let out = engine::run_bounded(c, None, engine::LIMIT);
    let got = text(&out.stdout);
    assert!(out.status.success(), "{got}\n{}", text(&out.stderr));
    // A terminal's output discipline turns \n into \r\n: the output went through a pty.
    assert!(
        got.contains("/dev/pts/") && got.contains("both-tty\r\n"),
        "not a terminal: {got:?}"
    );

    let out = docker.run(&run_args(&["--rm", "busybox", "tty"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "tty(1) fails without a terminal"
    );
    assert_eq!(text(&out.stdout), "not a tty\n");
}

#[test]
fn docker_detached_logs_stop_rm() {
    let Some((_rt, docker)) = setup("docker_detached_logs_stop_rm") else {
        return;
    };
    let name = "husk-detached";
    let id = docker.ok(&run_args(&[
        "-d",
        "--name",
        name,
        "busybox",
        "sh",
        "-c",
        "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done",
    ]));
    assert_eq!(id.trim().len(), 64, "docker run -d prints the id: {id:?}");
    docker.wait_for_log(name, "started");
    assert_eq!(docker.inspect(name, "{{.State.Status}}"), "running");
    assert_eq!(
        docker.inspect(name, "{{.HostConfig.Runtime}}"),
        RUNTIME_NAME
    );

    // The container traps SIGTERM: a clean exit 0 proves the signal reached it.
    docker.ok(&["stop", "-t", "60", name]);
    assert_eq!(
        docker.inspect(name, "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 0"
    );
    assert_eq!(docker.ok(&["logs", name]), "started\ngot-term\n");
    docker.ok(&["rm", name]);
    assert!(docker.all_containers().is_empty());

    // A container that ignores SIGTERM is killed after the timeout: 128 + SIGKILL.
    let name = "husk-stubborn";
    docker.ok(&run_args(&[
        "-d",
        "--name",
        name,
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
    ]));
    docker.wait_for_log(name, "ready");
    docker.ok(&["stop", "-t", "1", name]);
    assert_eq!(docker.inspect(name, "{{.State.ExitCode}}"), "137");
    docker.ok(&["rm", name]);
    let state = engine::runtime_state(&docker.runtime_root());
    assert!(state.is_empty(), "runtime state left: {state:?}");
}

#[test]
fn docker_exec_into_running_container() {
    let Some((_rt, docker)) = setup("docker_exec_into_running_container") else {
        return;
    };
    let name = "husk-exec";
    docker.ok(&run_args(&[
        "-d",
        "--name",
        name,
        "busybox",
        "sh",
        "-c",
        "echo $$ > /tmp/main-pid; echo up; while :; do sleep 0.1; done",
    ]));
    docker.wait_for_log(name, "up");

    // The exec'd process sees the container's own files, and its exit status is exec's.
    let out = docker.run(&["exec", name, "sh", "-c", "cat /tmp/main-pid; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "1\n",
        "the main process is the container's pid 1"
    );

    let out = docker.run_with_input(&["exec", "-i", name, "cat"], b"exec stdin\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec stdin\n");

    let out = docker.ok(&["exec", "-t", name, "tty"]);
    assert!(
        out.contains("/dev/pts/") && out.ends_with("\r\n"),
        "{out:?}"
    );

    let out = docker.ok(&[
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
    assert_eq!(docker.inspect(name, "{{.State.Status}}"), "running");
    docker.ok(&["rm", "-f", name]);
    assert!(docker.all_containers().is_empty());
}

#[test]
fn docker_volumes() {
    let Some((_rt, docker)) = setup("docker_volumes") else {
        return;
    };
    let vol = tempfile::tempdir().expect("volume dir");
    std::fs::write(vol.path().join("from-host"), "host data\n").expect("write");
    let rw = format!("{}:/data", vol.path().display());
    let out = docker.ok(&run_args(&[
        "--rm",
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; echo guest data > /data/from-guest",
    ]));
    assert_eq!(out, "host data\n");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("from-guest")).expect("the container's file"),
        "guest data\n"
    );

    let ro = format!("{}:/data:ro", vol.path().display());
    let out = docker.run(&run_args(&[
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; echo x > /data/denied",
    ]));
    assert_ne!(
        out.status.code(),
        Some(0),
        "a :ro volume must refuse writes"
    );
    assert_eq!(text(&out.stdout), "host data\n");
    assert!(!vol.path().join("denied").exists());
}

const PAGE: &str = "served-by-busybox-httpd";

/// docker's default bridge network (the instance's own bridge and /24) with `-p`: busybox
/// httpd in a container serves a file to curl on the host through docker-proxy; another
/// container reaches it by IP over the bridge. Then `rm -f`, and stopping the daemon leaves
/// no process, mount, bridge or runtime state behind.
#[test]
fn docker_publish_and_bridge_and_a_clean_stop() {
    let test = "docker_publish_and_bridge_and_a_clean_stop";
    let Some((rt, docker)) = setup(test) else {
        return;
    };
    if !engine::tool_present(test, "curl") {
        return;
    }
    let www = docker.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), format!("{PAGE}\n")).expect("index.html");
    let port = engine::free_port().to_string();
    let publish = format!("127.0.0.1:{port}:80");
    let volume = format!("{}:/www:ro", www.display());
    docker.ok(&run_args(&[
        "-d", "--name", "web", "-p", &publish, "-v", &volume, "busybox", "httpd", "-f", "-p", "80",
        "-h", "/www",
    ]));
    let body = engine::curl_until_up(&format!("http://127.0.0.1:{port}/index.html"));
    assert_eq!(body.trim(), PAGE);

    let (bridge, gateway) = docker.bridge();
    let web_ip = docker.inspect("web", "{{.NetworkSettings.IPAddress}}");
    let prefix = gateway.trim_end_matches('1');
    assert!(
        web_ip.starts_with(prefix),
        "web's address {web_ip:?} is not on {bridge} ({gateway})"
    );
    if rt.is_husk {
        // The container's veth is in the VM holder's own namespace: the host's has none
        // of the container's addresses.
        let mut ip = std::process::Command::new("ip");
        ip.args(["-4", "-o", "addr", "show"]);
        let host = text(&engine::run_bounded(ip, None, engine::LIMIT).stdout);
        assert!(
            !host.contains(&format!("inet {web_ip}/")),
            "the container's address is on the host: {host}"
        );
    }
    // Container → container by IP over the bridge.
    let out = docker.ok(&run_args(&[
        "--rm",
        "busybox",
        "sh",
        "-c",
        &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {web_ip} 80; echo"),
    ]));
    assert!(out.contains(PAGE) && out.contains("200 OK"), "reply: {out}");

    docker.ok(&["rm", "-f", "web"]);
    assert!(docker.all_containers().is_empty());
    let state = engine::runtime_state(&docker.runtime_root());
    assert!(state.is_empty(), "runtime state left: {state:?}");

    // One more container left running for the daemon's stop to end.
    docker.ok(&run_args(&[
        "-d",
        "--name",
        "left-running",
        "busybox",
        "sh",
        "-c",
        "echo up; while :; do sleep 0.1; done",
    ]));
    docker.wait_for_log("left-running", "up");
    docker.stop_daemon();
    let dir = docker.dir.path();
    let procs = engine::processes_using(dir);
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");
    let dir_str = dir.to_str().expect("utf-8");
    let mounts: Vec<_> = engine::mounts()
        .into_iter()
        .filter(|(point, source)| point.contains(dir_str) || source.contains(dir_str))
        .collect();
    assert!(mounts.is_empty(), "mounts left behind: {mounts:#?}");
    let links = engine::links(None);
    assert!(
        !links.contains(&bridge),
        "{bridge} outlived the daemon: {links:?}"
    );
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-m", "3", &format!("http://127.0.0.1:{port}/")]);
    assert!(
        !engine::run_bounded(c, None, engine::LIMIT).status.success(),
        "port {port} still answers"
    );
}
