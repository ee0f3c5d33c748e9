//! `relay_chain` / `rtt_split`: a relay that terminates TCP. The TCP handshake measures the
//! round trip to the nearest TCP endpoint; the first application exchange measures it to
//! the application endpoint. Behind a relay the second is longer by the round trip beyond
//! the relay, on the side of the sensor where the relay sits:
//!
//! - toward the responder: SYN → SYN/ACK against the end of the client's first flight →
//!   the server's first data (ClientHello → ServerHello);
//! - toward the originator: SYN/ACK → ACK against the end of the server's flight → the
//!   client's next flight.
//!
//! An answer is timed from the *last* packet of what it answers: timed from the first, a
//! quarter of the slow benign answers were the server still sending its own flight.
//!
//! Only TLS openings are timed: a ServerHello answers a ClientHello at once. Protocols
//! whose server speaks first (SSH banners) or may think for a while (HTTP) are not, and
//! neither is RDP (an X.224 confirm came 496 ms after its request on a LAN). A side is
//! skipped, and the evidence says why, when its timing is unreliable: a retransmission, a
//! missing handshake packet, a server that spoke first.
//!
//! **One connection cannot tell a relay from a slow client.** Measured on real traffic
//! (182 benign TLS connections, 34 client hosts), the originator side's extra delay
//! (application RTT minus TCP RTT) had a median of 2.3 ms but a p95 of 142 ms and a maximum
//! of 301 ms: the client's own work, above all a TLS 1.2 client verifying the certificate
//! it was sent in clear before it answers (23 % of those crossed 50 ms; TLS 1.3: 2 %). At
//! 180 ms 2.5 % still crossed, and a real socat relay showed 182 ms. What separates them
//! is repetition: a relay adds its path on *every* connection through it (16 of 16 in the
//! lab), a client's work comes and goes. So the detector keeps, per candidate relay, the
//! extra delay of its recent connections and judges their low quantile: judged per host on
//! the minimum over three or more connections, one benign host of 34 remained and both
//! real relays did.
//!
//! A candidate relay is the originator's address on the originator side, and on the
//! responder side the responder as reached from one inside host. (The flow stage is
//! partitioned by inside host, so the responder is judged per inside host, in one
//! partition, and the output stays the same for any number of workers; a relay used by
//! many hosts is found by each of them, and judged across them by `shared_relay` in the
//! account stage, from these findings.)
//!
//! The client's TCP ACK of the server's flight does not help: a relay terminates TCP, so
//! it acknowledges as promptly as a client does. The TLS version and whether the
//! certificate went in clear do: a connection whose client had a certificate to verify is
//! evidence only together with others, never alone.
//!
//! Severity follows the strength of the evidence: a relay seen on `min_connections`
//! connections from an account host is medium; a single connection (before the host has
//! that many) is low, and is reported only when no certificate was there to verify.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use smallvec::SmallVec;

use crate::app::App;
use crate::decode::Proto;
use crate::detect::{Detector, Moment, Reason, Registered, Stage, moments};
use crate::dissect::tls::TlsDetails;
use crate::event::{Event, Kind, Leg, RttSplitEvidence, Severity};
use crate::flows::flow::{ORIG, RESP};
use crate::flows::{Flow, FlowKey, FlowTable, Handle, humantime_serde};
use crate::timestamp::Timestamp;

use super::remote_desktop::{flow_ref, is_account_host, round2, with_place};
use super::{Scope, find};

/// `[detect.rtt_split]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RttSplitConfig {
    /// Application RTT over TCP RTT for a connection to count as split. Default 3.0.
    pub min_ratio: f64,
    /// Application RTT minus TCP RTT for a connection to count as split: above the few ms
    /// of a server's or a TLS 1.3 client's work. Default `"50ms"`.
    #[serde(with = "humantime_serde")]
    pub min_extra: Duration,
    /// Connections through one candidate relay, within `window`, before their low quantile
    /// is judged. Default 3 (per host, the minimum over three left 1 of 34 benign hosts).
    pub min_connections: usize,
    /// Which low quantile of the connections' extra delays must reach `min_extra`: 0 is
    /// the fastest connection, 0.25 lets one connection in four be fast. Default 0.25.
    pub quantile: f64,
    /// How long a connection counts for its relay, and how long a relay reported stays
    /// reported. Default `"1h"`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long to wait for the client's second flight before judging the responder
    /// side alone. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Flows waiting for their second flight; past it, the oldest is judged early.
    /// Default 65536.
    pub max_pending: usize,
    /// Candidate relays followed per flow worker (and responder relays followed across
    /// hosts by `shared_relay`); past it, the one idle longest goes. Default 65536.
    pub max_relays: usize,
    /// `shared_relay`: accounts whose hosts must agree on one responder-side relay.
    /// Default 2.
    pub shared_min_accounts: usize,
    /// `shared_relay`: connections a host needs to the relay, all split at the low
    /// quantile, before it agrees. Default 2 (one slow answer from a busy server is
    /// not a relay).
    pub shared_min_connections: usize,
}

impl Default for RttSplitConfig {
    fn default() -> RttSplitConfig {
        RttSplitConfig {
            min_ratio: 3.0,
            min_extra: Duration::from_millis(50),
            min_connections: 3,
            quantile: 0.25,
            window: Duration::from_secs(3600),
            wait: Duration::from_secs(30),
            max_pending: 65536,
            max_relays: 65536,
            shared_min_accounts: 2,
            shared_min_connections: 2,
        }
    }
}

impl RttSplitConfig {
    /// See [`super::check`]; `min_extra` and `quantile` may be zero.
    pub fn validate(&self) -> Result<(), String> {
        use super::check::{not_zero, positive};
        positive("min_ratio", self.min_ratio)?;
        not_zero("min_connections", self.min_connections)?;
        if !(0.0..1.0).contains(&self.quantile) {
            return Err(format!(
                "quantile must be at least 0 and below 1, not {}",
                self.quantile
            ));
        }
        not_zero("window", self.window)?;
        not_zero("wait", self.wait)?;
        not_zero("max_pending", self.max_pending)?;
        not_zero("max_relays", self.max_relays)?;
        not_zero("shared_min_accounts", self.shared_min_accounts)?;
        not_zero("shared_min_connections", self.shared_min_connections)
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
    /// The side as a finding's evidence gives it.
    fn leg(self) -> Leg {
        match self {
            Side::Measured { tcp_ns, app_ns } => Leg::Measured {
                tcp_rtt_ms: round2(tcp_ns as f64 / 1e6),
                app_rtt_ms: round2(app_ns as f64 / 1e6),
                ratio: round2(app_ns as f64 / tcp_ns.max(1) as f64),
            },
            Side::Skipped(why) => Leg::Skipped {
                skipped: why.to_string(),
            },
        }
    }
}

/// Both sides of a flow (`[responder, originator]`), from its TCP track and data times.
pub fn measure(flow: &Flow) -> [Side; 2] {
    let t = &flow.tcp;
    let (cd, sd) = (flow.dir[ORIG].first_data(), flow.dir[RESP].first_data());
    let [orig_flight, resp_flight] = t.flight_ns();
    let end = |first: Option<Timestamp>, flight: Option<u64>| Some(Timestamp(first?.0 + flight?));
    let retrans = t.retransmissions[ORIG] > 0 || t.retransmissions[RESP] > 0;
    let gap = |a: Option<Timestamp>, b: Option<Timestamp>| b?.0.checked_sub(a?.0);
    let side = |tcp: Option<u64>, flight: Option<u64>, app: Option<u64>, missing| match (tcp, app) {
        _ if retrans => Side::Skipped("retransmission"),
        // A "flight" over 655 ms is a conversation, not one message to answer.
        _ if flight.is_none() => Side::Skipped("long_flight"),
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
        side(
            t.rtt_resp_ns(),
            orig_flight,
            gap(end(cd, orig_flight), sd),
            "no_reply",
        ),
        side(
            t.rtt_orig_ns(),
            resp_flight,
            gap(end(sd, resp_flight), t.orig_second_flight()),
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

/// A candidate relay: the originator, or a responder as one inside host reaches it. Held
/// as integers, which order as `(Originator(a) | Responder { host: a, responder: b })`
/// would (variant, then each address: IPv4 first, then by its bits), and compare in a few
/// instructions: compared as an enum of two `IpAddr`s, each comparison was a call of ~30
/// (a fifth of judging a flow, office mix). The order matters: the relay evicted at
/// `max_relays` is the first found idle longest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate(u8, u64, u64, u8, u64, u64);

impl Candidate {
    fn originator(ip: IpAddr) -> Candidate {
        let (family, hi, lo) = ordered(ip);
        Candidate(family, hi, lo, 0, 0, 0)
    }

    fn responder(host: IpAddr, responder: IpAddr) -> Candidate {
        let (family, hi, lo) = ordered(host);
        let (r_family, r_hi, r_lo) = ordered(responder);
        Candidate(2 | family, hi, lo, r_family, r_hi, r_lo)
    }
}

/// An address as integers that order as `IpAddr` does: family (0 IPv4, 1 IPv6), bits.
fn ordered(ip: IpAddr) -> (u8, u64, u64) {
    match ip {
        IpAddr::V4(a) => (0, 0, u64::from(a.to_bits())),
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            (1, (bits >> 64) as u64, bits as u64)
        }
    }
}

/// The connections through one candidate relay, within the window.
#[derive(Default)]
struct Relay {
    /// (time, extra delay in ns, 0 when the ratio was too small), oldest first. The
    /// first in place: most candidates are seen once, and a queue of their own was an
    /// allocation each (100 instructions and 64 bytes per candidate, office mix).
    samples: SmallVec<[(Timestamp, u64); 1]>,
    /// When it was last reported as repeated.
    reported: Option<Timestamp>,
}

/// Samples kept per relay: the low quantile of the latest is all the judgement needs.
const SAMPLES: usize = 16;

pub struct RttSplit {
    config: RttSplitConfig,
    /// Flows identified before the client's second flight, by identification time, with
    /// their start sequence numbers and where they sat in the table then.
    pending: VecDeque<(Timestamp, FlowKey, u64, Option<Handle>)>,
    /// Waiting flows by start sequence number, not key: every flow's end asks, and a
    /// number hashes in a few instructions where a key hashed two addresses. Hashed with
    /// aHash (nothing walks it in order); it holds only the flows waiting, a few per host.
    waiting: HashSet<u64, ahash::RandomState>,
    /// A B-tree, though nothing walks it in order: a hash table cut a few hundred
    /// instructions per timed flow but held ~10 MB more at the office mix's peak
    /// (measured for the relays alone: 9.4 MB for 230 instructions per judged flow).
    relays: BTreeMap<Candidate, Relay>,
    /// `window` in ns: compared at every judged connection, where a `Duration` was a
    /// division.
    window_ns: u64,
    /// For each number of samples, the index of the low quantile among them, sorted.
    low_at: [usize; SAMPLES + 1],
    /// The minute of packet time relays were last let go at.
    expired: u64,
    /// Flows given up at `max_pending` (the longest waiting goes).
    evicted: u64,
    /// Relays dropped at `max_relays` (the one idle longest goes).
    evicted_relays: u64,
}

impl RttSplit {
    pub fn new(config: &RttSplitConfig) -> RttSplit {
        RttSplit {
            config: config.clone(),
            pending: VecDeque::new(),
            waiting: HashSet::default(),
            relays: BTreeMap::new(),
            window_ns: config.window.as_nanos().min(u128::from(u64::MAX)) as u64,
            low_at: std::array::from_fn(|n| {
                (config.quantile * n.saturating_sub(1) as f64).floor() as usize
            }),
            expired: 0,
            evicted: 0,
            evicted_relays: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rtt_split_pending", self.evicted),
            ("rtt_split_relays", self.evicted_relays),
        ]
    }

    pub fn on_identified(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        at: Option<Handle>,
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
            && let Some((_, _, old, _)) = self.pending.pop_front()
            && self.waiting.remove(&old)
        {
            self.evicted += 1;
        }
        self.pending.push_back((ts, *key, flow.seq, at));
        self.waiting.insert(flow.seq);
    }

    pub fn on_tick(
        &mut self,
        scope: &Scope<'_>,
        now: Timestamp,
        flows: &FlowTable,
        out: &mut Vec<Event>,
    ) {
        // Kept in place, in order: a queue taken out for the walk, not a new one each second.
        let mut pending = std::mem::take(&mut self.pending);
        pending.retain(|&(since, key, seq, at)| {
            if !self.waiting.contains(&seq) {
                return false;
            }
            match find(flows, at, &key).filter(|f| f.seq == seq) {
                Some(f)
                    if f.tcp.orig_second_flight().is_some()
                        || now.since(since) >= self.config.wait =>
                {
                    self.waiting.remove(&seq);
                    self.judge(scope, f, now, out);
                    false
                }
                Some(_) => true,
                None => {
                    self.waiting.remove(&seq);
                    false
                }
            }
        });
        self.pending = pending;
        if now.secs() / 60 > self.expired {
            self.expired = now.secs() / 60;
            self.expire(now);
        }
    }

    pub fn on_end(&mut self, scope: &Scope<'_>, flow: &Flow, ts: Timestamp, out: &mut Vec<Event>) {
        if self.waiting.remove(&flow.seq) {
            self.judge(scope, flow, ts, out);
        }
    }

    /// Lets go of connections older than the window, and of relays left with none.
    fn expire(&mut self, now: Timestamp) {
        let window = self.config.window;
        self.relays.retain(|_, r| {
            let old = r.samples.iter().take_while(|s| now.since(s.0) > window);
            r.samples.drain(..old.count());
            !r.samples.is_empty() || r.reported.is_some_and(|t| now.since(t) <= window)
        });
    }

    /// The extra delay a side counts for: zero unless the ratio is reached too.
    fn extra(&self, s: Side) -> Option<u64> {
        match s {
            Side::Measured { tcp_ns, app_ns } => {
                Some(if app_ns as f64 >= self.config.min_ratio * tcp_ns as f64 {
                    app_ns.saturating_sub(tcp_ns)
                } else {
                    0
                })
            }
            Side::Skipped(_) => None,
        }
    }

    /// Adds one connection to its relay; returns how many the relay has in the window,
    /// the low quantile of their extra delays, and whether it was reported within it.
    fn add(&mut self, candidate: Candidate, ts: Timestamp, extra: u64) -> (usize, u64, bool) {
        if self.relays.len() >= self.config.max_relays
            && !self.relays.contains_key(&candidate)
            && let Some(idle) = (self.relays.iter())
                .min_by_key(|(_, r)| r.samples.last().map(|s| s.0))
                .map(|(c, _)| *c)
        {
            self.relays.remove(&idle);
            self.evicted_relays += 1;
        }
        let window = self.window_ns;
        let relay = self.relays.entry(candidate).or_default();
        // The oldest go while out of the window or while the list is full.
        let mut old = 0;
        while (relay.samples.get(old)).is_some_and(|s| ts.0.saturating_sub(s.0.0) > window)
            || relay.samples.len() - old >= SAMPLES
        {
            old += 1;
        }
        if old > 0 {
            relay.samples.drain(..old);
        }
        relay.samples.push((ts, extra));
        // Sorted on the stack: there are `SAMPLES` at most.
        let mut buffer = [0u64; SAMPLES];
        for (b, s) in buffer.iter_mut().zip(&relay.samples) {
            *b = s.1;
        }
        let extras = &mut buffer[..relay.samples.len()];
        extras.sort_unstable();
        let reported = relay
            .reported
            .is_some_and(|t| ts.0.saturating_sub(t.0) <= window);
        (extras.len(), extras[self.low_at[extras.len()]], reported)
    }

    fn judge(&mut self, scope: &Scope<'_>, flow: &Flow, ts: Timestamp, out: &mut Vec<Event>) {
        let sides = measure(flow);
        let Some(host) = crate::flow_stage::flow_host(scope.network, flow) else {
            return;
        };
        let min_extra = self.config.min_extra.as_nanos() as u64;
        for side in 0..2 {
            let Some(extra) = self.extra(sides[side]) else {
                continue;
            };
            let candidate = if side == 0 {
                Candidate::responder(host, flow.resp.0)
            } else {
                Candidate::originator(flow.orig.0)
            };
            let (connections, low, reported) = self.add(candidate, ts, extra);
            let repeated = connections >= self.config.min_connections;
            let severity = if repeated {
                if reported || low < min_extra {
                    continue;
                }
                if let Some(r) = self.relays.get_mut(&candidate) {
                    r.reported = Some(ts);
                }
                if is_account_host(scope, flow.orig.0, ts) {
                    Severity::Medium
                } else {
                    Severity::Low
                }
            } else if extra >= min_extra && !(side == 1 && certificate(flow)) {
                Severity::Low
            } else {
                continue;
            };
            let judged = Judged {
                side,
                severity,
                connections,
                extra,
                low,
            };
            out.push(self.finding(scope, flow, host, sides, judged, ts));
        }
    }

    /// The finding of one side judged a relay. Apart and cold: few connections are
    /// reported, and built in `judge` the evidence's figures were worked out (and its
    /// room on the stack set up) for every connection judged.
    #[cold]
    #[inline(never)]
    fn finding(
        &self,
        scope: &Scope<'_>,
        flow: &Flow,
        host: IpAddr,
        sides: [Side; 2],
        judged: Judged,
        ts: Timestamp,
    ) -> Event {
        let Judged {
            side: i,
            severity,
            connections,
            extra,
            low,
        } = judged;
        let names = ["responder", "originator"];
        let ends = [flow.resp.0, flow.orig.0];
        let repeated = connections >= self.config.min_connections;
        let mut e = Event::new(ts, Kind::RelayChain, "rtt_split", severity, names[i]);
        e.host = Some(host);
        e.flow = Some(flow_ref(flow));
        e.app = flow.app;
        e.summary = if repeated {
            format!(
                "on {connections} connections the application round trip toward the {} {} is far longer than the TCP round trip: a relay terminates TCP on that side",
                names[i], ends[i]
            )
        } else {
            format!(
                "on one connection the application round trip toward the {} {} is far longer than its TCP round trip: a relay may terminate TCP on that side",
                names[i], ends[i]
            )
        };
        e = e.with(&RttSplitEvidence {
            relay_side: names[i].to_string(),
            relay: ends[i],
            evidence: if repeated { "repeated" } else { "one_off" }.to_string(),
            connections: connections as u64,
            extra_ms: round2(extra as f64 / 1e6),
            low_quantile_extra_ms: round2(low as f64 / 1e6),
            responder_side: sides[0].leg(),
            originator_side: sides[1].leg(),
            tls_version: tls(flow)
                .and_then(|t| t.version)
                .map(|v| format!("{v:#06x}")),
            certificate_in_clear: certificate(flow),
            min_ratio: self.config.min_ratio,
            min_extra_ms: self.config.min_extra.as_millis() as u64,
            min_connections: self.config.min_connections as u64,
            quantile: self.config.quantile,
        });
        with_place(scope, e, "relay", ends[i])
    }
}

/// What judged one side of a connection a relay (`side` 0 the responder's, 1 the
/// originator's), for its finding.
struct Judged {
    side: usize,
    severity: Severity,
    connections: usize,
    extra: u64,
    low: u64,
}

/// The flow's TLS details. Read only for a connection that may be reported (few are): the
/// flow's details are cold by the time its second flight is judged.
fn tls(flow: &Flow) -> Option<&TlsDetails> {
    flow.details.as_ref().and_then(|d| d.tls.as_deref())
}

/// A certificate in clear (TLS 1.2) is one the client verifies before answering.
fn certificate(flow: &Flow) -> bool {
    tls(flow).is_some_and(|t| t.cert_subject.is_some())
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
            Moment::Identified { key, at, flow, ts } => {
                self.on_identified(scope, key, Some(at), flow, ts, out)
            }
            Moment::Tick { now, flows } => self.on_tick(scope, now, flows, out),
            Moment::Ended { flow, ts } => self.on_end(scope, flow, ts, out),
            _ => {}
        }
    }

    fn moments(&self) -> u8 {
        moments::IDENTIFIED | moments::TICK | moments::ENDED
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        RttSplit::evictions(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::remote_desktop::testkit::*;
    use crate::dissect::identify::Details;

    const C: &str = "10.8.0.18:50000";
    const S: &str = "192.0.2.140:443";

    /// A TLS opening from `c` at `t0`: handshake (`syn`, `ack` each side), ClientHello 1 ms
    /// after the ACK, the server's flight `reply` later, the client's next flight `second`
    /// after that. `cert`: the server's certificate went in clear (TLS 1.2).
    #[allow(clippy::too_many_arguments)]
    fn opening_at(
        wire: &mut Wire,
        t0: u64,
        c: &str,
        syn: u64,
        ack: u64,
        reply: u64,
        second: u64,
        cert: bool,
    ) -> FlowKey {
        let key = wire.handshake(t0, c, S, syn, ack);
        let t = t0 + syn + ack + MS;
        wire.tcp(t, c, S, 300);
        wire.tcp(t + reply, S, c, 1200);
        wire.tcp(t + reply + second, c, S, 80);
        let f = wire.table.get_mut(&key).unwrap();
        f.details = Some(Box::new(Details {
            tls: crate::dissect::identify::tls_details(TlsDetails {
                version: Some(if cert { 0x0303 } else { 0x0304 }),
                cert_subject: cert.then(|| "CN=example.net".to_string()),
                ..TlsDetails::default()
            }),
            ..Details::default()
        }));
        key
    }

    fn opening(wire: &mut Wire, syn: u64, ack: u64, reply: u64, second: u64) -> FlowKey {
        opening_at(wire, T0, C, syn, ack, reply, second, false)
    }

    fn judge(wire: &Wire, key: &FlowKey) -> Vec<Event> {
        let world = World::new();
        let mut r = RttSplit::new(&RttSplitConfig::default());
        let mut out = Vec::new();
        let flow = wire.table.get(key).unwrap();
        r.on_identified(
            &world.scope(),
            key,
            None,
            flow,
            Timestamp(T0 + SEC),
            &mut out,
        );
        out
    }

    /// Connections from `C` a minute apart, each `(second flight delay, cert)`, judged
    /// by one detector; the findings in order.
    fn connections(seconds: &[(u64, bool)]) -> Vec<Event> {
        connections_every(MIN, seconds)
    }

    /// [`connections`], `every` apart.
    fn connections_every(every: u64, seconds: &[(u64, bool)]) -> Vec<Event> {
        let world = World::new();
        let mut r = RttSplit::new(&RttSplitConfig::default());
        let mut wire = Wire::new();
        let mut out = Vec::new();
        for (i, (second, cert)) in seconds.iter().enumerate() {
            let t0 = T0 + i as u64 * every;
            let c = format!("10.8.0.18:{}", 50000 + i);
            let key = opening_at(&mut wire, t0, &c, 10 * MS, 10 * MS, 12 * MS, *second, *cert);
            let flow = wire.table.get(&key).unwrap();
            r.on_identified(
                &world.scope(),
                &key,
                None,
                flow,
                Timestamp(t0 + SEC),
                &mut out,
            );
        }
        out
    }

    #[test]
    fn one_relayed_connection_is_low() {
        let mut wire = Wire::new();
        let key = opening(&mut wire, 10 * MS, 10 * MS, 180 * MS, 12 * MS);
        let out = judge(&wire, &key);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["relay_side"], "responder");
        assert_eq!(out[0].evidence["evidence"], "one_off");
        assert_eq!(out[0].severity, Severity::Low);
        assert_eq!(out[0].evidence["responder_side"]["ratio"], 18.0);
    }

    #[test]
    fn a_relay_repeated_from_an_account_host_is_medium_once() {
        let out = connections(&[(150 * MS, false); 5]);
        let sev: Vec<_> = out.iter().map(|e| e.severity).collect();
        assert_eq!(sev, [Severity::Low, Severity::Low, Severity::Medium]);
        let e = &out[2];
        assert_eq!(e.evidence["relay_side"], "originator");
        assert_eq!(e.evidence["evidence"], "repeated");
        assert_eq!(e.evidence["connections"], 3);
        assert_eq!(e.host, Some("10.8.0.18".parse().unwrap()));
    }

    #[test]
    fn the_low_quantile_is_of_the_latest_connections_within_the_window() {
        // Five fast answers, then slow ones: the fast ones keep the low quantile down
        // until all but three of them are past the latest 16 (the 13th slow one).
        let mut seconds = vec![(12 * MS, false); 5];
        seconds.extend([(150 * MS, false); 20]);
        let out = connections(&seconds);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].severity, Severity::Medium);
        assert_eq!(out[0].evidence["connections"], 16);
        assert_eq!(out[0].ts, Timestamp(T0 + 17 * MIN + SEC));
        // 40 minutes apart, the third connection finds only the second within the hour:
        // not repeated, each a one-off.
        let out = connections_every(40 * MIN, &[(150 * MS, false); 3]);
        let seen: Vec<_> = (out.iter())
            .map(|e| {
                (
                    e.evidence["evidence"].as_str(),
                    e.evidence["connections"].as_u64(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some("one_off"), Some(1)),
                (Some("one_off"), Some(2)),
                (Some("one_off"), Some(2))
            ]
        );
    }

    #[test]
    fn a_client_slow_now_and_then_is_not_a_relay() {
        // One slow answer in four, as a client verifying a certificate gives: the low
        // quantile stays small, and the slow one alone carried a certificate in clear.
        let out = connections(&[
            (12 * MS, true),
            (140 * MS, true),
            (11 * MS, true),
            (13 * MS, true),
            (150 * MS, true),
        ]);
        assert!(out.is_empty(), "{out:?}");
        // Without a certificate to verify, a single slow answer is a low one-off.
        let out = connections(&[(150 * MS, false), (12 * MS, false), (11 * MS, false)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Low);
    }

    #[test]
    fn the_answer_is_timed_from_the_end_of_the_flight() {
        // The server sends its flight over 120 ms (SYN/ACK → ACK 10 ms); the client
        // answers 12 ms after the last packet: no relay on its side.
        let mut wire = Wire::new();
        let key = wire.handshake(T0, C, S, 10 * MS, 10 * MS);
        wire.tcp(T0 + 21 * MS, C, S, 300);
        wire.tcp(T0 + 33 * MS, S, C, 1400);
        wire.tcp(T0 + 153 * MS, S, C, 900);
        wire.tcp(T0 + 165 * MS, C, S, 80);
        let flow = wire.table.get(&key).unwrap();
        assert_eq!(
            measure(flow)[1],
            Side::Measured {
                tcp_ns: 10 * MS,
                app_ns: 12 * MS
            }
        );
    }

    #[test]
    fn small_absolute_gaps_are_noise() {
        // Ratio 40 on a LAN, but only 3.9 ms: a server's work, not a relay.
        let mut wire = Wire::new();
        let key = opening(&mut wire, 100_000, 100_000, 4 * MS, 4 * MS);
        assert!(judge(&wire, &key).is_empty());
    }

    #[test]
    fn relays_beyond_the_limit_are_evicted_and_counted() {
        let world = World::new();
        let config = RttSplitConfig {
            max_relays: 2,
            ..RttSplitConfig::default()
        };
        let mut r = RttSplit::new(&config);
        let mut wire = Wire::new();
        let mut out = Vec::new();
        for i in 0..3 {
            let c = format!("10.8.0.{}:50000", 20 + i);
            let key = opening_at(&mut wire, T0, &c, 10 * MS, 10 * MS, 12 * MS, 12 * MS, false);
            let flow = wire.table.get(&key).unwrap();
            r.on_identified(
                &world.scope(),
                &key,
                None,
                flow,
                Timestamp(T0 + SEC),
                &mut out,
            );
        }
        // Each connection is a candidate on each side: six, two kept.
        assert_eq!(r.relays.len(), 2);
        assert_eq!(r.evictions()[1], ("rtt_split_relays", 4));
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
            serde_json::to_value(Side::Skipped("no_handshake").leg()).unwrap(),
            serde_json::json!({"skipped": "no_handshake"})
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
            None,
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

    #[test]
    fn candidates_order_as_their_addresses() {
        // The order of the enum the candidates once were: variant, then addresses.
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Reference {
            Originator(IpAddr),
            Responder { host: IpAddr, responder: IpAddr },
        }
        let ips: Vec<IpAddr> = [
            "10.0.0.1",
            "10.0.0.2",
            "192.0.2.1",
            "::1",
            "::10.0.0.2",
            "fe80::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut pairs = Vec::new();
        for &a in &ips {
            pairs.push((Reference::Originator(a), Candidate::originator(a)));
            for &b in &ips {
                let r = Reference::Responder {
                    host: a,
                    responder: b,
                };
                pairs.push((r, Candidate::responder(a, b)));
            }
        }
        for (ra, ca) in &pairs {
            for (rb, cb) in &pairs {
                assert_eq!(ra.cmp(rb), ca.cmp(cb));
            }
        }
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let bad = RttSplitConfig {
            quantile: 1.0,
            ..RttSplitConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("quantile"));
        let bad = RttSplitConfig {
            min_connections: 0,
            ..RttSplitConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
