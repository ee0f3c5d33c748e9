#!/usr/bin/env python3
"""A two-port Ethernet wire that holds every frame a fixed time before passing it on.

tc netem is not available on the lab kernel, so the lab bridges two veth ends with raw
AF_PACKET sockets: each frame read on one port is sent out of the other `delay` ms later,
in both directions, in arrival order. Usage: delayline.py IF_A IF_B DELAY_MS
Run it inside the namespace that holds both interfaces; SIGTERM stops it.
"""
import collections
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def open_port(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def main():
    if_a, if_b, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    delay = delay_ms / 1000.0
    a, b = open_port(if_a), open_port(if_b)
    # Frames waiting per output port: (due time, frame). A fixed delay keeps each queue sorted.
    queue = {a: collections.deque(), b: collections.deque()}
    peer = {a: b, b: a}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    poller = select.epoll()
    poller.register(a.fileno(), select.EPOLLIN)
    poller.register(b.fileno(), select.EPOLLIN)
    by_fd = {a.fileno(): a, b.fileno(): b}
    while True:
        now = time.monotonic()
        for out, q in queue.items():
            while q and q[0][0] <= now:
                try:
                    out.send(q.popleft()[1])
                except OSError:
                    pass  # a frame the peer cannot take (interface down) is dropped, as on a wire
        due = [q[0][0] for q in queue.values() if q]
        # epoll rounds its timeout up to whole milliseconds: wait the whole ones, then
        # poll without waiting until the frame is due, so the delay is exact to ~0.1 ms.
        timeout = int(max(0.0, min(due) - time.monotonic()) * 1000) / 1000 if due else 1.0
        for fd, _ in poller.poll(timeout):
            src = by_fd[fd]
            while True:
                try:
                    frame, addr = src.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own sends, seen again on the port
                queue[peer[src]].append((time.monotonic() + delay, frame))


if __name__ == "__main__":
    main()
