#!/usr/bin/env bash
# Starts Debian's docker-registry on <host>:<free port> with its own temp config and storage,
# waits until it answers, prints "PORT PID". Stop it with `kill PID`; its temp dir (printed
# to stderr) goes with `rm -rf`.
# Usage: scripts/start-test-registry.sh [--host IP] [--tls CERT KEY]
#            [--htpasswd USER PASS | --token REALM SERVICE ISSUER CERT]
#   --host      address to listen on (default 127.0.0.1)
#   --tls       serve HTTPS with this certificate and key (default: plain HTTP)
#   --htpasswd  require this user (htpasswd auth, bcrypt; needs apache2-utils)
#   --token     require bearer tokens from REALM, signed by the key of CERT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
host=127.0.0.1 cert="" key="" user="" pass="" realm="" service="" issuer="" bundle=""
while [ $# -gt 0 ]; do
    case "$1" in
        --host) host=$2; shift 2 ;;
        --tls) cert=$2 key=$3; shift 3 ;;
        --htpasswd) user=$2 pass=$3; shift 3 ;;
        --token) realm=$2 service=$3 issuer=$4 bundle=$5; shift 5 ;;
        *) die "unknown argument $1 (see the usage in $0)" ;;
    esac
done
command -v docker-registry >/dev/null || ensure_packages docker-registry
dir=$(mktemp -d /tmp/husk-registry.XXXXXX)
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$host',0)); print(s.getsockname()[1])")
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
  addr: $host:$port
YML
scheme=http
if [ -n "$cert" ]; then
    scheme=https
    printf '  tls:\n    certificate: %s\n    key: %s\n' "$cert" "$key" >> "$dir/config.yml"
fi
if [ -n "$user" ]; then
    command -v htpasswd >/dev/null || ensure_packages apache2-utils
    htpasswd -Bbc "$dir/htpasswd" "$user" "$pass" 2>/dev/null
    printf 'auth:\n  htpasswd:\n    realm: husk-test\n    path: %s\n' "$dir/htpasswd" >> "$dir/config.yml"
fi
if [ -n "$realm" ]; then
    printf 'auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n' \
        "$realm" "$service" "$issuer" "$bundle" >> "$dir/config.yml"
fi
setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 < /dev/null &
pid=$!
# Any HTTP answer (a 401 too) means it is up; the certificate is the caller's to check.
probe="import ssl,sys,urllib.request,urllib.error
try: urllib.request.urlopen('$scheme://$host:$port/v2/', timeout=1, context=ssl._create_unverified_context())
except urllib.error.HTTPError: pass"
for _ in $(seq 100); do
    if python3 -c "$probe" 2>/dev/null; then
        log "registry on $scheme://$host:$port (pid $pid, dir $dir)"
        echo "$port $pid"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$dir/registry.log" >&2; die "docker-registry exited"; }
    sleep 0.1
done
kill "$pid" 2>/dev/null || true
die "docker-registry did not answer on $host:$port within 10 s (log: $dir/registry.log)"
