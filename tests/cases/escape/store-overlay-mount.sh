# tries: reach the store with mount -t overlay: lower dirs named by the host paths in /proc/self/mountinfo, then the step's own /etc and /bin
# expect: denied
# host: marker mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
mkdir -p /tmp/ov/m
store=${ESCAPE_MARKER%/*}
lower=$(sed -n 's/.*lowerdir=\([^:,]*\).*/\1/p' /proc/self/mountinfo | head -n 1)
got=
for l in "$store" ${lower:+"$lower"} /etc:/bin; do
  if err=$(mount -t overlay overlay -o "lowerdir=$l" /tmp/ov/m 2>&1); then
    found=no; [ -e "/tmp/ov/m/${ESCAPE_MARKER##*/}" ] && found=yes
    umount /tmp/ov/m
    got="$got lowerdir=$l (store marker visible: $found);"
  else
    echo "overlay on $l: $err"
  fi
done
[ -z "$got" ] || reached "mounted overlays:$got"
denied "no overlay mount was possible"
