//! `relay_chain` / `shared_relay`: one responder-side relay that hosts of several accounts
//! reach. `rtt_split` judges a responder per inside host, in the flow stage (partitioned by
//! host, so a relay used by many hosts is judged once for each, none seeing the others).
//! The account stage sees every host's `rtt_split` findings, so it judges across hosts: a
//! relay address whose connections are split from the hosts of `shared_min_accounts`
//! accounts is a vendor's relay or a facilitator's, used for several people's sessions —
//! stronger evidence than one host's repetition, and found before any one host has
//! `min_connections` of its own.
//!
//! A host agrees when its `rtt_split` finding on the responder side has at least
//! `shared_min_connections` connections to the relay in the window and their low quantile
//! still reaches `min_extra` (so one slow answer from a busy server does not count: a
//! benign server crossed on 2.5 % of connections). The settings are `[detect.rtt_split]`'s.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::detect::rtt_split::RttSplitConfig;
use crate::detect::{Detector, Moment, Reason, Registered, Scope, Stage};
use crate::event::{Event, Kind, Severity};
use crate::observation::Observation;
use crate::timestamp::Timestamp;

use super::remote_desktop::{round2, with_place};

/// One host's agreement that an address is a relay: its latest finding.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Agreement {
    at: Timestamp,
    account: String,
    connections: u64,
    low_quantile_extra_ms: f64,
}

/// The hosts that agree on one relay, and the accounts already told.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Relay {
    hosts: BTreeMap<IpAddr, Agreement>,
    reported: BTreeMap<String, Timestamp>,
}

impl Relay {
    fn seen(&self) -> Timestamp {
        self.hosts.values().map(|a| a.at).max().unwrap_or_default()
    }
}

/// Saved in checkpoints without its config.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SharedRelay {
    #[serde(skip)]
    config: RttSplitConfig,
    relays: BTreeMap<IpAddr, Relay>,
    /// Relays dropped at `max_relays` (the least recently agreed on go).
    evicted: u64,
}

/// A relay several accounts share: above a single host's repeated `rtt_split`.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Account,
    reasons: &[Reason {
        name: "shared_relay",
        weight: 30.0,
    }],
    new: |c| Box::new(SharedRelay::new(&c.detect.rtt_split)),
};

/// What a responder-side `rtt_split` finding says: (host, relay, connections, low
/// quantile ms, min_extra ms).
fn responder_split(e: &Event) -> Option<(IpAddr, IpAddr, u64, f64, f64)> {
    if e.reason != "rtt_split" || e.evidence.get("relay_side")? != "responder" {
        return None;
    }
    let relay = e.evidence.get("relay")?.as_str()?.parse().ok()?;
    let number = |k: &str| e.evidence.get(k).and_then(Value::as_f64);
    Some((
        e.host?,
        relay,
        e.evidence.get("connections")?.as_u64()?,
        number("low_quantile_extra_ms")?,
        number("min_extra_ms")?,
    ))
}

impl SharedRelay {
    pub fn new(config: &RttSplitConfig) -> SharedRelay {
        SharedRelay {
            config: config.clone(),
            relays: BTreeMap::new(),
            evicted: 0,
        }
    }

    fn on_finding(&mut self, scope: &Scope<'_>, e: &Event, out: &mut Vec<Event>) {
        let Some((host, relay, connections, low_ms, min_extra_ms)) = responder_split(e) else {
            return;
        };
        if connections < self.config.shared_min_connections as u64 || low_ms < min_extra_ms {
            return;
        }
        let Some(account) = scope.identity.account_at(host, e.ts) else {
            return;
        };
        let ts = e.ts;
        if !self.relays.contains_key(&relay) {
            self.evicted +=
                crate::bounded::make_room(&mut self.relays, self.config.max_relays, Relay::seen);
        }
        let window = self.config.window;
        let r = self.relays.entry(relay).or_default();
        r.hosts.retain(|_, a| ts.since(a.at) <= window);
        r.reported.retain(|_, t| ts.since(*t) <= window);
        r.hosts.insert(
            host,
            Agreement {
                at: ts,
                account: account.id.to_string(),
                connections,
                low_quantile_extra_ms: low_ms,
            },
        );
        let mut accounts: BTreeMap<&str, (IpAddr, &Agreement)> = BTreeMap::new();
        for (h, a) in &r.hosts {
            let latest = accounts.entry(&a.account).or_insert((*h, a));
            if a.at > latest.1.at {
                *latest = (*h, a);
            }
        }
        if accounts.len() < self.config.shared_min_accounts {
            return;
        }
        let hosts: Vec<Value> = (r.hosts.iter())
            .map(|(h, a)| {
                json!({
                    "host": h.to_string(),
                    "account": a.account,
                    "connections": a.connections,
                    "low_quantile_extra_ms": round2(a.low_quantile_extra_ms),
                })
            })
            .collect();
        let fresh: Vec<(String, IpAddr)> = (accounts.iter())
            .filter(|(id, _)| !r.reported.contains_key(**id))
            .map(|(id, (h, _))| (id.to_string(), *h))
            .collect();
        let n = accounts.len();
        for (id, h) in fresh {
            r.reported.insert(id.clone(), ts);
            let mut ev = Event::new(ts, Kind::RelayChain, "shared_relay", Severity::High, &id);
            ev.host = Some(h);
            ev.account = Some(id);
            ev.summary = format!(
                "hosts of {n} accounts reach {relay}, and from each the application round trip toward it is far longer than the TCP round trip: one relay shared across accounts"
            );
            ev = ev
                .evidence("accounts", n)
                .evidence("hosts", json!(hosts))
                .evidence("shared_min_accounts", self.config.shared_min_accounts)
                .evidence("shared_min_connections", self.config.shared_min_connections)
                .evidence("window_s", self.config.window.as_secs());
            out.push(with_place(scope, ev, "relay", relay));
        }
    }

    /// Lets go of agreements older than the window, and of relays left with none.
    fn expire(&mut self, now: Timestamp) {
        let window = self.config.window;
        self.relays.retain(|_, r| {
            r.hosts.retain(|_, a| now.since(a.at) <= window);
            r.reported.retain(|_, t| now.since(*t) <= window);
            !r.hosts.is_empty()
        });
    }
}

impl Detector for SharedRelay {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match moment {
            Moment::Observed(Observation::Finding { event }) => self.on_finding(scope, event, out),
            Moment::Hour(now) => self.expire(*now),
            _ => {}
        }
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![("shared_relay_relays", self.evicted)]
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        crate::state::encode(self)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: SharedRelay = crate::state::decode(state)?;
        crate::state::within("relays", saved.relays.len(), self.config.max_relays)?;
        self.relays = saved.relays;
        self.evicted = saved.evicted;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::accounts::Inventory;
    use crate::detect::remote_desktop::testkit::{MIN, SEC, T0, World};
    use crate::geo::{Geo, GeoConfig};
    use crate::identity::Identity;

    const RELAY: &str = "192.0.2.30";

    /// Contractors a (10.8.0.12, 10.8.0.14) and b (10.8.0.13).
    fn identity() -> Identity {
        let text = "[[account]]\nid = \"a\"\nkind = \"contractor\"\nhosts = [\"10.8.0.12\", \"10.8.0.14\"]\n\n\
                    [[account]]\nid = \"b\"\nkind = \"contractor\"\nhosts = [\"10.8.0.13\"]\n";
        Identity::new(Arc::new(Inventory::parse(text, "test").unwrap()))
    }

    /// rtt_split's finding about `host` on `side`: `connections` to the relay, their low
    /// quantile `low_ms` (min_extra 50 ms).
    fn split(at: u64, host: &str, side: &str, connections: u64, low_ms: f64) -> Observation {
        let e = Event::new(
            Timestamp(at),
            Kind::RelayChain,
            "rtt_split",
            Severity::Low,
            side,
        );
        let mut e = e
            .evidence("relay_side", side)
            .evidence("relay", RELAY)
            .evidence("connections", connections)
            .evidence("low_quantile_extra_ms", low_ms)
            .evidence("min_extra_ms", 50);
        e.host = Some(host.parse().unwrap());
        Observation::Finding { event: Box::new(e) }
    }

    /// Feeds the observations to one detector; the findings in order.
    fn run(observations: &[Observation]) -> Vec<Event> {
        run_with(&RttSplitConfig::default(), observations).0
    }

    /// The same with `config`; also the detector's evictions.
    fn run_with(config: &RttSplitConfig, observations: &[Observation]) -> (Vec<Event>, u64) {
        let world = World::new();
        let identity = identity();
        let geo = Geo::open(&GeoConfig::default()).unwrap();
        let scope = Scope {
            network: &world.network,
            identity: &identity,
            geo: &geo,
            sessions: None,
        };
        let mut d = SharedRelay::new(config);
        let mut out = Vec::new();
        for o in observations {
            d.on(&Moment::Observed(o), &scope, &mut out);
        }
        (out, d.evicted)
    }

    #[test]
    fn two_accounts_agreeing_on_a_relay_are_each_told_once() {
        let out = run(&[
            split(T0, "10.8.0.12", "responder", 2, 240.0),
            split(T0 + MIN, "10.8.0.13", "responder", 2, 250.0),
            split(T0 + 2 * MIN, "10.8.0.13", "responder", 3, 250.0),
        ]);
        let told: Vec<_> = out.iter().map(|e| e.account.as_deref().unwrap()).collect();
        assert_eq!(told, ["a", "b"]);
        let e = &out[0];
        assert_eq!((e.reason, e.severity), ("shared_relay", Severity::High));
        assert_eq!(e.host, Some("10.8.0.12".parse().unwrap()));
        assert_eq!(e.evidence["relay"], RELAY);
        assert_eq!(e.evidence["accounts"], 2);
        assert_eq!(e.evidence["hosts"][1]["low_quantile_extra_ms"], 250.0);
        assert!(e.flow.is_none(), "an account-stage event has no flow");
    }

    #[test]
    fn hosts_of_one_account_or_weak_agreement_are_not_enough() {
        // Two hosts of one account.
        let one_account = [
            split(T0, "10.8.0.12", "responder", 2, 240.0),
            split(T0 + SEC, "10.8.0.14", "responder", 2, 240.0),
        ];
        assert!(run(&one_account).is_empty());
        // b's single slow connection, b's fast low quantile, b on the originator side, b
        // with no account (10.8.0.15), b an hour and more after a: none agrees with a.
        for b in [
            split(T0 + SEC, "10.8.0.13", "responder", 1, 240.0),
            split(T0 + SEC, "10.8.0.13", "responder", 4, 3.0),
            split(T0 + SEC, "10.8.0.13", "originator", 2, 240.0),
            split(T0 + SEC, "10.8.0.15", "responder", 2, 240.0),
            split(T0 + 61 * MIN, "10.8.0.13", "responder", 2, 240.0),
        ] {
            let out = run(&[split(T0, "10.8.0.12", "responder", 2, 240.0), b]);
            assert!(out.is_empty(), "{out:?}");
        }
    }

    #[test]
    fn relays_beyond_the_limit_are_evicted_and_counted() {
        let config = RttSplitConfig {
            max_relays: 1,
            ..RttSplitConfig::default()
        };
        let mut other = split(T0 + SEC, "10.8.0.13", "responder", 2, 240.0);
        if let Observation::Finding { event } = &mut other {
            event.evidence.insert("relay".into(), "192.0.2.31".into());
        }
        // a's relay goes to make room for the other: b does not meet a there.
        let (out, evicted) = run_with(
            &config,
            &[
                split(T0, "10.8.0.12", "responder", 2, 240.0),
                other,
                split(T0 + 2 * SEC, "10.8.0.13", "responder", 2, 240.0),
            ],
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(evicted, 2);
    }
}
