#!/usr/bin/env bash
# The escape suite (tests/cases/escape/, judged for kiln by tests/it/escape.rs) under kiln and under BuildKit
# (the one embedded in Debian's dockerd, docker.io 20.10, BuildKit v0.8): every case as the RUN step of its
# own build, on the same busybox base image bytes, with the same host checks after each. Prints a markdown
# table (case, what it tries, kiln's verdict, BuildKit's verdict); the steps' own words go to
# $WORK/results/<time>/details.md. See bench/README.md.
#
# BuildKit's default network needs a bridge: this script makes its own, kiln-esc0 (198.18.254.1/24, the
# benchmarking range), and gives it to a private dockerd (bench/peers/start-dockerd.sh with BRIDGE=) that
# still adds no iptables rules and turns on no forwarding, so its steps reach this host's bridge address and
# nothing beyond. Both are removed at the end.
#
# Run as root on Debian, from a clone of this repository. Only Debian's package mirror is contacted.
# Usage: bench/escape.sh
# Environment:
#   KILN=target/debug/kiln      the kiln to judge (default: this clone's, built with cargo build)
#   TOOLS="kiln buildkit"       a subset
#   CASES="caps hostname"       a subset of the case names
#   WORK=/var/tmp/kiln-escape   base image, stores, dockerd's state, results
#   KEEP_DAEMONS=1              leave dockerd and its bridge up at the end
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export ROOT=$root WORK=${WORK:-/var/tmp/kiln-escape} TOOLS=${TOOLS:-kiln buildkit} CASES=${CASES:-}
for t in $TOOLS; do
  case $t in kiln | buildkit) ;; *) echo "escape.sh: unknown tool $t (kiln, buildkit)" >&2; exit 2 ;; esac
done
has() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ "$(id -u)" != 0 ]; then
  echo "escape.sh: run as root (dockerd and kiln's builds need it)" >&2
  exit 1
fi

packages=(python3 skopeo busybox-static iproute2)
has buildkit "$TOOLS" && packages+=(docker.io)
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
if [ -z "${KILN:-}" ] && has kiln "$TOOLS"; then
  echo "building kiln (cargo build)" >&2
  cargo build --quiet
  KILN=$root/target/debug/kiln
fi
export KILN=${KILN:-}

export DKD=$WORK/dockerd BRIDGE=kiln-esc0 DOCKER_IMAGE=kiln-escape-busybox:latest
mkdir -p "$WORK"
cleanup() {
  local rc=$?
  if [ "${KEEP_DAEMONS:-}" != 1 ]; then
    "$here/peers/start-dockerd.sh" "$DKD" stop >/dev/null 2>&1 || true
    ip link del "$BRIDGE" 2>/dev/null || true
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The busybox base image, written by Python: the same bytes for both tools.
rm -rf "$WORK/oci/busybox"
tests/fixtures/make-base-image.sh "$WORK/oci/busybox" >&2
export BASE_OCI=$WORK/oci/busybox

if has buildkit "$TOOLS"; then
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add 198.18.254.1/24 dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  "$here/peers/start-dockerd.sh" "$DKD"
  # Straight into dockerd's image store (no registry, never Docker Hub); BuildKit resolves FROM locally.
  skopeo copy -q --dest-daemon-host "unix://$DKD/docker.sock" "oci:$BASE_OCI:latest" "docker-daemon:$DOCKER_IMAGE"
fi

export RESULTS=$WORK/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet 2>/dev/null || echo ' (modified)')"
  echo "kernel: $(uname -r)"
  [ -z "$KILN" ] || echo "kiln: $KILN ($("$KILN" --version))"
  echo "docker.io: $(dpkg-query -W -f='${Version}' docker.io 2>/dev/null || echo 'not installed')"
} > "$RESULTS/env.txt"
python3 "$here/escape/run.py"
echo "results: $RESULTS (env.txt, table.md, details.md)" >&2
