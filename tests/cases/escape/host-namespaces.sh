# tries: share a namespace with the host (the harness passes the host's mnt net pid uts ipc namespace links)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
shared=
for ns in mnt net pid uts ipc; do
  mine=$(readlink "/proc/self/ns/$ns")
  case " $ESCAPE_HOST_NS " in *" $mine "*) shared="$shared $mine" ;; esac
done
[ -z "$shared" ] || reached "shares the host's$shared"
denied "own namespaces: $(for ns in mnt net pid uts ipc; do readlink /proc/self/ns/$ns; done | tr '\n' ' ')"
