# Issue 17 census look-alike: a benign TLS 1.2 client whose answer to the server's flight
# is slow now and then because it checks the certificate's revocation before it answers.
# gnutls-cli --ocsp asks the OCSP responder named in the certificate (an HTTP round trip
# to the CA's responder, 25 ms away over the internal network on the far leg, so the
# sensor sees only the TLS connections) between the server's flight and its own next
# flight; curl does not. Per connection that is the originator-side split a relay on the
# host would show.

# A CA, a server certificate naming an OCSP responder, the responder's index: in $RUN.
make_ocsp_pki() {
	[ -f "$RUN/ocsp-srv.crt" ] && return 0
	openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=lab-ca \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
		-keyout "$RUN/ocsp-ca.key" -out "$RUN/ocsp-ca.crt" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj /CN=portal.example.com \
		-keyout "$RUN/ocsp-srv.key" -out "$RUN/ocsp-srv.csr" 2>/dev/null
	printf 'subjectAltName=DNS:portal.example.com\nauthorityInfoAccess=OCSP;URI:http://%s:8888\nextendedKeyUsage=serverAuth\n' \
		"$FAR_IP" >"$RUN/ocsp-ext.cnf"
	openssl x509 -req -in "$RUN/ocsp-srv.csr" -CA "$RUN/ocsp-ca.crt" -CAkey "$RUN/ocsp-ca.key" \
		-CAcreateserial -days 30 -extfile "$RUN/ocsp-ext.cnf" -out "$RUN/ocsp-srv.crt" 2>/dev/null
	local serial
	serial=$(openssl x509 -in "$RUN/ocsp-srv.crt" -noout -serial | cut -d= -f2)
	printf 'V\t%s\t\t%s\tunknown\t/CN=portal.example.com\n' \
		"$(date -u -d '+30 days' +%y%m%d%H%M%SZ)" "$serial" >"$RUN/ocsp-index.txt"
}

# nginx serving TLS 1.2 only with that certificate on :8444; the OCSP responder on :8888 behind the host.
start_ocsp_services() {
	[ -f "$RUN/nginx-tls12.pid" ] && return 0
	make_ocsp_pki
	cat "$RUN/ocsp-srv.crt" "$RUN/ocsp-ca.crt" >"$RUN/ocsp-chain.crt"
	cat >"$RUN/nginx-tls12.conf" <<CONF
worker_processes 1;
pid $RUN/nginx-tls12.master.pid;
error_log $RUN/nginx-tls12-error.log;
events { worker_connections 64; }
http {
	access_log off;
	server {
		listen $SRV_IP:8444 ssl;
		server_name portal.example.com;
		ssl_protocols TLSv1.2;
		ssl_certificate $RUN/ocsp-chain.crt;
		ssl_certificate_key $RUN/ocsp-srv.key;
		location / { default_type text/plain; return 200 "quarterly numbers\n"; }
	}
}
CONF
	spawn nginx-tls12 srv nginx -c "$RUN/nginx-tls12.conf" -g 'daemon off;'
	spawn ocsp-responder far openssl ocsp -index "$RUN/ocsp-index.txt" -port 8888 \
		-rsigner "$RUN/ocsp-ca.crt" -rkey "$RUN/ocsp-ca.key" -CA "$RUN/ocsp-ca.crt" -ignore_err
	sleep 1
}

# 16 TLS 1.2 connections from the host, 0.4 s apart: three curl, then one gnutls-cli that
# checks revocation, four times over.
revocation_clients() {
	local i j
	for i in $(seq 4); do
		for j in 1 2 3; do
			in_ns host curl -sk --tlsv1.2 --tls-max 1.2 --max-time 10 \
				--resolve "portal.example.com:8444:$SRV_IP" \
				"https://portal.example.com:8444/report/$i$j" >/dev/null
			sleep 0.4
		done
		printf 'GET /gnutls/%s HTTP/1.0\r\nHost: portal.example.com\r\n\r\n' "$i" |
			in_ns host timeout 10 gnutls-cli --ocsp --x509cafile "$RUN/ocsp-ca.crt" \
				--verify-hostname portal.example.com --sni-hostname portal.example.com \
				--priority NORMAL:-VERS-TLS1.3 -p 8444 "$SRV_IP" >>"$RUN/gnutls-cli.log" 2>&1 || true
		sleep 0.4
	done
}

scenario_tls_revocation() {
	start_ocsp_services
	local d=25 f rtt
	delays host=1 srv=$d far=25 relay=0 op=0
	f=tls-revocation-check-${d}ms.pcap
	rtt=$(ping_median host "$SRV_IP")
	sensor_start "$f"
	revocation_clients
	sensor_stop
	grep -q 'OCSP: verified' "$RUN/gnutls-cli.log" || log "warning: gnutls-cli did not verify by OCSP"
	manifest_add "$f" "tls 1.2 from the host to nginx, no relay; one client in four checks the certificate by OCSP before it answers" \
		"{\"relay\": false, \"relay_side\": null, \"app\": \"tls\", \"tcp_rtt_resp_ms\": $((2 * d)), \"tcp_rtt_orig_ms\": 2}" $((2 * d)) \
		"12 curl and 4 gnutls-cli --ocsp connections to 203.0.113.10:8444 (TLS 1.2, CA-signed certificate naming the OCSP responder 172.31.0.2:8888, 25 ms behind the host and not seen by the sensor); gnutls-cli's next flight waits for the OCSP exchange (a TCP connection and a POST, about 100 ms): the client's own work, not a relay" "$rtt"
}
