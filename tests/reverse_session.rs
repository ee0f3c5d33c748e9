//! `reverse_session` on real captures: the lab's `ssh -R` sessions typed from outside
//! (`fixtures/lab/ssh-reverse-*.pcap`) are reported; its look-alikes (ssh out of the host
//! typed at the host, ssh into the host) and every other lab capture are not, nor is any
//! trace of the copied Zeek and suricata-verify suites with every private address taken
//! for an account host.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn lab(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lab")
        .join(file)
}

/// A config in a scratch directory: `network` and `extra` as TOML, the test geo database.
fn config(tag: &str, network: &str, extra: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let db = root.join("geoip/test/test-geo.mmdb");
    let path = support::scratch(&format!("{tag}-config")).join("farmwatch.toml");
    let text = format!(
        "[network]\n{network}\n[geoip]\ncountry = {db:?}\nasn = {db:?}\n{extra}\n",
        db = db.display().to_string()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The lab's network: the laptop 10.8.0.12 is in the VPN pool.
const LAB: &str = "inside = [\"10.8.0.0/16\"]\nvpn_pool = [\"10.8.0.0/16\"]";

fn findings(file: &Path, config: &Path, tag: &str) -> Vec<Value> {
    let (events, _) = support::replay(&[file], &["--config", config.to_str().unwrap()], tag);
    events
        .into_iter()
        .filter(|e| e["reason"] == "reverse_session")
        .collect()
}

#[test]
fn ssh_reverse_tunnels_typed_from_outside_are_reported() {
    let cfg = config("reverse-lab", LAB, "");
    for file in ["ssh-reverse-25ms.pcap", "ssh-reverse-60ms.pcap"] {
        let ev = findings(&lab(file), &cfg, &format!("reverse-{file}"));
        assert_eq!(ev.len(), 1, "{file}: {ev:?}");
        let e = &ev[0];
        assert_eq!(e["kind"], "remote_desktop");
        assert_eq!(e["severity"], "medium");
        assert_eq!(e["host"], "10.8.0.12");
        assert_eq!(e["app"], "ssh");
        // The host opened it: it is the flow's originator.
        assert_eq!(e["flow"]["src_ip"], "10.8.0.12");
        assert_eq!(e["flow"]["dst_port"], 22);
        let x = &e["evidence"];
        assert_eq!(x["outside"], "198.51.100.20");
        assert!(x.get("outside_country").is_some() && x.get("outside_asn").is_some());
        assert!(x["answered_bursts"].as_u64().unwrap() >= 4, "{file}: {x}");
        assert!(
            x["outside_burst_share"].as_f64().unwrap() >= 0.5,
            "{file}: {x}"
        );
        assert!(
            x["keystrokes_from_outside"].as_u64().unwrap() >= 10,
            "{file}: {x}"
        );
        // The host answers from one short leg away, far inside the 50 ms window, and
        // faster than any round trip to the operator (25 or 60 ms each way).
        let answer = x["median_answer_ms"].as_f64().unwrap();
        assert!(answer > 0.0 && answer < 25.0, "{file}: {x}");
        assert!(x["duration_s"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_long_lived_reverse_session_is_reported_again_at_high() {
    // The 25 ms capture runs 36 s: with `long_lived` at 20 s it crosses it while typed.
    let cfg = config(
        "reverse-long",
        LAB,
        "[detect.reverse_session]\nlong_lived = \"20s\"",
    );
    let ev = findings(&lab("ssh-reverse-25ms.pcap"), &cfg, "reverse-long");
    let severities: Vec<&str> = ev.iter().map(|e| e["severity"].as_str().unwrap()).collect();
    assert_eq!(severities, ["medium", "high"]);
    assert_ne!(ev[0]["id"], ev[1]["id"]);
    assert!(ev[1]["evidence"]["duration_s"].as_u64().unwrap() >= 20);
}

#[test]
fn look_alikes_and_other_lab_captures_are_silent() {
    let cfg = config("reverse-quiet", LAB, "");
    let mut checked = 0;
    for file in support::capture_files(&lab("")) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("ssh-reverse-") {
            continue;
        }
        let ev = findings(&file, &cfg, &format!("reverse-quiet-{name}"));
        assert!(ev.is_empty(), "{name}: {ev:?}");
        checked += 1;
    }
    // The outbound and four inbound SSH look-alikes among them.
    assert!(checked >= 5 + 20, "{checked} captures");
}

#[test]
fn zeek_and_suricata_traces_are_silent() {
    let private =
        "[\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"100.64.0.0/10\", \"fc00::/7\"]";
    let cfg = config(
        "reverse-suites",
        &format!("inside = {private}\nvpn_pool = {private}"),
        "",
    );
    let files: Vec<PathBuf> = ["zeek", "suricata-verify"]
        .into_iter()
        .flat_map(|s| support::capture_files(&support::suite(s).expect("copied suite")))
        .collect();
    assert!(files.len() > 50);
    let mut problems = Vec::new();
    for file in &files {
        for e in findings(file, &cfg, "reverse-suites") {
            problems.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
