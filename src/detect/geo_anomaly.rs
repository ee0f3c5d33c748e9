//! Where an account connects from: `disallowed_country` (outside the account's allowed
//! countries), `high_risk_country` (`[geoip] high_risk_countries`), `hosting_asn` (a
//! hosting, VPN or proxy network rather than a home or office line) and
//! `impossible_travel` (two consecutive public addresses farther apart than anyone can
//! travel in the time between them).
//!
//! Input is the public-address observations of the session feed and RADIUS accounting,
//! in packet-time order. A finding about one account and one subject (a country, an
//! ASN, a pair of addresses) is repeated at most once per `repeat_after`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::accounts::AccountKind;
use crate::detect::Scope;
use crate::detect::{Detector, Moment, Reason, Registered, Stage};
use crate::event::{Event, Kind, Position, Severity};
use crate::flows::humantime_serde;
use crate::geo::{GeoInfo, Location, LocationSource};
use crate::identity::PublicIpObservation;
use crate::timestamp::Timestamp;

/// Half the Earth's circumference (mean radius 6371.0088 km): the farthest two places are.
const HALF_CIRCUMFERENCE_KM: f64 = std::f64::consts::PI * 6371.0088;

/// `[detect.geo]` in farmwatch.toml (shared with `rtt_distance`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoAnomalyConfig {
    /// The same finding (account, reason, subject) is reported again after this long.
    #[serde(with = "humantime_serde")]
    pub repeat_after: Duration,
    /// Fastest plausible travel between two public addresses. 900 km/h is an airliner's
    /// cruising speed; door to door is slower, so this errs towards silence.
    #[serde(deserialize_with = "positive")]
    pub max_speed_kmh: f64,
    /// `rtt_distance`: handshakes needed before an RTT is called too long (the minimum of
    /// several is the path's propagation delay; one may have queued).
    pub rtt_min_samples: u32,
    /// `rtt_distance`: how much longer than the great circle an Internet path may be.
    #[serde(deserialize_with = "positive")]
    pub rtt_stretch: f64,
    /// `rtt_distance`: delay every path may add on top (access line, Wi-Fi, the
    /// client's own stack).
    #[serde(with = "humantime_serde")]
    pub rtt_allowance: Duration,
}

impl Default for GeoAnomalyConfig {
    fn default() -> GeoAnomalyConfig {
        GeoAnomalyConfig {
            repeat_after: Duration::from_secs(24 * 3600),
            max_speed_kmh: 900.0,
            rtt_min_samples: 3,
            rtt_stretch: 3.0,
            rtt_allowance: Duration::from_millis(40),
        }
    }
}

impl GeoAnomalyConfig {
    /// See [`super::check`]; `rtt_allowance` may be zero.
    pub fn validate(&self) -> Result<(), String> {
        use super::check::{not_zero, positive};
        not_zero("repeat_after", self.repeat_after)?;
        positive("max_speed_kmh", self.max_speed_kmh)?;
        not_zero("rtt_min_samples", self.rtt_min_samples)?;
        positive("rtt_stretch", self.rtt_stretch)
    }
}

/// A finite number above zero, for factors and speeds.
pub(crate) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "{v} must be a number above 0"
        )))
    }
}

/// Where an account was last seen.
#[derive(Serialize, Deserialize)]
struct Seen {
    ts: Timestamp,
    ip: IpAddr,
    country: Option<String>,
    location: Option<Location>,
}

/// Accounts whose last position is kept, and (account, reason, subject) reports
/// remembered; accounts come from the wire, so past either limit the entries seen longest
/// ago go, and are counted.
pub const MAX_ACCOUNTS: usize = 100_000;
pub const MAX_REPORTED: usize = 100_000;

/// Saved in checkpoints without its config.
#[derive(Serialize, Deserialize)]
pub struct GeoAnomaly {
    #[serde(skip)]
    config: GeoAnomalyConfig,
    last: BTreeMap<Arc<str>, Seen>,
    /// When each (account, reason, subject) was last reported.
    #[serde(with = "reported")]
    reported: BTreeMap<(Arc<str>, &'static str, String), Timestamp>,
    /// Entries dropped at [`MAX_ACCOUNTS`] and [`MAX_REPORTED`].
    evicted_accounts: u64,
    evicted_reported: u64,
}

impl GeoAnomaly {
    pub fn new(config: &GeoAnomalyConfig) -> GeoAnomaly {
        GeoAnomaly {
            config: config.clone(),
            last: BTreeMap::new(),
            reported: BTreeMap::new(),
            evicted_accounts: 0,
            evicted_reported: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> [(&'static str, u64); 2] {
        [
            ("geo_anomaly_accounts", self.evicted_accounts),
            ("geo_anomaly_reported", self.evicted_reported),
        ]
    }

    pub fn on_public_ip(
        &mut self,
        scope: &Scope<'_>,
        obs: &PublicIpObservation,
        out: &mut Vec<Event>,
    ) {
        let info = scope.geo.lookup(obs.public_ip);
        let id = obs.account.id.clone();
        let inventory = scope.identity.inventory();
        let account = inventory.get(&id);
        if let Some(country) = &info.country {
            if let Some(a) = account
                && !a.allowed_countries.is_empty()
                && !a.allowed_countries.contains(country)
            {
                let summary = format!(
                    "Account {id} connected from {country} ({}), outside its allowed countries {}",
                    obs.public_ip,
                    a.allowed_countries.join(", ")
                );
                let e = observed(obs, "disallowed_country", Severity::Medium, &info, summary)
                    .evidence("allowed_countries", a.allowed_countries.clone());
                self.report(e, country.clone(), out);
            }
            if scope.geo.is_high_risk(country) {
                let summary = format!(
                    "Account {id} connected from high-risk country {country} ({})",
                    obs.public_ip
                );
                let e = observed(obs, "high_risk_country", Severity::High, &info, summary);
                self.report(e, country.clone(), out);
            }
        }
        // Service accounts are machines; a data centre is where they live.
        if obs.account.kind != Some(AccountKind::Service)
            && let Some(asn) = info.asn
            && let Some(category) = scope.geo.asn_category(asn)
        {
            let summary = format!(
                "Account {id} connected from {} network AS{asn} {} ({})",
                category.as_str(),
                info.as_org.as_deref().unwrap_or(""),
                obs.public_ip
            );
            let e = observed(obs, "hosting_asn", Severity::Low, &info, summary)
                .evidence("category", category.as_str());
            self.report(e, format!("AS{asn}"), out);
        }
        let now = Seen {
            ts: obs.ts,
            ip: obs.public_ip,
            country: info.country.clone(),
            location: info.location,
        };
        if let Some(before) = self.last.get(&id)
            && let Some(e) = self.travel(obs, before, &now, &info)
        {
            let subject = format!("{}>{}", before.ip, now.ip);
            self.report(e, subject, out);
        }
        if !self.last.contains_key(&id) {
            self.evicted_accounts +=
                crate::bounded::make_room(&mut self.last, MAX_ACCOUNTS, |seen| seen.ts);
        }
        self.last.insert(id, now);
    }

    /// `impossible_travel` from `before` to `now`, if the least distance the two
    /// positions allow (their uncertainty radii taken off) is more than the fastest
    /// plausible speed covers in the time between them.
    fn travel(
        &self,
        obs: &PublicIpObservation,
        before: &Seen,
        now: &Seen,
        info: &GeoInfo,
    ) -> Option<Event> {
        if before.ip == now.ip {
            return None;
        }
        let (from, to) = (before.location?, now.location?);
        let km = from.min_distance_km(&to);
        let hours = now.ts.since(before.ts).as_secs_f64() / 3600.0;
        if km <= self.config.max_speed_kmh * hours || km <= 0.0 {
            return None;
        }
        let speed = (hours > 0.0).then(|| round1(km / hours));
        let summary = format!(
            "Account {} moved from {} ({}) to {} ({}): at least {:.0} km in {:.1} h",
            obs.account.id,
            before.ip,
            before.country.as_deref().unwrap_or("?"),
            now.ip,
            now.country.as_deref().unwrap_or("?"),
            km,
            hours
        );
        Some(
            observed(obs, "impossible_travel", Severity::Medium, info, summary)
                .evidence("from_ip", before.ip.to_string())
                .evidence("from_country", before.country.clone())
                .evidence("from_ts", before.ts.rfc3339())
                .evidence("from_position", serde_json::json!(position(&from)))
                .evidence("to_position", serde_json::json!(position(&to)))
                .evidence("distance_km", round1(km))
                .evidence("hours", round1(hours))
                .evidence("speed_kmh", speed)
                .evidence("max_speed_kmh", self.config.max_speed_kmh),
        )
    }

    /// Emits `e` unless the same account, reason and subject was reported less than
    /// `repeat_after` ago.
    fn report(&mut self, mut e: Event, subject: String, out: &mut Vec<Event>) {
        let Some(account) = e.account.as_deref() else {
            return;
        };
        let k = (Arc::from(account), e.reason, subject);
        if let Some(at) = self.reported.get(&k)
            && e.ts.since(*at) < self.config.repeat_after
        {
            return;
        }
        e.key = format!("{}|{}", k.2, e.ts.as_nanos());
        if !self.reported.contains_key(&k) {
            self.evicted_reported +=
                crate::bounded::make_room(&mut self.reported, MAX_REPORTED, |at| *at);
        }
        self.reported.insert(k, e.ts);
        out.push(e);
    }

    /// Forgets reports older than `repeat_after`, and positions too old for any later
    /// one to be out of reach (no two places are farther apart than half the Earth's
    /// circumference).
    pub fn expire(&mut self, now: Timestamp) {
        let keep = self.config.repeat_after;
        self.reported.retain(|_, at| now.since(*at) < keep);
        let reach =
            Duration::from_secs_f64(HALF_CIRCUMFERENCE_KM / self.config.max_speed_kmh * 3600.0);
        self.last.retain(|_, seen| now.since(seen.ts) < reach);
    }
}

/// `reported` in a checkpoint: (account, reason, subject, when), the reason read back as
/// the registry's name.
mod reported {
    use super::*;
    use serde::Serializer;

    type Map = BTreeMap<(Arc<str>, &'static str, String), Timestamp>;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter().map(|((a, r, subject), at)| (a, r, subject, at)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let list = Vec::<(Arc<str>, String, String, Timestamp)>::deserialize(d)?;
        list.into_iter()
            .map(|(a, r, subject, at)| {
                let r = crate::state::reason::known(&r)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown reason {r:?}")))?;
                Ok(((a, r, subject), at))
            })
            .collect()
    }
}

/// A finding about the account of `obs` at its public address, with what geo says.
fn observed(
    obs: &PublicIpObservation,
    reason: &'static str,
    severity: Severity,
    info: &GeoInfo,
    summary: String,
) -> Event {
    let mut e = with_geo(
        Event::new(obs.ts, Kind::GeoAnomaly, reason, severity, ""),
        info,
    )
    .evidence("public_ip", obs.public_ip.to_string())
    .evidence("source", obs.source.as_str());
    e.account = Some(obs.account.id.to_string());
    e.host = obs.assigned_ip;
    e.summary = summary;
    e
}

/// Country, city, ASN and network name as evidence.
pub(crate) fn with_geo(e: Event, info: &GeoInfo) -> Event {
    e.evidence("country", info.country.clone())
        .evidence("city", info.city.clone())
        .evidence("asn", info.asn)
        .evidence("as_org", info.as_org.clone())
}

/// Where geo puts a place, as evidence gives it.
pub(crate) fn position(l: &Location) -> Position {
    Position {
        lat: l.lat,
        lon: l.lon,
        radius_km: l.radius_km,
        source: match l.source {
            LocationSource::City => "city",
            LocationSource::CountryCentroid => "country_centroid",
        }
        .to_string(),
    }
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Where an account connects from.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Account,
    reasons: &[
        // Sessions from a country where public reporting places DPRK IT workers.
        Reason {
            name: "high_risk_country",
            weight: 40.0,
        },
        Reason {
            name: "disallowed_country",
            weight: 25.0,
        },
        Reason {
            name: "impossible_travel",
            weight: 25.0,
        },
        // Hosting and VPN exits: common in farms, but also among the privacy-minded.
        Reason {
            name: "hosting_asn",
            weight: 15.0,
        },
    ],
    new: |c| Box::new(GeoAnomaly::new(&c.detect.geo)),
};

impl Detector for GeoAnomaly {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::PublicIp(obs) => self.on_public_ip(scope, obs, out),
            Moment::Hour(now) => self.expire(now),
            _ => {}
        }
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        GeoAnomaly::evictions(self).to_vec()
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        crate::state::encode(self)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: GeoAnomaly = crate::state::decode(state)?;
        crate::state::within("accounts", saved.last.len(), MAX_ACCOUNTS)?;
        crate::state::within("reported", saved.reported.len(), MAX_REPORTED)?;
        let config = std::mem::take(&mut self.config);
        *self = GeoAnomaly { config, ..saved };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{AccountRef, Inventory};
    use crate::config::NetworkConfig;
    use crate::geo::{Geo, GeoConfig};
    use crate::identity::{Identity, ObservationSource};
    use std::path::PathBuf;

    fn geo() -> Geo {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let db = repo.join("geoip/test/test-geo.mmdb");
        Geo::open(&GeoConfig {
            country: Some(db.clone()),
            asn: Some(db.clone()),
            city: Some(db),
            hosting_asns: Some(repo.join("geoip/test/hosting-asns.csv")),
            ..GeoConfig::default()
        })
        .unwrap()
    }

    fn obs(secs: u64, account: &str, ip: &str) -> PublicIpObservation {
        PublicIpObservation {
            ts: Timestamp::from_secs(secs),
            account: AccountRef {
                id: Arc::from(account),
                kind: Some(AccountKind::Contractor),
            },
            public_ip: ip.parse().unwrap(),
            assigned_ip: None,
            source: ObservationSource::SessionFeed,
        }
    }

    fn run(list: &[PublicIpObservation]) -> Vec<(String, &'static str)> {
        let inv = Inventory::parse(
            "[[account]]\nid = \"a\"\nkind = \"contractor\"\ndeclared_country = \"DE\"\nallowed_countries = [\"DE\", \"PL\"]\n",
            "t",
        )
        .unwrap();
        let identity = Identity::new(Arc::new(inv));
        let (network, geo) = (NetworkConfig::default(), geo());
        let scope = Scope {
            network: &network,
            identity: &identity,
            geo: &geo,
            sessions: None,
        };
        let mut d = GeoAnomaly::new(&GeoAnomalyConfig::default());
        let mut out = Vec::new();
        for o in list {
            d.on_public_ip(&scope, o, &mut out);
        }
        out.into_iter()
            .map(|e| (e.account.unwrap_or_default(), e.reason))
            .collect()
    }

    #[test]
    fn detect_sections_parse_strictly() {
        let c: crate::config::Config = toml::from_str(
            "[detect.geo]\nmax_speed_kmh = 1000\nrtt_allowance = \"60ms\"\n[detect.farm_cluster]\nipv4_prefix = 28\n[detect.off_hours]\nwork_start = 8\n[detect.score.weights]\nhosting_asn = 5\n",
        )
        .unwrap();
        assert_eq!(c.detect.geo.max_speed_kmh, 1000.0);
        assert_eq!(c.detect.geo.rtt_allowance, Duration::from_millis(60));
        assert_eq!(c.detect.farm_cluster.ipv4_prefix, 28);
        assert_eq!(c.detect.off_hours.work_start, 8);
        assert_eq!(c.detect.score.weights["hosting_asn"], 5.0);
        for bad in [
            "[detect.geo]\nmax_speed_kmh = 0\n",
            "[detect.geo]\nmax_speed = 900\n",
            "[detect.farm_cluster]\nmin_accounts = 1\n",
            "[detect.farm_cluster]\nipv4_prefix = 33\n",
            "[detect.off_hours]\nwork_end = 25\n",
            "[detect.off_hours]\nmin_fit = 1.5\n",
        ] {
            assert!(
                toml::from_str::<crate::config::Config>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn berlin_to_poland_in_twenty_minutes_is_a_plausible_hop() {
        // Berlin to Poland's centroid is ~450 km: 1,350 km/h from the centres alone,
        // but the country's radius (±450 km) covers Berlin.
        assert!(run(&[obs(0, "a", "192.0.2.33"), obs(1200, "a", "192.0.2.145")]).is_empty());
    }

    #[test]
    fn berlin_to_paris_in_twenty_minutes_is_not() {
        let got = run(&[obs(0, "a", "192.0.2.33"), obs(1200, "a", "192.0.2.49")]);
        assert_eq!(
            got,
            [
                ("a".to_string(), "disallowed_country"),
                ("a".to_string(), "impossible_travel")
            ]
        );
    }

    #[test]
    fn high_risk_and_vpn_networks_and_repeats() {
        let day = 24 * 3600;
        let got = run(&[
            obs(0, "a", "192.0.2.97"),
            obs(10, "a", "192.0.2.97"),
            obs(day, "a", "192.0.2.97"),
            obs(3 * day, "b", "192.0.2.113"),
        ]);
        let reasons: Vec<&str> = got.iter().map(|g| g.1).collect();
        assert_eq!(
            reasons,
            [
                "disallowed_country",
                "high_risk_country",
                "disallowed_country",
                "high_risk_country",
                "hosting_asn"
            ]
        );
        assert_eq!(got[4].0, "b");
    }
}
