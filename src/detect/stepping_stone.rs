//! `relay_chain` / `stepping_stone`: an interactive session into an inside host that drives
//! an interactive session out of it (Zhang & Paxson, "Detecting Stepping Stones", USENIX
//! Security 2000; parameters of Bro's `SteppingStone.cc`, REFERENCE.md §3.1).
//!
//! Interactive flows are those labelled with an interactive protocol (SSH, Telnet, the
//! remote-desktop tools) and, unless `unlabelled = false`, unlabelled TCP flows whose
//! data packets are mostly small (typing). Each direction of such a flow is an endpoint; the flow table reports an
//! idle→active transition ("resume") after `[flows] idle_threshold` (0.5 s, the paper's
//! T_idle) without data. A resume at a host pairs with the resumes of other flows at the
//! same host in the previous `delta`. A pair counts coincidences (`hits`) and coincidences
//! whose previous resumes also coincided (`consecutive`). It is a stepping stone when
//! `consecutive ≥ factor · min_consecutive` and `hits / min(resumes) ≥ min_ratio`, with
//! `factor = max(1, min(resumes) / scale)`, as in the paper. Only the chain shape counts:
//! one flow into the host, the other out of it, not back to where the first came from.
//!
//! State is the resumes of the last `delta` per host and the pairs, both bounded (a resume
//! at a full table is dropped and counted); a resume carries the time of its direction's
//! previous one, so nothing is kept per flow. A worker thread that owns a host's flows owns
//! all its state. Every resume and every ending flow looks its host, pairs or flow up, so
//! the tables are hash maps; nothing is read from them in hash order.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::app::App;
use crate::decode::Proto;
use crate::detect::{Detector, Moment, Reason, Registered, Stage, moments};
use crate::event::{Event, FlowRef, Kind, Severity, SteppingStoneEvidence};
use crate::flows::{Flow, FlowKey, humantime_serde};
use crate::timestamp::Timestamp;

use super::Scope;
use super::remote_desktop::{round2, with_place};

/// `[detect.stepping_stone]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SteppingStoneConfig {
    /// Window in which two resumes coincide (`stp_delta`). Default `"80ms"`.
    #[serde(with = "humantime_serde")]
    pub delta: Duration,
    /// Coincidences over the smaller resume count (`stp_ratio_thresh`). Default 0.3.
    pub min_ratio: f64,
    /// Consecutive coincidences for flows sharing a host (Bro: 2). Default 2.
    pub min_consecutive: u32,
    /// Resumes per unit of the consecutive requirement (`stp_scale`). Default 100.
    pub scale: u32,
    /// Resumes each flow must have before a decision; the paper decides on long
    /// sessions, and this keeps a few early coincidences from deciding. Default 10.
    pub min_resumes: u32,
    /// Also follow unlabelled TCP flows that look typed: at least `min_small_pkts` data
    /// packets, `small_share` of them ≤ 100 B. Default true.
    pub unlabelled: bool,
    /// Data packets an unlabelled flow needs before it counts. Default 20.
    pub min_small_pkts: u64,
    /// Share of small data packets of an unlabelled flow. Default 0.8.
    pub small_share: f64,
    /// Hosts whose resumes of the last `delta` are kept at once (the name is the contract's;
    /// the detector keeps nothing per flow). Default 65536.
    pub max_flows: usize,
    /// Flow pairs followed at once. Default 65536.
    pub max_pairs: usize,
}

impl Default for SteppingStoneConfig {
    fn default() -> SteppingStoneConfig {
        SteppingStoneConfig {
            delta: Duration::from_millis(80),
            min_ratio: 0.3,
            min_consecutive: 2,
            scale: 100,
            min_resumes: 10,
            unlabelled: true,
            min_small_pkts: 20,
            small_share: 0.8,
            max_flows: 65536,
            max_pairs: 65536,
        }
    }
}

impl SteppingStoneConfig {
    /// See [`super::check`].
    pub fn validate(&self) -> Result<(), String> {
        use super::check::{not_zero, share};
        not_zero("delta", self.delta)?;
        share("min_ratio", self.min_ratio)?;
        not_zero("min_consecutive", self.min_consecutive)?;
        not_zero("scale", self.scale)?;
        not_zero("min_resumes", self.min_resumes)?;
        not_zero("min_small_pkts", self.min_small_pkts)?;
        share("small_share", self.small_share)?;
        not_zero("max_flows", self.max_flows)?;
        not_zero("max_pairs", self.max_pairs)
    }
}

/// A resume waiting for partners at a host, with what the pair check needs of its flow as
/// it was then. The flow's own activity counts its resumes and remembers the previous one,
/// so the detector keeps nothing per flow: its memory is the resumes of the last `delta`
/// and the pairs.
#[derive(Clone, Copy, Debug)]
struct Recent {
    ts: Timestamp,
    /// The resume before this one, of the same direction.
    prev: Option<Timestamp>,
    key: FlowKey,
    /// The key's lower end is the originator.
    orig_is_lo: bool,
    app: Option<App>,
    /// Resumes of the flow, both directions, this one included.
    resumes: u32,
    /// The host is the flow's responder (the flow comes in).
    inbound: bool,
}

impl Recent {
    /// The flow as events name it, originator first.
    fn flow_ref(&self) -> FlowRef {
        let (src, dst) = if self.orig_is_lo {
            (self.key.lo, self.key.hi)
        } else {
            (self.key.hi, self.key.lo)
        };
        FlowRef {
            proto: self.key.proto.as_str(),
            src_ip: src.0,
            src_port: src.1,
            dst_ip: dst.0,
            dst_port: dst.1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    hits: u32,
    consecutive: u32,
    reported: bool,
}

/// Resumes kept per host; more inside one `delta` are dropped.
const MAX_RECENT: usize = 64;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

pub struct SteppingStone {
    config: SteppingStoneConfig,
    recent: Map<IpAddr, VecDeque<Recent>>,
    /// (inbound flow, outbound flow) → counters.
    pairs: Map<(FlowKey, FlowKey), Pair>,
    /// Pairs each flow is in, so an ending flow takes its pairs along.
    paired: Map<FlowKey, u32>,
    /// Resumes and pairs not followed because the tables were full.
    pub dropped: u64,
    /// The resumes a new one pairs with, a list kept for its room.
    partners: Vec<Recent>,
}

impl SteppingStone {
    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> (&'static str, u64) {
        ("stepping_stone", self.dropped)
    }
}

impl SteppingStone {
    pub fn new(config: &SteppingStoneConfig) -> SteppingStone {
        SteppingStone {
            config: config.clone(),
            recent: Map::default(),
            pairs: Map::default(),
            paired: Map::default(),
            dropped: 0,
            partners: Vec::new(),
        }
    }

    /// A labelled interactive protocol, or an unlabelled TCP flow of mostly small
    /// packets: the paper applies the method to any connection that carries typing, and a
    /// chain may run over a tool the dissectors do not name (an obfuscated SSH, a custom
    /// relay).
    fn interactive(&self, flow: &Flow) -> bool {
        match flow.app {
            Some(App::Unknown) | None => {
                let c = &self.config;
                let data = flow.dir[0].data_pkts + flow.dir[1].data_pkts;
                let small = flow.dir[0].small_pkts + flow.dir[1].small_pkts;
                c.unlabelled
                    && flow.proto == Proto::Tcp
                    && data >= c.min_small_pkts
                    && small as f64 >= c.small_share * data as f64
            }
            Some(app) => app.is_interactive(),
        }
    }

    /// One direction of `flow` resumed at `ts`; its previous resume was `prev`.
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
        if !self.interactive(flow) {
            return;
        }
        let delta = self.config.delta.as_nanos() as u64;
        // Both inside ends, not only the flow's host: a flow between two inside hosts is
        // one's outbound leg and the other's inbound (seen where both meet a partition).
        for (host, inbound) in [(flow.resp.0, true), (flow.orig.0, false)] {
            if !scope.network.is_inside(host) {
                continue;
            }
            let now = Recent {
                ts,
                prev,
                key: *key,
                orig_is_lo: flow.orig <= flow.resp,
                app: flow.app,
                resumes: flow.dir[0].resumes.saturating_add(flow.dir[1].resumes),
                inbound,
            };
            // A new host needs room; most resumes are at a known host, found with one lookup.
            if self.recent.len() >= self.config.max_flows
                && !self.recent.contains_key(&host)
                && !self.room_for_a_host(ts)
            {
                self.dropped += 1;
                continue;
            }
            let queue = self.recent.entry(host).or_default();
            while queue
                .front()
                .is_some_and(|r| ts.0.saturating_sub(r.ts.0) > delta)
            {
                queue.pop_front();
            }
            // The partners are copied out (`coincide` borrows the detector), not the queue
            // taken out of the map and put back: that cost a second lookup per resume.
            let mut partners = std::mem::take(&mut self.partners);
            partners.extend(
                queue
                    .iter()
                    .filter(|r| r.key != *key && r.inbound != inbound),
            );
            if queue.len() >= MAX_RECENT {
                queue.pop_front();
                self.dropped += 1;
            }
            queue.push_back(now);
            for r in partners.drain(..) {
                self.coincide(scope, host, &r, &now, out);
            }
            self.partners = partners;
        }
    }

    /// Whether one more host's queue fits; queues older than `delta` can pair with nothing
    /// and go first.
    fn room_for_a_host(&mut self, ts: Timestamp) -> bool {
        if self.recent.len() >= self.config.max_flows {
            let delta = self.config.delta.as_nanos() as u64;
            self.recent.retain(|_, q| {
                q.back()
                    .is_some_and(|r| ts.0.saturating_sub(r.ts.0) <= delta)
            });
        }
        self.recent.len() < self.config.max_flows
    }

    /// Resume `second` came within `delta` after `first` at `host`, one of them on a flow
    /// into the host and the other on a flow out of it.
    fn coincide(
        &mut self,
        scope: &Scope<'_>,
        host: IpAddr,
        first: &Recent,
        second: &Recent,
        out: &mut Vec<Event>,
    ) {
        // The inbound flow, then the outbound one.
        let (a, b) = if second.inbound {
            (second, first)
        } else {
            (first, second)
        };
        let (a_flow, b_flow) = (a.flow_ref(), b.flow_ref());
        // Back to where the session came from is not a chain.
        if a_flow.src_ip == b_flow.dst_ip {
            return;
        }
        let delta = self.config.delta.as_nanos() as u64;
        let in_row = match (first.prev, second.prev) {
            (Some(p1), Some(p2)) => p2 >= p1 && p2.0 - p1.0 <= delta,
            _ => false,
        };
        let min_resumes = a.resumes.min(b.resumes);
        let full = self.pairs.len() >= self.config.max_pairs;
        let p = match self.pairs.entry((a.key, b.key)) {
            Entry::Occupied(p) => p.into_mut(),
            Entry::Vacant(_) if full => {
                self.dropped += 1;
                return;
            }
            Entry::Vacant(p) => {
                for k in [a.key, b.key] {
                    *self.paired.entry(k).or_default() += 1;
                }
                p.insert(Pair::default())
            }
        };
        p.hits = p.hits.saturating_add(1);
        if in_row {
            p.consecutive = p.consecutive.saturating_add(1);
        }
        let c = &self.config;
        let factor = (min_resumes / c.scale.max(1)).max(1);
        let ratio = f64::from(p.hits) / f64::from(min_resumes.max(1));
        if p.reported
            || min_resumes < c.min_resumes
            || p.consecutive < factor.saturating_mul(c.min_consecutive)
            || ratio < c.min_ratio
        {
            return;
        }
        p.reported = true;
        let p = *p;
        let from = a_flow.src_ip;
        let outside = !scope.network.is_inside(from);
        let severity = if outside {
            Severity::High
        } else {
            Severity::Low
        };
        let show = |f: &FlowRef| {
            format!(
                "{} {}:{} -> {}:{}",
                f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port
            )
        };
        let mut e = Event::new(
            second.ts,
            Kind::RelayChain,
            "stepping_stone",
            severity,
            &format!("{} | {}", show(&a_flow), show(&b_flow)),
        );
        e.host = Some(host);
        e.flow = Some(b_flow.clone());
        e.app = b.app;
        e.summary = format!(
            "{host} relays an interactive session: activity arriving from {from} is followed within {} ms by activity toward {}",
            c.delta.as_millis(),
            b_flow.dst_ip
        );
        e = e.with(&SteppingStoneEvidence {
            inbound_flow: a_flow.clone(),
            inbound_app: a.app,
            outbound_flow: b_flow.clone(),
            hits: p.hits,
            consecutive_hits: p.consecutive,
            resumes_inbound: a.resumes,
            resumes_outbound: b.resumes,
            ratio: round2(ratio),
            delta_ms: c.delta.as_millis() as u64,
        });
        let e = with_place(scope, e, "source", from);
        out.push(with_place(scope, e, "target", b_flow.dst_ip));
    }

    pub fn on_end(&mut self, flow: &Flow) {
        // Most partitions pair no flows: an ending flow's key needs no hash.
        if self.paired.is_empty() {
            return;
        }
        let key = flow.key();
        if self.paired.remove(&key).is_none() {
            return;
        }
        let paired = &mut self.paired;
        self.pairs.retain(|(a, b), _| {
            let partner = match (*a == key, *b == key) {
                (true, _) => b,
                (_, true) => a,
                _ => return true,
            };
            if let Some(n) = paired.get_mut(partner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    paired.remove(partner);
                }
            }
            false
        });
    }
}

/// An interactive session relayed through an account host.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Flow,
    reasons: &[Reason {
        name: "stepping_stone",
        weight: 25.0,
    }],
    new: |c| Box::new(SteppingStone::new(&c.detect.stepping_stone)),
};

impl Detector for SteppingStone {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::Resumed {
                key,
                flow,
                ts,
                prev,
            } => self.on_resume(scope, key, flow, ts, prev, out),
            Moment::Ended { flow, .. } => self.on_end(flow),
            _ => {}
        }
    }

    fn moments(&self) -> u8 {
        moments::RESUMED | moments::ENDED
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        vec![SteppingStone::evictions(self)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::remote_desktop::testkit::*;
    use crate::flows::FlowEvent;

    /// Feeds the table's resume events to the detector, labelling flows `app`.
    fn drain_as(
        app: Option<App>,
        wire: &mut Wire,
        ss: &mut SteppingStone,
        scope: &Scope<'_>,
        out: &mut Vec<Event>,
    ) {
        for ev in std::mem::take(&mut wire.events) {
            if let FlowEvent::Resumed { key, ts, prev, .. } = ev
                && let Some(f) = wire.table.get_mut(&key)
            {
                f.app = app;
                let f = wire.table.get(&key).unwrap();
                ss.on_resume(scope, &key, f, ts, prev, out);
            }
        }
    }

    fn drain(wire: &mut Wire, ss: &mut SteppingStone, scope: &Scope<'_>, out: &mut Vec<Event>) {
        drain_as(Some(App::Ssh), wire, ss, scope, out);
    }

    /// Keystroke times 0.7–4 s apart for an hour, from a fixed linear congruential
    /// sequence.
    fn typing(seed: u64) -> Vec<u64> {
        let mut x = seed;
        let mut t = T0 + 10 * SEC;
        let mut out = Vec::new();
        while t < T0 + 3600 * SEC {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += (700 + (x >> 33) % 3300) * MS;
            out.push(t);
        }
        out
    }

    const IN_C: &str = "192.0.2.70:50000";
    const HOST_IN: &str = "10.8.0.14:22";
    const HOST_OUT: &str = "10.8.0.14:50001";
    const TARGET: &str = "10.20.0.30:22";

    #[test]
    fn relayed_keystrokes_are_a_stepping_stone() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut ss = SteppingStone::new(&SteppingStoneConfig::default());
        let mut out = Vec::new();
        wire.handshake(T0, IN_C, HOST_IN, 30 * MS, 30 * MS);
        wire.handshake(T0 + SEC, HOST_OUT, TARGET, MS, MS);
        for t in typing(1) {
            wire.tcp(t, IN_C, HOST_IN, 36);
            wire.tcp(t + 2 * MS, HOST_OUT, TARGET, 36);
            wire.tcp(t + 3 * MS, TARGET, HOST_OUT, 36);
            wire.tcp(t + 5 * MS, HOST_IN, IN_C, 36);
            drain(&mut wire, &mut ss, &scope, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let e = &out[0];
        assert_eq!(e.reason, "stepping_stone");
        assert_eq!(e.severity, Severity::High);
        assert_eq!(e.host, Some("10.8.0.14".parse().unwrap()));
        assert_eq!(e.evidence["source_country"], "CN");
        assert_eq!(
            e.evidence["outbound_flow"],
            "tcp 10.8.0.14:50001 -> 10.20.0.30:22"
        );
        assert!(e.evidence["consecutive_hits"].as_u64().unwrap() >= 2);
    }

    /// The same chain over a protocol nobody named counts once its flows look typed;
    /// with `unlabelled = false`, or as bulk, it does not.
    #[test]
    fn unlabelled_typed_flows_count() {
        let world = World::new();
        let scope = world.scope();
        let run = |config: SteppingStoneConfig, size: usize| {
            let mut wire = Wire::new();
            let mut ss = SteppingStone::new(&config);
            let mut out = Vec::new();
            for t in typing(3) {
                wire.tcp(t, IN_C, HOST_IN, size);
                wire.tcp(t + 2 * MS, HOST_OUT, TARGET, size);
                wire.tcp(t + 3 * MS, TARGET, HOST_OUT, size);
                wire.tcp(t + 5 * MS, HOST_IN, IN_C, size);
                drain_as(None, &mut wire, &mut ss, &scope, &mut out);
            }
            out.len()
        };
        assert_eq!(run(SteppingStoneConfig::default(), 36), 1);
        let off = SteppingStoneConfig {
            unlabelled: false,
            ..SteppingStoneConfig::default()
        };
        assert_eq!(run(off, 36), 0);
        assert_eq!(run(SteppingStoneConfig::default(), 1400), 0);
    }

    #[test]
    fn independent_typing_is_not() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut ss = SteppingStone::new(&SteppingStoneConfig::default());
        let mut out = Vec::new();
        wire.handshake(T0, IN_C, HOST_IN, 30 * MS, 30 * MS);
        wire.handshake(T0 + SEC, HOST_OUT, TARGET, MS, MS);
        let mut all: Vec<(u64, bool)> = typing(1)
            .into_iter()
            .map(|t| (t, true))
            .chain(typing(2).into_iter().map(|t| (t, false)))
            .collect();
        all.sort();
        for (t, inbound) in all {
            if inbound {
                wire.tcp(t, IN_C, HOST_IN, 36);
                wire.tcp(t + 40 * MS, HOST_IN, IN_C, 36);
            } else {
                wire.tcp(t, HOST_OUT, TARGET, 36);
                wire.tcp(t + 3 * MS, TARGET, HOST_OUT, 36);
            }
            drain(&mut wire, &mut ss, &scope, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn full_tables_drop_and_count() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut ss = SteppingStone::new(&SteppingStoneConfig {
            max_flows: 1,
            ..SteppingStoneConfig::default()
        });
        let mut out = Vec::new();
        wire.tcp(T0, IN_C, HOST_IN, 36);
        wire.tcp(T0 + MS, HOST_OUT, TARGET, 36);
        drain(&mut wire, &mut ss, &scope, &mut out);
        // The host in the middle has its queue; the target, a second host, did not fit.
        assert_eq!(ss.recent.len(), 1);
        assert_eq!(ss.dropped, 1);
    }

    /// The pairs of a flow leave with it; its partner's other pairs stay.
    #[test]
    fn an_ending_flow_takes_its_pairs_along() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut ss = SteppingStone::new(&SteppingStoneConfig::default());
        let mut out = Vec::new();
        const TARGET2: &str = "10.20.0.31:22";
        const HOST_OUT2: &str = "10.8.0.14:50002";
        for t in typing(1).into_iter().take(5) {
            wire.tcp(t, IN_C, HOST_IN, 36);
            wire.tcp(t + 2 * MS, HOST_OUT, TARGET, 36);
            wire.tcp(t + 4 * MS, HOST_OUT2, TARGET2, 36);
            drain(&mut wire, &mut ss, &scope, &mut out);
        }
        assert_eq!(ss.pairs.len(), 2);
        assert_eq!(ss.paired.len(), 3);
        let key = |a: &str, b: &str| {
            let (a, b): (std::net::SocketAddr, std::net::SocketAddr) =
                (a.parse().unwrap(), b.parse().unwrap());
            FlowKey::new(Proto::Tcp, (a.ip(), a.port()), (b.ip(), b.port()))
        };
        let out1 = wire.table.get(&key(HOST_OUT, TARGET)).unwrap();
        ss.on_end(out1);
        assert_eq!(ss.pairs.len(), 1);
        assert_eq!(ss.paired.len(), 2);
        let inbound = wire.table.get(&key(IN_C, HOST_IN)).unwrap();
        ss.on_end(inbound);
        assert!(ss.pairs.is_empty() && ss.paired.is_empty());
    }

    /// Many typed flows at one host: the detector holds the resumes of the last `delta`,
    /// at most `MAX_RECENT` of them, and nothing for each flow.
    #[test]
    fn state_is_the_last_delta_not_the_flows() {
        let world = World::new();
        let scope = world.scope();
        let mut wire = Wire::new();
        let mut ss = SteppingStone::new(&SteppingStoneConfig::default());
        let mut out = Vec::new();
        for i in 0..1000u64 {
            let client = format!("192.0.2.{}:{}", 1 + i % 200, 40000 + i);
            wire.tcp(T0 + i * MS, &client, HOST_IN, 36);
            drain(&mut wire, &mut ss, &scope, &mut out);
        }
        assert_eq!(ss.recent.len(), 1);
        assert_eq!(
            ss.recent.values().map(VecDeque::len).sum::<usize>(),
            MAX_RECENT
        );
        assert!(ss.pairs.is_empty());
    }
}
