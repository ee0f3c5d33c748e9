//! `relay_chain` / `rtt_split`: a relay inside one TCP flow. The TCP handshake measures the
//! round trip to the nearest TCP endpoint; the first application exchange measures it to
//! the application endpoint. When a relay terminates TCP, the second is many times the
//! first, on the side of the sensor where the relay sits:
//!
//! - toward the responder: SYN → SYN/ACK against the client's first data → the server's
//!   first data (ClientHello → ServerHello, X.224 request → confirm);
//! - toward the originator: SYN/ACK → ACK against the server's first data → the client's
//!   next flight.
//!
//! Only TLS openings are timed: a ServerHello answers a ClientHello at once. Protocols
//! whose server speaks first (SSH banners) or may think for a while (HTTP) are not, and
//! neither is RDP: in the development captures an X.224 confirm came 496 ms after its
//! request on a LAN with a 0.44 ms handshake, and a client's next flight 3.3 s after the
//! confirm (the client waited for its user). A side is skipped, and the evidence says
//! why, when its timing is unreliable: a retransmission, a missing handshake packet, a
//! server that spoke first.
//!
//! Thresholds come from the development captures (`../shared/captures`, every TLS flow
//! with a clean handshake): toward the responder, application RTT over TCP RTT reached
//! 6.5 and exceeded it by at most 20.5 ms (a CDN over IPv6); toward the originator, the
//! client's own processing made the ratio as large as 142 on sub-millisecond handshakes,
//! but never more than 4.3 ms in absolute terms. A relay adds the round trip behind it,
//! tens to hundreds of ms. So a side is split when the application RTT is at least
//! `min_ratio` (3) times the TCP RTT *and* at least `min_extra` (50 ms) above it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::decode::Proto;
use crate::detect::{Detector, Moment, Reason, Registered, Stage};
use crate::event::{Event, Kind, Severity};
use crate::flows::flow::{ORIG, RESP};
use crate::flows::{Flow, FlowKey, FlowTable, humantime_serde};
use crate::timestamp::Timestamp;

use super::Scope;
use super::remote_desktop::{flow_ref, is_account_host, round2, with_place};

/// `[detect.rtt_split]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RttSplitConfig {
    /// Application RTT over TCP RTT on one side. Default 3.0.
    pub min_ratio: f64,
    /// Application RTT minus TCP RTT, so that sub-millisecond LAN handshakes and a
    /// server's few ms of work are not a relay. Default `"50ms"`.
    #[serde(with = "humantime_serde")]
    pub min_extra: Duration,
    /// How long to wait for the client's second flight before judging the responder
    /// side alone. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Flows waiting for their second flight; past it, the oldest is judged early.
    /// Default 65536.
    pub max_pending: usize,
}

impl Default for RttSplitConfig {
    fn default() -> RttSplitConfig {
        RttSplitConfig {
            min_ratio: 3.0,
            min_extra: Duration::from_millis(50),
            wait: Duration::from_secs(30),
            max_pending: 65536,
        }
    }
}

impl RttSplitConfig {
    /// See [`super::check`]; `min_extra` may be zero (the ratio alone decides).
    pub fn validate(&self) -> Result<(), String> {
        use super::check::{not_zero, positive};
        positive("min_ratio", self.min_ratio)?;
        not_zero("wait", self.wait)?;
        not_zero("max_pending", self.max_pending)
    }
}

/// The timing of one side of the sensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    /// TCP and application round trips, ns.
    Measured { tcp_ns: u64, app_ns: u64 },
    /// Not timed, and why.
    Skipped(&'static str),
}

impl Side {
    fn json(self) -> serde_json::Value {
        match self {
            Side::Measured { tcp_ns, app_ns } => json!({
                "tcp_rtt_ms": round2(tcp_ns as f64 / 1e6),
                "app_rtt_ms": round2(app_ns as f64 / 1e6),
                "ratio": round2(app_ns as f64 / tcp_ns.max(1) as f64),
            }),
            Side::Skipped(why) => json!({ "skipped": why }),
        }
    }
}

/// Both sides of a flow, from its TCP track and first data times.
pub fn measure(flow: &Flow) -> [Side; 2] {
    let t = &flow.tcp;
    let (cd, sd) = (flow.dir[ORIG].first_data(), flow.dir[RESP].first_data());
    let retrans = t.retransmissions[ORIG] > 0 || t.retransmissions[RESP] > 0;
    let gap = |a: Option<Timestamp>, b: Option<Timestamp>| b?.0.checked_sub(a?.0);
    let side = |tcp: Option<u64>, app: Option<u64>, missing: &'static str| match (tcp, app) {
        _ if retrans => Side::Skipped("retransmission"),
        (None, _) => Side::Skipped("no_handshake"),
        (_, None) => Side::Skipped(missing),
        (Some(tcp_ns), Some(app_ns)) => Side::Measured { tcp_ns, app_ns },
    };
    if let (Some(c), Some(s)) = (cd, sd)
        && s < c
    {
        return [Side::Skipped("server_first"); 2];
    }
    [
        side(t.rtt_resp_ns(), gap(cd, sd), "no_reply"),
        side(
            t.rtt_orig_ns(),
            gap(sd, t.orig_second_flight()),
            "no_second_flight",
        ),
    ]
}

/// Flows whose opening is a request answered at once: TLS, but not TLS after RDP's
/// X.224 exchange (module doc).
fn timed(flow: &Flow) -> bool {
    flow.proto == Proto::Tcp
        && flow.app != Some(App::Rdp)
        && flow.details.as_ref().is_some_and(|d| d.tls.is_some())
}

pub struct RttSplit {
    config: RttSplitConfig,
    /// Flows identified before the client's second flight, by identification time.
    pending: VecDeque<(Timestamp, FlowKey)>,
    waiting: BTreeMap<FlowKey, Timestamp>,
    /// Flows given up at `max_pending` (the longest waiting goes).
    evicted: u64,
}

impl RttSplit {
    pub fn new(config: &RttSplitConfig) -> RttSplit {
        RttSplit {
            config: config.clone(),
            pending: VecDeque::new(),
            waiting: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> (&'static str, u64) {
        ("rtt_split_pending", self.evicted)
    }

    pub fn on_identified(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        flow: &Flow,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        if !timed(flow) {
            return;
        }
        if flow.tcp.orig_second_flight().is_some() {
            self.judge(scope, flow, ts, out);
            return;
        }
        if self.waiting.len() >= self.config.max_pending
            && let Some((_, old)) = self.pending.pop_front()
            && self.waiting.remove(&old).is_some()
        {
            self.evicted += 1;
        }
        self.pending.push_back((ts, *key));
        self.waiting.insert(*key, ts);
    }

    pub fn on_tick(
        &mut self,
        scope: &Scope<'_>,
        now: Timestamp,
        flows: &FlowTable,
        out: &mut Vec<Event>,
    ) {
        let mut keep = VecDeque::with_capacity(self.pending.len());
        while let Some((since, key)) = self.pending.pop_front() {
            if !self.waiting.contains_key(&key) {
                continue;
            }
            match flows.get(&key) {
                Some(f)
                    if f.tcp.orig_second_flight().is_some()
                        || now.since(since) >= self.config.wait =>
                {
                    self.waiting.remove(&key);
                    self.judge(scope, f, now, out);
                }
                Some(_) => keep.push_back((since, key)),
                None => {
                    self.waiting.remove(&key);
                }
            }
        }
        self.pending = keep;
    }

    pub fn on_end(&mut self, scope: &Scope<'_>, flow: &Flow, ts: Timestamp, out: &mut Vec<Event>) {
        if self.waiting.remove(&flow.key()).is_some() {
            self.judge(scope, flow, ts, out);
        }
    }

    fn split(&self, s: Side) -> bool {
        match s {
            Side::Measured { tcp_ns, app_ns } => {
                app_ns as f64 >= self.config.min_ratio * tcp_ns as f64
                    && app_ns.saturating_sub(tcp_ns) >= self.config.min_extra.as_nanos() as u64
            }
            Side::Skipped(_) => false,
        }
    }

    fn judge(&self, scope: &Scope<'_>, flow: &Flow, ts: Timestamp, out: &mut Vec<Event>) {
        let sides = measure(flow);
        let names = ["responder", "originator"];
        let ends = [flow.resp.0, flow.orig.0];
        // The host a finding is about: the inside end, the originator when both are.
        let host = [flow.orig.0, flow.resp.0]
            .into_iter()
            .find(|ip| scope.network.is_inside(*ip));
        for i in 0..2 {
            if !self.split(sides[i]) {
                continue;
            }
            // An account host whose own side hides a relay is itself relaying someone's
            // session: the farm pattern. A relay toward a server is a proxy or a CDN far
            // more often.
            let severity =
                if i == 1 && host == Some(flow.orig.0) && is_account_host(scope, flow.orig.0, ts) {
                    Severity::Medium
                } else {
                    Severity::Low
                };
            let mut e = Event::new(ts, Kind::RelayChain, "rtt_split", severity, names[i]);
            e.host = host;
            e.flow = Some(flow_ref(flow));
            e.app = flow.app;
            e.summary = format!(
                "application round trip toward the {} {} is far longer than its TCP round trip: a relay terminates TCP on that side",
                names[i], ends[i]
            );
            e = e
                .evidence("relay_side", names[i])
                .evidence("responder_side", sides[0].json())
                .evidence("originator_side", sides[1].json())
                .evidence("min_ratio", self.config.min_ratio)
                .evidence("min_extra_ms", self.config.min_extra.as_millis() as u64);
            out.push(with_place(scope, e, "relay", ends[i]));
        }
    }
}

/// A connection whose TCP ends nearer than its application: a relay.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Flow,
    reasons: &[Reason {
        name: "rtt_split",
        weight: 20.0,
    }],
    new: |c| Box::new(RttSplit::new(&c.detect.rtt_split)),
};

impl Detector for RttSplit {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::Identified { key, flow, ts } => self.on_identified(scope, key, flow, ts, out),
            Moment::Tick { now, flows } => self.on_tick(scope, now, flows, out),
            Moment::Ended { flow, ts } => self.on_end(scope, flow, ts, out),
            _ => {}
        }
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![RttSplit::evictions(self)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::remote_desktop::testkit::*;
    use crate::dissect::identify::{Details, TlsDetails};

    const C: &str = "10.8.0.18:50000";
    const S: &str = "192.0.2.140:443";

    /// A TLS opening: handshake (`syn`, `ack` each side), ClientHello 1 ms after the ACK,
    /// the server's flight `reply` later, the client's next flight `second` after that.
    fn opening(wire: &mut Wire, syn: u64, ack: u64, reply: u64, second: u64) -> FlowKey {
        let key = wire.handshake(T0, C, S, syn, ack);
        let t = T0 + syn + ack + MS;
        wire.tcp(t, C, S, 300);
        wire.tcp(t + reply, S, C, 1200);
        wire.tcp(t + reply + second, C, S, 80);
        let f = wire.table.get_mut(&key).unwrap();
        f.details = Some(Box::new(Details {
            tls: crate::dissect::identify::tls_details(TlsDetails::default()),
            ..Details::default()
        }));
        key
    }

    fn judge(wire: &Wire, key: &FlowKey) -> Vec<Event> {
        let world = World::new();
        let mut r = RttSplit::new(&RttSplitConfig::default());
        let mut out = Vec::new();
        let flow = wire.table.get(key).unwrap();
        r.on_identified(&world.scope(), key, flow, Timestamp(T0 + SEC), &mut out);
        out
    }

    #[test]
    fn relay_toward_the_server() {
        let mut wire = Wire::new();
        let key = opening(&mut wire, 10 * MS, 10 * MS, 180 * MS, 12 * MS);
        let out = judge(&wire, &key);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["relay_side"], "responder");
        assert_eq!(out[0].severity, Severity::Low);
        assert_eq!(out[0].evidence["responder_side"]["ratio"], 18.0);
    }

    #[test]
    fn relay_toward_an_account_host_is_medium() {
        let mut wire = Wire::new();
        let key = opening(&mut wire, 10 * MS, 10 * MS, 12 * MS, 150 * MS);
        let out = judge(&wire, &key);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["relay_side"], "originator");
        assert_eq!(out[0].severity, Severity::Medium);
        assert_eq!(out[0].host, Some("10.8.0.18".parse().unwrap()));
    }

    #[test]
    fn small_absolute_gaps_are_noise() {
        // Ratio 40 on a LAN, but only 3.9 ms: a server's work, not a relay.
        let mut wire = Wire::new();
        let key = opening(&mut wire, 100_000, 100_000, 4 * MS, 4 * MS);
        assert!(judge(&wire, &key).is_empty());
    }

    #[test]
    fn unreliable_timing_is_skipped_and_said() {
        let mut wire = Wire::new();
        let key = opening(&mut wire, 10 * MS, 10 * MS, 180 * MS, 12 * MS);
        wire.table.get_mut(&key).unwrap().tcp.retransmissions[ORIG] = 1;
        let flow = wire.table.get(&key).unwrap();
        assert_eq!(measure(flow), [Side::Skipped("retransmission"); 2]);
        assert!(judge(&wire, &key).is_empty());

        // No handshake seen: the capture started mid-connection.
        let mut wire = Wire::new();
        wire.tcp(T0, C, S, 300);
        let key = wire.tcp(T0 + 180 * MS, S, C, 1200);
        let flow = wire.table.get(&key).unwrap();
        assert_eq!(measure(flow)[0], Side::Skipped("no_handshake"));
        assert_eq!(
            Side::Skipped("no_handshake").json(),
            json!({"skipped": "no_handshake"})
        );

        // The server spoke first (an SSH banner): nothing to time.
        let mut wire = Wire::new();
        let key = wire.handshake(T0, C, S, 10 * MS, 10 * MS);
        wire.tcp(T0 + 30 * MS, S, C, 20);
        wire.tcp(T0 + 300 * MS, C, S, 20);
        let flow = wire.table.get(&key).unwrap();
        assert_eq!(measure(flow), [Side::Skipped("server_first"); 2]);
    }

    #[test]
    fn waits_for_the_second_flight_then_judges() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let key = wire.handshake(T0, C, S, 10 * MS, 10 * MS);
        wire.tcp(T0 + 21 * MS, C, S, 300);
        wire.tcp(T0 + 33 * MS, S, C, 1200);
        wire.table.get_mut(&key).unwrap().details = Some(Box::new(Details {
            tls: crate::dissect::identify::tls_details(TlsDetails::default()),
            ..Details::default()
        }));
        let mut r = RttSplit::new(&RttSplitConfig::default());
        let mut out = Vec::new();
        r.on_identified(
            &scope,
            &key,
            wire.table.get(&key).unwrap(),
            Timestamp(T0 + 33 * MS),
            &mut out,
        );
        r.on_tick(&scope, Timestamp(T0 + SEC), &wire.table, &mut out);
        assert!(out.is_empty());
        wire.tcp(T0 + 233 * MS + SEC, C, S, 80);
        r.on_tick(&scope, Timestamp(T0 + 2 * SEC), &wire.table, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["relay_side"], "originator");
        // Judged once.
        r.on_tick(&scope, Timestamp(T0 + 3 * SEC), &wire.table, &mut out);
        assert_eq!(out.len(), 1);
    }
}
