"""Writes an OCI layout at DEST holding the image of layout SRC with its config's `config` object updated
by the JSON object PATCH (a key set to null is removed); the layers are SRC's, byte for byte.

Usage: with-config.py DEST SRC PATCH
"""
import hashlib, json, os, shutil, sys

dest, src, patch = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def blob(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(dest, "blobs", "sha256", h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)


shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.join(dest, "blobs", "sha256"))
index = json.load(open(os.path.join(src, "index.json")))
manifest = json.load(open(blob(src, index["manifests"][0]["digest"])))
config = json.load(open(blob(src, manifest["config"]["digest"])))
for layer in manifest["layers"]:
    shutil.copyfile(blob(src, layer["digest"]), blob(dest, layer["digest"]))
for key, value in patch.items():
    if value is None:
        config["config"].pop(key, None)
    else:
        config["config"][key] = value
manifest["config"]["digest"], manifest["config"]["size"] = put(canon(config))
digest, size = put(canon(manifest))
index["manifests"][0].update({"digest": digest, "size": size})
with open(os.path.join(dest, "index.json"), "wb") as f:
    f.write(canon(index))
with open(os.path.join(dest, "oci-layout"), "wb") as f:
    f.write(b'{"imageLayoutVersion":"1.0.0"}')
