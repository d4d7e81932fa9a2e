#!/bin/sh
# virtio-net throughput through the driver-side harness (transport + device + TAP inside a
# namespace the test creates), host->guest and guest->host, 1472-byte UDP payloads, beside
# a plain UDP socket pair over loopback in the same namespace; and TCP with TSO/checksum
# offload both ways against a host TCP socket (the harness acks and fills the window).
# Needs root.
set -eu
cd "$(dirname "$0")/.."
exec cargo test --release -p husk --test virtio_net -- --ignored --nocapture --test-threads=1 bench_
