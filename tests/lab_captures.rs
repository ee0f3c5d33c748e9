//! The lab captures (`fixtures/lab/`, made by `tools/lab/make-all` from real software in
//! network namespaces) replayed through the binary: every TCP connection that carried
//! data gets the application label the manifest expects, and the TCP handshake times at
//! the sensor are the configured delays (packet time, from the committed bytes). Labels
//! and handshake times only: the detectors that use them are checked elsewhere.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn lab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab")
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(lab().join("manifest.json")).expect("manifest.json");
    let doc: Value = serde_json::from_str(&text).expect("manifest is JSON");
    doc["captures"].as_array().expect("captures").clone()
}

/// Final records of the TCP flows that carried payload.
fn tcp_data_flows(file: &str) -> Vec<Value> {
    let (_, flows) = support::replay(&[&lab().join(file)], &[], &format!("lab-{file}"));
    flows
        .into_iter()
        .filter(|f| f["interim"] != true && f["proto"] == "tcp")
        .filter(|f| {
            f["bytes_orig"].as_u64().unwrap_or(0) + f["bytes_resp"].as_u64().unwrap_or(0) > 0
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn manifest_lists_every_lab_capture() {
    let listed: BTreeSet<String> = manifest()
        .iter()
        .map(|c| c["file"].as_str().unwrap().to_string())
        .collect();
    let on_disk: BTreeSet<String> = support::capture_files(&lab())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, on_disk);
}

#[test]
fn lab_captures_get_the_expected_labels_and_handshake_times() {
    let mut problems = Vec::new();
    for cap in manifest() {
        let file = cap["file"].as_str().unwrap();
        let want = &cap["expected"];
        let flows = tcp_data_flows(file);
        if flows.is_empty() {
            problems.push(format!("{file}: no TCP flow with data"));
            continue;
        }
        for f in &flows {
            if f["app"] != want["app"] {
                problems.push(format!(
                    "{file}: {}:{} -> {}:{} labelled {}, manifest says {}",
                    f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"], f["app"], want["app"]
                ));
            }
        }
        // The configured one-way delays, seen from the sensor: within 10 % + 3 ms.
        for leg in ["tcp_rtt_resp_ms", "tcp_rtt_orig_ms"] {
            let expected = want[leg].as_f64().unwrap();
            let got = median(flows.iter().filter_map(|f| f[leg].as_f64()).collect());
            if (got - expected).abs() > expected * 0.1 + 3.0 {
                problems.push(format!("{file}: {leg} {got} ms, configured {expected} ms"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
