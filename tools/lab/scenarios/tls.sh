# Issue 17 rtt_split: TLS to a web server, direct and through a TCP relay.
# The sensor times the TCP handshake (sensor <-> next TCP hop) and the TLS exchange
# (sensor <-> the real TLS peer); a relay makes the two disagree.

start_nginx() {
	[ -f "$RUN/nginx.pid" ] && return 0
	cat >"$RUN/nginx.conf" <<CONF
worker_processes 1;
pid $RUN/nginx.master.pid;
error_log $RUN/nginx-error.log;
events { worker_connections 64; }
http {
	access_log off;
	server {
		listen $SRV_IP:443 ssl;
		listen 8080;
		server_name portal.example.com;
		ssl_certificate $RUN/tls.crt;
		ssl_certificate_key $RUN/tls.key;
		location / { default_type text/plain; return 200 "quarterly numbers\n"; }
	}
}
CONF
	spawn nginx srv nginx -c "$RUN/nginx.conf" -g 'daemon off;'
	sleep 1
}

# 12 curl and 4 openssl s_client connections from namespace $1 to $2:$3, 0.4 s apart.
tls_clients() {
	local ns=$1 addr=$2 port=$3 i
	for i in $(seq 12); do
		in_ns "$ns" curl -sk --max-time 10 --resolve "portal.example.com:$port:$addr" \
			"https://portal.example.com:$port/report/$i" >/dev/null
		sleep 0.4
	done
	for i in $(seq 4); do
		printf 'GET /s_client/%s HTTP/1.0\r\nHost: portal.example.com\r\n\r\n' "$i" |
			in_ns "$ns" timeout 10 openssl s_client -connect "$addr:$port" \
				-servername portal.example.com -quiet -ign_eof >/dev/null 2>&1 || true
		sleep 0.4
	done
}

scenario_tls() {
	start_nginx
	local d rtt f
	# (a) direct: host -> sensor -> server, one-way delay d beyond the sensor.
	for d in 5 25 60; do
		delays host=1 srv=$d relay=2 far=0 op=0
		f=tls-direct-${d}ms.pcap
		rtt=$(ping_median host "$SRV_IP")
		sensor_start "$f"
		tls_clients host "$SRV_IP" 443
		sensor_stop
		manifest_add "$f" "tls direct to the server" \
			"{\"relay\": false, \"relay_side\": null, \"app\": \"tls\", \"tcp_rtt_resp_ms\": $((2 * d)), \"tcp_rtt_orig_ms\": 2}" $((2 * d)) \
			"TCP and TLS round trips agree: both are sensor<->server" "$rtt"
	done
	# (b) a socat relay beyond the sensor (2 ms away), the server behind it d ms further.
	spawn relay-socat relay socat TCP-LISTEN:8443,fork,reuseaddr "TCP:$SRV_IP:443"
	for d in 25 60; do
		delays host=1 relay=2 srv=$d far=0 op=0
		f=tls-relay-far-side-${d}ms.pcap
		rtt=$(ping_median relay "$SRV_IP")
		sensor_start "$f"
		tls_clients host "$RELAY_IP" 8443
		sensor_stop
		manifest_add "$f" "tls through a socat relay beyond the sensor" \
			"{\"relay\": true, \"relay_side\": \"responder\", \"app\": \"tls\", \"tcp_rtt_resp_ms\": 4, \"tcp_rtt_orig_ms\": 2}" $((2 * (2 + 2 + d))) \
			"TCP handshake at the sensor: 2*2 ms to the relay; the server is 2+$d ms behind it. socat connects only when the client has connected, so ClientHello->ServerHello is the relay's connect plus the TLS exchange: about 2*expected_rtt_ms (measured_ping is relay<->server)" "$rtt"
	done
	stop relay-socat
	# (c) a relay on the client side: the real client is d ms behind the host, which
	# relays to the server; the sensor sees the host's connection only.
	spawn host-socat host socat "TCP-LISTEN:8443,bind=$HOST_FAR_IP,fork,reuseaddr" "TCP:$SRV_IP:443"
	for d in 25 60; do
		delays host=1 srv=5 far=$d relay=0 op=0
		f=tls-relay-client-side-${d}ms.pcap
		rtt=$(ping_median far "$HOST_FAR_IP")
		sensor_start "$f"
		tls_clients far "$HOST_FAR_IP" 8443
		sensor_stop
		manifest_add "$f" "tls from a far client through a relay on the inside host" \
			"{\"relay\": true, \"relay_side\": \"originator\", \"app\": \"tls\", \"tcp_rtt_resp_ms\": 10, \"tcp_rtt_orig_ms\": 2}" $((2 * (1 + d))) \
			"TCP handshake at the sensor: 2*5 ms to the server, 2*1 ms to the host; the client's next TLS flight after the ServerHello comes expected_rtt_ms (sensor<->far client) later (measured_ping is far client<->host)" "$rtt"
	done
	stop host-socat
}
