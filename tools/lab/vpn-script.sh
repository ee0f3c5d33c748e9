#!/bin/sh
# openconnect's --script for the lab: brings the tunnel up with the address ocserv gave and
# a route to the VPN network only (the lab's default route stays outside the tunnel).
case "$reason" in
connect)
	ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1300}"
	ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
	ip route add 192.168.99.0/24 dev "$TUNDEV"
	;;
esac
exit 0
