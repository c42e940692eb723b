# tries: unshare -n: a new net namespace
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
err=$(unshare -n true 2>&1) && reached "made a new net namespace"
denied "$err"
