# shellcheck shell=bash disable=SC2016
# Sourced by run.py after lib.sh (see there): the commands of dockerfiles/steps-files.Dockerfile, kept in step with it.
# steps-files: the same loop writing 50,000 files straight into the root.
prepare() { fresh root; }
timed() {
  step root 'mkdir /files && cd /files && d=0 && while [ $d -lt 100 ]; do mkdir d$d && f=0 && while [ $f -lt 500 ]; do echo "file $d/$f" > d$d/f$f; f=$((f + 1)); done; d=$((d + 1)); done && ls /files | wc -l'
}
