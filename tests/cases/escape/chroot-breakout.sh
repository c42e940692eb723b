# tries: break out of a chroot: keep a directory fd open, chroot into /proc (reaching busybox through /1/root), cd .. from the fd, look for the host's store
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
exec 3< /
out=$(chroot /proc /1/root/bin/busybox sh -c '
  cd -P /self/fd/3 || exit 9
  i=0; while [ $i -lt 64 ]; do cd -P .. ; i=$((i + 1)); done
  if [ -e "./${ESCAPE_MARKER#/}" ]; then echo found; fi
  echo "top: $(/1/root/bin/busybox ls | /1/root/bin/busybox head -8 | /1/root/bin/busybox tr "\n" " ")"' 2>&1)
case $out in
  found*) reached "left the chroot and the step's root: the store's marker $ESCAPE_MARKER is visible ($out)" ;;
esac
denied "no host file reached: $out"
