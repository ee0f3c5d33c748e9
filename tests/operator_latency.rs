//! Operator latency on the lab captures (`fixtures/lab`): each remote-desktop and inbound
//! SSH session's latency floor is the configured round trip to the person typing (within
//! 10 % or 3 ms, whichever is more; RDP has only two setup turns, and the viewer's TLS work
//! is inside them), and `geo_anomaly/operator_latency` fires for far operators only, as
//! soon as the floor is stable. The domestic ceiling is learned from the handshakes of
//! domestic clients in a capture, and from the in-session floor of a VPN connection picked
//! up mid-stream, never from the handshakes the sensor's hosts open to public servers. The
//! capture suites raise nothing.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn lab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab")
}

/// The bound: within 10 % of the configured round trip, or 3 ms.
fn within(got: f64, want: f64) -> bool {
    (got - want).abs() <= (want * 0.1).max(3.0)
}

/// `src` (a classic little-endian pcap) without its first `skip` packets: the sensor
/// started during the connection.
fn cut(src: &Path, skip: usize, tag: &str) -> PathBuf {
    let bytes = std::fs::read(src).unwrap();
    assert_eq!(bytes[..4], [0xd4, 0xc3, 0xb2, 0xa1], "{}", src.display());
    let mut out = bytes[..24].to_vec();
    let (mut at, mut n) = (24, 0);
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let end = (at + 16 + len).min(bytes.len());
        if n >= skip {
            out.extend_from_slice(&bytes[at..end]);
        }
        (at, n) = (end, n + 1);
    }
    let file = support::scratch(tag).join("cut.pcap");
    std::fs::write(&file, out).unwrap();
    file
}

/// The lab account (10.8.0.12, declared in the US), the test geo database (192.0.2.0/28
/// and 192.0.2.16/28 are in the US, 198.51.100.20 is nowhere) and `operator_latency` lines.
fn learning_setup(tag: &str, operator_latency: &str) -> Vec<String> {
    let dir = support::scratch(tag);
    let (accounts, _) = setup(&format!("{tag}-accounts"));
    let config = dir.join("farmwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[geoip]\ncountry = \"geoip/test/test-geo.mmdb\"\ncity = \"geoip/test/test-geo.mmdb\"\nasn = \"geoip/test/test-geo.mmdb\"\n\n[detect.operator_latency]\n{operator_latency}"
        ),
    )
    .unwrap();
    vec![
        "--accounts".into(),
        accounts.to_str().unwrap().into(),
        "--config".into(),
        config.to_str().unwrap().into(),
    ]
}

fn operator_findings(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["reason"] == "operator_latency")
        .collect()
}

/// The lab host 10.8.0.12 belongs to an account declared in the US, whose domestic ceiling
/// is 30 ms: 5 ms one way (10 ms round trip) is near, 25 ms and more are far.
fn setup(tag: &str) -> (PathBuf, PathBuf) {
    let dir = support::scratch(tag);
    let accounts = dir.join("accounts.toml");
    std::fs::write(
        &accounts,
        "[[account]]\nid = \"lab\"\nkind = \"employee\"\ndeclared_country = \"US\"\nhosts = [\"10.8.0.12\"]\n",
    )
    .unwrap();
    let config = dir.join("farmwatch.toml");
    std::fs::write(
        &config,
        "[detect.operator_latency]\nceilings = { US = 30.0 }\n",
    )
    .unwrap();
    (accounts, config)
}

#[test]
fn lab_floors_are_the_configured_round_trips_and_far_operators_are_found() {
    let text = std::fs::read_to_string(lab().join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let (accounts, config) = setup("operator-latency-lab");
    let extra = [
        "--accounts",
        accounts.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let mut problems = Vec::new();
    let mut table =
        vec!["| capture | configured ms | floor ms | error ms | error % | finding |".to_string()];
    table.push("|---|---|---|---|---|---|".into());
    for cap in manifest["captures"].as_array().unwrap() {
        let file = cap["file"].as_str().unwrap();
        if !["vnc-", "rdp-", "ssh-inbound-"]
            .iter()
            .any(|p| file.starts_with(p))
        {
            continue;
        }
        let expected = cap["expected_rtt_ms"].as_f64().unwrap();
        let (events, flows) = support::replay(&[&lab().join(file)], &extra, &format!("ol-{file}"));
        let floors: Vec<f64> = flows
            .iter()
            .filter_map(|f| f["latency_floor_ms"].as_f64())
            .collect();
        let findings: Vec<&Value> = events
            .iter()
            .filter(|e| e["reason"] == "operator_latency")
            .collect();
        let [floor] = floors[..] else {
            problems.push(format!("{file}: floors {floors:?}, want one"));
            continue;
        };
        let err = floor - expected;
        table.push(format!(
            "| {file} | {expected} | {floor:.1} | {err:+.1} | {:+.1} | {} |",
            100.0 * err / expected,
            findings.len()
        ));
        if !within(floor, expected) {
            problems.push(format!(
                "{file}: floor {floor} ms, configured {expected} ms"
            ));
        }
        let far = expected > 30.0;
        if findings.len() != usize::from(far) {
            problems.push(format!("{file}: {} findings, far = {far}", findings.len()));
        }
        if let Some(e) = findings.first() {
            let ev = &e["evidence"];
            assert_eq!(e["kind"], "geo_anomaly");
            assert_eq!(e["account"], "lab");
            assert_eq!(e["app"], cap["expected"]["app"]);
            assert_eq!(e["flow"]["dst_ip"], "10.8.0.12");
            // Sent once stable, during the session: never below the session's final
            // floor, and within the tolerance too.
            let at = ev["floor_ms"].as_f64().unwrap();
            if at < floor || !within(at, expected) {
                problems.push(format!("{file}: finding's floor {at}, session's {floor}"));
            }
            assert_eq!(ev["domestic_ceiling_ms"].as_f64(), Some(30.0));
            assert_eq!(ev["ceiling_source"], "configured");
            assert_eq!(ev["min_distance_km"].as_f64(), Some((at * 100.0).round()));
            let relayed = cap["expected"]["relay"] == true;
            if ev["relay"] != relayed {
                problems.push(format!("{file}: relay {}, manifest {relayed}", ev["relay"]));
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// 24 ssh logins from US addresses 10 ms away (test geo database) teach the US ceiling:
/// their 90th percentile plus 10 ms. The operator who then types from 50 ms away is found
/// against it while the session runs; the one 10 ms away is not.
#[test]
fn the_domestic_ceiling_is_learned_from_the_capture() {
    let dir = support::scratch("operator-latency-learned");
    let (accounts, _) = setup("operator-latency-learned-accounts");
    let config = dir.join("farmwatch.toml");
    std::fs::write(
        &config,
        "[geoip]\ncountry = \"geoip/test/test-geo.mmdb\"\ncity = \"geoip/test/test-geo.mmdb\"\nasn = \"geoip/test/test-geo.mmdb\"\n",
    )
    .unwrap();
    let extra = [
        "--accounts",
        accounts.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    for (d, far) in [(5, false), (25, true)] {
        let file = format!("ssh-domestic-then-operator-{d}ms.pcap");
        let (events, flows) = support::replay(&[&lab().join(&file)], &extra, &format!("ol-{file}"));
        let found: Vec<&Value> = events
            .iter()
            .filter(|e| e["reason"] == "operator_latency")
            .collect();
        assert_eq!(found.len(), usize::from(far), "{file}: {events:?}");
        let Some(e) = found.first() else {
            continue;
        };
        let ev = &e["evidence"];
        assert_eq!(ev["ceiling_source"], "learned from 24 addresses in US");
        let ceiling = ev["domestic_ceiling_ms"].as_f64().unwrap();
        assert!((20.0..=24.0).contains(&ceiling), "{ceiling}");
        assert_eq!(e["flow"]["src_ip"], "198.51.100.20");
        let session = flows
            .iter()
            .find(|f| f["src_ip"] == "198.51.100.20" && f["interim"] != true)
            .unwrap();
        assert!(e["ts"].as_str().unwrap() < session["end"].as_str().unwrap());
    }
}

/// Every inside address of the suites belongs to an account declared in the US, judged
/// against the default domestic ceiling: no session there is a far operator.
#[test]
fn the_capture_suites_raise_no_operator_latency() {
    let dir = support::scratch("operator-latency-suites");
    let accounts = dir.join("accounts.toml");
    std::fs::write(
        &accounts,
        "[[account]]\nid = \"everyone\"\nkind = \"employee\"\ndeclared_country = \"US\"\nhosts = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"100.64.0.0/10\", \"fc00::/7\"]\n",
    )
    .unwrap();
    let mut floors = Vec::new();
    let mut problems = Vec::new();
    for file in support::all_capture_files() {
        let (events, flows) = support::replay(
            &[&file],
            &["--accounts", accounts.to_str().unwrap()],
            "operator-latency-suite-run",
        );
        floors.extend(flows.iter().filter_map(|f| f["latency_floor_ms"].as_f64()));
        for e in events.iter().filter(|e| e["reason"] == "operator_latency") {
            problems.push(format!("{}: {e}", file.display()));
        }
    }
    eprintln!("{} sessions with a latency floor: {floors:?}", floors.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A long connection the sensor picked up mid-stream has no handshake; its in-session floor
/// teaches the ceiling all the same. `openvpn-tcp-5ms.pcap` without its first 60 packets
/// (no TCP handshake) is one OpenVPN session from 192.0.2.30 (US), 10 ms away: with
/// one address enough, the US ceiling becomes 20.1 ms, and the RDP operator 50 ms away, later
/// (`rdp-direct-25ms.pcap`), is above it. Against the default 80 ms it would not be.
#[test]
fn a_session_picked_up_mid_stream_teaches_the_ceiling() {
    let vpn = cut(
        &lab().join("openvpn-tcp-5ms.pcap"),
        60,
        "operator-latency-midstream",
    );
    let extra = learning_setup("operator-latency-session-rtt", "learn_min_addresses = 1\n");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (events, flows) = support::replay(
        &[&vpn, &lab().join("rdp-direct-25ms.pcap")],
        &extra,
        "ol-session-rtt",
    );
    let tunnel = flows.iter().find(|f| f["app"] == "openvpn").unwrap();
    let desktop = flows.iter().find(|f| f["app"] == "rdp").unwrap();
    // Recorded in this order: the tunnel's floor is learned before the desktop is judged.
    assert!(tunnel["end"].as_str() < desktop["ts"].as_str());
    assert!(tunnel["history"].as_str().unwrap().starts_with('~'));
    assert!(tunnel["tcp_rtt_orig_ms"].is_null());
    assert!(tunnel["outside_rtt"]["samples"].as_u64().unwrap() >= 16);
    let found = operator_findings(&events);
    let [e] = found[..] else {
        panic!("one operator_latency wanted: {events:?}");
    };
    let ev = &e["evidence"];
    assert_eq!(ev["ceiling_source"], "learned from 1 addresses in US");
    let ceiling = ev["domestic_ceiling_ms"].as_f64().unwrap();
    let leg = tunnel["outside_rtt"]["floor_ms"].as_f64().unwrap();
    // The floor the session sent once stable (10 ms configured), never below its final one,
    // plus the 10 ms allowance.
    let learned = ceiling - 10.0;
    assert!(learned >= leg && within(learned, 10.0), "{ceiling} {leg}");
    assert_eq!(e["app"], "rdp");
}

/// The sensor's hosts' own handshakes to public servers do not teach the ceiling: a server
/// geo places in the country may be an anycast edge next door. In
/// `tls-relay-far-side-25ms.pcap` the host opens 16 connections to 192.0.2.30 (US), 4 ms
/// away; had they taught, the US ceiling would be 14 ms and the ssh operator 50 ms away
/// (`ssh-inbound-25ms.pcap`, within the default 80 ms) a finding. Only the one 240 ms
/// away (`ssh-inbound-120ms.pcap`) is found, against the default ceiling.
#[test]
fn outbound_handshakes_do_not_teach_the_ceiling() {
    let extra = learning_setup("operator-latency-outbound", "learn_min_addresses = 1\n");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let files = [
        "tls-relay-far-side-25ms.pcap",
        "ssh-inbound-25ms.pcap",
        "ssh-inbound-120ms.pcap",
    ]
    .map(|f| lab().join(f));
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (events, flows) = support::replay(&files, &extra, "ol-outbound");
    let outbound = flows
        .iter()
        .filter(|f| f["src_ip"] == "10.8.0.12" && f["resp_country"] == "US")
        .count();
    assert_eq!(outbound, 16);
    let found = operator_findings(&events);
    let [e] = found[..] else {
        panic!("one operator_latency wanted: {events:?}");
    };
    assert_eq!(e["evidence"]["ceiling_source"], "default");
    assert!(within(e["evidence"]["floor_ms"].as_f64().unwrap(), 240.0));
}
