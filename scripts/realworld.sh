#!/usr/bin/env bash
# Builds real-world Dockerfiles on Debian bases with kiln and with BuildKit (Debian's dockerd 20.10 and
# its embedded BuildKit v0.8) and compares the resulting images file by file (tests/realworld/SELECTED.md).
#
# 1. Makes the bases of tests/realworld/bases.tsv with tests/fixtures/make-debian-image.sh (debootstrap
#    from Debian's mirror), cached under target/tmp/ keyed on the scripts' and the table's content.
# 2. Starts a private dockerd (bench/peers/start-dockerd.sh: no bridge, no iptables, a unix socket in
#    the work dir) and loads the bases into it (skopeo; BuildKit uses a local image without pulling).
# 3. Builds each file of tests/realworld/selected.tsv with kiln (bases as `--build-context
#    REF=oci-layout://...`, RUN steps on kiln's default network) and with `docker build --network=host`
#    (the daemon has no bridge), and exports both (kiln: an OCI layout; BuildKit: docker save, each
#    layer checked against its diff id).
# 4. Lists both filesystems and configs with tests/realworld/listing.py and compares them; paths whose
#    content may differ between any two runs (its ALLOWED list) are compared without their content.
#    A config difference that selected.tsv explains (BuildKit v0.8 against today's BuildKit, which kiln
#    follows) is counted apart.
#
# RUN steps reach only what the Dockerfiles download: Debian's mirror. A `# syntax=` line is dropped
# from the copy both builders read: it would make BuildKit fetch a frontend image from Docker Hub, and
# kiln ignores it.
#
# Idempotent; stops the dockerd it started. Run as root on Debian, from a clone of this repository.
# Usage: scripts/realworld.sh [NAME-SUBSTRING...]   (only the selected files whose name contains one)
# Environment: WORK=/var/tmp/kiln-realworld (stores, dockerd, outputs), KILN=target/debug/kiln,
#              KEEP_DAEMON=1 (leave dockerd up), KEEP_IMAGES=1 (keep both exported images beside their
#              listings), SHARED=../shared/conformance/realworld
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
WORK=${WORK:-/var/tmp/kiln-realworld}
SHARED=${SHARED:-$root/../shared/conformance/realworld}
KILN=${KILN:-$root/target/debug/kiln}
DOCKER=/usr/bin/docker
DKD=$WORK/dockerd
export DOCKER_HOST=unix://$DKD/docker.sock DOCKER_BUILDKIT=1
if [ "$(id -u)" != 0 ]; then echo "realworld.sh: run as root (dockerd and debootstrap need it)" >&2; exit 1; fi
for tool in debootstrap dockerd skopeo python3; do
  command -v "$tool" >/dev/null || { echo "realworld.sh: $tool not found (apt-get install debootstrap docker.io skopeo python3)" >&2; exit 1; }
done
[ -x "$KILN" ] || cargo build --quiet
[ -d "$SHARED" ] || { echo "realworld.sh: $SHARED not found (set SHARED)" >&2; exit 1; }
mkdir -p "$WORK/out"

cleanup() {
  local rc=$?
  [ "${KEEP_DAEMON:-}" = 1 ] || bench/peers/start-dockerd.sh "$DKD" stop >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Bases. One cache directory per base, named by the hash of what makes it.
key=$(cat tests/fixtures/make-debian-image.sh tests/fixtures/pack-rootfs.py | sha256sum | cut -c1-16)
cache=$root/target/tmp/realworld-bases
mkdir -p "$cache"
declare -A base_dir   # reference -> OCI layout:tag
while IFS=$'\t' read -r name refs opts; do
  case $name in '#'* | '') continue ;; esac
  dir=$cache/$name-$(printf '%s %s %s' "$key" "$refs" "$opts" | sha256sum | cut -c1-16)
  if [ ! -f "$dir/index.json" ]; then
    echo "realworld: making base $name (debootstrap; minutes)" >&2
    rm -rf "$dir.tmp"
    # shellcheck disable=SC2086 # the options column is a word list
    KILN_DEBIAN_CACHE=$cache/debs tests/fixtures/make-debian-image.sh "$dir.tmp" latest $opts >&2
    mv "$dir.tmp" "$dir"
  fi
  for ref in $refs; do base_dir[$ref]=$dir; done
done < tests/realworld/bases.tsv

# 2. BuildKit's daemon, with every base under each of its names.
bench/peers/start-dockerd.sh "$DKD" >&2
for ref in "${!base_dir[@]}"; do
  want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "${base_dir[$ref]}/index.json")
  if [ "$(cat "$WORK/loaded-$ref" 2>/dev/null)" != "$want" ] || ! "$DOCKER" image inspect "$ref" >/dev/null 2>&1; then
    tagged=$ref
    case ${ref##*/} in *:*) ;; *) tagged=$ref:latest ;; esac   # skopeo wants a tag; docker reads none as latest
    skopeo copy -q --dest-daemon-host "$DOCKER_HOST" "oci:${base_dir[$ref]}:latest" "docker-daemon:$tagged" >&2
    echo "$want" > "$WORK/loaded-$ref"
  fi
done

kiln_contexts=()
for ref in "${!base_dir[@]}"; do kiln_contexts+=(--build-context "$ref=oci-layout://${base_dir[$ref]}:latest"); done

# BuildKit's image as a docker-archive, unpacked in OUT/buildkit, each layer checked against its diff
# id in the config. dockerd 20.10 here now and then fails on a big BuildKit-made layer ("open
# .../merged/...: no such file or directory") or writes it short (a layer tar that ends early but
# cleanly); such an export is tried again, up to three times, then buildkit_export_tar takes over.
buildkit_export() {
  local out=$1 tag=$2 try
  for try in 1 2 3; do
    # The failures come and go (the same save of the same image succeeded in other runs); each try
    # waits longer.
    sleep $((try * try))
    rm -rf "$out/buildkit" "$out/buildkit.tar"
    if "$DOCKER" save -o "$out/buildkit.tar" "$tag" 2>> "$out/buildkit.log" &&
       mkdir -p "$out/buildkit" && tar -xf "$out/buildkit.tar" -C "$out/buildkit" && rm "$out/buildkit.tar" &&
       python3 - "$out/buildkit" <<'PY' 2>> "$out/buildkit.log"
import hashlib, json, os, sys
root = sys.argv[1]
manifest = json.load(open(os.path.join(root, "manifest.json")))[0]
diff_ids = json.load(open(os.path.join(root, manifest["Config"])))["rootfs"]["diff_ids"]
for layer, want in zip(manifest["Layers"], diff_ids):
    h = hashlib.sha256()
    with open(os.path.join(root, layer), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != want:
        sys.exit(f"docker save wrote {layer} short: sha256:{h.hexdigest()}, its diff id is {want}")
PY
    then
      return 0
    fi
    echo "docker save, try $try, failed" >> "$out/buildkit.log"
  done
  rm -rf "$out/buildkit" "$out/buildkit.tar"
  return 1
}

# When docker save keeps failing: the filesystem from BuildKit's own tar exporter (the same build again,
# all cached), exported twice and taken only when both lists agree (that exporter, too, once ended a
# stream early here), and the config as dockerd stores it under the image's id (the id is its digest).
buildkit_export_tar() {
  local out=$1 tag=$2 ctx=$3 n id
  shift 3
  for n in 1 2; do
    "$DOCKER" build --network=host "$@" -f "$out/Dockerfile" -o "type=tar,dest=$out/buildkit-fs.tar" \
      "$ctx" >> "$out/buildkit.log" 2>&1 || return 1
    python3 tests/realworld/listing.py --rootfs "$out/buildkit-fs.tar" > "$out/buildkit.files.$n" || return 1
    rm -f "$out/buildkit-fs.tar"
  done
  cmp -s "$out/buildkit.files.1" "$out/buildkit.files.2" || return 1
  mv "$out/buildkit.files.1" "$out/buildkit.files" && rm "$out/buildkit.files.2"
  id=$("$DOCKER" image inspect -f '{{.Id}}' "$tag") || return 1
  cp "$DKD/data/image/overlay2/imagedb/content/sha256/${id#sha256:}" "$out/buildkit-config.json" || return 1
  [ "sha256:$(sha256sum < "$out/buildkit-config.json" | cut -d' ' -f1)" = "$id" ] || return 1
  python3 tests/realworld/listing.py --config-json "$out/buildkit-config.json" > "$out/buildkit.config"
}

# 3 and 4, one file at a time.
built=0 files_ok=0 configs_ok=0 known=0 failed=0 total=0
results=$WORK/results.tsv
: > "$results"
while IFS=$'\t' read -r file context args target why; do
  case $file in '#'* | '') continue ;; esac
  if [ $# -gt 0 ]; then
    match=no
    for want in "$@"; do case $file in *"$want"*) match=yes ;; esac; done
    [ $match = yes ] || continue
  fi
  total=$((total + 1))
  out=$WORK/out/${file%.Dockerfile}
  rm -rf "$out"; mkdir -p "$out"
  grep -v -i '^# *syntax *=' "$SHARED/$file" > "$out/Dockerfile"
  ctx=$out/empty-context; mkdir -p "$ctx"
  [ "$context" = - ] || ctx=$root/tests/realworld/contexts/$context
  flags=()
  if [ "$args" != - ]; then for a in $args; do flags+=(--build-arg "$a"); done; fi
  [ "$target" = - ] || flags+=(--target "$target")

  verdict=""
  if ! "$KILN" build --progress plain --store "$WORK/kiln-store" "${kiln_contexts[@]}" "${flags[@]}" \
      -f "$out/Dockerfile" -o "type=oci,dest=$out/kiln" "$ctx" > "$out/kiln.log" 2>&1; then
    verdict="kiln failed ($out/kiln.log)"
  fi
  if ! "$DOCKER" build --network=host "${flags[@]}" -f "$out/Dockerfile" -t "kiln-realworld:$total" \
      "$ctx" > "$out/buildkit.log" 2>&1; then
    verdict="${verdict:+$verdict; }BuildKit failed ($out/buildkit.log)"
  elif ! buildkit_export "$out" "kiln-realworld:$total" &&
       ! buildkit_export_tar "$out" "kiln-realworld:$total" "$ctx" "${flags[@]}"; then
    verdict="${verdict:+$verdict; }BuildKit's image could not be exported ($out/buildkit.log)"
  fi
  if [ -n "$verdict" ]; then
    failed=$((failed + 1))
  else
    built=$((built + 1))
    python3 tests/realworld/listing.py "$out/kiln" > "$out/kiln.files"
    python3 tests/realworld/listing.py "$out/kiln" --config > "$out/kiln.config"
    if [ -d "$out/buildkit" ]; then
      python3 tests/realworld/listing.py "$out/buildkit" > "$out/buildkit.files"
      python3 tests/realworld/listing.py "$out/buildkit" --config > "$out/buildkit.config"
    fi
    files_same=yes config_same=yes
    # BuildKit before 0.11 leaves in the layer the empty stubs runc makes to mount /etc/hosts and
    # /etc/resolv.conf on when the image has none; 0.11 removes them again (executor/stubs.go), and
    # kiln never writes them. Such a stub is left out of BuildKit's list when kiln's has no such path.
    awk 'NR == FNR { kiln[$1] = 1; next }
         $1 ~ /^\/etc\/(hosts|resolv\.conf)$/ && !($1 in kiln) && $0 ~ / file mode=0755 uid=0 gid=0 size=0 / { next }
         { print }' "$out/kiln.files" "$out/buildkit.files" > "$out/buildkit.files.cmp"
    stubs=$(($(wc -l < "$out/buildkit.files") - $(wc -l < "$out/buildkit.files.cmp")))
    diff -u "$out/buildkit.files.cmp" "$out/kiln.files" > "$out/files.diff" || files_same=no
    diff -u "$out/buildkit.config" "$out/kiln.config" > "$out/config.diff" || config_same=no
    [ $files_same = no ] || files_ok=$((files_ok + 1))
    if [ $config_same = yes ]; then
      configs_ok=$((configs_ok + 1))
    elif [ -n "${why:-}" ] && [ "$why" != - ]; then
      # A config difference selected.tsv explains: BuildKit v0.8 against today's BuildKit, which kiln follows.
      known=$((known + 1)); config_same=known
    fi
    case $files_same/$config_same in
      yes/yes) verdict="identical ($(wc -l < "$out/kiln.files") entries)" ;;
      yes/known) verdict="identical file list ($(wc -l < "$out/kiln.files") entries); config differs as known: $why" ;;
      *) verdict="differs ($(grep -c '^[-+]/' "$out/files.diff" || true) file lines, $(grep -c '^[-+][A-Z]' "$out/config.diff" || true) config lines; $out/*.diff)" ;;
    esac
    if [ $files_same = yes ] && [ "$stubs" != 0 ]; then
      verdict="$verdict; BuildKit v0.8 also left $stubs empty mount stub(s), which BuildKit 0.11 removes"
    fi
  fi
  # The listings and diffs stay; the images (hundreds of MB each) only with KEEP_IMAGES=1.
  [ "${KEEP_IMAGES:-}" = 1 ] || rm -rf "$out/kiln" "$out/buildkit"
  printf '%s\t%s\n' "$file" "$verdict" | tee -a "$results"
  "$DOCKER" rmi -f "kiln-realworld:$total" >/dev/null 2>&1 || true
done < tests/realworld/selected.tsv

echo "realworld: $total selected, $built built by both, $files_ok identical file lists, $configs_ok identical configs (+$known known BuildKit v0.8 differences), $failed failed"
