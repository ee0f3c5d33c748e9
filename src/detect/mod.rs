//! Detectors: turn flow state and dissector output into findings. They never see raw
//! packets; the pipeline hands them flows at the moments that matter (an ON period
//! starts, a flow is identified, a second of packet time passes, a flow ends), and they
//! return events. Every clock they read is packet time.

use serde::Deserialize;

use crate::config::NetworkConfig;
use crate::event::Event;
use crate::flows::{Flow, FlowKey, FlowTable};
use crate::geo::Geo;
use crate::identity::{Identity, PublicIpObservation};
use crate::timestamp::Timestamp;

/// `[detect.*]` in farmwatch.toml: one sub-table per detector.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {}

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
}

impl Detectors {
    pub fn new(config: &DetectConfig) -> Detectors {
        Detectors {
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// One direction of `flow` became active after being idle.
    pub fn on_resume(
        &mut self,
        _scope: &Scope<'_>,
        _key: &FlowKey,
        _flow: &Flow,
        _from_orig: bool,
        _ts: Timestamp,
        _out: &mut Vec<Event>,
    ) {
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
        _now: Timestamp,
        _flows: &FlowTable,
        _out: &mut Vec<Event>,
    ) {
    }

    /// An account was seen at a public address (session feed or RADIUS), in time order.
    pub fn on_public_ip(
        &mut self,
        _scope: &Scope<'_>,
        _obs: &PublicIpObservation,
        _out: &mut Vec<Event>,
    ) {
    }

    /// `flow` ended and left the table.
    pub fn on_end(
        &mut self,
        _scope: &Scope<'_>,
        _flow: &Flow,
        _ts: Timestamp,
        _out: &mut Vec<Event>,
    ) {
    }

    /// The input is over: report what is still pending.
    pub fn finish(&mut self, _scope: &Scope<'_>, _now: Timestamp, _out: &mut Vec<Event>) {}
}
