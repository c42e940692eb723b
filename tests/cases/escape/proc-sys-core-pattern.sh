# tries: write /proc/sys/kernel/core_pattern, the classic way to run a program on the host (writes the value it has)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
cat /proc/sys/kernel/core_pattern > /tmp/core_pattern
err=$( (cat /tmp/core_pattern > /proc/sys/kernel/core_pattern) 2>&1) && reached "wrote /proc/sys/kernel/core_pattern (the value it had: $(cat /tmp/core_pattern))"
denied "$err"
