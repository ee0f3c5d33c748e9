# Typed SSH sessions: a reverse session driven from outside (issue 17 reverse_session),
# its look-alike typed from inside, and inbound SSH typed by a far operator (issue 20).

SSH_OPTS=(-F /dev/null -i "$RUN/id_ed25519" -o StrictHostKeyChecking=no
	-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ServerAliveInterval=0)

start_sshd() {
	local ns=$1
	[ -f "$RUN/sshd-$ns.pid" ] && return 0
	mkdir -p /run/sshd
	cat >"$RUN/sshd-$ns.conf" <<CONF
Port 22
HostKey $RUN/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
AuthorizedKeysFile $RUN/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
AllowTcpForwarding yes
CONF
	spawn "sshd-$ns" "$ns" /usr/sbin/sshd -D -e -f "$RUN/sshd-$ns.conf"
	sleep 0.5
}

# typist SEED NS ARGS...: types the standard commands into an ssh started in NS.
typist() {
	local seed=$1 ns=$2
	shift 2
	in_ns "$ns" "$PY" "$LAB_DIR/typist.py" "$seed" -- ssh "${SSH_OPTS[@]}" "$@" >>"$RUN/typist.log" 2>&1
}

scenario_ssh_reverse() {
	start_sshd host
	start_sshd op
	local d f rtt
	for d in 25 60; do
		delays host=1 op=$d srv=0 far=0 relay=0
		f=ssh-reverse-${d}ms.pcap
		rtt=$(ping_median host "$OP_IP")
		sensor_start "$f"
		# The host opens the tunnel; the operator at the outside end comes back through it.
		spawn ssh-R host ssh "${SSH_OPTS[@]}" -N -R 2222:localhost:22 "root@$OP_IP"
		sleep 2
		typist 17 op -p 2222 root@localhost
		stop ssh-R
		sensor_stop
		manifest_add "$f" "ssh -R from the host to an outside sshd; the outside operator types through the tunnel" \
			"{\"reverse_session\": true, \"far_operator\": true, \"typing_side\": \"responder\", \"app\": \"ssh\", \"tcp_rtt_resp_ms\": $((2 * d)), \"tcp_rtt_orig_ms\": 2}" $((2 * d)) \
			"keystrokes arrive from the responder (the outside sshd side) and their echoes leave from the host; the keystroke->echo turn at the sensor is expected_rtt_ms" "$rtt"
	done
	delays host=1 op=60 srv=0 far=0 relay=0
	f=ssh-outbound-typed-inside-60ms.pcap
	rtt=$(ping_median host "$OP_IP")
	sensor_start "$f"
	typist 18 host "root@$OP_IP"
	sensor_stop
	manifest_add "$f" "ordinary outbound ssh typed on the host (look-alike of the reverse session)" \
		'{"reverse_session": false, "far_operator": false, "typing_side": "originator", "app": "ssh", "tcp_rtt_resp_ms": 120, "tcp_rtt_orig_ms": 2}' 2 \
		"keystrokes from the originator at the sensor; echo comes back 120 ms later but the typist is 1 ms from the sensor" "$rtt"
}

scenario_ssh_inbound() {
	start_sshd host
	local d f rtt
	for d in 5 25 60 120; do
		delays host=1 op=$d srv=0 far=0 relay=0
		f=ssh-inbound-${d}ms.pcap
		rtt=$(ping_median op "$HOST_IP")
		sensor_start "$f"
		typist 20 op "root@$HOST_IP"
		sensor_stop
		manifest_add "$f" "inbound ssh to the host typed by an operator $d ms beyond the sensor" \
			"{\"far_operator\": $([ "$d" -ge 25 ] && echo true || echo false), \"typing_side\": \"originator\", \"app\": \"ssh\", \"tcp_rtt_resp_ms\": 2, \"tcp_rtt_orig_ms\": $((2 * d))}" $((2 * d)) \
			"the host's sshd answers in 2 ms at the sensor; the operator's keystrokes and ACKs come from $d ms away" "$rtt"
	done
}
