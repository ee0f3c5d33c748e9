//! The correctness contract of DESIGN §7 against a real nats-server on loopback: the demo
//! scenario split between two sensors (by account host and session feed) and replayed with
//! `--publish`, then `farmwatch correlate --until-idle`, writes the account-level events of
//! one `replay` of both parts together — including the farm cluster of asmith and bwong,
//! whose sessions only the two sensors together see. A correlator killed mid-way and
//! started again writes no event twice and misses none. nats-server comes from Debian's
//! `nats-server` package; without it (outside CI) the tests are skipped.

mod nats_support;
mod support;

use nats_support::{Server, free_port, have_server};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fresh directory for one test's files and server state.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("correlate-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A standalone JetStream server on a free port, its store beside the test's files.
fn standalone(dir: &Path) -> Server {
    nats_support::standalone(free_port(), &dir.join("nats"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The scenario's files: the demo config under a sensor name, and the demo session feed
/// limited to `accounts`.
struct Site {
    config: PathBuf,
    sessions: PathBuf,
}

fn site(dir: &Path, name: &str, accounts: &[&str]) -> Site {
    let config = std::fs::read_to_string(fixture("demo/farmwatch.toml"))
        .unwrap()
        .replace("demo-vpn-east", name);
    let feed = std::fs::read_to_string(fixture("demo/sessions.jsonl")).unwrap();
    let lines: String = feed
        .lines()
        .filter(|l| {
            accounts
                .iter()
                .any(|a| l.contains(&format!("\"account\":\"{a}\"")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let site = Site {
        config: dir.join(format!("{name}.toml")),
        sessions: dir.join(format!("{name}-sessions.jsonl")),
    };
    std::fs::write(&site.config, config).unwrap();
    std::fs::write(&site.sessions, lines).unwrap();
    site
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(support::bin()).args(args).output().unwrap()
}

/// Replays `captures`; `publish` is the NATS URL and the `--metrics-out` file.
fn replay(
    captures: &[PathBuf],
    site: &Site,
    events: &Path,
    publish: Option<(&str, &Path)>,
) -> Output {
    let mut cmd = Command::new(support::bin());
    cmd.arg("replay")
        .args(captures)
        .arg("--config")
        .arg(&site.config)
        .arg("--accounts")
        .arg(fixture("demo/accounts.toml"))
        .arg("--sessions")
        .arg(&site.sessions)
        .arg("--events")
        .arg(events)
        .args(["--workers", "2"]);
    if let Some((url, metrics)) = publish {
        cmd.args(["--publish", url])
            .arg("--metrics-out")
            .arg(metrics);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn correlate(server: &Server, site: &Site, events: &Path) -> Command {
    let mut cmd = Command::new(support::bin());
    cmd.arg("correlate")
        .args(["--nats", &server.url(), "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&site.config)
        .arg("--accounts")
        .arg(fixture("demo/accounts.toml"))
        .arg("--sessions")
        .arg(&site.sessions)
        .arg("--events")
        .arg(events);
    cmd
}

/// (kind, reason, account, severity, id) of every event line; panics on a line repeated.
fn identities(path: &Path) -> BTreeSet<[String; 5]> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
        let id = [
            field("kind"),
            field("reason"),
            field("account"),
            field("severity"),
            field("id"),
        ];
        assert!(out.insert(id.clone()), "written twice: {id:?}");
    }
    out
}

/// Site A captures jdoe's traffic and holds the sessions of jdoe, asmith and mkeller; site B
/// captures another capture and holds bwong's and cdavis'. Returns the expected events (one
/// replay of everything) and each site's own.
struct Split {
    whole: Site,
    expected: BTreeSet<[String; 5]>,
    a: BTreeSet<[String; 5]>,
    b: BTreeSet<[String; 5]>,
}

fn publish_split(dir: &Path, server: &Server) -> Split {
    let whole = site(
        dir,
        "correlator",
        &["jdoe", "asmith", "bwong", "cdavis", "mkeller"],
    );
    let a = site(dir, "site-a", &["jdoe", "asmith", "mkeller"]);
    let b = site(dir, "site-b", &["bwong", "cdavis"]);
    let (cap_a, cap_b) = (
        fixture("detect-rdp-farm.pcap"),
        fixture("detect-rdp-admin.pcap"),
    );
    replay(
        &[cap_a.clone(), cap_b.clone()],
        &whole,
        &dir.join("all.jsonl"),
        None,
    );
    let url = server.url();
    for (site, cap, events) in [(&a, &cap_a, "a"), (&b, &cap_b, "b")] {
        let metrics = dir.join(format!("{events}.prom"));
        let out = replay(
            std::slice::from_ref(cap),
            site,
            &dir.join(format!("{events}.jsonl")),
            Some((&url, &metrics)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(" 0 dropped, 0 unsent"),
            "publish report: {stderr}"
        );
        // Everything offered was acknowledged, and the metrics say so.
        let text = std::fs::read_to_string(&metrics).unwrap();
        let acked = text
            .lines()
            .find_map(|l| l.strip_prefix("farmwatch_publish_messages_total{result=\"acked\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("farmwatch_publish_messages_total{result=\"acked\"}");
        assert!(
            stderr.contains(&format!("published {acked} messages: {acked} acknowledged")),
            "{stderr}"
        );
        assert!(text.contains("farmwatch_publish_messages_total{result=\"dropped\"} 0"));
    }
    Split {
        whole,
        expected: identities(&dir.join("all.jsonl")),
        a: identities(&dir.join("a.jsonl")),
        b: identities(&dir.join("b.jsonl")),
    }
}

fn farm_cluster(events: &BTreeSet<[String; 5]>) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e[1] == "shared_public_ip")
        .map(|e| e[2].clone())
        .collect()
}

#[test]
fn two_sensors_through_jetstream_give_the_events_of_one_replay() {
    if !have_server() {
        return;
    }
    let dir = scratch("contract");
    let server = standalone(&dir);
    let split = publish_split(&dir, &server);

    // The cluster only both sites' sessions show.
    let both = BTreeSet::from(["asmith".to_string(), "bwong".to_string()]);
    assert_eq!(farm_cluster(&split.expected), both);
    assert!(farm_cluster(&split.a).is_empty());
    assert!(farm_cluster(&split.b).is_empty());

    let events = dir.join("correlated.jsonl");
    let out = correlate(&server, &split.whole, &events)
        .args(["--until-idle", "2s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "correlate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(identities(&events), split.expected);
}

#[test]
fn a_correlator_killed_and_started_again_writes_each_event_once() {
    if !have_server() {
        return;
    }
    let dir = scratch("restart");
    let server = standalone(&dir);
    let split = publish_split(&dir, &server);
    let events = dir.join("correlated.jsonl");

    // Killed once it has written something, with a line torn as a crash leaves it.
    let mut first = correlate(&server, &split.whole, &events)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::metadata(&events).map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first correlator wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let mut text = std::fs::read(&events).unwrap();
    text.extend_from_slice(b"{\"ts\":\"2026-11-02T14:");
    std::fs::write(&events, text).unwrap();

    let out = correlate(&server, &split.whole, &events)
        .args(["--until-idle", "2s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "correlate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(identities(&events), split.expected);
}

#[test]
fn publishing_needs_a_sensor_name() {
    let dir = scratch("unnamed");
    let config = dir.join("farmwatch.toml");
    std::fs::write(&config, "[network]\ninside = [\"10.0.0.0/8\"]\n").unwrap();
    let fixture = fixture("pcap-le-us.pcap");
    let out = run(&[
        "replay".as_ref(),
        fixture.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--publish".as_ref(),
        "nats://127.0.0.1:1".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[sensor] name"), "{stderr}");
}
