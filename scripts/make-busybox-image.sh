#!/usr/bin/env bash
# Builds a real OCI image of Debian's busybox-static: one layer with /bin/busybox and a
# symlink per applet, /etc/passwd + /etc/group (root and user 1000), /tmp (1777), /root
# (0700); config Cmd ["sh"], Env PATH. Written twice, with deterministic digests:
#   OUTDIR/busybox.tar      docker-archive (as `docker save` writes; plain layer tar)
#   OUTDIR/busybox-oci/     OCI image layout (gzip layer), named NAME
# With EXTRA (default 0), EXTRA more layers on top, layer i adding /layers/NNN.txt (benchmarks
# of the layer count: scripts/bench-layers.sh).
# Prints the docker-archive's path.
# Usage: scripts/make-busybox-image.sh [OUTDIR] [NAME] [EXTRA]
#        (default target/husk/images, busybox:latest, 0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
out=${1:-$here/../target/husk/images}
name=${2:-busybox:latest}
extra=${3:-0}
[ -x /bin/busybox ] || ensure_packages busybox-static
command -v python3 >/dev/null || die "python3 not found"
mkdir -p "$out"
out=$(cd "$out" && pwd)
python3 - "$out" "$name" /bin/busybox "$extra" <<'PY'
import gzip, hashlib, io, json, os, subprocess, sys, tarfile, shutil

out, name, busybox, extra = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
MTIME = 1700000000  # fixed: same input, same digests

def info(path, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, size=0, link=""):
    t = tarfile.TarInfo(path)
    t.type, t.mode, t.uid, t.gid, t.size, t.linkname, t.mtime = kind, mode, uid, gid, size, link, MTIME
    t.uname = t.gname = ""
    return t

def add_file(tar, path, data, mode=0o644):
    tar.addfile(info(path, mode=mode, size=len(data)), io.BytesIO(data))

applets = sorted(set(subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()))
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for d, mode in [("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777), ("home", 0o755)]:
        tar.addfile(info(d, tarfile.DIRTYPE, mode))
    tar.addfile(info("home/user", tarfile.DIRTYPE, 0o755, 1000, 1000))
    with open(busybox, "rb") as f:
        add_file(tar, "bin/busybox", f.read(), 0o755)
    for a in applets:
        if a != "busybox":
            tar.addfile(info("bin/" + a, tarfile.SYMTYPE, 0o777, link="busybox"))
    add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n")
    add_file(tar, "etc/group", b"root:x:0:\nuser:x:1000:\n")
layers = [buf.getvalue()]
for i in range(1, extra + 1):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info("layers", tarfile.DIRTYPE, 0o755))
        add_file(tar, "layers/%03d.txt" % i, b"%d\n" % i)
    layers.append(b.getvalue())
diff_ids = ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
def gzipped(data):
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as g:
        g.write(data)
    return gz.getvalue()
layers_gz = [gzipped(l) for l in layers]

config = json.dumps({
    "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"],
               "Labels": {"org.opencontainers.image.title": "busybox (Debian busybox-static)"}},
    "rootfs": {"type": "layers", "diff_ids": diff_ids},
    "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "husk scripts/make-busybox-image.sh"}],
}, sort_keys=True, separators=(",", ":")).encode()
sha = lambda b: hashlib.sha256(b).hexdigest()

# docker-archive: manifest.json + <config>.json + <layer>/layer.tar
members = [(sha(config) + ".json", config)]
members += [(sha(l) + "/layer.tar", l) for l in layers]
members.append(("manifest.json", json.dumps([{"Config": sha(config) + ".json", "RepoTags": [name],
                                              "Layers": [sha(l) + "/layer.tar" for l in layers]}]).encode()))
tmp = os.path.join(out, ".busybox.tar.tmp")
with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
    for path, data in members:
        add_file(tar, path, data)
os.replace(tmp, os.path.join(out, "busybox.tar"))

# OCI layout: oci-layout, index.json, blobs/sha256/*
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + sha(g), "size": len(g)} for g in layers_gz],
}, sort_keys=True, separators=(",", ":")).encode()
full = name if ("/" in name.split(":")[0] and "." in name.split("/")[0]) else "docker.io/library/" + name if "/" not in name else "docker.io/" + name
index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + sha(manifest), "size": len(manifest),
    "platform": {"architecture": "amd64", "os": "linux"},
    "annotations": {"io.containerd.image.name": full, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}]},
    sort_keys=True, separators=(",", ":")).encode()
lay = os.path.join(out, "busybox-oci")
shutil.rmtree(lay, ignore_errors=True)
os.makedirs(os.path.join(lay, "blobs", "sha256"))
for data in [config, manifest] + layers_gz:
    with open(os.path.join(lay, "blobs", "sha256", sha(data)), "wb") as f:
        f.write(data)
with open(os.path.join(lay, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
with open(os.path.join(lay, "index.json"), "wb") as f:
    f.write(index)
PY
echo "$out/busybox.tar"
