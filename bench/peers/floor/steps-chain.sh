# shellcheck shell=bash disable=SC2016
# Sourced by run.py after lib.sh (see there): the commands of dockerfiles/steps-chain.Dockerfile, kept in step with it.
# steps-chain: 100 `true`s, one after another, each in namespaces of its own (the same root: no layers).
prepare() { fresh root; }
timed() {
  local _
  for _ in $(seq 100); do step root true; done
}
