# Issue 17: one responder-side relay reached from two inside hosts. A second laptop
# (10.9.0.13, its own namespace and link) joins the host; the sensor records both inside
# links (gw-in and gw-in2) and merges them, as a sensor at the corporate egress sees both.
# Each laptop makes only two connections, fewer than rtt_split's min_connections, so no
# host alone repeats: the agreement across hosts is the evidence. Uses start_nginx from
# tls.sh.

HOST2_IP=10.9.0.13

add_second_host() {
	ip netns list | grep -q "^$NS-host2 " && return 0
	ip netns add "$NS-host2"
	ip netns add "$NS-w-host2"
	in_ns host2 ip link set dev lo up
	in_ns host2 sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	wire_leg host2 host2 eth0 "$HOST2_IP/16" gw gw-in2 10.9.0.1/16
	in_ns host2 ip route add default via 10.9.0.1
}

# The sensor on both inside links; sensor2_stop merges them into $OUT/$CAPTURE.
sensor2_start() {
	CAPTURE=$1
	rm -f "$OUT/$CAPTURE"
	spawn sensor gw tcpdump -Z root -i gw-in -s 0 -U -n -w "$RUN/in1.pcap" not arp and not icmp6
	spawn sensor2 gw tcpdump -Z root -i gw-in2 -s 0 -U -n -w "$RUN/in2.pcap" not arp and not icmp6
	sleep 1
}

sensor2_stop() {
	sleep 1
	local name pid
	for name in sensor sensor2; do
		pid=$(cat "$RUN/$name.pid")
		kill -INT "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null || true
		rm -f "$RUN/$name.pid"
	done
	mergecap -F pcap -w "$OUT/$CAPTURE" "$RUN/in1.pcap" "$RUN/in2.pcap"
	chmod 644 "$OUT/$CAPTURE"
}

# Two curl connections from each laptop to $1:$2, alternating, 0.4 s apart.
two_hosts_clients() {
	local addr=$1 port=$2 i ns
	for i in 1 2; do
		for ns in host host2; do
			in_ns "$ns" curl -sk --max-time 10 --resolve "portal.example.com:$port:$addr" \
				"https://portal.example.com:$port/$ns/$i" >/dev/null
			sleep 0.4
		done
	done
}

scenario_tls_shared_relay() {
	start_nginx
	add_second_host
	local d=60 f rtt
	# Through socat on the relay, 2 ms beyond the sensor; the server d ms behind it.
	spawn relay-socat relay socat TCP-LISTEN:8443,fork,reuseaddr "TCP:$SRV_IP:443"
	delays host=1 host2=1 relay=2 srv=$d far=0 op=0
	f=tls-shared-relay-far-side-${d}ms.pcap
	rtt=$(ping_median relay "$SRV_IP")
	sensor2_start "$f"
	two_hosts_clients "$RELAY_IP" 8443
	sensor2_stop
	manifest_add "$f" "tls from two inside hosts through one socat relay beyond the sensor" \
		"{\"relay\": true, \"relay_side\": \"responder\", \"shared_relay\": true, \"app\": \"tls\", \"tcp_rtt_resp_ms\": 4, \"tcp_rtt_orig_ms\": 2}" $((2 * (2 + 2 + d))) \
		"10.8.0.12 and 10.9.0.13 (a second laptop on its own link, merged at the sensor) each make 2 curl connections to 192.0.2.30:8443; socat there connects on to nginx 2+$d ms further (measured_ping is relay<->server)" "$rtt"
	stop relay-socat
	# The look-alike: the same two laptops straight to a server at the relayed path length.
	delays host=1 host2=1 srv=$((2 + d)) relay=0 far=0 op=0
	f=tls-shared-direct-$((2 + d))ms.pcap
	rtt=$(ping_median host "$SRV_IP")
	sensor2_start "$f"
	two_hosts_clients "$SRV_IP" 443
	sensor2_stop
	manifest_add "$f" "tls from two inside hosts straight to the server" \
		"{\"relay\": false, \"relay_side\": null, \"shared_relay\": false, \"app\": \"tls\", \"tcp_rtt_resp_ms\": $((2 * (2 + d))), \"tcp_rtt_orig_ms\": 2}" $((2 * (2 + d))) \
		"10.8.0.12 and 10.9.0.13 each make 2 curl connections to 203.0.113.10:443: TCP and TLS round trips agree" "$rtt"
}
