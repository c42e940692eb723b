# tries: reach a host process (the harness's pid): read its memory through /proc/PID/mem (ptrace access), signal it
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
pid=$ESCAPE_HOSTPID got=
if [ -r "/proc/$pid/maps" ]; then
  start=$(head -n 1 "/proc/$pid/maps" | cut -d- -f1)
  n=$(dd if="/proc/$pid/mem" bs=1 count=16 skip=$((0x$start)) 2>/dev/null | wc -c)
  [ "$n" -eq 0 ] || got="$got read $n bytes of its memory;"
fi
kill -0 "$pid" 2>/dev/null && got="$got signalled it;"
[ -z "$got" ] || reached "host pid $pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-60)):$got"
denied "host pid $pid is not visible; the step sees $(ls -d /proc/[0-9]* | wc -l) processes"
