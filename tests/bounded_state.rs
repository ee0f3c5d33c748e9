//! No silent loss: state learned from the wire stays bounded and its evictions are exported,
//! a large inventory loads, wire strings reach the terminal escaped, and flow records come
//! out in the same order in every run (issue 18).

mod support;

use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use farmwatch::accounts::Inventory;
use farmwatch::identity::{Identity, MAX_ADDRESSES, SessionStatus};
use farmwatch::metrics::BOUNDED_STRUCTURES;
use farmwatch::timestamp::Timestamp;
use fixturegen::capture::{ByteOrder, EPOCH, MS, PcapWriter, SEC, TsUnit, linktype};

/// One RADIUS attribute (RFC 2865 §5): type, length, value.
fn attribute(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    out.push(u8::try_from(value.len() + 2).expect("short attribute"));
    out.extend_from_slice(value);
}

/// An Accounting-Request (RFC 2866 §4.1) with Acct-Status-Type Start (§5.1), User-Name,
/// Framed-IP-Address and Calling-Station-Id. The authenticator is left zero: the sensor
/// does not know the shared secret and does not check it.
fn accounting_start(id: u8, user: &[u8], framed: Ipv4Addr, calling: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attribute(&mut attrs, 40, &1u32.to_be_bytes()); // Acct-Status-Type = Start
    attribute(&mut attrs, 1, user); // User-Name
    attribute(&mut attrs, 8, &framed.octets()); // Framed-IP-Address
    attribute(&mut attrs, 31, calling.as_bytes()); // Calling-Station-Id
    let len = u16::try_from(20 + attrs.len()).expect("short packet");
    let mut p = vec![4, id];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0; 16]);
    p.extend_from_slice(&attrs);
    p
}

/// Writes `packets` accounting requests, `gap` apart, all on one UDP flow from the NAS to
/// the accounting port: `packet(i)` gives each one's user, Framed-IP and Calling-Station-Id.
fn write_radius(
    path: &Path,
    packets: u32,
    gap: u64,
    packet: impl Fn(u32) -> (Vec<u8>, Ipv4Addr, String),
) {
    let nas = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 20, 0, 2)), 40_000);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 20, 0, 1)), 1813);
    let file = BufWriter::new(File::create(path).expect("create pcap"));
    let mut w = PcapWriter::new(file, linktype::RAW, 65_535, ByteOrder::Little, TsUnit::Nano)
        .expect("pcap header");
    for i in 0..packets {
        let (user, framed, calling) = packet(i);
        let payload = accounting_start(i as u8, &user, framed, &calling);
        let datagram = fixturegen::packet::udp(nas, server, &payload);
        w.record(EPOCH + u64::from(i) * gap, &datagram)
            .expect("pcap record");
    }
    w.into_inner().into_inner().expect("flush pcap");
}

/// The value of a sample line of the Prometheus text format.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Accounts RADIUS accounting names in the memory test: more than identity keeps
/// (`identity::MAX_ADDRESSES`, 262,144), so the bound is reached and counted.
const FLOOD_PACKETS: u32 = 400_000;
/// What the flood may cost the replay, in kB of maximum resident set (GNU time's `%M`).
/// Without the bounds the same replay grew past 300 MB at 400,000 packets and kept growing
/// with the input (788 MB at a million); with them it levels off below this.
const FLOOD_MAX_RSS_KB: u64 = 256 * 1024;

/// Regression for unbounded identity: a million Accounting-Start packets with distinct
/// users and addresses on one UDP flow (`max_flows` never applies) grew memory without
/// bound. Now identity keeps at most `MAX_ADDRESSES` addresses, the detectors their own
/// limits, and what they drop is in `farmwatch_state_evicted_total`.
#[test]
fn a_radius_flood_stays_bounded_and_counts_its_evictions() {
    if !support::require(Path::new("/usr/bin/time").exists(), "GNU time") {
        return;
    }
    let dir = support::scratch("bounded-radius-flood");
    let pcap = dir.join("flood.pcap");
    write_radius(&pcap, FLOOD_PACKETS, MS, |i| {
        let framed = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 8, 0, 0)) + i);
        let public = Ipv4Addr::from(u32::from(Ipv4Addr::new(11, 0, 0, 0)) + i);
        (format!("user{i}").into_bytes(), framed, public.to_string())
    });
    let metrics = dir.join("metrics.txt");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", support::bin(), "replay"])
        .arg(&pcap)
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .arg("--metrics-out")
        .arg(&metrics)
        .output()
        .expect("run farmwatch under GNU time");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    let rss_kb: u64 = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no %M figure in {stderr}"));
    eprintln!("max RSS {rss_kb} kB for {FLOOD_PACKETS} accounting starts");
    assert!(
        rss_kb < FLOOD_MAX_RSS_KB,
        "max RSS {rss_kb} kB, bound {FLOOD_MAX_RSS_KB} kB"
    );
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let evicted = sample(
        &text,
        "farmwatch_state_evicted_total{structure=\"identity_addresses\"}",
    );
    assert!(
        evicted.is_some_and(|n| n > 0.0),
        "identity evictions: {evicted:?}"
    );
    assert_eq!(sample(&text, "farmwatch_packets_total"), Some(400_000.0));
}

/// At [`MAX_ADDRESSES`] identity forgets the eighth of its addresses seen longest ago, in
/// one step, and counts them; an address named again since is kept.
#[test]
fn identity_forgets_the_addresses_seen_longest_ago() {
    let mut id = Identity::new(std::sync::Arc::new(Inventory::default()));
    let addr = |i: usize| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
    let start = |id: &mut Identity, i: usize, secs: u64| {
        let ts = Timestamp::from_secs(secs);
        id.observe_radius(ts, &format!("u{i}"), addr(i), None, SessionStatus::Start);
    };
    for i in 0..MAX_ADDRESSES {
        start(&mut id, i, 1_000 + i as u64);
    }
    // The first address is named again (an interim update), so it is recent.
    let ts = Timestamp::from_secs(1_000_000);
    id.observe_radius(ts, "u0", addr(0), None, SessionStatus::Interim);
    assert_eq!(id.evictions()[0], ("identity_addresses", 0));
    start(&mut id, MAX_ADDRESSES, 2_000_000);
    assert_eq!(
        id.evictions()[0],
        ("identity_addresses", (MAX_ADDRESSES / 8) as u64)
    );
    let now = Timestamp::from_secs(3_000_000);
    let who = |i: usize| id.account_at(addr(i), now).map(|a| a.id.to_string());
    assert_eq!(who(0).as_deref(), Some("u0"));
    assert_eq!(who(1), None);
    assert_eq!(who(MAX_ADDRESSES / 8), None);
    assert_eq!(
        who(MAX_ADDRESSES / 8 + 1).as_deref(),
        Some(format!("u{}", MAX_ADDRESSES / 8 + 1).as_str())
    );
    assert_eq!(
        who(MAX_ADDRESSES).as_deref(),
        Some(format!("u{MAX_ADDRESSES}").as_str())
    );
}

/// Every structure the pipeline reports is one the metrics announce from the start, and
/// every announced one has its series.
#[test]
fn every_bounded_structure_has_a_series() {
    let dir = support::scratch("bounded-structures");
    let pcap = dir.join("one.pcap");
    write_radius(&pcap, 2, MS, |i| {
        (
            b"jdoe".to_vec(),
            Ipv4Addr::new(10, 8, 0, 12),
            format!("192.0.2.{i}"),
        )
    });
    let metrics = dir.join("metrics.txt");
    let out = support::run(&[
        "replay",
        pcap.to_str().unwrap_or_default(),
        "--metrics-out",
        metrics.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let series: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("farmwatch_state_evicted_total{structure=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    let mut announced = BOUNDED_STRUCTURES.to_vec();
    announced.sort_unstable();
    assert_eq!(series, announced);
}

/// Regression: a RADIUS User-Name with ESC and BEL was printed raw in the replay's
/// top-findings table on stderr. It is escaped there; the HTML report and the JSON events
/// keep it escaped their own way.
#[test]
fn control_bytes_from_the_wire_reach_the_terminal_escaped() {
    let dir = support::scratch("bounded-control-bytes");
    let pcap = dir.join("radius.pcap");
    // One account seen in Chicago, then in Shenyang two minutes later: impossible travel,
    // a finding that names the account.
    write_radius(&pcap, 2, 120 * SEC, |i| {
        let calling = ["192.0.2.3", "192.0.2.66"][i as usize];
        let user = b"evil\x1b]0;owned\x07\x1b[2J".to_vec();
        (user, Ipv4Addr::new(10, 8, 0, 12), calling.to_string())
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("fixtures/geo/farmwatch.toml");
    let report = dir.join("report.html");
    let events = dir.join("events.jsonl");
    let out = Command::new(support::bin())
        .current_dir(root)
        .arg("replay")
        .arg(&pcap)
        .arg("--config")
        .arg(&config)
        .arg("--events")
        .arg(&events)
        .arg("--report")
        .arg(&report)
        .output()
        .expect("run farmwatch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    assert!(
        stderr.contains("evil\\u{1b}]0;owned\\u{7}\\u{1b}[2J"),
        "the account is not in the table, escaped: {stderr}"
    );
    let raw_control = |bytes: &[u8]| bytes.iter().any(|b| matches!(b, 0x07 | 0x1b));
    assert!(!raw_control(&out.stderr), "raw control bytes on stderr");
    let html = std::fs::read(&report).expect("report");
    assert!(!raw_control(&html), "raw control bytes in the report");
    let lines = std::fs::read(&events).expect("events");
    assert!(!raw_control(&lines), "raw control bytes in the events");
    let names: Vec<String> = support::read_jsonl(&events)
        .iter()
        .filter_map(|e| e["account"].as_str().map(str::to_string))
        .collect();
    assert!(
        names
            .iter()
            .any(|a| a == "evil\u{1b}]0;owned\u{7}\u{1b}[2J")
    );
}

/// Regression: a wheel entry picked its flow by slot time alone, and the table compares only
/// a 7-bit tag of the hash first, so another flow due in the same second could be picked
/// (and one left without a timeout): the order of flow records depended on the per-process
/// hash seed (4 of 12 runs differed). Here 8,000 UDP flows in three seconds churn through a
/// table of 2,000 (each new flow evicts the one next due), then time out together.
#[test]
fn flow_records_are_byte_identical_across_runs() {
    let dir = support::scratch("bounded-order");
    let pcap = dir.join("churn.pcap");
    let file = BufWriter::new(File::create(&pcap).expect("create pcap"));
    let mut w = PcapWriter::new(file, linktype::RAW, 65_535, ByteOrder::Little, TsUnit::Nano)
        .expect("pcap header");
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 5000);
    for i in 0..8_000u32 {
        let host = Ipv4Addr::new(10, 8, (i / 4000) as u8, 1);
        let client = SocketAddr::new(IpAddr::V4(host), 20_000 + (i % 4000) as u16);
        let datagram = fixturegen::packet::udp(client, server, b"ping");
        w.record(EPOCH + u64::from(i) * 375_000, &datagram)
            .expect("pcap record");
    }
    // A last packet two minutes on: the flows still open time out together.
    let late = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 8, 9, 9)), 9999);
    let datagram = fixturegen::packet::udp(late, server, b"late");
    w.record(EPOCH + 120 * SEC, &datagram).expect("pcap record");
    w.into_inner().into_inner().expect("flush pcap");
    let config = dir.join("farmwatch.toml");
    std::fs::write(&config, "[flows]\nmax_flows = 2000\n").expect("config");
    let flows = |run: usize| -> Vec<u8> {
        let path = dir.join(format!("flows-{run}.jsonl"));
        let out = support::run(&[
            "replay",
            pcap.to_str().unwrap_or_default(),
            "--config",
            config.to_str().unwrap_or_default(),
            "--flows",
            path.to_str().unwrap_or_default(),
        ]);
        assert!(out.status.success());
        std::fs::read(path).expect("flow records")
    };
    let first = flows(0);
    assert_eq!(first.iter().filter(|b| **b == b'\n').count(), 8_001);
    for run in 1..8 {
        assert!(flows(run) == first, "run {run} wrote other flow records");
    }
}

/// Regression: loading counted lines from the top of the file for every field, so 10,000
/// accounts took seconds and 20,000 four times as long. A generated 20,000-account
/// inventory loads with every account, its line and its host.
#[test]
fn a_large_inventory_loads_whole() {
    const N: usize = 20_000;
    let mut text = String::new();
    for i in 0..N {
        text.push_str(&format!(
            "[[account]]\nid = \"user{i}\"\nkind = \"contractor\"\ndeclared_country = \"US\"\n\
             declared_timezone = \"America/Chicago\"\nphone = \"+1 312 555 0142\"\n\
             hosts = [\"10.{}.{}.{}\"]\n\n",
            8 + i / 65_536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let inv = Inventory::parse(&text, "accounts.toml").expect("a valid inventory");
    assert_eq!(inv.accounts.len(), N);
    let last = &inv.accounts[N - 1];
    assert_eq!(last.id, format!("user{}", N - 1));
    // Eight lines per account: the last header is on line 8·(N−1)+1.
    assert_eq!(last.line, 8 * (N - 1) + 1);
    let host: IpAddr = "10.8.78.31".parse().expect("address");
    assert_eq!(
        inv.static_owner(host).map(|a| a.id.as_str()),
        Some("user19999")
    );
    // A duplicate at the end names the first one's line.
    text.push_str("[[account]]\nid = \"user7\"\nkind = \"employee\"\n");
    let problems = Inventory::parse(&text, "accounts.toml").expect_err("a duplicate id");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, Some(8 * N + 2));
    assert!(
        problems[0].message.contains("first at line 57"),
        "{}",
        problems[0].message
    );
}
