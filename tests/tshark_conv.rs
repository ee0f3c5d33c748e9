//! Real bytes, cross-checked: every development capture (traces from Zeek, Suricata and
//! the spicy analyzers) is replayed, and its TCP and UDP flows must agree with tshark's
//! conversation tables — frames exactly, bytes to tshark's printed precision.
//!
//! Documented differences, which the comparison applies:
//! - farmwatch decapsulates VXLAN, GENEVE, Teredo and AYIYA: their outer UDP conversations are
//!   not flows, the inner ones are (tshark lists both).
//! - A flow split by a timeout or port reuse is summed back per address/port pair, as
//!   tshark does not split conversations.
//! - ICMP error messages quote a TCP/UDP header; tshark's tables count those quotes as
//!   conversation frames, farmwatch accounts an ICMP error to ICMP.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// (proto, endpoint A, endpoint B)
type Pair = (String, String, String);
type Conv = BTreeMap<Pair, (u64, u64, u64, u64)>;

const DECAPSULATED_PORTS: [&str; 4] = ["4789", "6081", "3544", "5072"];

/// Parses "550 kB" / "4315 bytes" into (value in bytes, precision in bytes).
fn size(value: &str, unit: &str) -> (u64, u64) {
    let v: u64 = value.parse().unwrap_or(0);
    match unit {
        "kB" => (v * 1000, 1000),
        "MB" => (v * 1_000_000, 1_000_000),
        "GB" => (v * 1_000_000_000, 1_000_000_000),
        _ => (v, 0),
    }
}

/// tshark's `-z conv,tcp -z conv,udp`: (proto, A, B) → (frames B→A, bytes B→A, frames A→B, bytes A→B).
fn tshark_conversations(file: &Path) -> (Conv, BTreeMap<Pair, (u64, u64)>) {
    let out = Command::new("tshark")
        .args(["-n", "-q", "-z", "conv,tcp", "-z", "conv,udp", "-r"])
        .arg(file)
        .output()
        .expect("tshark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut conv = Conv::new();
    let mut precision = BTreeMap::new();
    let mut proto = "";
    for line in text.lines() {
        if line.starts_with("TCP Conversations") {
            proto = "tcp";
        } else if line.starts_with("UDP Conversations") {
            proto = "udp";
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 11 || f[1] != "<->" {
            continue;
        }
        let (a, b) = (f[0].to_string(), f[2].to_string());
        let (ba_bytes, ba_prec) = size(f[4], f[5]);
        let (ab_bytes, ab_prec) = size(f[7], f[8]);
        let key = (proto.to_string(), a, b);
        conv.insert(
            key.clone(),
            (
                f[3].parse().unwrap_or(0),
                ba_bytes,
                f[6].parse().unwrap_or(0),
                ab_bytes,
            ),
        );
        precision.insert(key, (ba_prec, ab_prec));
    }
    (conv, precision)
}

fn endpoint(ip: &serde_json::Value, port: &serde_json::Value) -> String {
    format!("{}:{}", ip.as_str().unwrap_or(""), port)
}

#[test]
fn flows_agree_with_tshark_conversations_on_every_development_capture() {
    if !support::require(support::has_tool("tshark"), "tshark") {
        return;
    }
    let files = support::all_capture_files();
    assert!(
        files.len() > 50,
        "expected the development captures, found {}",
        files.len()
    );
    let mut compared = 0;
    let mut problems = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let (_, flows) = support::replay(&[file], &[], &format!("conv-{i}"));
        // Sum our flows per directed endpoint pair.
        let mut ours: BTreeMap<Pair, (u64, u64)> = BTreeMap::new();
        for r in flows.iter().filter(|r| r["interim"] == false) {
            let proto = r["proto"].as_str().unwrap_or("").to_string();
            let src = endpoint(&r["src_ip"], &r["src_port"]);
            let dst = endpoint(&r["dst_ip"], &r["dst_port"]);
            let pk = |n: &str| r[n].as_u64().unwrap_or(0);
            let e = ours
                .entry((proto.clone(), src.clone(), dst.clone()))
                .or_default();
            e.0 += pk("pkts_orig");
            e.1 += pk("wire_bytes_orig");
            let e = ours.entry((proto, dst, src)).or_default();
            e.0 += pk("pkts_resp");
            e.1 += pk("wire_bytes_resp");
        }
        let (theirs, precision) = tshark_conversations(file);
        for ((proto, a, b), (ba_frames, ba_bytes, ab_frames, ab_bytes)) in &theirs {
            let port = |e: &str| e.rsplit(':').next().unwrap_or("").to_string();
            if proto == "udp"
                && (DECAPSULATED_PORTS.contains(&port(a).as_str())
                    || DECAPSULATED_PORTS.contains(&port(b).as_str()))
            {
                continue;
            }
            let ab = ours
                .get(&(proto.clone(), a.clone(), b.clone()))
                .copied()
                .unwrap_or_default();
            let ba = ours
                .get(&(proto.clone(), b.clone(), a.clone()))
                .copied()
                .unwrap_or_default();
            let (ba_prec, ab_prec) = precision[&(proto.clone(), a.clone(), b.clone())];
            let near = |ours: u64, theirs: u64, prec: u64| ours.abs_diff(theirs) <= prec;
            if ab.0 != *ab_frames
                || ba.0 != *ba_frames
                || !near(ab.1, *ab_bytes, ab_prec)
                || !near(ba.1, *ba_bytes, ba_prec)
            {
                problems.push(format!(
                    "{}: {proto} {a} <-> {b}: tshark frames {ab_frames}/{ba_frames} bytes {ab_bytes}/{ba_bytes}, farmwatch frames {}/{} bytes {}/{}",
                    file.display(),
                    ab.0,
                    ba.0,
                    ab.1,
                    ba.1
                ));
            }
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} conversations compared");
    assert!(
        problems.is_empty(),
        "{} disagreements:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
