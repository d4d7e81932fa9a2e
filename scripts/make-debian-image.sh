#!/usr/bin/env bash
# Builds a real multi-layer Debian image: `debootstrap --variant=minbase` of the host's Debian
# release (cached once as a tarball under the husk cache: ~80 s and ~55 MB), split into three
# layers as an image build would make them:
#   1. /usr (the bulk: binaries and libraries of the merged-/usr system),
#   2. everything else (/etc, /var, the /bin -> usr/bin links, ...),
#   3. a change on top: /etc/husk-release added, /usr/share/doc made opaque and emptied
#      (an opaque-directory whiteout) and /etc/motd deleted (a file whiteout).
# Written as an OCI image layout (gzip layers), deterministic for a given cached rootfs.
# Prints the layout's path.
# Usage: scripts/make-debian-image.sh OUTDIR [NAME]   (NAME default debian:husk-test)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
out=${1:?usage: make-debian-image.sh OUTDIR [NAME]}
name=${2:-debian:husk-test}
command -v debootstrap >/dev/null || PATH=$PATH:/usr/sbin
command -v debootstrap >/dev/null || ensure_packages debootstrap
command -v python3 >/dev/null || die "python3 not found"
[ "$(id -u)" = 0 ] || die "debootstrap needs root"

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
mirror=${HUSK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=$(husk_cache)/debian
tarball=$cache/$suite-minbase.tar
if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    tmp=$(mktemp -d /var/tmp/husk-debootstrap.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    log "debootstrap --variant=minbase $suite from $mirror (once; cached in $cache)"
    debootstrap --variant=minbase "$suite" "$tmp/root" "$mirror" >&2 \
        || die "debootstrap failed (see above)"
    rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*_Packages
    tar --numeric-owner --xattrs -C "$tmp/root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$tmp"
    trap - EXIT
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
python3 - "$tarball" "$out" "$name" <<'PY'
import gzip, hashlib, io, json, os, shutil, sys, tarfile

src, out, name = sys.argv[1:4]
MTIME = 1700000000

def norm(n):
    n = n[2:] if n.startswith("./") else n
    return n.rstrip("/")

layers = [io.BytesIO(), io.BytesIO()]
tars = [tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) for b in layers]
with tarfile.open(src) as t:
    for m in t:
        n = norm(m.name)
        if not n:
            continue
        m.name = n
        m.mtime = MTIME
        m.uname = m.gname = ""
        dest = tars[0] if (n == "usr" or n.startswith("usr/")) else tars[1]
        dest.addfile(m, t.extractfile(m) if m.isreg() else None)
for x in tars:
    x.close()
top = io.BytesIO()
with tarfile.open(fileobj=top, mode="w", format=tarfile.PAX_FORMAT) as t:
    def add(path, data=b"", kind=tarfile.REGTYPE, mode=0o644):
        i = tarfile.TarInfo(path)
        i.type, i.mode, i.size, i.mtime = kind, mode, len(data), MTIME
        t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    add("etc", kind=tarfile.DIRTYPE, mode=0o755)
    add("etc/husk-release", b"husk test image, three layers\n")
    add("etc/.wh.motd")
    add("usr", kind=tarfile.DIRTYPE, mode=0o755)
    add("usr/share", kind=tarfile.DIRTYPE, mode=0o755)
    add("usr/share/doc", kind=tarfile.DIRTYPE, mode=0o755)
    add("usr/share/doc/.wh..wh..opq")
    add("usr/share/doc/README.husk", b"docs were removed by the top layer\n")
blobs = [b.getvalue() for b in layers] + [top.getvalue()]

sha = lambda b: hashlib.sha256(b).hexdigest()
def gz(data):
    o = io.BytesIO()
    with gzip.GzipFile(fileobj=o, mode="wb", mtime=0, compresslevel=6) as g:
        g.write(data)
    return o.getvalue()
gzs = [gz(b) for b in blobs]
config = json.dumps({
    "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
               "Cmd": ["bash"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(b) for b in blobs]},
    "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"husk make-debian-image.sh layer {i}"}
                for i in range(len(blobs))],
}, sort_keys=True, separators=(",", ":")).encode()
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + sha(g), "size": len(g)} for g in gzs],
}, sort_keys=True, separators=(",", ":")).encode()
lay = os.path.join(out, "debian-oci")
shutil.rmtree(lay, ignore_errors=True)
os.makedirs(os.path.join(lay, "blobs", "sha256"))
for data in [config, manifest] + gzs:
    with open(os.path.join(lay, "blobs", "sha256", sha(data)), "wb") as f:
        f.write(data)
with open(os.path.join(lay, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + sha(manifest), "size": len(manifest),
    "platform": {"architecture": "amd64", "os": "linux"},
    "annotations": {"org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}]}
with open(os.path.join(lay, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True, separators=(",", ":"))
print(f"layers: {[len(g) for g in gzs]} bytes gzip", file=sys.stderr)
PY
echo "$out/debian-oci"
