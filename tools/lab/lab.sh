# Shared functions of the capture lab: namespaces, delay lines, services, the sensor.
# Sourced by tools/lab/make-all; see tools/lab/README.md for the topology.

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=${FWLAB_RUN:-/tmp/fwlab-run}
# Namespace names start with "$NS-": another prefix lets two labs run side by side.
NS=${FWLAB_NS:-fwlab}
OUT=${FWLAB_OUT:-$LAB_DIR/../../fixtures/lab}
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1 # typist.py is imported by xtypist.py: no __pycache__ in the tree
NS_LEAVES="host far srv op relay"
LEGS="host far srv op relay"

# Addresses (documentation ranges, and 10.8.0.0/16 as the VPN pool).
HOST_IP=10.8.0.12
FAR_IP=172.31.0.2
HOST_FAR_IP=172.31.0.1
SRV_IP=203.0.113.10
VPN_IP=203.0.113.11 # ocserv, beside nginx on the same machine
OP_IP=198.51.100.20
RELAY_IP=192.0.2.30

log() { printf '[lab %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
in_ns() { local ns=$1; shift; ip netns exec "$NS-$ns" "$@"; }

# Starts a background process in a namespace and remembers its pid for cleanup.
spawn() {
	local name=$1 ns=$2
	shift 2
	ip netns exec "$NS-$ns" "$@" >"$RUN/$name.log" 2>&1 &
	echo $! >"$RUN/$name.pid"
}

stop() {
	local name=$1 pid
	[ -f "$RUN/$name.pid" ] || return 0
	pid=$(cat "$RUN/$name.pid")
	rm -f "$RUN/$name.pid"
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
	local f
	for f in "$RUN"/*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)"; done
	for ns in $(ip netns list | awk -v p="$NS-" 'index($1, p) == 1 {print $1}'); do
		# Every process still in one of our namespaces was started by the lab.
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
		ip netns del "$ns"
	done
}

quiet_offloads() {
	# Frames cross the delay line as raw bytes: no segmentation offload (frames stay
	# under the MTU) and checksums computed in software (captures carry real checksums).
	in_ns "$1" ethtool -K "$2" tso off gso off gro off tx off rx off >/dev/null 2>&1 || true
}

# leaf ns/iface/address  <->  wire ns (delay line)  <->  gw ns/iface/address
wire_leg() {
	local leg=$1 leaf=$2 leaf_if=$3 leaf_addr=$4 far=$5 far_if=$6 far_addr=$7
	ip link add name "$leaf_if" netns "$NS-$leaf" type veth peer name wa netns "$NS-w-$leg"
	ip link add name wb netns "$NS-w-$leg" type veth peer name "$far_if" netns "$NS-$far"
	in_ns "$leaf" ip addr add "$leaf_addr" dev "$leaf_if"
	in_ns "$far" ip addr add "$far_addr" dev "$far_if"
	for i in wa wb; do in_ns "w-$leg" ip link set dev "$i" up; quiet_offloads "w-$leg" "$i"; done
	in_ns "$leaf" ip link set dev "$leaf_if" up
	in_ns "$far" ip link set dev "$far_if" up
	quiet_offloads "$leaf" "$leaf_if"
	quiet_offloads "$far" "$far_if"
}

build_topology() {
	cleanup
	rm -rf "$RUN"
	mkdir -p "$RUN"
	for ns in gw $NS_LEAVES; do ip netns add "$NS-$ns"; in_ns "$ns" ip link set dev lo up; done
	for ns in gw $NS_LEAVES; do in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1; done
	for leg in $LEGS; do ip netns add "$NS-w-$leg"; done
	wire_leg host host eth0 "$HOST_IP/16" gw gw-in 10.8.0.1/16
	wire_leg srv srv eth0 "$SRV_IP/24" gw gw-srv 203.0.113.1/24
	wire_leg op op eth0 "$OP_IP/24" gw gw-op 198.51.100.1/24
	wire_leg relay relay eth0 "$RELAY_IP/24" gw gw-relay 192.0.2.1/24
	wire_leg far far eth0 "$FAR_IP/24" host eth1 "$HOST_FAR_IP/24"
	in_ns srv ip addr add "$VPN_IP/24" dev eth0
	in_ns gw sysctl -qw net.ipv4.ip_forward=1
	in_ns host ip route add default via 10.8.0.1
	in_ns srv ip route add default via 203.0.113.1
	in_ns op ip route add default via 198.51.100.1
	in_ns relay ip route add default via 192.0.2.1
	in_ns far ip route add default via "$HOST_FAR_IP"
	for leg in $LEGS; do set_delay "$leg" 0; done
}

# One-way delay in ms on a leg (host, far, srv, op, relay).
set_delay() {
	local leg=$1 ms=$2
	stop "dl-$leg"
	# Real-time priority: a busy build on the same cores must not stretch the delay.
	spawn "dl-$leg" "w-$leg" chrt -f 20 "$PY" "$LAB_DIR/delayline.py" wa wb "$ms"
	eval "DELAY_$leg=$ms"
}

delays() { # host=1 srv=25 ...
	local kv
	for kv in "$@"; do set_delay "${kv%%=*}" "${kv#*=}"; done
	sleep 0.5
}

# The delays now configured, as a JSON object, for the manifest.
delays_json() {
	local leg v out=""
	for leg in $LEGS; do
		v=$(eval "echo \$DELAY_$leg")
		out="$out${out:+, }\"$leg\": $v"
	done
	echo "{$out}"
}

# Median RTT (ms) of 10 pings from a namespace to an address.
ping_median() {
	in_ns "$1" ping -n -c 10 -i 0.2 "$2" | awk -F'time=' '/time=/{split($2,a," "); print a[1]}' |
		sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

# The sensor: tcpdump on the gateway's inside interface (the corporate egress).
sensor_start() {
	CAPTURE=$1
	rm -f "$OUT/$CAPTURE"
	spawn sensor gw tcpdump -Z root -i gw-in -s 0 -U -n -w "$OUT/$CAPTURE" not arp and not icmp6
	sleep 1
}

sensor_stop() {
	sleep 1
	local pid
	pid=$(cat "$RUN/sensor.pid")
	kill -INT "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
	rm -f "$RUN/sensor.pid"
	chmod 644 "$OUT/$CAPTURE"
}

# manifest_add FILE SCENARIO EXPECT_JSON EXPECTED_RTT_MS NOTE [MEASURED_PING_RTT_MS]
# Puts (or replaces) the file's entry in fixtures/lab/manifest.json, so one scenario can be
# remade alone.
manifest_add() {
	local item
	item=$(printf '{"file": "%s", "scenario": "%s", "one_way_delay_ms": %s, "expected": %s, "expected_rtt_ms": %s, "measured_ping_rtt_ms": %s, "note": "%s"}' \
		"$1" "$2" "$(delays_json)" "$3" "$4" "${6:-null}" "$5")
	ITEM=$item "$PY" - "$OUT/manifest.json" <<'PYEOF'
import json, os, sys
path = sys.argv[1]
item = json.loads(os.environ["ITEM"])
try:
    with open(path) as f:
        doc = json.load(f)
except FileNotFoundError:
    doc = {"captures": []}
caps = [c for c in doc["captures"] if c["file"] != item["file"]] + [item]
doc["captures"] = sorted(caps, key=lambda c: c["file"])
with open(path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
PYEOF
}
