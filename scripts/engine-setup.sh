#!/usr/bin/env bash
# Private podman and containerd instances for husk's engine tests and benchmarks, so they never
# touch the user's own podman store or containerd. Idempotent: running a step again reuses what
# is there.
#
#   scripts/engine-setup.sh podman DIR [RUNTIME]
#       DIR/containers.conf (the ulimits these hosts need, cgroupfs when systemd is not PID 1,
#       file events, a `husk = [RUNTIME]` runtimes entry), DIR/storage.conf (graphroot and
#       runroot under DIR), DIR/podman.env (exports CONTAINERS_CONF and
#       CONTAINERS_STORAGE_CONF), busybox loaded. Prints DIR/podman.env.
#   scripts/engine-setup.sh containerd-start DIR
#       containerd with its own root, state, config and socket under DIR/containerd, busybox
#       imported into namespace "husk". Prints the socket path.
#   scripts/engine-setup.sh containerd-stop DIR
#       stops that containerd (and any shims it left), unmounts what it left under DIR.
#   scripts/engine-setup.sh cri-start DIR REGISTRY SANDBOX_IMAGE [SHIM_DIR]
#       containerd WITH its CRI plugin (pods in namespace k8s.io), root, state, config and
#       socket under DIR/containerd as above; images pulled from REGISTRY (host:port) over
#       plain HTTP (DIR/certs.d); SANDBOX_IMAGE the pods' pause image; pod networks from
#       Debian's CNI plugins (DIR/cni/net.d: bridge + host-local + loopback, a bridge hcri-*
#       of its own on a free 10.77.X.0/24, addresses kept in DIR/cni/ipam, netns mounted under
#       DIR); runtime handlers `runc` (io.containerd.runc.v2) and `husk`
#       (io.containerd.husk.v2: containerd finds containerd-shim-husk-v2 on its PATH, where
#       SHIM_DIR goes first). Prints the socket path.
#   scripts/engine-setup.sh cri-stop DIR
#       kills and deletes what its pods left (through their shims), stops containerd and its
#       shims, kills what is left in the pods' cgroup parent (/husk-cri-*), unmounts
#       everything under DIR (snapshots, netns), deletes the bridge and CNI's cached results.
#   scripts/engine-setup.sh dockerd-start DIR RUNTIME
#       dockerd with its own data root, exec root (its managed containerd lives there), pid
#       file, socket DIR/docker/docker.sock and a daemon.json of its own, `--add-runtime
#       husk=RUNTIME`, busybox loaded. Networking touches no firewall: a bridge of its own
#       (hkd<hash of DIR>, a free 10.91.X.0/24) passed as --bridge, --iptables=false
#       --ip-masq=false --ip-forward=false, and `-p` through docker-proxy (the userland proxy).
#       Prints the socket path.
#   scripts/engine-setup.sh dockerd-stop DIR
#       stops that dockerd (it stops its containers and its containerd), ends whatever of it is
#       left (shims, docker-proxy), unmounts what it left under DIR, deletes its bridge.
#   scripts/engine-setup.sh launcher DIR RUNTIME
#       DIR/<RUNTIME's name>: a tiny script that runs RUNTIME with --root DIR/root and the
#       HUSK_KERNEL & co. of this environment (conmon does not pass the environment on), named
#       like the runtime (conmon picks JSON logging by name). Prints its path.
#   scripts/engine-setup.sh clean DIR
#       containerd-stop (cri-stop for a cri-start DIR), dockerd-stop, unmounts everything
#       under DIR (podman's overlay driver keeps its store bind-mounted) and removes DIR.
#
# RUNTIME defaults to target/release/husk-runtime. The busybox archive comes from
# scripts/make-busybox-image.sh (HUSK_BUSYBOX_ARCHIVE overrides it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

usage() { die "usage: $0 podman DIR [RUNTIME] | launcher DIR RUNTIME | containerd-start DIR | containerd-stop DIR | cri-start DIR REGISTRY SANDBOX_IMAGE [SHIM_DIR] | cri-stop DIR | dockerd-start DIR RUNTIME | dockerd-stop DIR | clean DIR"; }
[ $# -ge 2 ] || usage
step=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
# `clean` removes DIR: only one that a setup step marked as its own.
marker="$dir/.husk-engine-setup"
if [ "$step" = clean ]; then
    [ -f "$marker" ] || die "$dir was not set up by $0; not removing it"
else
    [ "$dir" != / ] || die "DIR must not be /"
    : >"$marker"
fi

busybox_archive() {
    if [ -n "${HUSK_BUSYBOX_ARCHIVE:-}" ]; then
        echo "$HUSK_BUSYBOX_ARCHIVE"
    else
        "$here/make-busybox-image.sh" | tail -n1
    fi
}

# The hard RLIMIT_NOFILE of these sandboxed machines is far below podman's default of
# 1048576 (`setrlimit RLIMIT_NOFILE: Operation not permitted` from the runtime), so every
# container gets the limits of ../shared/podman/containers.conf, capped at this host's.
nofile_limit() {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -gt 20000 ]; then hard=20000; fi
    echo "$hard"
}

podman_setup() {
    local runtime=${1:-$here/../target/release/husk-runtime}
    command -v podman >/dev/null || die "podman is not installed (scripts/test.sh installs it)"
    [ -x /usr/lib/podman/netavark ] || command -v netavark >/dev/null \
        || die "netavark (podman's network backend) is not installed (scripts/test.sh installs it)"
    runtime=$(readlink -m "$runtime")
    # Without systemd as init there is no systemd cgroup manager (and no journald).
    local cgroup_manager=cgroupfs
    [ -d /run/systemd/system ] && cgroup_manager=systemd
    local nofile
    nofile=$(nofile_limit)
    mkdir -p "$dir/graph" "$dir/run" "$dir/tmp" "$dir/networks"
    cat >"$dir/containers.conf.tmp" <<EOF
# Written by scripts/engine-setup.sh for husk's engine tests.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
netns = "none"

[engine]
cgroup_manager = "$cgroup_manager"
events_logger = "file"
events_logfile_path = "$dir/events.log"
tmp_dir = "$dir/tmp"
# conmon passes --log-format=json --log FILE only to runtimes named here.
runtime_supports_json = ["crun", "runc", "kata", "runsc", "youki", "krun", "husk", "husk-runtime"]

[engine.runtimes]
husk = ["$runtime"]

[network]
# Explicit: podman 4.3 would otherwise pick CNI where netavark is missing and fail later.
network_backend = "netavark"
network_config_dir = "$dir/networks"
EOF
    mv "$dir/containers.conf.tmp" "$dir/containers.conf"
    cat >"$dir/storage.conf.tmp" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/graph"
runroot = "$dir/run"
EOF
    mv "$dir/storage.conf.tmp" "$dir/storage.conf"
    cat >"$dir/podman.env" <<EOF
export CONTAINERS_CONF="$dir/containers.conf"
export CONTAINERS_STORAGE_CONF="$dir/storage.conf"
EOF
    export CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"
    if ! podman image exists busybox:latest; then
        podman load -q -i "$(busybox_archive)" >&2 || die "podman load of busybox failed"
    fi
    echo "$dir/podman.env"
}

launcher() {
    local r l v
    r=$(readlink -f "$1") || die "$1: not found"
    [ -x "$r" ] || die "$r is not executable"
    l="$dir/$(basename "$1")"
    {
        echo '#!/bin/sh'
        for v in HUSK_KERNEL HUSK_BZIMAGE HUSK_INITRAMFS HUSK_VIRTIOFSD HUSK_AGENT_MUX_BIN HUSK_CACHE \
            HUSK_NETWORK_BRIDGE HUSK_NETWORK_SUBNET HUSK_SOAK_MARK HUSK_JAIL_ID_BASE TMPDIR; do
            [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
        done
        printf 'exec %q --root %q "$@"\n' "$r" "$dir/root"
    } >"$l"
    chmod +x "$l"
    echo "$l"
}

ctr_address() { echo "$dir/containerd/containerd.sock"; }

containerd_running() {
    local pid
    [ -f "$dir/containerd/containerd.pid" ] || return 1
    pid=$(cat "$dir/containerd/containerd.pid")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# The head of config.toml both containerd steps write: root, state, socket, and the plugins
# these hosts cannot or need not run. $1: more plugins to disable (a quoted, comma-ended list).
containerd_config_head() {
    local c="$dir/containerd" sock
    sock=$(ctr_address)
    cat <<EOF
# Written by scripts/engine-setup.sh for husk's engine tests.
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = [$1"io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$c/debug.sock"
[metrics]
  address = ""
EOF
}

# Starts containerd on DIR/containerd/config.toml and waits until it answers. Environment
# assignments given as arguments (PATH=…, HUSK_ENGINE_TEST_DIR=…) are the daemon's only:
# containerd passes its environment on to the shims it starts.
containerd_launch() {
    local c="$dir/containerd" sock i
    sock=$(ctr_address)
    rm -f "$sock" "$sock.ttrpc" "$c/debug.sock"
    # setsid: the daemon must not die with the shell (or test) that started it.
    env "$@" setsid containerd --config "$c/config.toml" >"$c/containerd.log" 2>&1 </dev/null &
    echo $! >"$c/containerd.pid"
    for i in $(seq 1 150); do
        ctr --address "$sock" version >/dev/null 2>&1 && return 0
        containerd_running || die "containerd exited: $(tail -n5 "$c/containerd.log")"
        sleep 0.1
    done
    die "containerd did not answer on $sock within 15 s: $(tail -n5 "$c/containerd.log")"
}

# The CRI instance's names, all from DIR's (unique) name: the CNI network and its bridge
# (IFNAMSIZ: 15 bytes at most) and the pods' cgroup parent.
cri_names() {
    local tag
    tag=$(basename "$dir" | tr -cd 'A-Za-z0-9' | tail -c 6)
    cri_net="hcri-$tag"
    cri_cgroup="/husk-cri-$tag"
}

# A 10.77.X.0/24 that no route of the host and no other CRI instance's network config uses,
# starting from a number of DIR's name so that instances set up at once differ.
cri_free_subnet() {
    local routes taken seed i x
    routes=$(ip -4 route show)
    taken=$(cat /tmp/husk-cri*/cni/net.d/*.conflist 2>/dev/null || true)
    seed=$(( $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 250 ))
    for i in $(seq 0 249); do
        x=$(( 1 + (seed + i) % 250 ))
        case "$routes$taken" in *"10.77.$x."*) continue ;; esac
        echo "10.77.$x"
        return 0
    done
    die "no free 10.77.X.0/24 for the CRI network"
}

cri_start() {
    local registry=$1 sandbox_image=$2 shim_dir=${3:-}
    command -v containerd >/dev/null || die "containerd is not installed (scripts/test.sh installs it)"
    [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
        || die "the CNI plugins are missing from /usr/lib/cni (Debian's containernetworking-plugins)"
    local c="$dir/containerd" sock net
    sock=$(ctr_address)
    [ ${#sock} -lt 100 ] || die "containerd socket path too long: $sock (use a shorter DIR)"
    cri_names
    mkdir -p "$c/root" "$c/state" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/certs.d/$registry"
    if containerd_running; then
        echo "$sock"
        return 0
    fi
    net=$(cri_free_subnet)
    # Plain HTTP to the test registry (containerd 1.6's hosts.toml).
    cat >"$dir/certs.d/$registry/hosts.toml" <<EOF
server = "http://$registry"
[host."http://$registry"]
  capabilities = ["pull", "resolve"]
EOF
    # No ipMasq and no portmap: the pods need no way out, and this leaves no iptables rules.
    cat >"$dir/cni/net.d/10-husk-cri.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$cri_net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$cri_net",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$net.0/24", "gateway": "$net.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$dir/cni/ipam"
      }
    },
    {"type": "loopback"}
  ]
}
EOF
    {
        containerd_config_head ""
        cat <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$sandbox_image"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$dir/runc-root"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
EOF
    } >"$c/config.toml"
    local path=$PATH
    if [ -n "$shim_dir" ]; then
        [ -d "$shim_dir" ] || die "SHIM_DIR $shim_dir is not a directory"
        path="$(cd "$shim_dir" && pwd):$PATH"
    fi
    # The marker reaches the shims and what they start: the leak checks find them by it.
    containerd_launch PATH="$path" HUSK_ENGINE_TEST_DIR="$dir"
    echo "$sock"
}

# Every process in the pods' cgroup parent (any hierarchy), killed; then the cgroups removed,
# deepest first.
cri_cgroups_remove() {
    local h d p
    for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        d="$h${cri_cgroup#/}"
        [ -d "$d" ] || continue
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do
            kill -9 "$p" 2>/dev/null || true
        done
    done
    for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        d="$h${cri_cgroup#/}"
        [ -d "$d" ] || continue
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# Processes whose environment has this instance's marker (containerd passed it on).
cri_marked_pids() {
    { grep -lzxF "HUSK_ENGINE_TEST_DIR=$dir" /proc/[0-9]*/environ 2>/dev/null || true; } |
        sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' | grep -vx "$$" || true
}

cri_stop() {
    local c="$dir/containerd" sock id
    sock=$(ctr_address)
    cri_names
    if containerd_running; then
        # What a failed test left: each task killed and deleted through its shim (a VM
        # runtime's shim takes its VM down with it), then the containers.
        for id in $(ctr --address "$sock" -n k8s.io task ls -q 2>/dev/null); do
            timeout 60 ctr --address "$sock" -n k8s.io task kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
            timeout 60 ctr --address "$sock" -n k8s.io task rm -f "$id" >/dev/null 2>&1 || true
        done
        for id in $(ctr --address "$sock" -n k8s.io container ls -q 2>/dev/null); do
            timeout 60 ctr --address "$sock" -n k8s.io container rm "$id" >/dev/null 2>&1 || true
        done
    fi
    containerd_stop
    cri_cgroups_remove
    # The runc shim ignores SIGTERM: whatever still carries this instance's marker (the
    # shims, what they started) gets SIGKILL after a grace period.
    local i
    for i in $(seq 1 50); do
        [ -z "$(cri_marked_pids)" ] && break
        sleep 0.1
    done
    # The husk shim's pod directories those name (its VMM and helpers'): containerd, gone,
    # cannot run the shim's own `delete` for them, so their mounts and files go here.
    local pod_dirs
    pod_dirs=$(for i in $(cri_marked_pids); do tr '\0' '\n' <"/proc/$i/cmdline" 2>/dev/null; done |
        grep -oE '/run/husk-shim/[A-Za-z0-9_-][A-Za-z0-9_.-]*' | sort -u || true)
    for i in $(cri_marked_pids); do kill -9 "$i" 2>/dev/null || true; done
    for i in $pod_dirs; do
        awk -v d="$i/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$i"
    done
    # A killed shim leaves its socket in /run/containerd/s (named in its bundle's address).
    local a
    for a in "$c"/state/io.containerd.runtime.v2.task/*/*/address; do
        [ -f "$a" ] || continue
        a=$(cat "$a")
        case "$a" in unix:///run/containerd/s/*) rm -f "${a#unix://}" ;; esac
    done
    unmount_under
    # The netns are bind mounts under DIR (netns_mounts_under_state_dir): unmount_under took
    # them, and their veths with them. What CNI left outside DIR: the bridge, cached results.
    if [ -e "/sys/class/net/$cri_net" ]; then ip link del "$cri_net" 2>/dev/null || true; fi
    rm -f /var/lib/cni/results/"$cri_net"-* 2>/dev/null || true
    # containerd's own loopback network caches results as cni-loopback-<pod>-lo, naming the
    # pod's netns (under DIR).
    { grep -l -F "$dir/" /var/lib/cni/results/cni-loopback-* 2>/dev/null || true; } |
        while read -r f; do rm -f "$f"; done
}

containerd_start() {
    command -v containerd >/dev/null || die "containerd is not installed (scripts/test.sh installs it)"
    local c="$dir/containerd" sock
    sock=$(ctr_address)
    # A unix socket path is limited to 108 bytes.
    [ ${#sock} -lt 100 ] || die "containerd socket path too long: $sock (use a shorter DIR)"
    mkdir -p "$c/root" "$c/state"
    if ! containerd_running; then
        containerd_config_head '"io.containerd.grpc.v1.cri", ' >"$c/config.toml"
        containerd_launch
    fi
    if ! ctr --address "$sock" -n husk image ls -q | grep -qx docker.io/library/busybox:latest; then
        ctr --address "$sock" -n husk image import "$(busybox_archive)" >&2 \
            || die "ctr image import of busybox failed"
    fi
    echo "$sock"
}

containerd_stop() {
    local c="$dir/containerd" pid i
    if containerd_running; then
        pid=$(cat "$c/containerd.pid")
        kill "$pid"
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$c/containerd.pid"
    # Shims outlive containerd by design; end the ones this instance started (their pids are
    # in its state dir).
    local f shim
    for f in "$c"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
        [ -f "$f" ] || continue
        shim=$(cat "$f")
        if [ -n "$shim" ] && grep -q containerd-shim "/proc/$shim/cmdline" 2>/dev/null; then
            kill "$shim" 2>/dev/null || true
        fi
    done
    unmount_under
}

docker_dir() { echo "$dir/docker"; }

dockerd_running() {
    local pid d
    d=$(docker_dir)
    [ -f "$d/dockerd.pid" ] || return 1
    pid=$(cat "$d/dockerd.pid")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# The docker CLI against this instance only (its own config dir: not ~/.docker).
docker_cli() { DOCKER_CONFIG="$(docker_dir)/config" docker --host "unix://$(docker_dir)/docker.sock" "$@"; }

# A bridge of this instance's own, named after DIR, on a /24 of 10.91.0.0/16 that no route on
# the host uses yet (chosen under a lock: dockerds of tests running beside each other).
docker_bridge() {
    local d name seed i x
    d=$(docker_dir)
    if [ -f "$d/bridge" ]; then
        read -r name _ <"$d/bridge"
        ip link show "$name" >/dev/null 2>&1 && { echo "$name"; return 0; }
    fi
    seed=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
    name="hkd$((seed % 1000000))"
    # The lock is /tmp itself (a directory can be flock'ed): no lock file is left behind.
    exec 9</tmp
    flock -w 60 9 || die "no lock on /tmp to pick a subnet under"
    for i in $(seq 0 199); do
        x=$(( (seed + i) % 200 + 20 ))
        ip -4 route show | grep -q "^10\.91\.$x\." || break
        x=""
    done
    [ -n "$x" ] || die "no free 10.91.X.0/24 for the docker bridge"
    ip link add "$name" type bridge || die "ip link add $name type bridge failed"
    echo "$name 10.91.$x.1/24" >"$d/bridge"
    ip addr add "10.91.$x.1/24" dev "$name" && ip link set "$name" up \
        || { ip link del "$name"; die "configuring bridge $name failed"; }
    exec 9>&-
    echo "$name"
}

dockerd_start() {
    local launcher d sock bridge i
    launcher=$(readlink -f "$1") || die "$1: not found"
    [ -x "$launcher" ] || die "$launcher is not executable"
    command -v dockerd >/dev/null || die "dockerd is not installed (scripts/test.sh installs docker.io)"
    command -v docker >/dev/null || die "the docker CLI is not installed (scripts/test.sh installs docker.io)"
    d=$(docker_dir)
    sock="$d/docker.sock"
    # A unix socket path is limited to 108 bytes (and the managed containerd's is longer).
    [ ${#sock} -lt 80 ] || die "docker socket path too long: $sock (use a shorter DIR)"
    mkdir -p "$d/data" "$d/exec" "$d/config"
    if ! dockerd_running; then
        bridge=$(docker_bridge)
        # Not /etc/docker/daemon.json: nothing of the host's docker set-up applies; and its
        # identity key in DIR, not /etc/docker/key.json (20.10 takes that path from the file only).
        printf '{"deprecated-key-path": "%s"}\n' "$d/key.json" >"$d/daemon.json"
        local cgroup_driver=cgroupfs
        [ -d /run/systemd/system ] && cgroup_driver=systemd
        rm -f "$sock"
        # setsid: the daemon must not die with the shell (or test) that started it.
        setsid dockerd --config-file "$d/daemon.json" --data-root "$d/data" --exec-root "$d/exec" \
            --pidfile "$d/docker.pid" --host "unix://$sock" \
            --bridge "$bridge" --iptables=false --ip-masq=false --ip-forward=false \
            --userland-proxy=true --exec-opt "native.cgroupdriver=$cgroup_driver" \
            --add-runtime "husk=$launcher" >"$d/dockerd.log" 2>&1 </dev/null &
        echo $! >"$d/dockerd.pid"
        for i in $(seq 1 300); do
            docker_cli version >/dev/null 2>&1 && break
            dockerd_running || die "dockerd exited: $(tail -n5 "$d/dockerd.log")"
            sleep 0.1
        done
        docker_cli version >/dev/null 2>&1 || die "dockerd did not answer on $sock: $(tail -n5 "$d/dockerd.log")"
    fi
    if ! docker_cli image inspect busybox:latest >/dev/null 2>&1; then
        docker_cli load -q -i "$(busybox_archive)" >&2 || die "docker load of busybox failed"
    fi
    echo "$sock"
}

dockerd_stop() {
    local d pid i p name
    d=$(docker_dir)
    [ -d "$d" ] || return 0
    if dockerd_running; then
        pid=$(cat "$d/dockerd.pid")
        # dockerd stops its containers (10 s grace each, in parallel) and its containerd.
        kill "$pid"
        for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$d/dockerd.pid"
    # What outlived it (after a kill -9): its containerd, shims and docker-proxies all name
    # its exec root or its bridge's subnet on their command lines.
    local subnet=""
    [ -f "$d/bridge" ] && read -r name subnet <"$d/bridge"
    subnet=${subnet%.1/24}.
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = "$$" ] && continue
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qE -- "($d/|-container-ip ${subnet//./\\.}[0-9])" \
            && kill -9 "${p#/proc/}" 2>/dev/null
    done
    unmount_under
    if [ -f "$d/bridge" ]; then
        ip link show "$name" >/dev/null 2>&1 && ip link del "$name"
        rm -f "$d/bridge"
    fi
    # Every dockerd makes /run/docker/plugins (plugin discovery, not movable); the last one
    # here takes it away if it is still empty.
    pgrep -x dockerd >/dev/null || rmdir /run/docker/plugins /run/docker 2>/dev/null || true
}

# Everything mounted under DIR (snapshots, rootfs, podman's overlay store), deepest first.
unmount_under() {
    awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

case "$step" in
    podman) podman_setup "${3:-}" ;;
    launcher) [ $# -eq 3 ] || usage; launcher "$3" ;;
    containerd-start) containerd_start ;;
    containerd-stop) containerd_stop ;;
    cri-start) [ $# -ge 4 ] || usage; cri_start "$3" "$4" "${5:-}" ;;
    cri-stop) cri_stop ;;
    dockerd-start) [ $# -eq 3 ] || usage; dockerd_start "$3" ;;
    dockerd-stop) dockerd_stop ;;
    clean)
        if [ -f "$dir/cni/net.d/10-husk-cri.conflist" ]; then cri_stop; else containerd_stop; fi
        dockerd_stop
        unmount_under
        rm -rf "$dir"
        ;;
    *) usage ;;
esac
