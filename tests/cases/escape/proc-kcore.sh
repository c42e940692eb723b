# tries: read /proc/kcore (the kernel's memory as an ELF core)
# expect: denied
# requires: test -e /proc/kcore
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
n=$(head -c 64 /proc/kcore 2>/tmp/err | wc -c)
[ "$n" -eq 0 ] || reached "read $n bytes of /proc/kcore"
denied "read nothing from /proc/kcore: $(cat /tmp/err)"
