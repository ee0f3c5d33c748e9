//! The detectors end to end: each scenario capture in `fixtures/detect-*.pcap` (written by
//! `fixtures/gen/src/scenarios_detect.rs`) is replayed through the binary with
//! `fixtures/detect.toml`, and the findings of the remote-desktop and relay-chain
//! detectors are checked: every reason fires on its scenario with its evidence, and the
//! look-alikes stay silent. The development captures must give no finding at medium or
//! above that is not a real tunnel, and a replay is byte-for-byte repeatable.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The remote_desktop and relay_chain findings of one scenario.
fn findings(name: &str) -> Vec<Value> {
    let config = fixture("detect.toml");
    let (events, _) = support::replay(
        &[&fixture(name)],
        &["--config", config.to_str().unwrap()],
        &format!("detect-{name}"),
    );
    events
        .into_iter()
        .filter(|e| e["kind"] == "remote_desktop" || e["kind"] == "relay_chain")
        .collect()
}

fn reasons(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn persistent_stream_controlled_from_outside() {
    let ev = findings("detect-rdp-farm.pcap");
    assert_eq!(
        reasons(&ev),
        pairs(&[
            ("persistent_stream", "medium"),
            ("persistent_stream", "high")
        ])
    );
    for (e, tier) in ev.iter().zip(["15m", "1h"]) {
        assert_eq!(e["host"], "10.8.0.12");
        assert_eq!(e["app"], "rdp");
        let x = &e["evidence"];
        assert_eq!(x["tier"], tier);
        assert_eq!(x["role"], "controlled");
        assert_eq!(x["via"], "direct");
        assert_eq!(x["peer"], "192.0.2.70");
        assert_eq!(x["peer_country"], "CN");
        assert_eq!(x["peer_asn"], 4837);
        assert!(x["byte_ratio"].as_f64().unwrap() > 4.0);
        assert!(x["small_pkts_to_host"].as_u64().unwrap() >= 20);
    }
    // The reconnect two minutes later continued the session.
    assert_eq!(ev[1]["evidence"]["flows"], 2);
    assert_eq!(ev[1]["evidence"]["duration_s"], 3600);
    assert_eq!(ev[0]["ts"], "2026-11-02T14:15:00.000000Z");
    assert_ne!(ev[0]["id"], ev[1]["id"]);
}

/// The TURN path of relay_service: a remote-desktop session at a host that also allocates
/// a TURN relay (the relayed address comes in the Allocate success response).
#[test]
fn turn_relay_during_a_remote_desktop_session() {
    let ev = findings("detect-turn-relay.pcap");
    assert_eq!(
        reasons(&ev),
        pairs(&[("relay_service", "medium"), ("persistent_stream", "medium")])
    );
    let relay = &ev[0];
    assert_eq!(relay["host"], "10.8.0.21");
    assert_eq!(relay["evidence"]["via"], "turn");
    assert_eq!(relay["evidence"]["relay"], "192.0.2.77");
    assert_eq!(relay["evidence"]["tool"], "rdp");
}

#[test]
fn short_admin_rdp_and_long_download_are_silent() {
    assert_eq!(findings("detect-rdp-admin.pcap"), Vec::<Value>::new());
    assert_eq!(findings("detect-video-download.pcap"), Vec::<Value>::new());
}

#[test]
fn vendor_relay_and_its_session() {
    let ev = findings("detect-anydesk-relay.pcap");
    assert_eq!(
        reasons(&ev),
        pairs(&[("relay_service", "medium"), ("persistent_stream", "medium")])
    );
    let relay = &ev[0];
    assert_eq!(relay["host"], "10.8.0.19");
    assert_eq!(relay["app"], "anydesk");
    assert_eq!(relay["evidence"]["via"], "vendor_relay");
    assert_eq!(relay["evidence"]["relay"], "192.0.2.72");
    assert_eq!(relay["evidence"]["sni"], "relay-4e2d1b.net.anydesk.com");
    let stream = &ev[1]["evidence"];
    assert_eq!(stream["via"], "vendor_relay");
    assert_eq!(stream["role"], "controlled");
    assert_eq!(stream["tier"], "15m");
}

#[test]
fn stepping_stone_on_relayed_ssh_only() {
    let ev = findings("detect-ssh-chain.pcap");
    assert_eq!(reasons(&ev), pairs(&[("stepping_stone", "high")]));
    let e = &ev[0];
    assert_eq!(e["host"], "10.8.0.14");
    assert_eq!(e["flow"]["dst_ip"], "10.20.0.30");
    let x = &e["evidence"];
    assert_eq!(x["inbound_flow"], "tcp 192.0.2.70:50400 -> 10.8.0.14:22");
    assert_eq!(x["source_country"], "CN");
    assert!(x["consecutive_hits"].as_u64().unwrap() >= 2);
    assert!(x["ratio"].as_f64().unwrap() >= 0.3);

    assert_eq!(findings("detect-ssh-unrelated.pcap"), Vec::<Value>::new());
}

#[test]
fn tunnels_except_the_corporate_one() {
    let ev = findings("detect-tunnels.pcap");
    assert_eq!(
        reasons(&ev),
        pairs(&[("tunnel", "medium"), ("tunnel", "medium")])
    );
    assert_eq!(ev[0]["app"], "wireguard");
    assert_eq!(ev[0]["evidence"]["peer"], "192.0.2.100");
    assert_eq!(ev[0]["evidence"]["peer_country"], "RU");
    assert_eq!(ev[1]["evidence"]["tunnel"], "http_connect");
    assert_eq!(ev[1]["evidence"]["target"], "example.net:443");
    assert!(ev.iter().all(|e| e["host"] == "10.8.0.16"));
}

#[test]
fn rtt_split_on_each_side() {
    // One connection each way: one-offs, low on either side (a relay repeated over
    // several connections is medium; src/detect/rtt_split.rs and tests/census.rs).
    let ev = findings("detect-rtt-split.pcap");
    assert_eq!(
        reasons(&ev),
        pairs(&[("rtt_split", "low"), ("rtt_split", "low")])
    );
    assert!(ev.iter().all(|e| e["evidence"]["evidence"] == "one_off"));
    let server = &ev[0]["evidence"];
    assert_eq!(server["relay_side"], "responder");
    assert_eq!(server["relay"], "192.0.2.140");
    assert_eq!(server["responder_side"]["tcp_rtt_ms"], 10.0);
    assert!(server["responder_side"]["app_rtt_ms"].as_f64().unwrap() > 180.0);
    let client = &ev[1]["evidence"];
    assert_eq!(client["relay_side"], "originator");
    assert_eq!(ev[1]["flow"]["dst_ip"], "192.0.2.5");
    assert!(client["originator_side"]["ratio"].as_f64().unwrap() > 10.0);
    // The direct flow to 192.0.2.20 is not reported.
    assert!(ev.iter().all(|e| e["flow"]["dst_ip"] != "192.0.2.20"));
}

#[test]
fn development_captures_give_no_false_findings() {
    let mut problems = Vec::new();
    for file in support::all_capture_files() {
        let (events, _) = support::replay(&[&file], &[], "detect-dev");
        for e in events {
            let mine = e["kind"] == "remote_desktop" || e["kind"] == "relay_chain";
            let severe = matches!(e["severity"].as_str(), Some("medium" | "high" | "critical"));
            if mine && severe {
                problems.push(format!("{}: {e}", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn replay_is_repeatable() {
    let config = fixture("detect.toml");
    let dir = support::scratch("detect-repeat");
    let mut outputs = Vec::new();
    for run in 0..2 {
        let events = dir.join(format!("events-{run}.jsonl"));
        let out = support::run(&[
            "replay",
            fixture("detect-rdp-farm.pcap").to_str().unwrap(),
            fixture("detect-ssh-chain.pcap").to_str().unwrap(),
            fixture("detect-rtt-split.pcap").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        outputs.push(std::fs::read(&events).unwrap());
    }
    assert!(!outputs[0].is_empty());
    assert_eq!(outputs[0], outputs[1]);
}

/// Each scenario decodes in tshark as the protocols it is meant to carry, with nothing
/// malformed and no error-severity expert info.
#[test]
fn tshark_decodes_the_scenarios() {
    if !support::require(support::has_tool("tshark"), "tshark") {
        return;
    }
    const INTENT: &[(&str, &[&str])] = &[
        ("detect-rdp-farm.pcap", &["tpkt", "cotp", "rdp"]),
        ("detect-rdp-admin.pcap", &["tpkt", "cotp", "rdp"]),
        ("detect-video-download.pcap", &["http"]),
        ("detect-ssh-chain.pcap", &["ssh"]),
        ("detect-ssh-unrelated.pcap", &["ssh"]),
        ("detect-tunnels.pcap", &["wg", "http"]),
        ("detect-rtt-split.pcap", &["tls"]),
        ("detect-anydesk-relay.pcap", &["tls"]),
        ("detect-turn-relay.pcap", &["stun"]),
    ];
    let names: Vec<&str> = fixturegen::scenarios_detect::all()
        .iter()
        .map(|f| f.name)
        .filter(|n| n.ends_with(".pcap"))
        .collect();
    let declared: Vec<&str> = INTENT.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, declared, "declare an intent for every scenario");
    const PI_ERROR: u64 = 0x0080_0000;
    for (name, protocols) in INTENT {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(fixture(name))
            .args([
                "-T",
                "fields",
                "-E",
                "occurrence=a",
                "-e",
                "frame.protocols",
                "-e",
                "_ws.malformed",
                "-e",
                "_ws.expert.severity",
            ])
            .output()
            .expect("run tshark");
        let text = String::from_utf8_lossy(&out.stdout);
        for p in *protocols {
            assert!(
                text.lines().any(|l| l
                    .split('\t')
                    .next()
                    .unwrap_or("")
                    .split(':')
                    .any(|t| t == *p)),
                "{name}: no frame decodes as {p}"
            );
        }
        for line in text.lines() {
            let cols: Vec<&str> = line.split('\t').collect();
            assert!(
                cols.get(1).is_none_or(|m| m.is_empty()),
                "{name}: malformed frame: {line}"
            );
            let severe = cols
                .get(2)
                .unwrap_or(&"")
                .split(',')
                .filter_map(|s| s.parse::<u64>().ok())
                .any(|s| s >= PI_ERROR);
            assert!(!severe, "{name}: error-severity expert info: {line}");
        }
    }
}
