# tries: swapon and swapoff (of a file that is no swap area: the kernel rejects it after the permission check)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
head -c 65536 /dev/zero > /tmp/notswap
got=
for cmd in swapoff swapon; do
  err=$($cmd /tmp/notswap 2>&1)
  echo "$cmd: ${err:-ok}"
  case $err in
    *"not permitted"*) ;;
    *) got="$got $cmd;" ;;
  esac
done
[ -z "$got" ] || reached "got past the permission check (needs CAP_SYS_ADMIN):$got"
denied "both refused"
