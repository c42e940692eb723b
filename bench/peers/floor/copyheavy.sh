# shellcheck shell=bash disable=SC2016
# Sourced by run.py after lib.sh (see there): the commands of dockerfiles/copyheavy.Dockerfile, kept in step with it.
# copyheavy: the COPY as `cp -a` of the context, then the RUN over it.
prepare() { fresh root; }
timed() {
  cp -a "$CTX/." "$FLOOR_RUN/root/data/"
  step root 'find /data -type f | wc -l > /data-count.txt && du -s /data >> /data-count.txt'
}
