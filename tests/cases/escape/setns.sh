# tries: nsenter (setns) into the namespaces of every visible process through /proc/PID/ns
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
entered= last=
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  for ns in m:mnt n:net u:uts i:ipc p:pid; do
    if err=$(nsenter -t "$pid" "-${ns%%:*}" true 2>&1); then
      same=own; [ "$(readlink "$d/ns/${ns#*:}")" = "$(readlink "/proc/self/ns/${ns#*:}")" ] || same=foreign
      entered="$entered $pid:${ns#*:}($same)"
    else
      last=$err
    fi
  done
done
[ -z "$entered" ] || reached "setns into:$entered"
denied "$last"
