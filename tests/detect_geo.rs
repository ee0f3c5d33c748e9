//! The geo scenario (fixtures/geo/, written by fixturegen's `scenarios_geo`): every geo,
//! farm and working-hours reason fires on its account and stays silent on its controls,
//! the risk score raises `laptop_farm_suspected` naming real events, and two replays
//! write the same bytes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn geo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/geo")
        .join(name)
}

/// Replays the scenario; returns the events file's bytes and its events. Relative
/// paths in the config resolve against the repository root, the tests' working
/// directory.
fn replay(tag: &str) -> (Vec<u8>, Vec<Value>) {
    let config = geo("farmwatch.toml");
    let accounts = geo("accounts.toml");
    let sessions = geo("sessions.jsonl");
    let extra = [
        "--config",
        config.to_str().unwrap_or(""),
        "--accounts",
        accounts.to_str().unwrap_or(""),
        "--sessions",
        sessions.to_str().unwrap_or(""),
    ];
    let (events, _) = support::replay(&[&geo("week.pcap")], &extra, tag);
    let written = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(tag)
        .join("events.jsonl");
    let bytes = std::fs::read(written).unwrap();
    (bytes, events)
}

fn findings(events: &[Value]) -> BTreeSet<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] != "alert")
        .map(|e| {
            (
                e["account"].as_str().unwrap_or("").to_string(),
                e["kind"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn one<'a>(events: &'a [Value], account: &str, reason: &str) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["account"] == account && e["reason"] == reason)
        .collect();
    assert_eq!(found.len(), 1, "{account}/{reason}: {found:?}");
    found[0]
}

#[test]
fn each_reason_fires_on_its_account_and_nowhere_else() {
    let (_, events) = replay("geo-reasons");
    let want: BTreeSet<(String, String, String)> = [
        ("jdoe", "geo_anomaly", "disallowed_country"),
        ("jdoe", "geo_anomaly", "high_risk_country"),
        ("jdoe", "geo_anomaly", "impossible_travel"),
        ("asmith", "geo_anomaly", "hosting_asn"),
        ("asmith", "farm_cluster", "shared_public_ip"),
        ("asmith", "geo_anomaly", "rtt_distance"),
        ("asmith", "off_hours", "foreign_working_hours"),
        ("bwong", "geo_anomaly", "hosting_asn"),
        ("bwong", "farm_cluster", "shared_public_ip"),
        ("bwong", "geo_anomaly", "rtt_distance"),
        ("lmartin", "geo_anomaly", "rtt_distance"),
    ]
    .iter()
    .map(|(a, k, r)| (a.to_string(), k.to_string(), r.to_string()))
    .collect();
    assert_eq!(findings(&events), want);

    // Controls: allowed in DE from DE (hklein), flatmate employees on one line (emp-a,
    // emp-b; emp-a also works Chicago hours), a plausible DE→PL hop (mkowal), an RTT
    // that fits Dallas (rjones), a service account in a data centre (ci-runner).
    for quiet in ["hklein", "emp-a", "emp-b", "mkowal", "rjones", "ci-runner"] {
        assert!(
            events.iter().all(|e| e["account"] != quiet),
            "{quiet} has findings"
        );
    }
}

#[test]
fn evidence_names_what_was_seen() {
    let (_, events) = replay("geo-evidence");
    let travel = one(&events, "jdoe", "impossible_travel");
    assert_eq!(travel["evidence"]["from_ip"], "192.0.2.3");
    assert_eq!(travel["evidence"]["public_ip"], "192.0.2.66");
    assert_eq!(travel["evidence"]["source"], "radius");
    assert_eq!(travel["host"], "10.8.0.12");
    assert!(travel["evidence"]["distance_km"].as_f64().unwrap_or(0.0) > 10_000.0);

    assert_eq!(
        one(&events, "jdoe", "high_risk_country")["evidence"]["country"],
        "CN"
    );

    let farm = one(&events, "bwong", "shared_public_ip");
    assert_eq!(farm["evidence"]["shared"], "address");
    assert_eq!(farm["evidence"]["public_ip"], "192.0.2.113");
    assert_eq!(
        farm["evidence"]["accounts"],
        serde_json::json!(["asmith", "bwong"])
    );

    let relayed = one(&events, "asmith", "rtt_distance");
    assert_eq!(relayed["evidence"]["verdict"], "relayed");
    assert_eq!(relayed["evidence"]["min_rtt_ms"], 230.0);
    assert_eq!(relayed["evidence"]["samples"], 3);
    assert_eq!(relayed["flow"]["dst_ip"], "198.51.100.10");
    assert!(relayed["evidence"]["ceiling_ms"].as_f64().unwrap_or(999.0) < 100.0);

    let wrong = one(&events, "lmartin", "rtt_distance");
    assert_eq!(wrong["evidence"]["verdict"], "geo_wrong");
    assert_eq!(wrong["severity"], "info");

    let hours = one(&events, "asmith", "foreign_working_hours");
    assert_eq!(hours["evidence"]["best_utc_offset"], "+09:00");
    assert_eq!(hours["evidence"]["declared_timezone"], "America/Chicago");
    assert_eq!(hours["evidence"]["best_fit"], 1.0);
    assert_eq!(hours["evidence"]["declared_fit"], 0.0);

    // One hosting_asn per account per day of sessions, not one per session event.
    let hosting = events
        .iter()
        .filter(|e| e["account"] == "asmith" && e["reason"] == "hosting_asn")
        .count();
    assert_eq!(hosting, 6);
}

#[test]
fn alerts_name_earlier_events_of_their_account_and_climb_tiers() {
    let (_, events) = replay("geo-alerts");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut tiers: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &events {
        let id = e["id"].as_str().unwrap_or("").to_string();
        let account = e["account"].as_str().unwrap_or("").to_string();
        if e["kind"] == "alert" {
            assert_eq!(e["reason"], "laptop_farm_suspected");
            for cited in e["evidence"]["events"].as_array().unwrap() {
                let cited = cited.as_str().unwrap_or("");
                assert_eq!(
                    seen.get(cited),
                    Some(&account),
                    "alert {id} cites {cited}, not an earlier event of {account}"
                );
            }
            let score = e["evidence"]["score"].as_f64().unwrap_or(0.0);
            assert!(score >= e["evidence"]["threshold"].as_f64().unwrap_or(101.0));
            tiers
                .entry(account)
                .or_default()
                .push(e["evidence"]["tier"].as_u64().unwrap_or(0));
        } else {
            seen.insert(id, account);
        }
    }
    assert_eq!(
        tiers.keys().collect::<Vec<_>>(),
        ["asmith", "bwong", "jdoe"]
    );
    for (account, t) in &tiers {
        assert!(t.windows(2).all(|w| w[0] < w[1]), "{account}: {t:?}");
    }
    // Four kinds of evidence put asmith at the top tier.
    assert_eq!(tiers["asmith"].last(), Some(&3));
}

#[test]
fn replays_are_byte_identical() {
    let (a, events) = replay("geo-det-1");
    let (b, _) = replay("geo-det-2");
    assert!(!events.is_empty());
    assert!(a == b, "two replays of the geo scenario differ");
}

#[test]
fn account_scores_reach_the_metrics() {
    let dir = support::scratch("geo-metrics");
    let metrics = dir.join("metrics.prom");
    let args: Vec<String> = [
        "replay",
        geo("week.pcap").to_str().unwrap_or(""),
        "--config",
        geo("farmwatch.toml").to_str().unwrap_or(""),
        "--accounts",
        geo("accounts.toml").to_str().unwrap_or(""),
        "--sessions",
        geo("sessions.jsonl").to_str().unwrap_or(""),
        "--events",
        dir.join("events.jsonl").to_str().unwrap_or(""),
        "--metrics-out",
        metrics.to_str().unwrap_or(""),
    ]
    .map(String::from)
    .to_vec();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = support::run(&refs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(metrics).unwrap();
    let score = |account: &str| {
        let series = format!("farmwatch_account_risk_score{{account=\"{account}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
    };
    // Scored at the last packet: asmith's evidence is days old by then, but not gone.
    let asmith = score("asmith").unwrap_or(0.0);
    assert!(asmith > 40.0 && asmith <= 100.0, "{asmith}");
    assert!(score("jdoe").is_some());
    // No evidence, no series (and lmartin's only finding is info).
    assert_eq!(score("hklein"), None);
    assert_eq!(score("lmartin"), None);
}
