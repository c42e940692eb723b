# tries: RUN --security=insecure without --allow security.insecure
# expect: refused
# flags: --security=insecure
reached() { echo "reached: $*"; exit 1; }
reached "ran instead of being refused, with $(grep ^CapEff /proc/self/status | tr '\t' ' ')"
