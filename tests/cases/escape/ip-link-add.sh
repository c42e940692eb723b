# tries: ip link add a veth pair (named after the run's tag; deleted again if made)
# expect: denied
# host: links
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
a=${ESCAPE_TAG}a b=${ESCAPE_TAG}b
if err=$(ip link add "$a" type veth peer name "$b" 2>&1); then
  ip link show "$a"
  ip link del "$a"
  reached "created the veth pair $a/$b"
fi
denied "$err"
