#!/usr/bin/env bash
# Median wall time of `podman run --rm --network none busybox true` per OCI runtime, the
# runtimes measured side by side in the same run (round-robin, so load on the machine hits
# them alike), as a markdown table with each runtime's ratio to runc (or, without runc, to
# the first runtime that works).
#
#   scripts/bench-engines.sh [-n N] [RUNTIME...]
#
# RUNTIME: any runc-compatible binary. Default: target/release/husk-runtime (when built),
# /usr/sbin/runc, /usr/bin/crun. N: runs per runtime (default 20), after one warm-up each.
# Uses a private podman store (scripts/engine-setup.sh) that is removed afterwards. Each
# runtime is run through a tiny launcher that carries HUSK_KERNEL & co. (conmon does not pass
# the environment on); every runtime gets the same launcher, so the comparison stays fair.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

n=20
if [ "${1:-}" = -n ]; then
    n=${2:?-n needs a number}
    shift 2
fi
[[ $n =~ ^[1-9][0-9]*$ ]] || die "-n wants a positive number, not '$n'"
runtimes=("$@")
if [ ${#runtimes[@]} -eq 0 ]; then
    [ -x "$here/../target/release/husk-runtime" ] && runtimes+=("$here/../target/release/husk-runtime")
    for r in /usr/sbin/runc /usr/bin/crun; do [ -x "$r" ] && runtimes+=("$r"); done
fi
[ ${#runtimes[@]} -gt 0 ] || die "no runtime to measure"
command -v podman >/dev/null || die "podman is not installed (scripts/test.sh installs it)"

work=$(mktemp -d /tmp/husk-bench.XXXXXX)
# Without the setup marker nothing was mounted there yet: plain removal is safe.
cleanup() {
    # Containers first (the latency ones hold a port, a bridge and netavark's rules).
    if [ -n "${CONTAINERS_CONF:-}" ]; then
        podman rm -a -f -t 0 >/dev/null 2>&1 || true
        podman network rm -f hkbench >/dev/null 2>&1 || true
    fi
    "$here/engine-setup.sh" clean "$work" >/dev/null 2>&1 || rm -rf "$work"
}
trap cleanup EXIT

# One launcher per runtime (carries HUSK_KERNEL & co.; named like the runtime).
launchers=()
for i in "${!runtimes[@]}"; do
    launchers+=("$("$here/engine-setup.sh" launcher "$work/rt$i" "${runtimes[$i]}")")
done

# shellcheck disable=SC1091
. "$("$here/engine-setup.sh" podman "$work" "${launchers[0]}")"

now_ns() { date +%s%N; }
# One measured run; prints milliseconds, or fails with podman's last error line.
one_run() {
    local t0 t1 err
    t0=$(now_ns)
    if ! err=$(podman --runtime "$1" run --rm --network none busybox true 2>&1 >/dev/null); then
        echo "${err##*$'\n'}" >&2
        return 1
    fi
    t1=$(now_ns)
    echo $(((t1 - t0) / 1000000))
}

declare -A times failed
for i in "${!launchers[@]}"; do
    if ! one_run "${launchers[$i]}" >/dev/null 2>"$work/err$i"; then
        failed[$i]=$(tr '|' '/' <"$work/err$i")
        log "${runtimes[$i]}: warm-up run failed: ${failed[$i]}"
    fi
done
for _ in $(seq 1 "$n"); do
    for i in "${!launchers[@]}"; do
        [ -n "${failed[$i]:-}" ] && continue
        if ms=$(one_run "${launchers[$i]}" 2>"$work/err$i"); then
            times[$i]="${times[$i]:-} $ms"
        else
            failed[$i]=$(tr '|' '/' <"$work/err$i")
            log "${runtimes[$i]}: run failed: ${failed[$i]}"
        fi
    done
done

stats() { # prints "median min max" of its arguments
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%d %d %d\n", m, v[1], v[NR] }'
}

echo "podman run --rm --network none busybox true, $n runs each ($(podman --version), $(nproc) CPUs)"
echo
base= base_name=
for i in "${!runtimes[@]}"; do
    [ -n "${failed[$i]:-}" ] && continue
    name=$(basename "${runtimes[$i]}")
    if [ -z "$base" ] || { [ "$name" = runc ] && [ "$base_name" != runc ]; }; then
        # shellcheck disable=SC2086
        read -r base _ _ < <(stats ${times[$i]})
        base_name=$name
    fi
done
echo "| runtime | median ms | min ms | max ms | vs ${base_name:-?} |"
echo "|---|---:|---:|---:|---:|"
for i in "${!runtimes[@]}"; do
    name=$(basename "${runtimes[$i]}")
    if [ -n "${failed[$i]:-}" ]; then
        echo "| $name | failed: ${failed[$i]} | | | |"
        continue
    fi
    # shellcheck disable=SC2086
    read -r med min max < <(stats ${times[$i]})
    ratio=$(awk -v a="$med" -v b="$base" 'BEGIN { printf "%.2fx", (b > 0) ? a / b : 0 }')
    echo "| $name | $med | $min | $max | $ratio |"
done

# Request latency through podman's bridge network and `-p` (netavark: DNAT to the
# container's veth; with husk-runtime tc mirrors that veth into the VM's TAP): busybox httpd
# in a container, $REQS curl GETs from the host, per runtime in the same run. The network is
# private to this run (its own bridge and /24, in the private network_config_dir).
REQS=${REQS:-200}
octet=$((100 + $$ % 100))
while ip -4 route show | grep -q "^10\.89\.$octet\."; do octet=$((octet % 250 + 1)); done
cat >"$work/networks/hkbench.json" <<NET
{"name":"hkbench","id":"$(printf '%064d' "$$")","driver":"bridge","network_interface":"hkbench$octet",
 "created":"2026-01-01T00:00:00Z","subnets":[{"subnet":"10.89.$octet.0/24","gateway":"10.89.$octet.1"}],
 "ipv6_enabled":false,"internal":false,"dns_enabled":false,"ipam_options":{"driver":"host-local"}}
NET
mkdir -p "$work/www" && echo bench >"$work/www/index.html"
ms_stats() { # "median p90" in ms of seconds on stdin
    sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit }
        k = int(NR * 0.9); if (k < 1) k = 1
        printf "%.2f %.2f\n", v[int((NR + 1) / 2)] * 1000, v[k] * 1000 }'
}
echo
echo "HTTP GET through podman --network (bridge) -p, $REQS requests each (curl on the host -> 127.0.0.1:PORT)"
echo
echo "| runtime | median ms | p90 ms |"
echo "|---|---:|---:|"
for i in "${!launchers[@]}"; do
    name=$(basename "${runtimes[$i]}")
    [ -n "${failed[$i]:-}" ] && continue
    port=$((18100 + i))
    while ss -Hltn "sport = :$port" | grep -q .; do port=$((port + 10)); done
    if ! podman --runtime "${launchers[$i]}" run -d --name "lat$i" --network hkbench \
        -p "127.0.0.1:$port:80" -v "$work/www:/www:ro" busybox httpd -f -p 80 -h /www \
        >/dev/null 2>"$work/lat$i.err"; then
        echo "| $name | failed: $(tail -n1 "$work/lat$i.err" | tr '|' '/') | |"
        continue
    fi
    for _ in $(seq 100); do curl -sf -m2 -o /dev/null "http://127.0.0.1:$port/index.html" && break; sleep 0.2; done
    read -r med p90 < <(for _ in $(seq "$REQS"); do
        curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/index.html"
    done | ms_stats)
    podman --runtime "${launchers[$i]}" rm -f -t 0 "lat$i" >/dev/null 2>&1 || true
    echo "| $name | $med | $p90 |"
done
podman network rm -f hkbench >/dev/null 2>&1 || true
