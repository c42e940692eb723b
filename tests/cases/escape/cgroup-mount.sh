# tries: mount the host's cgroup hierarchies (cgroup v1 memory, cgroup2): the root of the release_agent escape
# expect: denied
# host: mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
got=
mkdir -p /tmp/cg1 /tmp/cg2
if err=$(mount -t cgroup -o memory cgroup /tmp/cg1 2>&1); then
  got="$got cgroup v1 memory (release_agent present: $([ -e /tmp/cg1/release_agent ] && echo yes || echo no));"
  umount /tmp/cg1
else
  echo "cgroup v1: $err"
fi
if err=$(mount -t cgroup2 cgroup2 /tmp/cg2 2>&1); then
  got="$got cgroup2 ($(ls /tmp/cg2 | wc -l) entries);"
  umount /tmp/cg2
else
  echo "cgroup2: $err"
fi
[ -z "$got" ] || reached "mounted:$got"
denied "no cgroup hierarchy could be mounted"
