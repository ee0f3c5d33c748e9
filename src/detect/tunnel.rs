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
use crate::detect::{Detector, Moment, Reason, Registered, Stage, moments};
use crate::dissect::identify::Protocol;
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

impl TunnelConfig {
    /// See [`super::check`].
    pub fn validate(&self) -> Result<(), String> {
        super::check::not_zero("max_reported", self.max_reported)
    }
}

pub struct Tunnel {
    config: TunnelConfig,
    reported: BTreeSet<(IpAddr, &'static str, IpAddr)>,
    /// Reports forgotten at `max_reported` (the lowest key goes).
    evicted: u64,
}

/// The tunnel a flow carries, by name, if it carries one.
fn tunnel_kind(flow: &Flow) -> Option<&'static str> {
    match flow.app? {
        App::Http => flow
            .details
            .as_ref()?
            .http_connect()
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
            evicted: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> (&'static str, u64) {
        ("tunnel_reported", self.evicted)
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
            self.evicted += 1;
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
        match flow.details.as_deref().and_then(|d| d.other.as_ref()) {
            Some(Protocol::Socks(s)) => e = e.evidence("target", s.target.clone()),
            Some(Protocol::Http(h)) if h.connect => e = e.evidence("target", h.target.clone()),
            Some(Protocol::Wireguard(w)) => {
                e = e.evidence("handshake_answered", w.handshake_response)
            }
            Some(Protocol::Ipsec(i)) => {
                e = e.evidence("ike_version", serde_json::json!(i.ike_version))
            }
            _ => {}
        }
        out.push(with_place(scope, e, "peer", peer));
    }
}

/// A tunnel inside the corporate tunnel.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Flow,
    reasons: &[Reason {
        name: "tunnel",
        weight: 20.0,
    }],
    new: |c| Box::new(Tunnel::new(&c.detect.tunnel)),
};

impl Detector for Tunnel {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        if let Moment::Identified { flow, ts, .. } = *moment {
            self.on_identified(scope, flow, ts, out);
        }
    }

    fn moments(&self) -> u8 {
        moments::IDENTIFIED
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![Tunnel::evictions(self)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::remote_desktop::testkit::*;
    use crate::dissect::http::HttpDetails;
    use crate::dissect::identify::{Details, protocol};

    fn run(t: &mut Tunnel, src: &str, dst: &str, app: App, details: Details) -> Vec<Event> {
        let world = World::new();
        let mut wire = Wire::new();
        let key = wire.udp(T0, src, dst, 148);
        let f = wire.table.get_mut(&key).unwrap();
        f.app = Some(app);
        f.details = Some(Box::new(details));
        let mut out = Vec::new();
        t.on_identified(
            &world.scope(),
            wire.table.get(&key).unwrap(),
            Timestamp(T0),
            &mut out,
        );
        out
    }

    #[test]
    fn tunnels_from_inside_to_outside() {
        let mut t = Tunnel::new(&TunnelConfig {
            allowed_endpoints: vec!["203.0.113.10/32".parse().unwrap()],
            ..TunnelConfig::default()
        });
        let d = Details::default;
        let out = run(
            &mut t,
            "10.8.0.16:41000",
            "192.0.2.100:51820",
            App::Wireguard,
            d(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Medium);
        assert_eq!(out[0].evidence["peer_country"], "RU");
        // Once per host, protocol and endpoint.
        assert!(
            run(
                &mut t,
                "10.8.0.16:41001",
                "192.0.2.100:51820",
                App::Wireguard,
                d()
            )
            .is_empty()
        );
        // The corporate endpoint, an inside peer, a tunnel coming in: not reported.
        assert!(
            run(
                &mut t,
                "10.8.0.17:41000",
                "203.0.113.10:51820",
                App::Wireguard,
                d()
            )
            .is_empty()
        );
        assert!(
            run(
                &mut t,
                "10.8.0.17:41000",
                "10.20.0.1:1194",
                App::Openvpn,
                d()
            )
            .is_empty()
        );
        assert!(
            run(
                &mut t,
                "192.0.2.100:41000",
                "10.8.0.17:51820",
                App::Wireguard,
                d()
            )
            .is_empty()
        );
        // Tor is high; an inside host that is no account's is low.
        let tor = run(&mut t, "10.8.0.17:41000", "192.0.2.33:9001", App::Tor, d());
        assert_eq!(tor[0].severity, Severity::High);
        let server = run(&mut t, "10.20.0.7:41000", "192.0.2.33:500", App::Ipsec, d());
        assert_eq!(server[0].severity, Severity::Low);
        // Plain HTTP is no tunnel; CONNECT is.
        assert!(run(&mut t, "10.8.0.17:50000", "192.0.2.120:80", App::Http, d()).is_empty());
        let connect = Details {
            other: protocol(
                Protocol::Http,
                HttpDetails {
                    method: "CONNECT".into(),
                    target: "example.net:443".into(),
                    connect: true,
                    ..HttpDetails::default()
                },
            ),
            ..Details::default()
        };
        let out = run(
            &mut t,
            "10.8.0.17:50000",
            "192.0.2.120:3128",
            App::Http,
            connect,
        );
        assert_eq!(out[0].evidence["tunnel"], "http_connect");
        assert_eq!(out[0].evidence["target"], "example.net:443");
    }
}
