# tries: reach the store with mount --bind: bind the step's root and /proc/1/root elsewhere and look for the store's marker
# expect: denied
# host: marker mounts
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
done_=
for src in / /proc/1/root; do
  mkdir -p /tmp/bind
  if err=$(mount --bind "$src" /tmp/bind 2>&1); then
    found=no; [ -e "/tmp/bind$ESCAPE_MARKER" ] && found=yes
    umount /tmp/bind
    done_="$done_ $src (store marker visible: $found);"
  else
    echo "mount --bind $src: $err"
  fi
done
[ -z "$done_" ] || reached "bind-mounted:$done_"
denied "no bind mount was possible"
