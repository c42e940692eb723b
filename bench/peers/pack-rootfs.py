#!/usr/bin/env python3
"""Packs a root filesystem as a one-layer OCI image layout (tag `latest`), the layer an uncompressed tar
written in a sorted walk with numeric owners and no device nodes (a builder gives each step its own /dev),
so the same tree gives the same image. Used by make-apt-image.sh; tests/fixtures/make-git-image.sh packs
its image the same way.

Usage: pack-rootfs.py ROOTFS DEST CREATED_BY"""
import hashlib, json, os, stat, subprocess, sys, tarfile

rootfs, dest, created_by = sys.argv[1:4]
os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
layer_path = os.path.join(dest, "layer.tar")
arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def entry(info):
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        return None
    info.uname = info.gname = ""
    return info


with tarfile.open(layer_path, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for top, dirs, files in os.walk(rootfs):
        dirs.sort()
        rel_top = os.path.relpath(top, rootfs)
        if rel_top != ".":
            tar.add(top, arcname=rel_top, recursive=False, filter=entry)
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = os.path.join(top, name)
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                tar.add(path, arcname=os.path.normpath(os.path.join(rel_top, name)), recursive=False, filter=entry)


def put(data=None, path=None):
    h = hashlib.sha256()
    if path:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(path)
        os.rename(path, os.path.join(dest, "blobs", "sha256", h.hexdigest()))
    else:
        h.update(data)
        size = len(data)
        with open(os.path.join(dest, "blobs", "sha256", h.hexdigest()), "wb") as f:
            f.write(data)
    return {"digest": "sha256:" + h.hexdigest(), "size": size}


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


layer = put(path=layer_path)  # uncompressed: the digest is the diff id
config = put(canon({
    "architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"],
               "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": created_by}],
}))
manifest = put(canon({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
}))
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
     "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
with open(os.path.join(dest, "index.json"), "wb") as f:
    f.write(canon(index))
with open(os.path.join(dest, "oci-layout"), "wb") as f:
    f.write(b'{"imageLayoutVersion":"1.0.0"}')
print(f"{dest}:latest {manifest['digest']} ({layer['size'] >> 20} MiB layer)")
