#!/usr/bin/env bash
# For the ssh workload: a throw-away sshd on 127.0.0.1:PORT (default 2222) that accepts one test key and
# only answers `bench-sshd-ok`, plus an ssh-agent holding that key on DIR/agent.sock. Idempotent; prints
# the agent socket. Keys, config, pids and logs live in DIR.
# Usage: start-sshd.sh DIR [start|stop]      env: SSH_PORT=2222
set -euo pipefail
S=${1:?usage: start-sshd.sh DIR [start|stop]}
port=${SSH_PORT:-2222}
mkdir -p "$S" /run/sshd; chmod 700 "$S"
ours() { [ -f "$S/$1.pid" ] && [ "$(cat "/proc/$(cat "$S/$1.pid")/comm" 2>/dev/null)" = "$2" ]; }

if [ "${2:-start}" = stop ]; then
  ours sshd sshd && kill "$(cat "$S/sshd.pid")"
  ours agent ssh-agent && kill "$(cat "$S/agent.pid")"
  rm -f "$S/sshd.pid" "$S/agent.pid" "$S/agent.sock"
  exit 0
fi

[ -f "$S/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C kiln-bench-host -f "$S/host_ed25519"
[ -f "$S/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C kiln-bench-build-key -f "$S/id_ed25519"
cp "$S/id_ed25519.pub" "$S/authorized_keys"
cat > "$S/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $S/host_ed25519
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
ForceCommand echo bench-sshd-ok
CFG
if ! ours sshd sshd; then
  /usr/sbin/sshd -f "$S/sshd_config" -E "$S/sshd.log"
fi
export SSH_AUTH_SOCK=$S/agent.sock
if ! ours agent ssh-agent || ! ssh-add -l >/dev/null 2>&1; then
  ours agent ssh-agent && kill "$(cat "$S/agent.pid")"
  rm -f "$SSH_AUTH_SOCK"
  eval "$(ssh-agent -a "$SSH_AUTH_SOCK")" >/dev/null
  echo "$SSH_AGENT_PID" > "$S/agent.pid"
  ssh-add -q "$S/id_ed25519"
fi
# Self-test from the host, through the agent.
out=$(ssh -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o LogLevel=ERROR -o IdentitiesOnly=no root@127.0.0.1 2>&1) || true
if [ "$out" != bench-sshd-ok ]; then
  echo "start-sshd.sh: the sshd on 127.0.0.1:$port did not answer as expected: $out" >&2
  tail -5 "$S/sshd.log" >&2 || true
  exit 1
fi
echo "$SSH_AUTH_SOCK"
