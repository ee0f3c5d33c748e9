//! Agreement on real captures: our TLS, QUIC and HTTP dissectors against the values the
//! Suricata-verify suite asserts for its JA4 captures (each `test.yaml`), and against
//! tshark's own dissection for SNI and certificate names.
//!
//! tshark only splits the captures into per-stream payloads (and supplies its SNI and
//! certificate strings for comparison); all parsing under test is ours. Without tshark the
//! tests skip (a recorded skip), except under `CI=true`, where they fail.

mod support;

use farmwatch::dissect::{http, quic, tls};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The suricata-verify suite (copied into `tests/captures`), or None (after a recorded
/// skip) when tshark is missing outside CI.
fn suite() -> Option<PathBuf> {
    support::require(support::has_tool("tshark"), "tshark")
        .then(|| support::suite("suricata-verify"))
        .flatten()
}

/// Runs tshark over `pcap` and returns the requested fields of each matching packet.
/// Answers are memoized: several tests read the same captures.
fn tshark(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    static MEMO: Mutex<BTreeMap<String, Vec<Vec<String>>>> = Mutex::new(BTreeMap::new());
    let key = format!("{}|{filter}|{}", pcap.display(), fields.join(","));
    if let Some(rows) = MEMO.lock().unwrap().get(&key) {
        return rows.clone();
    }
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(out.status.success(), "tshark failed on {}", pcap.display());
    let rows: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    MEMO.lock().unwrap().insert(key, rows.clone());
    rows
}

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// One TCP connection's payload per direction, in capture order without retransmissions.
/// The client is the side that sends the first payload (it speaks first in TLS and HTTP).
#[derive(Default)]
struct Stream {
    client_endpoint: String,
    client: Vec<u8>,
    server: Vec<u8>,
}

fn tcp_streams(pcap: &Path) -> BTreeMap<String, Stream> {
    let mut streams: BTreeMap<String, Stream> = BTreeMap::new();
    let rows = tshark(
        pcap,
        "tcp.len > 0 && !tcp.analysis.retransmission",
        &["tcp.stream", "ip.src", "tcp.srcport", "tcp.payload"],
    );
    for row in rows {
        let [id, src, port, payload] = &row[..] else {
            continue;
        };
        let stream = streams.entry(id.clone()).or_default();
        let endpoint = format!("{src}:{port}");
        if stream.client_endpoint.is_empty() {
            stream.client_endpoint = endpoint.clone();
        }
        let side = if endpoint == stream.client_endpoint {
            &mut stream.client
        } else {
            &mut stream.server
        };
        side.extend_from_slice(&unhex(payload));
    }
    streams
}

/// The client's datagrams of each UDP conversation (first sender = client).
fn udp_client_datagrams(pcap: &Path) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut client: BTreeMap<String, String> = BTreeMap::new();
    let mut datagrams: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for row in tshark(
        pcap,
        "udp",
        &["udp.stream", "ip.src", "udp.srcport", "udp.payload"],
    ) {
        let [id, src, port, payload] = &row[..] else {
            continue;
        };
        let endpoint = format!("{src}:{port}");
        if *client.entry(id.clone()).or_insert_with(|| endpoint.clone()) == endpoint {
            datagrams
                .entry(id.clone())
                .or_default()
                .push(unhex(payload));
        }
    }
    datagrams
}

/// Our ClientHello for each TCP stream that carries one.
fn tls_hellos(pcap: &Path) -> BTreeMap<String, tls::ClientHello> {
    tcp_streams(pcap)
        .into_iter()
        .filter_map(|(id, s)| tls::parse_client_hello(&s.client).ok().map(|h| (id, h)))
        .collect()
}

/// Our ClientHello for each UDP conversation whose client Initials carry one, fed one
/// datagram at a time as a sensor would see them.
fn quic_hellos(pcap: &Path) -> BTreeMap<String, tls::ClientHello> {
    let mut hellos = BTreeMap::new();
    for (id, datagrams) in udp_client_datagrams(pcap) {
        let mut initials = Vec::new();
        for d in datagrams {
            let Ok(initial) = quic::parse_initial(&d) else {
                continue;
            };
            initials.push(initial);
            if let Ok(hello) = quic::client_hello(&initials) {
                hellos.insert(id.clone(), hello);
                break;
            }
        }
    }
    hellos
}

/// The `- filter:` blocks of a suite test.yaml as flat `key → value` maps (the suite writes
/// `count:` and the `match:` keys one per line).
fn yaml_checks(dir: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("test.yaml")).expect("read test.yaml");
    text.split("- filter:")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .filter_map(|l| l.trim().split_once(": "))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect()
        })
        .collect()
}

fn list(value: &str) -> Vec<u16> {
    value
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|v| v.trim().parse().expect("number in list"))
        .collect()
}

#[test]
fn ja4_matches_the_suite() {
    let Some(suite) = suite() else { return };
    let mut compared = 0;
    for name in ["ja4-tls", "ja4-quic", "ja4-rules", "ja4-tls-quic"] {
        let dir = suite.join(name);
        let pcap = dir.join("input.pcap");
        for check in yaml_checks(&dir) {
            let (hellos, expected) = match (check.get("tls.ja4"), check.get("quic.ja4")) {
                (Some(ja4), _) => (tls_hellos(&pcap), ja4),
                (_, Some(ja4)) => (quic_hellos(&pcap), ja4),
                _ => continue,
            };
            let count: usize = check["count"].parse().unwrap();
            let ours: Vec<&str> = hellos.values().map(|h| h.ja4.as_str()).collect();
            assert_eq!(ours, vec![expected.as_str(); count], "{name}");
            compared += count;
        }
    }
    assert_eq!(compared, 1 + 11 + 2 + 2);
}

#[test]
fn client_and_server_handshake_fields_match_the_suite() {
    let Some(suite) = suite() else { return };
    let dir = suite.join("ja4-cl-handshake");
    let check = &yaml_checks(&dir)[0];
    let hellos = tls_hellos(&dir.join("input.pcap"));
    let hello = hellos.values().next().expect("a ClientHello");
    assert_eq!(check["tls.client_handshake.version"], "TLS 1.2");
    assert_eq!(hello.legacy_version, 0x0303);
    assert!(hello.versions.is_empty());
    assert_eq!(hello.ciphers, list(&check["tls.client_handshake.ciphers"]));
    assert_eq!(hello.extensions, list(&check["tls.client_handshake.exts"]));
    assert_eq!(
        hello.signature_algorithms,
        list(&check["tls.client_handshake.sig_algs"])
    );

    let dir = suite.join("ja4-sv-handshake");
    let check = &yaml_checks(&dir)[0];
    let streams = tcp_streams(&dir.join("input.pcap"));
    let stream = streams.values().next().expect("a TCP stream");
    let hello = tls::parse_server_hello(&stream.server).unwrap();
    assert_eq!(check["tls.server_handshake.version"], "TLS 1.2");
    assert_eq!(hello.version, 0x0303);
    assert_eq!(
        hello.cipher.to_string(),
        check["tls.server_handshake.cipher"]
    );
}

/// Every capture with TLS or QUIC: our SNI equals tshark's for each stream it dissects,
/// and the certificate subject's CN and O are among the names tshark decodes.
#[test]
fn sni_and_certificates_match_tshark() {
    let Some(suite) = suite() else { return };
    let pcaps = [
        "ja4-cl-handshake/input.pcap",
        "ja4-sv-handshake/input.pcap",
        "ja4-quic/input.pcap",
        "ja4-rules/input.pcap",
        "ja4-tls/input.pcap",
        "ja4-tls-quic/input.pcap",
        "tls/tls-bypass-missing-event/tor_bl.pcap",
    ];
    let (mut snis, mut certs) = (0, 0);
    for pcap in pcaps.map(|p| suite.join(p)) {
        let tcp = tls_hellos(&pcap);
        let udp = quic_hellos(&pcap);
        let fields = [
            "tcp.stream",
            "udp.stream",
            "tls.handshake.extensions_server_name",
        ];
        for row in tshark(&pcap, "tls.handshake.type == 1", &fields) {
            let [tcp_id, udp_id, sni] = &row[..] else {
                continue;
            };
            let ours = if tcp_id.is_empty() {
                &udp[udp_id]
            } else {
                &tcp[tcp_id]
            };
            let sni = (!sni.is_empty()).then_some(sni.as_str());
            assert_eq!(ours.sni.as_deref(), sni, "{}", pcap.display());
            snis += 1;
        }

        let streams = tcp_streams(&pcap);
        let fields = [
            "tcp.stream",
            "x509sat.printableString",
            "x509sat.uTF8String",
        ];
        for row in tshark(&pcap, "tls.handshake.type == 11", &fields) {
            let names: Vec<&str> = row[1..].iter().flat_map(|f| f.split(',')).collect();
            let cert = tls::parse_server_certificate(&streams[&row[0]].server)
                .unwrap()
                .expect("a certificate in clear");
            for name in [&cert.subject_cn, &cert.subject_org].into_iter().flatten() {
                assert!(names.contains(&name.as_str()), "{name} not in {names:?}");
            }
            certs += 1;
        }
        // Streams where tshark saw no Certificate: TLS 1.3 or resumption, so ours says None.
        for (id, stream) in &streams {
            if let Ok(hello) = tls::parse_server_hello(&stream.server)
                && hello.version == 0x0304
            {
                assert_eq!(
                    tls::parse_server_certificate(&stream.server),
                    Ok(None),
                    "{id}"
                );
            }
        }
    }
    eprintln!("compared {snis} SNI values and {certs} certificates");
    assert_eq!(
        (snis, certs),
        (20, 3),
        "SNI values and certificates compared"
    );
}

#[test]
fn http_connect_matches_the_suite() {
    let Some(suite) = suite() else { return };
    let dir = suite.join("http-connect/http-connect-tls");
    let check = &yaml_checks(&dir)[0];
    let streams = tcp_streams(&dir.join("input.pcap"));
    let stream = streams.values().next().expect("a TCP stream");
    let request = http::parse_request(&stream.client).unwrap();
    assert_eq!(request.method, check["http.http_method"]);
    assert_eq!(request.version, check["http.protocol"]);
    assert_eq!(request.target, "abc:443");
    assert_eq!(request.user_agent.as_deref(), Some("Victor/1.0"));
    let response = http::parse_response(&stream.server).unwrap();
    assert_eq!(response.status.to_string(), check["http.status"]);
    assert_eq!(response.server.as_deref(), Some("VictorServer/1.0"));
}
