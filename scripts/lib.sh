# Shared shell helpers for husk's scripts. Source it; don't run it.

log() { printf '%s\n' "husk: $*" >&2; }
die() { printf '%s\n' "husk: error: $*" >&2; exit 1; }

# Packages a fresh Debian 12 machine needs to build and test husk (protobuf-compiler: the
# `protoc` that the CRI client's build script of the tests' k8s-cri dev-dependency runs).
HUSK_APT_PACKAGES=(
    build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils zstd
    linux-source-6.12 qemu-system-x86 erofs-utils e2fsprogs busybox-static skopeo docker-registry apache2-utils
    libseccomp-dev libcap-ng-dev iproute2 nftables curl python3 debootstrap
    protobuf-compiler
)

# The container engines the husk-runtime tests drive (tests/engine_*.rs), with runc and crun
# to compare against, and podman's network backend (netavark, with aardvark-dns for its DNS,
# and iptables, which netavark 1.4 drives for its NAT and port rules): without netavark podman
# 4.3 silently falls back to CNI and never sees the tests' bridge networks. Only
# scripts/test.sh installs them; setup.sh stays lean. docker.io brings dockerd, the docker CLI
# and docker-proxy (its own containerd and runc are the ones above). containernetworking-plugins:
# the CNI plugins containerd's CRI plugin gives a pod its network with (tests/shim_cri.rs).
HUSK_ENGINE_PACKAGES=(podman conmon containerd runc crun netavark aardvark-dns iptables docker.io
    containernetworking-plugins)

# Installs whichever of the given Debian packages are missing (apt-get update only if needed).
# No package starts its service on the way (a policy-rc.d that says no, where the machine has
# none): the tests start private instances, and a system dockerd would take docker0, the
# firewall's FORWARD policy and /run/docker.sock; docker-registry would take port 5000.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    local SUDO="" policy=/usr/sbin/policy-rc.d ours=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# husk: no service starts during an install (scripts/lib.sh)\nexit 101\n' |
            $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy" && ours=1
    fi
    local rc=0
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        $SUDO apt-get update >&2
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >&2 || rc=1
    fi
    [ -z "$ours" ] || $SUDO rm -f "$policy"
    [ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed"
}

husk_cache() { echo "${HUSK_CACHE:-$HOME/.cache/husk}"; }

# cargo_install CRATE VERSION ROOT TARGET_DIR: `cargo install --locked` of exactly VERSION.
# From cargo's own cache first (--offline: no index or download when the crate and its
# locked dependencies were fetched before), else from the registry.
cargo_install() {
    local crate=$1 version=$2 root=$3 target=$4
    cargo install --locked --quiet --offline --root "$root" --target-dir "$target"         "$crate" --version "=$version" >&2 2>/dev/null && return 0
    cargo install --locked --quiet --root "$root" --target-dir "$target"         "$crate" --version "=$version" >&2
}
