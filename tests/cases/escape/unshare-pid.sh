# tries: unshare -p -f: a new pid namespace
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
err=$(unshare -p -f true 2>&1) && reached "made a new pid namespace"
denied "$err"
