# tries: set the clock: settimeofday of the kernel's timezone (hwclock -u --systz, UTC as it is) and adjtimex of the frequency (to the value it has)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
got=
err=$(hwclock -u --systz 2>&1) && got="$got settimeofday (hwclock --systz);" || echo "hwclock --systz: $err"
freq=$(adjtimex | sed -n 's/^-f *freq.adjust: *\(-*[0-9]*\).*/\1/p')
err=$(adjtimex -f "${freq:-0}" 2>&1 >/dev/null) && got="$got adjtimex (frequency ${freq:-0});" || echo "adjtimex -f: $err"
[ -z "$got" ] || reached "changed the host's clock settings (to the values they had):$got"
denied "neither call was allowed"
