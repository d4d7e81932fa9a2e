#!/usr/bin/env bash
# Installs virtiofsd (the vhost-user-fs backend both VM backends use for shared host
# directories) into husk's cache, outside the repo, and prints the binary's path on the last line.
# Idempotent: an installed binary of the pinned version is reused. Override the location with
# HUSK_CACHE, the binary with HUSK_VIRTIOFSD (then nothing is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VERSION=1.14.0

if [ -n "${HUSK_VIRTIOFSD:-}" ]; then
    [ -x "$HUSK_VIRTIOFSD" ] || die "HUSK_VIRTIOFSD=$HUSK_VIRTIOFSD is not an executable"
    echo "$HUSK_VIRTIOFSD"
    exit 0
fi

root="$(husk_cache)/tools/virtiofsd-$VERSION"
bin="$root/bin/virtiofsd"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

# virtiofsd links libseccomp (its --seccomp filter) and libcap-ng (dropping capabilities).
ensure_packages libseccomp-dev libcap-ng-dev
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) to build virtiofsd"
log "installing virtiofsd $VERSION into $root (cargo install, a few minutes)"
start=$(date +%s)
# Build in a private temp dir so a half-built install never looks finished.
mkdir -p "$(husk_cache)/tools"
tmp="$(mktemp -d "$(husk_cache)/tools/.virtiofsd.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cargo_install virtiofsd "$VERSION" "$tmp/root" "$tmp/target" \
    || die "cargo install virtiofsd $VERSION failed"
rm -rf "$root"
mkdir -p "$(dirname "$root")"
mv "$tmp/root" "$root"
log "virtiofsd $VERSION installed in $(( $(date +%s) - start ))s"
echo "$bin"
