# shellcheck shell=bash
# The floor of bench/peers.sh: each workload's RUN commands executed directly, with the parallelism the
# builders give them, on an already unpacked root filesystem of the same base image, and no builder (no
# cache, no overlay, no diff, no layer). A workload's floor is bench/peers/floor/<case>.sh, which defines
#   prepare  untimed: make the root filesystems it needs with `fresh NAME` (copies of the base)
#   timed    timed: its steps, each through `step`, in the order and parallelism of the Dockerfile
# run.py sources this file and the case's, then calls prepare (untimed) and timed (timed) in two processes.
# From run.py's environment: FLOOR_BASE (the unpacked base), FLOOR_RUN (an empty scratch directory), CTX
# (the build context) and the workload's inputs (WORK, SSH_AUTH_SOCK, SSH_PORT, APT_PORT, APT_PACKAGES).
set -euo pipefail
floor_dir=$(dirname "${BASH_SOURCE[0]}")

# fresh NAME: a copy of the base image's root filesystem at $FLOOR_RUN/NAME with the device nodes a step
# uses (prepare only: untimed; a builder mounts a /dev per step, the floor makes one once).
fresh() {
  local r=$FLOOR_RUN/$1
  cp -a "$FLOOR_BASE" "$r"
  mkdir -p "$r/dev" "$r/proc"
  mknod -m 666 "$r/dev/null" c 1 3; mknod -m 666 "$r/dev/zero" c 1 5; mknod -m 666 "$r/dev/full" c 1 7
  mknod -m 666 "$r/dev/random" c 1 8; mknod -m 666 "$r/dev/urandom" c 1 9; mknod -m 666 "$r/dev/tty" c 5 0
}

# step [--host-net] [bind SRC DST]... [env K=V]... NAME CMD: CMD under /bin/sh -c in $FLOOR_RUN/NAME, in new
# mount, pid, uts, ipc and (without --host-net) net namespaces with a /proc of their own, in a chroot with a
# clean environment, as a builder runs a RUN step as root. Binds go through enter.sh (inside the namespaces).
step() {
  local ns=(--mount --pid --fork --uts --ipc --net --propagation private) envs=() binds=()
  if [ "$1" = --host-net ]; then unset 'ns[5]'; shift; fi
  while [ "$1" = bind ] || [ "$1" = env ]; do
    if [ "$1" = bind ]; then binds+=("$2" "$3"); shift 3; else envs+=("$2"); shift 2; fi
  done
  local r=$FLOOR_RUN/$1 enter=()
  [ ${#binds[@]} = 0 ] || enter=("$floor_dir/enter.sh" "$r" "${binds[@]}" --)
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${envs[@]}" \
    unshare "${ns[@]}" --mount-proc="$r/proc" "${enter[@]}" /usr/sbin/chroot "$r" /bin/sh -c "$2"
}

# in_parallel CMD...: each CMD (a string: a `step ...` line) in the background; fails if any failed.
in_parallel() {
  local pids=() rc=0
  for c in "$@"; do eval "$c" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
