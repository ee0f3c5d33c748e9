//! `replay --report`: the HTML case file, loaded in headless Chromium (Debian's `chromium`;
//! a missing browser skips these tests, and fails them when `CI=true`). Each test checks the
//! page finished its script without an exception (`data-rendered="ok"`, no console errors)
//! and that the expected accounts, findings and chart elements are in the rendered DOM.
//! Screenshots land in the test's scratch directory under `target/`, never in git.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use farmwatch::account_stage::{Context, Sinks};
use farmwatch::accounts::AccountRef;
use farmwatch::config::Config;
use farmwatch::engine::Engine;
use farmwatch::event::{
    Event, FlowRef, Kind, OffHoursEvidence, Position, Role, RttDistanceEvidence, SessionEvidence,
    Severity, SteppingStoneEvidence, Via,
};
use farmwatch::identity::{ObservationSource, PublicIpObservation};
use farmwatch::metrics::Stats;
use farmwatch::report::{self, Collector, ReportInput};
use farmwatch::source::Replay;
use farmwatch::timestamp::Timestamp;
use fixturegen::capture::{ByteOrder, Capture, EPOCH, MS, SEC, TsUnit};
use fixturegen::conversation::{Conversation, TcpSession, UDP};
use fixturegen::packet::{Link, Side};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium_available() -> bool {
    support::require(Path::new(CHROMIUM).exists(), "chromium (/usr/bin/chromium)")
}

/// Loads `html` in headless Chromium: the DOM after the page's script ran, and the browser's
/// log (console messages included). Also writes a screenshot next to the page.
fn load(html: &Path) -> (String, String) {
    let dir = html.parent().expect("dir");
    let url = format!("file://{}", html.canonicalize().expect("path").display());
    let run = |extra: &[String], profile: &str| {
        let mut cmd = Command::new("timeout");
        cmd.arg("180").arg(CHROMIUM).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ]);
        cmd.arg(format!("--user-data-dir={}", dir.join(profile).display()));
        cmd.args(extra).arg(&url);
        let out = cmd.output().expect("run chromium");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (dom, log) = run(&["--dump-dom".to_string()], "profile-dom");
    let shot = dir.join("report.png");
    let (_, shot_log) = run(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,2000".to_string(),
        ],
        "profile-shot",
    );
    assert!(shot.exists(), "no screenshot: {shot_log}");
    (dom, log + &shot_log)
}

/// The page ran to its end: the marker is set, the error box is hidden, and the browser
/// logged no console error or uncaught exception.
fn assert_rendered(dom: &str, log: &str) {
    assert!(
        dom.contains("data-rendered=\"ok\""),
        "page script did not finish: {}",
        dom.get(..2000).unwrap_or(dom)
    );
    assert!(dom.contains("id=\"fw-error\" class=\"fw-error\" hidden"));
    for line in log.lines() {
        let console = line.contains("CONSOLE") || line.contains("console");
        assert!(
            !(line.contains("Uncaught") || console && line.contains("rror")),
            "console error: {line}"
        );
    }
}

/// The page at `html` as headless Chromium left it, checked to have rendered; `None` (a
/// recorded skip) without Chromium.
fn rendered(html: &Path) -> Option<String> {
    if !chromium_available() {
        return None;
    }
    let (dom, log) = load(html);
    assert_rendered(&dom, &log);
    Some(dom)
}

/// Writes `html` as `report.html` in a scratch directory named `tag`.
fn page(html: &str, tag: &str) -> PathBuf {
    let path = support::scratch(tag).join("report.html");
    std::fs::write(&path, html).expect("write");
    path
}

fn replay_report(files: &[&Path], extra: &[&str], tag: &str) -> (PathBuf, String) {
    let dir = support::scratch(tag);
    let html = dir.join("report.html");
    let mut args: Vec<String> = vec!["replay".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend([
        "--events".into(),
        dir.join("events.jsonl").display().to_string(),
    ]);
    args.extend(["--report".into(), html.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(support::bin())
        .args(&args)
        .output()
        .expect("run farmwatch");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    (html, stderr)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A page that loads nothing: no external script, style, font or image reference.
fn assert_self_contained(html: &str) {
    for needle in [
        "<link",
        "<script src",
        "@import",
        "url(",
        "<iframe",
        "<img",
        "<object",
    ] {
        assert!(!html.contains(needle), "report references {needle}");
    }
}

#[test]
fn real_rdp_capture_report_renders_with_accounts_and_clusters() {
    if !chromium_available() {
        return;
    }
    let dir = support::scratch("report-rdp-inputs");
    let accounts = write(
        &dir,
        "accounts.toml",
        r#"
[[account]]
id = "jdoe"
kind = "contractor"
name = "J. Doe"
declared_country = "US"
declared_timezone = "America/Chicago"
phone = "+44 20 7946 0958"
hosts = ["192.168.1.200"]

[[account]]
id = "asmith"
kind = "contractor"
declared_country = "US"
declared_timezone = "America/New_York"
phone = "+1 312 555 0142"
hosts = ["192.168.1.150"]
"#,
    );
    let sessions = write(
        &dir,
        "sessions.jsonl",
        concat!(
            r#"{"ts":"2011-02-12T22:50:00Z","account":"jdoe","assigned_ip":"192.168.1.200","public_ip":"81.2.69.142","event":"start"}"#,
            "\n",
            r#"{"ts":"2011-02-12T22:50:30Z","account":"asmith","assigned_ip":"192.168.1.150","public_ip":"81.2.69.142","event":"start"}"#,
            "\n"
        ),
    );
    let capture = support::capture("zeek/Traces/rdp/rdp-to-ssl.pcap");
    let (html, stderr) = replay_report(
        &[&capture],
        &[
            "--accounts",
            accounts.to_str().expect("utf-8"),
            "--sessions",
            sessions.to_str().expect("utf-8"),
        ],
        "report-rdp",
    );
    // The same input gives the same file, byte for byte.
    let (again, _) = replay_report(
        &[&capture],
        &[
            "--accounts",
            accounts.to_str().expect("utf-8"),
            "--sessions",
            sessions.to_str().expect("utf-8"),
        ],
        "report-rdp-again",
    );
    assert!(std::fs::read(&html).expect("report") == std::fs::read(&again).expect("report"));
    // The terminal summary's top-findings table names the account and the finding.
    let table = stderr
        .split("top findings:\n")
        .nth(1)
        .expect("top findings table");
    assert!(table.contains("jdoe") && table.contains("inventory/phone_format"));

    let text = std::fs::read_to_string(&html).expect("report");
    assert_self_contained(&text);
    let digest = report::InputFile::hash(&capture).expect("hash").sha256;
    assert!(text.contains(&digest), "header lacks the capture's SHA-256");

    let (dom, log) = load(&html);
    assert_rendered(&dom, &log);
    for expected in [
        "jdoe",
        "J. Doe",
        "asmith",
        "inventory/phone_format",
        "America/Chicago",
        "81.2.69.142",
        "class=\"timeline\"",
        "class=\"heatmap\"",
        "class=\"addresses\"",
        "class=\"rd\"",
        "id=\"acct-0\"",
        "id=\"f-0\"",
        "href=\"#f-",
        "rdp-to-ssl.pcap",
        &digest,
    ] {
        assert!(dom.contains(expected), "rendered DOM lacks {expected}");
    }
    // The two accounts share one public address: a farm-cluster row names both.
    let clusters = dom
        .split("id=\"clusters\"")
        .nth(1)
        .expect("clusters section");
    let clusters = clusters.split("</section>").next().unwrap_or_default();
    assert!(clusters.contains("jdoe: 2011-02-12") && clusters.contains("asmith: 2011-02-12"));
    // Both RDP flows are in the remote-desktop table with the side that sent the screen.
    let rd = dom.split("id=\"rd\"").nth(1).expect("rd section");
    let rd = rd.split("</section>").next().unwrap_or_default();
    assert_eq!(rd.matches("<tr><td").count(), 2, "{rd}");
}

#[test]
fn unwritable_report_path_is_a_usage_error_before_the_replay() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tcp-states.pcap");
    let out = support::run(&[
        "replay",
        fixture.to_str().expect("utf-8"),
        "--events",
        "/dev/null",
        "--report",
        "/nonexistent-dir/report.html",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot open report output: /nonexistent-dir/report.html"));
}

// ---- a synthesized capture whose names are hostile markup ----

const SCRIPT_BREAK: &str = "</script><script>alert(1)</script>";
const IMG_ONERROR: &str = "<img src=x onerror=alert(2)>";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// DNS response (RFC 1035 §4.1): one question for `name` (A, IN), one answer pointing at it
/// by compression (§4.1.4) with address `ip`. Labels are raw bytes: DNS allows any.
fn dns_response(name: &str, ip: [u8; 4]) -> Vec<u8> {
    let mut m = vec![0x51, 0x7e, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4]);
    m.extend_from_slice(&ip);
    m
}

fn dns_query(name: &str) -> Vec<u8> {
    let mut m = vec![0x51, 0x7e, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// TLS 1.2 record holding a ClientHello (RFC 8446 §4.1.2) with one cipher suite and a
/// server_name extension (RFC 6066 §3) carrying `sni` as its HostName.
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sn.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sn);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// TPKT (RFC 1006 §6) + X.224 Connection Request with a `Cookie: mstshash=` line and an
/// RDP_NEG_REQ asking for TLS and CredSSP (MS-RDPBCGR 2.2.1.1).
fn rdp_connection_request(cookie: &str) -> Vec<u8> {
    let mut user = format!("Cookie: mstshash={cookie}\r\n").into_bytes();
    user.extend_from_slice(&[1, 0, 8, 0, 3, 0, 0, 0]);
    let li = 6 + user.len();
    let mut tpdu = vec![li as u8, 0xe0, 0, 0, 0, 0, 0];
    tpdu.extend_from_slice(&user);
    let mut out = vec![3, 0];
    out.extend_from_slice(&((tpdu.len() + 4) as u16).to_be_bytes());
    out.extend_from_slice(&tpdu);
    out
}

/// TPKT + X.224 Connection Confirm with an RDP_NEG_RSP selecting TLS (MS-RDPBCGR 2.2.1.2).
fn rdp_connection_confirm() -> Vec<u8> {
    vec![
        3, 0, 0, 19, 14, 0xd0, 0, 0, 0x12, 0x34, 0, 2, 0, 8, 0, 1, 0, 0, 0,
    ]
}

/// An account host (10.8.0.12) resolves a hostile name, opens TLS with a hostile SNI,
/// and runs an RDP session (hostile cookie) whose far side sends the screen; a client at a
/// British public address reaches the VPN concentrator across a 160 ms round trip.
fn hostile_capture() -> Vec<u8> {
    let host = "10.8.0.12";
    let dns_name = format!("{SCRIPT_BREAK}.example");
    let mut convs = Vec::new();

    let mut dns = Conversation::new(
        UDP,
        addr(&format!("{host}:53000")),
        addr("10.0.0.53:53"),
        EPOCH,
    );
    dns.udp(Side::Client, &dns_query(&dns_name), 0);
    dns.udp(
        Side::Server,
        &dns_response(&dns_name, [203, 0, 113, 80]),
        MS,
    );
    convs.push(dns);

    let mut tls = TcpSession::new(
        addr(&format!("{host}:50001")),
        addr("203.0.113.80:443"),
        EPOCH + SEC,
        7,
    );
    tls.handshake(20 * MS)
        .send(Side::Client, &client_hello(IMG_ONERROR), MS)
        .send(Side::Server, &[0x16, 3, 3, 0, 4, 2, 0, 0, 0], 20 * MS)
        .fin(Side::Client, SEC);
    convs.push(tls.conv);

    let mut rdp = TcpSession::new(
        addr(&format!("{host}:50002")),
        addr("203.0.113.90:3389"),
        EPOCH + 2 * SEC,
        11,
    );
    rdp.handshake(30 * MS)
        .send(
            Side::Client,
            &rdp_connection_request(&format!("{SCRIPT_BREAK}{IMG_ONERROR}")),
            MS,
        )
        .send(Side::Server, &rdp_connection_confirm(), 30 * MS);
    for _ in 0..40 {
        rdp.send(Side::Server, &[0x17; 1400], 500 * MS)
            .send(Side::Client, &[0x17; 60], 100 * MS);
    }
    rdp.fin(Side::Client, SEC);
    convs.push(rdp.conv);

    let mut outer = TcpSession::new(
        addr("81.2.69.142:40000"),
        addr("198.51.100.10:443"),
        EPOCH + 3 * SEC,
        13,
    );
    outer
        .handshake(160 * MS)
        .send(Side::Client, &[0x17; 100], MS)
        .fin(Side::Client, SEC);
    convs.push(outer.conv);

    let mut cap = Capture::new(Link::Ethernet.linktype());
    for c in &convs {
        for p in &c.packets {
            cap.push(p.ts, Link::Ethernet.frame(p));
        }
    }
    cap.sort();
    cap.pcap(ByteOrder::Little, TsUnit::Micro)
}

#[test]
fn hostile_names_stay_text() {
    if !chromium_available() {
        return;
    }
    let dir = support::scratch("report-hostile-inputs");
    let capture = dir.join("hostile.pcap");
    std::fs::write(&capture, hostile_capture()).expect("write capture");
    let accounts = write(
        &dir,
        "accounts.toml",
        &format!(
            r#"
[[account]]
id = "jdoe"
kind = "contractor"
name = "{IMG_ONERROR}"
declared_country = "US"
declared_timezone = "America/Chicago"
phone = "+44 20 7946 0958"
hosts = ["10.8.0.12"]
"#
        ),
    );
    let sessions = write(
        &dir,
        "sessions.jsonl",
        concat!(
            r#"{"ts":"2026-11-02T13:59:00Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"81.2.69.142","event":"start"}"#,
            "\n"
        ),
    );
    let config = write(
        &dir,
        "farmwatch.toml",
        "[sensor]\nname = \"vpn-east-1\"\nlatitude = 39.04\nlongitude = -77.49\ncountry = \"US\"\n\n[network]\ninside = [\"10.0.0.0/8\"]\nconcentrators = [\"198.51.100.10\"]\n",
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tcp-states.pcap");
    let flows = dir.join("flows.jsonl");
    let (html, _) = replay_report(
        &[&capture, &fixture],
        &[
            "--accounts",
            accounts.to_str().expect("utf-8"),
            "--sessions",
            sessions.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
            "--flows",
            flows.to_str().expect("utf-8"),
        ],
        "report-hostile",
    );
    // The names really reached the flow records, so the report had to carry them.
    let records = std::fs::read_to_string(&flows).expect("flows");
    assert!(records.contains(&format!("\"sni\":\"{IMG_ONERROR}\"")));
    assert!(records.contains(&format!("\"cookie\":\"{SCRIPT_BREAK}{IMG_ONERROR}\"")));
    assert!(records.contains("\"dns_name\":\"</script><script>alert(1)</script>.example\""));

    let text = std::fs::read_to_string(&html).expect("report");
    assert_self_contained(&text);
    assert_eq!(
        text.matches("</script>").count(),
        2,
        "only the page's own scripts end"
    );
    assert!(!text.contains("<!--") && !text.contains("<img"));

    let (dom, log) = load(&html);
    assert_rendered(&dom, &log);
    // Shown as text: the serializer escapes it in text nodes...
    assert!(dom.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(dom.contains(
        "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"
    ));
    assert!(dom.contains("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;.example"));
    // ...and no element was injected: two script elements (data and code), no images.
    assert_eq!(dom.matches("<script").count(), 2);
    assert!(!dom.contains("<img"));
    // The RTT chart has the British client's point against the bound.
    assert!(dom.contains("class=\"rttpt\""), "no RTT point");
    assert!(dom.contains("class=\"bound\""));
    // The RDP session: the far side sent the screen, so the account's host controls it.
    assert!(dom.contains("controller"));
}

// ---- many findings, constructed ----

/// 5,000 findings over 200 accounts and four weeks, with observations, each with the typed
/// evidence its detector writes (`off_hours` names a working week in India for accounts
/// that declare Chicago).
#[test]
fn five_thousand_findings_render() {
    let dir = support::scratch("report-many");
    let mut inventory = String::new();
    for i in 0..200 {
        inventory.push_str(&format!(
            "[[account]]\nid = \"c{i:03}\"\nkind = \"contractor\"\ndeclared_country = \"US\"\ndeclared_timezone = \"America/Chicago\"\n\n"
        ));
    }
    let accounts = write(&dir, "accounts.toml", &inventory);
    let config = Config::default();
    let context = Context::load(&config, Some(&accounts), None).expect("context");

    let start = 1_793_628_000u64; // 2026-11-02T14:00:00Z
    let mut c = Collector::new(true);
    let kinds = [
        (Kind::RemoteDesktop, "persistent_stream", Severity::Medium),
        (Kind::RelayChain, "stepping_stone", Severity::High),
        (Kind::GeoAnomaly, "rtt_distance", Severity::Medium),
        (Kind::OffHours, "foreign_working_hours", Severity::Low),
        (Kind::Alert, "laptop_farm_suspected", Severity::Critical),
        (Kind::FarmCluster, "shared_public_ip", Severity::High),
    ];
    for i in 0..5000u64 {
        // Each account gets every kind in turn.
        let (kind, reason, severity) = kinds[((i / 200) % 6) as usize];
        let ts = Timestamp::from_secs(start + i * 480);
        let mut e = Event::new(ts, kind, reason, severity, &i.to_string());
        e.account = Some(format!("c{:03}", i % 200));
        e.host = Some(IpAddr::from([10, 8, (i % 200) as u8, 12]));
        e.flow = Some(FlowRef {
            proto: "tcp",
            src_ip: IpAddr::from([10, 8, (i % 200) as u8, 12]),
            src_port: 40_000 + (i % 20_000) as u16,
            dst_ip: IpAddr::from([203, 0, 113, (i % 250) as u8]),
            dst_port: 3389,
        });
        e.summary = format!("finding {i} <b>not bold</b>");
        e = with_evidence(e, i);
        e.seal();
        c.event(&e);
    }
    for i in 0..400u64 {
        c.observation(&PublicIpObservation {
            ts: Timestamp::from_secs(start + i * 6000),
            account: AccountRef {
                id: Arc::from(format!("c{:03}", i % 200).as_str()),
                kind: None,
            },
            public_ip: IpAddr::from([81, 2, 69, (i % 150) as u8]),
            assigned_ip: Some(IpAddr::from([10, 8, (i % 200) as u8, 12])),
            source: ObservationSource::SessionFeed,
        });
    }
    let html = report::render(
        &c,
        &ReportInput {
            files: Vec::new(),
            config: &config,
            context: &context,
            stats: &Stats::default(),
            first_ts: Some(Timestamp::from_secs(start)),
            last_ts: Some(Timestamp::from_secs(start + 5000 * 480)),
        },
    );
    assert!(
        html.len() < 8 << 20,
        "report of 5,000 findings is {} bytes",
        html.len()
    );
    let path = dir.join("report.html");
    std::fs::write(&path, &html).expect("write");
    let Some(dom) = rendered(&path) else {
        return;
    };
    assert_eq!(dom.matches("<tr id=\"e-").count(), 5000);
    // Charts for the 50 highest-ranked accounts, not for all 200.
    assert_eq!(dom.matches("class=\"timeline\"").count(), 50);
    assert!(dom.contains("UTC+05:30"), "off_hours zone not marked");
    assert!(dom.contains("class=\"foreign\""));
    assert!(dom.contains("&lt;b&gt;not bold&lt;/b&gt;"));
    assert!(dom.contains("Farm-cluster findings"));
}

/// The typed evidence a finding of `e.reason` carries, with figures varied by `i`.
fn with_evidence(e: Event, i: u64) -> Event {
    let flow = e.flow.clone().expect("a flow");
    let ts = e.ts;
    let place = Position {
        lat: 41.88,
        lon: -87.63,
        radius_km: 50.0,
        source: "city".to_string(),
    };
    match e.reason {
        "persistent_stream" => e.with(&SessionEvidence {
            tier: "15m".to_string(),
            role: [Role::Controlled, Role::Controller, Role::Undetermined][(i % 3) as usize],
            via: Via::Direct,
            peer_inside: false,
            session_start: ts,
            duration_s: 900,
            active_s: 120.0,
            flows: 1,
            bytes_from_host: 40_000 + i,
            bytes_to_host: 2_000,
            byte_ratio: 20.0,
            large_pkts_from_host: 30,
            large_pkts_to_host: 0,
            small_pkts_from_host: 1,
            small_pkts_to_host: 30,
            peer: Some(flow.dst_ip),
        }),
        "stepping_stone" => e.with(&SteppingStoneEvidence {
            inbound_flow: FlowRef {
                src_ip: IpAddr::from([198, 51, 100, (i % 250) as u8]),
                dst_ip: flow.src_ip,
                dst_port: 22,
                ..flow.clone()
            },
            inbound_app: None,
            outbound_flow: flow,
            hits: 12,
            consecutive_hits: 4,
            resumes_inbound: 12,
            resumes_outbound: 13,
            ratio: 0.92,
            delta_ms: 500,
        }),
        "rtt_distance" => e.with(&RttDistanceEvidence {
            verdict: "relayed".to_string(),
            public_ip: flow.dst_ip,
            min_rtt_ms: 180.0 + (i % 7) as f64,
            samples: 3,
            distance_km: 1200.0,
            position: place.clone(),
            sensor: place,
            vacuum_bound_ms: 8.0,
            fibre_bound_ms: 12.0,
            ceiling_ms: 60.0,
            country: Some("US".to_string()),
            city: None,
            asn: None,
            as_org: None,
            in_session_samples: None,
            min_rtt_source: None,
        }),
        "foreign_working_hours" => e.with(&OffHoursEvidence {
            declared_timezone: "America/Chicago".to_string(),
            best_utc_offset: "+05:30".to_string(),
            best_fit: 0.9,
            declared_fit: 0.1,
            active_days: 20,
            hours_local: vec![1; 24],
            working_day: "09:00-17:00".to_string(),
        }),
        _ => e,
    }
}

// ---- findings cite flow records ----

/// The flow records of a fixture, as the pipeline hands them to a collector.
fn fixture_records(name: &str) -> (Collector, Config) {
    let config = Config::default();
    let context = Context::load(&config, None, None).expect("context");
    let mut engine = Engine::new(
        &config,
        context,
        Sinks::default(),
        Some(Collector::new(true)),
        1,
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let mut replay = Replay::open(&[path]).expect("open fixture");
    while let Some(pkt) = replay.next_packet() {
        engine.packet(pkt);
    }
    let mut done = engine.finish();
    (done.account.collector.take().expect("collector"), config)
}

/// The JSON a report embeds, read back.
fn embedded(html: &str) -> serde_json::Value {
    let start = html.find("id=\"fw-data\">").expect("data element") + "id=\"fw-data\">".len();
    let end = start + html[start..].find("</script>").expect("end of data");
    serde_json::from_str(&html[start..end]).expect("embedded JSON")
}

/// Findings written after their flow ended (as detectors do at a flow's end) still link to
/// its record: by the event's 5-tuple or by a leg its typed evidence names, also when the
/// record was beyond the sample the report keeps of uncited records.
#[test]
fn findings_link_to_the_flow_records_they_cite() {
    let (fixture, config) = fixture_records("tcp-states.pcap");
    let base = fixture
        .flows
        .iter()
        .find(|r| r.proto == "tcp")
        .expect("a TCP record")
        .clone();
    let mut c = Collector::new(true);
    // 3,000 records no finding has cited yet: the first 2,000 are kept as a sample.
    for port in 1..=3000u16 {
        let mut r = base.clone();
        r.src_port = port;
        c.flow(&r);
    }
    // One 5-tuple reused eight times, an hour apart.
    let hour = std::time::Duration::from_secs(3600);
    for k in 0..8u32 {
        let mut r = base.clone();
        r.src_port = 7000;
        r.ts = base.ts.plus(hour * k);
        r.end = base.end.plus(hour * k);
        c.flow(&r);
    }
    let cite = |port: u16, as_leg: bool| {
        let flow = FlowRef {
            proto: "tcp",
            src_ip: base.src_ip,
            src_port: port,
            dst_ip: base.dst_ip,
            dst_port: base.dst_port,
        };
        let mut e = if as_leg {
            // A stepping stone whose inbound leg is the record; its outbound leg, the
            // event's flow, is not among the records.
            let outbound = FlowRef {
                src_port: 1,
                dst_port: 22,
                ..flow.clone()
            };
            let mut e = Event::new(
                base.end,
                Kind::RelayChain,
                "stepping_stone",
                Severity::High,
                &port.to_string(),
            )
            .with(&SteppingStoneEvidence {
                inbound_flow: flow,
                inbound_app: None,
                outbound_flow: outbound.clone(),
                hits: 12,
                consecutive_hits: 4,
                resumes_inbound: 12,
                resumes_outbound: 13,
                ratio: 0.92,
                delta_ms: 500,
            });
            e.flow = Some(outbound);
            e
        } else {
            let mut e = Event::new(
                base.end,
                Kind::RemoteDesktop,
                "persistent_stream",
                Severity::High,
                &port.to_string(),
            );
            e.flow = Some(flow);
            e
        };
        e.seal();
        e
    };
    c.event(&cite(2500, false));
    c.event(&cite(2600, true));
    c.event(&cite(10, false));
    let mut late = cite(7000, false);
    late.ts = base.end.plus(hour * 7);
    c.event(&late);
    c.settle();
    assert_eq!(c.flows.len(), 2010);
    assert_eq!(c.flows_not_kept(), 998);

    let context = Context::load(&config, None, None).expect("context");
    let html = report::render(
        &c,
        &ReportInput {
            files: Vec::new(),
            config: &config,
            context: &context,
            stats: &Stats::default(),
            first_ts: Some(base.ts),
            last_ts: Some(base.end),
        },
    );
    let data = embedded(&html);
    let port_of = |event: usize| {
        let idx = data["events"][event]["flows"][0]
            .as_u64()
            .expect("a cited record") as usize;
        data["flows"][idx]["src_port"].as_u64()
    };
    assert_eq!(port_of(0), Some(2500));
    assert_eq!(port_of(1), Some(2600));
    assert_eq!(port_of(2), Some(10));
    // The reused tuple links the five uses nearest the finding, the last hours'.
    let starts: Vec<&str> = data["events"][3]["flows"]
        .as_array()
        .expect("links")
        .iter()
        .map(|i| {
            data["flows"][i.as_u64().expect("index") as usize]["ts"]
                .as_str()
                .expect("ts")
        })
        .collect();
    let expected: Vec<String> = (3..8u32)
        .map(|k| base.ts.plus(hour * k).rfc3339())
        .collect();
    assert_eq!(starts, expected);
    assert_eq!(data["meta"]["limits"]["flows_not_kept"], 998);

    let Some(dom) = rendered(&page(&html, "report-links")) else {
        return;
    };
    let idx = data["events"][0]["flows"][0].as_u64().expect("index");
    assert!(dom.contains(&format!("href=\"#f-{idx}\"")));
    let row = dom
        .split(&format!("<tr id=\"f-{idx}\""))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .expect("the cited record's row");
    assert!(row.contains(":2500 →"), "{row}");
}

/// A replay that saw nothing still gives a readable page.
#[test]
fn empty_report_renders() {
    let config = Config::default();
    let context = Context::load(&config, None, None).expect("context");
    let html = report::render(
        &Collector::new(true),
        &ReportInput {
            files: Vec::new(),
            config: &config,
            context: &context,
            stats: &Stats::default(),
            first_ts: None,
            last_ts: None,
        },
    );
    let Some(dom) = rendered(&page(&html, "report-empty")) else {
        return;
    };
    assert!(dom.contains("no packets"));
    assert!(dom.contains("No findings."));
}

/// The geo scenario (fixtures/geo, a week at a concentrator) with the detectors' findings:
/// the accounts rank by the scorer's risk, asmith's heat map marks the UTC+09:00 working
/// week its off_hours finding names, the rtt_distance findings plot against the bound and
/// link to the handshake records they cite, and the shared exit is a farm cluster.
#[test]
fn geo_scenario_report_shows_the_findings() {
    if !chromium_available() {
        return;
    }
    let geo = Path::new("fixtures/geo");
    let (html, stderr) = replay_report(
        &[&geo.join("week.pcap")],
        &[
            "--config",
            "fixtures/geo/farmwatch.toml",
            "--accounts",
            "fixtures/geo/accounts.toml",
            "--sessions",
            "fixtures/geo/sessions.jsonl",
        ],
        "report-geo",
    );
    assert!(
        stderr.contains("asmith  alert/laptop_farm_suspected"),
        "{stderr}"
    );
    let data = embedded(&std::fs::read_to_string(&html).expect("report"));
    let ranked: Vec<&str> = data["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .take(3)
        .map(|a| a["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ranked, ["asmith", "bwong", "jdoe"]);
    assert_eq!(data["accounts"][0]["risk_source"], "scorer");
    // The test database serves country, city and ASN: named once.
    assert_eq!(
        data["meta"]["databases"],
        serde_json::json!(["farmwatch-Test-City-ASN (built 2026-01-01)"])
    );
    let foreign = &data["accounts"][0]["heat"]["foreign"];
    assert_eq!(foreign["zone"], "UTC+09:00");
    assert!(
        foreign["source"]
            .as_str()
            .expect("source")
            .starts_with("finding ")
    );
    // Every rtt_distance finding cites the handshake record it measured, and its typed
    // evidence (the detector's RTT, distance and fibre bound) is plotted.
    let points: Vec<&serde_json::Value> = data["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .flat_map(|a| a["rtt"].as_array().expect("rtt points"))
        .collect();
    for e in data["events"].as_array().expect("events") {
        if e["reason"] == "rtt_distance" {
            let i = e["flows"][0].as_u64().expect("a cited record") as usize;
            assert_eq!(data["flows"][i]["src_ip"], e["evidence"]["public_ip"]);
            assert_eq!(data["flows"][i]["dst_port"], 443);
            let source = format!("finding {}", e["id"].as_str().expect("id"));
            let p = points
                .iter()
                .find(|p| p["source"] == source.as_str())
                .expect("the finding's point");
            assert_eq!(p["rtt_ms"], e["evidence"]["min_rtt_ms"]);
            assert_eq!(p["bound_ms"], e["evidence"]["fibre_bound_ms"]);
            assert_eq!(p["distance_km"], e["evidence"]["distance_km"]);
        }
    }

    let (dom, log) = load(&html);
    assert_rendered(&dom, &log);
    for expected in [
        "A. Smith",
        "off_hours/foreign_working_hours",
        "farm_cluster/shared_public_ip",
        "UTC+09:00",
        "class=\"foreign\"",
        "class=\"rttpt\"",
        "class=\"vpn\"",
        "class=\"finding\"",
        "asmith: 2026-11-02",
        "bwong: 2026-11-02",
    ] {
        assert!(dom.contains(expected), "rendered DOM lacks {expected}");
    }
}

// ---- the report shows what the detectors decided ----

/// A real RDP session (fixtures/lab: rdesktop typed by an operator 25 ms beyond the
/// sensor) where the controlled host sent more bytes than it received, but too few large
/// packets for `persistent_stream` to call it controlled: the detector says
/// `undetermined`. The report used to call the side that sent more bytes "controlled"; it
/// now shows the detector's role, and draws the session from its finding. The operator,
/// 50 ms away against a 30 ms ceiling, is listed as `operator_latency` judged him.
#[test]
fn the_report_shows_the_role_the_detector_gave_not_the_byte_count() {
    let dir = support::scratch("report-role-inputs");
    let config = write(
        &dir,
        "farmwatch.toml",
        "[network]\ninside = [\"10.8.0.0/16\"]\nvpn_pool = [\"10.8.0.0/16\"]\n\n[detect.remote_desktop]\nmin_duration = \"5s\"\n\n[detect.operator_latency]\nceilings = { US = 30.0 }\n",
    );
    let accounts = write(
        &dir,
        "accounts.toml",
        "[[account]]\nid = \"jdoe\"\nkind = \"contractor\"\ndeclared_country = \"US\"\nhosts = [\"10.8.0.12\"]\n",
    );
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab/rdp-direct-25ms.pcap");
    let (html, _) = replay_report(
        &[&capture],
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--accounts",
            accounts.to_str().expect("utf-8"),
        ],
        "report-role",
    );
    let data = embedded(&std::fs::read_to_string(&html).expect("report"));
    let sessions = data["rd_sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    let finding = &data["events"][s["finding"].as_u64().expect("finding") as usize];
    assert_eq!(finding["reason"], "persistent_stream");
    assert_eq!(finding["evidence"]["role"], "undetermined");
    assert_eq!(s["role"], "undetermined");
    assert_eq!(s["host"], "10.8.0.12");
    assert_eq!(s["account"], "jdoe");
    assert_eq!(s["peer"], "198.51.100.20");
    // The byte count points the other way: the host (the responder) sent more.
    let record = &data["flows"][s["flow"].as_u64().expect("the session's record") as usize];
    assert_eq!(record["dst_ip"], "10.8.0.12");
    let (to_host, from_host) = (
        record["bytes_orig"].as_u64().expect("bytes"),
        record["bytes_resp"].as_u64().expect("bytes"),
    );
    assert!(from_host > to_host, "{record}");
    // The record is the session's, so it is not listed again as a flow without a finding.
    assert!(data["rd_flows"].as_array().expect("rd flows").is_empty());
    let account = &data["accounts"][0];
    assert_eq!(account["id"], "jdoe");
    assert_eq!(account["rd"], serde_json::json!([0]));
    let operators = data["operators"].as_array().expect("operators");
    assert_eq!(operators.len(), 1, "{operators:?}");
    let o = &operators[0];
    let finding = &data["events"][o["finding"].as_u64().expect("finding") as usize];
    assert_eq!(finding["reason"], "operator_latency");
    for key in [
        "viewer",
        "floor_ms",
        "domestic_ceiling_ms",
        "ceiling_source",
    ] {
        assert_eq!(o[key], finding["evidence"][key], "{key}");
    }
    assert_eq!(o["viewer"], "198.51.100.20");
    assert_eq!(o["domestic_ceiling_ms"], 30.0);
    // The account's chart: the session's round trip, above the ceiling the finding named.
    let latency = account["latency"].as_array().expect("latency points");
    assert_eq!(latency.len(), 1, "{latency:?}");
    assert_eq!(latency[0]["floor_ms"], record["latency_floor_ms"]);
    assert_eq!(latency[0]["peer"], "198.51.100.20");
    assert!(latency[0]["floor_ms"].as_f64().expect("floor") > 30.0);
    assert_eq!(account["ceiling"]["ms"], 30.0);
    assert_eq!(account["ceiling"]["source"], "configured");

    let Some(dom) = rendered(&html) else {
        return;
    };
    let chart = dom
        .split("class=\"latency\"")
        .nth(1)
        .expect("latency chart");
    let chart = chart.split("</svg>").next().unwrap_or_default();
    assert!(chart.contains("class=\"ceiling\""), "{chart}");
    assert_eq!(chart.matches("class=\"latpt\"").count(), 1, "{chart}");
    assert!(chart.contains("fill=\"#c92a2a\""), "{chart}");
    let rd = dom.split("id=\"rd\"").nth(1).expect("rd section");
    let rd = rd.split("</section>").next().unwrap_or_default();
    assert!(rd.contains("<td class=\"\">undetermined</td>"), "{rd}");
    assert!(!rd.contains(">controlled<"), "{rd}");
    assert!(dom.contains("rdp (host undetermined)"));
    assert!(rd.contains("30.0 ms (US, configured)"), "{rd}");
}

/// A flood where every account has a finding, a flow each hour and its own outside
/// address: the collector's tables stop at their caps, count what they did not admit, the
/// account stage exports the counts as `farmwatch_state_evicted_total{structure="report_..."}`
/// and the report says what it left out.
#[test]
fn a_flood_of_accounts_fills_the_report_tables_only_to_their_caps() {
    let caps = report::collect::Caps {
        events: 300,
        observations: 50,
        tallies: 200,
        activity: 100,
        rtt_addresses: 40,
    };
    let (fixture, config) = fixture_records("tcp-states.pcap");
    let base = fixture.flows.first().expect("a record").clone();
    let mut c = Collector::with_caps(true, caps);
    let start = 1_793_628_000u64;
    for i in 0..1000u64 {
        let account = format!("flood{i:04}");
        let ts = Timestamp::from_secs(start + i * 3600);
        let mut e = Event::new(ts, Kind::GeoAnomaly, "hosting_asn", Severity::Medium, "");
        e.account = Some(account.clone());
        e.seal();
        c.event(&e);
        c.observation(&PublicIpObservation {
            ts,
            account: AccountRef {
                id: Arc::from(account.as_str()),
                kind: None,
            },
            public_ip: IpAddr::from([81, 2, (i / 250) as u8, (i % 250) as u8]),
            assigned_ip: None,
            source: ObservationSource::Radius,
        });
        let mut r = base.clone();
        r.ts = ts;
        r.account = Some(account);
        r.src_ip = IpAddr::from([198, 51, (i / 250) as u8, (i % 250) as u8]);
        r.tcp_rtt_orig_ms = Some(20.0);
        r.tcp_rtt_resp_ms = None;
        c.flow(&r);
    }
    assert_eq!(c.tally.len(), 200);
    assert_eq!(c.events.len(), 300);
    assert_eq!(c.observations.len(), 50);
    assert_eq!(c.activity.len(), 100);
    assert_eq!(c.min_rtt.len(), 40);
    assert_eq!(
        c.evictions(),
        [
            ("report_findings", 700),
            ("report_public_ips", 950),
            ("report_tallies", 800),
            ("report_activity", 900),
            ("report_rtt_addresses", 960),
        ]
    );

    // The report says what it left out.
    let context = Context::load(&config, None, None).expect("context");
    let html = report::render(
        &c,
        &ReportInput {
            files: Vec::new(),
            config: &config,
            context: &context,
            stats: &Stats::default(),
            first_ts: Some(Timestamp::from_secs(start)),
            last_ts: Some(Timestamp::from_secs(start + 1000 * 3600)),
        },
    );
    let limits = &embedded(&html)["meta"]["limits"];
    assert_eq!(limits["events_not_kept"], 700);
    assert_eq!(limits["tallies_not_kept"], 800);
    assert_eq!(limits["activity_not_kept"], 900);
    assert_eq!(limits["rtt_not_kept"], 960);

    // The account stage exports the collector's counts with the other bounded structures.
    let context = Context::load(&config, None, None).expect("context");
    let mut engine = Engine::new(&config, context, Sinks::default(), Some(c), 1);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tcp-states.pcap");
    let mut replay = Replay::open(&[path]).expect("open fixture");
    while let Some(pkt) = replay.next_packet() {
        engine.packet(pkt);
    }
    let done = engine.finish();
    assert_eq!(done.stats.state_evicted.get("report_tallies"), Some(&800));
    assert!(done.stats.state_evicted["report_activity"] >= 900);

    let Some(dom) = rendered(&page(&html, "report-flood")) else {
        return;
    };
    assert!(dom.contains("800 findings are in no account's tally"));
    assert!(dom.contains("900 flows are in no account's hourly activity"));
}

/// The relay findings of the detect scenarios (fixturegen: a stepping stone over SSH, and
/// relays behind TCP round trips) are listed with the legs their typed evidence names, and
/// link to the records of both legs.
#[test]
fn relay_chains_show_the_legs_the_detectors_named() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let config = fixtures.join("detect.toml");
    let config = ["--config", config.to_str().expect("utf-8")];

    let (html, _) = replay_report(
        &[&fixtures.join("detect-ssh-chain.pcap")],
        &config,
        "report-chain",
    );
    let data = embedded(&std::fs::read_to_string(&html).expect("report"));
    let chains = data["relay_chains"].as_array().expect("relay chains");
    assert_eq!(chains.len(), 1, "{chains:?}");
    let chain = &chains[0];
    let finding = &data["events"][chain["finding"].as_u64().expect("finding") as usize];
    assert_eq!(finding["reason"], "stepping_stone");
    assert_eq!(chain["host"], finding["host"]);
    assert_eq!(chain["source"], finding["evidence"]["source"]);
    assert_eq!(chain["target"], finding["evidence"]["target"]);
    // Both legs' records are cited: the inbound one reaches the host, the outbound leaves it.
    let legs: Vec<&serde_json::Value> = chain["flows"]
        .as_array()
        .expect("records")
        .iter()
        .map(|i| &data["flows"][i.as_u64().expect("index") as usize])
        .collect();
    assert!(
        legs.iter().any(|r| r["dst_ip"] == chain["host"]),
        "{legs:?}"
    );
    assert!(
        legs.iter().any(|r| r["src_ip"] == chain["host"]),
        "{legs:?}"
    );

    let (html, _) = replay_report(
        &[&fixtures.join("detect-rtt-split.pcap")],
        &config,
        "report-rtt-split",
    );
    let data = embedded(&std::fs::read_to_string(&html).expect("report"));
    let findings: Vec<&serde_json::Value> = data["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["reason"] == "rtt_split")
        .collect();
    let splits = data["rtt_splits"].as_array().expect("rtt splits");
    assert!(!findings.is_empty());
    assert_eq!(splits.len(), findings.len());
    for s in splits {
        let e = &data["events"][s["finding"].as_u64().expect("finding") as usize];
        assert_eq!(s["relay"], e["evidence"]["relay"]);
        assert_eq!(s["relay_side"], e["evidence"]["relay_side"]);
        let side = &e["evidence"]["responder_side"];
        let expected = match side.get("skipped") {
            Some(why) => format!("not timed ({})", why.as_str().expect("reason")),
            None => format!(
                "{} ms TCP / {} ms application",
                side["tcp_rtt_ms"].as_f64().expect("ms"),
                side["app_rtt_ms"].as_f64().expect("ms")
            ),
        };
        assert_eq!(s["responder_leg"], expected.as_str());
    }

    let Some(dom) = rendered(&html) else {
        return;
    };
    let relays = dom.split("id=\"relays\"").nth(1).expect("relays section");
    let relays = relays.split("</section>").next().unwrap_or_default();
    assert!(relays.contains("ms application"), "{relays}");
}
