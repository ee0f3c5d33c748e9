# Issue 17 SSL-VPN tunnel: openconnect on the host to ocserv on the "Internet" (CSTP over
# TLS on 443/tcp, DTLS on 443/udp), with a little traffic through the tunnel.

start_ocserv() {
	[ -f "$RUN/ocserv.pid" ] && return 0
	openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=vpn.example.com \
		-addext subjectAltName=DNS:vpn.example.com \
		-keyout "$RUN/vpn.key" -out "$RUN/vpn.crt" 2>/dev/null
	printf 'operator:*:%s\n' "$(openssl passwd -6 lab-secret)" >"$RUN/ocpasswd"
	cat >"$RUN/ocserv.conf" <<CONF
auth = "plain[passwd=$RUN/ocpasswd]"
listen-host = $VPN_IP
tcp-port = 443
udp-port = 443
run-as-user = nobody
run-as-group = nogroup
socket-file = $RUN/ocserv.sock
server-cert = $RUN/vpn.crt
server-key = $RUN/vpn.key
isolate-workers = false
max-clients = 4
max-same-clients = 2
keepalive = 300
dpd = 60
mobile-dpd = 300
try-mtu-discovery = false
cookie-timeout = 300
deny-roaming = false
use-occtl = false
pid-file = $RUN/ocserv.daemon.pid
device = vpns
predictable-ips = true
ipv4-network = 192.168.99.0
ipv4-netmask = 255.255.255.0
route = 192.168.99.0/255.255.255.0
CONF
	spawn ocserv srv ocserv -f -c "$RUN/ocserv.conf"
	sleep 2
}

scenario_openconnect() {
	start_nginx
	start_ocserv
	local pin f=openconnect-ocserv-25ms.pcap rtt
	pin=$(openssl x509 -in "$RUN/vpn.crt" -pubkey -noout | openssl pkey -pubin -outform der |
		openssl dgst -sha256 -binary | base64)
	delays host=1 srv=25 op=0 far=0 relay=0
	rtt=$(ping_median host "$VPN_IP")
	sensor_start "$f"
	echo lab-secret | spawn openconnect host openconnect --passwd-on-stdin --non-inter \
		-u operator --servercert "pin-sha256:$pin" --script "$LAB_DIR/vpn-script.sh" \
		-i fwlab-tun "https://$VPN_IP/"
	for _ in $(seq 30); do in_ns host ip addr show dev fwlab-tun 2>/dev/null | grep -q 'inet ' && break; sleep 0.5; done
	sleep 2 # DTLS comes up after CSTP
	in_ns host ping -n -c 5 -i 0.5 192.168.99.1 >>"$RUN/openconnect.log" 2>&1 || true
	in_ns host curl -s --max-time 10 http://192.168.99.1:8080/inside >>"$RUN/openconnect.log" || true
	sleep 1
	stop openconnect
	sensor_stop
	manifest_add "$f" "openconnect from the host to ocserv, a ping and an HTTP request inside the tunnel" \
		'{"tunnel": "ssl-vpn", "relay": false, "app": "anyconnect", "tcp_rtt_resp_ms": 50, "tcp_rtt_orig_ms": 2}' 50 \
		"CSTP: TLS to 203.0.113.11:443 with an HTTP CONNECT /CSCOSSLC/tunnel inside; DTLS on 443/udp when it comes up" "$rtt"
}
