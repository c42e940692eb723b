# shellcheck shell=bash disable=SC2016
# Sourced by run.py after lib.sh (see there): the commands of dockerfiles/multistage.Dockerfile, kept in step with it.
# multistage: four stages in parallel, each on its own root, then the final stage's COPYs (cp) and RUN.
prepare() { for r in s1 s2 s3 s4 final; do fresh $r; done; }
timed() {
  in_parallel "step s1 'mkdir /out && dd if=/dev/urandom bs=1M count=50 2>/dev/null | sha256sum > /out/s1'" \
    "step s2 'mkdir /out && dd if=/dev/urandom bs=1M count=50 2>/dev/null | sha256sum > /out/s2'" \
    "step s3 'mkdir /out && dd if=/dev/urandom bs=1M count=50 2>/dev/null | sha256sum > /out/s3'" \
    "step s4 'mkdir /out && dd if=/dev/urandom bs=1M count=50 2>/dev/null | sha256sum > /out/s4'"
  mkdir -p "$FLOOR_RUN/final/out"
  cp "$FLOOR_RUN"/s[1-4]/out/s[1-4] "$CTX/stamp.txt" "$FLOOR_RUN/final/out/"
  step final 'cat /out/s1 /out/s2 /out/s3 /out/s4 | wc -l'
}
