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
cleanup() { "$here/engine-setup.sh" clean "$work" >/dev/null 2>&1 || rm -rf "$work"; }
trap cleanup EXIT

# One launcher per runtime, named like the runtime (conmon picks JSON logging by name).
launchers=()
for i in "${!runtimes[@]}"; do
    r=$(readlink -f "${runtimes[$i]}") || die "${runtimes[$i]}: not found"
    [ -x "$r" ] || die "$r is not executable"
    mkdir -p "$work/rt$i"
    l="$work/rt$i/$(basename "${runtimes[$i]}")"
    {
        echo '#!/bin/sh'
        for v in HUSK_KERNEL HUSK_BZIMAGE HUSK_INITRAMFS HUSK_VIRTIOFSD HUSK_VHOST_DEVICE_VSOCK HUSK_CACHE; do
            [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
        done
        printf 'exec %q --root %q "$@"\n' "$r" "$work/rt$i/root"
    } >"$l"
    chmod +x "$l"
    launchers+=("$l")
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
