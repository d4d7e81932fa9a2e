#!/usr/bin/env bash
# Installs cargo-fuzz (the libFuzzer driver scripts/fuzz.sh uses) into husk's cache, outside
# the repo, and prints the binary's path on the last line.
# Idempotent: an installed binary of the pinned version is reused. Override the location with
# HUSK_CACHE, the binary with HUSK_CARGO_FUZZ (then nothing is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VERSION=0.13.1

if [ -n "${HUSK_CARGO_FUZZ:-}" ]; then
    [ -x "$HUSK_CARGO_FUZZ" ] || die "HUSK_CARGO_FUZZ=$HUSK_CARGO_FUZZ is not an executable"
    echo "$HUSK_CARGO_FUZZ"
    exit 0
fi

root="$(husk_cache)/tools/cargo-fuzz-$VERSION"
bin="$root/bin/cargo-fuzz"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) to build cargo-fuzz"
log "installing cargo-fuzz $VERSION into $root (cargo install, a few minutes)"
start=$(date +%s)
# Build in a private temp dir so a half-built install never looks finished.
mkdir -p "$(husk_cache)/tools"
tmp="$(mktemp -d "$(husk_cache)/tools/.cargo-fuzz.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cargo_install cargo-fuzz "$VERSION" "$tmp/root" "$tmp/target" \
    || die "cargo install cargo-fuzz $VERSION failed"
rm -rf "$root"
mkdir -p "$(dirname "$root")"
mv "$tmp/root" "$root"
log "cargo-fuzz $VERSION installed in $(( $(date +%s) - start ))s"
echo "$bin"
