//! Our remote-access dissectors against other projects' expected outputs on real captures:
//! Zeek baselines (TSV logs), zeek/spicy-analyzers baselines and suricata-verify test.yaml
//! checks. Payloads are extracted with tshark; without tshark the tests skip (a recorded
//! skip), except under `CI=true`, where they fail. The spicy-analyzer traces are optional
//! (see `tests/captures/README.md`): without them those checks are a recorded skip.

mod support;

use farmwatch::dissect::{ipsec, openvpn, rdp, rfb, socks, ssh, stun, wireguard};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's capture root (`tests/captures`), or None (after a recorded skip) when
/// tshark is missing outside CI.
fn captures() -> Option<PathBuf> {
    support::require(support::has_tool("tshark"), "tshark").then(support::project_captures)
}

fn tshark_fields(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    // Wireshark's VNC dissector takes minutes on framebuffer updates; we only need TCP.
    cmd.arg("-r").arg(pcap).args([
        "-n",
        "--disable-protocol",
        "vnc",
        "-Y",
        filter,
        "-T",
        "fields",
        "-E",
        "separator=\t",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(out.status.success(), "tshark failed on {}", pcap.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// One TCP connection's in-order payload per direction (retransmissions dropped, stops at
/// the first gap).
#[derive(Default, Debug)]
struct Conn {
    orig_port: u16,
    client: Vec<u8>,
    server: Vec<u8>,
}

/// Per connection: the payload so far, the next expected sequence number per direction and
/// whether a gap ended that direction.
struct Reassembly {
    conn: Conn,
    next: [Option<u32>; 2],
    gap: [bool; 2],
}

fn tcp_conns(pcap: &Path) -> Vec<Conn> {
    let rows = tshark_fields(
        pcap,
        "tcp && !icmp && !icmpv6",
        &[
            "tcp.stream",
            "tcp.srcport",
            "tcp.dstport",
            "tcp.seq_raw",
            "tcp.flags.syn",
            "tcp.flags.ack",
            "tcp.payload",
        ],
    );
    let mut conns: HashMap<u32, Reassembly> = HashMap::new();
    let mut order = vec![];
    for r in rows {
        let [stream, sport, dport, seq, syn, ack, payload] = &r[..] else {
            continue;
        };
        let stream: u32 = stream.parse().unwrap();
        let (sport, dport): (u16, u16) = (sport.parse().unwrap(), dport.parse().unwrap());
        let seq: u32 = seq.parse().unwrap();
        let entry = conns.entry(stream).or_insert_with(|| {
            order.push(stream);
            // The sender of a first SYN is the originator, the sender of a SYN-ACK the
            // responder; a capture that starts mid-connection: the lower port responds.
            let from_resp = if syn == "1" {
                ack == "1"
            } else {
                sport < dport
            };
            let orig_port = if from_resp { dport } else { sport };
            Reassembly {
                conn: Conn {
                    orig_port,
                    ..Conn::default()
                },
                next: [None, None],
                gap: [false; 2],
            }
        });
        let Reassembly { conn, next, gap } = entry;
        let dir = usize::from(sport != conn.orig_port);
        if syn == "1" {
            next[dir] = Some(seq.wrapping_add(1));
            continue;
        }
        let data = unhex(payload);
        if data.is_empty() || gap[dir] {
            continue;
        }
        let expected = *next[dir].get_or_insert(seq);
        let offset = expected.wrapping_sub(seq) as usize;
        if seq.wrapping_sub(expected) as i32 > 0 {
            gap[dir] = true;
            continue;
        }
        if offset < data.len() {
            let buf = if dir == 0 {
                &mut conn.client
            } else {
                &mut conn.server
            };
            buf.extend(&data[offset..]);
            next[dir] = Some(expected.wrapping_add((data.len() - offset) as u32));
        }
    }
    order
        .into_iter()
        .map(|s| conns.remove(&s).unwrap().conn)
        .collect()
}

/// UDP datagrams: (source port, destination port, payload).
fn udp_datagrams(pcap: &Path) -> Vec<(u16, u16, Vec<u8>)> {
    tshark_fields(
        pcap,
        "udp && !icmp && !icmpv6",
        &["udp.srcport", "udp.dstport", "udp.payload"],
    )
    .into_iter()
    .filter_map(|r| match &r[..] {
        [s, d, p] => Some((s.parse().ok()?, d.parse().ok()?, unhex(p))),
        _ => None,
    })
    .collect()
}

/// A Zeek TSV log as rows of field -> value.
fn zeek_log(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // A `#fields` header, or (for zeek-cut output) a first line of bare field names.
    let header = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("#fields\t")
                .or_else(|| l.strip_prefix("ts\t").map(|_| l))
        })
        .expect("a fields header");
    let fields: Vec<&str> = header.split('\t').collect();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("ts\t"))
        .map(|l| {
            fields
                .iter()
                .map(|f| f.to_string())
                .zip(l.split('\t').map(str::to_owned))
                .collect()
        })
        .collect()
}

/// Zeek's log escaping: `\\` and `\xNN`.
fn zeek_unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn unset(v: &str) -> bool {
    v == "-" || v == "(empty)"
}

/// The first connection whose server stream starts with `magic` (captures hold other flows).
fn speaking<'a>(conns: &'a [Conn], magic: &[u8]) -> &'a Conn {
    conns
        .iter()
        .find(|c| c.server.starts_with(magic))
        .expect("a connection of the protocol")
}

fn by_orig_port<'a>(conns: &'a [Conn], row: &HashMap<String, String>) -> Option<&'a Conn> {
    let p: u16 = row["id.orig_p"].parse().unwrap();
    conns.iter().find(|c| c.orig_port == p)
}

#[test]
fn rdp_matches_zeek() {
    let Some(root) = captures() else { return };
    let cases = [
        ("rdp-to-ssl", "rdp-to-ssl"),
        ("rdp-no-cookie-mstshash", "rdp-no-cookie-msthash"),
        ("rdp-proprietary-encryption", "rdp-proprietary-encryption"),
        ("rdp-x509", "rdp-x509"),
        ("rdp-unknown-keyboard", "rdp-unknown-keyboard"),
    ];
    let mut checked = 0;
    for (trace, baseline) in cases {
        let conns = tcp_conns(&root.join(format!("zeek/Traces/rdp/{trace}.pcap")));
        let log = root.join(format!(
            "zeek/Baseline/scripts.base.protocols.rdp.{baseline}/rdp.log"
        ));
        for row in zeek_log(&log) {
            let c = by_orig_port(&conns, &row)
                .unwrap_or_else(|| panic!("{trace}: no conn for {row:?}"));
            let req = rdp::parse_connection_request(&c.client).unwrap();
            let cookie = req.cookie.clone().unwrap_or_default();
            let want = if unset(&row["cookie"]) {
                vec![]
            } else {
                zeek_unescape(&row["cookie"])
            };
            assert_eq!(cookie.as_bytes(), want, "{trace} cookie");
            // No RDP_NEG_RSP means standard RDP security; an RDP_NEG_FAILURE means none.
            let cc = rdp::parse_connection_confirm(&c.server).unwrap();
            let got = match (cc.selected_protocol, cc.failure_code) {
                (_, Some(_)) => None,
                (None, None) => Some("RDP".to_owned()),
                (Some(p), None) => rdp::selected_protocol_name(p).map(str::to_ascii_uppercase),
            };
            let want = Some(row["security_protocol"].clone()).filter(|v| !unset(v));
            assert_eq!(got, want, "{trace}:{} security protocol", row["id.orig_p"]);
            checked += 1;
        }
    }
    assert_eq!(checked, 7);
}

#[test]
fn rdp_matches_suricata_cookie() {
    let Some(root) = captures() else { return };
    let conns = tcp_conns(&root.join("suricata-verify/rdp-protocol/RDP-003.pcap"));
    let yaml =
        std::fs::read_to_string(root.join("suricata-verify/rdp-protocol/test.yaml")).unwrap();
    assert!(yaml.contains("rdp.cookie: \"A70067\""));
    let req = rdp::parse_connection_request(&conns[0].client).unwrap();
    assert_eq!(req.cookie.as_deref(), Some("A70067"));
}

#[test]
fn rdpeudp_handshakes_match_zeek() {
    let Some(root) = captures() else { return };
    // Zeek's `out` baselines report rdpeudp_syn (and rdpeudp_synack where the server
    // answered); the SYNEX uUdpVer values are those in the traces (tshark -e udp.payload).
    for (trace, version) in [
        ("rdpeudp-handshake-success", 3),
        ("rdpeudp2-handshake-success", 0x101),
        ("rdpeudp-handshake-fail", 2),
    ] {
        let out = std::fs::read_to_string(root.join(format!(
            "zeek/Baseline/scripts.base.protocols.rdp.{trace}/out"
        )))
        .unwrap();
        let d = udp_datagrams(&root.join(format!("zeek/Traces/rdp/{trace}.pcap")));
        let syn = rdp::parse_rdpeudp_syn(&d[0].2).unwrap();
        assert!(!syn.synack && out.contains("rdpeudp_syn,"), "{trace}");
        assert_eq!(syn.version, Some(version), "{trace}");
        let synack = d
            .iter()
            .find_map(|(s, _, p)| (*s == 3389).then(|| rdp::parse_rdpeudp_syn(p)));
        assert_eq!(synack.is_some(), out.contains("rdpeudp_synack"), "{trace}");
        if let Some(a) = synack {
            assert!(a.unwrap().synack);
        }
    }
}

fn rfb_session(c: &Conn) -> rfb::Session {
    rfb::parse_session(&c.client, &c.server).unwrap()
}

#[test]
fn rfb_matches_zeek() {
    let Some(root) = captures() else { return };
    let cases = [
        ("vncmac", "rfb-apple-remote-desktop"),
        ("vnc-mac-to-linux", "vnc-mac-to-linux"),
        ("vnc-scanner", "vnc-scanner"),
    ];
    let mut checked = 0;
    for (trace, baseline) in cases {
        let conns = tcp_conns(&root.join(format!("zeek/Traces/rfb/{trace}.pcap")));
        let log = root.join(format!(
            "zeek/Baseline/scripts.base.protocols.rfb.{baseline}/rfb.log"
        ));
        for row in zeek_log(&log) {
            let c = by_orig_port(&conns, &row).unwrap();
            let s = rfb_session(c);
            let ver = |v: Option<(u8, u16)>| v.map(|(a, b)| (format!("{a:03}"), format!("{b:03}")));
            let want = |a: &str, b: &str| Some((row[a].clone(), row[b].clone()));
            assert_eq!(
                ver(s.client_version),
                want("client_major_version", "client_minor_version")
            );
            assert_eq!(
                ver(s.server_version),
                want("server_major_version", "server_minor_version")
            );
            let method = s.auth_type.map(|t| rfb::security_type_name(t).to_owned());
            assert_eq!(
                method,
                Some(row["authentication_method"].clone()).filter(|v| !unset(v)),
                "{trace}"
            );
            let tf = |b: Option<bool>| b.map(|b| if b { "T" } else { "F" }.to_owned());
            assert_eq!(
                tf(s.auth_ok),
                Some(row["auth"].clone()).filter(|v| !unset(v)),
                "{trace}"
            );
            assert_eq!(
                tf(s.share_flag),
                Some(row["share_flag"].clone()).filter(|v| !unset(v)),
                "{trace}"
            );
            assert_eq!(
                s.width.map(|w| w.to_string()),
                Some(row["width"].clone()).filter(|v| !unset(v))
            );
            assert_eq!(
                s.height.map(|h| h.to_string()),
                Some(row["height"].clone()).filter(|v| !unset(v))
            );
            if let Some(name) = &s.desktop_name {
                assert_eq!(
                    &String::from_utf8_lossy(&zeek_unescape(&row["desktop_name"])),
                    name,
                    "{trace}"
                );
            }
            assert_eq!(s.ard, trace == "vncmac", "{trace}");
            checked += 1;
        }
    }
    assert_eq!(checked, 7);
}

/// suricata-verify test.yaml checks: every `proto.key: value` line.
fn suricata_checks(root: &Path, test: &str) -> (PathBuf, Vec<(String, String)>) {
    let dir = root.join("suricata-verify").join(test);
    let yaml = std::fs::read_to_string(dir.join("test.yaml")).unwrap();
    let pcap = yaml
        .lines()
        .find_map(|l| l.strip_prefix("pcap: "))
        .map(|p| dir.join(p.trim()))
        .or_else(|| {
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        })
        .expect("a pcap");
    let checks = yaml
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("rfb.") || k.starts_with("ssh.") || k.starts_with("rdp."))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect();
    (pcap, checks)
}

#[test]
fn rfb_matches_suricata() {
    let Some(root) = captures() else { return };
    let mut checked = 0;
    for test in [
        "rfb-protocol-3.3",
        "rfb-protocol-3.7",
        "rfb-protocol-3.8",
        "rfb-failure",
    ] {
        let (pcap, checks) = suricata_checks(&root, test);
        let conns = tcp_conns(&pcap);
        let s = rfb_session(speaking(&conns, b"RFB "));
        for (k, v) in checks {
            let got = match k.as_str() {
                "rfb.server_protocol_version.major" => {
                    s.server_version.map(|v| format!("{:03}", v.0))
                }
                "rfb.server_protocol_version.minor" => {
                    s.server_version.map(|v| format!("{:03}", v.1))
                }
                "rfb.client_protocol_version.major" => {
                    s.client_version.map(|v| format!("{:03}", v.0))
                }
                "rfb.client_protocol_version.minor" => {
                    s.client_version.map(|v| format!("{:03}", v.1))
                }
                "rfb.authentication.security_type" => s.auth_type.map(|t| t.to_string()),
                "rfb.authentication.security_result" => {
                    s.auth_ok.map(|ok| if ok { "OK" } else { "FAIL" }.into())
                }
                "rfb.screen_shared" => s.share_flag.map(|b| b.to_string()),
                "rfb.framebuffer.width" => s.width.map(|w| w.to_string()),
                "rfb.framebuffer.height" => s.height.map(|h| h.to_string()),
                "rfb.server_security_failure_reason" => s.failure_reason.clone(),
                // Suricata escapes non-ASCII name bytes as \\xNN; our name is lossy UTF-8.
                "rfb.framebuffer.name" if v.starts_with("\\\\x") => continue,
                "rfb.framebuffer.name" => s.desktop_name.clone(),
                _ => continue,
            };
            assert_eq!(got.as_deref(), Some(v.as_str()), "{test} {k}");
            checked += 1;
        }
    }
    assert_eq!(checked, 29);
}

/// The negotiated algorithm of RFC 4253 §7.1: the client's first that the server also has.
fn negotiate(client: &[String], server: &[String]) -> Option<String> {
    client.iter().find(|a| server.contains(a)).cloned()
}

struct SshConn {
    client: ssh::Banner,
    server: ssh::Banner,
    client_kex: Option<ssh::KexInit>,
    server_kex: Option<ssh::KexInit>,
}

fn ssh_conn(c: &Conn, what: &str) -> SshConn {
    let client =
        ssh::parse_banner(&c.client).unwrap_or_else(|e| panic!("{what}: client {e:?} {c:?}"));
    let server =
        ssh::parse_banner(&c.server).unwrap_or_else(|e| panic!("{what}: server {e:?} {c:?}"));
    let client_kex = ssh::parse_kexinit(&c.client[client.len..]).ok();
    let server_kex = ssh::parse_kexinit(&c.server[server.len..]).ok();
    SshConn {
        client,
        server,
        client_kex,
        server_kex,
    }
}

#[test]
fn ssh_matches_zeek() {
    let Some(root) = captures() else { return };
    let cases = [
        ("ssh.pcap", "basic"),
        ("server-pre-banner-data.pcap", "pre-banner"),
        ("ssh_version_199.pcap", "ssh_version_199"),
        ("ssh_kex_curve25519.pcap", "curve25519_kex"),
        ("ssh_kex_dh_group18.pcap", "dh_group18_kex"),
        ("ssh_kex_mlkem.pcap", "mlkem_kex"),
    ];
    let mut checked = 0;
    for (trace, baseline) in cases {
        let conns = tcp_conns(&root.join("zeek/Traces/ssh").join(trace));
        let log = root.join(format!(
            "zeek/Baseline/scripts.base.protocols.ssh.{baseline}/ssh.log"
        ));
        for row in zeek_log(&log) {
            let Some(c) = by_orig_port(&conns, &row) else {
                // The basic baseline covers several traces; rows of others are not here.
                assert_eq!(
                    baseline, "basic",
                    "{trace}: no conn for {}",
                    row["id.orig_p"]
                );
                continue;
            };
            let s = ssh_conn(c, trace);
            assert_eq!(s.client.raw, row["client"], "{trace}");
            assert_eq!(s.server.raw, row["server"], "{trace}");
            assert_eq!(s.client.skipped, 0, "{trace}");
            assert_eq!(s.server.skipped > 0, baseline == "pre-banner", "{trace}");
            if let (Some(ck), Some(sk)) = (&s.client_kex, &s.server_kex) {
                let want = |f: &str| Some(row[f].clone()).filter(|v| !unset(v));
                assert_eq!(negotiate(&ck.kex, &sk.kex), want("kex_alg"), "{trace} kex");
                assert_eq!(
                    negotiate(&ck.host_key, &sk.host_key),
                    want("host_key_alg"),
                    "{trace}"
                );
                assert_eq!(
                    negotiate(&ck.enc_c2s, &sk.enc_c2s),
                    want("cipher_alg"),
                    "{trace}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
}

#[test]
fn ssh_matches_suricata_hassh_and_software() {
    let Some(root) = captures() else { return };
    let mut checked = 0;
    for test in [
        "ssh-hassh",
        "ssh-hassh-only",
        "ssh-hassh-reassembled",
        "ssh-hassh-incomplete",
        "ssh-banner-only",
    ] {
        let (pcap, checks) = suricata_checks(&root, test);
        let conns = tcp_conns(&pcap);
        let s = ssh_conn(speaking(&conns, b"SSH-"), test);
        for (k, v) in checks {
            let got = match k.as_str() {
                "ssh.client.hassh.hash" => s.client_kex.as_ref().map(|k| ssh::hassh(k, true).1),
                "ssh.server.hassh.hash" => s.server_kex.as_ref().map(|k| ssh::hassh(k, false).1),
                "ssh.client.proto_version" => Some(s.client.proto.clone()),
                "ssh.server.proto_version" => Some(s.server.proto.clone()),
                "ssh.client.software_version" => Some(s.client.software.clone()),
                "ssh.server.software_version" => Some(s.server.software.clone()),
                _ => continue,
            };
            assert_eq!(got.as_deref(), Some(v.as_str()), "{test} {k}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");
}

#[test]
fn socks_matches_zeek() {
    let Some(root) = captures() else { return };
    let cases = [
        ("socks-auth.pcap", "socks-auth"),
        ("socks.pcap", "trace1"),
        ("socks-with-ssl.pcap", "trace2"),
    ];
    for (trace, baseline) in cases {
        let conns = tcp_conns(&root.join("zeek/Traces").join(trace));
        let log = root.join(format!(
            "zeek/Baseline/scripts.base.protocols.socks.{baseline}/socks.log"
        ));
        for row in zeek_log(&log) {
            let c = by_orig_port(&conns, &row).unwrap();
            let req = socks::parse_request(&c.client).unwrap();
            let rep = socks::parse_reply(&c.server, req.version).unwrap();
            let opt = |f: &str| Some(row[f].clone()).filter(|v| !unset(v));
            assert_eq!(Some(req.version.to_string()), opt("version"));
            assert_eq!(req.user, opt("user"), "{trace}");
            assert_eq!(
                req.addr.map(|a| a.to_string()),
                opt("request.host"),
                "{trace}"
            );
            assert_eq!(req.host, opt("request.name"), "{trace}");
            assert_eq!(Some(req.port.to_string()), opt("request_p"));
            assert_eq!(rep.granted, row["status"] == "succeeded");
            assert_eq!(rep.bound_addr.map(|a| a.to_string()), opt("bound.host"));
            assert_eq!(rep.bound_port.map(|p| p.to_string()), opt("bound_p"));
        }
    }
}

#[test]
fn wireguard_matches_spicy() {
    if captures().is_none() {
        return;
    }
    let Some(spicy) = support::suite(support::SPICY) else {
        return;
    };
    let row = &zeek_log(&spicy.join("Baseline/protocol.wireguard.wireguard/wireguard.log"))[0];
    let d = udp_datagrams(&spicy.join("Traces/wireguard.pcap"));
    let msgs: Vec<_> = d
        .iter()
        .map(|(_, _, p)| wireguard::parse(p).unwrap())
        .collect();
    let count =
        |f: fn(&wireguard::Message) -> bool| msgs.iter().filter(|m| f(m)).count().to_string();
    assert_eq!(
        count(|m| matches!(m, wireguard::Message::HandshakeInitiation { .. })),
        row["initiations"]
    );
    assert_eq!(
        count(|m| matches!(m, wireguard::Message::HandshakeResponse { .. })),
        row["responses"]
    );
    // The conn.log says 90 + 82 datagrams; every one parses (the unwrap above).
    assert_eq!(msgs.len(), 172);
}

/// The spicy analyzer's openvpn.out lines: (opcode, packet_id, data_len) as printed.
fn spicy_openvpn(out: &str) -> Vec<(u8, Option<u32>, Option<usize>)> {
    let field = |l: &str, k: &str| -> Option<String> {
        let at = l.find(&format!("{k}="))? + k.len() + 1;
        Some(l[at..].split([',', ']']).next()?.to_owned())
    };
    out.lines()
        .filter(|l| l.starts_with("[opcode="))
        .map(|l| {
            (
                field(l, "opcode").unwrap().parse().unwrap(),
                field(l, "packet_id").and_then(|v| v.parse().ok()),
                field(l, "data_len").and_then(|v| v.parse().ok()),
            )
        })
        .collect()
}

#[test]
fn openvpn_matches_spicy() {
    if captures().is_none() {
        return;
    }
    let Some(spicy) = support::suite(support::SPICY) else {
        return;
    };
    let cases = [
        ("openvpn.pcap", "openvpn", false, None),
        ("openvpn_udp_tls-auth.pcap", "openvpnhmac", false, Some(20)),
        (
            "openvpn_udp_hmac_256.pcap",
            "openvpnhmac256",
            false,
            Some(32),
        ),
        ("openvpn_tcp_nontlsauth.pcap", "openvpntcp", true, None),
        (
            "openvpn-tcp-tls-auth.pcap",
            "openvpntcphmac",
            true,
            Some(20),
        ),
    ];
    for (trace, baseline, tcp, hmac) in cases {
        let out = std::fs::read_to_string(
            spicy.join(format!("Baseline/protocol.openvpn.{baseline}/openvpn.out")),
        )
        .unwrap();
        let mut want = spicy_openvpn(&out);
        let pcap = spicy.join("Traces").join(trace);
        let mut packets = vec![];
        if tcp {
            for c in tcp_conns(&pcap) {
                for mut s in [&c.client[..], &c.server[..]] {
                    while let Ok(p) = openvpn::parse(s, true) {
                        let len = 2 + u16::from_be_bytes([s[0], s[1]]) as usize;
                        packets.push(p);
                        s = &s[len..];
                    }
                }
            }
        } else {
            for (_, _, d) in udp_datagrams(&pcap) {
                packets.push(openvpn::parse(&d, false).unwrap());
            }
        }
        for p in &packets {
            if p.opcode != openvpn::P_DATA_V1 && p.opcode != openvpn::P_DATA_V2 {
                assert_eq!(p.hmac_len, hmac, "{trace}: {p:?}");
            }
        }
        let mut got: Vec<_> = packets
            .iter()
            .filter(|p| p.opcode != openvpn::P_ACK_V1)
            .map(|p| (p.opcode, p.packet_id, Some(p.data_len)))
            .collect();
        want.retain(|w| w.0 != openvpn::P_ACK_V1);
        got.sort();
        want.sort();
        let count =
            |v: &[(u8, Option<u32>, Option<usize>)], x| v.iter().filter(|y| **y == x).count();
        let extra: Vec<_> = got
            .iter()
            .filter(|g| count(&got, **g) > count(&want, **g))
            .collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|w| count(&want, **w) > count(&got, **w))
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "{trace}: extra {extra:?} missing {missing:?}"
        );
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{trace}: extra {extra:?} missing {missing:?}"
        );
    }
}

#[test]
fn ike_matches_spicy() {
    if captures().is_none() {
        return;
    }
    let Some(spicy) = support::suite(support::SPICY) else {
        return;
    };
    // Baseline directory -> trace, matched by initiator SPI (ikev1-a's trace, ikev1-certs.pcap,
    // is not among the captures).
    let cases = [
        ("ikev1-c", "ipsec-ikev1-isakmp-main-mode.pcap"),
        ("ikev1-b", "ipsec-ikev1-isakmp-aggressive-mode.pcap"),
        ("ipsec", "ipsec_client.pcap"),
    ];
    for (baseline, trace) in cases {
        let rows = zeek_log(&spicy.join(format!("Baseline/protocol.ipsec.{baseline}/ipsec.log")));
        let mut want: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r["initiator_spi"].clone(),
                    r["responder_spi"].clone(),
                    r["exchange_type"].clone(),
                    r["length"].clone(),
                )
            })
            .collect();
        let mut got: Vec<_> = udp_datagrams(&spicy.join("Traces").join(trace))
            .into_iter()
            .filter_map(|(s, d, p)| {
                let i = ipsec::parse_ike(&p, s == 4500 || d == 4500).ok()?;
                Some((
                    format!("{:016x}", i.initiator_spi),
                    format!("{:016x}", i.responder_spi),
                    i.exchange.to_string(),
                    i.length.to_string(),
                ))
            })
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{baseline}");
    }
}

#[test]
fn stun_matches_spicy() {
    if captures().is_none() {
        return;
    }
    let Some(spicy) = support::suite(support::SPICY) else {
        return;
    };
    let rows = zeek_log(&spicy.join("Baseline/protocol.stun.stun/stun.log"));
    let msgs: Vec<_> = udp_datagrams(&spicy.join("Traces/stun-ice-testcall.pcap"))
        .into_iter()
        .filter_map(|(_, _, d)| stun::parse(&d).ok())
        .collect();
    let mut checked = 0;
    for r in rows {
        // diff-sort masks ids that look like paths ("db<...>/apl0vi"): those cannot be matched.
        if r["trans_id"].contains("<...>") {
            continue;
        }
        let tid = zeek_unescape(&r["trans_id"]);
        let class = |m: &stun::Message| match m.class {
            stun::Class::Request => "REQUEST",
            stun::Class::Indication => "INDICATION",
            stun::Class::Success => "RESPONSE_SUCCESS",
            stun::Class::Error => "RESPONSE_ERROR",
        };
        // Retransmissions share a transaction id: some message of that id and class must
        // carry the logged attribute value.
        let val = r["attr_val"].as_str();
        let agrees = |m: &stun::Message| match r["attr_type"].as_str() {
            "USERNAME" => Some(m.username.as_deref() == Some(val)),
            "MAPPED_ADDRESS" => Some(m.mapped.map(|a| a.to_string()).as_deref() == Some(val)),
            "XOR_MAPPED_ADDRESS" => {
                Some(m.xor_mapped.map(|a| a.to_string()).as_deref() == Some(val))
            }
            "ERROR_CODE" => {
                Some(m.error_code.map(|c| c.to_string()).as_deref() == val.split(' ').next())
            }
            _ => None,
        };
        let same: Vec<_> = msgs
            .iter()
            .filter(|m| m.transaction_id[..] == tid[..] && class(m) == r["class"])
            .collect();
        assert!(!same.is_empty(), "{r:?}");
        for m in &same {
            assert_eq!(
                stun::method_name(m.method)
                    .map(str::to_ascii_uppercase)
                    .as_deref(),
                Some(r["method"].as_str())
            );
        }
        if agrees(same[0]).is_some() {
            assert!(same.iter().any(|m| agrees(m) == Some(true)), "{r:?}");
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked}");
    // The two malformed traces raise a parse weird in spicy; we reject them too.
    for trace in [
        "stun-attribute-length-ffff.pcap",
        "stun-malformed-error.pcap",
    ] {
        let d = udp_datagrams(&spicy.join("Traces").join(trace));
        assert!(d.iter().any(|(_, _, p)| stun::parse(p).is_err()), "{trace}");
    }
}
