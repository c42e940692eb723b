# tries: sysctl -w a network setting (net.ipv4.ip_local_port_range, set to the value it has)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
v=$(sysctl -n net.ipv4.ip_local_port_range | tr '\t' ' ')
err=$(sysctl -w "net.ipv4.ip_local_port_range=$v" 2>&1) && reached "sysctl -w net.ipv4.ip_local_port_range=$v in network namespace $(readlink /proc/self/ns/net)"
denied "$err"
