//! `relay_chain` / `tunnel`: a VPN or anonymising tunnel (WireGuard, OpenVPN, IPsec, Tor,
//! SOCKS, an HTTP CONNECT proxy) started from an inside host to the outside. Behind the
//! corporate VPN, a second tunnel means the host's traffic leaves through someone else's
//! exit. Corporate tunnel endpoints are allow-listed. Severity: high for Tor, medium from
//! an account host (`[network] vpn_pool` or an inventory/session address), low from other
//! inside hosts.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::app::App;
use crate::event::{Event, Kind, Severity};
use crate::flows::Flow;
use crate::timestamp::Timestamp;

use super::Scope;
use super::remote_desktop::{flow_ref, is_account_host, with_place};

/// `[detect.tunnel]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// Tunnel endpoints expected from account hosts (corporate VPN, proxy). Default: none.
    pub allowed_endpoints: Vec<IpNet>,
    /// Distinct (host, protocol, endpoint) findings remembered to report each once.
    /// Default 65536; past it, the oldest are forgotten and may be reported again.
    pub max_reported: usize,
}

impl Default for TunnelConfig {
    fn default() -> TunnelConfig {
        TunnelConfig {
            allowed_endpoints: Vec::new(),
            max_reported: 65536,
        }
    }
}

pub struct Tunnel {
    config: TunnelConfig,
    reported: BTreeSet<(IpAddr, &'static str, IpAddr)>,
}

/// The tunnel a flow carries, by name, if it carries one.
fn tunnel_kind(flow: &Flow) -> Option<&'static str> {
    match flow.app? {
        App::Http => flow
            .details
            .as_ref()?
            .http
            .as_ref()
            .filter(|h| h.connect)
            .map(|_| "http_connect"),
        a if a.is_tunnel() => Some(a.as_str()),
        _ => None,
    }
}

impl Tunnel {
    pub fn new(config: &TunnelConfig) -> Tunnel {
        Tunnel {
            config: config.clone(),
            reported: BTreeSet::new(),
        }
    }

    pub fn on_identified(
        &mut self,
        scope: &Scope<'_>,
        flow: &Flow,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        let Some(kind) = tunnel_kind(flow) else {
            return;
        };
        let (host, peer) = (flow.orig.0, flow.resp.0);
        if !scope.network.is_inside(host)
            || scope.network.is_inside(peer)
            || self
                .config
                .allowed_endpoints
                .iter()
                .any(|n| n.contains(&peer))
        {
            return;
        }
        if !self.reported.insert((host, kind, peer)) {
            return;
        }
        if self.reported.len() > self.config.max_reported {
            self.reported.pop_first();
        }
        // Tor hides where the traffic goes; any tunnel from an account host is a second
        // exit beside the corporate one; from another inside host it may be a service.
        let severity = if flow.app == Some(App::Tor) {
            Severity::High
        } else if is_account_host(scope, host, ts) {
            Severity::Medium
        } else {
            Severity::Low
        };
        let mut e = Event::new(
            ts,
            Kind::RelayChain,
            "tunnel",
            severity,
            &format!("{kind} {peer}"),
        );
        e.host = Some(host);
        e.flow = Some(flow_ref(flow));
        e.app = flow.app;
        e.summary = format!("{host} opened a {kind} tunnel to {peer}, outside the network");
        e = e
            .evidence("tunnel", kind)
            .evidence("peer_port", flow.resp.1);
        if let Some(d) = flow.details.as_deref() {
            if let Some(s) = &d.socks {
                e = e.evidence("target", s.target.clone());
            }
            if let Some(h) = d.http.as_ref().filter(|h| h.connect) {
                e = e.evidence("target", h.target.clone());
            }
            if let Some(w) = &d.wireguard {
                e = e.evidence("handshake_answered", w.handshake_response);
            }
            if let Some(i) = &d.ipsec {
                e = e.evidence("ike_version", serde_json::json!(i.ike_version));
            }
        }
        out.push(with_place(scope, e, "peer", peer));
    }
}
