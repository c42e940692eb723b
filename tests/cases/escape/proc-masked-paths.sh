# tries: read the other paths Docker masks: /proc/timer_list timer_stats sched_debug latency_stats acpi scsi, /sys/firmware, /sys/devices/virtual/powercap
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
read=
for p in /proc/timer_list /proc/timer_stats /proc/sched_debug /proc/latency_stats /proc/acpi /proc/scsi /sys/firmware /sys/devices/virtual/powercap; do
  if [ -d "$p" ]; then
    n=$(ls -A "$p" 2>/dev/null | wc -l)
  elif [ -e "$p" ]; then
    n=$(head -c 4096 "$p" 2>/dev/null | wc -c)
  else
    continue
  fi
  [ "$n" -eq 0 ] || read="$read $p($n)"
done
[ -z "$read" ] || reached "read masked paths:$read"
denied "every masked path that exists is empty"
