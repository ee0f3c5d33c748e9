//! `replay --workers N` writes the same events and flow records, byte for byte, for every N
//! (DESIGN §7): every capture the project has, replayed with 1, 2, 3 and 4 flow workers.
//! The flow stage's partitions are fixed and the merge orders by packet-time moment and
//! content, so only a bug makes a number of workers show.
//!
//! Small captures are replayed together (replay merges its files by time): one run per
//! group and N keeps the sweep quick, and a group's traces only add interleavings.

mod radius_capture;
mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use radius_capture::{CONFIG, USER, host_apart_from_radius, radius_then_tunnel};
use support::{bin, scratch};

const WORKERS: [usize; 4] = [1, 2, 3, 4];
/// Captures replayed in one run, up to this many bytes together.
const GROUP_BYTES: u64 = 1 << 20;
/// The one fixture replay refuses (not a capture at all): its refusal is compared alone.
const REFUSED: &str = "not-a-capture.pcap";

/// One replay's output: exit status, events and flow records as written.
#[derive(PartialEq)]
struct Output {
    code: Option<i32>,
    events: Vec<u8>,
    flows: Vec<u8>,
}

fn replay(files: &[PathBuf], extra: &[&str], workers: usize, dir: &Path) -> Output {
    let (events, flows) = (dir.join("events.jsonl"), dir.join("flows.jsonl"));
    let _ = std::fs::remove_file(&events);
    let _ = std::fs::remove_file(&flows);
    let out = Command::new(bin())
        .arg("replay")
        .args(files)
        .args(extra)
        .arg("--workers")
        .arg(workers.to_string())
        .arg("--events")
        .arg(&events)
        .arg("--flows")
        .arg(&flows)
        .output()
        .expect("run farmwatch");
    Output {
        code: out.status.code(),
        events: std::fs::read(&events).unwrap_or_default(),
        flows: std::fs::read(&flows).unwrap_or_default(),
    }
}

/// The first line where `a` and `b` differ, for the failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let (mut al, mut bl) = (a.lines(), b.lines());
    for n in 1.. {
        match (al.next(), bl.next()) {
            (None, None) => break,
            (x, y) if x == y => {}
            (x, y) => return format!("line {n}:\n  1 worker: {x:?}\n  N workers: {y:?}"),
        }
    }
    "no line differs".into()
}

/// Replays `files` with every number of workers; panics naming the first difference.
/// Returns the one-worker output.
fn same_for_every_n(files: &[PathBuf], extra: &[&str], tag: &str) -> Output {
    let dir = scratch(tag);
    let one = replay(files, extra, 1, &dir);
    for n in &WORKERS[1..] {
        let other = replay(files, extra, *n, &dir);
        assert_eq!(
            one.code, other.code,
            "{files:?}: exit status with {n} workers"
        );
        assert!(
            one.events == other.events,
            "{files:?}: events with {n} workers differ, {}",
            first_difference(&one.events, &other.events)
        );
        assert!(
            one.flows == other.flows,
            "{files:?}: flow records with {n} workers differ, {}",
            first_difference(&one.flows, &other.flows)
        );
    }
    one
}

/// `files` in groups of at most [`GROUP_BYTES`] (a larger file alone), each file's bytes
/// once: a copy of a trace another directory holds adds nothing.
fn groups(files: Vec<PathBuf>) -> (Vec<Vec<PathBuf>>, usize) {
    let mut seen = HashSet::new();
    let mut groups: Vec<Vec<PathBuf>> = Vec::new();
    let mut size = 0;
    let mut copies = 0;
    for f in files {
        let bytes = std::fs::read(&f).expect("read a capture");
        if !seen.insert(bytes.clone()) {
            copies += 1;
            continue;
        }
        let len = bytes.len() as u64;
        if groups.is_empty() || size + len > GROUP_BYTES {
            groups.push(Vec::new());
            size = 0;
        }
        size += len;
        groups.last_mut().expect("a group").push(f);
    }
    (groups, copies)
}

fn sweep(files: Vec<PathBuf>, extra: &[&str], tag: &str) -> usize {
    let total = files.len();
    let (groups, copies) = groups(files);
    for (i, g) in groups.iter().enumerate() {
        let out = same_for_every_n(g, extra, &format!("{tag}-{i}"));
        assert_eq!(out.code, Some(0), "replay of {g:?} failed");
    }
    eprintln!(
        "{tag}: {total} captures ({copies} byte-identical copies left out) in {} runs per number of workers",
        groups.len()
    );
    total - copies
}

fn fixtures(pattern: impl Fn(&str) -> bool, dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixtures directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pattern))
        .collect();
    files.sort();
    files
}

/// Every trace of the capture suites (zeek, suricata-verify, the spicy analyzers' when
/// present), with the default configuration.
#[test]
fn capture_suites_are_the_same_for_every_number_of_workers() {
    let files = support::all_capture_files();
    assert!(files.len() > 50, "the suites hold their traces");
    sweep(files, &[], "suites");
}

/// Every foundation fixture and every lab capture with the default configuration; the
/// capture replay refuses is refused alike.
#[test]
fn fixtures_and_lab_captures_are_the_same_for_every_number_of_workers() {
    let mut files = fixtures(
        |n| n.contains(".pcap") && n != REFUSED && !n.starts_with("detect-"),
        "fixtures",
    );
    files.extend(fixtures(|n| n.ends_with(".pcap"), "fixtures/lab"));
    assert!(files.len() > 50);
    sweep(files, &[], "fixtures");
    let refused = same_for_every_n(&[Path::new("fixtures").join(REFUSED)], &[], "refused");
    assert_eq!(refused.code, Some(2));
}

/// The detector scenarios, each alone with their configuration (their findings are what
/// a worker split could disturb), the demo and the geo week with inventory and session
/// feed: every one has findings to compare.
#[test]
fn scenarios_and_demo_are_the_same_for_every_number_of_workers() {
    let scenarios = fixtures(|n| n.starts_with("detect-"), "fixtures");
    assert!(scenarios.len() >= 9);
    let mut with_events = 0;
    for f in &scenarios {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let out = same_for_every_n(
            std::slice::from_ref(f),
            &["--config", "fixtures/detect.toml"],
            &name,
        );
        assert_eq!(out.code, Some(0));
        with_events += usize::from(!out.events.is_empty());
    }
    assert!(with_events >= 6, "most scenarios have findings");
    for (capture, dir) in [
        ("fixtures/detect-rdp-farm.pcap", "fixtures/demo"),
        ("fixtures/geo/week.pcap", "fixtures/geo"),
    ] {
        let (config, accounts, sessions) = (
            format!("{dir}/farmwatch.toml"),
            format!("{dir}/accounts.toml"),
            format!("{dir}/sessions.jsonl"),
        );
        let out = same_for_every_n(
            &[PathBuf::from(capture)],
            &[
                "--config",
                &config,
                "--accounts",
                &accounts,
                "--sessions",
                &sessions,
            ],
            dir.trim_start_matches("fixtures/"),
        );
        assert_eq!(out.code, Some(0));
        assert!(!out.events.is_empty(), "{capture} has findings");
    }
}

/// The account learned from RADIUS in one partition names the finding and the flow of a
/// host in another, whichever worker holds each.
#[test]
fn radius_identity_names_findings_in_other_partitions() {
    let host = host_apart_from_radius();
    let dir = scratch("workers-radius");
    let pcap = dir.join("radius-tunnel.pcap");
    std::fs::write(&pcap, radius_then_tunnel(host)).unwrap();
    let out = same_for_every_n(&[pcap], &["--config", CONFIG], "workers-radius-run");
    assert_eq!(out.code, Some(0));
    let events = lines(&out.events);
    let tunnel = events
        .iter()
        .find(|e| e["reason"] == "tunnel" && e["host"] == host.to_string())
        .unwrap_or_else(|| panic!("a tunnel finding for {host}: {events:?}"));
    assert_eq!(tunnel["account"], USER, "{tunnel}");
    let flows = String::from_utf8_lossy(&out.flows);
    let record: serde_json::Value = flows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["src_ip"] == host.to_string())
        .expect("the tunnel's flow record");
    assert_eq!(record["account"], USER, "{record}");
}

fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Without a `[network]` section every private address is inside, so an SSH session from
/// outside into 10.8.0.14 and the one it drives on to 10.20.0.30 are both that host's: the
/// flow between two inside hosts goes with its client, and the stepping stone is found
/// with every number of workers.
#[test]
fn a_stepping_stone_to_an_inside_server_is_found_without_a_config() {
    let chain = PathBuf::from("fixtures/detect-ssh-chain.pcap");
    let out = same_for_every_n(&[chain], &[], "workers-chain");
    assert_eq!(out.code, Some(0));
    let events = lines(&out.events);
    let stone = events
        .iter()
        .find(|e| e["reason"] == "stepping_stone")
        .unwrap_or_else(|| panic!("a stepping stone: {events:?}"));
    assert_eq!(stone["host"], "10.8.0.14", "{stone}");
    assert_eq!(stone["flow"]["dst_ip"], "10.20.0.30", "{stone}");
}

/// A 3000-byte UDP datagram sent in three fragments, last piece first, between two inside
/// hosts: only the first piece has the ports that place the flow with its client, so the
/// reader holds the last piece until the first comes. The datagram is whole in one
/// partition, and the output is the same, for every number of workers.
#[test]
fn a_datagram_fragmented_out_of_order_between_inside_hosts_is_whole() {
    let dir = scratch("workers-fragments-config");
    let config = dir.join("farmwatch.toml");
    std::fs::write(
        &config,
        "[network]\ninside = [\"192.0.2.0/24\", \"203.0.113.0/24\"]\n",
    )
    .unwrap();
    let capture = PathBuf::from("fixtures/ipv4-fragments.pcap");
    let out = same_for_every_n(
        &[capture],
        &["--config", config.to_str().unwrap()],
        "workers-fragments",
    );
    assert_eq!(out.code, Some(0));
    let flows = lines(&out.flows);
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0]["src_ip"], "192.0.2.10");
    assert_eq!(flows[0]["bytes_orig"], 3000, "{}", flows[0]);
    assert_eq!(flows[0]["bytes_resp"], 2, "{}", flows[0]);
}
