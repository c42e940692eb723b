#!/usr/bin/env bash
# The README's first command: set everything up, then show kiln building examples/secrets with a secret,
# prove the secret is in no layer, config or history, and show that rebuilds are fully cached, even
# after the secret's value changes.
set -euo pipefail
KILN_SETUP=demo source "$(dirname "$0")/setup.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The release build, as a user would run kiln: the binary lands in target/release/kiln (or under
# $CARGO_TARGET_DIR when that is set, as cargo puts it there).
say "building kiln (cargo build --release: target/release/kiln)"
cargo build --release --quiet
kiln=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/kiln
work=${KILN_DEMO_DIR:-/tmp/kiln-demo}
rm -rf "$work"; mkdir -p "$work"
export KILN_STORE=$work/store

say "making an offline busybox base image (OCI layout) from Debian's busybox-static"
tests/fixtures/make-base-image.sh "$work/base"
cp examples/secrets/secrets.json "$work/secrets.json"

build() {
  "$kiln" build --progress plain \
    --build-context base=oci-layout://"$work/base" \
    --secret id=mysecret,src="$work/secrets.json" \
    -o type=oci,dest="$work/image" examples/secrets
}

say "kiln build (the secret is mounted for one RUN only)"
build

say "skopeo inspect oci:$work/image"
skopeo inspect oci:"$work/image":latest | grep -E '"(Digest|Created|Architecture)"|title'

say "umoci unpack: the image's /app"
umoci unpack --image "$work/image":latest "$work/unpacked" >/dev/null
ls -l "$work/unpacked/rootfs/app"
cat "$work/unpacked/rootfs/app/account.txt"

say "is the secret anywhere in the image? (layers decompressed, config, manifest, history, rootfs)"
password=$(sed -n 's/.*"password": *"\([^"]*\)".*/\1/p' "$work/secrets.json")
found=0
for blob in "$work"/image/blobs/sha256/*; do
  if { gzip -dc "$blob" 2>/dev/null || cat "$blob"; } | grep -aqF "$password"; then
    echo "LEAK in blob $blob"; found=1
  fi
done
grep -rqF "$password" "$work/unpacked" && { echo "LEAK in the unpacked rootfs"; found=1; }
skopeo inspect --config oci:"$work/image":latest | grep -qF "$password" && { echo "LEAK in config/history"; found=1; }
[ "$found" = 0 ] && echo "no: the secret's bytes are in no layer, config, manifest, history or file"
echo "history:"; skopeo inspect --config oci:"$work/image":latest | grep created_by

say "rebuild: nothing changed"
build 2>&1 | grep -E "CACHED|steps run"

say "rebuild after rotating the secret's value: still nothing runs (cache keys never include secret contents)"
sed -i 's/"password": *"[^"]*"/"password": "rotated-value-42"/' "$work/secrets.json"
build 2>&1 | grep -E "steps run"

say "the same build in kiln's own language (examples/secrets/app.build): one graph, so nothing runs"
"$kiln" graph --digest examples/secrets
"$kiln" graph --digest -f examples/secrets/app.build examples/secrets
"$kiln" build --progress plain -f examples/secrets/app.build \
  --build-context base=oci-layout://"$work/base" \
  --secret id=mysecret,src="$work/secrets.json" examples/secrets 2>&1 | grep -E "steps run"

say "in .build a leak does not compile: a Secret can only be mounted"
sed 's|  .cmd(\["/app/app.sh"\])|  .label({"token": "${mysecret}"})|' examples/secrets/app.build > "$work/leak.build"
"$kiln" graph -f "$work/leak.build" examples/secrets || echo "(kiln refused it: exit $?)"

say "done: the image is at $work/image"
