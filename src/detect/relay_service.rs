//! `relay_chain` / `relay_service`: remote control brokered through a relay, so the
//! controller's own address never shows at the controlled host. Two forms:
//!
//! - `vendor_relay`: a remote-desktop flow to the tool vendor's relay or broker (AnyDesk,
//!   TeamViewer, RustDesk, ScreenConnect relay names; `details.relay` from the SNI, a
//!   certificate or a DNS answer);
//! - `turn`: a STUN flow whose TURN allocation was answered with a relayed address while
//!   the same host runs a remote-desktop session (WebRTC tools such as Chrome Remote
//!   Desktop carry their media through TURN).
//!
//! Each (host, tool, relay) is reported once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;

use crate::app::App;
use crate::detect::{Detector, Moment, Reason, Registered, Stage, moments};
use crate::dissect::identify::{Details, Evidence};
use crate::event::{Event, Kind, Severity};
use crate::flows::{Flow, FlowKey, FlowTable};
use crate::timestamp::Timestamp;

use super::Scope;
use super::remote_desktop::{RemoteDesktop, flow_ref, inside_end, with_place};

/// `[detect.relay_service]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayServiceConfig {
    /// TURN-relayed flows waiting for a remote-desktop session at their host. Default 4096.
    pub max_pending: usize,
    /// Findings remembered to report each once; past it the oldest are forgotten.
    /// Default 65536.
    pub max_reported: usize,
}

impl Default for RelayServiceConfig {
    fn default() -> RelayServiceConfig {
        RelayServiceConfig {
            max_pending: 4096,
            max_reported: 65536,
        }
    }
}

impl RelayServiceConfig {
    /// See [`super::check`].
    pub fn validate(&self) -> Result<(), String> {
        use super::check::not_zero;
        not_zero("max_pending", self.max_pending)?;
        not_zero("max_reported", self.max_reported)
    }
}

/// A TURN-relayed flow of an inside host.
#[derive(Clone, Copy, Debug)]
struct Turn {
    host: IpAddr,
    server: IpAddr,
}

pub struct RelayService {
    config: RelayServiceConfig,
    pending: BTreeMap<FlowKey, Turn>,
    reported: BTreeSet<(IpAddr, &'static str, IpAddr)>,
    /// TURN flows not followed at `max_pending`, and reports forgotten at `max_reported`.
    refused_pending: u64,
    evicted_reported: u64,
}

fn turn_relayed(flow: &Flow) -> bool {
    flow.app == Some(App::Stun) && flow.details.as_deref().is_some_and(Details::turn_relayed)
}

impl RelayService {
    pub fn new(config: &RelayServiceConfig) -> RelayService {
        RelayService {
            config: config.clone(),
            pending: BTreeMap::new(),
            reported: BTreeSet::new(),
            refused_pending: 0,
            evicted_reported: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> [(&'static str, u64); 2] {
        [
            ("relay_service_pending", self.refused_pending),
            ("relay_service_reported", self.evicted_reported),
        ]
    }

    pub fn on_identified(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        flow: &Flow,
        ts: Timestamp,
        rd: &RemoteDesktop,
        out: &mut Vec<Event>,
    ) {
        let Some((host, host_is_orig)) = inside_end(scope, flow) else {
            return;
        };
        let relay = if host_is_orig {
            flow.resp.0
        } else {
            flow.orig.0
        };
        if let Some(app) = flow.app.filter(|a| a.is_remote_desktop())
            && flow.details.as_deref().is_some_and(|d| d.relay)
        {
            self.report(scope, flow, host, relay, app, "vendor_relay", ts, out);
        } else if turn_relayed(flow) {
            match rd.active_app(host, ts) {
                Some(app) => self.report(scope, flow, host, relay, app, "turn", ts, out),
                None if self.pending.len() < self.config.max_pending => {
                    self.pending.insert(
                        *key,
                        Turn {
                            host,
                            server: relay,
                        },
                    );
                }
                None => self.refused_pending += 1,
            }
        }
    }

    pub fn on_tick(
        &mut self,
        scope: &Scope<'_>,
        now: Timestamp,
        flows: &FlowTable,
        rd: &RemoteDesktop,
        out: &mut Vec<Event>,
    ) {
        let pending = std::mem::take(&mut self.pending);
        for (key, t) in pending {
            let Some(flow) = flows.get(&key) else {
                continue;
            };
            match rd.active_app(t.host, now) {
                Some(app) => self.report(scope, flow, t.host, t.server, app, "turn", now, out),
                None => {
                    self.pending.insert(key, t);
                }
            }
        }
    }

    pub fn on_end(&mut self, flow: &Flow) {
        // Every flow's end comes here, and few TURN flows wait: no key built for none.
        if !self.pending.is_empty() {
            self.pending.remove(&flow.key());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        scope: &Scope<'_>,
        flow: &Flow,
        host: IpAddr,
        relay: IpAddr,
        app: App,
        via: &'static str,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        if !self.reported.insert((host, via, relay)) {
            return;
        }
        if self.reported.len() > self.config.max_reported {
            self.reported.pop_first();
            self.evicted_reported += 1;
        }
        let mut e = Event::new(
            ts,
            Kind::RelayChain,
            "relay_service",
            Severity::Medium,
            &format!("{via} {app} {relay}"),
        );
        e.host = Some(host);
        e.flow = Some(flow_ref(flow));
        e.app = Some(app);
        e.summary = match via {
            "turn" => format!(
                "{app} session at {host} runs beside a TURN-relayed flow through {relay}: the controller's address is hidden"
            ),
            _ => format!(
                "{app} at {host} is brokered through the vendor's relay {relay}: the controller's address is hidden"
            ),
        };
        e = e.evidence("via", via).evidence("tool", app.as_str());
        if let Some(d) = flow.details.as_deref() {
            e = e.evidence(
                "name_evidence",
                serde_json::json!(d.tool_evidence.map(Evidence::as_str)),
            );
            if let Some(sni) = d.tls.as_ref().and_then(|t| t.sni.clone()) {
                e = e.evidence("sni", sni);
            }
        }
        out.push(with_place(scope, e, "relay", relay));
    }
}

/// A remote-desktop session carried by a vendor's or a TURN relay.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Flow,
    reasons: &[Reason {
        name: "relay_service",
        weight: 20.0,
    }],
    new: |c| Box::new(RelayService::new(&c.detect.relay_service)),
};

impl Detector for RelayService {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        let Some(rd) = scope.sessions else {
            return;
        };
        match *moment {
            Moment::Identified { key, flow, ts, .. } => {
                self.on_identified(scope, key, flow, ts, rd, out)
            }
            Moment::Tick { now, flows } => self.on_tick(scope, now, flows, rd, out),
            Moment::Ended { flow, .. } => self.on_end(flow),
            _ => {}
        }
    }

    fn moments(&self) -> u8 {
        moments::IDENTIFIED | moments::TICK | moments::ENDED
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        RelayService::evictions(self).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::remote_desktop::RemoteDesktopConfig;
    use crate::detect::remote_desktop::testkit::*;
    use crate::dissect::identify::Details;

    fn label(wire: &mut Wire, key: &FlowKey, app: App, details: Details) {
        let f = wire.table.get_mut(key).unwrap();
        f.app = Some(app);
        f.details = Some(Box::new(details));
    }

    #[test]
    fn vendor_relay_is_reported_once() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let rd = RemoteDesktop::new(&RemoteDesktopConfig::default());
        let mut rs = RelayService::new(&RelayServiceConfig::default());
        let mut out = Vec::new();
        let relay = Details {
            relay: true,
            tool_evidence: Some(Evidence::Sni),
            ..Details::default()
        };
        for port in ["10.8.0.19:50000", "10.8.0.19:50001"] {
            let key = wire.tcp(T0, port, "192.0.2.72:443", 300);
            label(&mut wire, &key, App::Anydesk, relay.clone());
            let f = wire.table.get(&key).unwrap();
            rs.on_identified(&scope, &key, f, Timestamp(T0), &rd, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["via"], "vendor_relay");
        assert_eq!(out[0].evidence["relay_country"], "CN");
        assert_eq!(out[0].evidence["name_evidence"], "sni");
        // The same tool straight to its peer is not brokered.
        let key = wire.tcp(T0, "10.8.0.20:50000", "192.0.2.73:443", 300);
        label(&mut wire, &key, App::Anydesk, Details::default());
        rs.on_identified(
            &scope,
            &key,
            wire.table.get(&key).unwrap(),
            Timestamp(T0),
            &rd,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn turn_counts_only_beside_a_remote_desktop_session() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut rd = RemoteDesktop::new(&RemoteDesktopConfig::default());
        let mut rs = RelayService::new(&RelayServiceConfig::default());
        let mut out = Vec::new();
        let key = wire.udp(T0, "10.8.0.19:50100", "192.0.2.74:3478", 20);
        label(&mut wire, &key, App::Stun, turn_details());
        rs.on_identified(
            &scope,
            &key,
            wire.table.get(&key).unwrap(),
            Timestamp(T0),
            &rd,
            &mut out,
        );
        rs.on_tick(&scope, Timestamp(T0 + SEC), &wire.table, &rd, &mut out);
        assert!(out.is_empty(), "no session yet");
        // A remote-desktop flow at the same host starts: the TURN flow is its relay.
        let rdp = wire.udp(T0 + 2 * SEC, "10.8.0.19:50200", "192.0.2.75:3389", 40);
        label(&mut wire, &rdp, App::Rdp, Details::default());
        rd.on_identified(&scope, &rdp, None, wire.table.get(&rdp).unwrap());
        rs.on_tick(&scope, Timestamp(T0 + 3 * SEC), &wire.table, &rd, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["via"], "turn");
        assert_eq!(out[0].app, Some(App::Rdp));
        rs.on_tick(&scope, Timestamp(T0 + 4 * SEC), &wire.table, &rd, &mut out);
        assert_eq!(out.len(), 1);
    }
}
