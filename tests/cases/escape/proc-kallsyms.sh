# tries: read kernel symbol addresses from /proc/kallsyms (shown only with CAP_SYSLOG)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
line=$(awk '$1 !~ /^0+$/ { print; exit }' /proc/kallsyms 2>/dev/null)
[ -z "$line" ] || reached "a kernel address: $line"
denied "every address in /proc/kallsyms reads as zero"
