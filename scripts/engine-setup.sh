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
#   scripts/engine-setup.sh launcher DIR RUNTIME
#       DIR/<RUNTIME's name>: a tiny script that runs RUNTIME with --root DIR/root and the
#       HUSK_KERNEL & co. of this environment (conmon does not pass the environment on), named
#       like the runtime (conmon picks JSON logging by name). Prints its path.
#   scripts/engine-setup.sh clean DIR
#       containerd-stop, unmounts everything under DIR (podman's overlay driver keeps its
#       store bind-mounted) and removes DIR.
#
# RUNTIME defaults to target/release/husk-runtime. The busybox archive comes from
# scripts/make-busybox-image.sh (HUSK_BUSYBOX_ARCHIVE overrides it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

usage() { die "usage: $0 podman DIR [RUNTIME] | launcher DIR RUNTIME | containerd-start DIR | containerd-stop DIR | clean DIR"; }
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
    clean)
        containerd_stop
        unmount_under
        rm -rf "$dir"
        ;;
    *) usage ;;
esac
