# tries: mount a tmpfs (any new mount needs CAP_SYS_ADMIN, which Docker drops)
# expect: denied
# host: mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
mkdir -p /tmp/t
err=$(mount -t tmpfs kesc /tmp/t 2>&1) || denied "$err"
umount /tmp/t
reached "mounted a tmpfs"
