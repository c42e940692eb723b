#!/usr/bin/env bash
# Installs what kiln's demo and tests need on a Debian machine, idempotently: Debian packages (only the
# missing ones; `apt-get update` only when something is missing) and kiln's Rust dependencies.
# Sourced by demo.sh and test.sh.
set -euo pipefail

kiln_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# busybox-static: the offline base image; skopeo, umoci: independent judges of kiln's OCI output;
# python3: writes the base image fixture; tar, procps: used by tests; openssh-client: a real ssh-agent
# (and ssh-add inside test images) for the SSH forwarding tests; docker-registry, apache2-utils: real
# registries (one with htpasswd auth) on loopback for the push/pull tests; uidmap: the setuid
# newuidmap/newgidmap that give rootless kiln its /etc/subuid ranges (and the rootless tests their user).
packages=(busybox-static skopeo umoci python3 tar procps ca-certificates openssh-client docker-registry apache2-utils uidmap)
# The SSH clone tests: openssh-server (a real sshd on loopback), git (the repository it serves),
# debootstrap and debian-archive-keyring (their Debian base image with git and ssh, made from the Debian mirror).
packages+=(openssh-server git debootstrap debian-archive-keyring)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "installing Debian packages needs root; missing: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is not on PATH; install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
cd "$kiln_root"
