# shellcheck shell=bash disable=SC2016
# Sourced by run.py after lib.sh (see there): the commands of dockerfiles/apt.Dockerfile, kept in step with it.
# apt: the same apt-get run, with the host's network (the repository is on its loopback).
prepare() { fresh root; }
timed() {
  step --host-net root "echo 'deb [trusted=yes] http://127.0.0.1:$APT_PORT/ ./' > /etc/apt/sources.list && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $APT_PACKAGES && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin"
}
