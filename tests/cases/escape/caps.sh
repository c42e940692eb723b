# tries: hold capabilities beyond Docker's default set (CapEff CapPrm CapBnd CapInh within 00000000a80425fb, CapAmb empty)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
extra=
for c in CapEff CapPrm CapBnd CapInh CapAmb; do
  v=$(sed -n "s/^$c:[[:space:]]*//p" /proc/self/status)
  allowed=0xa80425fb; [ "$c" = CapAmb ] && allowed=0
  [ $((0x$v & ~allowed)) -eq 0 ] || extra="$extra $c=$v"
done
[ -z "$extra" ] || reached "capabilities beyond the default:$extra"
denied "$(grep ^Cap /proc/self/status | tr '\n\t' '  ')"
