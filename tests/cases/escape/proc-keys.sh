# tries: list the kernel's keys and keyrings in /proc/keys
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
n=$(wc -l < /proc/keys 2>/dev/null || echo 0)
[ "$n" -eq 0 ] || reached "/proc/keys lists $n keys, e.g. $(head -n 1 /proc/keys | cut -c1-90)"
denied "/proc/keys is empty or unreadable"
