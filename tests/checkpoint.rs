//! The account stage saved and restored (the correlator's checkpoints, DESIGN §7): stopped at
//! any item, saved to bytes, read back into a fresh stage and run on, it writes exactly the
//! events one stage running through writes — farm cluster, impossible travel, foreign
//! working hours, RTT against distance and the scorer's alerts included. A state of
//! another format version is refused.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use farmwatch::account_stage::{AccountStage, Context, Sinks, StageState};
use farmwatch::config::Config;
use farmwatch::event::{Event, FlowRef, Kind, Severity};
use farmwatch::flow_stage::{Item, Stamped};
use farmwatch::identity::SessionStatus;
use farmwatch::observation::Observation;
use farmwatch::state;
use farmwatch::timestamp::Timestamp;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The demo's config, inventory and session feed (jdoe, asmith, bwong, cdavis, mkeller).
fn stage() -> AccountStage {
    let config = Config::load(Some(&fixture("demo/farmwatch.toml"))).unwrap();
    let context = Context::load(
        &config,
        Some(&fixture("demo/accounts.toml")),
        Some(&fixture("demo/sessions.jsonl")),
    )
    .unwrap();
    let mut stage = AccountStage::new(&config, Sinks::default(), context);
    stage.emitted = Some(Vec::new());
    stage
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Five days of the demo's people, as the flow stage reports them, with a tick every
/// minute: RADIUS logins (asmith and bwong from one home address, jdoe from Chicago and
/// then London within the hour), bwong busy in Asian hours, handshake RTTs far too long
/// for the addresses' countries, and the hosts of jdoe and cdavis each finding a
/// responder-side relay split toward one address (`rtt_split` from the flow stage).
fn items() -> Vec<Stamped> {
    let day0 = 1_793_577_600; // Monday 2026-11-02 00:00 UTC
    let mut obs = Vec::new();
    let people = [
        ("jdoe", "10.8.0.12", "73.14.2.9"),
        ("asmith", "10.8.0.21", "98.97.0.5"),
        ("bwong", "10.8.0.22", "98.97.0.5"),
        ("cdavis", "10.8.0.23", "159.203.1.1"),
        ("mkeller", "10.8.0.30", "73.14.2.77"),
    ];
    for day in 0..5u64 {
        for (n, (user, vpn, home)) in people.iter().enumerate() {
            let login = day0 + day * 86_400 + 14 * 3600 + n as u64 * 300;
            let public = if *user == "jdoe" && day == 1 {
                "81.2.69.160"
            } else {
                home
            };
            let radius = |ts: u64, public: &str, status| Observation::Radius {
                ts: Timestamp::from_secs(ts),
                user: user.to_string(),
                framed_ip: ip(vpn),
                calling_station: Some(public.to_string()),
                status,
            };
            obs.push(radius(login, home, SessionStatus::Start));
            if public != *home {
                obs.push(radius(login + 1800, public, SessionStatus::Interim));
            }
            // bwong works 01:00 to 09:00 UTC: Asian hours.
            let first = if *user == "bwong" { 1 } else { 14 };
            for hour in 0..8 {
                let ts = day0 + day * 86_400 + (first + hour) * 3600 + 120;
                obs.push(Observation::Activity {
                    ts: Timestamp::from_secs(ts),
                    host: ip(vpn),
                });
            }
            for k in 0..4u64 {
                let client = ip(public);
                obs.push(Observation::HandshakeRtt {
                    ts: Timestamp::from_secs(login + 600 + k * 900),
                    client,
                    rtt_ns: 190_000_000 + k * 1_000_000,
                    flow: FlowRef {
                        proto: "tcp",
                        src_ip: client,
                        src_port: 50_000 + k as u16,
                        dst_ip: ip("198.51.100.10"),
                        dst_port: 443,
                    },
                });
            }
            obs.push(radius(login + 9 * 3600, home, SessionStatus::Stop));
            if ["jdoe", "cdavis"].contains(user) {
                obs.push(relay_split(login + 1800, ip(vpn)));
            }
        }
    }
    obs.sort_by_key(Observation::ts);
    let mut items = vec![Stamped {
        at: obs[0].ts(),
        item: Item::Start,
    }];
    let mut minute = obs[0].ts().secs() / 60;
    for o in obs {
        while o.ts().secs() / 60 > minute {
            minute += 1;
            items.push(Stamped {
                at: Timestamp::from_secs(minute * 60),
                item: Item::Tick,
            });
        }
        items.push(Stamped {
            at: o.ts(),
            item: Item::Observation(o),
        });
    }
    items
}

/// A flow-stage `rtt_split` finding: `host`'s connections to a relay answered far later
/// than the relay's TCP round trip.
fn relay_split(ts: u64, host: IpAddr) -> Observation {
    let mut e = Event::new(
        Timestamp::from_secs(ts),
        Kind::RelayChain,
        "rtt_split",
        Severity::Medium,
        &format!("192.0.2.30|{ts}"),
    )
    .evidence("relay_side", "responder")
    .evidence("relay", "192.0.2.30")
    .evidence("connections", 4)
    .evidence("low_quantile_extra_ms", 80.0)
    .evidence("min_extra_ms", 50.0);
    e.host = Some(host);
    Observation::Finding { event: Box::new(e) }
}

/// Applies `items` and returns the events written, as JSON lines.
fn run(stage: &mut AccountStage, items: impl IntoIterator<Item = Stamped>) -> Vec<String> {
    for s in items {
        stage.apply(s);
    }
    taken(stage)
}

fn taken(stage: &mut AccountStage) -> Vec<String> {
    let events = stage.emitted.as_mut().map(std::mem::take).unwrap();
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

#[test]
fn a_stage_restored_anywhere_writes_the_events_of_one_run() {
    let count = items().len();
    let mut whole = stage();
    let mut expected = run(&mut whole, items());
    whole.finish();
    expected.extend(taken(&mut whole));
    let reasons = |lines: &[String]| -> std::collections::BTreeSet<String> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].to_string())
            .collect()
    };
    // The scenario shows what each saved structure is for.
    for reason in [
        "shared_public_ip",
        "impossible_travel",
        "foreign_working_hours",
        "rtt_distance",
        "shared_relay",
        "laptop_farm_suspected",
    ] {
        assert!(
            reasons(&expected).contains(&format!("\"{reason}\"")),
            "no {reason} in {:?}",
            reasons(&expected)
        );
    }
    let whole_state = state::save(&whole.save().unwrap()).unwrap();

    // Evenly, and right after each relay finding (one host's agreement held, the other's
    // to come).
    let after_findings = items().into_iter().enumerate().filter_map(|(i, s)| {
        matches!(s.item, Item::Observation(Observation::Finding { .. })).then_some(i + 1)
    });
    let cuts: Vec<usize> = (1..count)
        .step_by(count / 12)
        .chain(after_findings)
        .collect();
    for cut in cuts {
        let mut before = stage();
        let mut events = run(&mut before, items().into_iter().take(cut));
        let bytes = state::save(&before.save().unwrap()).unwrap();
        drop(before);
        let mut after = stage();
        after
            .restore(state::load::<StageState>(&bytes).unwrap())
            .unwrap();
        events.extend(run(&mut after, items().into_iter().skip(cut)));
        after.finish();
        events.extend(taken(&mut after));
        assert_eq!(events, expected, "restored after item {cut}");
        // The same state: the same size (a map's order may differ, its contents not).
        assert_eq!(
            state::save(&after.save().unwrap()).unwrap().len(),
            whole_state.len(),
            "state after item {cut}"
        );
    }
}

#[test]
fn a_state_of_another_version_or_a_damaged_one_is_refused() {
    let half = items().len() / 2;
    let mut before = stage();
    run(&mut before, items().into_iter().take(half));
    let bytes = state::save(&before.save().unwrap()).unwrap();

    let mut other = bytes.clone();
    other[4..8].copy_from_slice(&(state::VERSION + 1).to_le_bytes());
    let e = state::load::<StageState>(&other).err().unwrap();
    assert_eq!(
        e,
        format!(
            "state format version {}, this farmwatch reads version {}",
            state::VERSION + 1,
            state::VERSION
        )
    );
    let cut = &bytes[..bytes.len() / 2];
    assert!(
        state::load::<StageState>(cut)
            .err()
            .unwrap()
            .starts_with("malformed")
    );
    assert_eq!(
        state::load::<StageState>(b"{\"seq\":1}").err().unwrap(),
        "not a farmwatch state"
    );
}

/// A state saved by an earlier build of this format version, committed: it must still read
/// and carry on exactly. A saved type that changes shape without a new `state::VERSION`
/// would read a running correlator's checkpoint as something else; here it stops the tests
/// instead. After bumping the version, write the new version's file with
/// `FARMWATCH_WRITE_STATE=1 cargo test --test checkpoint` and commit it.
#[test]
fn a_state_saved_by_an_earlier_build_of_this_version_reads_and_runs_on() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/checkpoint")
        .join(format!("state-v{}.bin", state::VERSION));
    let half = items().len() / 2;
    let mut before = stage();
    let mut events = run(&mut before, items().into_iter().take(half));
    if std::env::var_os("FARMWATCH_WRITE_STATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, state::save(&before.save().unwrap()).unwrap()).unwrap();
    }
    let saved = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: a new state::VERSION needs its saved state (FARMWATCH_WRITE_STATE=1)",
            path.display()
        )
    });
    let restored = state::load::<StageState>(&saved).unwrap_or_else(|e| {
        panic!(
            "{} no longer reads ({e}): a saved type changed shape; bump state::VERSION",
            path.display()
        )
    });
    let mut after = stage();
    after.restore(restored).unwrap();
    events.extend(run(&mut after, items().into_iter().skip(half)));
    after.finish();
    events.extend(taken(&mut after));

    let mut whole = stage();
    let mut expected = run(&mut whole, items());
    whole.finish();
    expected.extend(taken(&mut whole));
    assert_eq!(
        events,
        expected,
        "{} reads, but runs on differently: bump state::VERSION",
        path.display()
    );
}
