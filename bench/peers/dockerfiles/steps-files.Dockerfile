# steps-files: one RUN that writes 50,000 small files (100 directories of 500), so the step's cost is the
# diff and tar of a 50,000-file layer. busybox sh: the loop, `[` and echo are built in, no fork per file.
ARG BASE
FROM ${BASE}
RUN mkdir /files && cd /files && d=0 && while [ $d -lt 100 ]; do \
      mkdir d$d && f=0 && while [ $f -lt 500 ]; do echo "file $d/$f" > d$d/f$f; f=$((f + 1)); done; d=$((d + 1)); \
    done && ls /files | wc -l
