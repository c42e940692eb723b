# tries: see the host's sockets: the harness's TCP listener in /proc/net/tcp, its abstract unix socket in /proc/net/unix
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
seen=
port=$(printf '%04X' "$ESCAPE_PORT")
grep -q ":$port 00000000:0000 0A" /proc/net/tcp && seen="$seen tcp 127.0.0.1:$ESCAPE_PORT (listening);"
grep -q "@$ESCAPE_UNIX\$" /proc/net/unix && seen="$seen unix @$ESCAPE_UNIX;"
[ -z "$seen" ] || reached "sees the host's sockets:$seen"
denied "neither the host's TCP listener nor its abstract socket is visible"
