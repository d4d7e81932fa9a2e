#!/usr/bin/env bash
# Installs vhost-device-vsock (the vhost-user vsock backend the QEMU backend uses) into husk's
# cache, outside the repo, and prints the binary's path on the last line.
# Idempotent: an installed binary of the pinned version is reused. Override the location with
# HUSK_CACHE, the binary with HUSK_VHOST_DEVICE_VSOCK (then nothing is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VERSION=0.3.0

if [ -n "${HUSK_VHOST_DEVICE_VSOCK:-}" ]; then
    [ -x "$HUSK_VHOST_DEVICE_VSOCK" ] || die "HUSK_VHOST_DEVICE_VSOCK=$HUSK_VHOST_DEVICE_VSOCK is not an executable"
    echo "$HUSK_VHOST_DEVICE_VSOCK"
    exit 0
fi

root="$(husk_cache)/tools/vhost-device-vsock-$VERSION"
bin="$root/bin/vhost-device-vsock"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) to build vhost-device-vsock"
log "installing vhost-device-vsock $VERSION into $root (cargo install, a few minutes)"
start=$(date +%s)
# Build in a private temp dir so a half-built install never looks finished.
mkdir -p "$(husk_cache)/tools"
tmp="$(mktemp -d "$(husk_cache)/tools/.vhost-device-vsock.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cargo_install vhost-device-vsock "$VERSION" "$tmp/root" "$tmp/target" \
    || die "cargo install vhost-device-vsock $VERSION failed"
rm -rf "$root"
mkdir -p "$(dirname "$root")"
mv "$tmp/root" "$root"
log "vhost-device-vsock $VERSION installed in $(( $(date +%s) - start ))s"
echo "$bin"
