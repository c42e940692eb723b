#!/usr/bin/env python3
"""The differential corpus's judge: an image as a normalized, sorted, human-readable listing.

It reads an OCI image layout (a directory, or a tar of one) or a docker-archive (`docker save`), applies
the layers itself (whiteouts, opaque directories, hard links), and prints:

  base: NAME                     the named base whose layers the image starts with (or `scratch`)
  config.FIELD: JSON             the config fields that matter, when set
  /path TYPE key=value ...       each filesystem entry that is new or differs from the base
  /path removed                  each base entry the image no longer has

Times are left out (they differ between builders by design); everything else a file carries is in:
type, mode (with setuid/setgid/sticky), owner, size, sha256 of the content, link target, device
numbers, xattrs, and which paths are hard links of one another.

It uses no kiln code, so it judges kiln and the reference builder alike.

Usage: listing.py IMAGE [--base NAME=OCI_LAYOUT ...]
"""

import gzip
import hashlib
import io
import json
import lzma
import os
import sys
import tarfile

CONFIG_FIELDS = ["Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels",
                 "StopSignal", "Healthcheck", "OnBuild", "Shell", "ArgsEscaped"]
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class Image:
    """An image's config and its layers (uncompressed tar bytes), whatever container it came in."""

    def __init__(self, path):
        self.files = read_container(path)
        if "index.json" in self.files:
            self._oci()
        elif "manifest.json" in self.files:
            self._docker()
        else:
            sys.exit(f"listing.py: {path} is neither an OCI layout nor a docker-archive")

    def _blob(self, digest):
        return self.files["blobs/sha256/" + digest.split(":", 1)[1]]

    def _oci(self):
        index = json.loads(self.files["index.json"])
        manifest = json.loads(self._blob(index["manifests"][0]["digest"]))
        while "manifests" in manifest:  # an index inside the layout: the first manifest
            manifest = json.loads(self._blob(manifest["manifests"][0]["digest"]))
        self.config = json.loads(self._blob(manifest["config"]["digest"]))
        self.layers = [uncompress(self._blob(layer["digest"])) for layer in manifest["layers"]]

    def _docker(self):
        manifest = json.loads(self.files["manifest.json"])[0]
        self.config = json.loads(self.files[manifest["Config"]])
        self.layers = [uncompress(self.files[name]) for name in manifest["Layers"]]

    def diff_ids(self):
        return self.config.get("rootfs", {}).get("diff_ids", [])


def read_container(path):
    """The files of an image directory or tar, by relative path (contents read lazily for directories)."""
    if os.path.isdir(path):
        return LazyDir(path)
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[os.path.normpath(m.name)] = tar.extractfile(m).read()
    return out


class LazyDir(dict):
    def __init__(self, root):
        super().__init__()
        self.root = root

    def __contains__(self, name):
        return os.path.exists(os.path.join(self.root, name))

    def __getitem__(self, name):
        with open(os.path.join(self.root, name), "rb") as f:
            return f.read()


def uncompress(data):
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard  # noqa: PLC0415 - optional: only zstd layers need it
        except ImportError:
            sys.exit("listing.py: a zstd layer needs the python3-zstandard package")
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


class Node:
    """One filesystem entry. `inode` is shared by hard links of one file."""

    __slots__ = ("kind", "mode", "uid", "gid", "inode", "target", "dev", "xattrs")

    def __init__(self, kind, mode, uid, gid, inode=None, target="", dev="", xattrs=None):
        self.kind, self.mode, self.uid, self.gid = kind, mode, uid, gid
        self.inode, self.target, self.dev, self.xattrs = inode, target, dev, xattrs or {}


def clean(name):
    """A tar member's name as an absolute path (`./a/`, `a`, `/a` are all `/a`)."""
    return os.path.normpath("/" + name.lstrip("/"))


def under(path, parent):
    return path != parent and (parent == "/" or path.startswith(parent + "/"))


def remove_tree(fs, path):
    for p in [p for p in fs if p == path or under(p, path)]:
        del fs[p]


KINDS = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "chardev",
         tarfile.BLKTYPE: "blockdev", tarfile.FIFOTYPE: "fifo"}


def apply_layer(fs, data):
    """Applies one layer tar to `fs` (path -> Node) as overlayfs would show it."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        # Whiteouts and opaque markers hide what the layers below hold, never what this layer adds, so
        # they are applied before any entry of the layer.
        for m in members:
            path = clean(m.name)
            base = os.path.basename(path)
            if base == OPAQUE:
                parent = os.path.dirname(path)
                for p in [p for p in fs if under(p, parent)]:
                    del fs[p]
            elif base.startswith(WHITEOUT):
                remove_tree(fs, os.path.join(os.path.dirname(path), base[len(WHITEOUT):]))
        for m in members:
            path = clean(m.name)
            if os.path.basename(path).startswith(WHITEOUT):
                continue
            make_parents(fs, path)
            xattrs = {k[len("SCHILY.xattr."):]: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            if m.islnk():
                target = fs.get(clean(m.linkname))
                if target is None:
                    sys.exit(f"listing.py: hard link {path} to {m.linkname}, which the layer does not hold")
                old = fs.get(path)
                if old is not None and old.kind == "dir":
                    remove_tree(fs, path)
                fs[path] = target
                continue
            old = fs.get(path)
            if m.isdir():
                if old is not None and old.kind == "dir":
                    old.mode, old.uid, old.gid, old.xattrs = m.mode & 0o7777, m.uid, m.gid, xattrs
                    continue
            if old is not None:
                remove_tree(fs, path)
            if m.isfile():
                content = tar.extractfile(m).read()
                inode = (hashlib.sha256(content).hexdigest(), len(content))
                fs[path] = Node("file", m.mode & 0o7777, m.uid, m.gid, inode=inode, xattrs=xattrs)
            else:
                dev = f"{m.devmajor}:{m.devminor}" if m.ischr() or m.isblk() else ""
                fs[path] = Node(KINDS[m.type], m.mode & 0o7777, m.uid, m.gid, target=m.linkname if m.issym() else "",
                                dev=dev, xattrs=xattrs)


def make_parents(fs, path):
    parent = os.path.dirname(path)
    while parent not in fs:
        fs[parent] = Node("dir", 0o755, 0, 0)
        parent = os.path.dirname(parent)


def filesystem(layers):
    fs = {"/": Node("dir", 0o755, 0, 0)}
    for data in layers:
        apply_layer(fs, data)
    return fs


def quote(path):
    if all(c.isprintable() and not c.isspace() for c in path) and path.isascii():
        return path
    return json.dumps(path)


def describe(path, node, links):
    if node.kind == "symlink":
        words = [quote(path), "symlink", f"-> {quote(node.target)}", f"uid={node.uid}", f"gid={node.gid}"]
    else:
        words = [quote(path), node.kind, f"mode={node.mode:04o}", f"uid={node.uid}", f"gid={node.gid}"]
    if node.kind == "file":
        digest, size = node.inode
        words += [f"size={size}", f"sha256={digest[:16]}"]
        others = [p for p in links.get(id(node), []) if p != path]
        if others:
            words.append("links=" + ",".join(quote(p) for p in others))
    if node.dev:
        words.append(f"dev={node.dev}")
    for k in sorted(node.xattrs):
        v = node.xattrs[k]
        if isinstance(v, str):
            v = v.encode("utf-8", "surrogateescape")
        words.append(f"xattr.{k}={v.hex()}")
    return " ".join(words)


def listing(image, bases):
    out = []
    base_name, base_fs = "scratch", {"/": Node("dir", 0o755, 0, 0)}
    ids = image.diff_ids()
    best = 0
    for name, base in bases:
        bids = base.diff_ids()
        if len(bids) > best and ids[:len(bids)] == bids:
            best, base_name, base_fs = len(bids), name, filesystem(base.layers)
    out.append(f"base: {base_name}")
    cfg = image.config.get("config") or {}
    for field in CONFIG_FIELDS:
        value = cfg.get(field)
        if value not in (None, "", [], {}, False):
            out.append(f"config.{field}: {json.dumps(value, sort_keys=True, ensure_ascii=False)}")
    fs = filesystem(image.layers)
    links, base_links = groups(fs), groups(base_fs)
    entries = []
    for path, node in fs.items():
        line = describe(path, node, links)
        old = base_fs.get(path)
        if old is None or describe(path, old, base_links) != line:
            entries.append((path, line))
    for path in base_fs:
        if path not in fs:
            entries.append((path, f"{quote(path)} removed"))
    out += [line for _, line in sorted(entries)]
    return "\n".join(out) + "\n"


def groups(fs):
    """Paths by file object: the hard links of each file (content identity alone is not a link)."""
    by = {}
    for path, node in fs.items():
        if node.kind == "file":
            by.setdefault(id(node), []).append(path)
    return {k: sorted(v) for k, v in by.items() if len(v) > 1}


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[-1])
        return 0 if argv else 2
    image, bases, rest = argv[0], [], argv[1:]
    while rest:
        if rest[0] != "--base" or len(rest) < 2 or "=" not in rest[1]:
            sys.exit(f"listing.py: unexpected argument {rest[0]!r}; usage: {__doc__.strip().splitlines()[-1]}")
        name, path = rest[1].split("=", 1)
        bases.append((name, Image(path)))
        rest = rest[2:]
    sys.stdout.write(listing(Image(image), bases))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
