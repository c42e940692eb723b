# tries: unmask /proc from a new user namespace: unshare -U -r -m -p -f, then mount a fresh procfs and read its masked files
# expect: denied
# host: mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
mkdir -p /tmp/p
out=$(unshare -U -r -m -p -f sh -c 'mount -t proc proc /tmp/p && echo mounted && wc -l < /tmp/p/timer_list' 2>&1)
case $out in
  mounted*) reached "mounted a fresh procfs in a new user namespace (timer_list: $(echo "$out" | tail -n 1) lines)" ;;
esac
denied "$out"
