//! `operator_latency`: the person at an inbound remote-desktop or SSH session is farther
//! from the sensor than anyone in the account's declared country would be.
//!
//! The flow stage measures each session's latency floor (`flows::latency`): the round
//! trip from the sensor to the person's screen or keyboard, through any relay. "Far" is
//! against the *domestic ceiling* of the account's declared country, in this order:
//! - configured: `[detect.operator_latency] ceilings = { US = 80 }`;
//! - learned from this sensor's own traffic: the RTTs of outside clients, from their TCP
//!   handshakes (`HandshakeRtt`) and from inside their long sessions (`SessionRtt`: a VPN
//!   or remote-desktop connection picked up mid-stream has no handshake), one floor per
//!   address (the least of both), grouped by the country geo places the address in; once
//!   `learn_min_addresses` addresses of a country are known, its ceiling is their 90th
//!   percentile plus `learn_allowance_ms`;
//! - otherwise `default_ceiling_ms` (80 ms: coast to coast in the US or across Europe).
//!
//! Handshakes this sensor's hosts open to public servers are not learned: a server geo
//! places in a country is often a CDN or anycast address answered by the edge nearest the
//! sensor, so their RTTs would set a ceiling far below the country's real paths and flag
//! domestic people working from across it.
//!
//! Light in fibre covers about 200 km/ms, so a floor of `f` ms puts the person at least
//! `f · 100` km from the sensor (round trip).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::app::App;
use crate::detect::{Detector, Moment, Reason, Registered, Scope, Stage};
use crate::event::{Event, FlowRef, Kind, OperatorLatencyEvidence, Severity};
use crate::observation::Observation;
use crate::timestamp::Timestamp;

/// Round-trip kilometres per ms over fibre (200 km/ms each way).
const FIBRE_KM_PER_RTT_MS: f64 = 100.0;
/// Addresses remembered per country for the learned ceiling; past it, the least recently
/// sampled goes (counted).
pub const MAX_ADDRESSES_PER_COUNTRY: usize = 4096;

/// The longest round trip a network path gives, ms: half the Earth's circumference each way
/// in fibre (about 200 ms) plus a geostationary satellite hop (about 550 ms), with room to
/// spare. A floor above it is not judged.
pub const MAX_ROUND_TRIP_MS: f64 = 1_000.0;

/// `[detect.operator_latency]` in farmwatch.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorLatencyConfig {
    /// The domestic ceiling of a country nothing is configured or learned for, ms.
    pub default_ceiling_ms: f64,
    /// Configured domestic ceilings by ISO country code, ms: they win over learned ones.
    pub ceilings: BTreeMap<String, f64>,
    /// Outside addresses of a country needed before its ceiling is learned.
    pub learn_min_addresses: usize,
    /// Added to the 90th percentile of a country's address floors.
    pub learn_allowance_ms: f64,
    /// Answers a session needs before its floor is judged.
    pub min_exchanges: u32,
}

impl Default for OperatorLatencyConfig {
    fn default() -> Self {
        OperatorLatencyConfig {
            default_ceiling_ms: 80.0,
            ceilings: BTreeMap::new(),
            learn_min_addresses: 20,
            learn_allowance_ms: 10.0,
            min_exchanges: 2,
        }
    }
}

impl OperatorLatencyConfig {
    pub fn validate(&self) -> Result<(), String> {
        super::check::positive("default_ceiling_ms", self.default_ceiling_ms)?;
        for (country, ms) in &self.ceilings {
            super::check::positive(&format!("ceilings.{country}"), *ms)?;
        }
        super::check::not_zero("learn_min_addresses", self.learn_min_addresses)?;
        super::check::not_zero("min_exchanges", self.min_exchanges)
    }
}

/// Saved in checkpoints without its config.
#[derive(serde::Serialize, Deserialize)]
pub struct OperatorLatency {
    #[serde(skip)]
    config: OperatorLatencyConfig,
    /// Per country, per outside client address: its least RTT (handshake or in-session)
    /// and when last sampled.
    floors: BTreeMap<String, BTreeMap<IpAddr, (u64, Timestamp)>>,
    evicted: u64,
}

/// A far operator: the highest weight of the geo reasons, since it is measured inside the
/// session itself.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Account,
    reasons: &[Reason {
        name: "operator_latency",
        weight: 30.0,
    }],
    new: |c| Box::new(OperatorLatency::new(&c.detect.operator_latency)),
};

impl OperatorLatency {
    pub fn new(config: &OperatorLatencyConfig) -> OperatorLatency {
        OperatorLatency {
            config: config.clone(),
            floors: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// The domestic ceiling of `country` and where it came from.
    pub fn ceiling(&self, country: &str) -> (f64, String) {
        if let Some(ms) = self.config.ceilings.get(country) {
            return (*ms, "configured".to_string());
        }
        if let Some(floors) = self.floors.get(country)
            && floors.len() >= self.config.learn_min_addresses
        {
            let mut v: Vec<u64> = floors.values().map(|(ns, _)| *ns).collect();
            v.sort_unstable();
            let p90 = v[(v.len() * 9 / 10).min(v.len() - 1)] as f64 / 1e6;
            return (
                p90 + self.config.learn_allowance_ms,
                format!("learned from {} addresses in {country}", v.len()),
            );
        }
        (self.config.default_ceiling_ms, "default".to_string())
    }

    /// One RTT to an outside client, from its handshake or from inside its session: the
    /// address keeps the least of all it gave.
    fn learn(&mut self, scope: &Scope<'_>, client: IpAddr, rtt_ns: u64, ts: Timestamp) {
        if scope.network.is_inside(client) {
            return;
        }
        let Some(country) = scope.geo.lookup(client).country else {
            return;
        };
        let map = self.floors.entry(country).or_default();
        if !map.contains_key(&client) {
            self.evicted +=
                crate::bounded::make_room(map, MAX_ADDRESSES_PER_COUNTRY, |(_, seen)| *seen);
        }
        let e = map.entry(client).or_insert((rtt_ns, ts));
        *e = (e.0.min(rtt_ns), ts);
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        scope: &Scope<'_>,
        ts: Timestamp,
        host: IpAddr,
        viewer: IpAddr,
        app: App,
        floor_ms: f64,
        exchanges: u32,
        leg_ms: Option<f64>,
        relay: bool,
        flow: &FlowRef,
        out: &mut Vec<Event>,
    ) {
        // A floor beyond any network path is not a round trip: the viewer answered
        // something later (an idle session, a pause), and it says nothing about distance.
        if exchanges < self.config.min_exchanges || floor_ms > MAX_ROUND_TRIP_MS {
            return;
        }
        let Some(account) = scope.identity.account_at(host, ts) else {
            return;
        };
        let Some(country) = scope
            .identity
            .inventory()
            .get(&account.id)
            .and_then(|a| a.declared_country.clone())
        else {
            return;
        };
        let (ceiling_ms, source) = self.ceiling(&country);
        if floor_ms <= ceiling_ms {
            return;
        }
        let margin = floor_ms / ceiling_ms;
        let severity = match (margin >= 2.0, exchanges >= 10) {
            (true, true) => Severity::High,
            (true, false) | (false, true) => Severity::Medium,
            (false, false) => Severity::Low,
        };
        let min_km = floor_ms * FIBRE_KM_PER_RTT_MS;
        let via = if relay {
            format!(
                " through a relay at {viewer} ({:.1} ms away)",
                leg_ms.unwrap_or_default()
            )
        } else {
            String::new()
        };
        let mut e = Event::new(
            ts,
            Kind::GeoAnomaly,
            "operator_latency",
            severity,
            &format!("{host} {viewer} {}", app.as_str()),
        )
        .with(&OperatorLatencyEvidence {
            app,
            viewer,
            floor_ms,
            exchanges,
            relay,
            declared_country: country.clone(),
            domestic_ceiling_ms: (ceiling_ms * 1e3).round() / 1e3,
            ceiling_source: source.clone(),
            min_distance_km: min_km.round(),
            outside_leg_ms: leg_ms,
        });
        e.account = Some(account.id.to_string());
        e.host = Some(host);
        e.app = Some(app);
        e.flow = Some(flow.clone());
        let app = app.as_str();
        e.summary = format!(
            "The person at {app} on {host} is {floor_ms:.1} ms away over {exchanges} exchanges{via}, above {country}'s domestic ceiling of {ceiling_ms:.1} ms ({source}): at least {min_km:.0} km from the sensor"
        );
        out.push(e);
    }
}

impl Detector for OperatorLatency {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::Observed(
                Observation::HandshakeRtt {
                    ts, client, rtt_ns, ..
                }
                | Observation::SessionRtt {
                    ts, client, rtt_ns, ..
                },
            ) => self.learn(scope, *client, *rtt_ns, *ts),
            Moment::Observed(Observation::LatencyFloor {
                ts,
                host,
                viewer,
                app,
                floor_ms,
                exchanges,
                outside_leg_ms,
                relay,
                flow,
            }) => self.judge(
                scope,
                *ts,
                *host,
                *viewer,
                *app,
                *floor_ms,
                *exchanges,
                *outside_leg_ms,
                *relay,
                flow,
                out,
            ),
            _ => {}
        }
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![("operator_latency_addresses", self.evicted)]
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        crate::state::encode(self)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: OperatorLatency = crate::state::decode(state)?;
        for floors in saved.floors.values() {
            crate::state::within("addresses", floors.len(), MAX_ADDRESSES_PER_COUNTRY)?;
        }
        self.floors = saved.floors;
        self.evicted = saved.evicted;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::remote_desktop::testkit::{MS, World};

    fn flow(client: IpAddr) -> FlowRef {
        FlowRef {
            proto: "tcp",
            src_ip: client,
            src_port: 40000,
            dst_ip: IpAddr::from([10, 8, 0, 12]),
            dst_port: 1194,
        }
    }

    /// An address's handshake and in-session RTTs give it one floor, the least; an address
    /// geo places nowhere teaches nothing.
    #[test]
    fn each_address_keeps_its_least_rtt_from_either_source() {
        let world = World::new();
        let mut d = OperatorLatency::new(&OperatorLatencyConfig {
            learn_min_addresses: 2,
            ..Default::default()
        });
        let us = |last: u8| IpAddr::from([192, 0, 2, last]);
        let handshake = |client, ms| Observation::HandshakeRtt {
            ts: Timestamp(0),
            client,
            rtt_ns: ms * MS,
            flow: flow(client),
        };
        let session = |client, ms| Observation::SessionRtt {
            ts: Timestamp(0),
            client,
            rtt_ns: ms * MS,
            samples: 16,
            data_ack_ns: Some(ms * MS),
            ts_echo_ns: None,
            flow: flow(client),
        };
        let seen = [
            handshake(us(1), 30),
            session(us(1), 12),
            session(us(2), 8),
            handshake(us(2), 20),
            session(IpAddr::from([198, 51, 100, 20]), 1),
        ];
        let mut out = Vec::new();
        for o in &seen {
            d.on(&Moment::Observed(o), &world.scope(), &mut out);
        }
        let floors: Vec<u64> = d.floors["US"].values().map(|(ns, _)| ns / MS).collect();
        assert_eq!(floors, [12, 8]);
        assert_eq!(d.floors.len(), 1);
        assert_eq!(
            d.ceiling("US"),
            (22.0, "learned from 2 addresses in US".into())
        );
        assert!(out.is_empty());
    }

    #[test]
    fn configured_ceilings_win_then_learned_then_default() {
        let mut config = OperatorLatencyConfig {
            learn_min_addresses: 3,
            ..Default::default()
        };
        config.ceilings.insert("DE".into(), 30.0);
        let mut d = OperatorLatency::new(&config);
        for (i, ms) in [12u64, 20, 25].into_iter().enumerate() {
            d.floors.entry("US".into()).or_default().insert(
                IpAddr::from([198, 51, 100, i as u8]),
                (ms * 1_000_000, Timestamp(0)),
            );
        }
        assert_eq!(d.ceiling("DE"), (30.0, "configured".into()));
        assert_eq!(
            d.ceiling("US"),
            (35.0, "learned from 3 addresses in US".into())
        );
        assert_eq!(d.ceiling("FR"), (80.0, "default".into()));
    }
}
