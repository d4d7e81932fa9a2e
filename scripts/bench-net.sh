#!/usr/bin/env bash
# Container networking, husk beside runc in the same run, same traffic, same tools:
#   - TCP throughput host -> container and container -> host: busybox nc moving
#     NET_BENCH_MIB MiB (default 256) of zeros, timed on the host until the receiver
#     reports (dd's summary) or exits;
#   - request latency through a published port: NET_BENCH_REQS (default 200) sequential
#     `curl http://127.0.0.1:PORT/index.html` to busybox httpd, median and p90 of curl's
#     time_total.
# husk: `husk run --network bridge -p` (bridge + TAP + nftables DNAT, QEMU backend).
# runc: the same busybox rootfs in a network namespace with a veth to the same "host"
# namespace, and the same kind of DNAT rule for its port.
# Everything runs inside a network namespace the script makes (the "host"), so the real
# host's network is untouched; all traffic stays on this machine. Prints a markdown table.
# Needs root, iproute2, nftables, curl, runc, busybox-static; HUSK_KERNEL/HUSK_INITRAMFS as
# for the tests (source /tmp/env.sh or scripts/setup.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
cd "$here/.."
[ "$(id -u)" -eq 0 ] || die "bench-net.sh needs root (network namespaces, TAPs)"
ensure_packages runc curl nftables iproute2 busybox-static
MIB=${NET_BENCH_MIB:-256}
REQS=${NET_BENCH_REQS:-200}
CPUS=${NET_BENCH_CPUS:-2}

# QEMU carries the data, not husk: a debug build is fine. HUSK_BIN overrides.
if [ -z "${HUSK_BIN:-}" ]; then
    cargo build -q --bin husk --bin husk-monitor >&2
    HUSK_BIN=$PWD/target/debug/husk
fi
work=$(mktemp -d /tmp/husk-bench-net.XXXXXX)
hostns=hkbench-$$
ctrns=hkbenchc-$$
rid=hkbench-$$
cleanup() {
    ip netns exec "$hostns" "$HUSK_BIN" --root "$work/root" rm -f husk-bench >/dev/null 2>&1 || true
    runc delete -f "$rid" >/dev/null 2>&1 || true
    ip netns del "$hostns" 2>/dev/null || true
    ip netns del "$ctrns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$hostns"
ip -n "$hostns" link set lo up
H() { ip netns exec "$hostns" "$@"; }
husk() { H env HUSK_NETWORK=bridge "$HUSK_BIN" --root "$work/root" "$@"; }
now() { date +%s.%N; }
mbps() { echo "scale=1; $MIB / ($2 - $1)" | bc; }

# The receiver is done when it printed dd's summary ("records in"), read by `$1`.
wait_for() {
    local i
    for i in $(seq 6000); do
        if "$@" 2>/dev/null | grep -q "records in"; then return 0; fi
        sleep 0.05
    done
    die "receiver never finished"
}

# Median and p90 (ms) of the numbers (seconds) on stdin.
stats() {
    sort -n | awk '{v[NR]=$1} END {m=v[int((NR+1)/2)]; p=v[int(NR*0.9)]; printf "%.2f %.2f\n", m*1000, p*1000}'
}

# Times MIB MiB sent by the container command "$@" to a listener on port 7010 of the host
# namespace: from the start of the command until the listener has read every byte. busybox
# nc does not end a connection on its own, so both sides are stopped once the bytes are in.
recv_from() {
    rm -f "$work/done"
    setsid ip netns exec "$hostns" bash -c "sleep 3600 | busybox nc -l -p 7010 | \
        (dd bs=65536 iflag=fullblock count=$((MIB * 16)) of=/dev/null 2>/dev/null; touch $work/done)" &
    local lpid=$! i
    sleep 0.3
    t0=$(now)
    "$@" > /dev/null 2>&1 &
    local spid=$!
    for i in $(seq 12000); do [ -e "$work/done" ] && break; sleep 0.02; done
    t1=$(now)
    [ -e "$work/done" ] || die "the host never received $MIB MiB from: $*"
    kill -- -"$lpid" 2>/dev/null || true
    wait "$lpid" 2>/dev/null || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
}

latency() { # URL
    local i
    for i in $(seq 20); do H curl -sf -m2 -o /dev/null "$1" && break; sleep 0.2; done
    for i in $(seq "$REQS"); do
        H curl -s -o /dev/null -w '%{time_total}\n' "$1"
    done | stats
}

# --- husk -------------------------------------------------------------------------------
archive=$(scripts/make-busybox-image.sh "$work/img" 2>/dev/null | tail -n1)
"$HUSK_BIN" --root "$work/root" load -i "$archive" >/dev/null
husk run -d --name husk-bench --cpus "$CPUS" -p 18090:80 busybox sh -c \
    'mkdir -p /www && echo bench > /www/index.html && httpd -p 80 -h /www;
     sleep 3600 | nc -l -p 7002 | dd of=/dev/null bs=65536; sleep 3600' >/dev/null
read -r gip backend < <(husk inspect husk-bench | python3 -c \
    'import json,sys; s=json.load(sys.stdin)[0]; print(s["network"]["addresses"][0], s["backend"].replace(" ", ""))')
gw=${gip%.*}.1
sleep 1
t0=$(now)
H bash -c "dd if=/dev/zero bs=1M count=$MIB 2>/dev/null | busybox nc $gip 7002"
wait_for husk logs husk-bench
t1=$(now)
husk_in=$(mbps "$t0" "$t1")
recv_from husk exec husk-bench sh -c "dd if=/dev/zero bs=1M count=$MIB 2>/dev/null | nc $gw 7010"
husk_out=$(mbps "$t0" "$t1")
read -r husk_med husk_p90 < <(latency http://127.0.0.1:18090/index.html)
husk rm -f husk-bench >/dev/null

# --- runc -------------------------------------------------------------------------------
ip netns add "$ctrns"
ip link add hkbv0 netns "$hostns" type veth peer name eth0 netns "$ctrns"
ip -n "$hostns" addr add 10.201.0.1/24 dev hkbv0
ip -n "$hostns" link set hkbv0 up
ip -n "$ctrns" addr add 10.201.0.2/24 dev eth0
ip -n "$ctrns" link set eth0 up
ip -n "$ctrns" link set lo up
ip -n "$ctrns" route add default via 10.201.0.1
H sh -c 'echo 1 > /proc/sys/net/ipv4/conf/hkbv0/route_localnet'
H nft "add table ip runcbench; \
  add chain ip runcbench out { type nat hook output priority -100; }; \
  add chain ip runcbench post { type nat hook postrouting priority srcnat; }; \
  add rule ip runcbench out fib daddr type local tcp dport 18091 dnat to 10.201.0.2:80; \
  add rule ip runcbench post ip saddr 127.0.0.0/8 oifname hkbv0 masquerade"
bundle=$work/bundle
mkdir -p "$bundle/rootfs"
# The same busybox binary as the husk image.
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/tmp"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
chroot "$bundle/rootfs" /bin/busybox --install -s /bin
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" "/var/run/netns/$ctrns" <<'PY'
import json, sys
path, ns = sys.argv[1], sys.argv[2]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c",
    "mkdir -p /www && echo bench > /www/index.html && httpd -p 80 -h /www; "
    "sleep 3600 | nc -l -p 7002 | dd of=/dev/null bs=65536; sleep 3600"]
c["root"]["readonly"] = False
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
c["linux"]["namespaces"].append({"type": "network", "path": ns})
json.dump(c, open(path, "w"))
PY
runc run -d -b "$bundle" "$rid" > "$work/runc.log" 2>&1
sleep 1
t0=$(now)
H bash -c "dd if=/dev/zero bs=1M count=$MIB 2>/dev/null | busybox nc 10.201.0.2 7002"
wait_for cat "$work/runc.log"
t1=$(now)
runc_in=$(mbps "$t0" "$t1")
recv_from runc exec "$rid" sh -c "dd if=/dev/zero bs=1M count=$MIB 2>/dev/null | nc 10.201.0.1 7010"
runc_out=$(mbps "$t0" "$t1")
read -r runc_med runc_p90 < <(latency http://127.0.0.1:18091/index.html)

echo
echo "| $MIB MiB TCP, busybox nc; $REQS HTTP GETs via -p | husk ($backend, $CPUS vCPU) | runc (veth) |"
echo "|---|---|---|"
echo "| host -> container (MB/s) | $husk_in | $runc_in |"
echo "| container -> host (MB/s) | $husk_out | $runc_out |"
echo "| HTTP via 127.0.0.1 published port, median (ms) | $husk_med | $runc_med |"
echo "| HTTP via 127.0.0.1 published port, p90 (ms) | $husk_p90 | $runc_p90 |"
