#!/bin/sh
# The floor's step with binds, inside the namespaces lib.sh's `step` made: binds each SRC (a file, a socket
# or a directory) at DST under ROOT, then runs the rest of its arguments (the chroot).
# Usage: enter.sh ROOT [SRC DST]... -- COMMAND...
set -eu
root=$1
shift
while [ "$1" != -- ]; do
  if [ -d "$1" ]; then mkdir -p "$root$2"; else mkdir -p "$(dirname "$root$2")" && touch "$root$2"; fi
  mount --bind "$1" "$root$2"
  shift 2
done
shift
exec "$@"
