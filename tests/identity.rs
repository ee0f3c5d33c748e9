//! Identity: time-ranged address → account mappings from the inventory, the session
//! feed and RADIUS accounting.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use farmwatch::accounts::{AccountKind, Inventory};
use farmwatch::identity::{Identity, MAX_RANGES_PER_ADDRESS, ObservationSource, SessionStatus};
use farmwatch::timestamp::Timestamp;

const INVENTORY: &str = r#"[[account]]
id = "jdoe"
kind = "contractor"
declared_country = "US"
hosts = ["10.20.0.5"]

[[account]]
id = "asmith"
kind = "contractor"
declared_country = "US"
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Seconds after 2026-11-02T14:00:00Z.
fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(1_793_628_000 + secs)
}

fn identity() -> Identity {
    Identity::new(Arc::new(
        Inventory::parse(INVENTORY, "accounts.toml").unwrap(),
    ))
}

fn who(id: &Identity, addr: &str, ts: Timestamp) -> Option<String> {
    id.account_at(ip(addr), ts).map(|a| a.id.to_string())
}

#[test]
fn address_reused_by_two_accounts_maps_by_time() {
    // 10.8.0.12: jdoe 14:03:11–14:30:00, asmith 15:00:00–15:40:00 (one interim update
    // from a new public address), then jdoe again from 16:00:00.
    let feed = r#"{"ts":"2026-11-02T14:03:11Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"192.0.2.1","event":"start"}
{"ts":"2026-11-02T14:30:00Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"192.0.2.1","event":"stop"}
{"ts":"2026-11-02T15:00:00Z","account":"asmith","assigned_ip":"10.8.0.12","public_ip":"192.0.2.65","event":"start"}
{"ts":"2026-11-02T15:20:00Z","account":"asmith","assigned_ip":"10.8.0.12","public_ip":"192.0.2.66","event":"interim"}
{"ts":"2026-11-02T15:40:00Z","account":"asmith","assigned_ip":"10.8.0.12","event":"stop"}
{"ts":"2026-11-02T16:00:00Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"192.0.2.2","event":"start"}
"#;
    let mut id = identity();
    let report = id.load_sessions(feed.as_bytes());
    assert_eq!(
        (report.lines, report.accepted, report.errors_total),
        (6, 6, 0)
    );
    assert_eq!(who(&id, "10.8.0.12", t(100)), None); // before the first start
    assert_eq!(who(&id, "10.8.0.12", t(191)).as_deref(), Some("jdoe"));
    assert_eq!(who(&id, "10.8.0.12", t(1799)).as_deref(), Some("jdoe"));
    assert_eq!(who(&id, "10.8.0.12", t(1900)), None); // between sessions
    assert_eq!(who(&id, "10.8.0.12", t(3700)).as_deref(), Some("asmith"));
    assert_eq!(who(&id, "10.8.0.12", t(5000)).as_deref(), Some("asmith"));
    assert_eq!(who(&id, "10.8.0.12", t(6001)), None);
    assert_eq!(who(&id, "10.8.0.12", t(7300)).as_deref(), Some("jdoe"));
    assert_eq!(who(&id, "10.8.0.12", t(99_999)).as_deref(), Some("jdoe")); // still open
    let a = id.account_at(ip("10.8.0.12"), t(3700)).unwrap();
    assert_eq!(a.kind, Some(AccountKind::Contractor));

    let obs = id.drain_public_ip_observations();
    let got: Vec<(u64, &str, String)> = obs
        .iter()
        .map(|o| {
            (
                o.ts.secs() - 1_793_628_000,
                &*o.account.id,
                o.public_ip.to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (191, "jdoe", "192.0.2.1".to_string()),
            (1800, "jdoe", "192.0.2.1".to_string()),
            (3600, "asmith", "192.0.2.65".to_string()),
            (4800, "asmith", "192.0.2.66".to_string()),
            (7200, "jdoe", "192.0.2.2".to_string()),
        ]
    );
    assert!(
        obs.iter()
            .all(|o| o.source == ObservationSource::SessionFeed)
    );
    assert!(id.drain_public_ip_observations().is_empty());
}

#[test]
fn start_without_stop_hands_the_address_over() {
    let mut id = identity();
    let a = ip("10.8.0.40");
    id.observe_session(
        t(0),
        "jdoe",
        a,
        None,
        SessionStatus::Start,
        ObservationSource::SessionFeed,
    );
    id.observe_session(
        t(600),
        "asmith",
        a,
        None,
        SessionStatus::Start,
        ObservationSource::SessionFeed,
    );
    assert_eq!(who(&id, "10.8.0.40", t(599)).as_deref(), Some("jdoe"));
    assert_eq!(who(&id, "10.8.0.40", t(601)).as_deref(), Some("asmith"));
}

#[test]
fn static_hosts_and_unknown_hosts() {
    let id = identity();
    assert_eq!(who(&id, "10.20.0.5", t(0)).as_deref(), Some("jdoe"));
    assert_eq!(who(&id, "::ffff:10.20.0.5", t(0)).as_deref(), Some("jdoe"));
    assert_eq!(who(&id, "10.20.0.6", t(0)), None);
}

#[test]
fn feed_errors_are_counted_with_line_numbers() {
    let feed = "{\"ts\":\"2026-11-02T14:03:11Z\",\"account\":\"jdoe\",\"assigned_ip\":\"10.8.0.12\",\"event\":\"start\"}\n\
                not json\n\
                \n\
                {\"ts\":\"2026-11-02T14:03:11Z\",\"account\":\"jdoe\",\"assigned_ip\":\"10.8.0.999\",\"event\":\"start\"}\n\
                {\"ts\":\"2026-11-02T14:03:11Z\",\"account\":\"jdoe\",\"assigned_ip\":\"10.8.0.13\",\"event\":\"pause\"}\n";
    let mut id = identity();
    let report = id.load_sessions(feed.as_bytes());
    assert_eq!(report.lines, 5);
    assert_eq!(report.accepted, 1);
    assert_eq!(report.errors_total, 3);
    let lines: Vec<usize> = report.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 4, 5]);
    assert!(report.errors[2].message.contains("\"pause\""));
    assert_eq!(who(&id, "10.8.0.12", t(200)).as_deref(), Some("jdoe"));
}

#[test]
fn feed_out_of_order_is_applied_in_time_order() {
    let feed = r#"{"ts":"2026-11-02T14:30:00Z","account":"jdoe","assigned_ip":"10.8.0.12","event":"stop"}
{"ts":"2026-11-02T14:00:00Z","account":"jdoe","assigned_ip":"10.8.0.12","event":"start"}
"#;
    let mut id = identity();
    id.load_sessions(feed.as_bytes());
    assert_eq!(who(&id, "10.8.0.12", t(900)).as_deref(), Some("jdoe"));
    assert_eq!(who(&id, "10.8.0.12", t(1801)), None);
    assert_eq!(id.stats().unmatched_stops, 0);
}

#[test]
fn radius_accounting_maps_and_observes() {
    let mut id = identity();
    let framed = ip("10.8.3.7");
    id.observe_radius(
        t(0),
        "asmith",
        framed,
        Some("192.0.2.113"),
        SessionStatus::Start,
    );
    id.observe_radius(
        t(300),
        "asmith",
        framed,
        Some("00-11-22-33-44-55"),
        SessionStatus::Interim,
    );
    id.observe_radius(t(600), "asmith", framed, None, SessionStatus::Stop);
    assert_eq!(who(&id, "10.8.3.7", t(300)).as_deref(), Some("asmith"));
    assert_eq!(who(&id, "10.8.3.7", t(601)), None);
    let obs = id.drain_public_ip_observations();
    assert_eq!(obs.len(), 1); // a MAC in Calling-Station-Id is no public address
    assert_eq!(obs[0].public_ip, ip("192.0.2.113"));
    assert_eq!(obs[0].assigned_ip, Some(framed));
    assert_eq!(obs[0].source, ObservationSource::Radius);
    // An account the inventory does not list is still named, without a kind.
    id.observe_radius(t(700), "ghost", framed, None, SessionStatus::Start);
    let a = id.account_at(framed, t(701)).unwrap();
    assert_eq!((&*a.id, a.kind), ("ghost", None));
}

#[test]
fn memory_is_bounded() {
    let mut id = identity().with_retention(Duration::from_secs(3600));
    let a = ip("10.8.0.50");
    let n = MAX_RANGES_PER_ADDRESS as u64 + 5;
    for i in 0..n {
        let user = if i % 2 == 0 { "jdoe" } else { "asmith" };
        id.observe_session(
            t(i * 10),
            user,
            a,
            None,
            SessionStatus::Start,
            ObservationSource::Radius,
        );
        id.observe_session(
            t(i * 10 + 5),
            user,
            a,
            None,
            SessionStatus::Stop,
            ObservationSource::Radius,
        );
    }
    assert_eq!(id.stats().ranges_evicted, 5);
    assert_eq!(who(&id, "10.8.0.50", t(2)), None); // evicted
    assert_eq!(
        who(&id, "10.8.0.50", t((n - 1) * 10 + 1)).as_deref(),
        Some("jdoe")
    );
    id.advance(t(n * 10 + 3600 + 1));
    assert_eq!(id.stats().ranges_expired, MAX_RANGES_PER_ADDRESS as u64);
    assert_eq!(who(&id, "10.8.0.50", t((n - 1) * 10 + 1)), None);
}

#[test]
fn reloaded_inventory_changes_static_hosts() {
    let mut id = identity();
    let text = INVENTORY.replace("10.20.0.5", "10.20.0.6");
    id.reload_inventory(Arc::new(Inventory::parse(&text, "accounts.toml").unwrap()));
    assert_eq!(who(&id, "10.20.0.5", t(0)), None);
    assert_eq!(who(&id, "10.20.0.6", t(0)).as_deref(), Some("jdoe"));
}

#[test]
fn radius_between_feed_sessions_does_not_cut_later_ones() {
    // The feed is loaded ahead of the packets; RADIUS seen on the wire in between must
    // not end the feed's later session.
    let feed = r#"{"ts":"2026-11-02T16:00:00Z","account":"jdoe","assigned_ip":"10.8.0.12","event":"start"}
"#;
    let mut id = identity();
    id.load_sessions(feed.as_bytes());
    let a = ip("10.8.0.12");
    id.observe_radius(t(3600), "asmith", a, None, SessionStatus::Start);
    assert_eq!(who(&id, "10.8.0.12", t(3700)).as_deref(), Some("asmith"));
    assert_eq!(who(&id, "10.8.0.12", t(7300)).as_deref(), Some("jdoe"));
    id.observe_radius(t(4000), "asmith", a, None, SessionStatus::Stop);
    assert_eq!(who(&id, "10.8.0.12", t(4001)), None);
    assert_eq!(who(&id, "10.8.0.12", t(7300)).as_deref(), Some("jdoe"));
}
