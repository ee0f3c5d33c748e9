//! The README's main job (`tools/demo`): the bundled scenario with the embedded geo
//! databases gives the findings its README promises, and the control account stays clean.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn the_demo_scenario_finds_the_farm_with_embedded_geo_data() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (events, _) = support::replay(
        &[&root.join("fixtures/detect-rdp-farm.pcap")],
        &[
            "--config",
            "fixtures/demo/farmwatch.toml",
            "--accounts",
            "fixtures/demo/accounts.toml",
            "--sessions",
            "fixtures/demo/sessions.jsonl",
        ],
        "demo",
    );
    let got: BTreeSet<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["account"].as_str().unwrap_or("-").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (account, reason) in [
        ("jdoe", "persistent_stream"),
        ("jdoe", "impossible_travel"),
        ("jdoe", "high_risk_country"),
        ("jdoe", "disallowed_country"),
        ("jdoe", "laptop_farm_suspected"),
        ("asmith", "shared_public_ip"),
        ("bwong", "shared_public_ip"),
        ("bwong", "phone_format"),
        ("cdavis", "hosting_asn"),
        ("cdavis", "disallowed_country"),
    ] {
        assert!(
            got.contains(&(account.into(), reason.into())),
            "missing {account}/{reason} in {got:?}"
        );
    }
    assert!(
        !got.iter().any(|(a, _)| a == "mkeller"),
        "the control account fired: {got:?}"
    );
    // The generated RDP session answers a minute apart: no round trip is that long, so no
    // operator distance is claimed from it.
    assert!(
        !got.iter().any(|(_, r)| r == "operator_latency"),
        "a minute-long \"round trip\" was judged: {got:?}"
    );
    let critical = events.iter().any(|e| {
        e["account"] == "jdoe"
            && e["reason"] == "laptop_farm_suspected"
            && e["severity"] == "critical"
    });
    assert!(critical, "jdoe should reach a critical alert");
}
