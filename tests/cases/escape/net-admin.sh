# tries: change a network interface's settings (sets lo's mtu to the value it has; needs CAP_NET_ADMIN)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
mtu=$(ip link show lo | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
err=$(ip link set dev lo mtu "${mtu:-65536}" 2>&1) && reached "changed lo's mtu (to ${mtu:-65536}) in network namespace $(readlink /proc/self/ns/net)"
denied "$err"
