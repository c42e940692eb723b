# Sourced by bench/peers.sh for the pull and push workloads: the big image of make-big-image.sh, cached
# under WORK by the script's hash, pushed to the loopback registry REG as bench/big:1 and bench/big2:1
# with its digests kept. Needs skopeo and curl (the raw floor's client).
if ! command -v curl >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null
fi
big_hash=$(sha256sum "$peers/make-big-image.sh" | cut -c1-16)
BIG_OCI=$WORK/cache-big/big-image-$big_hash
if [ ! -f "$BIG_OCI/index.json" ]; then
  rm -rf "$WORK/cache-big"; mkdir -p "$WORK/cache-big"
  echo "making the big base image (debootstrap with build tools, a few minutes)" >&2
  "$peers/make-big-image.sh" "$BIG_OCI.tmp" >&2
  mv "$BIG_OCI.tmp" "$BIG_OCI"
fi
if [ -z "$REG" ]; then
  REG=$(tests/fixtures/start-registry.sh "$WORK/registry" | sed -n 's/^open=//p')
fi
for tag in big big2; do
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$BIG_OCI:$tag" "docker://$REG/bench/$tag:1"
done
export BIG_OCI REG
