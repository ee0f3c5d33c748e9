# Remote desktops typed by a far operator: VNC (x11vnc on the host's Xvfb) and RDP (xrdp on
# the host, relaying to the same x11vnc through its VNC backend), each direct and through
# a socat relay beyond the sensor; the viewer runs under Xvfb in the operator namespace and
# is driven by xdotool.
#
# The viewer and the relay run at real-time priority, below the delay lines' (lab.sh): an
# RDP floor comes from two setup turns only, and on the loaded lab machine a viewer or relay
# waiting for a core stretched them by 5-10 ms (rdp-relay-25ms once read 64.3 ms for 58).
RT=(chrt -f 10)

HOST_DISPLAY=:71
OP_DISPLAY=:72

start_desktop() {
	[ -f "$RUN/x11vnc.pid" ] && return 0
	rm -f /tmp/.X71-lock /tmp/.X72-lock /tmp/.X11-unix/X71 /tmp/.X11-unix/X72
	spawn xvfb-host host Xvfb "$HOST_DISPLAY" -screen 0 800x600x24 -nolisten tcp
	spawn xvfb-op op Xvfb "$OP_DISPLAY" -screen 0 1024x768x24 -nolisten tcp
	sleep 2
	spawn xterm host env DISPLAY="$HOST_DISPLAY" xterm -geometry 96x36+0+0 -e bash --norc
	spawn x11vnc host x11vnc -display "$HOST_DISPLAY" -rfbport 5900 -nopw -forever -shared -quiet
	sleep 2
}

# viewer_session APP PEER SEED: starts the APP viewer (viewer_APP) towards PEER in the
# operator's X display, lets it draw, types into it, then closes it.
viewer_session() {
	local app=$1 peer=$2 seed=$3
	"viewer_$app" "$peer"
	sleep 4
	in_ns op env DISPLAY="$OP_DISPLAY" PYTHONPATH="$LAB_DIR" "$PY" "$LAB_DIR/xtypist.py" "$seed"
	sleep 1
	stop "viewer-$app"
}

viewer_vnc() {
	spawn viewer-vnc op "${RT[@]}" env DISPLAY="$OP_DISPLAY" xtightvncviewer -encodings "tight copyrect" "$1::5900"
}

# desktop_captures APP PORT: the direct and relayed captures of one protocol.
desktop_captures() {
	local app=$1 port=$2
	local d f rtt via peer
	spawn "relay-$app" relay "${RT[@]}" socat "TCP-LISTEN:$port,fork,reuseaddr" "TCP:$HOST_IP:$port"
	for via in direct relay; do
		for d in 5 25 60 120; do
			delays host=1 op=$d relay=2 srv=0 far=0
			f=$app-$via-${d}ms.pcap
			peer=$HOST_IP
			[ $via = relay ] && peer=$RELAY_IP
			rtt=$(ping_median op "$peer")
			sensor_start "$f"
			viewer_session "$app" "$peer" $((d + 1))
			sensor_stop
			if [ $via = direct ]; then
				manifest_add "$f" "$app viewer $d ms beyond the sensor controlling the host, typed" \
					"{\"relay\": false, \"far_operator\": $([ "$d" -ge 25 ] && echo true || echo false), \"app\": \"$app\", \"tcp_rtt_resp_ms\": 2, \"tcp_rtt_orig_ms\": $((2 * d))}" $((2 * d)) \
					"the viewer connects straight to the host; its input follows screen updates by the sensor<->operator round trip" "$rtt"
			else
				manifest_add "$f" "$app viewer $d ms behind a socat relay (2 ms beyond the sensor) controlling the host, typed" \
					"{\"relay\": true, \"relay_side\": \"originator\", \"far_operator\": true, \"app\": \"$app\", \"tcp_rtt_resp_ms\": 2, \"tcp_rtt_orig_ms\": 4}" $((2 * (2 + 2 + d))) \
					"the sensor sees the relay's connection (TCP 4 ms away); the operator's input follows screen updates by the sensor<->relay<->operator round trip (measured_ping is operator<->relay)" "$rtt"
			fi
		done
	done
	stop "relay-$app"
}

scenario_vnc() {
	start_desktop
	desktop_captures vnc 5900
}

viewer_rdp() {
	spawn viewer-rdp op "${RT[@]}" env DISPLAY="$OP_DISPLAY" xfreerdp "/v:$1" /u:operator /p:lab /cert:ignore \
		/size:800x600 /bpp:16 -decorations /log-level:ERROR
}

# xrdp on the host; its VNC backend (libvnc) shows the same x11vnc desktop, so no session
# manager or login is needed: the client's credentials go unused.
start_xrdp() {
	[ -f "$RUN/xrdp.pid" ] && return 0
	mkdir -p /run/xrdp/sockdir
	cat >"$RUN/xrdp.ini" <<CONF
[Globals]
ini_version=1
fork=true
port=3389
use_vsock=false
tcp_nodelay=true
tcp_keepalive=true
security_layer=negotiate
crypt_level=high
certificate=$RUN/tls.crt
key_file=$RUN/tls.key
ssl_protocols=TLSv1.2, TLSv1.3
autorun=vnc-host
allow_channels=true
allow_multimon=false
bitmap_cache=true
bitmap_compression=true
bulk_compression=true
max_bpp=24
new_cursors=true
use_fastpath=both
[Logging]
LogFile=$RUN/xrdp-app.log
LogLevel=INFO
EnableSyslog=false
[Channels]
rdpdr=false
rdpsnd=false
drdynvc=false
cliprdr=false
rail=false
xrdpvr=false
tcutils=false
[vnc-host]
name=vnc-host
lib=libvnc.so
ip=127.0.0.1
port=5900
username=na
password=na
CONF
	spawn xrdp host xrdp --nodaemon --config "$RUN/xrdp.ini"
	sleep 1
}

scenario_rdp() {
	start_desktop
	start_xrdp
	desktop_captures rdp 3389
}
