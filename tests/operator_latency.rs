//! Operator latency on the lab captures (`fixtures/lab`): each remote-desktop and inbound
//! SSH session's latency floor is the configured round trip to the person typing (within
//! 10 % or 3 ms, whichever is more; RDP has only two setup turns, and the viewer's TLS work
//! is inside them), and `geo_anomaly/operator_latency` fires for far
//! operators only, as soon as the floor is stable; the domestic ceiling is learned from the
//! handshakes of domestic clients in a capture. The capture suites raise nothing.

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
