#!/usr/bin/env bash
# A soak: N cycles of mixed work through the installed husk (and podman with husk-runtime
# when podman is here), checking the host for leaks every CHECK_EVERY cycles against a
# snapshot taken after a first warm-up cycle:
#   processes (VMMs, helpers, monitors), mounts, TAPs, nftables rules of husk's table,
#   leases, files under the state directories, VM cgroups of its id range, loop devices,
#   fds of this shell's long-lived children (none should remain), and MemAvailable (within
#   HUSK_SOAK_MEM_MIB).
# Each cycle: `husk run --rm`; `run -d` + `exec` + `stop` + `rm`; a `-v` volume; a `-p`
# port reached with a TCP connect; and `podman --runtime husk-runtime run --rm`.
# Usage: scripts/soak.sh [N] (default 50; CHECK_EVERY default 50, or N when smaller).
# HUSK / HUSK_RUNTIME: the binaries to drive (default: the installed ones).
# Every container lives in a root of its own, removed at the end. Exit 1 on a failed
# cycle or a leak, with what differed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

N=${1:-50}
CHECK_EVERY=${CHECK_EVERY:-50}
[ "$CHECK_EVERY" -le "$N" ] || CHECK_EVERY=$N
MEM_SLACK_MIB=${HUSK_SOAK_MEM_MIB:-256}
HUSK=${HUSK:-husk}
command -v "$HUSK" >/dev/null || die "husk is not installed (scripts/setup.sh)"
[ "$(id -u)" = 0 ] || die "the soak needs root (networks, cgroups, mounts)"

# A slot of its own: a bridge, a subnet and a range of VM ids (their cgroups are vm-<id>)
# that no other soak on this host uses, so two soaks (a CI run beside a long one) never
# count each other's TAPs, rules or cgroups. A slot is taken by making its lock directory
# (atomic) while its bridge does not exist; one whose owner died is taken over.
slot=
for s in 0 1 2 3 4; do
    lock=/run/husk-soak-slot-$s
    if ! mkdir "$lock" 2>/dev/null; then
        owner=$(cat "$lock/pid" 2>/dev/null || true)
        { [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; } && continue
        rm -rf "$lock"
        mkdir "$lock" 2>/dev/null || continue
    fi
    echo $$ >"$lock/pid"
    if ip link show "hksoak$s" >/dev/null 2>&1; then
        rm -rf "$lock"
        continue
    fi
    slot=$s
    break
done
[ -n "$slot" ] || die "soak: all 5 soak slots are in use on this host"
work=$(mktemp -d /var/tmp/husk-soak.XXXXXX)
export HUSK_SOAK_MARK=$work
export HUSK_NETWORK_BRIDGE=${HUSK_NETWORK_BRIDGE:-hksoak$slot}
export HUSK_NETWORK_SUBNET=${HUSK_NETWORK_SUBNET:-172.31.$((251 + slot)).0/24}
export HUSK_JAIL_ID_BASE=${HUSK_JAIL_ID_BASE:-$(((0x7100 + slot) * 65536))}
# And a TMPDIR of its own: the short socket directories (husk-*) and their mounts are
# counted there, not host-wide, where a test run beside it has some for a moment.
export TMPDIR=$work/tmp
root=$work/root
vol=$work/vol
mkdir -p "$root" "$vol" "$TMPDIR"
h() { "$HUSK" --root "$root" "$@"; }
cleanup() {
    h rm -f $(h ps -a -q 2>/dev/null) >/dev/null 2>&1 || true
    if [ -f "$work/podman/.husk-engine-setup" ]; then
        (. "$work/podman/podman.env" && podman rm -a -f -t 0 >/dev/null 2>&1) || true
        scripts/engine-setup.sh clean "$work/podman" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    ip link del "$HUSK_NETWORK_BRIDGE" 2>/dev/null || true
    # And the bridge's own rules (husk keeps a bridge's MASQUERADE and guard while the
    # bridge is in use; this bridge is gone).
    nft -a list table ip husk 2>/dev/null \
        | awk -v tag="\"husk-bridge:$HUSK_NETWORK_BRIDGE:" '
            $1 == "chain" { chain = $2 }
            index($0, tag) && match($0, /# handle [0-9]+$/) { print chain, substr($0, RSTART + 9) }' \
        | while read -r chain handle; do
            nft delete rule ip husk "$chain" handle "$handle" 2>/dev/null || true
        done || true
    rm -rf "/run/husk-soak-slot-$slot"
}
trap cleanup EXIT

archive=$(scripts/make-busybox-image.sh | tail -n1)
h load -i "$archive" >/dev/null
podman_ok=0
if command -v podman >/dev/null; then
    HUSK_BUSYBOX_ARCHIVE=$archive scripts/engine-setup.sh podman "$work/podman" >/dev/null
    runtime=${HUSK_RUNTIME:-$(command -v husk-runtime || echo target/release/husk-runtime)}
    podman_launcher=$(scripts/engine-setup.sh launcher "$work/podman/rt-husk" "$runtime")
    podman_ok=1
else
    log "soak: podman missing: its part of each cycle is NOT RUN"
fi

# One line per kind of thing that must not grow; compared whole. Scoped to this soak
# where the thing can be (its processes carry HUSK_SOAK_MARK, its containers use a bridge
# and subnet of their own), so other husk users of the host do not move the numbers.
procs_of() { # KIND-REGEX: this soak's processes whose name matches
    local p n=0
    for p in /proc/[0-9]*; do
        tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qx "HUSK_SOAK_MARK=$work" || continue
        tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qE "$1" && n=$((n + 1))
    done
    echo "$n"
}
snapshot() {
    echo "vmms $(procs_of '^(qemu-system|husk-vmm)')"
    echo "helpers $(procs_of 'husk-agent-mux|virtiofsd|husk-layer-disk')"
    echo "monitors $(procs_of 'husk-monitor|husk-runtime')"
    echo "mounts $(grep -c -e "$work" /proc/self/mountinfo || true)"
    echo "taps $(ip -o link show master "$HUSK_NETWORK_BRIDGE" 2>/dev/null | wc -l)"
    echo "nft-rules $(nft list table ip husk 2>/dev/null | grep -c -e "$HUSK_NETWORK_BRIDGE" -e "dnat to ${HUSK_NETWORK_SUBNET%.*}" || true)"
    echo "leases $(cat "$root"/network/*.leases.json 2>/dev/null | grep -c '"' || true)"
    echo "container-dirs $(find "$root/containers" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l)"
    echo "short-dirs $(find "$TMPDIR" -maxdepth 1 -name 'husk-*' | wc -l)"
    # A VM's cgroup is named after its id lease: those of the soak's id range.
    echo "cgroups $(find /sys/fs/cgroup -path '*husk*' -name 'vm-*' -type d 2>/dev/null \
        | awk -F/vm- -v lo="$HUSK_JAIL_ID_BASE" '$NF >= lo && $NF < lo + 65536' | wc -l)"
    echo "loops $(losetup -a 2>/dev/null | wc -l)"
    echo "children $(pgrep -c -P $$ || true)"
}
mem_mib() { awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')
cycle() {
    local i=$1
    [ "$(h run --rm busybox echo "c$i")" = "c$i" ] || return 1
    local id
    id=$(h run -d busybox sleep 1000)
    [ "$(h exec "$id" echo in)" = "in" ] || return 1
    h stop -t 2 "$id" >/dev/null
    h rm "$id" >/dev/null
    echo "v$i" >"$vol/f"
    [ "$(h run --rm -v "$vol:/data:ro" busybox cat /data/f)" = "v$i" ] || return 1
    id=$(h run -d -p "127.0.0.1:$port:8080" busybox nc -l -p 8080 -e echo served)
    local got="" t
    for t in $(seq 1 50); do
        got=$(python3 - "$port" <<'EOF' 2>/dev/null || true
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
print(s.recv(64).decode().strip())
EOF
)
        [ "$got" = served ] && break
        sleep 0.2
    done
    h rm -f "$id" >/dev/null
    [ "$got" = served ] || return 1
    if [ "$podman_ok" = 1 ]; then
        local out
        out=$(. "$work/podman/podman.env" && podman --runtime "$podman_launcher" run --rm --network none busybox echo "p$i")
        [ "$out" = "p$i" ] || return 1
    fi
}

log "soak: warm-up cycle"
cycle 0 || die "soak: the warm-up cycle failed"
base=$(snapshot)
base_mem=$(mem_mib)
failed=0
start=$(date +%s)
for i in $(seq 1 "$N"); do
    if ! cycle "$i" >"$work/cycle.log" 2>&1; then
        failed=$((failed + 1))
        log "soak: cycle $i FAILED: $(tail -n 3 "$work/cycle.log" | tr '\n' ' ')"
    fi
    if [ $((i % CHECK_EVERY)) = 0 ]; then
        now=$(snapshot)
        mem=$(mem_mib)
        if [ "$now" != "$base" ]; then
            log "soak: LEAK after $i cycles:"
            diff <(echo "$base") <(echo "$now") >&2 || true
            exit 1
        fi
        if [ $((base_mem - mem)) -gt "$MEM_SLACK_MIB" ]; then
            die "soak: LEAK after $i cycles: MemAvailable $base_mem -> $mem MiB"
        fi
        log "soak: $i/$N cycles, $failed failed, no leak ($(($(date +%s) - start)) s; MemAvailable $base_mem -> $mem MiB)"
    fi
done
echo "soak: $N cycles, $failed failed, $(( $(date +%s) - start )) s, checked every $CHECK_EVERY: no leak"
[ "$failed" = 0 ]
