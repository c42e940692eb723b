# tries: gain capabilities as a non-root user through a setuid-root program (busybox ping, which keeps root while it runs)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
unsure() { echo "inconclusive: $*"; exit 2; }
mkdir -p /tmp/suid && cp /bin/busybox /tmp/suid/ping && chmod 4755 /tmp/suid/ping || unsure "cannot make a setuid copy of busybox"
su appuser -c '/tmp/suid/ping -c 3 127.0.0.1' >/tmp/ping.log 2>&1 &
status=
for _ in 1 2 3 4 5 6 7 8 9 10; do
  sleep 0.1
  for d in /proc/[0-9]*; do
    case $(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) in
      "/tmp/suid/ping"*) status=$(grep -E '^(Uid|CapEff)' "$d/status" | tr '\n\t' '  ') ;;
    esac
  done
  [ -z "$status" ] || break
done
kill $! 2>/dev/null
eff=$(echo "$status" | sed -n 's/.*CapEff: *\([0-9a-f]*\).*/\1/p')
if [ -z "$eff" ]; then
  # With no_new_privs the setuid bit does nothing: ping then runs as uid 1000 and gives up at once.
  case $(cat /tmp/ping.log) in
    *"are you root"* | *"not permitted"* | *"ermission denied"*) denied "the setuid-root program ran without privileges: $(cat /tmp/ping.log)" ;;
  esac
  unsure "the setuid program was never seen running: $(cat /tmp/ping.log)"
fi
[ $((0x$eff & ~0xa80425fb)) -eq 0 ] || reached "uid 1000 ran a setuid-root program with $status"
denied "the setuid-root program got no more than the default set: $status"
