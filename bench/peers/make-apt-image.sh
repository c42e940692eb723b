#!/usr/bin/env bash
# The apt workload's inputs: a Debian minbase image (debootstrap, the host's suite and mirror) as a
# one-layer OCI layout at DEST, and at REPO a flat Debian repository holding exactly the .debs that
# `apt-get install --no-install-recommends PACKAGES` needs on that image (downloaded once, inside the new
# root, from the mirror; indexed with apt-ftparchive). The image's apt sources are emptied: the workload's
# RUN points them at REPO served on 127.0.0.1. The layer is an uncompressed tar written by Python (as
# tests/fixtures/make-git-image.sh does), with no device nodes. Only Debian's mirror is contacted.
# Usage: bench/peers/make-apt-image.sh DEST REPO PACKAGES...     (bench/peers.sh caches both by hash)
set -euo pipefail
dest=${1:?usage: make-apt-image.sh DEST REPO PACKAGES...}
repo=${2:?usage: make-apt-image.sh DEST REPO PACKAGES...}
shift 2
[ $# -gt 0 ] || { echo "make-apt-image.sh: no packages given" >&2; exit 2; }
for t in debootstrap apt-ftparchive; do
  command -v $t >/dev/null || { echo "make-apt-image.sh: $t not found (Debian's debootstrap, apt-utils)" >&2; exit 1; }
done
# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null |
  grep -v '^\s*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d "$(dirname "$dest")/.apt-image-work.XXXXXX")
r=$work/rootfs
cleanup() {
  for m in proc sys; do umount -l "$r/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
if ! debootstrap --variant=minbase --components=main "$suite" "$r" "$mirror" >"$work/debootstrap.log" 2>&1; then
  echo "make-apt-image.sh: debootstrap $suite from $mirror failed; the end of its log:" >&2
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
fi
for m in proc sys; do umount -l "$r/$m" 2>/dev/null || true; done

# The .debs the install needs on exactly this root: resolved and fetched by the root's own apt.
cp /etc/resolv.conf "$r/etc/resolv.conf"
chroot "$r" apt-get clean
chroot "$r" apt-get update -qq
chroot "$r" apt-get install --download-only -y -qq --no-install-recommends "$@" >&2
rm -rf "$repo"
mkdir -p "$repo"
mv "$r"/var/cache/apt/archives/*.deb "$repo/"
(cd "$repo" && apt-ftparchive packages . > Packages && apt-ftparchive release . > ../.Release && mv ../.Release Release)
echo "$repo: $(find "$repo" -name '*.deb' | wc -l) packages, $(du -sh "$repo" | cut -f1)" >&2

# The image: no package lists, no downloaded .debs, no sources (the RUN writes its own), no resolv.conf.
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/debootstrap "$r"/var/log/*
: > "$r/etc/apt/sources.list"
rm -f "$r"/etc/apt/sources.list.d/* "$r/etc/resolv.conf"
# Packed as the tests pack their Debian images (tests/fixtures/pack-rootfs.py), tag `latest`.
python3 "$(dirname "$0")/../../tests/fixtures/pack-rootfs.py" "$dest" latest "$r" "$(dpkg --print-architecture)" \
  '["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]' /bin/sh \
  "make-apt-image.sh debootstrap --variant=minbase $suite"
