# tries: set the hostname (the harness checks that the host's is unchanged)
# expect: denied
# host: hostname
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
err=$(hostname "${ESCAPE_TAG}-h" 2>&1) && reached "sethostname worked: the step's hostname is now $(hostname)"
denied "$err"
