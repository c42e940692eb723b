# tries: write a global sysctl through /proc/sys (vm/swappiness, set to the value it has)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
v=$(cat /proc/sys/vm/swappiness)
err=$( (echo "$v" > /proc/sys/vm/swappiness) 2>&1) && reached "wrote /proc/sys/vm/swappiness (the value it had, $v)"
denied "$err"
