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
//! State is keyed by host and flow and bounded; a flow at a full table is not followed
//! (and counted), so a worker thread that owns a host's flows owns all its state.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::app::App;
use crate::decode::Proto;
use crate::event::{Event, FlowRef, Kind, Severity};
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
    /// Flows followed at once. Default 65536.
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

/// Resumes of one direction: how many, the latest and the one before.
#[derive(Clone, Copy, Debug, Default)]
struct Endpoint {
    count: u32,
    last: Timestamp,
    prev: Timestamp,
}

impl Endpoint {
    fn resume(&mut self, ts: Timestamp) {
        self.prev = self.last;
        self.last = ts;
        self.count = self.count.saturating_add(1);
    }

    /// The resume before the latest, once there has been one.
    fn prev(&self) -> Option<Timestamp> {
        (self.count >= 2).then_some(self.prev)
    }
}

/// A followed flow. Up to `max_flows` are kept, so it holds only what the key does not:
/// 56 bytes.
#[derive(Clone, Debug)]
struct FlowState {
    dirs: [Endpoint; 2],
    app: Option<App>,
    /// The key's lower end is the originator.
    orig_is_lo: bool,
}

impl FlowState {
    fn resumes(&self) -> u32 {
        self.dirs[0].count.saturating_add(self.dirs[1].count)
    }

    /// The flow as events name it, originator first.
    fn flow_ref(&self, key: &FlowKey) -> FlowRef {
        let (src, dst) = if self.orig_is_lo {
            (key.lo, key.hi)
        } else {
            (key.hi, key.lo)
        };
        FlowRef {
            proto: key.proto.as_str(),
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

/// A resume waiting for partners at a host.
#[derive(Clone, Copy, Debug)]
struct Recent {
    ts: Timestamp,
    key: FlowKey,
    dir: usize,
    /// The host is the flow's responder (the flow comes in).
    inbound: bool,
}

/// Resumes kept per host; more inside one `delta` are dropped.
const MAX_RECENT: usize = 64;

pub struct SteppingStone {
    config: SteppingStoneConfig,
    flows: BTreeMap<FlowKey, FlowState>,
    recent: BTreeMap<IpAddr, VecDeque<Recent>>,
    /// (inbound flow, outbound flow) → counters.
    pairs: BTreeMap<(FlowKey, FlowKey), Pair>,
    /// Flows and pairs not followed because the tables were full.
    pub dropped: u64,
}

impl SteppingStone {
    pub fn new(config: &SteppingStoneConfig) -> SteppingStone {
        SteppingStone {
            config: config.clone(),
            flows: BTreeMap::new(),
            recent: BTreeMap::new(),
            pairs: BTreeMap::new(),
            dropped: 0,
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

    pub fn on_resume(
        &mut self,
        scope: &Scope<'_>,
        key: &FlowKey,
        flow: &Flow,
        from_orig: bool,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        if !self.interactive(flow) {
            return;
        }
        if !self.flows.contains_key(key) && self.flows.len() >= self.config.max_flows {
            self.dropped += 1;
            return;
        }
        let dir = usize::from(!from_orig);
        let st = self.flows.entry(*key).or_insert_with(|| FlowState {
            dirs: [Endpoint::default(); 2],
            app: flow.app,
            orig_is_lo: flow.orig <= flow.resp,
        });
        st.dirs[dir].resume(ts);
        let delta = self.config.delta.as_nanos() as u64;
        for (host, inbound) in [(flow.resp.0, true), (flow.orig.0, false)] {
            if !scope.network.is_inside(host) {
                continue;
            }
            let mut queue = self.recent.remove(&host).unwrap_or_default();
            while queue
                .front()
                .is_some_and(|r| ts.0.saturating_sub(r.ts.0) > delta)
            {
                queue.pop_front();
            }
            for r in &queue {
                if r.key == *key || r.inbound == inbound {
                    continue;
                }
                let (k_in, k_out) = if inbound {
                    (*key, r.key)
                } else {
                    (r.key, *key)
                };
                self.coincide(
                    scope,
                    host,
                    (k_in, k_out),
                    (r.key, r.dir),
                    (*key, dir),
                    ts,
                    out,
                );
            }
            if queue.len() >= MAX_RECENT {
                queue.pop_front();
            }
            queue.push_back(Recent {
                ts,
                key: *key,
                dir,
                inbound,
            });
            if self.recent.len() >= self.config.max_flows {
                // Queues older than `delta` can pair with nothing: let them go.
                self.recent.retain(|_, q| {
                    q.back()
                        .is_some_and(|r| ts.0.saturating_sub(r.ts.0) <= delta)
                });
            }
            self.recent.insert(host, queue);
        }
    }

    /// Endpoint `second` resumed within `delta` after `first`, at `host`.
    #[allow(clippy::too_many_arguments)]
    fn coincide(
        &mut self,
        scope: &Scope<'_>,
        host: IpAddr,
        pair: (FlowKey, FlowKey),
        first: (FlowKey, usize),
        second: (FlowKey, usize),
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        let (Some(a), Some(b)) = (self.flows.get(&pair.0), self.flows.get(&pair.1)) else {
            return;
        };
        let (a_flow, b_flow) = (a.flow_ref(&pair.0), b.flow_ref(&pair.1));
        let (a_app, b_app) = (a.app, b.app);
        let (a_resumes, b_resumes) = (a.resumes(), b.resumes());
        // Back to where the session came from is not a chain.
        if a_flow.src_ip == b_flow.dst_ip {
            return;
        }
        let prev = |k: (FlowKey, usize)| {
            self.flows
                .get(&k.0)
                .and_then(|s| s.dirs.get(k.1))
                .and_then(Endpoint::prev)
        };
        let delta = self.config.delta.as_nanos() as u64;
        let in_row = match (prev(first), prev(second)) {
            (Some(p1), Some(p2)) => p2 >= p1 && p2.0 - p1.0 <= delta,
            _ => false,
        };
        let min_resumes = a_resumes.min(b_resumes);
        if !self.pairs.contains_key(&pair) && self.pairs.len() >= self.config.max_pairs {
            self.dropped += 1;
            return;
        }
        let p = self.pairs.entry(pair).or_default();
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
            ts,
            Kind::RelayChain,
            "stepping_stone",
            severity,
            &format!("{} | {}", show(&a_flow), show(&b_flow)),
        );
        e.host = Some(host);
        e.flow = Some(b_flow.clone());
        e.app = b_app;
        e.summary = format!(
            "{host} relays an interactive session: activity arriving from {from} is followed within {} ms by activity toward {}",
            c.delta.as_millis(),
            b_flow.dst_ip
        );
        e = e
            .evidence("inbound_flow", show(&a_flow))
            .evidence("inbound_app", serde_json::json!(a_app))
            .evidence("outbound_flow", show(&b_flow))
            .evidence("hits", p.hits)
            .evidence("consecutive_hits", p.consecutive)
            .evidence("resumes_inbound", a_resumes)
            .evidence("resumes_outbound", b_resumes)
            .evidence("ratio", round2(ratio))
            .evidence("delta_ms", c.delta.as_millis() as u64);
        let e = with_place(scope, e, "source", from);
        out.push(with_place(scope, e, "target", b_flow.dst_ip));
    }

    pub fn on_end(&mut self, flow: &Flow) {
        let key = flow.key();
        if self.flows.remove(&key).is_some() {
            self.pairs.retain(|(a, b), _| *a != key && *b != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::remote_desktop::testkit::*;
    use crate::flows::FlowEvent;

    /// Up to `max_flows` states are kept: their size is a memory budget.
    #[test]
    fn a_followed_flow_costs_56_bytes() {
        assert!(std::mem::size_of::<FlowState>() <= 56);
    }

    /// Feeds the table's resume events to the detector, labelling flows `app`.
    fn drain_as(
        app: Option<App>,
        wire: &mut Wire,
        ss: &mut SteppingStone,
        scope: &Scope<'_>,
        out: &mut Vec<Event>,
    ) {
        for ev in std::mem::take(&mut wire.events) {
            if let FlowEvent::Resumed { key, from_orig, ts } = ev
                && let Some(f) = wire.table.get_mut(&key)
            {
                f.app = app;
                let f = wire.table.get(&key).unwrap();
                ss.on_resume(scope, &key, f, from_orig, ts, out);
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
        assert_eq!(ss.flows.len(), 1);
        assert_eq!(ss.dropped, 1);
    }
}
