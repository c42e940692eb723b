# tries: read the kernel log with dmesg (syslog(2); needs CAP_SYSLOG when dmesg_restrict is set)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
out=$(dmesg 2>&1 | head -n 2)
case $out in
  *"not permitted"* | "") denied "${out:-nothing}" ;;
esac
reached "read the kernel log: $(echo "$out" | head -n 1 | cut -c1-90)"
