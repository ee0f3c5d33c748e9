#!/usr/bin/env python3
"""Checks the lab captures with tshark and prints what it sees, one line per capture:
TCP conversations, frames dissected as the expected protocol, and per-connection timings
at the sensor (medians): SYN->SYN/ACK (responder leg), SYN/ACK->ACK (originator leg),
first request->first response payload (TLS ClientHello->ServerHello for TLS), and
server's first response->client's next payload (the originator's application turn).

Usage: verify.py fixtures/lab   (reads manifest.json there; exit 1 when a check fails)
"""
import json
import os
import statistics
import subprocess
import sys

# Display filters that must match: (name, extra tshark arguments, filter). tshark 4.0 does
# not follow RDP's switch to TLS on its own, hence the decode-as for the second RDP check.
CHECKS = {
    "tls": [("tls.handshake", [], "tls.handshake")],
    "ssh": [("ssh", [], "ssh")],
    "vnc": [("vnc", [], "vnc")],
    "rdp": [("rdp", [], "rdp"), ("tls.handshake", ["-d", "tcp.port==3389,tls"], "tls.handshake")],
    "openvpn": [("openvpn", [], "openvpn"), ("tls.handshake", [], "tls.handshake")],
    # AnyConnect's CSTP channel is TLS; its DTLS channel is checked for "ssl-vpn" below.
    "anyconnect": [("tls.handshake", [], "tls.handshake")],
}


def tshark(path, *args):
    return subprocess.run(["tshark", "-r", path, *args], check=True, capture_output=True, text=True).stdout


def timings(path):
    out = tshark(path, "-Y", "tcp", "-T", "fields", "-e", "frame.time_epoch", "-e", "tcp.stream",
                 "-e", "tcp.flags.syn", "-e", "tcp.flags.ack", "-e", "tcp.len", "-e", "tcp.srcport",
                 "-e", "tcp.dstport", "-E", "occurrence=f")
    streams = {}
    for line in out.splitlines():
        t, s, syn, ack, ln, sp, dp = line.split("\t")
        st = streams.setdefault(s, {"pkts": []})
        st["pkts"].append((float(t), syn == "1", ack == "1", int(ln or 0), sp))
    resp, orig, first, turn = [], [], [], []
    for st in streams.values():
        p = st["pkts"]
        syn = next((x for x in p if x[1] and not x[2]), None)
        if not syn:
            continue
        client_port = syn[4]
        synack = next((x for x in p if x[1] and x[2]), None)
        if not synack:
            continue
        ack = next((x for x in p if x[0] > synack[0] and not x[1] and x[4] == client_port), None)
        resp.append(synack[0] - syn[0])
        if ack:
            orig.append(ack[0] - synack[0])
        req = next((x for x in p if x[3] > 0 and x[4] == client_port), None)
        rsp = next((x for x in p if req and x[0] > req[0] and x[3] > 0 and x[4] != client_port), None)
        if req and rsp:
            first.append(rsp[0] - req[0])
            nxt = next((x for x in p if x[0] > rsp[0] and x[3] > 0 and x[4] == client_port), None)
            if nxt:
                turn.append(nxt[0] - rsp[0])
    med = lambda v: round(statistics.median(v) * 1000, 1) if v else None
    return len(resp), med(resp), med(orig), med(first), med(turn)


def main():
    root = sys.argv[1]
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    failed = 0
    for cap in manifest["captures"]:
        path = os.path.join(root, cap["file"])
        app = cap["expected"]["app"]
        convs = sum(1 for l in tshark(path, "-q", "-z", "conv,tcp").splitlines() if "<->" in l)
        checks = list(CHECKS[app])
        if cap["expected"].get("tunnel") == "ssl-vpn":
            checks.append(("dtls", [], "dtls"))
        if cap["expected"].get("tls_crypt"):
            # tls-crypt encrypts the control channel: no TLS handshake in clear, but the
            # renegotiations' soft resets (opcode 3) are there.
            checks = [("openvpn", [], "openvpn"), ("soft reset", [], "openvpn.opcode == 0x03")]
        counts = [(name, len(tshark(path, *args, "-Y", flt).splitlines())) for name, args, flt in checks]
        n, resp, orig, first, turn = timings(path)
        ok = convs > 0 and all(c > 0 for _, c in counts)
        failed += not ok
        seen = ", ".join(f"{c} frames {name}" for name, c in counts)
        print(f"{'ok ' if ok else 'BAD'} {cap['file']}: {convs} tcp conv, {seen}; {n} handshakes, "
              f"syn->synack {resp} ms, synack->ack {orig} ms, "
              f"request->response {first} ms, response->next request {turn} ms")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
