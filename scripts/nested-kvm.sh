#!/usr/bin/env bash
# The nested-KVM rig: runs a command inside an "L1" Linux booted under QEMU's TCG, whose
# emulated AMD SVM (with nested paging) gives L1 a hardware-virtualisation /dev/kvm. That is
# where husk-vmm's Linux guests can boot on hosts whose own /dev/kvm cannot run them (PVM)
# or that have none.
#
#   scripts/nested-kvm.sh prepare      -> last stdout line: the cache dir of the L1 kernel
#   scripts/nested-kvm.sh run [--timeout SECS] [--mem MiB] [--cpus N] [--env K=V]...
#                             [--cwd DIR] [--rw DIR]... [--console FILE] [--verbose] -- CMD ARGS...
#
# prepare: downloads Debian's linux-image (the version the linux-image-amd64 metapackage
# depends on) with `apt-get download`, unpacks it with `dpkg -x` (never installed), extracts
# the ELF vmlinux (QEMU's microvm enters it through PVH: 3-7 s to init, against 11-18 s for
# the bzImage on -M pc), runs depmod, and builds L1's initramfs: static busybox, the init
# scripts in scripts/nested-kvm/, and the modules needed before the root is up (virtio-mmio,
# 9p, overlay) and for /dev/kvm (irqbypass, ccp, kvm, kvm-amd). All cached under
# $HUSK_CACHE/nested-kvm/<package>_<version>/ ("current" points at the latest); a re-run only
# asks apt-cache which version is current, and `run` uses "current" without asking (it runs
# prepare itself only when nothing complete is cached).
#
# run: L1 sees the host's root read-only (virtio-9p) under a tmpfs overlay, so the command
# can write anywhere and nothing reaches the host except through --rw DIR (shared read-write
# at the same path). It runs as root in L1's root, with fresh /proc /sys (cgroup2) /dev /tmp
# /run, in --cwd (default: this cwd), with PATH, HOME, LANG, TERM, CI, RUST_BACKTRACE,
# RUST_LOG and HUSK_* passed from here plus --env. Its stdout and stderr stream back and this
# script exits with its status. Other exits:
#   3    NOT RUN: exactly one line `NOT RUN: nested-kvm: <reason>` on stdout (no qemu, no L1
#        kernel, TCG without SVM, no /dev/kvm in L1)
#   124  L1 did not finish within --timeout (default 600 s): the console's last lines follow
#   125  L1 ended without reporting the command's status: the console's last lines
#   126  L1's own kernel failed (a panic, an oops, a soft lockup or RCU stall that lasted
#        $LOCKUP_GRACE s, or no heartbeat from L1 for $HEARTBEAT_LIMIT s): the first report
#        and the console's last lines follow. This is
#        the emulated machine failing under the command, not the command: TCG's emulation of
#        SVM is what breaks (measured: ~1 run in 3 with two QEMU -accel kvm guests at once),
#        so a caller may run the command again in a fresh L1.
# Defaults: 2 vCPUs, 6144 MiB. L1's console goes to a temporary file (--console FILE keeps
# it); --verbose boots L1 without `quiet`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/lib.sh"   # ensure_packages, husk_cache
here=$root/scripts/nested-kvm
CACHE=$(husk_cache)/nested-kvm
NOT_RUN=3
L1_FAILED=126
# How long an L1 soft lockup or RCU stall may last before L1 is given up (measured: once
# reported, none ever recovered; the CPU stayed stuck until the run's time limit).
LOCKUP_GRACE=${HUSK_RIG_LOCKUP_GRACE:-60}
# L1's stage2 touches run/heartbeat every 5 s. Measured: an L1 wedged by TCG printed one RCU
# stall report and then nothing at all, its timers dead; 90 s without a beat (from boot, or
# since the last) is such an L1, not a slow one (it boots in 5-20 s, beats every 5).
HEARTBEAT_LIMIT=${HUSK_RIG_HEARTBEAT_LIMIT:-90}
# Console lines that say L1 is stuck (ended after LOCKUP_GRACE unless the command finishes).
L1_STUCK='BUG: soft lockup|rcu: INFO: rcu_preempt (self-)?detected stall'
# Lines of L1's console that mean its own kernel failed (never printed by the command, whose
# output goes to the run directory; an L2 guest's console goes to a file as well).
L1_FAILURE="Kernel panic - not syncing|$L1_STUCK|stack guard page was hit|BUG: unable to handle|general protection fault|Oops: |double fault"

say() { echo "nested-kvm: $*" >&2; }
fail() { echo "nested-kvm: error: $*" >&2; exit 1; }
not_run() { echo "NOT RUN: nested-kvm: $*"; exit $NOT_RUN; }

# Modules L1's init loads, in dependency order, before it mounts the host's root; the kvm stack
# in the order measured to work (kvm-amd needs ccp for SEV, kvm needs irqbypass).
L1_MODULES=(virtio_mmio 9pnet_virtio 9p overlay irqbypass ccp kvm kvm-amd)

# --- prepare -----------------------------------------------------------------------------------

# The linux-image package linux-image-amd64 depends on, and its candidate version.
resolve_image() {
    local pkg ver
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update >&2 || true
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || return 1
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2; exit}')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || return 1
    echo "$pkg $ver"
}

# vmlinuz -> ELF vmlinux: find the compressed payload (xz, zstd or gzip) and unpack the first
# stream that yields an ELF, as the kernel tree's scripts/extract-vmlinux does.
extract_vmlinux() {
    local img=$1 out=$2 magic tool off
    for pair in 'fd377a585a00:xz -dc --single-stream' '28b52ffd:zstd -dcq' '1f8b0800:gzip -dcq'; do
        magic=${pair%%:*} tool=${pair#*:}
        for off in $(LC_ALL=C grep -obUaP "$(sed 's/../\\x&/g' <<<"$magic")" "$img" | cut -d: -f1); do
            tail -c +$((off + 1)) "$img" | $tool >"$out" 2>/dev/null || true
            if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then return 0; fi
        done
    done
    return 1
}

# The initramfs depends on the init scripts and this script too: rebuilt when they change.
build_stamp() { cat "$here/init" "$here/stage2" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16; }

# The prepared cache dir, without asking apt when the current one is complete.
prepared() {
    local dir
    dir=$(readlink -f "$CACHE/current" 2>/dev/null || true)
    if [ -n "$dir" ] && [ -f "$dir/ready" ] && [ "$(cat "$dir/ready")" = "$(build_stamp)" ]; then
        echo "$dir"
    else
        prepare | tail -1
    fi
}

prepare() {
    ensure_packages qemu-system-x86 busybox-static kmod cpio xz-utils zstd
    # One prepare at a time (tests may start several rig runs at once); the rest then find
    # it done.
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    local pkg ver dir
    if read -r pkg ver < <(resolve_image); then
        dir=$CACHE/${pkg}_$ver
    else
        # No apt metadata (offline): the latest complete cache entry still serves.
        dir=$(readlink -f "$CACHE/current" 2>/dev/null || true)
        [ -n "$dir" ] && [ -f "$dir/ready" ] \
            || fail "apt cannot resolve linux-image-amd64 and nothing is cached in $CACHE"
        say "apt cannot resolve linux-image-amd64; using the cached $(basename "$dir")"
    fi
    local stamp
    stamp=$(build_stamp)
    if [ -f "$dir/ready" ] && [ "$(cat "$dir/ready")" = "$stamp" ]; then
        ln -sfn "$(basename "$dir")" "$CACHE/current"
        echo "$dir"
        return 0
    fi
    mkdir -p "$dir"
    local kver
    if [ ! -f "$dir/unpacked" ]; then
        say "downloading $pkg $ver"
        local dl
        dl=$(mktemp -d "$CACHE/.dl.XXXXXX")
        # _apt cannot write into root's cache dir; the download itself needs no sandbox.
        (cd "$dl" && apt-get download -o APT::Sandbox::User=root "$pkg=$ver" >&2) \
            || { rm -rf "$dl"; fail "apt-get download $pkg=$ver failed"; }
        rm -rf "$dir/deb"
        dpkg -x "$dl"/*.deb "$dir/deb" || { rm -rf "$dl"; fail "dpkg -x of $pkg failed"; }
        rm -rf "$dl"
        touch "$dir/unpacked"
    fi
    kver=$(basename "$(ls -d "$dir"/deb/lib/modules/*/ | head -1)")
    [ -n "$kver" ] || fail "no lib/modules in $pkg"
    grep -q '^CONFIG_PVH=y' "$dir/deb/boot/config-$kver" || fail "$pkg has no PVH entry (CONFIG_PVH)"
    if [ ! -f "$dir/vmlinux" ]; then
        extract_vmlinux "$dir/deb/boot/vmlinuz-$kver" "$dir/vmlinux.tmp" \
            || fail "cannot extract an ELF vmlinux from $dir/deb/boot/vmlinuz-$kver"
        mv "$dir/vmlinux.tmp" "$dir/vmlinux"
    fi
    depmod -b "$dir/deb" "$kver" || fail "depmod for $kver failed"

    say "building L1's initramfs"
    local stage m line
    stage=$(mktemp -d)
    mkdir -p "$stage"/{bin,dev,proc,sys,mnt,newroot,lib/modules/"$kver"}
    install -m 0755 /bin/busybox "$stage/bin/busybox"
    install -m 0755 "$here/init" "$stage/init"
    install -m 0644 "$here/stage2" "$stage/stage2"
    : >"$stage/modules.load"
    for m in "${L1_MODULES[@]}"; do
        # "insmod /path/x.ko" lines, dependencies first; builtins print "builtin x".
        while read -r line; do
            case "$line" in
                insmod\ *)
                    local ko=${line#insmod }
                    ko=${ko%% *}
                    local rel=${ko#"$dir/deb/lib/modules/$kver/"}
                    grep -qxF "$rel" "$stage/modules.load" && continue
                    mkdir -p "$stage/lib/modules/$kver/$(dirname "$rel")"
                    cp "$ko" "$stage/lib/modules/$kver/$rel"
                    echo "$rel" >>"$stage/modules.load"
                    ;;
            esac
        done < <(modprobe -d "$dir/deb" -S "$kver" --show-depends "$m" 2>/dev/null \
            || fail "module $m not found in $pkg")
    done
    echo "$kver" >"$stage/kver"
    (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/initramfs.cpio.gz.tmp"
    rm -rf "$stage"
    mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
    echo "$kver" >"$dir/kver"
    echo "$stamp" >"$dir/ready"
    ln -sfn "$(basename "$dir")" "$CACHE/current"
    echo "$dir"
}

# --- run ---------------------------------------------------------------------------------------

# The host's TSC frequency in kHz: L1 on microvm cannot calibrate its TSC (no PIT/HPET
# reference under TCG) and every KVM_RUN in it then hangs, so L1 is told.
host_tsc_khz() {
    local mhz
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -1)
    [ -n "$mhz" ] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -1)
    [ -n "$mhz" ] || mhz=$(awk -F': *' '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo)
    [ -n "$mhz" ] || return 1
    awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }'
}

run() {
    local timeout=600 mem=6144 cpus=2 cwd=$PWD console="" verbose=0
    local envs=() rws=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --timeout) timeout=$2; shift 2 ;;
            --mem) mem=$2; shift 2 ;;
            --cpus) cpus=$2; shift 2 ;;
            --env) envs+=("$2"); shift 2 ;;
            --cwd) cwd=$2; shift 2 ;;
            --rw) rws+=("$(cd "$2" && pwd)"); shift 2 ;;
            --console) console=$2; shift 2 ;;
            --verbose) verbose=1; shift ;;
            --) shift; break ;;
            *) fail "unknown run option $1 (see the header of $0)" ;;
        esac
    done
    [ $# -gt 0 ] || fail "run needs a command after --"
    [ -x "$(command -v qemu-system-x86_64 || true)" ] \
        || not_run "qemu-system-x86_64 not installed (scripts/nested-kvm.sh prepare)"
    local dir
    dir=$(prepared) || not_run "no L1 kernel: scripts/nested-kvm.sh prepare failed (above)"
    [ -f "$dir/vmlinux" ] && [ -f "$dir/initramfs.cpio.gz" ] || not_run "no L1 kernel in $dir (scripts/nested-kvm.sh prepare)"
    local tsc
    tsc=$(host_tsc_khz) || not_run "cannot read the host's TSC frequency"

    # The run directory is L1's only way back: the command script in, stdout/stderr/status out.
    local run
    # Run directories outlive only a SIGKILLed run; a day later nothing can still use them.
    find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'nested-kvm.*' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
    run=$(mktemp -d "${TMPDIR:-/tmp}/nested-kvm.XXXXXX")
    local qpid="" tails=()
    cleanup() {
        if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
            kill -TERM "$qpid" 2>/dev/null || true
            sleep 1
            kill -KILL "$qpid" 2>/dev/null || true
            wait "$qpid" 2>/dev/null || true
        fi
        local t
        for t in "${tails[@]}"; do kill "$t" 2>/dev/null || true; done
        [ -z "$console" ] || cp "$run/console.log" "$console" 2>/dev/null || true
        rm -rf "$run"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    {
        echo "cd $(printf '%q' "$cwd") || exit 125"
        printf 'exec env -i'
        local v
        for v in PATH HOME LANG TERM CI RUST_BACKTRACE RUST_LOG $(compgen -e | grep '^HUSK_' || true); do
            [ -z "${!v+x}" ] || printf ' %q' "$v=${!v}"
        done
        for v in "${envs[@]}"; do printf ' %q' "$v"; done
        printf ' %q' "$@"
        echo
    } >"$run/cmd.sh"
    echo "$dir/deb/lib/modules/$(cat "$dir/kver")" >"$run/modules.dir"
    : >"$run/stdout"
    : >"$run/stderr"
    : >"$run/console.log"

    local args=(
        -M microvm,rtc=on -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$mem"
        -nodefaults -no-user-config -display none -no-reboot
        -serial "file:$run/console.log"
        -kernel "$dir/vmlinux" -initrd "$dir/initramfs.cpio.gz"
        -fsdev "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap"
        -device virtio-9p-device,fsdev=hostroot,mount_tag=hostroot
        -fsdev "local,id=nkrun,path=$run,security_model=passthrough"
        -device virtio-9p-device,fsdev=nkrun,mount_tag=nkrun
    )
    local i=0 d
    : >"$run/rw.list"
    for d in "${rws[@]}"; do
        args+=(-fsdev "local,id=nkrw$i,path=$d,security_model=passthrough"
            -device "virtio-9p-device,fsdev=nkrw$i,mount_tag=nkrw$i")
        printf 'nkrw%d %s\n' "$i" "$d" >>"$run/rw.list"
        i=$((i + 1))
    done
    local quiet=quiet
    [ "$verbose" = 0 ] || quiet=""
    args+=(-append "console=ttyS0 $quiet panic=-1 reboot=t tsc_early_khz=$tsc tsc=reliable mitigations=off pci=off")

    # A caller that SIGKILLs this script (a test's own time limit) must not leave QEMU behind.
    local pdeath=()
    if setpriv --help 2>/dev/null | grep -q -- --pdeathsig; then pdeath=(setpriv --pdeathsig KILL --); fi
    local start=$SECONDS boot_epoch
    boot_epoch=$(date +%s)
    "${pdeath[@]}" qemu-system-x86_64 "${args[@]}" </dev/null >"$run/qemu.log" 2>&1 &
    qpid=$!
    tail -n +1 -f --pid="$qpid" -s 0.2 "$run/stdout" &
    tails+=($!)
    tail -n +1 -f --pid="$qpid" -s 0.2 "$run/stderr" >&2 &
    tails+=($!)
    local timed_out=0 wedged="" lockup_since="" polls=0 beat
    while kill -0 "$qpid" 2>/dev/null; do
        if [ $((SECONDS - start)) -ge "$timeout" ]; then
            timed_out=1
            kill -KILL "$qpid" 2>/dev/null || true
            break
        fi
        # Once a second: a stuck L1 (a soft lockup or RCU stall lasting LOCKUP_GRACE, or no
        # heartbeat for HEARTBEAT_LIMIT) is ended at once rather than at the run's limit.
        polls=$((polls + 1))
        if [ $((polls % 5)) = 0 ] && [ ! -s "$run/status" ]; then
            if [ -z "$lockup_since" ]; then
                grep -qE "$L1_STUCK" "$run/console.log" && lockup_since=$SECONDS
            elif [ $((SECONDS - lockup_since)) -ge "$LOCKUP_GRACE" ]; then
                wedged="stuck past ${LOCKUP_GRACE}s"
            fi
            beat=$(stat -c %Y "$run/heartbeat" 2>/dev/null || echo "$boot_epoch")
            if [ $(($(date +%s) - beat)) -ge "$HEARTBEAT_LIMIT" ]; then
                wedged="${wedged:+$wedged; }no heartbeat from L1 for ${HEARTBEAT_LIMIT}s"
            fi
            if [ -n "$wedged" ]; then
                kill -KILL "$qpid" 2>/dev/null || true
                break
            fi
        fi
        sleep 0.2
    done
    wait "$qpid" 2>/dev/null || true
    qpid=""
    local t
    for t in "${tails[@]}"; do wait "$t" 2>/dev/null || true; done
    tails=()

    if [ -s "$run/notrun" ]; then
        not_run "$(head -1 "$run/notrun")"
    fi
    # The first line of L1's first failure report, if any (its line number: at).
    local at="" first=""
    if [ ! -s "$run/status" ]; then
        at=$(grep -m1 -nE "$L1_FAILURE" "$run/console.log" | cut -d: -f1 || true)
        [ -z "$at" ] || first=$(sed -n "${at}s/^\[[^]]*\] *//p" "$run/console.log")
    fi
    if [ -n "$wedged" ] || [ -n "$at" ]; then
        say "L1's kernel failed after $((SECONDS - start))s${wedged:+ (L1 ended: $wedged)}: ${first:-nothing on its console}"
        if [ -n "$at" ]; then
            say "its first report:"
            sed -n "${at},$((at + 40))p" "$run/console.log" >&2
        fi
        if [ -z "$at" ] || [ $(($(wc -l <"$run/console.log") - at)) -gt 40 ]; then
            say "its console's last lines:"
            tail -n 15 "$run/console.log" >&2
        fi
        exit $L1_FAILED
    fi
    if [ "$timed_out" = 1 ]; then
        say "L1 did not finish within ${timeout}s; its console's last lines:"
        tail -n 30 "$run/console.log" >&2
        exit 124
    fi
    if [ ! -s "$run/status" ]; then
        if grep -q "doesn't support requested feature" "$run/qemu.log"; then
            not_run "$(head -1 "$run/qemu.log")"
        fi
        say "L1 ended after $((SECONDS - start))s without the command's status; qemu said:"
        tail -n 5 "$run/qemu.log" >&2
        say "its console's last lines:"
        tail -n 30 "$run/console.log" >&2
        exit 125
    fi
    local rc
    rc=$(cat "$run/status")
    exit "$rc"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 prepare | run [options] -- CMD ARGS... (see the header of $0)" >&2; exit 2 ;;
esac
