#!/usr/bin/env bash
# A private, loopback-only dockerd (Debian's docker.io 20.10, with its embedded BuildKit) for the peer
# benchmark. It never touches host networking: no bridge, no iptables/ip6tables/masquerade rules, no
# ip_forward sysctl, no TCP listener (a unix socket only), and its own config, data-root, exec-root and
# pidfile, so nothing under /var/lib/docker, /var/run or /etc/docker is used. dockerd starts its own
# ("managed") containerd under DKD/exec.
# Idempotent: a daemon of ours that already answers is left alone. `stop` stops only the pid recorded in
# DKD/dockerd.pid (if it is a dockerd) and waits for it and its managed containerd.
# Usage: start-dockerd.sh DKD [start|stop|status]     env: REG=127.0.0.1:PORT (an insecure registry)
#        BRIDGE=NAME: attach containers (BuildKit's default network) to this existing bridge, which the
#        caller made and owns; still no iptables rules and no forwarding, so they reach only this host.
# Then:  DOCKER_HOST=unix://DKD/docker.sock DOCKER_BUILDKIT=1 /usr/bin/docker build --network=none ...
set -euo pipefail
DKD=${1:?usage: start-dockerd.sh DKD [start|stop|status]}
DOCKER=/usr/bin/docker   # the 20.10 client that matches the daemon (not a newer one earlier in PATH)
SOCK=$DKD/docker.sock PIDF=$DKD/dockerd.pid LOG=$DKD/dockerd.log
mkdir -p "$DKD"

alive() { [ -f "$PIDF" ] && [ "$(cat "/proc/$(cat "$PIDF")/comm" 2>/dev/null)" = dockerd ]; }
answers() { DOCKER_HOST=unix://$SOCK "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

case ${2:-start} in
stop)
  if alive; then
    pid=$(cat "$PIDF")
    ctd=$(pgrep -P "$pid" -x containerd || true)   # the managed containerd, a child of dockerd
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then echo "dockerd $pid did not stop in 30 s" >&2; exit 1; fi
    for c in $ctd; do for _ in $(seq 50); do kill -0 "$c" 2>/dev/null || break; sleep 0.2; done; done
    echo "stopped dockerd $pid"
  fi
  rm -f "$PIDF"
  exit 0 ;;
status)
  if alive && answers; then echo "dockerd $(cat "$PIDF") up on unix://$SOCK"; else echo down; exit 1; fi
  exit 0 ;;
start) ;;
*) echo "usage: $0 DKD [start|stop|status]" >&2; exit 2 ;;
esac

if alive && answers; then exit 0; fi
if answers; then echo "something else answers on $SOCK; not starting" >&2; exit 1; fi
rm -f "$SOCK" "$DKD/dockerd-own.pid"

# Our own daemon.json, so /etc/docker/daemon.json (if any) is not read. 127.0.0.0/8 is an insecure
# (plain HTTP) registry range for dockerd anyway; the entry only makes it explicit.
cat > "$DKD/daemon.json" <<JSON
{
  "features": { "buildkit": true },
  "insecure-registries": [${REG:+\"$REG\"}]
}
JSON
mkdir -p "$DKD/data" "$DKD/exec"
setsid nohup dockerd \
  --config-file "$DKD/daemon.json" \
  --data-root "$DKD/data" --exec-root "$DKD/exec" --pidfile "$DKD/dockerd-own.pid" \
  -H "unix://$SOCK" \
  --bridge="${BRIDGE:-none}" --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
  --userland-proxy=false --storage-driver overlay2 --log-level warn \
  >"$LOG" 2>&1 </dev/null &
pid=$!
# Our record; dockerd's own pidfile is a separate file (it refuses to start if its pidfile names a live
# process, itself included).
echo "$pid" > "$PIDF"
for _ in $(seq 150); do
  if answers; then exit 0; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
echo "dockerd failed to start; the end of $LOG:" >&2; tail -20 "$LOG" >&2
kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
rm -f "$PIDF"; exit 1
