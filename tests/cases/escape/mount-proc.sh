# tries: mount a fresh procfs (no masked or read-only paths) and write its /proc/sys
# expect: denied
# host: mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
mkdir -p /tmp/p
err=$(mount -t proc proc /tmp/p 2>&1) || denied "$err"
w=no; [ -w /tmp/p/sys/vm/swappiness ] && (cat /tmp/p/sys/vm/swappiness > /tmp/p/sys/vm/swappiness) 2>/dev/null && w=yes
umount /tmp/p
reached "mounted a fresh procfs (its sys/vm/swappiness writable: $w)"
