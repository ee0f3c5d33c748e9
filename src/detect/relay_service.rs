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
use crate::event::{Event, Kind, Severity};
use crate::flows::{Flow, FlowKey, FlowTable};
use crate::timestamp::Timestamp;

use super::Scope;
use super::remote_desktop::{RemoteDesktop, flow_key, flow_ref, inside_end, with_place};

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
}

fn turn_relayed(flow: &Flow) -> bool {
    flow.app == Some(App::Stun)
        && flow
            .details
            .as_deref()
            .and_then(|d| d.stun.as_ref())
            .is_some_and(|s| s.relayed)
}

impl RelayService {
    pub fn new(config: &RelayServiceConfig) -> RelayService {
        RelayService {
            config: config.clone(),
            pending: BTreeMap::new(),
            reported: BTreeSet::new(),
        }
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
                None => {}
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
        self.pending.remove(&flow_key(flow));
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
            e = e.evidence("name_evidence", serde_json::json!(d.tool_evidence));
            if let Some(sni) = d.tls.as_ref().and_then(|t| t.sni.clone()) {
                e = e.evidence("sni", sni);
            }
        }
        out.push(with_place(scope, e, "relay", relay));
    }
}
