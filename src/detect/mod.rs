//! Detectors: turn flow state and dissector output into findings. They never see raw
//! packets; the pipeline hands them flows at the moments that matter (an ON period
//! starts, a flow is identified, a second of packet time passes, a flow ends), and they
//! return events. Every clock they read is packet time.

pub mod farm_cluster;
pub mod geo_anomaly;
pub mod off_hours;
pub mod relay_service;
pub mod remote_desktop;
pub mod rtt_distance;
pub mod rtt_split;
pub mod score;
pub mod stepping_stone;
pub mod tunnel;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{Config, NetworkConfig};
use crate::event::Event;
use crate::flows::{Flow, FlowKey, FlowTable};
use crate::geo::Geo;
use crate::identity::{Identity, PublicIpObservation};
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
}

impl DetectConfig {
    /// The first value out of range, as `detect.<detector>.<key> …`.
    pub fn validate(&self) -> Result<(), String> {
        let sections: [(&str, Result<(), String>); 9] = [
            ("geo", self.geo.validate()),
            ("farm_cluster", self.farm_cluster.validate()),
            ("off_hours", self.off_hours.validate()),
            ("score", self.score.validate()),
            ("remote_desktop", self.remote_desktop.validate()),
            ("stepping_stone", self.stepping_stone.validate()),
            ("rtt_split", self.rtt_split.validate()),
            ("tunnel", self.tunnel.validate()),
            ("relay_service", self.relay_service.validate()),
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
/// behind an address at a time, and where an address is.
pub struct Scope<'a> {
    pub network: &'a NetworkConfig,
    pub identity: &'a Identity,
    pub geo: &'a Geo,
}

/// The flow stage's detectors (DESIGN §7): each judges flows one at a time or the flows of
/// one host, so a flow worker that holds a host's flows holds everything they need.
pub struct FlowDetectors {
    remote_desktop: remote_desktop::RemoteDesktop,
    stepping_stone: stepping_stone::SteppingStone,
    rtt_split: rtt_split::RttSplit,
    tunnel: tunnel::Tunnel,
    relay_service: relay_service::RelayService,
}

impl FlowDetectors {
    pub fn new(config: &Config) -> FlowDetectors {
        let detect = &config.detect;
        FlowDetectors {
            remote_desktop: remote_desktop::RemoteDesktop::new(&detect.remote_desktop),
            stepping_stone: stepping_stone::SteppingStone::new(&detect.stepping_stone),
            rtt_split: rtt_split::RttSplit::new(&detect.rtt_split),
            tunnel: tunnel::Tunnel::new(&detect.tunnel),
            relay_service: relay_service::RelayService::new(&detect.relay_service),
        }
    }

    /// One direction of `flow` became active after being idle; its previous ON period
    /// started at `prev`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_resume(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        flow: &Flow,
        ts: Timestamp,
        prev: Option<Timestamp>,
        out: &mut Vec<Event>,
    ) {
        self.stepping_stone
            .on_resume(scope, key, flow, ts, prev, out);
    }

    /// `flow` got its application label.
    pub fn on_identified(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        flow: &Flow,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        self.remote_desktop.on_identified(scope, key, flow);
        self.rtt_split.on_identified(scope, key, flow, ts, out);
        self.tunnel.on_identified(scope, flow, ts, out);
        self.relay_service
            .on_identified(scope, key, flow, ts, &self.remote_desktop, out);
    }

    /// Packet time moved past a whole second; `flows` is the table, for detectors that
    /// follow flows while they run.
    pub fn on_tick(
        &mut self,
        scope: &Scope<'_>,
        now: Timestamp,
        flows: &FlowTable,
        out: &mut Vec<Event>,
    ) {
        self.remote_desktop.on_tick(scope, now, flows, out);
        self.rtt_split.on_tick(scope, now, flows, out);
        self.relay_service
            .on_tick(scope, now, flows, &self.remote_desktop, out);
    }

    /// `flow` ended and left the table.
    pub fn on_end(&mut self, scope: &Scope<'_>, flow: &Flow, ts: Timestamp, out: &mut Vec<Event>) {
        self.remote_desktop.on_end(scope, flow);
        self.stepping_stone.on_end(flow);
        self.rtt_split.on_end(scope, flow, ts, out);
        self.relay_service.on_end(flow);
    }

    /// Remote-desktop sessions running at `now`, as (inside host, tool).
    pub fn active_remote_desktop(
        &self,
        now: Timestamp,
    ) -> impl Iterator<Item = (std::net::IpAddr, crate::app::App)> + '_ {
        self.remote_desktop.active_sessions(now)
    }

    /// Entries each detector's bounded state dropped at its limit, by structure.
    pub fn evictions(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        out.extend(self.remote_desktop.evictions());
        out.push(self.stepping_stone.evictions());
        out.push(self.rtt_split.evictions());
        out.push(self.tunnel.evictions());
        out.extend(self.relay_service.evictions());
        out
    }
}

/// The account stage's detectors (DESIGN §7): they judge accounts from observations, and
/// the scorer rolls their findings and the flow stage's into alerts.
pub struct AccountDetectors {
    geo_anomaly: geo_anomaly::GeoAnomaly,
    rtt_distance: rtt_distance::RttDistance,
    farm_cluster: farm_cluster::FarmCluster,
    off_hours: off_hours::OffHours,
    scorer: score::Scorer,
    /// The hour of packet time old state was last let go at.
    expired: u64,
}

impl AccountDetectors {
    pub fn new(config: &Config) -> AccountDetectors {
        let detect = &config.detect;
        AccountDetectors {
            geo_anomaly: geo_anomaly::GeoAnomaly::new(&detect.geo),
            rtt_distance: rtt_distance::RttDistance::new(
                &detect.geo,
                config.sensor.latitude,
                config.sensor.longitude,
            ),
            farm_cluster: farm_cluster::FarmCluster::new(&detect.farm_cluster),
            off_hours: off_hours::OffHours::new(&detect.off_hours),
            scorer: score::Scorer::new(&detect.score),
            expired: 0,
        }
    }

    /// Packet time moved past a whole second: once an hour, old state is let go.
    pub fn on_tick(&mut self, now: Timestamp) {
        if now.secs() / 3600 > self.expired {
            self.expired = now.secs() / 3600;
            self.geo_anomaly.expire(now);
            self.rtt_distance.expire(now);
            self.farm_cluster.expire(now);
            self.off_hours.expire(now);
        }
    }

    /// An account was seen at a public address (session feed or RADIUS), in time order.
    pub fn on_public_ip(
        &mut self,
        scope: &Scope<'_>,
        obs: &PublicIpObservation,
        out: &mut Vec<Event>,
    ) {
        self.geo_anomaly.on_public_ip(scope, obs, out);
        self.rtt_distance.on_public_ip(scope, obs, out);
        self.farm_cluster.on_public_ip(scope, obs, out);
    }

    /// An inside host became active at `ts` (the working-hours detector).
    pub fn on_activity(
        &mut self,
        scope: &Scope<'_>,
        host: std::net::IpAddr,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        self.off_hours.on_activity(scope, host, ts, out);
    }

    /// An outside client's handshake RTT (RTT against distance).
    pub fn on_handshake_rtt(
        &mut self,
        scope: &Scope<'_>,
        client: std::net::IpAddr,
        rtt_ns: u64,
        flow: &crate::event::FlowRef,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        self.rtt_distance
            .on_sample(scope, client, rtt_ns, flow, ts, out);
    }

    /// A finding was written (sealed, account filled in): it joins its account's risk
    /// score; returns the alert when the score reached a new tier.
    pub fn on_event(&mut self, event: &Event) -> Option<Event> {
        self.scorer.observe(event)
    }

    /// Entries each detector's bounded state dropped at its limit, by structure.
    pub fn evictions(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        out.extend(self.geo_anomaly.evictions());
        out.push(self.rtt_distance.evictions());
        out.extend(self.farm_cluster.evictions());
        out.push(self.scorer.evictions());
        out
    }

    /// Risk score of every account with evidence, at `now`.
    pub fn account_scores(&self, now: Timestamp) -> BTreeMap<String, f64> {
        self.scorer.scores(now)
    }
}
