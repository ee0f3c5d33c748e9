//! `rtt_distance`: the round trip to a client's public address against the great-circle
//! distance from the sensor to where geo places that address.
//!
//! The samples come from TCP connections on the VPN's outer side (a flow whose responder is
//! a concentrator, or whose originator is a public address an account connected from):
//! each handshake's SYN/ACK → ACK is one round trip between the sensor and the client, and
//! a long connection adds the stable floor of its passive in-session samples (`SessionRtt`:
//! data → ACK and the timestamp echo, counted as that many samples), so one OpenVPN-over-TCP
//! or RDP session is judged alone. The least of them is the path's propagation delay.
//!
//! Bounds, for a great-circle distance `d` between the sensor and the place, widened by
//! the place's uncertainty radius `r` (`d_min = d − r`, `d_max = d + r`):
//! - Nothing travels faster than light in vacuum (299,792 km/s): a round trip takes at
//!   least `2·d_min / 299.79 km/ms`. Below that the address cannot be where geo says
//!   (verdict `geo_wrong`, severity info: a data problem, not evidence against anyone).
//! - Light in fibre covers about 200 km/ms, so a round trip over a perfect fibre takes
//!   `d / 100 ms`. Real paths are longer than great circles and access lines add delay,
//!   so the expected ceiling is `rtt_stretch · d_max / 100 + rtt_allowance` (defaults 3
//!   and 40 ms: Chicago–Ashburn, ~960 km, may take up to 69 ms). Above that, over at
//!   least `rtt_min_samples` handshakes, the client sits behind a relay that forwards
//!   its packets from farther away (verdict `relayed`). A geostationary satellite line
//!   (≥ 480 ms) looks the same; low-orbit ones (Starlink, ~40 ms) stay within the
//!   allowance.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::detect::Scope;
use crate::detect::geo_anomaly::{GeoAnomalyConfig, position, round1};
use crate::detect::{Detector, Moment, Reason, Registered, Stage};
use crate::event::{Event, FlowRef, Kind, RttDistanceEvidence, Severity};
use crate::geo::{Location, LocationSource};
use crate::identity::PublicIpObservation;
use crate::observation::Observation;
use crate::timestamp::Timestamp;

/// Speed of light in vacuum, km per ms.
const C_VACUUM_KM_PER_MS: f64 = 299.792_458;
/// Round-trip kilometres of distance per ms over fibre (200 km/ms each way, there and back).
const FIBRE_KM_PER_RTT_MS: f64 = 100.0;
/// How long an address keeps its accounts and samples without news.
const MEMORY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What the RTT says about an address's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Faster than light over the distance: geo data is wrong for this address.
    GeoWrong,
    /// Far longer than any direct path: the client is behind a relay.
    Relayed,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::GeoWrong => "geo_wrong",
            Verdict::Relayed => "relayed",
        }
    }
}

/// The bounds for a place at `d_km ± radius_km` from the sensor, in ms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub vacuum_ms: f64,
    pub fibre_ms: f64,
    pub ceiling_ms: f64,
}

pub fn bounds(d_km: f64, radius_km: f64, stretch: f64, allowance_ms: f64) -> Bounds {
    let d_min = (d_km - radius_km).max(0.0);
    let d_max = d_km + radius_km;
    Bounds {
        vacuum_ms: 2.0 * d_min / C_VACUUM_KM_PER_MS,
        fibre_ms: d_km / FIBRE_KM_PER_RTT_MS,
        ceiling_ms: stretch * d_max / FIBRE_KM_PER_RTT_MS + allowance_ms,
    }
}

/// What is known about one client public address.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Probe {
    min_rtt_ns: Option<u64>,
    /// Handshakes and in-session samples.
    samples: u32,
    /// The in-session samples among them, and whether the least came from one.
    session_samples: u32,
    min_in_session: bool,
    /// The flow of the least sample.
    flow: Option<FlowRef>,
    /// Accounts seen connecting from here: when, and their inside address.
    accounts: BTreeMap<Arc<str>, (Timestamp, Option<IpAddr>)>,
    reported: BTreeSet<Arc<str>>,
    last: Timestamp,
}

/// Public addresses followed, and accounts remembered per address. Both come from the wire
/// (RADIUS Calling-Station-Id, outer handshakes): past either limit the entries seen
/// longest ago go, and are counted.
pub const MAX_ADDRESSES: usize = 100_000;
pub const MAX_ACCOUNTS_PER_ADDRESS: usize = 1024;

/// Saved in checkpoints without its config and position.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RttDistance {
    #[serde(skip)]
    config: GeoAnomalyConfig,
    #[serde(skip)]
    sensor: Option<Location>,
    probes: BTreeMap<IpAddr, Probe>,
    /// Addresses and accounts dropped at [`MAX_ADDRESSES`] and [`MAX_ACCOUNTS_PER_ADDRESS`].
    evicted: u64,
}

impl RttDistance {
    /// Without the sensor's coordinates there is nothing to measure from.
    pub fn new(config: &GeoAnomalyConfig, latitude: Option<f64>, longitude: Option<f64>) -> Self {
        let sensor = latitude.zip(longitude).map(|(lat, lon)| Location {
            lat,
            lon,
            radius_km: 0.0,
            source: LocationSource::City,
        });
        RttDistance {
            config: config.clone(),
            sensor,
            probes: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> (&'static str, u64) {
        ("rtt_distance_addresses", self.evicted)
    }

    /// The probe of `ip`, made room for at the limit.
    fn probe(&mut self, ip: IpAddr) -> &mut Probe {
        if !self.probes.contains_key(&ip) {
            self.evicted += crate::bounded::make_room(&mut self.probes, MAX_ADDRESSES, |p| p.last);
        }
        self.probes.entry(ip).or_default()
    }

    pub fn on_public_ip(
        &mut self,
        scope: &Scope<'_>,
        obs: &PublicIpObservation,
        out: &mut Vec<Event>,
    ) {
        if self.sensor.is_none() {
            return;
        }
        let mut evicted = 0;
        let p = self.probe(obs.public_ip);
        if !p.accounts.contains_key(&obs.account.id) {
            evicted = crate::bounded::make_room(&mut p.accounts, MAX_ACCOUNTS_PER_ADDRESS, |a| a.0);
            if evicted > 0 {
                // An account no longer remembered here is no longer remembered as reported.
                let accounts = &p.accounts;
                p.reported.retain(|a| accounts.contains_key(a));
            }
        }
        p.accounts
            .insert(obs.account.id.clone(), (obs.ts, obs.assigned_ip));
        p.last = p.last.max(obs.ts);
        self.evicted += evicted;
        self.judge(scope, obs.public_ip, obs.ts, out);
    }

    /// One handshake RTT of a connection `client` opened (the flow stage samples each
    /// outside client's TCP connection once): kept when `client` is on the outer side,
    /// reaching a concentrator or known as an account's public address.
    pub fn on_sample(
        &mut self,
        scope: &Scope<'_>,
        client: IpAddr,
        rtt: u64,
        flow: &FlowRef,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        self.add(scope, client, rtt, Sampled::Handshake, flow, ts, out);
    }

    /// One sample, or the floor of several, of the RTT to `client`.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        scope: &Scope<'_>,
        client: IpAddr,
        rtt: u64,
        sampled: Sampled,
        flow: &FlowRef,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        if self.sensor.is_none() {
            return;
        }
        let client = client.to_canonical();
        let outer = scope
            .network
            .concentrators
            .contains(&flow.dst_ip.to_canonical())
            || self.probes.contains_key(&client);
        if !outer || scope.network.is_inside(client) {
            return;
        }
        let p = self.probe(client);
        let n = match sampled {
            Sampled::Handshake => 1,
            Sampled::InSession(n) => {
                p.session_samples = p.session_samples.saturating_add(n);
                n
            }
        };
        p.samples = p.samples.saturating_add(n);
        p.last = p.last.max(ts);
        if p.min_rtt_ns.is_none_or(|m| rtt < m) {
            p.min_rtt_ns = Some(rtt);
            p.min_in_session = matches!(sampled, Sampled::InSession(_));
            p.flow = Some(flow.clone());
        }
        self.judge(scope, client, ts, out);
    }

    /// Reports the verdict on `ip` for each account seen there not yet told.
    fn judge(&mut self, scope: &Scope<'_>, ip: IpAddr, ts: Timestamp, out: &mut Vec<Event>) {
        let (Some(sensor), Some(p)) = (self.sensor, self.probes.get_mut(&ip)) else {
            return;
        };
        let Some(min_ns) = p.min_rtt_ns else {
            return;
        };
        if p.accounts.keys().all(|a| p.reported.contains(a)) {
            return;
        }
        let info = scope.geo.lookup(ip);
        let Some(place) = info.location else {
            return;
        };
        let d = sensor.distance_km(&place);
        let b = bounds(
            d,
            place.radius_km,
            self.config.rtt_stretch,
            self.config.rtt_allowance.as_secs_f64() * 1e3,
        );
        let rtt_ms = min_ns as f64 / 1e6;
        let verdict = if rtt_ms < b.vacuum_ms {
            Verdict::GeoWrong
        } else if rtt_ms > b.ceiling_ms && p.samples >= self.config.rtt_min_samples.max(1) {
            Verdict::Relayed
        } else {
            return;
        };
        let severity = match verdict {
            Verdict::GeoWrong => Severity::Info,
            Verdict::Relayed => Severity::Medium,
        };
        for (account, (_, host)) in &p.accounts {
            if !p.reported.insert(account.clone()) {
                continue;
            }
            let summary = match verdict {
                Verdict::Relayed => format!(
                    "Account {account}'s address {ip} answers in {rtt_ms:.1} ms, far above the {:.1} ms a client {d:.0} km away needs: it is behind a relay",
                    b.ceiling_ms
                ),
                Verdict::GeoWrong => format!(
                    "Account {account}'s address {ip} answers in {rtt_ms:.1} ms, faster than light over the {d:.0} km to where geo places it: the geo data is wrong"
                ),
            };
            let in_session = p.session_samples > 0;
            let evidence = RttDistanceEvidence {
                verdict: verdict.as_str().to_string(),
                public_ip: ip,
                min_rtt_ms: round3(rtt_ms),
                samples: u64::from(p.samples),
                distance_km: round1(d),
                position: position(&place),
                sensor: position(&sensor),
                vacuum_bound_ms: round3(b.vacuum_ms),
                fibre_bound_ms: round3(b.fibre_ms),
                ceiling_ms: round3(b.ceiling_ms),
                country: info.country.clone(),
                city: info.city.clone(),
                asn: info.asn,
                as_org: info.as_org.clone(),
                in_session_samples: in_session.then_some(p.session_samples),
                min_rtt_source: in_session.then(|| {
                    if p.min_in_session {
                        "in_session"
                    } else {
                        "handshake"
                    }
                    .to_string()
                }),
            };
            let mut e = Event::new(
                ts,
                Kind::GeoAnomaly,
                "rtt_distance",
                severity,
                &ip.to_string(),
            )
            .with(&evidence);
            e.account = Some(account.to_string());
            e.host = *host;
            e.flow = p.flow.clone();
            e.summary = summary;
            out.push(e);
        }
    }

    /// Forgets addresses with no news for a week.
    pub fn expire(&mut self, now: Timestamp) {
        self.probes.retain(|_, p| now.since(p.last) < MEMORY);
    }
}

/// Where a sample came from.
#[derive(Clone, Copy)]
enum Sampled {
    Handshake,
    /// The stable floor of this many passive samples inside one connection.
    InSession(u32),
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// An RTT far above what the distance needs: a relay.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Account,
    reasons: &[Reason {
        name: "rtt_distance",
        weight: 25.0,
    }],
    new: |c| {
        Box::new(RttDistance::new(
            &c.detect.geo,
            c.sensor.latitude,
            c.sensor.longitude,
        ))
    },
};

impl Detector for RttDistance {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::PublicIp(obs) => self.on_public_ip(scope, obs, out),
            Moment::Observed(Observation::HandshakeRtt {
                ts,
                client,
                rtt_ns,
                flow,
            }) => self.on_sample(scope, *client, *rtt_ns, flow, *ts, out),
            Moment::Observed(Observation::SessionRtt {
                ts,
                client,
                rtt_ns,
                samples,
                flow,
                ..
            }) => self.add(
                scope,
                *client,
                *rtt_ns,
                Sampled::InSession(*samples),
                flow,
                *ts,
                out,
            ),
            Moment::Hour(now) => self.expire(now),
            _ => {}
        }
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![RttDistance::evictions(self)]
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        crate::state::encode(self)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: RttDistance = crate::state::decode(state)?;
        crate::state::within("addresses", saved.probes.len(), MAX_ADDRESSES)?;
        for p in saved.probes.values() {
            crate::state::within("accounts", p.accounts.len(), MAX_ACCOUNTS_PER_ADDRESS)?;
        }
        self.probes = saved.probes;
        self.evicted = saved.evicted;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_chicago_from_ashburn() {
        let ashburn = Location {
            lat: 39.04,
            lon: -77.49,
            radius_km: 0.0,
            source: LocationSource::City,
        };
        let chicago = Location {
            lat: 41.8781,
            lon: -87.6298,
            radius_km: 20.0,
            source: LocationSource::City,
        };
        let d = ashburn.distance_km(&chicago);
        assert!((d - 919.0).abs() < 10.0, "{d}");
        let b = bounds(d, 20.0, 3.0, 40.0);
        // 2·899 km / 299.79 km/ms; 919 km / 100; 3·939 / 100 + 40.
        assert!((b.vacuum_ms - 2.0 * (d - 20.0) / 299.792_458).abs() < 1e-9);
        assert!((b.fibre_ms - d / 100.0).abs() < 1e-9);
        assert!((b.ceiling_ms - (3.0 * (d + 20.0) / 100.0 + 40.0)).abs() < 1e-9);
        assert!(b.vacuum_ms < 6.1 && b.ceiling_ms > 68.0 && b.ceiling_ms < 69.0);
    }

    #[test]
    fn a_radius_wider_than_the_distance_has_no_lower_bound() {
        let b = bounds(300.0, 2600.0, 3.0, 40.0);
        assert_eq!(b.vacuum_ms, 0.0);
        assert!((b.ceiling_ms - (3.0 * 2900.0 / 100.0 + 40.0)).abs() < 1e-9);
    }
}
