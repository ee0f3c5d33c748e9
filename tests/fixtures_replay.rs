//! Every foundation fixture (link types, byte orders, tunnels, fragments, snaplen, gzip)
//! replays to exactly the flows its generator declared in `fixtures/expected/`; the broken
//! files give a counted truncation or one clear error line.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

type Counts = (u64, u64, u64, u64, u64, u64);

#[test]
fn each_fixture_replays_to_its_declared_flows() {
    let expected_dir = fixtures().join("expected");
    let mut checked = 0;
    // Scenario captures sit in their own directories, their expectations likewise.
    let entries = ["", "geo"].into_iter().flat_map(|sub| {
        std::fs::read_dir(expected_dir.join(sub))
            .expect("fixtures/expected")
            .map(move |e| (sub, e.expect("entry").path()))
    });
    for (sub, path) in entries.filter(|(_, p)| p.is_file()) {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .trim_end_matches(".json");
        let name = if sub.is_empty() {
            file.to_string()
        } else {
            format!("{sub}/{file}")
        };
        let name = name.as_str();
        let capture = fixtures().join(name);
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let (_, flows) = support::replay(&[&capture], &[], &format!("fixture-{name}"));

        let key = |proto: &serde_json::Value,
                   a: &serde_json::Value,
                   ap: &serde_json::Value,
                   b: &serde_json::Value,
                   bp: &serde_json::Value| {
            format!(
                "{} {}:{} > {}:{}",
                proto.as_str().unwrap_or(""),
                a.as_str().unwrap_or(""),
                ap,
                b.as_str().unwrap_or(""),
                bp
            )
        };
        let mut want: BTreeMap<String, Counts> = BTreeMap::new();
        for f in expected["flows"].as_array().expect("flows") {
            let n = |d: &str, k: &str| f[d][k].as_u64().unwrap_or(0);
            let proto = match f["proto"].as_str() {
                Some("icmp6") | Some("icmpv6") => serde_json::json!("icmp6"),
                _ => f["proto"].clone(),
            };
            want.insert(
                key(
                    &proto,
                    &f["orig_h"],
                    &f["orig_p"],
                    &f["resp_h"],
                    &f["resp_p"],
                ),
                (
                    n("orig", "pkts"),
                    n("resp", "pkts"),
                    n("orig", "ip_bytes"),
                    n("resp", "ip_bytes"),
                    n("orig", "payload_bytes"),
                    n("resp", "payload_bytes"),
                ),
            );
        }
        let mut got: BTreeMap<String, Counts> = BTreeMap::new();
        // Interim records carry totals so far; the final record has the totals.
        for r in flows.iter().filter(|r| r["interim"] == false) {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            let e = got
                .entry(key(
                    &r["proto"],
                    &r["src_ip"],
                    &r["src_port"],
                    &r["dst_ip"],
                    &r["dst_port"],
                ))
                .or_default();
            e.0 += n("pkts_orig");
            e.1 += n("pkts_resp");
            e.2 += n("ip_bytes_orig");
            e.3 += n("ip_bytes_resp");
            e.4 += n("bytes_orig");
            e.5 += n("bytes_resp");
        }
        assert_eq!(got, want, "{name}: (pkts o/r, ip bytes o/r, payload o/r)");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures checked");
}

#[test]
fn a_two_hour_session_gets_interim_records_while_it_runs() {
    let (_, flows) = support::replay(&[&fixtures().join("tcp-states.pcap")], &[], "interim");
    let long: Vec<&serde_json::Value> = flows.iter().filter(|r| r["src_port"] == 49203).collect();
    let interim = long.iter().filter(|r| r["interim"] == true).count();
    assert!(interim >= 1, "{long:?}");
    let last = long.last().expect("final record");
    assert_eq!(last["interim"], false);
    assert!(last["duration_s"].as_f64().unwrap_or(0.0) > 3600.0);
    for r in &long[..long.len() - 1] {
        assert!(r["pkts_orig"].as_u64() < last["pkts_orig"].as_u64());
        assert_eq!(r["end_reason"], serde_json::Value::Null);
    }
}

#[test]
fn a_capture_cut_mid_record_is_counted_not_fatal() {
    let out = support::run(&[
        "replay",
        fixtures().join("truncated.pcap").to_str().unwrap_or(""),
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 record(s) cut off at the end of the file"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_capture_is_one_line_and_exit_2() {
    let path = fixtures().join("not-a-capture.pcap");
    let out = support::run(&["replay", path.to_str().unwrap_or("")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a pcap or pcapng capture"), "{err}");
    let out = support::run(&["replay", "/nonexistent/x.pcap"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn several_files_are_merged_in_time_order_and_replays_are_identical() {
    let a = fixtures().join("pcap-le-us.pcap");
    let b = fixtures().join("two-interfaces.pcapng");
    let c = fixtures().join("pcap-le-us.pcap.gz");
    let (_, first) = support::replay(&[&a, &b, &c], &[], "merge-1");
    let (_, second) = support::replay(&[&c, &b, &a], &[], "merge-2");
    assert!(!first.is_empty());
    let ts: Vec<&str> = first.iter().filter_map(|f| f["ts"].as_str()).collect();
    assert_eq!(first.len(), second.len());
    assert!(ts.iter().all(|t| t.ends_with('Z')));
    // The same packets in any file order give the same flows.
    let norm = |v: &[serde_json::Value]| {
        let mut s: Vec<String> = v.iter().map(|f| f.to_string()).collect();
        s.sort();
        s
    };
    assert_eq!(norm(&first), norm(&second));
}

#[test]
fn a_bad_config_is_one_line_and_exit_2() {
    let dir = support::scratch("bad-config");
    let cfg = dir.join("farmwatch.toml");
    std::fs::write(&cfg, "[flows]\nmax_flow = 10\n").expect("write");
    let pcap = fixtures().join("pcap-le-us.pcap");
    let out = support::run(&[
        "replay",
        pcap.to_str().unwrap_or(""),
        "--config",
        cfg.to_str().unwrap_or(""),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("farmwatch.toml:2: unknown field `max_flow`"),
        "{err}"
    );
}
