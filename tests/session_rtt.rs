//! Passive RTT inside a session on the lab captures (`fixtures/lab`): the outside leg's
//! floor from data → ACK and from the TCP timestamp echo is the configured round trip (the
//! error table in the README; data → ACK alone when the host sends no timestamps), and
//! `rtt_distance` judges one long OpenVPN-over-TCP
//! connection alone, during the session: far fires, near does not.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn lab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab")
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(lab().join("manifest.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["captures"].as_array().unwrap().clone()
}

/// The lab's tolerance (`lab_captures.rs`): 10 % + 3 ms.
fn within(got: f64, want: f64) -> bool {
    (got - want).abs() <= want * 0.1 + 3.0
}

#[test]
fn the_outside_leg_is_the_configured_round_trip_from_both_sources() {
    let mut problems = Vec::new();
    let mut table = vec![
        "| capture | configured ms | floor ms | error ms | data→ACK ms | TS echo ms | samples (data→ACK, echo) |"
            .to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    for cap in manifest() {
        let file = cap["file"].as_str().unwrap();
        if ![
            "vnc-",
            "rdp-",
            "ssh-inbound-",
            "ssh-domestic-",
            "openvpn-tcp-",
        ]
        .iter()
        .any(|p| file.starts_with(p))
        {
            continue;
        }
        // The leg to the outside peer: the operator's in the domestic-logins captures (the
        // session with most samples), the TCP peer's (viewer, relay, client) elsewhere.
        let want = if file.starts_with("ssh-domestic-") {
            cap["expected_rtt_ms"].as_f64().unwrap()
        } else {
            cap["expected"]["tcp_rtt_orig_ms"].as_f64().unwrap()
        };
        let (_, flows) = support::replay(&[&lab().join(file)], &[], &format!("srtt-{file}"));
        let Some(leg) = flows
            .iter()
            .filter_map(|f| f.get("outside_rtt"))
            .max_by_key(|l| l["samples"].as_u64())
        else {
            problems.push(format!("{file}: no outside_rtt"));
            continue;
        };
        let floor = leg["floor_ms"].as_f64().unwrap();
        let data_ack = leg["data_ack_ms"].as_f64();
        let ts_echo = leg["ts_echo_ms"].as_f64();
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        table.push(format!(
            "| {file} | {want} | {floor:.2} | {:+.2} | {} | {} | {} ({}, {}) |",
            floor - want,
            show(data_ack),
            show(ts_echo),
            leg["samples"],
            leg["data_ack_samples"],
            leg["ts_echo_samples"]
        ));
        // A host without timestamps (as Windows 11) leaves the echo empty.
        let echo_expected = cap["expected"]["timestamps"] != false;
        if ts_echo.is_some() != echo_expected || data_ack.is_none() {
            problems.push(format!("{file}: sources {leg}"));
            continue;
        }
        let sources = [data_ack, ts_echo].into_iter().flatten();
        if Some(floor) != sources.clone().reduce(f64::min) {
            problems.push(format!("{file}: floor {floor} is not the lesser source"));
        }
        for got in sources.chain([floor]) {
            if !within(got, want) {
                problems.push(format!("{file}: {got} ms, configured {want} ms: {leg}"));
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The VPN client 192.0.2.30 (Dallas in the test geo database) is the account's public
/// address; the sensor is in Dallas, so a direct path takes at most 40.6 ms. One TCP
/// connection, one handshake: only the in-session samples can reach `rtt_min_samples`.
fn replay_vpn(file: &str, workers: &str) -> (Vec<Value>, Vec<Value>) {
    let dir = support::scratch(&format!("session-rtt-config-{file}"));
    let config = dir.join("farmwatch.toml");
    std::fs::write(
        &config,
        "[sensor]\nname = \"lab-dallas\"\nlatitude = 32.7767\nlongitude = -96.797\ncountry = \"US\"\n\n\
         [network]\nconcentrators = [\"10.8.0.12\"]\n\n\
         [geoip]\ncountry = \"geoip/test/test-geo.mmdb\"\ncity = \"geoip/test/test-geo.mmdb\"\nasn = \"geoip/test/test-geo.mmdb\"\n",
    )
    .unwrap();
    let accounts = dir.join("accounts.toml");
    std::fs::write(
        &accounts,
        "[[account]]\nid = \"vpn-user\"\nkind = \"contractor\"\ndeclared_country = \"US\"\nhosts = [\"10.99.0.2\"]\n",
    )
    .unwrap();
    let sessions = dir.join("sessions.jsonl");
    std::fs::write(
        &sessions,
        "{\"ts\":\"2026-12-07T00:00:00Z\",\"account\":\"vpn-user\",\"assigned_ip\":\"10.99.0.2\",\"public_ip\":\"192.0.2.30\",\"event\":\"start\"}\n",
    )
    .unwrap();
    let extra = [
        "--config",
        config.to_str().unwrap(),
        "--accounts",
        accounts.to_str().unwrap(),
        "--sessions",
        sessions.to_str().unwrap(),
        "--workers",
        workers,
    ];
    support::replay(&[&lab().join(file)], &extra, &format!("session-rtt-{file}"))
}

#[test]
fn one_long_vpn_connection_is_judged_by_rtt_distance_during_the_session() {
    let (events, flows) = replay_vpn("openvpn-tcp-60ms.pcap", "1");
    let [vpn] = &flows[..] else {
        panic!("one flow wanted: {flows:?}");
    };
    assert_eq!(vpn["app"], "openvpn");
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "rtt_distance")
        .collect();
    let [e] = found[..] else {
        panic!("one rtt_distance wanted: {events:?}");
    };
    let ev = &e["evidence"];
    assert_eq!(e["account"], "vpn-user");
    assert_eq!(e["severity"], "medium");
    assert_eq!(ev["verdict"], "relayed");
    assert_eq!(ev["min_rtt_source"], "in_session");
    assert_eq!(e["flow"]["dst_port"], 1194);
    let rtt = ev["min_rtt_ms"].as_f64().unwrap();
    assert!(within(rtt, 120.0), "{rtt}");
    assert!(ev["in_session_samples"].as_u64().unwrap() >= 16);
    assert!(rtt > ev["ceiling_ms"].as_f64().unwrap());
    // Raised while the connection ran, not at its end.
    assert!(e["ts"].as_str().unwrap() < vpn["end"].as_str().unwrap());

    // The moment it is raised is packet time: the same with three workers.
    assert_eq!(replay_vpn("openvpn-tcp-60ms.pcap", "3"), (events, flows));

    let (events, flows) = replay_vpn("openvpn-tcp-5ms.pcap", "1");
    assert_eq!(flows.len(), 1);
    assert!(
        events.iter().all(|e| e["reason"] != "rtt_distance"),
        "{events:?}"
    );
}
