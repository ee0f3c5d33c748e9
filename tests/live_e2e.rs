//! End to end: `farmwatch live` on one end of a veth pair sees what tcpreplay puts on the
//! other end (inside a network namespace of its own), serves metrics that promtool accepts,
//! and on SIGTERM writes the same flow records and events as `farmwatch replay` of the same
//! captures. The traces' addresses are only bytes on the veth: nothing is routed.
//! Live with one worker and with four writes, byte for byte, what a replay of the packets
//! it captured writes.

mod live_support;
mod radius_capture;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use live_support::{Recorder, Sensor, can_capture, http_get, must, sample, wait_for};
use support::{has_tool, read_jsonl, require, scratch};

/// Ethernet traces: an SSH session set and an RDP session upgraded to TLS.
/// The detector scenarios' config: inside 10.8.0.0/16, the test geo database.
const CONFIG: &str = "fixtures/detect.toml";

fn traces() -> [PathBuf; 3] {
    [
        support::capture("zeek/Traces/ssh/ssh.pcap"),
        support::capture("zeek/Traces/rdp/rdp-to-ssl.pcap"),
        // Tunnels from inside hosts (WireGuard to RU, HTTP CONNECT, an allow-listed peer):
        // findings that rest on the bytes, not on durations that pacing would change.
        PathBuf::from("fixtures/detect-tunnels.pcap"),
    ]
}

/// A namespace holding one end of a veth pair; the other end stays here for the sensor.
/// Both are removed on drop, also when the test fails.
struct Veth {
    netns: String,
    /// The sensor's end, in this namespace.
    host: String,
    /// The sending end, in `netns`.
    peer: String,
}

impl Veth {
    fn new() -> Veth {
        let id = std::process::id();
        let veth = Veth {
            netns: format!("fwlive{id}"),
            host: format!("fwh{id}"),
            peer: format!("fwp{id}"),
        };
        must(Command::new("ip").args(["netns", "add", &veth.netns]));
        must(Command::new("ip").args([
            "link", "add", &veth.host, "type", "veth", "peer", "name", &veth.peer,
        ]));
        must(Command::new("ip").args(["link", "set", &veth.peer, "netns", &veth.netns]));
        // No IPv6 autoconfiguration chatter (router solicitations, MLD): the sensor must see
        // the replayed frames and nothing else. Jumbo MTU: some traces hold offloaded frames.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", veth.host),
            "1",
        );
        let _ = Command::new("ip")
            .args(["netns", "exec", &veth.netns, "sh", "-c"])
            .arg(format!(
                "echo 1 > /proc/sys/net/ipv6/conf/{}/disable_ipv6",
                veth.peer
            ))
            .status();
        must(Command::new("ip").args(["link", "set", &veth.host, "mtu", "9000", "up"]));
        must(Command::new("ip").args([
            "netns",
            "exec",
            &veth.netns,
            "ip",
            "link",
            "set",
            &veth.peer,
            "mtu",
            "9000",
            "up",
        ]));
        veth
    }

    /// Sends the traces out of the peer end, paced so a loaded CI machine keeps up.
    fn replay(&self, traces: &[PathBuf]) -> String {
        must(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.netns,
                    "tcpreplay",
                    "--pps=2000",
                    "-i",
                    &self.peer,
                ])
                .args(traces),
        )
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer, and with it the host end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .stderr(Stdio::null())
            .status();
    }
}

/// The fields of a final flow record that do not depend on when packets were seen, as one
/// string: proto, endpoints, packet and byte counts per side, state and app label.
fn flow_set(records: &[serde_json::Value]) -> BTreeSet<String> {
    const FIELDS: [&str; 11] = [
        "proto",
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        "pkts_orig",
        "pkts_resp",
        "bytes_orig",
        "bytes_resp",
        "conn_state",
        "app",
    ];
    records
        .iter()
        .filter(|r| r["interim"] == false)
        .map(|r| {
            let values: Vec<String> = FIELDS.iter().map(|f| r[*f].to_string()).collect();
            values.join(" ")
        })
        .collect()
}

/// (kind, reason, account) of every event.
fn event_set(records: &[serde_json::Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| format!("{} {} {}", r["kind"], r["reason"], r["account"]))
        .collect()
}

#[test]
fn live_capture_matches_replay() {
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !can_capture()
        || !require(ip, "ip (iproute2)")
        || !require(has_tool("tcpreplay"), "tcpreplay")
        || !require(has_tool("promtool"), "promtool")
    {
        return;
    }
    let dir = scratch("live-e2e");

    // What replay says about the traces.
    let replay_metrics = dir.join("replay.prom");
    let traces = traces();
    let trace_refs: Vec<&Path> = traces.iter().map(PathBuf::as_path).collect();
    let (replay_events, replay_flows) = support::replay(
        &trace_refs,
        &[
            "--config",
            CONFIG,
            "--metrics-out",
            replay_metrics.to_str().unwrap(),
        ],
        "live-e2e-replay",
    );
    assert!(
        replay_events.iter().any(|e| e["reason"] == "tunnel"),
        "the traces should give findings to compare: {replay_events:?}"
    );
    let replay_prom = std::fs::read_to_string(&replay_metrics).unwrap();
    let packets = sample(&replay_prom, "farmwatch_packets_total").expect("replay packets");

    let veth = Veth::new();
    let (events, flows) = (dir.join("events.jsonl"), dir.join("flows.jsonl"));
    let mut sensor = Sensor::start(
        &dir,
        &[
            "--interface",
            &veth.host,
            "--workers",
            "2",
            "--config",
            CONFIG,
            "--events",
            events.to_str().unwrap(),
            "--flows",
            flows.to_str().unwrap(),
        ],
    );
    sensor.wait_healthy();
    veth.replay(&traces);

    // Counters reach the endpoint within a second or two; wait for all packets, bounded.
    let mut scrape = String::new();
    let port = sensor.port;
    wait_for(Duration::from_secs(60), || {
        scrape = http_get(port, "/metrics").map(|r| r.2).unwrap_or_default();
        sample(&scrape, "farmwatch_packets_total") >= Some(packets)
    });
    let (status, content_type, body) = http_get(port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4");
    assert_eq!(
        sample(&body, "farmwatch_packets_total"),
        Some(packets),
        "live saw a different number of packets than the traces hold:\n{body}\n{}",
        sensor.stderr()
    );
    assert_eq!(
        sample(&body, "farmwatch_bytes_total"),
        sample(&replay_prom, "farmwatch_bytes_total")
    );
    let prom = dir.join("live.prom");
    std::fs::write(&prom, &body).unwrap();
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&prom).unwrap())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let (status, _, health) = http_get(port, "/healthz").unwrap();
    assert_eq!((status, health.as_str()), (200, "ok\n"));

    sensor.signal("TERM");
    let status = sensor.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", sensor.stderr());

    let (live, replayed) = (flow_set(&read_jsonl(&flows)), flow_set(&replay_flows));
    assert!(!replayed.is_empty());
    assert_eq!(
        live.difference(&replayed).collect::<Vec<_>>(),
        replayed.difference(&live).collect::<Vec<_>>(),
        "flow records differ (left: live only, right: replay only)"
    );
    assert_eq!(live, replayed);
    assert_eq!(event_set(&read_jsonl(&events)), event_set(&replay_events));
}

/// Replays `pcap` with one worker: (events, flow records) as written, and the packets read.
fn replay_bytes(pcap: &Path, dir: &Path) -> (Vec<u8>, Vec<u8>, Option<f64>) {
    let (events, flows, metrics) = (
        dir.join("events.jsonl"),
        dir.join("flows.jsonl"),
        dir.join("replay.prom"),
    );
    let mut replay = Command::new(support::bin());
    replay
        .arg("replay")
        .arg(pcap)
        .args(["--config", radius_capture::CONFIG, "--workers", "1"]);
    let out = support::outputs(&mut replay, &events, &flows, &metrics)
        .output()
        .expect("run farmwatch replay");
    assert!(
        out.status.success(),
        "replay of the captured packets: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prom = std::fs::read_to_string(&metrics).unwrap_or_default();
    (
        std::fs::read(&events).unwrap_or_default(),
        std::fs::read(&flows).unwrap_or_default(),
        sample(&prom, "farmwatch_packets_total"),
    )
}

/// Two sensors on one link, with one worker and with four, and tcpdump beside them: each
/// writes the events and flow records a replay of tcpdump's recording writes, byte for byte
/// (the three read the kernel's receive timestamp of the same frames). The traffic holds
/// RADIUS accounting that names a host whose tunnel another worker sees, and traces whose
/// flows are still open at SIGTERM, so the shutdown is merged as a replay's end is.
#[test]
fn live_with_any_number_of_workers_writes_what_a_replay_of_its_packets_writes() {
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !can_capture()
        || !require(ip, "ip (iproute2)")
        || !require(has_tool("tcpreplay"), "tcpreplay")
        || !require(has_tool("tcpdump"), "tcpdump")
    {
        return;
    }
    let dir = scratch("live-workers");
    let host = radius_capture::host_apart_from_radius();
    let radius = dir.join("radius-tunnel.pcap");
    std::fs::write(&radius, radius_capture::radius_then_tunnel(host)).unwrap();
    let traces = [
        radius,
        PathBuf::from("fixtures/detect-tunnels.pcap"),
        support::capture("zeek/Traces/ssh/ssh.pcap"),
    ];

    let veth = live_support::Veth::with_prefix("fwap", 'w');
    let recorded = dir.join("captured.pcap");
    let recorder = Recorder::start(&veth.host, &recorded);
    let mut sensors: Vec<(usize, Sensor, PathBuf, PathBuf)> = [1, 4]
        .into_iter()
        .map(|n| {
            let sub = dir.join(format!("workers-{n}"));
            std::fs::create_dir_all(&sub).unwrap();
            let (events, flows) = (sub.join("events.jsonl"), sub.join("flows.jsonl"));
            let sensor = Sensor::start(
                &sub,
                &[
                    "--interface",
                    &veth.host,
                    "--workers",
                    &n.to_string(),
                    "--config",
                    radius_capture::CONFIG,
                    "--events",
                    events.to_str().unwrap(),
                    "--flows",
                    flows.to_str().unwrap(),
                ],
            );
            (n, sensor, events, flows)
        })
        .collect();
    for (_, sensor, _, _) in &mut sensors {
        sensor.wait_healthy();
    }
    let sent: u64 = traces
        .iter()
        .map(|t| veth.tcpreplay(&["--pps=2000"], t.to_str().unwrap()).packets)
        .sum();
    for (n, sensor, _, _) in &mut sensors {
        let port = sensor.port;
        let all = wait_for(Duration::from_secs(60), || {
            let scrape = http_get(port, "/metrics").map(|r| r.2).unwrap_or_default();
            sample(&scrape, "farmwatch_packets_total") >= Some(sent as f64)
        });
        assert!(
            all,
            "{n} workers: not every packet arrived\n{}",
            sensor.stderr()
        );
        sensor.signal("TERM");
        let status = sensor.wait_exit();
        assert_eq!(status.code(), Some(0), "{}", sensor.stderr());
    }
    let report = recorder.stop();

    let (events, flows, packets) = replay_bytes(&recorded, &dir);
    assert_eq!(
        packets,
        Some(sent as f64),
        "tcpdump recorded other packets than were sent: {report}"
    );
    let named = read_jsonl(&dir.join("events.jsonl")).into_iter().any(|e| {
        e["reason"] == "tunnel"
            && e["host"] == host.to_string()
            && e["account"] == radius_capture::USER
    });
    assert!(named, "RADIUS names {host}'s tunnel finding");
    for (n, _, live_events, live_flows) in &sensors {
        assert!(
            std::fs::read(live_events).unwrap_or_default() == events,
            "{n} workers: live events differ from a replay of the captured packets ({} and {})",
            live_events.display(),
            dir.join("events.jsonl").display()
        );
        assert!(
            std::fs::read(live_flows).unwrap_or_default() == flows,
            "{n} workers: live flow records differ from a replay of the captured packets ({} and {})",
            live_flows.display(),
            dir.join("flows.jsonl").display()
        );
    }
}
