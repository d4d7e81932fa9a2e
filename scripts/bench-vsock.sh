#!/bin/sh
# virtio-vsock throughput through the driver-side harness (transport + device + muxer +
# host unix sockets), host->guest and guest->host, beside a plain unix socketpair moving
# the same bytes. Every byte is checked on both paths. VSOCK_BENCH_MIB sets the size.
set -eu
cd "$(dirname "$0")/.."
exec cargo test --release -p husk --test virtio_vsock -- --ignored --nocapture bench_vsock_throughput
