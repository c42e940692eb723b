#!/usr/bin/env bash
# kiln against its peers, BuildKit (the one embedded in Debian's dockerd) and buildah, in the same run:
# every workload in every scenario (cold, warm, touch, edit), tools alternating within each cell, on the
# same base image bytes and the same contexts, and each cold cell's floor (the same RUN commands run
# directly, bench/peers/floor/). Prints markdown tables of medians, kiln's ratio to the faster peer and its
# overhead over the floor; raw times, logs and versions go to $WORK/results/<time>/. See bench/README.md.
#
# Run as root on Debian, from a clone of this repository (after scripts/setup.sh, or not: this script
# installs what it needs, idempotently). Only Debian's package mirror is contacted (apt, debootstrap, and
# once, for the apt workload, the .debs of its local repository).
#
# Usage: bench/peers.sh
# Environment:
#   RUNS=5                                      timed runs per tool and cell
#   WORKLOADS="secret multistage copyheavy ssh" a subset, in order, of those and: steps apt monorepo pull push
#   TOOLS="kiln buildkit buildah"               a subset
#   FLOOR=1                                     0: no floor column
#   MONOREPO_TARGETS=10000                      the monorepo workload's size
#   APT_PORT=8790                               the apt repository's port on 127.0.0.1
#   APT_PACKAGES="python3 python3-pip python3-venv"  what the apt workload installs
#   WORK=/var/tmp/kiln-peers                    inputs, stores, daemons' state, results
#   SSH_PORT=2222                               the throw-away sshd's port on 127.0.0.1
#   BUILD_TIMEOUT=900                           seconds before a build counts as failed
#   KEEP_DAEMONS=1                              leave the registry, sshd and dockerd running at the end
#   KILN=target/release/kiln                    the kiln to time (e.g. a wrapper that runs it under perf stat)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
peers=$here/peers

export WORK=${WORK:-/var/tmp/kiln-peers} RUNS=${RUNS:-5} SSH_PORT=${SSH_PORT:-2222} FLOOR=${FLOOR:-1}
export MONOREPO_TARGETS=${MONOREPO_TARGETS:-10000} APT_PORT=${APT_PORT:-8790}
export APT_PACKAGES=${APT_PACKAGES:-python3 python3-pip python3-venv}
export WORKLOADS=${WORKLOADS:-secret multistage copyheavy ssh} TOOLS=${TOOLS:-kiln buildkit buildah}
for w in $WORKLOADS; do
  case $w in secret | multistage | copyheavy | ssh | steps | apt | monorepo | pull | push) ;; *) echo "peers.sh: unknown workload $w" >&2; exit 2 ;; esac
done
for t in $TOOLS; do
  case $t in kiln | buildkit | buildah) ;; *) echo "peers.sh: unknown tool $t (kiln, buildkit, buildah)" >&2; exit 2 ;; esac
done
case $RUNS in '' | *[!0-9]* | 0) echo "peers.sh: RUNS must be a positive number" >&2; exit 2 ;; esac
has() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ "$(id -u)" != 0 ]; then
  echo "peers.sh: run as root (dockerd, buildah and kiln's builds need it)" >&2
  exit 1
fi

# ---- packages: kiln's own (scripts/setup.sh, which also checks for cargo), then the peers'
# shellcheck source=../scripts/setup.sh
source "$root/scripts/setup.sh"
peer_packages=(python3 skopeo busybox-static)
has buildah "$TOOLS" && peer_packages+=(buildah)
# docker.io brings dockerd, containerd and runc; dockerd's BuildKit is the peer.
has buildkit "$TOOLS" && peer_packages+=(docker.io)
has apt "$WORKLOADS" && peer_packages+=(debootstrap apt-utils)
missing=()
for p in "${peer_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cd "$root"
echo "building kiln (cargo build --release)" >&2
cargo build --release --quiet
export KILN=${KILN:-$root/target/release/kiln}

# ---- cleanup of what runs under $WORK (registry, sshd, dockerd), on any exit
mkdir -p "$WORK"
py='' http=''
cleanup() {
  local rc=$?
  # The timed part runs in the background so that a signal reaches this trap at once; stop it first
  # (it kills the build in flight).
  if [ -n "$py" ] && kill -0 "$py" 2>/dev/null; then kill -TERM "$py"; wait "$py" 2>/dev/null || true; fi
  # A buildah build killed halfway leaves its working container mounted.
  if [ -d "$WORK/buildah/root" ] && command -v buildah >/dev/null; then
    buildah --root "$WORK/buildah/root" --runroot "$WORK/buildah/runroot" --storage-driver overlay rm -a >/dev/null 2>&1 || true
  fi
  if [ -n "$http" ]; then kill -TERM "$http" 2>/dev/null || true; fi
  if [ "${KEEP_DAEMONS:-}" != 1 ]; then
    "$peers/start-dockerd.sh" "$WORK/dockerd" stop >/dev/null 2>&1 || true
    "$peers/start-sshd.sh" "$WORK/ssh" stop >/dev/null 2>&1 || true
    "$root/tests/fixtures/start-registry.sh" "$WORK/registry" stop >/dev/null 2>&1 || true
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- inputs, the same bytes on every run
echo "making the contexts and the secret" >&2
python3 "$peers/make-context.py" "$WORK" >&2

# The busybox base image, written by Python (tests/fixtures/make-base-image.sh): the same digest every run.
rm -rf "$WORK/oci/busybox"
tests/fixtures/make-base-image.sh "$WORK/oci/busybox" >&2
export BUSYBOX_OCI=$WORK/oci/busybox

# The Debian base for the ssh workload: tests/fixtures/make-git-image.sh (debootstrap minbase + git +
# openssh-client), cached under the script's hash; the tests' own cache in this clone's target/ serves too.
if has ssh "$WORKLOADS"; then
  hash=$(sha256sum tests/fixtures/make-git-image.sh | cut -c1-16)
  DEBIAN_OCI=$WORK/cache/git-image-$hash
  if [ ! -f "$DEBIAN_OCI/index.json" ]; then
    rm -rf "$WORK"/cache/git-image-*; mkdir -p "$WORK/cache"
    if [ -f "target/tmp/git-image-$hash/index.json" ]; then
      cp -a "target/tmp/git-image-$hash" "$DEBIAN_OCI.tmp"
    else
      echo "making the Debian base image (debootstrap, about a minute)" >&2
      tests/fixtures/make-git-image.sh "$DEBIAN_OCI.tmp" >&2
    fi
    mv "$DEBIAN_OCI.tmp" "$DEBIAN_OCI"
  fi
  export DEBIAN_OCI
else
  export DEBIAN_OCI=
fi

# The apt workload's Debian minbase and the local repository of the .debs its RUN installs
# (peers/make-apt-image.sh), cached under the hash of the scripts and the package list.
export APT_OCI=
if has apt "$WORKLOADS"; then
  hash=$(cat "$peers/make-apt-image.sh" tests/fixtures/pack-rootfs.py <(echo "$APT_PACKAGES") | sha256sum | cut -c1-16)
  APT_OCI=$WORK/cache/apt-image-$hash APT_REPO=$WORK/cache/apt-repo-$hash
  if [ ! -f "$APT_OCI/index.json" ] || [ ! -f "$APT_REPO/Release" ]; then
    rm -rf "$WORK"/cache/apt-image-* "$WORK"/cache/apt-repo-*; mkdir -p "$WORK/cache"
    echo "making the apt workload's Debian base and repository (debootstrap, a few minutes)" >&2
    # shellcheck disable=SC2086 # a list of package names
    "$peers/make-apt-image.sh" "$APT_OCI.tmp" "$APT_REPO" $APT_PACKAGES >&2
    mv "$APT_OCI.tmp" "$APT_OCI"
  fi
  # Loopback only; every tool's step reaches it through the host's network.
  python3 -m http.server --bind 127.0.0.1 --directory "$APT_REPO" "$APT_PORT" >"$WORK/apt-http.log" 2>&1 &
  http=$!
  for _ in $(seq 50); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
      "http://127.0.0.1:$APT_PORT/Release" 2>/dev/null && break
    sleep 0.1
  done
  kill -0 "$http" || { echo "peers.sh: the apt repository's server did not start (port $APT_PORT)" >&2; exit 1; }
fi

# The same image bytes for the peers: docker cannot read an OCI layout, so both layouts are pushed as
# they are to a loopback-only registry. --preserve-digests: without it skopeo gzips the Debian image's
# uncompressed layer on the way (a new manifest, a different image).
export REG=
if has buildkit "$TOOLS" || has buildah "$TOOLS"; then
  REG=$(tests/fixtures/start-registry.sh "$WORK/registry" | sed -n 's/^open=//p')
  push() { # layout name
    skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$1:latest" "docker://$REG/$2:latest"
    local want got
    want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$1/index.json")
    got=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$REG/$2:latest" | sha256sum | cut -d' ' -f1)
    if [ "$want" != "$got" ]; then
      echo "peers.sh: $REG/$2 has manifest $got, the layout $want: not the same image" >&2
      exit 1
    fi
    echo "$REG/$2:latest = $1 ($want)" >&2
  }
  push "$BUSYBOX_OCI" busybox
  [ -z "$DEBIAN_OCI" ] || push "$DEBIAN_OCI" debian
  [ -z "$APT_OCI" ] || push "$APT_OCI" apt
fi
# The pull and push workloads' big image (bench/peers/bigimage.sh): made once, pushed as bench/big, bench/big2.
if has pull "$WORKLOADS" || has push "$WORKLOADS"; then
  # shellcheck source=peers/bigimage.sh
  source "$peers/bigimage.sh"
fi

if has ssh "$WORKLOADS"; then
  SSH_AUTH_SOCK=$("$peers/start-sshd.sh" "$WORK/ssh")
  export SSH_AUTH_SOCK
fi

export DKD=$WORK/dockerd
if has buildkit "$TOOLS"; then
  REG=$REG "$peers/start-dockerd.sh" "$DKD"
fi

# ---- the timed part
RESULTS=$WORK/results/$(date +%Y%m%d-%H%M%S)
export RESULTS
export DOCKERFILES=$peers/dockerfiles
mkdir -p "$RESULTS"
ln -sfn "$RESULTS" "$WORK/results/latest"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet 2>/dev/null || echo ' (modified)')"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "work: $WORK on $(df -T "$WORK" | awk 'NR == 2 {print $2}')"
  echo "load at start: $(cat /proc/loadavg)"
  echo "kiln: $("$KILN" --version)"
  for p in buildah docker.io containerd runc docker-registry skopeo busybox-static; do
    echo "$p: $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo 'not installed')"
  done
  echo "RUNS=$RUNS WORKLOADS=$WORKLOADS TOOLS=$TOOLS FLOOR=$FLOOR MONOREPO_TARGETS=$MONOREPO_TARGETS"
  echo "APT_PACKAGES=$APT_PACKAGES"
} > "$RESULTS/env.txt"
rc=0
python3 "$peers/run.py" &
py=$!
wait "$py" || rc=$?
py=
if has pull "$WORKLOADS" || has push "$WORKLOADS"; then
  ROOT=$root python3 "$peers/pullpush.py" > "$RESULTS/pullpush.md" & py=$!
  wait "$py" || rc=$?
  py=
  cat "$RESULTS/pullpush.md"
fi
echo "load at end: $(cat /proc/loadavg)" >> "$RESULTS/env.txt"
echo "results: $RESULTS (env.txt, times.tsv, summary.tsv, table.md, results.json, logs/)"
exit $rc
