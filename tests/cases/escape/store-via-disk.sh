# tries: reach the store: mount the host's disk (a mknod node for it) and read the marker the harness put in the store
# expect: denied
# requires: head -c 1 /dev/$(awk 'NR > 2 && $4 !~ /^(loop|ram|zram)/ { print $4; exit }' /proc/partitions) >/dev/null
# host: marker mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
na() { echo "n/a: $*"; exit 3; }
disk=$(awk 'NR > 2 && $4 !~ /^(loop|ram|zram)/ { print $1, $2, $4; exit }' /proc/partitions)
[ -n "$disk" ] || na "no disk in /proc/partitions"
set -- $disk
mkdir -p /tmp/host
err=$(mknod /tmp/disk b "$1" "$2" 2>&1) || denied "mknod of $3: $err"
err=$(mount -o ro /tmp/disk /tmp/host 2>&1) || denied "mount of $3: $err"
if [ -e "/tmp/host$ESCAPE_MARKER" ]; then
  m=$(cat "/tmp/host$ESCAPE_MARKER")
  umount /tmp/host
  reached "read the store's marker through the host's disk $3: $m"
fi
umount /tmp/host
reached "mounted the host's disk $3 (the marker is not on it)"
