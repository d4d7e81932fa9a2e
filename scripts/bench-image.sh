#!/usr/bin/env bash
# Times converting and caching a 100 MB layer (gzip tar → staging → mkfs.erofs → rename),
# median of 5 runs, release build. Needs root and erofs-utils. HUSK_BENCH_DIR picks the
# filesystem (default /var/tmp).
# Usage: scripts/bench-image.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
command -v mkfs.erofs >/dev/null || ensure_packages erofs-utils
cd "$here/.."
cargo test --release -p husk --test image_store -- --ignored --exact bench_convert_100mb_layer --nocapture 2>&1 \
    | grep -E '^(BENCH|NOT RUN)' || die "bench_convert_100mb_layer did not report (run it without the grep to see why)"
