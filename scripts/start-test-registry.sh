#!/usr/bin/env bash
# Starts Debian's docker-registry on 127.0.0.1:<free port> with its own temp config and
# storage (plain HTTP, no auth), waits until it answers, prints "PORT PID". Stop it with
# `kill PID`; its temp dir (printed to stderr) goes with `rm -rf`.
# Usage: scripts/start-test-registry.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
command -v docker-registry >/dev/null || ensure_packages docker-registry
dir=$(mktemp -d /tmp/husk-registry.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 < /dev/null &
pid=$!
for _ in $(seq 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/v2/', timeout=1)" 2>/dev/null; then
        log "registry on 127.0.0.1:$port (pid $pid, dir $dir)"
        echo "$port $pid"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$dir/registry.log" >&2; die "docker-registry exited"; }
    sleep 0.1
done
kill "$pid" 2>/dev/null || true
die "docker-registry did not answer on 127.0.0.1:$port within 10 s (log: $dir/registry.log)"
