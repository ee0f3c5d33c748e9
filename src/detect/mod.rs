//! Detectors: turn flow state and dissector output into findings. They never see raw
//! packets; the pipeline hands them flows at the moments that matter (an ON period
//! starts, a flow is identified, a second of packet time passes, a flow ends), and they
//! return events. Every clock they read is packet time.

pub mod relay_service;
pub mod remote_desktop;
pub mod rtt_split;
pub mod stepping_stone;
pub mod tunnel;

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
pub struct DetectConfig {
    pub remote_desktop: remote_desktop::RemoteDesktopConfig,
    pub stepping_stone: stepping_stone::SteppingStoneConfig,
    pub rtt_split: rtt_split::RttSplitConfig,
    pub tunnel: tunnel::TunnelConfig,
    pub relay_service: relay_service::RelayServiceConfig,
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
    remote_desktop: remote_desktop::RemoteDesktop,
    stepping_stone: stepping_stone::SteppingStone,
    rtt_split: rtt_split::RttSplit,
    tunnel: tunnel::Tunnel,
    relay_service: relay_service::RelayService,
}

impl Detectors {
    pub fn new(config: &DetectConfig) -> Detectors {
        Detectors {
            config: config.clone(),
            remote_desktop: remote_desktop::RemoteDesktop::new(&config.remote_desktop),
            stepping_stone: stepping_stone::SteppingStone::new(&config.stepping_stone),
            rtt_split: rtt_split::RttSplit::new(&config.rtt_split),
            tunnel: tunnel::Tunnel::new(&config.tunnel),
            relay_service: relay_service::RelayService::new(&config.relay_service),
        }
    }

    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// One direction of `flow` became active after being idle.
    pub fn on_resume(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        flow: &Flow,
        from_orig: bool,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        self.stepping_stone
            .on_resume(scope, key, flow, from_orig, ts, out);
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

    /// An account was seen at a public address (session feed or RADIUS), in time order.
    pub fn on_public_ip(
        &mut self,
        _scope: &Scope<'_>,
        _obs: &PublicIpObservation,
        _out: &mut Vec<Event>,
    ) {
    }

    /// `flow` ended and left the table.
    pub fn on_end(&mut self, scope: &Scope<'_>, flow: &Flow, ts: Timestamp, out: &mut Vec<Event>) {
        self.remote_desktop.on_end(scope, flow);
        self.stepping_stone.on_end(flow);
        self.rtt_split.on_end(scope, flow, ts, out);
        self.relay_service.on_end(flow);
    }

    /// The input is over: report what is still pending.
    pub fn finish(&mut self, _scope: &Scope<'_>, _now: Timestamp, _out: &mut Vec<Event>) {}
}
