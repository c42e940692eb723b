# tries: read the host's disk raw: mknod a block node for the first disk in /proc/partitions, read its first sector
# expect: denied
# requires: head -c 1 /dev/$(awk 'NR > 2 && $4 !~ /^(loop|ram|zram)/ { print $4; exit }' /proc/partitions) >/dev/null
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
na() { echo "n/a: $*"; exit 3; }
disk=$(awk 'NR > 2 && $4 !~ /^(loop|ram|zram)/ { print $1, $2, $4; exit }' /proc/partitions)
[ -n "$disk" ] || na "no disk in /proc/partitions"
set -- $disk
err=$(mknod /tmp/disk b "$1" "$2" 2>&1) || denied "mknod of $3 ($1:$2): $err"
if n=$(head -c 512 /tmp/disk 2>/tmp/err | wc -c) && [ "$n" -gt 0 ]; then
  reached "read $n bytes of the host's disk $3 ($1:$2) through a node made with mknod"
fi
denied "mknod worked, opening $3 did not: $(cat /tmp/err)"
