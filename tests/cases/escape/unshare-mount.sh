# tries: unshare -m: a new mount namespace
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
err=$(unshare -m true 2>&1) && reached "made a new mount namespace"
denied "$err"
