# tries: write /proc/sys/kernel/hostname
# expect: denied
# host: hostname
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
err=$( (echo "${ESCAPE_TAG}-sys" > /proc/sys/kernel/hostname) 2>&1) && reached "wrote /proc/sys/kernel/hostname: the step's hostname is now $(hostname)"
denied "$err"
