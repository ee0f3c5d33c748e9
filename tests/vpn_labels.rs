//! SSL-VPN labels from real bytes: openconnect ↔ ocserv (`fixtures/lab/`) is labelled
//! `anyconnect` from its DTLS ClientHello and reported as `relay_chain/tunnel`, unless the
//! gateway is on `[detect.tunnel] allowed_endpoints`; its CSTP channel (TLS to the same
//! gateway address and port) takes the label from it; a plain HTTPS session is not.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn lab(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lab")
        .join(file)
}

/// Replays `file` with the lab's host network inside and `extra` config lines.
fn replay(file: &str, extra: &str, tag: &str) -> (Vec<Value>, Vec<Value>) {
    let dir = support::scratch(&format!("{tag}-config"));
    let config = dir.join("farmwatch.toml");
    std::fs::write(
        &config,
        format!("[network]\ninside = [\"10.0.0.0/8\"]\n{extra}"),
    )
    .expect("write config");
    let config = config.display().to_string();
    support::replay(&[&lab(file)], &["--config", &config], tag)
}

fn tunnels(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "relay_chain" && e["reason"] == "tunnel")
        .collect()
}

#[test]
fn openconnect_dtls_is_anyconnect_and_a_tunnel() {
    let (events, flows) = replay("openconnect-ocserv-25ms.pcap", "", "vpn-openconnect");
    let dtls: Vec<&Value> = flows
        .iter()
        .filter(|f| f["proto"] == "udp" && f["dst_port"] == 443)
        .collect();
    assert!(!dtls.is_empty(), "no DTLS flow in {flows:?}");
    assert!(dtls.iter().all(|f| f["app"] == "anyconnect"), "{dtls:?}");
    let found = tunnels(&events);
    assert_eq!(found.len(), 1, "{events:?}");
    assert_eq!(found[0]["app"], "anyconnect");
    assert_eq!(found[0]["evidence"]["tunnel"], "anyconnect");
    assert_eq!(found[0]["host"], "10.8.0.12");
}

#[test]
fn the_cstp_channel_is_labelled_from_its_dtls_companion() {
    let (_, flows) = replay("openconnect-ocserv-25ms.pcap", "", "vpn-openconnect-cstp");
    let cstp: Vec<&Value> = flows
        .iter()
        .filter(|f| f["proto"] == "tcp" && f["dst_port"] == 443)
        .collect();
    assert_eq!(cstp.len(), 1, "{flows:?}");
    assert_eq!(cstp[0]["app"], "anyconnect", "{cstp:?}");
    // Its TLS details stay: the label says what runs inside, the details what was seen.
    assert!(cstp[0]["tls"].is_object(), "{cstp:?}");
}

#[test]
fn an_allowed_gateway_is_not_reported() {
    let (events, flows) = replay(
        "openconnect-ocserv-25ms.pcap",
        "[detect.tunnel]\nallowed_endpoints = [\"203.0.113.11/32\"]\n",
        "vpn-openconnect-allowed",
    );
    assert!(flows.iter().any(|f| f["app"] == "anyconnect"));
    assert!(tunnels(&events).is_empty(), "{events:?}");
}

#[test]
fn plain_https_is_not_an_ssl_vpn() {
    let (events, flows) = replay("tls-direct-25ms.pcap", "", "vpn-tls-direct");
    assert!(!flows.is_empty());
    assert!(flows.iter().all(|f| f["app"] == "tls"), "{flows:?}");
    assert!(tunnels(&events).is_empty(), "{events:?}");
}
