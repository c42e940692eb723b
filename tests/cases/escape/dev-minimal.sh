# tries: find host devices in /dev (anything beyond null zero full random urandom tty ptmx pts shm mqueue console core and the fd links)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
extra=
for f in /dev/* /dev/.[!.]*; do
  [ -e "$f" ] || [ -L "$f" ] || continue
  case ${f#/dev/} in
    null | zero | full | random | urandom | tty | ptmx | pts | shm | mqueue | console | core | fd | stdin | stdout | stderr) ;;
    *) extra="$extra ${f#/dev/}" ;;
  esac
done
[ -z "$extra" ] || reached "/dev holds more than the minimal set:$extra"
denied "/dev: $(ls /dev | tr '\n' ' ')"
