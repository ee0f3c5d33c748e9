# Passive in-session RTT (issue 17 item 3, issue 20): one long OpenVPN-over-TCP connection
# from a client at a far and a near path length, and domestic SSH logins before a far
# operator types, so the domestic ceiling is learned from the capture itself.
# Uses start_sshd and typist from ssh.sh.

# The client's addresses are documentation addresses the test geo database places in
# Chicago (192.0.2.0/28) and Dallas (192.0.2.16/28), both US; 192.0.2.1 is the router's.
DOMESTIC_IPS="$(seq -f '192.0.2.%g' 2 14) $(seq -f '192.0.2.%g' 17 27)"

start_openvpn_server() {
	[ -f "$RUN/openvpn-server.pid" ] && return 0
	local n
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
		-subj /CN=lab-ca -keyout "$RUN/ovpn-ca.key" -out "$RUN/ovpn-ca.crt" 2>/dev/null
	for n in server client; do
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=vpn-$n" \
			-keyout "$RUN/ovpn-$n.key" -out "$RUN/ovpn-$n.csr" 2>/dev/null
		openssl x509 -req -in "$RUN/ovpn-$n.csr" -CA "$RUN/ovpn-ca.crt" -CAkey "$RUN/ovpn-ca.key" \
			-CAcreateserial -days 30 -out "$RUN/ovpn-$n.crt" 2>/dev/null
	done
	# The host is the concentrator: OpenVPN over TCP on 1194, the tunnel 10.99.0.1 <-> .2.
	spawn openvpn-server host openvpn --dev tun --proto tcp-server --local "$HOST_IP" --lport 1194 \
		--tls-server --dh none --ca "$RUN/ovpn-ca.crt" --cert "$RUN/ovpn-server.crt" \
		--key "$RUN/ovpn-server.key" --ifconfig 10.99.0.1 10.99.0.2 --verb 3
	# 64 KiB for each download through the tunnel.
	head -c 65536 /dev/urandom >"$RUN/blob"
	spawn blob-server host socat -U TCP-LISTEN:9000,bind=10.99.0.1,reuseaddr,fork,retry=20 \
		"OPEN:$RUN/blob"
	sleep 1
}

# One OpenVPN session from the client (the relay machine's address, Dallas in the test geo
# database) to the host: pings and two downloads inside the tunnel for about 25 s.
scenario_openvpn_tcp() {
	start_openvpn_server
	local d f rtt
	for d in 5 60; do
		delays host=1 relay=$d srv=0 op=0 far=0
		f=openvpn-tcp-${d}ms.pcap
		rtt=$(ping_median relay "$HOST_IP")
		sensor_start "$f"
		spawn openvpn-client relay openvpn --dev tun --proto tcp-client --remote "$HOST_IP" 1194 \
			--tls-client --ca "$RUN/ovpn-ca.crt" --cert "$RUN/ovpn-client.crt" \
			--key "$RUN/ovpn-client.key" --ifconfig 10.99.0.2 10.99.0.1 --verb 3
		for _ in $(seq 60); do in_ns relay ping -n -c 1 -W 1 10.99.0.1 >/dev/null 2>&1 && break; sleep 0.5; done
		in_ns relay ping -n -c 60 -i 0.3 10.99.0.1 >>"$RUN/openvpn-client.ping" 2>&1 || true
		in_ns relay timeout 20 socat -u TCP:10.99.0.1:9000 - >/dev/null 2>&1 || true
		in_ns relay ping -n -c 20 -i 0.3 -s 1000 10.99.0.1 >>"$RUN/openvpn-client.ping" 2>&1 || true
		in_ns relay timeout 20 socat -u TCP:10.99.0.1:9000 - >/dev/null 2>&1 || true
		stop openvpn-client
		sensor_stop
		manifest_add "$f" "one OpenVPN-over-TCP session from a client $d ms beyond the sensor to the host; pings and two 64 KiB downloads inside" \
			"{\"far_client\": $([ "$d" -ge 25 ] && echo true || echo false), \"app\": \"openvpn\", \"tcp_rtt_resp_ms\": 2, \"tcp_rtt_orig_ms\": $((2 * d))}" $((2 * d)) \
			"the client 192.0.2.30 (Dallas in geoip/test) opens one TCP connection to 10.8.0.12:1194; its leg's round trip is expected_rtt_ms" "$rtt"
	done
}

# 24 logins from domestic addresses 5 ms beyond the sensor (their handshakes teach the
# ceiling), then an operator $d ms away types into ssh to the host.
scenario_ssh_learned() {
	start_sshd host
	local ip d f rtt
	for ip in $DOMESTIC_IPS; do in_ns relay ip addr add "$ip/32" dev eth0 2>/dev/null || true; done
	for d in 5 25; do
		delays host=1 relay=5 op=$d srv=0 far=0
		f=ssh-domestic-then-operator-${d}ms.pcap
		rtt=$(ping_median op "$HOST_IP")
		# The router learns each address before the capture: otherwise its ARP query, one
		# more round trip on the relay leg, delays the first SYN/ACK to each.
		for ip in $DOMESTIC_IPS; do in_ns relay ping -n -c 1 -W 1 -I "$ip" 192.0.2.1 >/dev/null 2>&1 || true; done
		sensor_start "$f"
		for ip in $DOMESTIC_IPS; do
			in_ns relay ssh "${SSH_OPTS[@]}" -b "$ip" -o BatchMode=yes "root@$HOST_IP" true >>"$RUN/logins.log" 2>&1 || true
		done
		typist 21 op "root@$HOST_IP"
		sensor_stop
		manifest_add "$f" "24 ssh logins from US addresses 5 ms beyond the sensor, then an operator $d ms beyond it types into ssh to the host" \
			"{\"far_operator\": $([ "$d" -ge 25 ] && echo true || echo false), \"domestic_addresses\": 24, \"app\": \"ssh\", \"tcp_rtt_resp_ms\": 2, \"tcp_rtt_orig_ms\": 10}" $((2 * d)) \
			"expected_rtt_ms is the operator's round trip (198.51.100.20); the logins come from 192.0.2.2-14 and 192.0.2.17-27 at 10 ms" "$rtt"
	done
}

# Inbound ssh to a host that sends no TCP timestamps (as Windows 11): the echo has nothing
# to time, data -> ACK alone measures the leg.
scenario_ssh_no_timestamps() {
	start_sshd host
	local d=60 f=ssh-inbound-no-timestamps-60ms.pcap rtt
	delays host=1 op=$d relay=0 srv=0 far=0
	rtt=$(ping_median op "$HOST_IP")
	in_ns host sysctl -qw net.ipv4.tcp_timestamps=0
	sensor_start "$f"
	typist 22 op "root@$HOST_IP"
	sensor_stop
	in_ns host sysctl -qw net.ipv4.tcp_timestamps=1
	manifest_add "$f" "inbound ssh typed by an operator $d ms beyond the sensor to a host with TCP timestamps off" \
		"{\"far_operator\": true, \"timestamps\": false, \"typing_side\": \"originator\", \"app\": \"ssh\", \"tcp_rtt_resp_ms\": 2, \"tcp_rtt_orig_ms\": $((2 * d))}" $((2 * d)) \
		"net.ipv4.tcp_timestamps=0 in the host's namespace: no timestamp option in its SYN/ACK, so neither side sends one" "$rtt"
}
