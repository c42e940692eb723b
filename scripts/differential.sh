#!/usr/bin/env bash
# The reference side of the differential corpus (tests/differential/, see its README.md): builds every case
# with BuildKit (the one embedded in Debian's dockerd, docker.io 20.10, BuildKit v0.8), or with buildah
# when the case's `reference` file says so, lists each image with tests/differential/listing.py, and
# either records the listings as the expected results or compares kiln against the reference live.
#
#   scripts/differential.sh --record [CASE...]   write tests/differential/expected/CASE.txt
#   scripts/differential.sh [CASE...]            build with both, compare, print the summary line
# A CASE may be a prefix of case names (`014`, `1`).
#
# Everything runs on this host's loopback: a private dockerd on a unix socket (bench/peers/start-dockerd.sh:
# no bridge, no iptables, its own data root), a throw-away registry (tests/fixtures/start-registry.sh)
# holding the bases, which reach dockerd's image store under their short names (`FROM busybox`), so
# BuildKit never pulls; nothing contacts Docker Hub. Only Debian's mirror is used, to install packages.
# What this script started is stopped at the end (KEEP_DAEMONS=1 leaves it up for the next run).
#
# A case whose `reference` says `manual` is built by no reference: its listing was written by hand.
# Run as root on Debian, from a clone of this repository.
# Environment:
#   KILN=target/debug/kiln        the kiln to compare (default: this clone's, built with cargo build)
#   WORK=/var/tmp/kiln-differential-<clone>   bases, contexts, images, daemons' state
#   KEEP_DAEMONS=1                leave dockerd and the registry running
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
corpus=$root/tests/differential
record=0
cases=()
for a in "$@"; do
  case $a in
    --record) record=1 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "differential.sh: unknown option $a (--record)" >&2; exit 2 ;;
    *)
      # A case's name or a prefix of names (`014`, `01`).
      a=${a%/}; a=${a##*/}
      matched=0
      for d in "$corpus"/cases/"$a"*/; do
        [ -f "$d/Dockerfile" ] || continue
        cases+=("$(basename "$d")"); matched=1
      done
      [ $matched = 1 ] || { echo "differential.sh: no case $a* in tests/differential/cases/" >&2; exit 2; } ;;
  esac
done
if [ ${#cases[@]} -eq 0 ]; then
  for d in "$corpus"/cases/*/; do cases+=("$(basename "$d")"); done
fi
if [ "$(id -u)" != 0 ]; then
  echo "differential.sh: run as root (dockerd and kiln's builds need it)" >&2
  exit 1
fi

reference_of() { if [ -f "$corpus/cases/$1/reference" ]; then tr -d ' \n' < "$corpus/cases/$1/reference"; else echo buildkit; fi; }
need_buildah=0
for c in "${cases[@]}"; do [ "$(reference_of "$c")" != buildah ] || need_buildah=1; done

packages=(python3 skopeo busybox-static docker.io docker-registry apache2-utils)
[ $need_buildah = 0 ] || packages+=(buildah)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cd "$root"
if [ $record = 0 ] && [ -z "${KILN:-}" ]; then
  echo "building kiln (cargo build)" >&2
  cargo build --quiet
fi
KILN=${KILN:-$root/target/debug/kiln}
WORK=${WORK:-/var/tmp/kiln-differential-$(printf %s "$root" | sha256sum | cut -c1-8)}
DOCKER=/usr/bin/docker   # the 20.10 client that matches the daemon
DKD=$WORK/dockerd
export DOCKER_HOST=unix://$DKD/docker.sock DOCKER_BUILDKIT=1
BUILDAH=(buildah --root "$WORK/buildah/root" --runroot "$WORK/buildah/runroot" --storage-driver overlay)
mkdir -p "$WORK"

cleanup() {
  local rc=$?
  if [ "${KEEP_DAEMONS:-}" != 1 ]; then
    "$root/bench/peers/start-dockerd.sh" "$DKD" stop >/dev/null 2>&1 || true
    "$root/tests/fixtures/start-registry.sh" "$WORK/registry" stop >/dev/null 2>&1 || true
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the bases: busybox (tests/fixtures/make-base-image.sh) and those tests/differential/bases/ makes
# from it, as OCI layouts; the same bytes for kiln (oci-layout://) and the reference (through the registry).
rm -rf "$WORK/bases"; mkdir -p "$WORK/bases"
tests/fixtures/make-base-image.sh "$WORK/bases/busybox" >/dev/null
bases=(busybox)
for script in "$corpus"/bases/*.sh; do
  [ -e "$script" ] || continue
  name=$(basename "$script" .sh)
  bash "$script" "$WORK/bases/$name" "$WORK/bases/busybox" >/dev/null
  bases+=("$name")
done

REG=$(tests/fixtures/start-registry.sh "$WORK/registry" | sed -n 's/^open=//p')
if [ $record = 1 ]; then
  # Recorded listings must come from this run's bases alone: a daemon left running (KEEP_DAEMONS=1) keeps
  # its build cache and image store, so it starts afresh.
  "$root/bench/peers/start-dockerd.sh" "$DKD" stop >/dev/null 2>&1 || true
  rm -rf "$DKD"
fi
REG=$REG "$root/bench/peers/start-dockerd.sh" "$DKD"
base_args=()
for b in "${bases[@]}"; do
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/bases/$b:latest" "docker://$REG/$b:latest"
  # Straight from the registry into dockerd's image store under the short name FROM uses: BuildKit v0.8
  # in dockerd resolves a locally present image without pulling.
  skopeo copy -q --src-tls-verify=false --dest-daemon-host "$DOCKER_HOST" "docker://$REG/$b:latest" "docker-daemon:$b:latest"
  if [ $need_buildah = 1 ]; then
    "${BUILDAH[@]}" pull -q --tls-verify=false "$REG/$b:latest" >/dev/null
    "${BUILDAH[@]}" tag "$REG/$b:latest" "$b:latest"
  fi
  base_args+=(--base "$b=$WORK/bases/$b")
done

# The context a builder sees: the case directory without the harness's own files, with the modes git
# gives (0755 for directories and executables, 0644 for the rest, whatever the checkout's umask), finished
# by the case's prepare.sh (what git cannot store) under umask 022. tests/differential.rs does the same.
prepare() { # case dest
  rm -rf "$2"
  cp -a "$corpus/cases/$1" "$2"
  rm -f "$2/build-args" "$2/prepare.sh" "$2/target" "$2/reference"
  find "$2" -type d -exec chmod 0755 {} +
  find "$2" -type f -perm /111 -exec chmod 0755 {} +
  find "$2" -type f ! -perm /111 -exec chmod 0644 {} +
  if [ -f "$corpus/cases/$1/prepare.sh" ]; then (cd "$2" && umask 022 && sh "$corpus/cases/$1/prepare.sh"); fi
}

build_flags() { # case
  local flags=()
  if [ -f "$corpus/cases/$1/build-args" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      [ -z "$line" ] || flags+=(--build-arg "$line")
    done < "$corpus/cases/$1/build-args"
  fi
  if [ -f "$corpus/cases/$1/target" ]; then flags+=(--target "$(tr -d ' \n' < "$corpus/cases/$1/target")"); fi
  [ ${#flags[@]} -eq 0 ] || printf '%s\n' "${flags[@]}"
}

reference_build() { # case ctx out.tar log
  local c=$1 ctx=$2 out=$3 log=$4 flags
  mapfile -t flags < <(build_flags "$c")
  rm -f "$out"
  if [ "$(reference_of "$c")" = buildah ]; then
    # chroot isolation takes only the host network (the cases use none); no io.buildah.version label.
    "${BUILDAH[@]}" bud --isolation chroot --pull=never --identity-label=false -q -f "$ctx/Dockerfile" \
      -t "kiln-diff/$c" "${flags[@]}" "$ctx" >"$log" 2>&1 &&
      "${BUILDAH[@]}" push -q "kiln-diff/$c" "oci-archive:$out" >>"$log" 2>&1
  else
    "$DOCKER" build --network=none -q -f "$ctx/Dockerfile" -t "kiln-diff/$c" "${flags[@]}" "$ctx" >"$log" 2>&1 &&
      "$DOCKER" save -o "$out" "kiln-diff/$c" >>"$log" 2>&1
  fi
}

kiln_build() { # case ctx out log
  local c=$1 ctx=$2 out=$3 log=$4 flags contexts=()
  mapfile -t flags < <(build_flags "$c")
  for b in "${bases[@]}"; do contexts+=(--build-context "$b=oci-layout://$WORK/bases/$b"); done
  rm -rf "$out"
  "$KILN" build --store "$WORK/kiln-store" --progress plain "${contexts[@]}" "${flags[@]}" \
    -f "$ctx/Dockerfile" -o "type=oci,dest=$out" "$ctx" >"$log" 2>&1
}

known() { grep -qx "## $1" "$corpus/KNOWN_DIFFERENCES.md" 2>/dev/null; }

mkdir -p "$WORK/out" "$corpus/expected"
# The reference's listing of a case into $out.ref.txt (recorded into expected/ with --record). A case
# whose `reference` is `manual` is built by no reference here (syntax newer than BuildKit v0.8 and buildah
# 1.28, or a v0.8 bug): its listing was written by hand from current BuildKit's source and docs.
reference_listing() { # case ctx out
  local c=$1 ctx=$2 out=$3
  if [ "$(reference_of "$c")" = manual ]; then
    [ $record = 1 ] || cp "$corpus/expected/$c.txt" "$out.ref.txt"
    return 0
  fi
  prepare "$c" "$ctx"
  # Once more on failure: dockerd 20.10's ADD now and then fails to unpack under load ("Error after
  # fallback to chroot"), and passes when run again.
  if ! reference_build "$c" "$ctx" "$out.ref.tar" "$out.ref.log" &&
    ! reference_build "$c" "$ctx" "$out.ref.tar" "$out.ref.log"; then
    echo "$c: the reference build failed ($out.ref.log):" >&2; tail -5 "$out.ref.log" >&2
    return 1
  fi
  python3 "$corpus/listing.py" "$out.ref.tar" "${base_args[@]}" > "$out.ref.txt"
  # BuildKit v0.8 now and then leaves runc's empty mount stubs /etc/hosts and /etc/resolv.conf (mode
  # 0755) in a step's layer, which its own stub cleaner should have removed (current BuildKit does):
  # build it again from an empty build cache.
  if grep -Eq '^/etc/(hosts|resolv\.conf) file mode=0755 uid=0 gid=0 size=0 ' "$out.ref.txt" &&
    [ "$(reference_of "$c")" = buildkit ]; then
    echo "$c: BuildKit left mount stubs in the image; building it again" >&2
    "$DOCKER" builder prune -af >/dev/null 2>&1 || true
    reference_build "$c" "$ctx" "$out.ref.tar" "$out.ref.log" &&
      python3 "$corpus/listing.py" "$out.ref.tar" "${base_args[@]}" > "$out.ref.txt"
  fi
  if [ $record = 1 ]; then
    cp "$out.ref.txt" "$corpus/expected/$c.txt"
  elif [ -f "$corpus/expected/$c.txt" ] && ! cmp -s "$out.ref.txt" "$corpus/expected/$c.txt"; then
    echo "$c: the reference now gives a listing other than expected/$c.txt (re-record?):" >&2
    diff -u "$corpus/expected/$c.txt" "$out.ref.txt" >&2 || true
  fi
}

total=0 same=0 knowndiff=0 unexpected=0 failed=()
mkdir -p "$WORK/ctx"
for c in "${cases[@]}"; do
  total=$((total + 1))
  ctx=$WORK/ctx/$c out=$WORK/out/$c
  if ! reference_listing "$c" "$ctx" "$out"; then
    unexpected=$((unexpected + 1)); failed+=("$c"); continue
  fi
  if [ $record = 1 ]; then
    echo "$c: recorded ($(reference_of "$c"))" >&2
    same=$((same + 1)); continue
  fi
  prepare "$c" "$ctx"
  if kiln_build "$c" "$ctx" "$out.kiln" "$out.kiln.log"; then
    python3 "$corpus/listing.py" "$out.kiln" "${base_args[@]}" > "$out.kiln.txt"
  else
    echo "kiln build failed: $(tail -3 "$out.kiln.log" | tr '\n' ' ')" > "$out.kiln.txt"
  fi
  if cmp -s "$out.ref.txt" "$out.kiln.txt"; then
    same=$((same + 1))
    if known "$c"; then echo "$c: identical now; remove it from KNOWN_DIFFERENCES.md" >&2; fi
  elif known "$c"; then
    knowndiff=$((knowndiff + 1))
  else
    unexpected=$((unexpected + 1)); failed+=("$c")
    echo "$c: kiln differs from $(reference_of "$c") (- reference, + kiln):" >&2
    diff -u --label reference --label kiln "$out.ref.txt" "$out.kiln.txt" >&2 || true
  fi
done
rm -rf "$WORK/ctx"

if [ $record = 1 ]; then
  echo "differential: $total cases, $same recorded, $unexpected failed${failed:+ (${failed[*]})}"
else
  echo "differential: $total cases, $same identical, $knowndiff known differences (KNOWN_DIFFERENCES.md), $unexpected unexpected${failed:+ (${failed[*]})}"
fi
[ $unexpected = 0 ]
