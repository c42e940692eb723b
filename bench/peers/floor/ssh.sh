# shellcheck shell=bash disable=SC2016
# Sourced by run.py after lib.sh (see there): the commands of dockerfiles/ssh.Dockerfile, kept in step with it.
# ssh: the SSH_AUTH_SOCK socket bound where BuildKit mounts it, the host's network (sshd is on its loopback).
prepare() { fresh root; }
timed() {
  step --host-net bind "$SSH_AUTH_SOCK" /run/buildkit/ssh_agent.0 env SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0 root \
    "test -S \"\$SSH_AUTH_SOCK\" && ssh-add -l > /ssh-agent-keys.txt && ssh -T -p $SSH_PORT -o BatchMode=yes -o LogLevel=ERROR -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1 > /ssh-result.txt && grep -qx bench-sshd-ok /ssh-result.txt && cat /ssh-agent-keys.txt /ssh-result.txt"
  step root 'test -z "$SSH_AUTH_SOCK" || test ! -S "$SSH_AUTH_SOCK"'
}
