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
#       containerd-stop, dockerd-stop, unmounts everything under DIR (podman's overlay driver keeps its
#       store bind-mounted) and removes DIR.
#
# RUNTIME defaults to target/release/husk-runtime. The busybox archive comes from
# scripts/make-busybox-image.sh (HUSK_BUSYBOX_ARCHIVE overrides it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

usage() { die "usage: $0 podman DIR [RUNTIME] | launcher DIR RUNTIME | containerd-start DIR | containerd-stop DIR | dockerd-start DIR RUNTIME | dockerd-stop DIR | clean DIR"; }
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
        for v in HUSK_KERNEL HUSK_BZIMAGE HUSK_INITRAMFS HUSK_VIRTIOFSD HUSK_VHOST_DEVICE_VSOCK HUSK_CACHE \
            HUSK_NETWORK_BRIDGE HUSK_NETWORK_SUBNET HUSK_SOAK_MARK; do
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

containerd_start() {
    command -v containerd >/dev/null || die "containerd is not installed (scripts/test.sh installs it)"
    local c="$dir/containerd" sock
    sock=$(ctr_address)
    # A unix socket path is limited to 108 bytes.
    [ ${#sock} -lt 100 ] || die "containerd socket path too long: $sock (use a shorter DIR)"
    mkdir -p "$c/root" "$c/state"
    if ! containerd_running; then
        cat >"$c/config.toml" <<EOF
# Written by scripts/engine-setup.sh for husk's engine tests.
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
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
        rm -f "$sock" "$sock.ttrpc" "$c/debug.sock"
        # setsid: the daemon must not die with the shell (or test) that started it.
        setsid containerd --config "$c/config.toml" >"$c/containerd.log" 2>&1 </dev/null &
        echo $! >"$c/containerd.pid"
        local i
        for i in $(seq 1 100); do
            ctr --address "$sock" version >/dev/null 2>&1 && break
            containerd_running || die "containerd exited: $(tail -n5 "$c/containerd.log")"
            sleep 0.1
        done
        ctr --address "$sock" version >/dev/null 2>&1 || die "containerd did not answer on $sock"
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
    dockerd-start) [ $# -eq 3 ] || usage; dockerd_start "$3" ;;
    dockerd-stop) dockerd_stop ;;
    clean)
        containerd_stop
        dockerd_stop
        unmount_under
        rm -rf "$dir"
        ;;
    *) usage ;;
esac
