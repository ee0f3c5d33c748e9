//! The census: every real capture the tests have (the copied Zeek and suricata-verify
//! traces, and the spicy-analyzer ones when present) replayed as a security team deploys
//! the sensor, with each private client address as its own contractor account. Third-party
//! traffic is benign except where its authors captured a tunnel or a proxy on purpose, so
//! every finding at medium or above must be one listed here with why it is true; any other
//! is a false alarm an analyst would have to clear, and fails the test. A listed finding
//! that stops appearing fails it too, so the list stays the truth.
//!
//! Also the lab's real socat relays (`fixtures/lab`): each gives `rtt_split` on its side,
//! and the direct connections give none.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A finding at medium or above that is true: (capture below its suite's folder, reason,
/// host), and why.
const TRUE_FINDINGS: &[(&str, &str, &str, &str)] = &[
    (
        "zeek/Traces/socks.pcap",
        "tunnel",
        "10.0.0.55",
        "a SOCKS5 CONNECT: the host's traffic leaves through a proxy",
    ),
    (
        "zeek/Traces/socks-with-ssl.pcap",
        "tunnel",
        "10.0.0.50",
        "a SOCKS CONNECT with TLS inside: a proxy carrying the host's session",
    ),
    (
        "zeek-spicy-analyzers/Traces/tailscale_linux.pcap",
        "tunnel",
        "192.168.88.3",
        "Tailscale (WireGuard) to an outside peer: a tunnel out of the network",
    ),
    (
        "zeek-spicy-analyzers/Traces/openvpn.pcap",
        "tunnel",
        "192.168.88.3",
        "an OpenVPN session to an outside server",
    ),
    (
        "zeek-spicy-analyzers/Traces/openvpn_udp_hmac_256.pcap",
        "tunnel",
        "192.168.88.5",
        "an OpenVPN session over UDP to an outside server",
    ),
    (
        "zeek-spicy-analyzers/Traces/ipsec_client.pcap",
        "tunnel",
        "192.168.0.10",
        "an IPsec (IKE/ESP) client connecting out",
    ),
];

/// RFC 1918 and unique-local addresses: the clients a team would map to accounts.
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xfe00 == 0xfc00,
    }
}

/// Every suite present, with its captures.
fn suites() -> Vec<(&'static str, PathBuf, Vec<PathBuf>)> {
    ["zeek", "suricata-verify", support::SPICY]
        .into_iter()
        .filter_map(|name| support::suite(name).map(|dir| (name, dir)))
        .map(|(name, dir)| {
            let files = support::capture_files(&dir);
            (name, dir, files)
        })
        .collect()
}

/// The findings at medium or above of `file` replayed with each private client address
/// (an originator of a flow) as its own contractor, as (reason, host, severity).
fn census(file: &Path, tag: &str) -> Vec<(String, String, String)> {
    let (_, flows) = support::replay(&[file], &[], &format!("census-{tag}-flows"));
    let clients: BTreeSet<IpAddr> = flows
        .iter()
        .filter_map(|f| f["src_ip"].as_str()?.parse().ok())
        .filter(|ip| private(*ip))
        .collect();
    let dir = support::scratch(&format!("census-{tag}-inventory"));
    let inventory = dir.join("accounts.toml");
    let accounts: String = clients
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!("[[account]]\nid = \"c{i}\"\nkind = \"contractor\"\nhosts = [\"{ip}\"]\n\n")
        })
        .collect();
    std::fs::write(&inventory, accounts).expect("write the inventory");
    let inventory = inventory.display().to_string();
    let (events, _) = support::replay(
        &[file],
        &["--accounts", &inventory],
        &format!("census-{tag}"),
    );
    events
        .iter()
        .filter(|e| matches!(e["severity"].as_str(), Some("medium" | "high" | "critical")))
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (s(&e["reason"]), s(&e["host"]), s(&e["severity"]))
        })
        .collect()
}

#[test]
fn every_finding_at_medium_or_above_on_real_traffic_is_true() {
    let mut seen = BTreeSet::new();
    let mut false_alarms = Vec::new();
    let mut present = BTreeSet::new();
    for (name, dir, files) in suites() {
        for file in files {
            let rel = file
                .strip_prefix(&dir)
                .unwrap_or(&file)
                .display()
                .to_string();
            let capture = format!("{name}/{rel}");
            present.insert(capture.clone());
            let tag = capture.replace(['/', '.'], "_");
            for (reason, host, severity) in census(&file, &tag) {
                let listed = TRUE_FINDINGS
                    .iter()
                    .any(|t| (t.0, t.1, t.2) == (&capture[..], &reason[..], &host[..]));
                if listed {
                    seen.insert((capture.clone(), reason, host));
                } else {
                    false_alarms.push(format!("{capture}: {reason} {severity} on {host}"));
                }
            }
        }
    }
    let missing: Vec<_> = TRUE_FINDINGS
        .iter()
        .filter(|t| present.contains(t.0))
        .filter(|t| !seen.contains(&(t.0.to_string(), t.1.to_string(), t.2.to_string())))
        .map(|t| format!("{}: {} on {} ({})", t.0, t.1, t.2, t.3))
        .collect();
    assert!(
        false_alarms.is_empty(),
        "findings at medium or above not known to be true:\n{}",
        false_alarms.join("\n")
    );
    assert!(
        missing.is_empty(),
        "true findings no longer raised:\n{}",
        missing.join("\n")
    );
}

/// The lab's TLS captures, 16 connections each: through a real socat relay, on either
/// side of the sensor, and direct.
#[test]
fn lab_relays_give_rtt_split_and_direct_connections_do_not() {
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab");
    let text = std::fs::read_to_string(lab.join("manifest.json")).expect("manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
    let mut checked = 0;
    for cap in manifest["captures"].as_array().expect("captures") {
        let file = cap["file"].as_str().unwrap();
        if !file.starts_with("tls-") {
            continue;
        }
        let tag = file.replace('.', "_");
        let rtt_split: Vec<(String, String)> = census(&lab.join(file), &tag)
            .into_iter()
            .filter(|(reason, ..)| reason == "rtt_split")
            .map(|(_, host, severity)| (host, severity))
            .collect();
        let want = &cap["expected"];
        let (events, _) = support::replay(&[&lab.join(file)], &[], &format!("lab-{tag}"));
        let sides: BTreeSet<&str> = events
            .iter()
            .filter(|e| e["reason"] == "rtt_split")
            .filter_map(|e| e["evidence"]["relay_side"].as_str())
            .collect();
        if want["relay"] == true {
            // Repeated on every connection from an account host: one medium finding.
            assert_eq!(
                rtt_split,
                [("10.8.0.12".to_string(), "medium".to_string())],
                "{file}"
            );
            let side = want["relay_side"].as_str().unwrap();
            assert_eq!(sides, BTreeSet::from([side]), "{file}");
        } else {
            assert!(rtt_split.is_empty(), "{file}: {rtt_split:?}");
            assert!(sides.is_empty(), "{file}: {sides:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, 7, "the manifest's TLS captures");
}
