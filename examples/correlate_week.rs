//! A week of observations for many accounts, published to NATS JetStream as two sensors:
//! the workload of `bench/correlate-restart` (the correlator's checkpoint cost and restart
//! time, issue 19 "Scale").
//!
//! Each account is a contractor (one in ten an employee) in New York's time zone, with a
//! VPN address of its own. Each day it logs in over RADIUS from its home address, works
//! eight hours (one Activity observation per hour, as the flow stage sends them), opens two
//! connections whose handshake RTT is measured, and logs out. One account in fifty shares
//! its home address with three others (a farm), one in a hundred logs in once from London
//! (travel). Accounts alternate between the sensors `bench-a` and `bench-b`; each sends a
//! heartbeat every minute of packet time and an end marker. Everything is deterministic.
//!
//!   cargo run --release --example correlate_week -- NATS_URL OUT_DIR [ACCOUNTS] [DAYS]
//!
//! writes OUT_DIR/accounts.toml and OUT_DIR/farmwatch.toml for the correlator, and prints
//! how many observations and messages it published.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use farmwatch::event::FlowRef;
use farmwatch::identity::SessionStatus;
use farmwatch::jetstream::{PublishConfig, Publisher, StreamConfig};
use farmwatch::observation::Observation;
use farmwatch::timestamp::Timestamp;

/// Monday 2026-11-02 00:00 UTC.
const WEEK_START: u64 = 1_793_577_600;
const SENSORS: [&str; 2] = ["bench-a", "bench-b"];
/// What the publisher may hold before the generator waits for the server.
const MAX_BUFFERED: u64 = 50_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: correlate_week NATS_URL OUT_DIR [ACCOUNTS] [DAYS]");
        std::process::exit(2);
    };
    let accounts: u32 = args.get(2).map_or(10_000, |n| n.parse().expect("ACCOUNTS"));
    let days: u64 = args.get(3).map_or(7, |n| n.parse().expect("DAYS"));
    assert!(
        accounts <= 1 << 18,
        "at most 262144 accounts (the VPN pool)"
    );
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).expect("OUT_DIR");
    write_files(&out, accounts);

    let observations = week(accounts, days);
    let servers = vec![url.clone()];
    let stream = StreamConfig::default();
    let publishers: Vec<Publisher> = SENSORS
        .iter()
        .map(|s| Publisher::start(s, &servers, &PublishConfig::default(), &stream).unwrap())
        .collect();
    let mut minute = WEEK_START / 60;
    for (sensor, obs) in &observations {
        let ts = obs.ts();
        while ts.secs() / 60 > minute {
            minute += 1;
            for p in &publishers {
                p.clock(Timestamp::from_secs(minute * 60));
            }
        }
        let p = &publishers[*sensor];
        while p.stats().buffered > MAX_BUFFERED {
            std::thread::sleep(Duration::from_millis(5));
        }
        let json = serde_json::to_vec(obs).unwrap();
        assert!(p.publish_obs(&obs.id(), ts, json), "dropped an observation");
    }
    let end = Timestamp::from_secs(WEEK_START + days * 86_400);
    let mut messages = 0;
    for p in publishers {
        p.end(end);
        let report = p.finish(Duration::from_secs(600));
        assert_eq!(report.stats.dropped, 0, "dropped messages");
        assert_eq!(report.buffered_unsent, 0, "unsent messages");
        messages += report.stats.acked + report.stats.duplicates;
    }
    println!(
        "published {} observations of {accounts} accounts over {days} days in {messages} messages",
        observations.len()
    );
}

/// The correlator's config and inventory.
fn write_files(out: &std::path::Path, accounts: u32) {
    let config = "[sensor]\nname = \"correlator\"\nlatitude = 39.04\nlongitude = -77.49\n\
                  country = \"US\"\n\n[network]\ninside = [\"10.8.0.0/14\"]\n\
                  vpn_pool = [\"10.8.0.0/14\"]\nconcentrators = [\"198.51.100.10\"]\n\n\
                  [correlate]\nsensors = [\"bench-a\", \"bench-b\"]\n";
    std::fs::write(out.join("farmwatch.toml"), config).unwrap();
    let mut inventory = String::new();
    for a in 0..accounts {
        let kind = if a % 10 == 9 {
            "employee"
        } else {
            "contractor"
        };
        let _ = write!(
            inventory,
            "[[account]]\nid = \"{}\"\nkind = \"{kind}\"\ndeclared_country = \"US\"\n\
             declared_timezone = \"America/New_York\"\n\n",
            name(a)
        );
    }
    std::fs::write(out.join("accounts.toml"), inventory).unwrap();
}

fn name(a: u32) -> String {
    format!("u{a:06}")
}

/// The account's VPN address in 10.8.0.0/14.
fn vpn(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 8, 0, 1)) + a))
}

/// Home addresses in Comcast's 73.0.0.0/8 (US); a farm's four accounts share the first's.
fn home(a: u32) -> IpAddr {
    let a = if a % 50 < 4 { a - a % 50 } else { a };
    IpAddr::V4(Ipv4Addr::new(73, (a >> 8) as u8, a as u8, 7))
}

/// Every observation of the week in packet-time order, with the sensor that sends it.
fn week(accounts: u32, days: u64) -> Vec<(usize, Observation)> {
    let mut list = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for day in 0..days {
        for a in 0..accounts {
            let sensor = (a % 2) as usize;
            // 09:00 New York is 14:00 UTC in November; logins spread over an hour.
            let login = WEEK_START + day * 86_400 + 13 * 3600 + next() % 3600;
            let public = if a % 100 == 42 && day == 3 {
                IpAddr::V4(Ipv4Addr::new(81, 2, 69, (a % 250) as u8 + 1))
            } else {
                home(a)
            };
            let radius = |ts: u64, status| Observation::Radius {
                ts: Timestamp::from_secs(ts),
                user: name(a),
                framed_ip: vpn(a),
                calling_station: Some(public.to_string()),
                status,
            };
            list.push((sensor, radius(login, SessionStatus::Start)));
            for hour in 1..=8 {
                let ts = Timestamp::from_secs(login + hour * 3600 - next() % 600);
                list.push((sensor, Observation::Activity { ts, host: vpn(a) }));
            }
            for _ in 0..2 {
                let ts = login + 60 + next() % (8 * 3600);
                let rtt_ns = 18_000_000 + next() % 40_000_000;
                let flow = FlowRef {
                    proto: "tcp",
                    src_ip: public,
                    src_port: 40_000 + (next() % 20_000) as u16,
                    dst_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)),
                    dst_port: 443,
                };
                list.push((
                    sensor,
                    Observation::HandshakeRtt {
                        ts: Timestamp::from_secs(ts),
                        client: public,
                        rtt_ns,
                        flow,
                    },
                ));
            }
            list.push((sensor, radius(login + 9 * 3600, SessionStatus::Stop)));
        }
    }
    list.sort_by_key(|(_, o)| o.ts());
    list
}
