# tries: write /sys (a block device's queue/read_ahead_kb, set to the value it has; mounts sysfs first if /sys is empty)
# expect: denied
# host: mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
na() { echo "n/a: $*"; exit 3; }
if [ ! -d /sys/block ]; then
  mkdir -p /sys
  err=$(mount -t sysfs sysfs /sys 2>&1) && echo "mounted sysfs on /sys" || denied "no /sys, and mounting one failed: $err"
fi
f=$(ls /sys/block/*/queue/read_ahead_kb 2>/dev/null | head -n 1)
[ -n "$f" ] || na "no block device in /sys/block"
v=$(cat "$f")
err=$( (echo "$v" > "$f") 2>&1) && reached "wrote $f (the value it had, $v)"
denied "$err"
