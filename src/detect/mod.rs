//! Detectors: turn flow state and observations into findings. They never see raw packets.
//! Each implements [`Detector`], one hook that is shown [`Moment`]s: a flow-stage detector
//! the moments of its partition's flows (an ON period starts, a flow is identified, a second
//! of packet time passes, a flow ends), an account-stage detector the observations (DESIGN
//! §7). Every clock they read is packet time.
//!
//! Every detector is listed once, in [`DETECTORS`], with its stage and the reasons it raises,
//! each with its weight in the account's risk score: a reason cannot be raised without one.

pub mod farm_cluster;
pub mod geo_anomaly;
pub mod off_hours;
pub mod operator_latency;
pub mod relay_service;
pub mod remote_desktop;
pub mod reverse_session;
pub mod rtt_distance;
pub mod rtt_split;
pub mod score;
pub mod severity;
pub mod shared_relay;
pub mod stepping_stone;
pub mod tunnel;

use serde::Deserialize;

use crate::app::App;
use crate::config::{Config, NetworkConfig};
use crate::event::Event;
use crate::flows::{Flow, FlowKey, FlowTable, Handle};
use crate::geo::Geo;
use crate::identity::{Identity, PublicIpObservation};
use crate::observation::Observation;
use crate::timestamp::Timestamp;

/// `[detect.*]` in farmwatch.toml: one sub-table per detector.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    pub geo: geo_anomaly::GeoAnomalyConfig,
    pub farm_cluster: farm_cluster::FarmClusterConfig,
    pub off_hours: off_hours::OffHoursConfig,
    pub score: score::ScoreConfig,
    pub remote_desktop: remote_desktop::RemoteDesktopConfig,
    pub stepping_stone: stepping_stone::SteppingStoneConfig,
    pub rtt_split: rtt_split::RttSplitConfig,
    pub tunnel: tunnel::TunnelConfig,
    pub relay_service: relay_service::RelayServiceConfig,
    pub operator_latency: operator_latency::OperatorLatencyConfig,
    pub reverse_session: reverse_session::ReverseSessionConfig,
    pub severity: severity::SeverityConfig,
}

impl DetectConfig {
    /// The first value out of range, as `detect.<detector>.<key> …`.
    pub fn validate(&self) -> Result<(), String> {
        let sections: [(&str, Result<(), String>); 12] = [
            ("geo", self.geo.validate()),
            ("farm_cluster", self.farm_cluster.validate()),
            ("off_hours", self.off_hours.validate()),
            ("score", self.score.validate()),
            ("remote_desktop", self.remote_desktop.validate()),
            ("stepping_stone", self.stepping_stone.validate()),
            ("rtt_split", self.rtt_split.validate()),
            ("tunnel", self.tunnel.validate()),
            ("relay_service", self.relay_service.validate()),
            ("operator_latency", self.operator_latency.validate()),
            ("reverse_session", self.reverse_session.validate()),
            ("severity", self.severity.validate()),
        ];
        for (name, result) in sections {
            result.map_err(|e| format!("detect.{name}.{e}"))?;
        }
        Ok(())
    }
}

/// Checks of detector settings at load. A count, capacity, window or factor of zero would
/// quietly turn its detector off (or divide by zero), so it is an error naming the key.
pub(crate) mod check {
    use std::fmt::Display;

    /// Counts, capacities and durations: anything but zero.
    pub fn not_zero<T: Default + PartialEq>(key: &str, v: T) -> Result<(), String> {
        if v == T::default() {
            Err(format!("{key} must be above 0"))
        } else {
            Ok(())
        }
    }

    /// Factors: a finite number above zero.
    pub fn positive(key: &str, v: f64) -> Result<(), String> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(format!("{key} must be a number above 0, not {v}"))
        }
    }

    /// Shares: above zero, at most one.
    pub fn share(key: &str, v: f64) -> Result<(), String> {
        if v > 0.0 && v <= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "{key} must be a share above 0 and at most 1, not {v}"
            ))
        }
    }

    /// Two settings that must differ.
    pub fn differ<T: PartialEq + Display>(a: (&str, T), b: (&str, T)) -> Result<(), String> {
        if a.1 == b.1 {
            Err(format!(
                "{} and {} must differ (both are {})",
                a.0, b.0, a.1
            ))
        } else {
            Ok(())
        }
    }
}

/// What detectors know about the world around a flow: which addresses are ours, who is
/// behind an address at a time, where an address is, and (flow stage) the remote-desktop
/// sessions open on the partition's hosts.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub network: &'a NetworkConfig,
    pub identity: &'a Identity,
    pub geo: &'a Geo,
    pub sessions: Option<&'a remote_desktop::RemoteDesktop>,
}

/// Which stage runs a detector (DESIGN §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Per flow or per host, on the flow workers.
    Flow,
    /// Per account, once per sensor (or in `correlate`).
    Account,
}

/// A reason a detector raises, with its default weight in the account's risk score
/// (`[detect.score] weights` overrides it).
#[derive(Clone, Copy, Debug)]
pub struct Reason {
    pub name: &'static str,
    pub weight: f64,
}

/// A detector as [`DETECTORS`] lists it.
pub struct Registered {
    pub stage: Stage,
    pub reasons: &'static [Reason],
    pub new: fn(&Config) -> Box<dyn Detector>,
}

/// Every detector, once, in the order each stage shows it a moment.
pub const DETECTORS: &[Registered] = &[
    remote_desktop::REGISTERED,
    stepping_stone::REGISTERED,
    rtt_split::REGISTERED,
    tunnel::REGISTERED,
    relay_service::REGISTERED,
    reverse_session::REGISTERED,
    geo_anomaly::REGISTERED,
    rtt_distance::REGISTERED,
    operator_latency::REGISTERED,
    farm_cluster::REGISTERED,
    off_hours::REGISTERED,
    shared_relay::REGISTERED,
];

/// Every reason a finding can carry, with its default weight: the detectors' and the
/// inventory checks'.
pub fn reasons() -> impl Iterator<Item = &'static Reason> {
    DETECTORS
        .iter()
        .flat_map(|d| d.reasons.iter())
        .chain(crate::accounts::REASONS.iter())
}

/// The reasons a detector raises, comma-separated: its name in a checkpoint.
fn reason_names(r: &Registered) -> String {
    let names: Vec<&str> = r.reasons.iter().map(|r| r.name).collect();
    names.join(",")
}

/// What a detector is shown.
pub enum Moment<'a> {
    /// Flow stage: one direction of `flow` became active after being idle; its previous
    /// ON period started at `prev`.
    Resumed {
        key: &'a FlowKey,
        flow: &'a Flow,
        ts: Timestamp,
        prev: Option<Timestamp>,
    },
    /// Flow stage: `flow` got its application label; `at` finds it in the partition's
    /// table while it holds (see [`find`]).
    Identified {
        key: &'a FlowKey,
        at: Handle,
        flow: &'a Flow,
        ts: Timestamp,
    },
    /// Flow stage: packet time moved past a whole second; `flows` is the partition's
    /// table, for detectors that follow flows while they run.
    Tick {
        now: Timestamp,
        flows: &'a FlowTable,
    },
    /// Flow stage: `flow` ended and left the table.
    Ended { flow: &'a Flow, ts: Timestamp },
    /// Account stage: an account was seen at a public address (session feed, RADIUS), in
    /// time order.
    PublicIp(&'a PublicIpObservation),
    /// Account stage: an observation of the flow stage.
    Observed(&'a Observation),
    /// Account stage: an hour of packet time passed; state older than a detector's window
    /// can go.
    Hour(Timestamp),
}

/// The open flow that `key` names, found by its handle `at` while the handle holds (no
/// key hashed or compared: a detector that follows flows looks them up every second), by
/// its key once the table has grown.
pub fn find<'a>(flows: &'a FlowTable, at: Option<Handle>, key: &FlowKey) -> Option<&'a Flow> {
    match at.and_then(|at| flows.at(at)) {
        Some(flow) => Some(flow),
        None => flows.get(key),
    }
}

impl Moment<'_> {
    /// The moment's kind: one bit of [`Detector::moments`].
    pub fn kind(&self) -> u8 {
        match self {
            Moment::Resumed { .. } => moments::RESUMED,
            Moment::Identified { .. } => moments::IDENTIFIED,
            Moment::Tick { .. } => moments::TICK,
            Moment::Ended { .. } => moments::ENDED,
            Moment::PublicIp(_) => moments::PUBLIC_IP,
            Moment::Observed(_) => moments::OBSERVED,
            Moment::Hour(_) => moments::HOUR,
        }
    }
}

/// The kinds of [`Moment`], as bits, for [`Detector::moments`].
pub mod moments {
    pub const RESUMED: u8 = 1;
    pub const IDENTIFIED: u8 = 1 << 1;
    pub const TICK: u8 = 1 << 2;
    pub const ENDED: u8 = 1 << 3;
    pub const PUBLIC_IP: u8 = 1 << 4;
    pub const OBSERVED: u8 = 1 << 5;
    pub const HOUR: u8 = 1 << 6;
    pub const ALL: u8 = u8::MAX;
}

/// A detector: shown moments, it pushes findings to `out`.
pub trait Detector: Send {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>);

    /// The kinds of moment it acts on ([`moments`] bits); it is not shown the others.
    /// Every flow is three or four moments and most detectors act on one or two of them:
    /// a call to say nothing, per detector and moment, was a tenth of the flow's end.
    fn moments(&self) -> u8 {
        moments::ALL
    }

    /// Entries its bounded state dropped at a limit, by structure (for the metrics).
    fn evictions(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// The remote-desktop sessions it tracks, for the detectors that ask (one does). A
    /// detector that tracks them answers from its creation on.
    fn sessions(&self) -> Option<&remote_desktop::RemoteDesktop> {
        None
    }

    /// Its state for the correlator's checkpoint ([`crate::state::encode`]), without its
    /// config. Every account-stage detector keeps state and saves it; flow-stage detectors
    /// run on the sensors, which are not checkpointed, and keep this default. A change to
    /// the shape of what it saves must bump [`crate::state::VERSION`].
    fn save(&self) -> Result<Vec<u8>, String> {
        Err("keeps no state to save".to_string())
    }

    /// Takes back what [`save`](Self::save) gave, keeping its own config; refuses a state
    /// that does not read or is over a bound.
    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        Err("keeps no state to restore".to_string())
    }
}

/// A detector's saved state, under the names of the reasons it raises (which name it in the
/// registry: no two detectors raise one reason).
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct SavedDetector {
    pub reasons: String,
    pub state: Vec<u8>,
}

/// The detectors of one stage (one partition of the flow stage, or the account stage).
pub struct Detectors {
    list: Vec<Box<dyn Detector>>,
    /// Each one's entry in [`DETECTORS`].
    registered: Vec<&'static Registered>,
    /// For each kind of moment (by the bit's position in [`moments`]), the detectors that
    /// act on it, in list order: a moment walks those, not every detector to test its bits
    /// (a flow is three moments or more, and each kind concerns two to five of the six
    /// flow-stage detectors).
    acting: [Vec<usize>; 8],
    /// For each, the first other detector that tracks remote-desktop sessions, found
    /// once: asking all the others at every moment was a call per pair of detectors.
    sessions_from: Vec<Option<usize>>,
}

impl Detectors {
    pub fn new(config: &Config, stage: Stage) -> Detectors {
        let registered: Vec<&'static Registered> =
            DETECTORS.iter().filter(|d| d.stage == stage).collect();
        let list: Vec<Box<dyn Detector>> = registered.iter().map(|d| (d.new)(config)).collect();
        let with_sessions: Vec<usize> = (0..list.len())
            .filter(|&i| list[i].sessions().is_some())
            .collect();
        let sessions_from = (0..list.len())
            .map(|i| with_sessions.iter().copied().find(|&j| j != i))
            .collect();
        let acting = std::array::from_fn(|bit| {
            (0..list.len())
                .filter(|&i| list[i].moments() & (1 << bit) != 0)
                .collect()
        });
        Detectors {
            acting,
            list,
            registered,
            sessions_from,
        }
    }

    /// Every detector's state, for a checkpoint; an error names the detector.
    pub fn save(&self) -> Result<Vec<SavedDetector>, String> {
        let named = self.registered.iter().map(|r| reason_names(r));
        (self.list.iter().zip(named))
            .map(|(d, reasons)| match d.save() {
                Ok(state) => Ok(SavedDetector { reasons, state }),
                Err(e) => Err(format!("the detector of {reasons}: {e}")),
            })
            .collect()
    }

    /// Takes back what [`save`](Self::save) gave, each detector its own state; a state made
    /// for another list of detectors is refused.
    pub fn restore(&mut self, saved: &[SavedDetector]) -> Result<(), String> {
        let named: Vec<String> = self.registered.iter().map(|r| reason_names(r)).collect();
        let held: Vec<&str> = saved.iter().map(|s| s.reasons.as_str()).collect();
        if held != named {
            return Err(format!(
                "holds the detectors of [{}], this farmwatch has [{}]",
                held.join("; "),
                named.join("; ")
            ));
        }
        for ((d, s), reasons) in self.list.iter_mut().zip(saved).zip(&named) {
            d.restore(&s.state)
                .map_err(|e| format!("the detector of {reasons}: {e}"))?;
        }
        Ok(())
    }

    /// Shows `moment` to every detector that acts on its kind, in list order, with the
    /// sessions of the first other detector that tracks them.
    pub fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        let acting = &self.acting[moment.kind().trailing_zeros() as usize];
        for &i in acting {
            let (before, rest) = self.list.split_at_mut(i);
            let Some((current, after)) = rest.split_first_mut() else {
                break;
            };
            let sessions = match self.sessions_from[i] {
                Some(j) if j < i => before[j].sessions(),
                Some(j) => after[j - i - 1].sessions(),
                None => None,
            };
            let scope = Scope { sessions, ..*scope };
            current.on(moment, &scope, out);
        }
    }

    /// Entries each detector's bounded state dropped at its limit, by structure.
    pub fn evictions(&self) -> Vec<(&'static str, u64)> {
        self.list.iter().flat_map(|d| d.evictions()).collect()
    }

    /// Remote-desktop sessions running at `now`, as (inside host, tool).
    pub fn active_remote_desktop(&self, now: Timestamp) -> Vec<(std::net::IpAddr, App)> {
        self.list
            .iter()
            .filter_map(|d| d.sessions())
            .flat_map(|s| s.active_sessions(now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_account_detector_saves_its_state_under_its_reasons() {
        let config = Config::default();
        let saved = Detectors::new(&config, Stage::Account).save().unwrap();
        let account = DETECTORS.iter().filter(|d| d.stage == Stage::Account);
        assert_eq!(saved.len(), account.count());
        assert!(saved.iter().any(|s| s.reasons == "shared_public_ip"));
        Detectors::new(&config, Stage::Account)
            .restore(&saved)
            .unwrap();
        // A checkpoint made for another list of detectors is refused, not read into the
        // wrong ones.
        let e = Detectors::new(&config, Stage::Account)
            .restore(&saved[1..])
            .unwrap_err();
        assert!(e.starts_with("holds the detectors of ["), "{e}");
        // The flow stage runs on the sensors and is not checkpointed.
        assert!(Detectors::new(&config, Stage::Flow).save().is_err());
    }
}
