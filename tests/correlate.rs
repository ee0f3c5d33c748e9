//! The correctness contract of DESIGN §7 against a real nats-server on loopback: the demo
//! scenario split between two sensors (by account host and session feed) and replayed with
//! `--publish`, then `farmwatch correlate --until-idle`, writes the account-level events of
//! one `replay` of both parts together — including the farm cluster of asmith and bwong,
//! whose sessions only the two sensors together see, and which the correlator learns from
//! the session records the sensors publish. A correlator killed mid-way and started again
//! (given the whole session feed too, so that records arrive twice) resumes from its
//! checkpoint: it writes no event twice, misses none, and does not read again what the
//! checkpoint holds; a checkpoint it cannot read is refused. nats-server comes from
//! Debian's `nats-server` package; without it (outside CI) the tests are skipped.

mod nats_support;
mod support;

use nats_support::{Server, free_port, have_server};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use farmwatch::jetstream::{CorrelateConfig, CorrelateSource, StreamConfig};

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

/// `correlate` with the site's config and session feed.
fn correlate(server: &Server, site: &Site, events: &Path) -> Command {
    correlate_with(server, site, true, events)
}

/// `correlate` with the site's config; with its session feed when `sessions`.
fn correlate_with(server: &Server, site: &Site, sessions: bool, events: &Path) -> Command {
    let mut cmd = Command::new(support::bin());
    cmd.arg("correlate")
        .args(["--nats", &server.url(), "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&site.config)
        .arg("--accounts")
        .arg(fixture("demo/accounts.toml"))
        .arg("--events")
        .arg(events);
    if sessions {
        cmd.arg("--sessions").arg(&site.sessions);
    }
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

/// The split scenario's sites and captures; one replay of everything is in `all.jsonl`.
struct Sites {
    whole: Site,
    a: Site,
    b: Site,
    cap_a: PathBuf,
    cap_b: PathBuf,
}

fn sites(dir: &Path) -> Sites {
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
    Sites {
        whole,
        a,
        b,
        cap_a,
        cap_b,
    }
}

fn publish_split(dir: &Path, server: &Server) -> Split {
    let Sites {
        whole,
        a,
        b,
        cap_a,
        cap_b,
    } = sites(dir);
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

/// The packet time of every event, by id.
fn times(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["id"].as_str().unwrap().into(),
                v["ts"].as_str().unwrap().into(),
            )
        })
        .collect()
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

    // The session feed reaches the correlator only through the sensors.
    let events = dir.join("correlated.jsonl");
    let out = correlate_with(&server, &split.whole, false, &events)
        .args(["--until-idle", "2s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "correlate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(identities(&events), split.expected);
    // At the same packet times: the inventory's findings at the first packet, although
    // jdoe's session record comes before it.
    assert_eq!(times(&events), times(&dir.join("all.jsonl")));
}

/// The published acknowledged count of a replay's `--metrics-out`.
fn acked(metrics: &Path) -> u64 {
    metric(
        &std::fs::read_to_string(metrics).unwrap(),
        "farmwatch_publish_messages_total{result=\"acked\"}",
    )
    .unwrap() as u64
}

/// The value of the sample `name` (with its labels) in a Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (bounded) until `done` holds; the bound is a hang guard, not a timing check.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A correlator running in the background, and where its `/metrics` are.
struct Running {
    child: Child,
    listen: String,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("correlate started") {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "correlate ended");
        }
        let listen = line.split(" listen=").nth(1).unwrap();
        let listen = listen.split_whitespace().next().unwrap().to_string();
        // Keep reading, so the correlator never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Running { child, listen }
    }

    fn metrics(&self) -> String {
        let mut conn = TcpStream::connect(&self.listen).unwrap();
        write!(
            conn,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The value of `name=` in the stderr line that contains `line`.
fn status(stderr: &str, line: &str, name: &str) -> u64 {
    let found = stderr
        .lines()
        .find(|l| l.contains(line))
        .unwrap_or_else(|| {
            panic!("no {line:?} in {stderr}");
        });
    let value = found.split(&format!(" {name}=")).nth(1).unwrap();
    value.split_whitespace().next().unwrap().parse().unwrap()
}

/// The scenario's correlator config, checkpointing at least every 100 ms and waiting for
/// both sites from the start.
fn checkpointing(site: &Site) {
    let mut text = std::fs::read_to_string(&site.config).unwrap();
    text.push_str(
        "\n[correlate]\nsensors = [\"site-a\", \"site-b\"]\ncheckpoint_interval = \"100ms\"\n\
         checkpoint_observations = 20\n",
    );
    std::fs::write(&site.config, text).unwrap();
}

#[test]
fn a_correlator_killed_resumes_from_its_checkpoint_and_reads_nothing_twice() {
    if !have_server() {
        return;
    }
    let dir = scratch("resume");
    let server = standalone(&dir);
    let Sites {
        whole,
        a,
        b,
        cap_a,
        cap_b,
    } = sites(&dir);
    checkpointing(&whole);
    let expected = identities(&dir.join("all.jsonl"));
    let url = server.url();

    // Site A publishes; the correlator reads all of it and, waiting for site B, holds it in
    // its lane. Killed once a checkpoint holds everything A sent.
    let prom = dir.join("a.prom");
    replay(&[cap_a], &a, &dir.join("a.jsonl"), Some((&url, &prom)));
    let sent_a = acked(&prom);
    let events = dir.join("correlated.jsonl");
    let first = Running::start(correlate(&server, &whole, &events));
    let mut read_a = 0.0;
    wait_until("a checkpoint of all site A sent", || {
        let text = first.metrics();
        read_a = metric(
            &text,
            "farmwatch_correlate_messages_total{kind=\"observation\"}",
        )
        .unwrap_or(0.0);
        metric(&text, "farmwatch_correlate_checkpoint_sequence") == Some(sent_a as f64)
    });
    assert!(read_a > 0.0);
    first.sigkill();

    // Site B publishes; the restarted correlator takes site A's observations from the
    // checkpoint and reads only what came after it.
    replay(
        &[cap_b],
        &b,
        &dir.join("b.jsonl"),
        Some((&url, &dir.join("b.prom"))),
    );
    let out = correlate(&server, &whole, &events)
        .args(["--until-idle", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "correlate: {stderr}");
    assert_eq!(status(&stderr, "checkpoint restored", "sequence"), sent_a);
    let read_b = status(&stderr, "correlate stopped", "read");
    let applied = status(&stderr, "correlate stopped", "applied");
    assert!(read_b > 0, "{stderr}");
    assert_eq!(applied, read_a as u64 + read_b, "{stderr}");
    assert_eq!(identities(&events), expected);
}

#[test]
fn a_correlator_killed_and_started_again_writes_each_event_once() {
    if !have_server() {
        return;
    }
    let dir = scratch("restart");
    let server = standalone(&dir);
    let split = publish_split(&dir, &server);
    checkpointing(&split.whole);
    let events = dir.join("correlated.jsonl");

    // Killed once it has written something and stored a checkpoint, with a line torn as a
    // crash leaves it.
    let first = Running::start(correlate(&server, &split.whole, &events));
    wait_until("an event and a checkpoint", || {
        let checkpoint = metric(&first.metrics(), "farmwatch_correlate_checkpoint_sequence");
        std::fs::metadata(&events).map_or(0, |m| m.len()) > 0 && checkpoint > Some(0.0)
    });
    first.sigkill();
    let mut text = std::fs::read(&events).unwrap();
    text.extend_from_slice(b"{\"ts\":\"2026-11-02T14:");
    std::fs::write(&events, text).unwrap();

    let out = correlate(&server, &split.whole, &events)
        .args(["--until-idle", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "correlate: {stderr}");
    assert!(status(&stderr, "checkpoint restored", "sequence") > 0);
    assert_eq!(identities(&events), split.expected);
}

/// DESIGN §7: a replay published twice, the second time after the server's duplicate
/// window, reaches the stream twice; the correlator recognises the observations by id,
/// counts them, and applies them once.
#[test]
fn a_replay_published_again_after_the_duplicate_window_is_applied_once() {
    if !have_server() {
        return;
    }
    let dir = scratch("repeat");
    let server = standalone(&dir);
    let Sites {
        whole,
        a,
        b,
        cap_a,
        cap_b,
    } = sites(&dir);
    for site in [&whole, &a, &b] {
        let mut text = std::fs::read_to_string(&site.config).unwrap();
        text.push_str("\n[stream]\nduplicate_window = \"1s\"\n");
        std::fs::write(&site.config, text).unwrap();
    }
    let expected = identities(&dir.join("all.jsonl"));
    let url = server.url();
    let publish = |site: &Site, cap: &PathBuf, tag: &str| {
        let prom = dir.join(format!("{tag}.prom"));
        replay(
            std::slice::from_ref(cap),
            site,
            &dir.join(format!("{tag}.jsonl")),
            Some((&url, &prom)),
        );
        acked(&prom)
    };
    let first = publish(&a, &cap_a, "a1");
    publish(&b, &cap_b, "b");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Past the window the server stores every message again.
    assert_eq!(publish(&a, &cap_a, "a2"), first);

    let events = dir.join("correlated.jsonl");
    let out = correlate(&server, &whole, &events)
        .args(["--until-idle", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "correlate: {stderr}");
    assert_eq!(identities(&events), expected);
    // Every observation read is applied once or recognised as a repeat.
    let line = "correlate stopped";
    let (read, applied, repeated) = (
        status(&stderr, line, "read"),
        status(&stderr, line, "applied"),
        status(&stderr, line, "repeated"),
    );
    assert!(repeated > 0, "{stderr}");
    assert_eq!(applied + repeated, read, "{stderr}");
}

#[test]
fn a_checkpoint_of_another_version_or_damaged_is_refused() {
    if !have_server() {
        return;
    }
    let dir = scratch("foreign");
    let server = standalone(&dir);
    let whole = site(&dir, "correlator", &["jdoe"]);
    let mut other = farmwatch::state::MAGIC.to_vec();
    other.extend_from_slice(&(farmwatch::state::VERSION + 1).to_le_bytes());
    other.extend_from_slice(b"a state this build cannot read");
    for (state, says) in [
        (other, "state format version"),
        (b"{\"lanes\":[]}".to_vec(), "not a farmwatch state"),
    ] {
        let mut source = CorrelateSource::open(
            &[server.url()],
            &CorrelateConfig::default(),
            &StreamConfig::default(),
        )
        .unwrap();
        source.save_checkpoint(0, &state).unwrap();
        drop(source);
        let out = correlate(&server, &whole, &dir.join("events.jsonl"))
            .args(["--until-idle", "1s"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("farmwatch: checkpoint farmwatch-correlate in FARMWATCH_STATE")
                && stderr.contains(says),
            "{stderr}"
        );
    }
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
