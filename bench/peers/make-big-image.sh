#!/usr/bin/env bash
# Makes the base image of the `pull` and `push` workloads: a Debian userland with build tools (debootstrap
# minbase of the host's suite plus build-essential, python3, git), about 500 MB unpacked, split into 12
# gzip layers by directory, as an OCI layout at DEST with two tags:
#   big     the 12 layers
#   big2    the same first 11 layers and another last one (a second pull fetches one blob)
# Written by GNU tar, gzip and Python's hashlib, not by kiln. Only Debian's mirror is contacted. Callers
# cache the result under this script's hash (bench/peers/bigimage.sh).
#
# Usage: bench/peers/make-big-image.sh DEST
# Environment: KILN_DEBIAN_SUITE, KILN_DEBIAN_MIRROR override the host's suite and mirror.
set -euo pipefail
dest=${1:?usage: make-big-image.sh DEST}
# shellcheck source=SCRIPTDIR/../../tests/fixtures/debian-mirror.sh
source "$(dirname "$0")/../../tests/fixtures/debian-mirror.sh"

work=$(mktemp -d "$(dirname "$dest")/.big-image-work.XXXXXX")
cleanup() {
  for m in proc sys; do umount -l "$work/rootfs/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if ! debootstrap --variant=minbase --components=main --include=build-essential,python3,git \
  --arch="$arch" "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
  echo "make-big-image.sh: debootstrap $suite from $mirror failed; the end of its log:" >&2
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
fi
for m in proc sys; do umount -l "$work/rootfs/$m" 2>/dev/null || true; done
r=$work/rootfs
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/debootstrap "$r"/dev/* "$r"/proc/* "$r"/sys/*

# One layer per directory below (in this order, after a first layer of everything else), so that the
# layers are of mixed sizes as real images' are; a directory missing on this suite is skipped.
python=$(cd "$r" && ls -d usr/lib/python3.* | head -n1)
split=(usr/libexec usr/lib/gcc usr/lib/"$(uname -m)"-linux-gnu usr/include usr/share/doc usr/share "$python" usr/bin var usr/lib)
mkdir -p "$work/layers"
n=0
layer() { # name, tar arguments...
  local name=$1; shift
  tar -C "$r" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 --xattrs -cf "$work/layers/$name.tar" "$@"
}
excludes=()
for d in "${split[@]}"; do excludes+=(--exclude="./$d"); done
layer "$(printf %02d $n)" "${excludes[@]}" .
for d in "${split[@]}"; do
  [ -d "$r/$d" ] || continue
  n=$((n + 1))
  ex=()
  # usr/share and usr/lib come after their subdirectories, which they leave out.
  for e in "${split[@]}"; do case $e in "$d"/*) ex+=(--exclude="./$e") ;; esac; done
  layer "$(printf %02d $n)" "${ex[@]}" "./$d"
done
echo "big image, layer one" >"$work/top1.txt"
echo "big image, layer two" >"$work/top2.txt"
tar -C "$work" --mtime=@0 --numeric-owner --owner=0 --group=0 -cf "$work/layers/top1.tar" --transform 's,top1.txt,etc/big-top.txt,' top1.txt
tar -C "$work" --mtime=@0 --numeric-owner --owner=0 --group=0 -cf "$work/layers/top2.tar" --transform 's,top2.txt,etc/big-top.txt,' top2.txt
for t in "$work"/layers/*.tar; do gzip -n -6 "$t" & done
wait

python3 - "$dest" "$work/layers" "$arch" <<'PY'
import gzip, hashlib, json, os, shutil, sys

dest, layers, arch = sys.argv[1:4]
blobs = os.path.join(dest, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)

def put(data_or_path):
    h = hashlib.sha256()
    if isinstance(data_or_path, bytes):
        h.update(data_or_path)
        size = len(data_or_path)
    else:
        with open(data_or_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(data_or_path)
    d = h.hexdigest()
    target = os.path.join(blobs, d)
    if isinstance(data_or_path, bytes):
        with open(target, "wb") as f:
            f.write(data_or_path)
    else:
        shutil.move(data_or_path, target)
    return "sha256:" + d, size

def diff_id(path):
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()

base = sorted(n for n in os.listdir(layers) if n[0].isdigit())
common = [(diff_id(os.path.join(layers, n)), *put(os.path.join(layers, n))) for n in base]
index = []
for tag, top in (("big", "top1.tar.gz"), ("big2", "top2.tar.gz")):
    path = os.path.join(layers, top)
    layer = [(diff_id(path), *put(path))]
    all_layers = common + layer
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [l[0] for l in all_layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(all_layers))],
    }, sort_keys=True).encode()
    cd, cs = put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}
                   for _, d, s in all_layers],
    }, sort_keys=True).encode()
    md, ms = put(manifest)
    index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                  "annotations": {"org.opencontainers.image.ref.name": tag}})
with open(os.path.join(dest, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": index}, f)
with open(os.path.join(dest, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
total = sum(s for _, _, s in common)
print(f"make-big-image.sh: {len(common) + 1} layers, {total / 1e6:.0f} MB compressed", file=sys.stderr)
PY
