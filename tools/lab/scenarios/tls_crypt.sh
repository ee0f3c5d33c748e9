# Issue 17 item 7: OpenVPN sessions with --tls-crypt, for mid-stream labels. tls-crypt
# wraps every control packet (key id, session id, a packet id counting up, a timestamp,
# then an HMAC and ciphertext); the data channel is unchanged. With --reneg-sec 8 each
# session renegotiates its keys every few seconds, as real sessions do every hour, so a
# capture cut at a renegotiation starts with wrapped control packets. With a CBC data
# cipher the data packets show no counter in clear: only the control packets tell.

start_tls_crypt_pki() {
	[ -f "$RUN/tc-client.crt" ] && return 0
	local n
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
		-subj /CN=tc-ca -keyout "$RUN/tc-ca.key" -out "$RUN/tc-ca.crt" 2>/dev/null
	for n in server client; do
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=tc-$n" \
			-keyout "$RUN/tc-$n.key" -out "$RUN/tc-$n.csr" 2>/dev/null
		openssl x509 -req -in "$RUN/tc-$n.csr" -CA "$RUN/tc-ca.crt" -CAkey "$RUN/tc-ca.key" \
			-CAcreateserial -days 30 -out "$RUN/tc-$n.crt" 2>/dev/null
	done
	openvpn --genkey tls-crypt "$RUN/tc.key" >/dev/null
}

# tls_crypt_session PROTO CIPHER FILE: the host's OpenVPN client to a server d ms beyond
# the sensor, about 25 s of pings inside the tunnel, keys renegotiated every 8 s.
tls_crypt_session() {
	local proto=$1 cipher=$2 f=$3 sp cp
	case $proto in
	udp) sp=udp; cp=udp ;;
	tcp) sp=tcp-server; cp=tcp-client ;;
	esac
	local common=(--dev tun --tls-crypt "$RUN/tc.key" --ca "$RUN/tc-ca.crt" --dh none
		--reneg-sec 8 --data-ciphers "$cipher" --cipher "$cipher" --verb 3)
	spawn tc-server srv openvpn --proto "$sp" --local "$SRV_IP" --lport 1194 --tls-server \
		--cert "$RUN/tc-server.crt" --key "$RUN/tc-server.key" --ifconfig 10.98.0.1 10.98.0.2 "${common[@]}"
	sleep 1
	sensor_start "$f"
	spawn tc-client host openvpn --proto "$cp" --remote "$SRV_IP" 1194 --nobind --tls-client \
		--cert "$RUN/tc-client.crt" --key "$RUN/tc-client.key" --ifconfig 10.98.0.2 10.98.0.1 "${common[@]}"
	for _ in $(seq 60); do in_ns host ping -n -c 1 -W 1 10.98.0.1 >/dev/null 2>&1 && break; sleep 0.5; done
	in_ns host ping -n -c 80 -i 0.3 10.98.0.1 >>"$RUN/tc-ping.log" 2>&1 || true
	stop tc-client
	sensor_stop
	stop tc-server
}

scenario_openvpn_tls_crypt() {
	start_tls_crypt_pki
	local d=25 f rtt
	delays host=1 srv=$d relay=0 far=0 op=0
	rtt=$(ping_median host "$SRV_IP")
	for spec in tcp:AES-256-GCM tcp:AES-256-CBC; do
		local proto=${spec%%:*} cipher=${spec#*:} c
		c=$(echo "$cipher" | awk -F- '{print tolower($3)}')
		f=openvpn-tls-crypt-$proto-$c-${d}ms.pcap
		tls_crypt_session "$proto" "$cipher" "$f"
		manifest_add "$f" "openvpn over $proto with --tls-crypt and $cipher from the host to a server beyond the sensor; keys renegotiated every 8 s" \
			"{\"relay\": false, \"tunnel\": \"openvpn\", \"tls_crypt\": true, \"app\": \"openvpn\", \"tcp_rtt_resp_ms\": $((2 * d)), \"tcp_rtt_orig_ms\": 2}" $((2 * d)) \
			"OpenVPN 2.6 p2p (--ifconfig 10.98.0.2 10.98.0.1), --tls-crypt, --reneg-sec 8, --data-ciphers $cipher; about 25 s of pings inside the tunnel to 203.0.113.10:1194/$proto" "$rtt"
	done
}
