//! `replay --workers N` writes the same events and flow records, byte for byte, for every N
//! (DESIGN §7): every capture the project has, replayed with 1, 2, 3 and 4 flow workers.
//! The flow stage's partitions are fixed and the merge orders by packet-time moment and
//! content, so only a bug makes a number of workers show.
//!
//! Small captures are replayed together (replay merges its files by time): one run per
//! group and N keeps the sweep quick, and a group's traces only add interleavings.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use farmwatch::config::Config;
use farmwatch::flow_stage::partition_of;
use fixturegen::capture::{ByteOrder, Capture, EPOCH, MS, SEC, TsUnit, linktype};
use fixturegen::conversation::{Conversation, UDP};
use fixturegen::packet::{Link, Side};
use fixturegen::rng::Rng;
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

// --- RADIUS identity across partitions ---------------------------------------------------

/// The detector scenarios' network: inside 10.8.0.0/16 (the VPN pool) and 10.20.0.0/16.
pub const CONFIG: &str = "fixtures/detect.toml";
const NAS: &str = "10.20.0.2:40001";
const RADIUS_SERVER: &str = "10.20.0.9:1813";
/// WireGuard's endpoint in a country the test geo database places in RU.
const TUNNEL_END: &str = "192.0.2.100:51820";
pub const USER: &str = "rwong";

/// One RADIUS attribute (RFC 2865 §5): type, length, value.
fn attribute(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    out.push(u8::try_from(value.len() + 2).expect("short attribute"));
    out.extend_from_slice(value);
}

/// An Accounting-Request (RFC 2866 §4.1), Acct-Status-Type Start (§5.1), for `user` on
/// `framed`. The authenticator is left zero: a sensor cannot check it without the secret.
fn accounting_start(user: &str, framed: Ipv4Addr) -> Vec<u8> {
    let mut attrs = Vec::new();
    attribute(&mut attrs, 40, &1u32.to_be_bytes()); // Acct-Status-Type = Start
    attribute(&mut attrs, 44, b"fwap-1"); // Acct-Session-Id
    attribute(&mut attrs, 1, user.as_bytes()); // User-Name
    attribute(&mut attrs, 4, &[10, 20, 0, 2]); // NAS-IP-Address
    attribute(&mut attrs, 8, &framed.octets()); // Framed-IP-Address
    attribute(&mut attrs, 31, b"192.0.2.3"); // Calling-Station-Id
    let len = u16::try_from(20 + attrs.len()).expect("short packet");
    let mut p = vec![4, 1]; // Accounting-Request, identifier 1
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0; 16]);
    p.extend_from_slice(&attrs);
    p
}

/// A WireGuard handshake (whitepaper §5.4.2–5.4.3) and ten transport messages each way.
fn wireguard(client: SocketAddr, start: u64) -> Conversation {
    let mut rng = Rng::new(start);
    let mut filler = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.u64() as u8).collect() };
    let server: SocketAddr = TUNNEL_END.parse().expect("literal address");
    let mut c = Conversation::new(UDP, client, server, start);
    let mut init = vec![1, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
    init.extend(filler(140));
    let mut resp = vec![2, 0, 0, 0, 0x55, 0x66, 0x77, 0x88, 0x11, 0x22, 0x33, 0x44];
    resp.extend(filler(80));
    c.udp(Side::Client, &init, 0)
        .udp(Side::Server, &resp, 25 * MS);
    for i in 0..10u64 {
        let mut data = vec![4, 0, 0, 0, 0x55, 0x66, 0x77, 0x88];
        data.extend_from_slice(&i.to_le_bytes());
        data.extend(filler(96));
        c.udp(Side::Client, &data, 200 * MS);
        let mut back = vec![4, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
        back.extend_from_slice(&i.to_le_bytes());
        back.extend(filler(160));
        c.udp(Side::Server, &back, 25 * MS);
    }
    c
}

/// A VPN address whose partition no number of workers from 2 to 4 gives to the worker of
/// the RADIUS exchange's partition.
pub fn host_apart_from_radius() -> Ipv4Addr {
    let config = Config::load(Some(Path::new(CONFIG))).expect("the scenarios' config");
    let nas: SocketAddr = NAS.parse().unwrap();
    let server: SocketAddr = RADIUS_SERVER.parse().unwrap();
    let radius = partition_of(&config.network, nas.ip(), server.ip());
    let outside: IpAddr = TUNNEL_END.parse::<SocketAddr>().unwrap().ip();
    (1..=254u8)
        .map(|h| Ipv4Addr::new(10, 8, 3, h))
        .find(|h| {
            let p = partition_of(&config.network, IpAddr::V4(*h), outside);
            WORKERS[1..].iter().all(|n| p % n != radius % n)
        })
        .expect("some host lands apart")
}

/// RADIUS accounting starts `USER` on `host`, then `host` opens a WireGuard tunnel to RU:
/// one Ethernet pcap.
pub fn radius_then_tunnel(host: Ipv4Addr) -> Vec<u8> {
    let nas: SocketAddr = NAS.parse().unwrap();
    let mut radius = Conversation::new(UDP, nas, RADIUS_SERVER.parse().unwrap(), EPOCH);
    radius.udp(Side::Client, &accounting_start(USER, host), 0);
    let tunnel = wireguard(SocketAddr::new(IpAddr::V4(host), 41000), EPOCH + 2 * SEC);
    let mut all: Vec<_> = radius.packets.iter().chain(&tunnel.packets).collect();
    all.sort_by_key(|p| p.ts);
    let mut cap = Capture::new(linktype::ETHERNET);
    for p in all {
        cap.push(p.ts, Link::Ethernet.frame(p));
    }
    cap.pcap(ByteOrder::Little, TsUnit::Micro)
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
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.events)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
