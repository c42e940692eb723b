# tries: mount the host's disk: mknod a node for the first disk in /proc/partitions, mount it read-only, list it
# expect: denied
# requires: head -c 1 /dev/$(awk 'NR > 2 && $4 !~ /^(loop|ram|zram)/ { print $4; exit }' /proc/partitions) >/dev/null
# host: mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
na() { echo "n/a: $*"; exit 3; }
disk=$(awk 'NR > 2 && $4 !~ /^(loop|ram|zram)/ { print $1, $2, $4; exit }' /proc/partitions)
[ -n "$disk" ] || na "no disk in /proc/partitions"
set -- $disk
mkdir -p /tmp/disk/mnt
err=$(mknod /tmp/disk/node b "$1" "$2" 2>&1) || denied "mknod of $3 ($1:$2): $err"
if err=$(mount -o ro /tmp/disk/node /tmp/disk/mnt 2>&1); then
  echo "top of the host's $3: $(ls /tmp/disk/mnt | head -8 | tr '\n' ' ')"
  umount /tmp/disk/mnt
  reached "mounted the host's disk $3 ($1:$2)"
fi
denied "mount of $3: $err"
