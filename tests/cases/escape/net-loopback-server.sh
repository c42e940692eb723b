# tries: connect to a TCP server listening on the host's 127.0.0.1 (the harness's; it counts connections)
# expect: denied
# host: server
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
out=$(timeout 5 nc 127.0.0.1 "$ESCAPE_PORT" </dev/null 2>&1)
case $out in
  *kiln-escape-server*) reached "the host's server on 127.0.0.1:$ESCAPE_PORT answered: $out" ;;
esac
denied "127.0.0.1:$ESCAPE_PORT: ${out:-no answer}"
