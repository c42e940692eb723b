#!/usr/bin/env python3
"""The real-world builds' judge: an image's final filesystem as a sorted file list, with what may differ.

Reads an OCI image layout directory or an unpacked docker-archive (`docker save`, extracted), applies
the layers itself (whiteouts, opaque directories, hard links; streamed, so big Debian layers fit) and
prints one line per entry: path, type, mode, uid, gid, and the symlink target, or for a regular file its
size and the sha256 of its content. Times are never printed, nor the paths of IGNORED (below). Paths matching ALLOWED (below) are listed
with `content=any` instead of size and digest: their bytes legitimately differ between two runs of the
same build, whoever builds it (logs, caches and files that embed the time of the build).

It uses no kiln code, so it judges kiln and BuildKit alike.

Usage: listing.py IMAGE_DIR [--config]    an OCI layout or unpacked docker-archive (--config: its config
                                           fields that matter and its history without times, instead)
       listing.py --rootfs FS.tar          a whole filesystem as one tar (BuildKit's tar exporter)
       listing.py --config-json FILE       an image config file, as --config prints it
"""

import fnmatch
import hashlib
import json
import os
import sys
import tarfile

# Each pattern is why two runs of one build may differ; matched with fnmatch against the absolute path.
ALLOWED = [
    # dpkg's and apt's logs: one line per action with its time.
    "/var/log/*", "/var/log/*/*",
    # ldconfig's cache of library mtimes (ldconfig runs after each package install).
    "/var/cache/ldconfig/aux-cache",
    # apt's and dpkg's state files that hold times: the extended_states are stable, but the package
    # lists (when a Dockerfile keeps them) are fetched at build time and carry the mirror's Date.
    "/var/lib/apt/lists/*", "/var/lib/apt/lists/partial",
    "/var/cache/debconf/*-old", "/var/lib/dpkg/*-old",
    # debconf's template/config databases are rewritten with the order of questions asked (stable), but
    # their `-old` copies are the previous run's: above. Python bytecode embeds the source's mtime.
    "*.pyc",
    # fontconfig's caches (fc-cache runs when a font package is installed) hold the mtime of each font
    # directory they describe.
    "/var/cache/fontconfig/*.cache-*",
    # Files that hold the build's time or a random seed: systemd's random seed, machine ids.
    "/var/lib/systemd/random-seed", "/etc/machine-id", "/var/lib/dbus/machine-id",
    # A shell history or lesshst written by an interactive tool.
    "/root/.bash_history",
]

# Paths left out of the list altogether: their names themselves hold the time of the run.
IGNORED = [
    # npm's debug logs, one per npm command, named by the time it started.
    "/root/.npm/_logs/*",
]

KINDS = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "chardev",
         tarfile.BLKTYPE: "blockdev", tarfile.FIFOTYPE: "fifo", tarfile.REGTYPE: "file",
         tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file"}


def layers_and_config(root):
    """The layer files (in order) and the config of the image unpacked at ROOT."""
    if os.path.exists(os.path.join(root, "index.json")):
        def blob(d):
            return os.path.join(root, "blobs", "sha256", d.split(":", 1)[1])
        with open(os.path.join(root, "index.json")) as f:
            m = json.load(f)
        while "manifests" in m:
            with open(blob(m["manifests"][0]["digest"])) as f:
                m = json.load(f)
        with open(blob(m["config"]["digest"])) as f:
            config = json.load(f)
        return [blob(layer["digest"]) for layer in m["layers"]], config
    with open(os.path.join(root, "manifest.json")) as f:
        m = json.load(f)[0]
    with open(os.path.join(root, m["Config"])) as f:
        config = json.load(f)
    return [os.path.join(root, name) for name in m["Layers"]], config


def clean(name):
    name = os.path.normpath("/" + name.lstrip("./"))
    return "/" if name in ("/", "//") else name


def remove_tree(fs, path):
    prefix = path.rstrip("/") + "/"
    for p in [p for p in fs if p == path or p.startswith(prefix)]:
        del fs[p]


def apply_layer(fs, path):
    with tarfile.open(path, mode="r|*") as tar:
        # Whiteouts in a layer only hide what lower layers hold; the layer's own entries come after
        # them in both writers' tars, and deleting in stream order is what overlayfs shows.
        for m in tar:
            p = clean(m.name)
            base = os.path.basename(p)
            if base == ".wh..wh..opq":
                remove_tree(fs, os.path.dirname(p) + "/")
                continue
            if base.startswith(".wh."):
                remove_tree(fs, os.path.join(os.path.dirname(p), base[4:]))
                continue
            if m.islnk():
                target = fs.get(clean(m.linkname))
                fs[p] = dict(target) if target else {"kind": "file?", "mode": 0, "uid": 0, "gid": 0}
                continue
            old = fs.get(p)
            if old is not None and not (m.isdir() and old["kind"] == "dir"):
                remove_tree(fs, p)
            # Docker's tar writer keeps the file-type bits in the mode field (Go's archive/tar
            # FileInfoHeader of Go < 1.9 style); only the permission bits are the file's mode.
            entry = {"kind": KINDS.get(m.type, "other"), "mode": m.mode & 0o7777, "uid": m.uid, "gid": m.gid}
            if m.issym():
                entry["target"] = m.linkname
            elif m.isfile():
                h = hashlib.sha256()
                f = tar.extractfile(m)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                entry["size"], entry["sha256"] = m.size, h.hexdigest()[:16]
            fs[p] = entry


def allowed(path):
    return any(fnmatch.fnmatchcase(path, pat) for pat in ALLOWED)


def line(path, e):
    words = [path, e["kind"], f"mode={e['mode']:04o}", f"uid={e['uid']}", f"gid={e['gid']}"]
    if "target" in e:
        words.append(f"-> {e['target']}")
    elif "sha256" in e:
        words += ["content=any"] if allowed(path) else [f"size={e['size']}", f"sha256={e['sha256']}"]
    return " ".join(words)


CONFIG_FIELDS = ["Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels",
                 "StopSignal", "Healthcheck", "OnBuild", "Shell"]


def print_config(config):
    cfg = config.get("config") or {}
    for field in CONFIG_FIELDS:
        value = cfg.get(field)
        if value not in (None, "", [], {}):
            print(f"{field}: {json.dumps(value, sort_keys=True)}")
    # The history without its times: what made each entry, and whether it made a layer.
    for h in config.get("history") or []:
        layer = "no layer" if h.get("empty_layer") else "layer"
        print(f"History: {layer}: {h.get('created_by', '')}")


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("Usage: ", 1)[1])
        return 0 if argv else 2
    if argv[0] == "--config-json":
        with open(argv[1]) as f:
            print_config(json.load(f))
        return 0
    if argv[0] == "--rootfs":
        layers = [argv[1]]
    else:
        layers, config = layers_and_config(argv[0])
        if argv[1:] == ["--config"]:
            print_config(config)
            return 0
    fs = {"/": {"kind": "dir", "mode": 0o755, "uid": 0, "gid": 0}}
    for layer in layers:
        apply_layer(fs, layer)
    for path in sorted(fs):
        if not any(fnmatch.fnmatchcase(path, pat) for pat in IGNORED):
            print(line(path, fs[path]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
