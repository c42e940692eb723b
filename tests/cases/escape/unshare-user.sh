# tries: unshare -U: a new user namespace
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
err=$(unshare -U true 2>&1) && reached "made a new user namespace"
denied "$err"
