#!/bin/sh
# virtio-net throughput through the driver-side harness (transport + device + TAP inside a
# namespace the test creates), host->guest and guest->host, 1472-byte UDP payloads, beside
# a plain UDP socket pair over loopback in the same namespace. Needs root.
set -eu
cd "$(dirname "$0")/.."
exec cargo test --release -p husk --test virtio_net -- --ignored --nocapture bench_throughput
