#!/usr/bin/env bash
# Installs what kiln's demo and tests need on a Debian machine, idempotently: Debian packages (only the
# missing ones; `apt-get update` only when something is missing) and kiln's Rust dependencies.
# Sourced by demo.sh and test.sh.
set -euo pipefail

kiln_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# demo.sh sets KILN_SETUP=demo: the demo needs its base image, its two judges and a step network only, so
# a first look does not wait for the tests' servers, daemons and validators.
setup=${KILN_SETUP:-test}
# busybox-static: the offline base image; skopeo, umoci: independent judges of kiln's OCI output;
# python3: writes the base image fixture and, with its standard library only, lists the images of the
# differential corpus (tests/differential/listing.py); tar, procps: used by tests; slirp4netns: the
# user-mode network stack that gives a RUN step's own network namespace its outbound path (kiln runs it
# for every default-network step; rootless podman uses the same helper). The tests' own: openssh-client: a real
# ssh-agent (and ssh-add inside test images) for the SSH forwarding tests; docker-registry, apache2-utils: real
# registries (one with htpasswd auth) on loopback for the push/pull tests; uidmap: the setuid
# newuidmap/newgidmap that give rootless kiln its /etc/subuid ranges (and the rootless tests their user).
packages=(busybox-static skopeo umoci python3 tar procps ca-certificates slirp4netns)
if [ "$setup" = test ]; then
packages+=(openssh-client docker-registry apache2-utils uidmap)
# The SSH clone tests: openssh-server (a real sshd on loopback), git (the repository it serves),
# debootstrap and debian-archive-keyring (their Debian base image with git and ssh, made from the Debian mirror).
packages+=(openssh-server git debootstrap debian-archive-keyring)
# The remote execution tests: PostgreSQL for BuildGrid's scheduler (a private cluster per test run), and
# python3-venv for BuildGrid's own virtualenv (below).
packages+=(postgresql python3-venv)
# The remote TLS tests: openssl makes their CA, server and client certificates
# (tests/fixtures/start-buildgrid-tls.sh; the JWT comes from BuildGrid's own PyJWT).
packages+=(openssl)
# The ADD tests: xz-utils, bzip2, zstd make the compressed tars kiln must unpack (kiln itself uses Rust crates).
packages+=(xz-utils bzip2 zstd)
# The --load tests: a Docker Engine (docker.io, started on a private socket with its own data root) and
# podman (its Docker-compatible API service, with its own storage root) to load images into.
packages+=(docker.io podman)
# --platform: qemu-user-static runs steps for foreign architectures through binfmt_misc, whose handlers
# binfmt-support's update-binfmts registers (below).
packages+=(qemu-user-static binfmt-support)
# The arm64 busybox base image of the --platform tests is made from Debian's busybox-static:arm64, which
# apt downloads only once the architecture is known to dpkg.
if [ "$(id -u)" = 0 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi
fi

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

if [ "$setup" = test ]; then
# Debian's qemu-user-static registers its binfmt_misc handlers (with the F flag kiln needs, which lets
# the emulator be found from inside a step) only when it believes it is not in a container: register the
# one the tests use here, mounting binfmt_misc first where nothing has.
if [ "$(id -u)" = 0 ]; then
  binfmt=/proc/sys/fs/binfmt_misc
  [ -e "$binfmt/status" ] || mount -t binfmt_misc binfmt_misc "$binfmt" ||
    echo "cannot mount binfmt_misc: the --platform tests of foreign architectures will fail" >&2
  if [ -e "$binfmt/status" ] && [ ! -e "$binfmt/qemu-aarch64" ]; then
    update-binfmts --import qemu-aarch64
  fi
fi

# slirp4netns opens /dev/net/tun as the user running kiln; udev makes it 0666, as rootless builds (and
# their tests) need, but a machine or container without udev may leave it 0600.
if [ "$(id -u)" = 0 ] && [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  chmod 0666 /dev/net/tun
fi

# BuildGrid, the REAPI server of the remote execution tests, from PyPI into a virtualenv of its own
# (pinned: 0.4.4 is the last release for Python 3.11, Debian 12's). Only when it is not there yet.
export KILN_BUILDGRID=${KILN_BUILDGRID:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tests/buildgrid-0.4.4}
if ! "$KILN_BUILDGRID/bin/bgd" --help >/dev/null 2>&1; then
  echo "installing BuildGrid 0.4.4 into $KILN_BUILDGRID" >&2
  rm -rf "$KILN_BUILDGRID"
  python3 -m venv "$KILN_BUILDGRID"
  "$KILN_BUILDGRID/bin/pip" install -q --disable-pip-version-check 'buildgrid[database]==0.4.4' >&2
fi

# The attestation tests' judges, from PyPI into a virtualenv of their own: `pyspdxtools` (spdx-tools, the
# SPDX project's validator) for the SBOMs, `jsonschema` for the provenance against the in-toto and SLSA
# schemas checked in under tests/attest/. Only when they are not there yet.
export KILN_SPDX_TOOLS=${KILN_SPDX_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tests/spdx-tools-0.8.3}
if ! "$KILN_SPDX_TOOLS/bin/pyspdxtools" --help >/dev/null 2>&1 ||
  ! "$KILN_SPDX_TOOLS/bin/python" -c 'import jsonschema, rfc3987' 2>/dev/null; then
  echo "installing spdx-tools 0.8.3 and jsonschema into $KILN_SPDX_TOOLS" >&2
  rm -rf "$KILN_SPDX_TOOLS"
  python3 -m venv "$KILN_SPDX_TOOLS"
  "$KILN_SPDX_TOOLS/bin/pip" install -q --disable-pip-version-check 'spdx-tools==0.8.3' 'jsonschema==4.23.0' 'rfc3987==1.3.8' >&2
fi
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is not on PATH; install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
cd "$kiln_root"
