//! Detectors: turn flow state and dissector output into findings. They never see raw
//! packets; the pipeline hands them flows at the moments that matter (an ON period
//! starts, a flow is identified, a second of packet time passes, a flow ends), and they
//! return events. Every clock they read is packet time.

pub mod farm_cluster;
pub mod geo_anomaly;
pub mod off_hours;
pub mod rtt_distance;
pub mod score;

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
}

/// What detectors know about the world around a flow: which addresses are ours, who is
/// behind an address at a time, and where an address is.
pub struct Scope<'a> {
    pub network: &'a NetworkConfig,
    pub identity: &'a Identity,
    pub geo: &'a Geo,
}

/// All detectors, fed in one place so the pipeline stays one direction.
pub struct Detectors {
    config: DetectConfig,
    geo_anomaly: geo_anomaly::GeoAnomaly,
    rtt_distance: rtt_distance::RttDistance,
    farm_cluster: farm_cluster::FarmCluster,
    off_hours: off_hours::OffHours,
    scorer: score::Scorer,
    /// The hour of packet time old state was last let go at.
    expired: u64,
}

impl Detectors {
    pub fn new(config: &Config) -> Detectors {
        let detect = &config.detect;
        Detectors {
            config: detect.clone(),
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

    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// One direction of `flow` became active after being idle.
    pub fn on_resume(
        &mut self,
        scope: &Scope<'_>,
        _key: &FlowKey,
        flow: &Flow,
        from_orig: bool,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        self.rtt_distance.on_flow(scope, flow, ts, out);
        self.off_hours.on_resume(scope, flow, from_orig, ts, out);
    }

    /// `flow` got its application label.
    pub fn on_identified(
        &mut self,
        _scope: &Scope<'_>,
        _key: &FlowKey,
        _flow: &Flow,
        _ts: Timestamp,
        _out: &mut Vec<Event>,
    ) {
    }

    /// Packet time moved past a whole second; `flows` is the table, for detectors that
    /// follow flows while they run.
    pub fn on_tick(
        &mut self,
        _scope: &Scope<'_>,
        now: Timestamp,
        _flows: &FlowTable,
        _out: &mut Vec<Event>,
    ) {
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

    /// `flow` ended and left the table.
    pub fn on_end(&mut self, scope: &Scope<'_>, flow: &Flow, ts: Timestamp, out: &mut Vec<Event>) {
        self.rtt_distance.on_end(scope, flow, ts, out);
    }

    /// A finding was written (sealed, account filled in): it joins its account's risk
    /// score; returns the alert when the score reached a new tier.
    pub fn on_event(&mut self, event: &Event) -> Option<Event> {
        self.scorer.observe(event)
    }

    /// Risk score of every account with evidence, at `now`.
    pub fn account_scores(&self, now: Timestamp) -> BTreeMap<String, f64> {
        self.scorer.scores(now)
    }

    /// The input is over: report what is still pending.
    pub fn finish(&mut self, _scope: &Scope<'_>, _now: Timestamp, _out: &mut Vec<Event>) {}
}
