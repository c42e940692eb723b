# tries: reach the host's root through /proc/PID/root of every visible process, and /proc/1/root/..
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
for r in /proc/[0-9]*/root /proc/1/root/..; do
  [ -e "$r$ESCAPE_MARKER" ] && reached "the store's marker is visible through $r"
done
denied "no /proc/PID/root leads to the host (the store's marker is not visible)"
