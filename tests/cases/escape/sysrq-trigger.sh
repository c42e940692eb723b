# tries: write /proc/sysrq-trigger (the harmless key h, help)
# expect: denied
# requires: test -e /proc/sysrq-trigger
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
err=$( (echo h > /proc/sysrq-trigger) 2>&1) && reached "wrote h to /proc/sysrq-trigger"
denied "$err"
