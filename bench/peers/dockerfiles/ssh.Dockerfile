# ssh: BuildKit-style ssh-agent forwarding (`--ssh default`) to the sshd bench/peers.sh starts on
# 127.0.0.1:SSH_PORT. Needs an ssh client in the base: the Debian image of tests/fixtures/make-git-image.sh.
ARG BASE
FROM ${BASE}
ARG SSH_PORT=2222
RUN --mount=type=ssh \
    test -S "$SSH_AUTH_SOCK" \
 && ssh-add -l > /ssh-agent-keys.txt \
 && ssh -T -p "$SSH_PORT" -o BatchMode=yes -o LogLevel=ERROR -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        root@127.0.0.1 > /ssh-result.txt \
 && grep -qx bench-sshd-ok /ssh-result.txt \
 && cat /ssh-agent-keys.txt /ssh-result.txt
RUN test -z "$SSH_AUTH_SOCK" || test ! -S "$SSH_AUTH_SOCK"
