//! Severity that fits the account (`[detect.severity]`): the geo scenario's contractors
//! connecting from a hosting network are medium, and the config can weigh it otherwise;
//! a policy naming no real reason or level is refused at load, naming the key.

mod support;

use std::path::{Path, PathBuf};

fn geo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/geo")
        .join(name)
}

/// The geo scenario's config with `extra` appended, written to a scratch directory.
fn config(tag: &str, extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(geo("farmwatch.toml")).expect("geo config");
    let path = support::scratch(&format!("{tag}-config")).join("farmwatch.toml");
    std::fs::write(&path, format!("{base}\n{extra}")).expect("write config");
    path
}

/// Severities of the `hosting_asn` findings, by account.
fn hosting_asn(config: &Path, tag: &str) -> Vec<(String, String)> {
    let (accounts, sessions) = (geo("accounts.toml"), geo("sessions.jsonl"));
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--accounts",
        accounts.to_str().unwrap(),
        "--sessions",
        sessions.to_str().unwrap(),
    ];
    let (events, _) = support::replay(&[&geo("week.pcap")], &args, tag);
    let mut found: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["reason"] == "hosting_asn")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("account"), s("severity"))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn a_contractor_on_a_hosting_network_is_medium_unless_configured_otherwise() {
    let pairs = |sev: &str| {
        ["asmith", "bwong"]
            .map(|a| (a.to_string(), sev.to_string()))
            .to_vec()
    };
    assert_eq!(
        hosting_asn(&geo("farmwatch.toml"), "severity-default"),
        pairs("medium")
    );
    let lowered = config(
        "severity-low",
        "[detect.severity.contractor]\nhosting_asn = \"low\"\n",
    );
    assert_eq!(hosting_asn(&lowered, "severity-low"), pairs("low"));
}

#[test]
fn a_policy_naming_no_reason_or_level_is_refused() {
    for (tag, extra, says) in [
        (
            "severity-reason",
            "[detect.severity.contractor]\nhostingasn = \"low\"\n",
            "detect.severity.contractor.hostingasn",
        ),
        (
            "severity-level",
            "[detect.severity.employee]\nhosting_asn = \"urgent\"\n",
            "urgent",
        ),
        (
            "severity-kind",
            "[detect.severity.vendor]\nhosting_asn = \"low\"\n",
            "vendor",
        ),
    ] {
        let path = config(tag, extra);
        let out = support::run(&["check", "--config", path.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tag}: {said}");
        assert!(said.contains(says), "{tag}: {said}");
    }
}
