# tries: RUN --network=host without --allow network.host
# expect: refused
# flags: --network=host
reached() { echo "reached: $*"; exit 1; }
case " $ESCAPE_HOST_NS " in
  *" $(readlink /proc/self/ns/net) "*) reached "ran in the host's network namespace" ;;
esac
reached "ran (in network namespace $(readlink /proc/self/ns/net)) instead of being refused"
