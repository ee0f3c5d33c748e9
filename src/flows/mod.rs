//! The flow table: every packet finds its flow, flows end on packet time, and the table
//! never grows past its limit.
//!
//! Expiry uses a wheel of one-second slots keyed by packet time: each flow sits in the
//! slot of its next deadline (inactivity timeout or interim record). When a slot comes
//! due the flow is checked and either ended or moved to its new deadline, so a packet
//! costs O(1) and no wall clock is read — a replay ends flows exactly as the live sensor
//! did. A wheel entry names its flow exactly (key hash and start sequence number), so
//! neither a flow due in the same second nor the per-process hash seed can change which
//! flow a slot checks: every flow in the table has exactly one live entry.

pub mod activity;
pub mod community_id;
pub mod flow;
pub mod json;
pub mod latency;
pub mod reassembly;
pub mod record;
pub mod wheel;

use std::time::Duration;

use hashbrown::HashTable;
use serde::Deserialize;

use crate::app::App;
use crate::decode::{Decoded, Proto};
use crate::timestamp::Timestamp;
pub use flow::{EndReason, Flow, FlowKey, ORIG, RESP};
use wheel::Wheel;

/// `[flows]` in farmwatch.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Most flows tracked at once; beyond it the flow closest to its timeout is evicted.
    pub max_flows: usize,
    /// Bytes of each TCP direction reassembled in order for the dissectors.
    pub reassembly_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub tcp_half_open_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_established_timeout: Duration,
    /// How long a closed connection (FINs or RST) lingers for stray packets.
    #[serde(with = "humantime_serde")]
    pub tcp_close_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub udp_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub icmp_timeout: Duration,
    /// A flow still open this long gets an interim record, and again every interval.
    #[serde(with = "humantime_serde")]
    pub interim_interval: Duration,
    /// Silence after which the next data packet starts a new ON period.
    #[serde(with = "humantime_serde")]
    pub idle_threshold: Duration,
}

impl Default for FlowConfig {
    fn default() -> FlowConfig {
        FlowConfig {
            max_flows: 1_000_000,
            reassembly_bytes: 8192,
            tcp_half_open_timeout: Duration::from_secs(30),
            tcp_established_timeout: Duration::from_secs(3600),
            tcp_close_delay: Duration::from_secs(5),
            udp_timeout: Duration::from_secs(60),
            icmp_timeout: Duration::from_secs(60),
            interim_interval: Duration::from_secs(3600),
            idle_threshold: Duration::from_millis(500),
        }
    }
}

/// Parses durations written like "15m" or "500ms" (humantime) in config files.
pub mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

/// What the table reports to the stages after it.
#[derive(Debug)]
pub enum FlowEvent {
    /// One direction became active after being idle (an ON period starts).
    Resumed {
        key: FlowKey,
        at: Handle,
        from_orig: bool,
        ts: Timestamp,
        /// When this direction's previous ON period started.
        prev: Option<Timestamp>,
    },
    /// New in-order bytes (TCP) or a new datagram (UDP) for the dissectors.
    NewBytes {
        key: FlowKey,
        at: Handle,
        ts: Timestamp,
    },
    /// A datagram of a flow whose every message matters (DNS, RADIUS).
    Datagram {
        key: FlowKey,
        /// The flow's label, which says how to read the datagram.
        app: Option<App>,
        from_orig: bool,
        ts: Timestamp,
        bytes: Vec<u8>,
    },
    /// The flow is still open after the interim interval: time for an interim record.
    Interim { key: FlowKey, ts: Timestamp },
    /// The flow is over and out of the table.
    Ended { flow: Box<Flow>, why: EndReason },
}

/// Where a flow sits in its table, to find it again while its packet's events are handled
/// without hashing and comparing its key: its bucket, and its start sequence number. Only
/// the packet's own flow gets one, after the packet's new flow (if any) is in the table, and
/// the table grows only when a flow is added, so a handle holds until the next packet; one
/// kept longer finds nothing, or its own flow, never another.
#[derive(Clone, Copy, Debug)]
pub struct Handle {
    bucket: usize,
    seq: u64,
}

/// Room made at the start (about 1 MB), shared by the tables of a sensor. Growing a table
/// rehashes every flow, and each rehash visits every flow's box, long out of the cache; a
/// busy sensor reaches this many flows in its first seconds, so it starts with the room.
pub const INITIAL_FLOWS: usize = 1 << 16;

pub struct FlowTable {
    schedule: Schedule,
    flows: Slots,
    /// Packet time: the newest timestamp seen (captures are not always in order).
    now: Timestamp,
    next_seq: u64,
    /// The wheel entries being checked, a list kept for its room.
    due: Vec<Timer>,
    /// The flow of the latest packet. A flow's segments come in runs, and a packet of that
    /// flow finds it here: no key hashed, no probe of the table, whose lines are long out
    /// of the cache.
    last: Option<Handle>,
    pub flows_total: u64,
    pub evicted_table_full: u64,
}

impl FlowTable {
    pub fn new(config: FlowConfig) -> FlowTable {
        FlowTable::with_room(config, INITIAL_FLOWS)
    }

    /// A table with room for `room` flows at the start (one of several takes its share).
    pub fn with_room(config: FlowConfig, room: usize) -> FlowTable {
        let room = config.max_flows.min(room);
        FlowTable {
            schedule: Schedule {
                timeouts: Timeouts::of(&config),
                config,
                wheel: Wheel::new(),
            },
            flows: Slots {
                table: HashTable::with_capacity(room),
                hasher: ahash::RandomState::new(),
            },
            now: Timestamp::ZERO,
            next_seq: 0,
            due: Vec::new(),
            last: None,
            flows_total: 0,
            evicted_table_full: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.flows.get(key)
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        self.flows.get_mut(key)
    }

    /// The flow a `Resumed` or `NewBytes` event of the current packet names.
    pub fn at(&self, at: Handle) -> Option<&Flow> {
        let flow = self.flows.table.get_bucket(at.bucket)?;
        (flow.seq == at.seq).then_some(&**flow)
    }

    pub fn at_mut(&mut self, at: Handle) -> Option<&mut Flow> {
        let flow = self.flows.table.get_bucket_mut(at.bucket)?;
        (flow.seq == at.seq).then_some(&mut **flow)
    }

    /// The open flows that `is` picks, in no particular order: for a rare look across
    /// flows (a VPN's second channel), never per packet.
    pub fn find_all_mut(&mut self, is: impl Fn(&Flow) -> bool) -> Vec<&mut Flow> {
        self.flows
            .table
            .iter_mut()
            .map(|f| &mut **f)
            .filter(|f| is(f))
            .collect()
    }

    /// Accounts one packet to its flow. `wire_len` is the frame's original length. Returns
    /// the flow's handle, for side tables that follow some flows packet by packet.
    pub fn process(
        &mut self,
        ts: Timestamp,
        d: &Decoded<'_>,
        wire_len: u32,
        out: &mut Vec<FlowEvent>,
    ) -> Handle {
        self.advance(ts, out);
        // A SYN on a finished connection starts a new one (port reuse).
        let syn_only = d.tcp.is_some_and(|t| t.flags & 0x12 == 0x02);
        if let Some(at) = self.last
            && let Some(flow) = self.flows.table.get_bucket_mut(at.bucket)
            && flow.seq == at.seq
            && let Some(from_orig) = flow.side_of(d)
            && !(syn_only && flow.is_closed())
        {
            let hasher = &self.flows.hasher;
            let hash = || key_hash(hasher, &FlowKey::of(d));
            self.schedule
                .account(at, flow, from_orig, d, ts, wire_len, hash, out);
            return at;
        }
        let at = self.find_or_add(ts, d, syn_only, wire_len, out);
        self.last = Some(at);
        at
    }

    /// [`process`](Self::process) of a packet of a flow other than the latest packet's.
    fn find_or_add(
        &mut self,
        ts: Timestamp,
        d: &Decoded<'_>,
        syn_only: bool,
        wire_len: u32,
        out: &mut Vec<FlowEvent>,
    ) -> Handle {
        let key = FlowKey::of(d);
        let hash = self.flows.hash(&key);
        // The common case, a packet of a known flow, costs one lookup, which also says
        // which side sent it.
        let mut from_orig = false;
        let mut probe = |f: &Flow| f.side_of(d).map(|side| from_orig = side).is_some();
        if let Ok(entry) = self.flows.table.find_entry(hash, |f| probe(f)) {
            if !(syn_only && entry.get().is_closed()) {
                let at = Handle {
                    bucket: entry.bucket_index(),
                    seq: entry.get().seq,
                };
                let flow = entry.into_mut();
                self.schedule
                    .account(at, flow, from_orig, d, ts, wire_len, || hash, out);
                return at;
            }
            out.push(FlowEvent::Ended {
                flow: entry.remove().0,
                why: EndReason::Reused,
            });
        }
        if self.flows.len() >= self.schedule.config.max_flows {
            self.evict_one(out);
        }
        let mut flow = Box::new(Flow::new(
            self.next_seq,
            d,
            ts,
            self.schedule.config.reassembly_bytes,
        ));
        self.next_seq += 1;
        self.flows_total += 1;
        flow.timer_at = u64::MAX;
        let (at, flow) = self.flows.insert(hash, flow);
        let from_orig = flow.is_from_orig(d);
        self.schedule
            .account(at, flow, from_orig, d, ts, wire_len, || hash, out);
        at
    }

    /// Moves packet time forward, ending flows whose deadline passed. Runs for every packet,
    /// and for most nothing is due: that answer is inlined, the checks are not.
    #[inline]
    pub fn advance(&mut self, ts: Timestamp, out: &mut Vec<FlowEvent>) {
        if ts <= self.now {
            return;
        }
        self.now = ts;
        let now_slot = ts.secs();
        if self.schedule.wheel.may_be_due(now_slot) {
            self.expire(now_slot, out);
        }
        self.schedule.wheel.pass(now_slot);
    }

    /// Checks the flows due by `now_slot`, slot by slot.
    #[inline(never)]
    fn expire(&mut self, now_slot: u64, out: &mut Vec<FlowEvent>) {
        let mut next = self.schedule.wheel.first_due(now_slot);
        if next.is_some() {
            let mut timers = std::mem::take(&mut self.due);
            while let Some(slot) = next {
                self.schedule.wheel.take(slot, &mut timers);
                for timer in timers.drain(..) {
                    self.check(slot, timer, out);
                }
                next = self.schedule.wheel.first_due(now_slot);
            }
            self.due = timers;
        }
    }

    fn check(&mut self, slot: u64, timer: Timer, out: &mut Vec<FlowEvent>) {
        // None: a stale entry (the flow ended, or moved to an earlier slot since).
        let due = timer.is_due(slot);
        let Ok(entry) = self.flows.table.find_entry(timer.hash(), |f| due(f)) else {
            return;
        };
        let now = self.now;
        let end = self.schedule.deadline(entry.get());
        if end <= now {
            let why = if entry.get().is_closed() {
                EndReason::Closed
            } else {
                EndReason::Timeout
            };
            out.push(FlowEvent::Ended {
                flow: entry.remove().0,
                why,
            });
            return;
        }
        let flow = entry.into_mut();
        let interval = self.schedule.timeouts.interim;
        let interim = flow.next_interim(interval);
        if interim <= now {
            flow.interim_records += 1;
            out.push(FlowEvent::Interim {
                key: flow.key(),
                ts: interim,
            });
        }
        let next = end.min(flow.next_interim(interval));
        let slot = (next.secs() + 1).max(now.secs() + 1);
        flow.timer_at = slot;
        self.schedule.wheel.push(slot, timer);
    }

    /// Makes room by ending the flow that is next due in the wheel.
    fn evict_one(&mut self, out: &mut Vec<FlowEvent>) {
        while let Some((slot, timer)) = self.schedule.wheel.pop_first() {
            if let Some(flow) = self.flows.remove(timer.hash(), timer.is_due(slot)) {
                self.evicted_table_full += 1;
                out.push(FlowEvent::Ended {
                    flow,
                    why: EndReason::Evicted,
                });
                return;
            }
        }
    }

    /// Takes every flow out (end of input or shutdown), in the order they started, to be
    /// ended as [`EndReason::Shutdown`]. Flows are boxed, so the list costs a pointer per
    /// flow, not a second table.
    pub fn drain(&mut self) -> Vec<Box<Flow>> {
        let mut flows: Vec<Box<Flow>> = self.flows.table.drain().collect();
        self.flows.table = HashTable::new();
        self.last = None;
        self.schedule.wheel.clear();
        flows.sort_unstable_by_key(|f| f.seq);
        flows
    }
}

/// The flows, found by key. Flows are boxed and the table holds only the boxes: a flow's key
/// is computed from the flow itself when a probe needs it, so a slot costs 8 bytes rather
/// than the key's 42 and the pointer, and an ended flow leaves without a copy.
struct Slots {
    table: HashTable<Box<Flow>>,
    /// Seeded at random per process, so crafted keys cannot pile into one probe chain;
    /// nothing is read from the table in hash order, so output does not depend on it.
    hasher: ahash::RandomState,
}

impl Slots {
    fn hash(&self, key: &FlowKey) -> u64 {
        key_hash(&self.hasher, key)
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.table
            .find(self.hash(key), |f| f.has_key(key))
            .map(|f| &**f)
    }

    fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        self.find_mut(self.hash(key), |f| f.has_key(key))
    }

    /// The flow with key hash `hash` that `is` picks (by key, or by its wheel entry).
    fn find_mut(&mut self, hash: u64, is: impl Fn(&Flow) -> bool) -> Option<&mut Flow> {
        self.table.find_mut(hash, |f| is(f)).map(|f| &mut **f)
    }

    fn remove(&mut self, hash: u64, is: impl Fn(&Flow) -> bool) -> Option<Box<Flow>> {
        let entry = self.table.find_entry(hash, |f| is(f));
        entry.ok().map(|e| e.remove().0)
    }

    /// Adds a flow whose key is not in the table yet; `hash` is its key's.
    fn insert(&mut self, hash: u64, flow: Box<Flow>) -> (Handle, &mut Flow) {
        let hasher = &self.hasher;
        let slot = self
            .table
            .insert_unique(hash, flow, |f| key_hash(hasher, &f.key()));
        let at = Handle {
            bucket: slot.bucket_index(),
            seq: slot.get().seq,
        };
        (at, slot.into_mut())
    }
}

/// The table's timeouts and its wheel of deadlines: where each flow is due next.
struct Schedule {
    config: FlowConfig,
    timeouts: Timeouts,
    /// Slot (second) → the flows due in it, in the order they were scheduled.
    wheel: Wheel<Timer>,
}

/// The table's hash of a key: 32 bits of aHash's 64, the most a wheel entry keeps
/// ([`Timer`]), repeated in both halves, as the table takes a bucket from the low bits and
/// its 7-bit tag from the top ones.
fn key_hash(hasher: &ahash::RandomState, key: &FlowKey) -> u64 {
    spread(hasher.hash_one(key) as u32)
}

/// A 32-bit key hash as the table's 64-bit one.
fn spread(hash: u32) -> u64 {
    u64::from(hash) * 0x1_0000_0001
}

/// A wheel entry: which flow, exactly. The hash finds the flow's probe sequence, and the
/// start sequence number (unique per flow) picks it there: the table compares only a
/// 7-bit tag of the hash before asking the predicate, so a predicate on the slot alone
/// could pick another flow due in the same second. Every tracked flow has one, so it is
/// packed into 12 bytes (the hash's 32 bits and the sequence number) rather than 16: a
/// bucket of the wheel is a list that grows by doubling, and at 200,000 open flows the
/// four bytes cost each flow 5 bytes of the allocator's memory (10 of peak RSS).
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(4))]
struct Timer {
    hash: u32,
    seq: u64,
}

impl Timer {
    fn of(hash: u64, flow: &Flow) -> Timer {
        Timer {
            hash: hash as u32,
            seq: flow.seq,
        }
    }

    /// The table's hash of the entry's flow.
    fn hash(self) -> u64 {
        spread(self.hash)
    }

    /// Picks this entry's flow if it is still due in `slot`; an entry left behind when the
    /// flow moved to an earlier slot (or ended) picks nothing.
    fn is_due(self, slot: u64) -> impl Fn(&Flow) -> bool + Copy {
        let seq = self.seq;
        move |f: &Flow| f.seq == seq && f.timer_at == slot
    }
}

impl Schedule {
    /// One packet into its flow: counters and state, the flow's place in the wheel, and what
    /// the stages after the table must hear about. `hash` is the flow's key hash, asked for
    /// only when the flow moves in the wheel.
    #[allow(clippy::too_many_arguments)]
    fn account(
        &mut self,
        at: Handle,
        flow: &mut Flow,
        from_orig: bool,
        d: &Decoded<'_>,
        ts: Timestamp,
        wire_len: u32,
        hash: impl FnOnce() -> u64,
        out: &mut Vec<FlowEvent>,
    ) {
        let t = &self.timeouts;
        let up = flow.observe_from(from_orig, d, ts, wire_len, t.idle);
        let due = self.deadline(flow).min(flow.next_interim(t.interim));
        // Only move the flow to an earlier slot; a later deadline is found lazily when the
        // current slot comes due.
        let slot = due.secs() + 1;
        if slot < flow.timer_at {
            flow.timer_at = slot;
            self.wheel.push(slot, Timer::of(hash(), flow));
        }
        if let Some(resume) = up.resumed {
            out.push(FlowEvent::Resumed {
                key: FlowKey::of(d),
                at,
                from_orig,
                ts,
                prev: resume.prev,
            });
        }
        if up.new_bytes {
            out.push(FlowEvent::NewBytes {
                key: FlowKey::of(d),
                at,
                ts,
            });
        }
        if up.follow {
            out.push(FlowEvent::Datagram {
                key: FlowKey::of(d),
                app: flow.app,
                from_orig,
                ts,
                bytes: d.payload.to_vec(),
            });
        }
    }

    /// When the flow ends if nothing more arrives, by its state.
    fn deadline(&self, f: &Flow) -> Timestamp {
        let t = &self.timeouts;
        let timeout = match f.proto {
            Proto::Tcp if f.is_closed() => t.tcp_close,
            Proto::Tcp
                if f.tcp.established()
                    || (f.dir[ORIG].pkts > 0 && f.dir[RESP].pkts > 0 && f.tcp.syn().is_none()) =>
            {
                t.tcp_established
            }
            Proto::Tcp => t.tcp_half_open,
            Proto::Udp => t.udp,
            Proto::Icmp | Proto::Icmpv6 => t.icmp,
        };
        Timestamp(f.last.0.saturating_add(timeout))
    }
}

/// The configured durations in nanoseconds of packet time, converted once: every packet
/// computes its flow's deadline from them.
struct Timeouts {
    tcp_half_open: u64,
    tcp_established: u64,
    tcp_close: u64,
    udp: u64,
    icmp: u64,
    interim: u64,
    idle: u64,
}

impl Timeouts {
    fn of(c: &FlowConfig) -> Timeouts {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Timeouts {
            tcp_half_open: ns(c.tcp_half_open_timeout),
            tcp_established: ns(c.tcp_established_timeout),
            tcp_close: ns(c.tcp_close_delay),
            udp: ns(c.udp_timeout),
            icmp: ns(c.icmp_timeout),
            interim: ns(c.interim_interval),
            idle: ns(c.idle_threshold),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ACK, FIN, SYN};

    fn pkt(client_port: u16, from_client: bool, flags: u8, seq: u32) -> Decoded<'static> {
        flow::segment(client_port, 443, from_client, flags, seq, b"")
    }

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    fn ended(events: &[FlowEvent]) -> Vec<(u16, EndReason)> {
        events
            .iter()
            .filter_map(|e| match e {
                FlowEvent::Ended { flow, why } => Some((flow.orig.1, *why)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn half_open_flows_time_out_on_packet_time() {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut out = Vec::new();
        t.process(secs(100), &pkt(1000, true, SYN, 1), 54, &mut out);
        t.advance(secs(120), &mut out);
        assert!(ended(&out).is_empty());
        t.advance(secs(132), &mut out);
        assert_eq!(ended(&out), vec![(1000, EndReason::Timeout)]);
        assert!(t.is_empty());
    }

    #[test]
    fn closed_flows_end_after_the_close_delay_and_interim_records_come_due() {
        let config = FlowConfig {
            interim_interval: Duration::from_secs(60),
            ..FlowConfig::default()
        };
        let mut t = FlowTable::new(config);
        let mut out = Vec::new();
        t.process(secs(0), &pkt(1000, true, SYN, 1), 54, &mut out);
        t.process(secs(0), &pkt(1000, false, SYN | ACK, 1), 54, &mut out);
        for s in (10..200).step_by(10) {
            t.process(secs(s), &pkt(1000, true, ACK, 2), 54, &mut out);
        }
        let interims = out
            .iter()
            .filter(|e| matches!(e, FlowEvent::Interim { .. }))
            .count();
        assert_eq!(interims, 3);
        t.process(secs(200), &pkt(1000, true, FIN | ACK, 2), 54, &mut out);
        t.process(secs(200), &pkt(1000, false, FIN | ACK, 2), 54, &mut out);
        t.advance(secs(207), &mut out);
        assert_eq!(ended(&out), vec![(1000, EndReason::Closed)]);
    }

    #[test]
    fn a_full_table_evicts_and_counts() {
        let config = FlowConfig {
            max_flows: 2,
            ..FlowConfig::default()
        };
        let mut t = FlowTable::new(config);
        let mut out = Vec::new();
        for port in 1000..1005 {
            t.process(secs(1), &pkt(port, true, SYN, 1), 54, &mut out);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted_table_full, 3);
        assert_eq!(ended(&out).len(), 3);
        let rest: Vec<u16> = t.drain().iter().map(|f| f.orig.1).collect();
        assert_eq!(
            rest,
            [1000, 1004],
            "the survivors, in the order they started"
        );
        assert!(t.is_empty());
    }

    /// Every tracked flow has a wheel entry: it is a memory budget.
    #[test]
    fn a_wheel_entry_fits_its_budget() {
        assert_eq!(std::mem::size_of::<Timer>(), 12);
    }

    /// Every flow in the table has the one wheel entry that picks it, at its `timer_at`.
    fn assert_every_flow_is_scheduled(t: &FlowTable) {
        for flow in t.flows.table.iter() {
            let picks = t
                .schedule
                .wheel
                .entries(flow.timer_at)
                .filter(|timer| timer.is_due(flow.timer_at)(flow))
                .count();
            assert_eq!(picks, 1, "flow {} has {picks} live timers", flow.seq);
        }
    }

    /// Regression: a slot's entry picked its flow by the slot time alone, and the table
    /// compares only a 7-bit tag of the hash before asking, so of two flows due in the same
    /// second with equal tags the wrong one could be checked first: flows ended in an order
    /// that depended on the per-process hash seed. Each round seeds a new table and finds two
    /// such flows; the old logic gets about half the rounds wrong.
    #[test]
    fn flows_due_in_the_same_second_end_in_the_order_they_were_scheduled() {
        let config = FlowConfig {
            max_flows: 4,
            ..FlowConfig::default()
        };
        for _round in 0..24 {
            let mut t = FlowTable::new(config.clone());
            let tag = |port: u16| t.flows.hash(&FlowKey::of(&pkt(port, true, SYN, 1))) >> 57;
            let mut seen = std::collections::BTreeMap::new();
            let pair = (1000..u16::MAX)
                .find_map(|port| seen.insert(tag(port), port).map(|first| (first, port)))
                .expect("two of 64k ports share a 7-bit tag");
            let mut out = Vec::new();
            for port in [pair.0, pair.1] {
                t.process(secs(10), &pkt(port, true, SYN, 1), 54, &mut out);
            }
            assert_every_flow_is_scheduled(&t);
            t.advance(secs(100), &mut out);
            let order: Vec<u16> = ended(&out).iter().map(|(port, _)| *port).collect();
            assert_eq!(order, [pair.0, pair.1]);
            assert!(t.is_empty());
        }
    }

    /// A flow whose deadline moved on while it waited in its slot is rescheduled, and every
    /// flow keeps exactly one entry however the packets fall.
    #[test]
    fn every_flow_keeps_one_timer() {
        let config = FlowConfig {
            max_flows: 64,
            interim_interval: Duration::from_secs(20),
            ..FlowConfig::default()
        };
        let mut t = FlowTable::new(config);
        let mut out = Vec::new();
        for s in 0..200 {
            for port in 1000..1000 + (s % 50) as u16 {
                let flags = if s % 7 == 0 { SYN } else { ACK };
                t.process(
                    secs(s / 3),
                    &pkt(port, port % 2 == 0, flags, 1),
                    54,
                    &mut out,
                );
            }
            assert_every_flow_is_scheduled(&t);
        }
    }

    /// Deadlines an hour away wait beyond the wheel's ring, deadlines of seconds in it;
    /// across a jump in packet time longer than the ring, flows still end in deadline order.
    #[test]
    fn flows_end_in_deadline_order_near_and_far() {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut out = Vec::new();
        let handshake = |t: &mut FlowTable, port: u16, at: u64, out: &mut Vec<FlowEvent>| {
            t.process(secs(at), &pkt(port, true, SYN, 1), 54, out);
            t.process(secs(at), &pkt(port, false, SYN | ACK, 1), 54, out);
            t.process(secs(at), &pkt(port, true, ACK, 2), 54, out);
        };
        // Established at 0 and 2000: due at 3600 and 5600; half-open at 3000: due at 3030.
        handshake(&mut t, 1000, 0, &mut out);
        handshake(&mut t, 1002, 2000, &mut out);
        t.process(secs(3000), &pkt(1001, true, SYN, 1), 54, &mut out);
        assert_every_flow_is_scheduled(&t);
        assert!(ended(&out).is_empty());
        t.advance(secs(100_000), &mut out);
        assert_eq!(
            ended(&out),
            [
                (1001, EndReason::Timeout),
                (1000, EndReason::Timeout),
                (1002, EndReason::Timeout)
            ]
        );
        assert!(t.is_empty());
    }

    /// The latest packet's flow is found first: each packet still counts to its own flow,
    /// in runs or interleaved, and a flow that ended since is not found again.
    #[test]
    fn every_packet_counts_to_its_own_flow_in_runs_or_not() {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut out = Vec::new();
        let order = [1000, 1000, 1000, 1001, 1000, 1001, 1001, 1002, 1000];
        for (i, port) in order.into_iter().enumerate() {
            let from_client = i % 3 != 1;
            t.process(secs(1), &pkt(port, from_client, ACK, 2), 54, &mut out);
        }
        for port in [1000, 1001, 1002] {
            let flow = t.get(&FlowKey::of(&pkt(port, true, ACK, 2))).unwrap();
            let sent = order.iter().filter(|&&p| p == port).count() as u64;
            assert_eq!(
                flow.dir[ORIG].pkts + flow.dir[RESP].pkts,
                sent,
                "port {port}"
            );
        }
        // The latest flow times out; its next packet starts a new flow.
        t.advance(secs(10_000), &mut out);
        assert!(t.is_empty());
        t.process(secs(10_000), &pkt(1000, true, ACK, 2), 54, &mut out);
        assert_eq!((t.len(), t.flows_total), (1, 4));
        assert_eq!(t.drain()[0].first, secs(10_000));
    }

    #[test]
    fn syn_after_close_starts_a_new_flow() {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut out = Vec::new();
        t.process(secs(1), &pkt(1000, true, SYN, 1), 54, &mut out);
        t.process(secs(1), &pkt(1000, false, SYN | ACK, 1), 54, &mut out);
        t.process(secs(2), &pkt(1000, true, ACK | 0x04, 2), 54, &mut out);
        t.process(secs(3), &pkt(1000, true, SYN, 500), 54, &mut out);
        assert_eq!(ended(&out), vec![(1000, EndReason::Reused)]);
        assert_eq!(t.flows_total, 2);
    }
}
