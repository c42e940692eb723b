#!/usr/bin/env bash
# kiln's cost per step, against a floor of the same commands run directly: a Dockerfile of STEPS chained
# `RUN true` and one of a single RUN, built with `--no-cache` (the base already in the store), and the
# same STEPS commands run one after another with `unshare` (the namespaces kiln gives a step: mount, pid,
# net, ipc, uts) + `chroot` on the base image's root filesystem, unpacked once. Then a RUN that writes
# FILES small files, built on a store that holds only the base (so the step's layer blob is made: tar,
# gzip, digests) and run directly. See bench/README.md, `steps`.
#
# Run as root from a clone of this repository, after `cargo build --release`.
#
# Usage: bench/steps.sh
# Environment:
#   KILN=target/release/kiln   the kiln to time
#   RUNS=5                     timed runs per case (medians reported; every run in $WORK/times.tsv)
#   STEPS=100                  chained `RUN true` steps
#   FILES=50000                small files written by one RUN (0: skip that case)
#   CASES="steps files"        a subset
#   RUN_FLAGS=                 flags for every RUN (e.g. --network=none: no network stack per step)
#   WORK=/var/tmp/kiln-steps   base image, store, root filesystem, Dockerfiles (removed at the start)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
KILN=${KILN:-$root/target/release/kiln}
RUNS=${RUNS:-5} STEPS=${STEPS:-100} FILES=${FILES:-50000} CASES=${CASES:-steps files}
WORK=${WORK:-/var/tmp/kiln-steps}
RUN_FLAGS=${RUN_FLAGS:-}
if [ "$(id -u)" != 0 ]; then
  echo "steps.sh: run as root (kiln's steps and the floor's namespaces need it)" >&2
  exit 1
fi
[ -x "$KILN" ] || { echo "steps.sh: no kiln at $KILN (cargo build --release)" >&2; exit 1; }
case $RUNS in '' | *[!0-9]* | 0) echo "steps.sh: RUNS must be a positive number" >&2; exit 2 ;; esac
case $STEPS in '' | *[!0-9]* | 0 | 1) echo "steps.sh: STEPS must be a number above 1" >&2; exit 2 ;; esac

rm -rf "$WORK"
mkdir -p "$WORK/ctx" "$WORK/rootfs"
"$root/tests/fixtures/make-base-image.sh" "$WORK/oci" >/dev/null
# The floor's root: the base image's one layer, unpacked by tar (a judge here, never kiln's tool).
layer=$(python3 -c 'import json,sys; d=sys.argv[1]; i=json.load(open(d+"/index.json"))
m=json.load(open(d+"/blobs/sha256/"+i["manifests"][0]["digest"][7:])); print(m["layers"][0]["digest"][7:])' "$WORK/oci")
tar -xzf "$WORK/oci/blobs/sha256/$layer" -C "$WORK/rootfs"
echo stamp >"$WORK/ctx/stamp.txt"

dockerfile() { # NAME RUN-LINES...
  local f=$WORK/$1.Dockerfile
  shift
  printf 'ARG BASE\nFROM ${BASE}\n' >"$f"
  printf '%s\n' "$@" >>"$f"
}
runs=()
for _ in $(seq "$STEPS"); do runs+=("RUN $RUN_FLAGS true"); done
dockerfile steps "${runs[@]}"
dockerfile one "RUN $RUN_FLAGS true"
# FILES files of 16-20 bytes in directories of 1,000, written by busybox's shell.
write="mkdir /data && cd /data && n=0 && while [ \$n -lt $FILES ]; do d=\$((n / 1000)); \
[ -d \$d ] || mkdir \$d; echo \"file \$n\" > \$d/\$n; n=\$((n + 1)); done"
dockerfile files "RUN $RUN_FLAGS $write"

now() { date +%s%N; }
kiln() { # DOCKERFILE
  "$KILN" build --progress quiet --store "$WORK/store" --build-arg "BASE=oci-layout://$WORK/oci" \
    -f "$WORK/$1.Dockerfile" -t "bench/$1" --no-cache "$WORK/ctx" >/dev/null
}
floor_one() { # COMMAND...
  unshare --mount --pid --fork --net --ipc --uts chroot "$WORK/rootfs" "$@"
}
floor_steps() {
  for _ in $(seq "$STEPS"); do floor_one true; done
}
floor_files() {
  floor_one sh -c "$write"
}
timed() { # CASE COMMAND...: prints milliseconds, records the run
  local case=$1 t0 t1
  shift
  sync
  t0=$(now)
  "$@"
  t1=$(now)
  local ms=$(((t1 - t0) / 1000000))
  printf '%s\t%s\t%s\n' "$case" "$ms" "$(cut -d' ' -f1 /proc/loadavg)" >>"$WORK/times.tsv"
  echo "$ms"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

printf 'case\tms\tload\n' >"$WORK/times.tsv"
echo "kiln $("$KILN" --version | head -1), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
# Untimed: the base image imported into the store.
kiln one
declare -A ms
has() { case " $CASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if has steps; then
  k1=() kn=() fl=()
  # Alternating, so the machine's drift spreads over all three.
  for _ in $(seq "$RUNS"); do
    k1+=("$(timed kiln-1 kiln one)")
    kn+=("$(timed "kiln-$STEPS" kiln steps)")
    fl+=("$(timed "floor-$STEPS" floor_steps)")
  done
  ms[k1]=$(printf '%s\n' "${k1[@]}" | median)
  ms[kn]=$(printf '%s\n' "${kn[@]}" | median)
  ms[fl]=$(printf '%s\n' "${fl[@]}" | median)
  awk -v k1="${ms[k1]}" -v kn="${ms[kn]}" -v fl="${ms[fl]}" -v n="$STEPS" 'BEGIN {
    per = (kn - k1) / (n - 1); floor = fl / n
    printf "steps: kiln %d RUNs %d ms, 1 RUN %d ms; floor %d ms (%d runs)\n", n, kn, k1, fl, n
    printf "  per step: kiln %.1f ms (marginal), floor %.1f ms, overhead %.1f ms (%.0f%%)\n", per, floor, per - floor, 100 * (per - floor) / floor
    printf "  whole build over the floor: %.1f ms per step\n", (kn - fl) / n
  }'
fi
if has files && [ "$FILES" != 0 ]; then
  kf=() ff=()
  for _ in $(seq "$RUNS"); do
    # A store that holds the base and not this step's snapshot, so the layer is made (tar, gzip) anew.
    rm -rf "$WORK/store"
    kiln one
    kf+=("$(timed kiln-files kiln files)")
    ff+=("$(timed floor-files floor_files)")
    rm -rf "$WORK/rootfs/data"
  done
  ms[kf]=$(printf '%s\n' "${kf[@]}" | median)
  ms[ff]=$(printf '%s\n' "${ff[@]}" | median)
  echo "files: kiln $FILES files ${ms[kf]} ms; floor ${ms[ff]} ms; committing them: $((ms[kf] - ms[ff])) ms over the floor"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); every run in $WORK/times.tsv"
