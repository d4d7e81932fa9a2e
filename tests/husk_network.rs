//! `husk run` networking end to end, on the QEMU backend: each test runs husk inside a
//! network namespace of its own (its bridge, nftables table and sysctls live and die there,
//! so the host's namespace is never touched and the tests run in parallel), and talks only to
//! its own guests and to "test hosts" in namespaces it made.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cli::{Husk, LIMIT};

/// A network namespace made by the test, deleted on drop.
struct Ns {
    name: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!(
            "hkt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Ns { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `bash -c script` inside the namespace, bounded by [`LIMIT`].
    fn sh(&self, script: &str) -> Output {
        self.sh_within(script, LIMIT)
    }

    fn sh_within(&self, script: &str, limit: Duration) -> Output {
        common::run_limited(
            Path::new("/usr/sbin/ip"),
            &["netns", "exec", &self.name, "bash", "-c", script],
            limit,
        )
        .0
    }

    fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "{script}: {}{}",
            common::text(&o.stdout),
            common::text(&o.stderr)
        );
        common::text(&o.stdout)
    }

    /// Waits until something in the namespace listens on TCP `port`.
    fn wait_listening(&self, port: u16) {
        common::wait_for(
            &format!("a listener on tcp/{port} in {}", self.name),
            common::SETTLE,
            || {
                let o = self.sh("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null");
                listens(&common::text(&o.stdout), port).then_some(())
            },
        )
    }

    /// A background `bash -c script` in the namespace, stdout piped.
    fn spawn(&self, script: &str) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "bash", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in netns")
    }

    /// Connects this namespace to `other` with a veth pair: `addr_here` here, `addr_there`
    /// there (both /24).
    fn link(&self, other: &Ns, addr_here: &str, addr_there: &str) {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (format!("hva{n}"), format!("hvb{n}"));
        ip(&[
            "link",
            "add",
            &a,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &other.name,
        ]);
        ip(&["-n", &self.name, "addr", "add", addr_here, "dev", &a]);
        ip(&["-n", &other.name, "addr", "add", addr_there, "dev", &b]);
        ip(&["-n", &self.name, "link", "set", &a, "up"]);
        ip(&["-n", &other.name, "link", "set", &b, "up"]);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A husk root whose commands run inside the test's "host" namespace.
struct Net {
    husk: Husk,
    host: Ns,
}

/// Whether this host can run the tests (root for namespaces, iproute2, nft); says NOT RUN
/// otherwise.
fn net_tools(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::not_run(test, "needs root (network namespaces, TAPs)", true);
        return false;
    }
    for tool in [
        "/usr/sbin/ip",
        "/usr/sbin/nft",
        "/usr/sbin/tc",
        "/usr/bin/curl",
    ] {
        if !Path::new(tool).exists() {
            common::not_run(
                test,
                &format!("{tool} missing (apt-get install iproute2 nftables curl)"),
                true,
            );
            return false;
        }
    }
    true
}

impl Net {
    fn new(test: &str) -> Option<Net> {
        if !net_tools(test) {
            return None;
        }
        let kernel = common::kernel(test)?;
        let initramfs = common::initramfs(test)?;
        let husk = Husk::with_busybox(test, kernel, initramfs)?;
        Some(Net {
            husk,
            host: Ns::new(&test[..test.len().min(6)]),
        })
    }

    /// `ip`'s arguments for `husk --root ROOT args…` inside the test's host namespace.
    fn husk_args(&self, args: &[&str]) -> Vec<String> {
        let husk = common::bin("husk");
        let mut a: Vec<String> = ["netns", "exec", &self.host.name, "/usr/bin/env"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(format!("HUSK_KERNEL={}", self.husk.kernel.display()));
        a.push(format!("HUSK_INITRAMFS={}", self.husk.initramfs.display()));
        a.push("HUSK_NETWORK=bridge".into());
        a.push(husk.to_str().expect("utf-8 path").into());
        a.push("--root".into());
        a.push(self.husk.root.path().to_str().expect("utf-8 root").into());
        a.extend(args.iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, args: &[&str]) -> Output {
        let a = self.husk_args(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        common::run_limited(Path::new("/usr/sbin/ip"), &a, LIMIT).0
    }

    /// `husk args…` in the background, its output piped; its pid is husk's (`ip netns exec`
    /// and `env` exec it).
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new("/usr/sbin/ip")
            .args(self.husk_args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start husk")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "husk {args:?} failed ({}):\n{}",
            out.status,
            common::text(&out.stderr)
        );
        common::text(&out.stdout)
    }

    /// `run -d …`: the new container's id.
    fn detached(&self, args: &[&str]) -> String {
        let mut a = vec!["run", "-d"];
        a.extend_from_slice(args);
        self.ok(&a).trim().to_string()
    }

    /// The guest address husk recorded for a running container.
    fn guest_ip(&self, id: &str) -> String {
        let s = self.husk.state(id);
        s["network"]["addresses"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no address in state of {id}: {s}"))
            .to_string()
    }

    /// Waits until a process in container `id` listens on TCP `port`.
    fn wait_guest_listening(&self, id: &str, port: u16) {
        common::wait_for(
            &format!("a listener on tcp/{port} in container {id}"),
            common::SETTLE,
            || {
                let o = self.run(&[
                    "exec",
                    id,
                    "sh",
                    "-c",
                    "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null",
                ]);
                listens(&common::text(&o.stdout), port).then_some(())
            },
        )
    }

    fn lease_count(&self) -> usize {
        let p = self.husk.root.path().join("network/husk0.leases.json");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p).expect("lease file")).expect("json");
        v["leases"].as_object().map_or(0, |m| m.len())
    }

    /// Rules tagged for container `id` in the namespace's husk table.
    fn rules_of(&self, id: &str) -> usize {
        self.host
            .sh_ok("nft -a list table ip husk")
            .lines()
            .filter(|l| l.contains(&format!("husk:{id}")))
            .count()
    }

    fn taps(&self) -> Vec<String> {
        self.host
            .sh_ok("ls /sys/class/net")
            .split_whitespace()
            .filter(|n| n.starts_with("hk"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Net {
    /// A failed test must not leave its VMs running: remove every container of the root.
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.husk.containers_dir()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if e.path().join("state.json").is_file() {
                    let _ = self.run(&["rm", "-f", &id]);
                }
            }
        }
    }
}

/// Whether the /proc/net/tcp{,6} `tables` have a socket listening on `port`.
fn listens(tables: &str, port: u16) -> bool {
    let local = format!(":{port:04X}");
    tables.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl, local_address, rem_address, st (0A: LISTEN), …
        f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
    })
}

/// A guest shell loop serving `reply` to every TCP connection on `port`.
fn server(reply: &str, port: u16) -> String {
    format!("while true; do echo {reply} | nc -l -p {port}; done")
}

/// Reads a child's whole stdout, killing it after `limit`.
fn output_of(mut c: Child, limit: Duration) -> String {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if c.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    let mut s = String::new();
    if let Some(mut o) = c.stdout.take() {
        let _ = o.read_to_string(&mut s);
    }
    s
}

#[test]
fn guest_and_host_ping_and_tcp_both_ways() {
    let Some(n) = Net::new("guest_and_host_ping_and_tcp_both_ways") else {
        return;
    };
    let id = n.detached(&["busybox", "sh", "-c", &server("from-guest", 7000)]);
    let guest = n.guest_ip(&id);
    assert!(guest.starts_with("172.31.250."), "{guest}");
    // host → guest
    n.host.sh_ok(&format!("busybox ping -c1 -W5 {guest}"));
    let got = common::poll_until(Duration::from_secs(20), || {
        let o = n.host.sh(&format!("sleep 3 | busybox nc {guest} 7000"));
        let s = common::text(&o.stdout);
        s.contains("from-guest").then_some(s)
    });
    assert!(got.is_some(), "no TCP answer from the guest");
    // guest → host: ping the gateway, then TCP to a listener in the host namespace.
    let listener = n.host.spawn("sleep 30 | busybox nc -l -p 9000");
    n.host.wait_listening(9000);
    let out = n.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "ping -c1 -W5 172.31.250.1 && echo from-the-guest | nc 172.31.250.1 9000",
    ]);
    assert!(out.contains("1 packets received"), "{out}");
    assert_eq!(
        output_of(listener, Duration::from_secs(20)).trim(),
        "from-the-guest"
    );
    n.ok(&["rm", "-f", &id]);
}

#[test]
fn two_containers_reach_each_other_over_the_bridge() {
    let Some(n) = Net::new("two_containers_reach_each_other_over_the_bridge") else {
        return;
    };
    let a = n.detached(&["busybox", "sh", "-c", &server("from-a", 7001)]);
    let a_ip = n.guest_ip(&a);
    let script = format!(
        "for i in $(seq 50); do r=$(sleep 3 | nc {a_ip} 7001) && [ -n \"$r\" ] && echo \"$r\" && exit 0; sleep 0.2; done; exit 1"
    );
    let out = n.ok(&["run", "--rm", "busybox", "sh", "-c", &script]);
    assert_eq!(out.trim(), "from-a");
    n.ok(&["rm", "-f", &a]);
    assert_eq!(n.lease_count(), 0);
}

#[test]
fn published_port_serves_httpd_to_curl_locally_and_from_another_host() {
    let test = "published_port_serves_httpd_to_curl_locally_and_from_another_host";
    let Some(n) = Net::new(test) else { return };
    let remote = Ns::new("remote");
    n.host.link(&remote, "198.51.100.1/24", "198.51.100.2/24");
    let id = n.detached(&[
        "-p",
        "18080:80",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo served-by-husk > /www/index.html && httpd -f -p 80 -h /www",
    ]);
    let ps = n.ok(&["ps"]);
    assert!(ps.contains("0.0.0.0:18080->80/tcp"), "{ps}");
    let taken = n.run(&["run", "--rm", "-p", "18080:8080", "busybox", "true"]);
    let e = common::text(&taken.stderr);
    assert!(
        !taken.status.success() && e.contains("tcp/18080 is already published by container"),
        "{e}"
    );
    let local = common::poll_until(Duration::from_secs(20), || {
        let o = n.host.sh("curl -sf -m5 http://127.0.0.1:18080/index.html");
        o.status.success().then(|| common::text(&o.stdout))
    });
    assert_eq!(local.as_deref().map(str::trim), Some("served-by-husk"));
    let from_remote = remote.sh_ok("curl -sf -m5 http://198.51.100.1:18080/index.html");
    assert_eq!(from_remote.trim(), "served-by-husk");
    n.ok(&["rm", "-f", &id]);
    assert!(!n
        .host
        .sh("curl -sf -m2 http://127.0.0.1:18080/")
        .status
        .success());
}

#[test]
fn outbound_traffic_is_masqueraded_to_a_test_host() {
    let Some(n) = Net::new("outbound_traffic_is_masqueraded_to_a_test_host") else {
        return;
    };
    // The test host knows no route to the containers' subnet: only NAT lets it answer.
    let remote = Ns::new("nathost");
    n.host.link(&remote, "198.51.100.1/24", "198.51.100.2/24");
    let routes = remote.sh_ok("ip route");
    assert!(
        !routes.contains("172.31.250") && !routes.contains("default"),
        "{routes}"
    );
    let listener = remote.spawn("sleep 60 | busybox nc -l -p 9100");
    remote.wait_listening(9100);
    n.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "ping -c1 -W5 198.51.100.2 && echo through-nat | nc 198.51.100.2 9100",
    ]);
    assert_eq!(
        output_of(listener, Duration::from_secs(20)).trim(),
        "through-nat"
    );
}

/// `route_localnet` (for published ports on 127.0.0.1) must not open the host's loopback
/// to guests: a guest root that routes 127.0.0.1 at its gateway reaches nothing. (Without
/// the guard rule, measured: the same steps connect to the host's 127.0.0.1 listener.)
#[test]
fn a_guest_cannot_reach_host_loopback_services() {
    let Some(n) = Net::new("a_guest_cannot_reach_host_loopback_services") else {
        return;
    };
    let listener = n.host.spawn(
        "python3 -c \"import socket; s=socket.socket(); \
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
         s.bind(('127.0.0.1', 9300)); s.listen(); s.settimeout(120); \
         print('listening', flush=True); c, a = s.accept(); print('REACHED', a)\"",
    );
    n.host.wait_listening(9300);
    let id = n.detached(&["busybox", "sleep", "600"]);
    let out = n.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet; \
         echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet; ip addr flush dev lo; \
         ip route add 127.0.0.1/32 via 172.31.250.1 dev eth0; ip route get 127.0.0.1; \
         echo x | timeout 5 nc 127.0.0.1 9300; true",
    ]);
    assert!(out.contains("127.0.0.1 via 172.31.250.1 dev eth0"), "{out}");
    let heard = output_of(listener, Duration::from_secs(3));
    assert!(heard.contains("listening"), "{heard}");
    assert!(
        !heard.contains("REACHED"),
        "a guest reached the host's loopback: {heard}"
    );
    n.ok(&["rm", "-f", &id]);
}

#[test]
fn a_gigabyte_streams_through_tcp_intact() {
    let Some(n) = Net::new("a_gigabyte_streams_through_tcp_intact") else {
        return;
    };
    let id = n.detached(&["busybox", "sh", "-c", "sleep 900 | nc -l -p 7002 | md5sum"]);
    let guest = n.guest_ip(&id);
    let sum_file = n.husk.root.path().join("sent.md5");
    let fifo = n.husk.root.path().join("sent.fifo");
    n.wait_guest_listening(&id, 7002);
    // md5sum runs as a job of the script, so `wait` knows when the sum is written.
    let sent = n.host.sh_within(
        &format!(
            "mkfifo {p}; md5sum < {p} > {f} & \
             head -c 1073741824 /dev/urandom | tee {p} | busybox nc {guest} 7002; wait; cat {f}",
            p = fifo.display(),
            f = sum_file.display()
        ),
        Duration::from_secs(600),
    );
    assert!(sent.status.success(), "{}", common::text(&sent.stderr));
    let sent = common::text(&sent.stdout);
    let want = sent
        .split_whitespace()
        .next()
        .expect("sent md5")
        .to_string();
    let got = common::poll_until(Duration::from_secs(300), || {
        let logs = n.ok(&["logs", &id]);
        logs.split_whitespace().next().map(str::to_string)
    })
    .expect("the guest printed no checksum");
    assert_eq!(got, want, "1 GiB arrived altered");
    n.ok(&["rm", "-f", &id]);
}

#[test]
fn everything_is_released_on_rm_and_after_kill_9() {
    let Some(n) = Net::new("everything_is_released_on_rm_and_after_kill_9") else {
        return;
    };
    let id = n.detached(&["-p", "18081:80", "busybox", "sleep", "600"]);
    assert_eq!(n.taps().len(), 1);
    assert_eq!(n.lease_count(), 1);
    assert_eq!(n.rules_of(&id), 2, "prerouting + output DNAT");
    n.ok(&["rm", "-f", &id]);
    assert!(n.taps().is_empty(), "{:?}", n.taps());
    assert_eq!(n.lease_count(), 0);
    assert_eq!(n.rules_of(&id), 0);

    // kill -9 of the monitor and the VMM: the next command sweeps.
    let id = n.detached(&["-p", "18082:80", "busybox", "sleep", "600"]);
    let s = n.husk.state(&id);
    for who in ["monitor", "pid"] {
        let pid = s[who]["pid"].as_i64().expect("pid") as i32;
        // SAFETY: kill(2) on a pid from the container's state.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        common::poll_until(Duration::from_secs(10), || n
            .taps()
            .is_empty()
            .then_some(()))
        .is_some(),
        "the TAP outlived its VMM"
    );
    assert_eq!(n.lease_count(), 1, "nothing has swept yet");
    // What `ps` says on stderr (its warnings) goes with a failure.
    let ps = n.run(&["ps", "-a"]);
    let said = common::text(&ps.stderr);
    assert!(ps.status.success(), "{said}");
    assert_eq!(
        n.lease_count(),
        0,
        "ps swept the dead container's lease; it said: {said}"
    );
    assert_eq!(n.rules_of(&id), 0);
    assert!(n.husk.state(&id)["network"].is_null());
    n.ok(&["rm", "-f", &id]);
}

#[path = "husk_network/faults.rs"]
mod faults;

#[test]
fn host_and_container_network_modes_are_refused_clearly() {
    let Some(n) = Net::new("host_and_container_network_modes_are_refused_clearly") else {
        return;
    };
    for mode in ["host", "container:web"] {
        let o = n.run(&["run", "--rm", "--network", mode, "busybox", "true"]);
        assert_eq!(o.status.code(), Some(125));
        let e = common::text(&o.stderr);
        assert!(e.contains("own kernel and network stack"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let o = n.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-p",
        "1:2",
        "busybox",
        "true",
    ]);
    assert!(common::text(&o.stderr).contains("needs a bridge network"));
    // --network none: only lo, which is up.
    let out = n.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net; ping -c1 -W2 127.0.0.1 >/dev/null && echo lo-ok",
    ]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo", "lo-ok"]);
}

/// The engine path: a namespace holding a veth (its peer in an "engine bridge" namespace)
/// is handed to `husk run --network ns:PATH`, which attaches through
/// `husk::network::netns`; the peer and the guest then talk as if the guest were the veth.
#[test]
fn engine_netns_veth_is_mirrored_to_the_guest() {
    let test = "engine_netns_veth_is_mirrored_to_the_guest";
    let Some(n) = Net::new(test) else { return };
    let engine = Ns::new("eng");
    let peer = Ns::new("peer");
    engine.link(&peer, "10.89.0.5/24", "10.89.0.1/24");
    engine.sh_ok("ip route add default via 10.89.0.1");
    // IPv6 too: the guest must take the veth's global v6 address as well.
    engine.sh_ok("ip addr add fd89::5/64 dev $(ls /sys/class/net | grep hva) nodad");
    peer.sh_ok("ip addr add fd89::1/64 dev $(ls /sys/class/net | grep hvb) nodad");
    let veth_mac = engine.sh_ok("cat /sys/class/net/hva*/address");
    let ns = format!("ns:{}", engine.path().display());
    let id = n.detached(&[
        "--network",
        &ns,
        "busybox",
        "sh",
        "-c",
        &format!(
            "cat /sys/class/net/eth0/address; ip route; {}",
            server("from-engine-guest", 7003)
        ),
    ]);
    assert_eq!(n.guest_ip(&id), "10.89.0.5");
    peer.sh_ok("busybox ping -c1 -W5 10.89.0.5");
    peer.sh_ok("busybox ping -6 -c1 -W5 fd89::5");
    let got = common::poll_until(Duration::from_secs(20), || {
        let o = peer.sh("sleep 3 | busybox nc 10.89.0.5 7003");
        let s = common::text(&o.stdout);
        s.contains("from-engine-guest").then_some(s)
    });
    assert!(got.is_some(), "no TCP answer through the veth");
    let listener = peer.spawn("sleep 30 | busybox nc -l -p 9200");
    peer.wait_listening(9200);
    n.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo to-the-peer | nc 10.89.0.1 9200",
    ]);
    assert_eq!(
        output_of(listener, Duration::from_secs(20)).trim(),
        "to-the-peer"
    );
    let logs = n.ok(&["logs", &id]);
    assert!(
        logs.starts_with(veth_mac.trim()),
        "guest took the veth's MAC: {logs}"
    );
    assert!(logs.contains("default via 10.89.0.1"), "{logs}");
    n.ok(&["rm", "-f", &id]);
    let left = engine.sh_ok("tc qdisc show; ls /sys/class/net");
    assert!(!left.contains("ingress") && !left.contains("hk"), "{left}");
}

/// the bridge network and `-p`, again on both backends of a KVM that boots stock Linux: husk-vmm and QEMU
/// `-accel kvm` (on this project's PVM hosts: inside the nested-KVM rig).
const ON_KVM_BACKENDS: &[&str] = &[
    "published_port_serves_httpd_to_curl_locally_and_from_another_host",
    "guest_and_host_ping_and_tcp_both_ways",
];

crate::on_kvm_backends! {
    husk_network_on_husk_vmm => ON_KVM_BACKENDS,
    husk_network_on_qemu_kvm => ON_KVM_BACKENDS,
}
