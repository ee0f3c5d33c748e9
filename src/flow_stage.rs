//! The flow stage (DESIGN §7): decode → flows → dissect → flow detectors, on one worker
//! thread of several. What it learns leaves as stamped items — flow records and
//! observations (the flow detectors' findings among them) — for the one account stage.
//!
//! A worker holds some of a fixed number of *partitions* ([`PARTITIONS`]); a packet's
//! partition is its host's ([`partition_of`]), so both directions of a flow and every flow
//! of an inside host meet in one partition. Each partition has its own flow
//! table and flow detectors, so what one partition decides never depends on how many
//! workers share the partitions out: `--workers N` gives the same output for every N.
//! DNS answers are the one thing every partition needs from every other (a name learned
//! from one host's lookup names another host's flow): every worker reads every answer.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::app::App;
use crate::config::{Config, NetworkConfig};
use crate::decode::{Decoded, Decoder, Proto};
use crate::detect::{Detectors, Moment, Scope, Stage};
use crate::dissect::dns::{self, NameCache};
use crate::dissect::identify::{self, Details, Input, Protocol};
use crate::dissect::shared::SharedDetails;
use crate::event::Event;
use crate::flows::flow::{MID_STREAM, ORIG, RESP};
use crate::flows::latency::Latency;
use crate::flows::record::FlowRecord;
use crate::flows::{EndReason, Flow, FlowEvent, FlowKey, FlowTable, INITIAL_FLOWS};
use crate::geo::Geo;
use crate::identity::{Identity, SessionStatus};
use crate::metrics::Stats;
use crate::observation::Observation;
use crate::prefetch;
use crate::source::Packet;
use crate::timestamp::Timestamp;

/// Partitions of the flow stage. Fixed, so that the output does not depend on the number of
/// workers; also the most workers that can have work.
pub const PARTITIONS: usize = 64;
/// Fragment sets in reassembly at once per worker, and how long one may wait for its last
/// piece.
const MAX_FRAGMENT_SETS: usize = 4096;
const FRAGMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Addresses remembered from DNS answers, so a flow reached without SNI is still named.
const DNS_CACHE_ENTRIES: usize = 100_000;
/// Inside hosts remembered as active in the current hour, per partition; past it every
/// resumption is sent on (more observations, nothing lost).
const MAX_ACTIVE_HOSTS: usize = 65_536;

/// What the flow stage knows about the world and never changes while it runs: which
/// addresses are ours, the accounts known before the traffic (inventory and session
/// feed; RADIUS learned from the wire is the account stage's), and the geo databases.
pub struct FlowScope {
    pub network: NetworkConfig,
    pub identity: Identity,
    pub geo: Arc<Geo>,
}

/// A change of what the stages know, placed in the packet stream so that it applies at one
/// moment of packet time in every stage.
pub enum Reload {
    Inventory(Arc<crate::accounts::Inventory>),
    Network(NetworkConfig),
    /// Lines appended to the session feed.
    Sessions(Arc<String>),
}

impl FlowScope {
    /// This scope with `reload` applied.
    pub fn with(&self, reload: &Reload) -> FlowScope {
        let mut scope = FlowScope {
            network: self.network.clone(),
            identity: self.identity.clone(),
            geo: self.geo.clone(),
        };
        match reload {
            Reload::Inventory(inv) => scope.identity.reload_inventory(inv.clone()),
            Reload::Network(n) => scope.network = n.clone(),
            Reload::Sessions(lines) => {
                scope.identity.load_sessions(lines.as_bytes());
            }
        }
        scope
    }
}

/// Something a worker hands on, stamped with the packet-time moment that produced it (the
/// sensor's clock then, not the item's own time): the account stage applies items in
/// that order, and items of one moment in the order of their content ([`Item::order`]).
pub struct Stamped {
    pub at: Timestamp,
    pub item: Item,
}

pub enum Item {
    /// The first packet: inventory findings are due.
    Start,
    /// What the stages know changed here (live: SIGHUP, the session feed grew).
    Reload(Arc<Reload>),
    Observation(Observation),
    Record(Box<FlowRecord>),
    /// A whole second of packet time passed (one per second, from partition 0's worker).
    Tick,
}

impl Item {
    fn class(&self) -> u8 {
        match self {
            Item::Start | Item::Reload(_) => 0,
            Item::Observation(Observation::Finding { .. }) => 2,
            Item::Observation(_) => 1,
            Item::Record(_) => 3,
            Item::Tick => 4,
        }
    }

    /// The order of two items of one moment, from their content alone.
    pub fn order(&self, other: &Item) -> std::cmp::Ordering {
        self.order_by(other, |a, b| a.id().cmp(&b.id()))
    }

    /// [`order`](Self::order), with `ids` comparing the content ids of two observations of
    /// one time (hashing them is most of what a comparison costs).
    fn order_by(
        &self,
        other: &Item,
        ids: impl FnOnce(&Observation, &Observation) -> std::cmp::Ordering,
    ) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let by_class = self.class().cmp(&other.class());
        if by_class != Ordering::Equal {
            return by_class;
        }
        match (self, other) {
            (
                Item::Observation(Observation::Finding { event: a }),
                Item::Observation(Observation::Finding { event: b }),
            ) => (a.ts, a.kind, a.reason, a.host, &a.flow, &a.key)
                .cmp(&(b.ts, b.kind, b.reason, b.host, &b.flow, &b.key)),
            (Item::Observation(a), Item::Observation(b)) => {
                a.ts().cmp(&b.ts()).then_with(|| ids(a, b))
            }
            // By start first, which nearly always differs: the rest is read only on a tie.
            (Item::Record(a), Item::Record(b)) => {
                (a.ts.cmp(&b.ts)).then_with(|| record_order(a).cmp(&record_order(b)))
            }
            _ => Ordering::Equal,
        }
    }
}

/// Sorts items by moment, then [`Item::order`], hashing each observation's id at most once
/// instead of at every comparison: `correlate` sorts thousands of one moment (a sensor's
/// session feed, every sensor's observations of one second).
pub fn sort_items(items: &mut Vec<Stamped>) {
    ItemSorter::default().sort(items);
}

/// Sorts as [`sort_items`] does, keeping its room from one sort to the next: the account
/// stage sorts what each hand-on releases, and a buffer allocated for each sort was, when
/// large, fresh pages for the kernel to zero on the thread that applied them.
///
/// What it sorts is a small key per item (moment, class, place), the item itself read only
/// when those tie: items are large, and moving them was most of what a large sort cost
/// (a walker's hand-on releases thousands at once: on the real mix with 2 workers, the
/// sorts' copies were 34 M instructions, three times those with 1).
#[derive(Default)]
pub struct ItemSorter {
    /// The items, each with its id once hashed; taken out in order.
    keyed: Vec<(std::cell::OnceCell<String>, Option<Stamped>)>,
    order: Vec<(Timestamp, u8, usize)>,
}

impl ItemSorter {
    pub fn sort(&mut self, items: &mut Vec<Stamped>) {
        let Self { keyed, order } = self;
        order.extend((items.iter().enumerate()).map(|(i, s)| (s.at, s.item.class(), i)));
        keyed.extend(
            items
                .drain(..)
                .map(|s| (std::cell::OnceCell::new(), Some(s))),
        );
        // Stable, and in the items' order at first: the order a stable sort of the items
        // themselves gives.
        order.sort_by(|&(at_a, class_a, a), &(at_b, class_b, b)| {
            (at_a, class_a).cmp(&(at_b, class_b)).then_with(|| {
                let ((x, p), (y, q)) = (&keyed[a], &keyed[b]);
                match (p, q) {
                    (Some(p), Some(q)) => p.item.order_by(&q.item, |p, q| {
                        x.get_or_init(|| p.id()).cmp(y.get_or_init(|| q.id()))
                    }),
                    _ => std::cmp::Ordering::Equal,
                }
            })
        });
        items.extend(order.drain(..).filter_map(|(_, _, i)| keyed[i].1.take()));
        keyed.clear();
    }
}

/// Records of one moment in the order their flows started (the order flows leave at the end
/// of the input), the interim record of a flow before its last.
fn record_order(r: &FlowRecord) -> RecordOrder {
    (
        r.ts,
        proto_order(r.proto),
        ip_order(r.src_ip),
        r.src_port,
        ip_order(r.dst_ip),
        r.dst_port,
        !r.interim,
        r.end,
    )
}

/// Start, protocol name, addresses and ports, last or not, end: as integers, which compare
/// in a few instructions where names and `IpAddr`s took calls. The end of the input sorts
/// every open flow by it.
type RecordOrder = (
    Timestamp,
    u8,
    (bool, u128),
    u16,
    (bool, u128),
    u16,
    bool,
    Timestamp,
);

/// A record's protocol name as its first byte: "icmp", "tcp" and "udp" differ there, so
/// the bytes order them as the names do.
fn proto_order(name: &str) -> u8 {
    name.as_bytes().first().copied().unwrap_or_default()
}

/// An address as `IpAddr` orders them: IPv4 first, then by value.
fn ip_order(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(a.to_bits())),
        IpAddr::V6(a) => (true, a.to_bits()),
    }
}

/// [`record_order`] of the last record of `flow`, from the flow itself (as
/// [`FlowRecord::new`] fills the fields): the end of the input sorts its flows by it
/// before any record is made.
fn last_record_order(flow: &Flow) -> RecordOrder {
    (
        flow.first,
        proto_order(flow.proto.as_str()),
        ip_order(flow.orig.0),
        flow.orig.1,
        ip_order(flow.resp.0),
        flow.resp.1,
        true,
        flow.last,
    )
}

/// Records the end of the input makes at a time: its flows wait as they are (smaller than
/// their records) and leave a chunk at a time, so the end holds a chunk of records, not
/// one per open flow.
pub const END_CHUNK: usize = 512;

/// The partition of a packet between ends `a` and `b`, as [`ends`] gives them: its host's
/// ([`NetworkConfig::host`]), so both directions of a flow and every flow of a host meet
/// in one partition; a flow with no inside end goes by the address pair, either way round.
/// `network` is the one the sensor started with: a partition never changes under a
/// running flow. A fragment's later pieces carry no ports: the reader sends them after
/// their first piece (`engine.rs`), the worker places the datagram once it is whole.
/// Inlined: most packets are IPv4, whose addresses then go by as integers, not as `IpAddr`s
/// written to memory for a call and read back wider than they were written.
#[inline(always)]
pub fn partition_of(network: &NetworkConfig, a: (IpAddr, u16), b: (IpAddr, u16)) -> usize {
    // Most packets are IPv4: their addresses as integers (`fold` of an IPv4 address).
    if let (IpAddr::V4(v4a), IpAddr::V4(v4b)) = (a.0, b.0) {
        return partition_v4(network, (v4a.to_bits(), a.1), (v4b.to_bits(), b.1));
    }
    partition_v6(network, a, b)
}

/// [`partition_of`] of ends not both IPv4.
fn partition_v6(network: &NetworkConfig, a: (IpAddr, u16), b: (IpAddr, u16)) -> usize {
    match network.host(a, b) {
        Some(host) => mix(fold(host), fold(host)),
        None => mix(fold(a.0.min(b.0)), fold(a.0.max(b.0))),
    }
}

/// [`partition_of`] of a decoded packet ([`ends`] of its own), read from the packet where
/// it lies: copied out as `IpAddr`s, its addresses were read back wider than the decoder
/// wrote them, and the load waited for the stores (every packet asks).
#[inline]
fn packet_partition(network: &NetworkConfig, d: &Decoded<'_>) -> usize {
    if let (IpAddr::V4(src), IpAddr::V4(dst)) = (&d.src, &d.dst) {
        let (sp, dp) = match d.proto {
            Proto::Tcp | Proto::Udp => (d.src_port, d.dst_port),
            Proto::Icmp | Proto::Icmpv6 => (0, 0),
        };
        return partition_v4(network, (src.to_bits(), sp), (dst.to_bits(), dp));
    }
    let [a, b] = ends(d.proto, (d.src, d.src_port), (d.dst, d.dst_port));
    partition_of(network, a, b)
}

/// [`partition_of`] of two IPv4 ends, as integers.
#[inline]
fn partition_v4(network: &NetworkConfig, a: (u32, u16), b: (u32, u16)) -> usize {
    match network.host_v4(a, b) {
        Some(host) => mix(u64::from(host), u64::from(host)),
        None => mix(u64::from(a.0.min(b.0)), u64::from(a.0.max(b.0))),
    }
}

/// The partition of the two words [`partition_of`] keeps of a packet's ends. A fixed
/// multiplicative hash: the same in every run, and cheap, as it runs for every packet
/// (SipHash cost more than the flow lookup).
#[inline]
fn mix(x: u64, y: u64) -> usize {
    let h = x.wrapping_mul(GOLDEN).rotate_left(29) ^ y;
    ((h.wrapping_mul(GOLDEN) >> 32) % PARTITIONS as u64) as usize
}

/// The ends of a packet or flow of `proto` as the host rule reads them: TCP and UDP
/// ports, none for ICMP (its type and code say nothing of who serves).
pub fn ends(proto: Proto, a: (IpAddr, u16), b: (IpAddr, u16)) -> [(IpAddr, u16); 2] {
    if matches!(proto, Proto::Tcp | Proto::Udp) {
        [a, b]
    } else {
        [(a.0, 0), (b.0, 0)]
    }
}

/// The host of a flow ([`NetworkConfig::host`]): the inside end its findings are about.
pub fn flow_host(network: &NetworkConfig, flow: &Flow) -> Option<IpAddr> {
    let [a, b] = ends(flow.proto, flow.orig, flow.resp);
    network.host(a, b)
}

/// 2^64 / φ, the multiplier of Fibonacci hashing.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// An address in 64 bits, for [`partition_of`].
fn fold(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => u64::from(a.to_bits()),
        IpAddr::V6(a) => {
            let v = a.to_bits();
            (v as u64) ^ ((v >> 64) as u64).wrapping_mul(GOLDEN)
        }
    }
}

/// A worker of the flow stage: its partitions, and what they share (the decoder's
/// fragment pool, the DNS names, the details of common software).
pub struct FlowWorker {
    decoder: Decoder,
    names: NameCache,
    shared: SharedDetails,
    scope: Arc<FlowScope>,
    /// The network the sensor started with, which shares packets out.
    partitioner: NetworkConfig,
    partitions: Vec<Option<Partition>>,
    pub stats: Stats,
    pub out: Vec<Stamped>,
    /// The flows the input's end ended, in reverse record order ([`FlowWorker::end_records`]),
    /// and the floors of the few that were sessions operator latency timed.
    #[expect(
        clippy::vec_box,
        reason = "the table's flows, as boxed as it held them: sorting moves pointers"
    )]
    ending: Vec<Box<Flow>>,
    floors: HashMap<FlowKey, crate::flows::latency::Floors>,
    /// The end's moment.
    ended_at: Timestamp,
}

/// One partition: a flow table and the flow detectors over it.
struct Partition {
    flows: FlowTable,
    detectors: Detectors,
    pending: Vec<FlowEvent>,
    findings: Vec<Event>,
    /// Flows (by sequence number) whose handshake RTT was sent on. Hashed with aHash, as
    /// every flow's end asks (nothing reads the set in order).
    sampled: HashSet<u64, ahash::RandomState>,
    active: Active,
    /// Operator latency of inbound remote-desktop and SSH sessions (`flows::latency`).
    latency: Latency,
}

impl FlowWorker {
    /// A worker holding the partitions `owns` says.
    pub fn new(config: &Config, scope: Arc<FlowScope>, owns: impl Fn(usize) -> bool) -> FlowWorker {
        let mut flow_config = config.flows.clone();
        // The table limit is the sensor's: each partition holds its share.
        flow_config.max_flows = flow_config.max_flows.div_ceil(PARTITIONS).max(1);
        let partitions = (0..PARTITIONS)
            .map(|i| {
                owns(i).then(|| Partition {
                    flows: FlowTable::with_room(flow_config.clone(), INITIAL_FLOWS / PARTITIONS),
                    detectors: Detectors::new(config, Stage::Flow),
                    pending: Vec::new(),
                    findings: Vec::new(),
                    sampled: HashSet::default(),
                    active: Active::default(),
                    latency: Latency::default(),
                })
            })
            .collect();
        FlowWorker {
            decoder: Decoder::new(MAX_FRAGMENT_SETS, FRAGMENT_TIMEOUT),
            names: NameCache::new(DNS_CACHE_ENTRIES),
            shared: SharedDetails::default(),
            partitioner: scope.network.clone(),
            scope,
            partitions,
            stats: Stats::default(),
            out: Vec::new(),
            ending: Vec::new(),
            floors: HashMap::new(),
            ended_at: Timestamp::ZERO,
        }
    }

    /// A DNS answer of another worker's partition (every worker reads every one): its
    /// names join the cache.
    pub fn dns_answer(&mut self, ts: Timestamp, payload: &[u8]) {
        self.names.insert_answer(ts, payload);
    }

    /// One packet of this worker's partitions, at sensor clock `clock`; `partition` is
    /// the one the reader found for it, if it did (a reassembled datagram is placed here).
    pub fn packet(&mut self, pkt: Packet<'_>, clock: Timestamp, partition: Option<usize>) {
        self.stats.packets += 1;
        self.stats.bytes += pkt.orig_len as u64;
        // Borrowed where it lies: the decoded packet is a hundred bytes, copied at each move.
        let result = self.decoder.decode(pkt);
        let decoded = match &result {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                *self.stats.decode_errors.entry(e.as_str()).or_default() += 1;
                return;
            }
        };
        if is_dns_answer(decoded) {
            self.names.insert_answer(pkt.ts, decoded.payload);
        }
        let index = match partition {
            Some(p) if !decoded.reassembled => p,
            _ => packet_partition(&self.partitioner, decoded),
        };
        // The decoded packet borrows the decoder: the other fields are lent one by one.
        let mut ctx = Ctx {
            names: &mut self.names,
            shared: &mut self.shared,
            stats: &mut self.stats,
            scope: &self.scope,
            out: &mut self.out,
            clock,
            payload: decoded.payload,
        };
        let Some(p) = self.partitions[index].as_mut() else {
            // A reassembled datagram whose first piece the reader could not place (cut
            // before its ports): counted, since its partition is another worker's.
            *ctx.stats
                .decode_errors
                .entry("foreign_partition")
                .or_default() += 1;
            return;
        };
        let at = p
            .flows
            .process(pkt.ts, decoded, pkt.orig_len, &mut p.pending);
        p.drain(&mut ctx);
        // Operator latency: after the drain, so a flow identified by this packet has its label.
        if let Some(flow) = p.flows.at_mut(at) {
            p.latency
                .packet(pkt.ts, decoded, flow, &self.scope.network, |obs| {
                    ctx.send(obs)
                });
        }
    }

    /// A whole second of packet time passed: every partition's flows and detectors catch
    /// up. `marker` makes this worker the one that says so to the account stage.
    pub fn tick(&mut self, clock: Timestamp, marker: bool) {
        let (partitions, mut ctx) = self.split(clock);
        for p in partitions.iter_mut().flatten() {
            p.flows.advance(clock, &mut p.pending);
            p.drain(&mut ctx);
            let scope = ctx.detector_scope();
            let moment = Moment::Tick {
                now: clock,
                flows: &p.flows,
            };
            p.detectors.on(&moment, &scope, &mut p.findings);
            p.send_findings(&mut ctx);
        }
        if marker {
            ctx.out.push(Stamped {
                at: clock,
                item: Item::Tick,
            });
        }
    }

    /// What the stages know changed at `clock`; `marker` makes this worker the one that
    /// tells the account stage.
    pub fn reload(
        &mut self,
        scope: Arc<FlowScope>,
        reload: Arc<Reload>,
        clock: Timestamp,
        marker: bool,
    ) {
        self.scope = scope;
        if marker {
            self.out.push(Stamped {
                at: clock,
                item: Item::Reload(reload),
            });
        }
    }

    /// The first packet of the input: the account stage's inventory findings are due.
    pub fn start(&mut self, clock: Timestamp) {
        self.out.push(Stamped {
            at: clock,
            item: Item::Start,
        });
    }

    /// The input is over: every flow ends. What the ends find leaves in `out`, as when a flow
    /// ends earlier; their records follow from [`end_records`](Self::end_records), made a
    /// chunk at a time in the order the account stage applies them (all of one moment, the
    /// findings before the records), so they never pile up.
    pub fn finish(&mut self, clock: Timestamp) {
        let (partitions, mut ctx) = self.split(clock);
        let open = partitions.iter().flatten().map(|p| p.flows.len()).sum();
        let mut ending = Vec::with_capacity(open);
        let mut floors = HashMap::new();
        for p in partitions.iter_mut().flatten() {
            for mut flow in p.flows.drain() {
                let ts = flow.last;
                p.end(&mut flow, &mut ctx);
                let kept = p.latency.ended(&flow, ts, |obs| ctx.send(obs));
                if !kept.is_empty() {
                    floors.insert(flow.key(), kept);
                }
                p.send_findings(&mut ctx);
                ending.push(flow);
            }
        }
        // Backwards, so records leave from the end of the list. Open flows differ in their
        // key, so no two are equal and the sort needs no room of its own: the end is when
        // the most flows are held, and a key per flow (sort_by_cached_key) cost 100 bytes
        // of peak memory per open flow.
        ending.sort_unstable_by(|a, b| {
            (b.first.cmp(&a.first)).then_with(|| last_record_order(b).cmp(&last_record_order(a)))
        });
        self.ending = ending;
        self.floors = floors;
        self.ended_at = clock;
        self.sync_stats();
    }

    /// The next at most `n` records of the flows the input's end ended ([`finish`](Self::finish)),
    /// in record order, stamped with the end's moment; None when none are left.
    pub fn end_records(&mut self, n: usize) -> Option<Vec<Stamped>> {
        if self.ending.is_empty() {
            self.ending = Vec::new();
            return None;
        }
        let at = self.ended_at;
        // The list is sorted backwards: its last flows are the next ones.
        let take = n.max(1).min(self.ending.len());
        let mut chunk = self.ending.split_off(self.ending.len() - take);
        chunk.reverse();
        let mut floors = std::mem::take(&mut self.floors);
        let (_, ctx) = self.split(at);
        let mut records = Vec::with_capacity(take);
        let mut flows = chunk.into_iter();
        while let Some(mut flow) = flows.next() {
            prefetch_ahead(flows.as_slice());
            let details = flow.details.take();
            let why = EndReason::Shutdown.as_str();
            let mut record = flow_record(&flow, details, false, Some(why), &ctx);
            // Most ends time no session: no key built and hashed for an empty map.
            if !floors.is_empty()
                && let Some(kept) = floors.remove(&flow.key())
            {
                kept.write(&mut record);
            }
            debug_assert!(record_order(&record) == last_record_order(&flow));
            records.push(Stamped {
                at,
                item: Item::Record(Box::new(record)),
            });
        }
        self.floors = floors;
        Some(records)
    }

    /// The partitions, and what they borrow from the worker while they work at `clock`.
    fn split(&mut self, clock: Timestamp) -> (&mut [Option<Partition>], Ctx<'_>) {
        let ctx = Ctx {
            names: &mut self.names,
            shared: &mut self.shared,
            stats: &mut self.stats,
            scope: &self.scope,
            out: &mut self.out,
            clock,
            payload: &[],
        };
        (&mut self.partitions, ctx)
    }

    /// Copies counters kept elsewhere (tables, decoder) into `stats`.
    pub fn sync_stats(&mut self) {
        let (mut active, mut total, mut full) = (0, 0, 0);
        self.stats.state_evicted.clear();
        for p in self.partitions.iter().flatten() {
            active += p.flows.len() as u64;
            total += p.flows.flows_total;
            full += p.flows.evicted_table_full;
            let (structure, n) = p.latency.evictions();
            *self.stats.state_evicted.entry(structure).or_default() += n;
            for (structure, n) in p.detectors.evictions() {
                *self.stats.state_evicted.entry(structure).or_default() += n;
            }
        }
        self.stats
            .state_evicted
            .insert("dns_names", self.names.evictions());
        self.stats.flows_active = active;
        self.stats.flows_total = total;
        self.stats.flows_evicted.insert("table_full", full);
        let frag = self.decoder.fragments_evicted();
        if frag > 0 {
            self.stats.decode_errors.insert("fragment_expired", frag);
        }
    }

    /// Remote-desktop sessions running at `now`, as (inside host, tool).
    pub fn active_remote_desktop(&self, now: Timestamp) -> Vec<(IpAddr, App)> {
        self.partitions
            .iter()
            .flatten()
            .flat_map(|p| p.detectors.active_remote_desktop(now))
            .collect()
    }
}

/// The end's flows went cold while the others ended and sorted, and a record reads the
/// flow, its details' box and, for TLS, their Arc: each is asked for ahead of its turn (the
/// flow three records ahead, its details two, its TLS one), so a record's reads find them
/// in the cache instead of stalling on each in turn.
fn prefetch_ahead(next: &[Box<Flow>]) {
    if let Some(flow) = next.get(2) {
        prefetch::value::<Flow>(flow);
    }
    if let Some(details) = next.get(1).and_then(|f| f.details.as_deref()) {
        prefetch::value(details);
    }
    let tls = next
        .first()
        .and_then(|f| f.details.as_ref()?.tls.as_deref());
    if let Some(tls) = tls {
        prefetch::value(tls);
    }
}

/// What a partition borrows from its worker while it drains its flow events.
struct Ctx<'a> {
    names: &'a mut NameCache,
    shared: &'a mut SharedDetails,
    stats: &'a mut Stats,
    scope: &'a FlowScope,
    out: &'a mut Vec<Stamped>,
    clock: Timestamp,
    /// The payload of the packet being handled, whose bytes its flow's stream may hold in
    /// place ([`Segment::Lent`](crate::flows::reassembly::Segment::Lent)) until the
    /// identification this packet runs keeps them; empty between packets.
    payload: &'a [u8],
}

impl Ctx<'_> {
    fn detector_scope(&self) -> Scope<'_> {
        Scope {
            network: &self.scope.network,
            identity: &self.scope.identity,
            geo: &self.scope.geo,
            sessions: None,
        }
    }

    fn send(&mut self, obs: Observation) {
        self.out.push(Stamped {
            at: self.clock,
            item: Item::Observation(obs),
        });
    }
}

impl Partition {
    /// Handles the flow events the packet queued. Most packets queue none: the test is
    /// inlined where it is asked, not a call that saves and restores registers first.
    #[inline]
    fn drain(&mut self, ctx: &mut Ctx<'_>) {
        if !self.pending.is_empty() {
            self.drain_pending(ctx);
        }
    }

    /// Kept out of line: inlined, it made [`drain`](Self::drain) too big to inline in
    /// turn, and every packet paid a call that saved and restored registers.
    #[inline(never)]
    fn drain_pending(&mut self, ctx: &mut Ctx<'_>) {
        let mut pending = std::mem::take(&mut self.pending);
        for ev in pending.drain(..) {
            match ev {
                FlowEvent::Resumed {
                    key,
                    at,
                    from_orig,
                    ts,
                    prev,
                } => {
                    let Some(flow) = self.flows.at(at) else {
                        continue;
                    };
                    sample_rtt(&mut self.sampled, ctx, flow, ts);
                    let sender = if from_orig { flow.orig.0 } else { flow.resp.0 };
                    self.active.note(ctx, sender, ts);
                    let scope = ctx.detector_scope();
                    let moment = Moment::Resumed {
                        key: &key,
                        flow,
                        ts,
                        prev,
                    };
                    self.detectors.on(&moment, &scope, &mut self.findings);
                }
                FlowEvent::NewBytes { key, at, ts } => {
                    if let Some(flow) = self.flows.at_mut(at)
                        && !flow.dissected
                    {
                        identify_flow(flow, ctx, ts, false);
                        let dtls_of = (flow.dissected && flow.app == Some(App::Anyconnect))
                            .then_some((flow.proto, flow.orig.0, flow.resp));
                        if let Some((Proto::Udp, client, gateway)) = dtls_of {
                            cstp_companion(&mut self.flows, ctx, client, gateway);
                        }
                        let Some(flow) = self.flows.at_mut(at) else {
                            continue;
                        };
                        if flow.dissected {
                            // Passive RTT: only sessions it times stay followed.
                            self.latency.identified(flow, &ctx.scope.network);
                            let scope = ctx.detector_scope();
                            let moment = Moment::Identified {
                                key: &key,
                                at,
                                flow,
                                ts,
                            };
                            self.detectors.on(&moment, &scope, &mut self.findings);
                        }
                    }
                }
                FlowEvent::Datagram { app, ts, bytes, .. } => datagram(ctx, app, ts, &bytes),
                FlowEvent::Interim { key, .. } => {
                    if let Some(flow) = self.flows.get(&key) {
                        let record = flow_record(flow, flow.details.clone(), true, None, ctx);
                        ctx.out.push(Stamped {
                            at: ctx.clock,
                            item: Item::Record(Box::new(record)),
                        });
                    }
                }
                FlowEvent::Ended { mut flow, why } => {
                    let ts = flow.last;
                    self.end(&mut flow, ctx);
                    let details = flow.details.take();
                    let mut record = flow_record(&flow, details, false, Some(why.as_str()), ctx);
                    // Operator latency: the session's floor, on its record and for the account stage.
                    self.latency
                        .ended(&flow, ts, |obs| ctx.send(obs))
                        .write(&mut record);
                    ctx.out.push(Stamped {
                        at: ctx.clock,
                        item: Item::Record(Box::new(record)),
                    });
                }
            }
        }
        self.pending = pending;
        self.send_findings(ctx);
    }

    /// `flow` ended: identified if it was not yet, its handshake RTT sampled, the flow
    /// detectors told. Its record is the caller's to make.
    fn end(&mut self, flow: &mut Flow, ctx: &mut Ctx<'_>) {
        let ts = flow.last;
        if !flow.dissected {
            identify_flow(flow, ctx, ts, true);
        }
        sample_rtt(&mut self.sampled, ctx, flow, ts);
        if !self.sampled.is_empty() {
            self.sampled.remove(&flow.seq);
        }
        let scope = ctx.detector_scope();
        let moment = Moment::Ended { flow, ts };
        self.detectors.on(&moment, &scope, &mut self.findings);
    }

    fn send_findings(&mut self, ctx: &mut Ctx<'_>) {
        // Most moments find nothing: no drain of an empty list set up and dropped.
        if self.findings.is_empty() {
            return;
        }
        for event in self.findings.drain(..) {
            ctx.send(Observation::Finding {
                event: Box::new(event),
            });
        }
    }
}

/// The handshake RTT of a connection an outside client opened, once per flow.
fn sample_rtt(
    sampled: &mut HashSet<u64, ahash::RandomState>,
    ctx: &mut Ctx<'_>,
    flow: &Flow,
    ts: Timestamp,
) {
    if flow.proto != Proto::Tcp
        || ctx.scope.network.is_inside(flow.orig.0)
        || sampled.contains(&flow.seq)
    {
        return;
    }
    let Some(rtt_ns) = flow.tcp.rtt_orig_ns() else {
        return;
    };
    sampled.insert(flow.seq);
    ctx.send(Observation::HandshakeRtt {
        ts,
        client: flow.orig.0,
        rtt_ns,
        flow: crate::detect::remote_desktop::flow_ref(flow),
    });
}

/// Inside hosts already reported active in the current hour of packet time.
#[derive(Default)]
struct Active {
    /// Asked at every resumption: hashed with aHash (nothing reads the set in order).
    hosts: HashSet<IpAddr, ahash::RandomState>,
    hour: u64,
}

impl Active {
    /// An inside host sending again: reported once per host and hour.
    fn note(&mut self, ctx: &mut Ctx<'_>, sender: IpAddr, ts: Timestamp) {
        if !ctx.scope.network.is_inside(sender) {
            return;
        }
        let hour = ts.secs() / 3600;
        if hour != self.hour {
            self.hosts.clear();
            self.hour = hour;
        }
        if self.hosts.contains(&sender) {
            return;
        }
        if self.hosts.len() < MAX_ACTIVE_HOSTS {
            self.hosts.insert(sender);
        }
        ctx.send(Observation::Activity { ts, host: sender });
    }
}

/// Identifies `flow` from its reassembled prefixes; once settled (or `ending`), frees the
/// buffers, shares its SSH and TLS details with flows of the same software and counts the
/// label; not settled, it keeps the bytes the packet lent ([`Ctx::payload`]). RADIUS
/// accounting seen on the way goes to the account stage.
fn identify_flow(flow: &mut Flow, ctx: &mut Ctx<'_>, ts: Timestamp, ending: bool) {
    let Some(streams) = flow.streams.as_deref() else {
        return;
    };
    let payload = ctx.payload;
    // The details are found anew below; the TLS and HTTP probes take what of the earlier
    // ones the client sent.
    let (earlier_tls, earlier_http) = match flow.details.as_deref_mut() {
        Some(d) => match d.other.take_if(|o| matches!(o, Protocol::Http(_))) {
            Some(Protocol::Http(http)) => (d.tls.take(), Some(http)),
            _ => (d.tls.take(), None),
        },
        None => (None, None),
    };
    let input = Input {
        proto: flow.proto,
        orig_port: flow.orig.1,
        resp_port: flow.resp.1,
        client: streams.dir[ORIG].view(payload),
        server: streams.dir[RESP].view(payload),
        client_closed: ending || streams.dir[ORIG].is_closed(),
        server_closed: ending || streams.dir[RESP].is_closed(),
        client_datagrams: &streams.datagrams[ORIG],
        server_datagrams: &streams.datagrams[RESP],
        dns_tool: (ctx.names.lookup_entry(ts, flow.resp.0)).and_then(|e| e.tool),
        midstream: flow.history.picked_up_mid_stream(),
        tls: std::cell::Cell::new(earlier_tls),
        http: std::cell::Cell::new(earlier_http),
        ja4: Some(&ctx.shared.ja4),
        certs: Some(&ctx.shared.certs),
        dns_answer: (streams.datagrams[RESP].first()).and_then(|d| ctx.names.parsed(d)),
        dns: flow.details.as_deref().and_then(Details::dns),
    };
    let id = identify::identify(&input);
    let follow = flow.proto == Proto::Udp && id.app == Some(App::Radius);
    flow.app = id.app;
    if id.picked_up_mid_stream {
        flow.history.push(MID_STREAM, true);
    }
    // Most flows carry no protocol details: they cost no allocation.
    let mut details = id.details;
    if id.done && !ending {
        ctx.shared.share(&mut details);
    }
    // A flow identified again (a DNS query, then its answer) reuses its box.
    match (&mut flow.details, details.is_empty()) {
        (_, true) => flow.details = None,
        (Some(boxed), false) => **boxed = details,
        (None, false) => flow.details = Some(Box::new(details)),
    }
    if id.done || ending {
        if follow {
            // The datagrams seen so far; later ones arrive as they come.
            for list in &streams.datagrams {
                for d in list {
                    datagram(ctx, flow.app, ts, d);
                }
            }
        }
        flow.dissected = true;
        flow.guess = id.guess;
        flow.streams = None;
        flow.follow = follow;
        let label = flow.app.map_or("unknown", App::as_str);
        *ctx.stats.flows_by_app.entry(label).or_default() += 1;
    } else if let Some(streams) = flow.streams.as_deref_mut() {
        // Not settled by this packet: the bytes it lent a stream in place are wanted later.
        streams.keep(payload);
    }
}

/// AnyConnect/OpenConnect runs two channels to its gateway: CSTP, HTTP inside TLS (its
/// bytes are only `tls`), and the DTLS channel, whose ClientHello carries the session id
/// that CSTP handed out. Once the DTLS channel is labelled, the TLS flow from the same
/// client to the same gateway address and port that is still open is its CSTP channel and
/// takes the label (the newest, when the client has several). Both flows have the client
/// as their host, so they are in one partition, and the label is the same for any number
/// of workers.
fn cstp_companion(
    flows: &mut FlowTable,
    ctx: &mut Ctx<'_>,
    client: IpAddr,
    gateway: (IpAddr, u16),
) {
    let candidates = flows.find_all_mut(|f| {
        f.proto == Proto::Tcp && f.app == Some(App::Tls) && f.orig.0 == client && f.resp == gateway
    });
    let Some(cstp) = candidates.into_iter().max_by_key(|f| (f.first, f.orig.1)) else {
        return;
    };
    cstp.app = Some(App::Anyconnect);
    if cstp.dissected {
        *ctx.stats.flows_by_app.entry(App::Tls.as_str()).or_default() -= 1;
        *ctx.stats
            .flows_by_app
            .entry(App::Anyconnect.as_str())
            .or_default() += 1;
    }
}

/// A datagram of a followed flow: RADIUS accounting becomes an observation for identity.
fn datagram(ctx: &mut Ctx<'_>, app: Option<App>, ts: Timestamp, bytes: &[u8]) {
    if app != Some(App::Radius) {
        return;
    }
    let Ok(packet) = crate::dissect::radius::parse(bytes) else {
        return;
    };
    let Some(acct) = packet.accounting.as_ref() else {
        return;
    };
    // RFC 2866 §5.1 Acct-Status-Type: 1 start, 2 stop, 3 interim update.
    let status = match acct.status_type {
        Some(1) => SessionStatus::Start,
        Some(2) => SessionStatus::Stop,
        Some(3) => SessionStatus::Interim,
        _ => return,
    };
    if let (Some(user), Some(ip)) = (acct.user_name.as_deref(), acct.framed_ip) {
        ctx.send(Observation::Radius {
            ts,
            user: user.to_string(),
            framed_ip: IpAddr::V4(ip),
            calling_station: acct.calling_station_id.clone(),
            status,
        });
    }
}

/// The flow record, with where its ends are; the account stage names the account.
fn flow_record(
    flow: &Flow,
    details: Option<Box<Details>>,
    interim: bool,
    why: Option<&'static str>,
    ctx: &Ctx<'_>,
) -> FlowRecord {
    // The name and places first, the record last: set after it was made, they were set
    // in a copy on the stack, then its 688 bytes copied out.
    let dns_name = ctx.names.lookup(flow.last, flow.resp.0).map(str::to_string);
    let geo = &ctx.scope.geo;
    let (resp_country, resp_asn) = geo.country_asn(flow.resp.0);
    let (orig_country, orig_asn) = geo.country_asn(flow.orig.0);
    let mut record = FlowRecord::new(flow, details, interim, why);
    record.dns_name = dns_name;
    (record.resp_country, record.resp_asn) = (resp_country, resp_asn);
    (record.orig_country, record.orig_asn) = (orig_country, orig_asn);
    record
}

/// The host of a flow record ([`NetworkConfig::host`]), whose account names the record.
pub fn record_host(network: &NetworkConfig, record: &FlowRecord) -> Option<IpAddr> {
    // Records name ICMP "icmp" and TCP and UDP by their own names.
    let proto = match record.proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => Proto::Icmp,
    };
    let [a, b] = ends(
        proto,
        (record.src_ip, record.src_port),
        (record.dst_ip, record.dst_port),
    );
    network.host(a, b)
}

/// A packet that carries a DNS answer every worker must read.
pub fn is_dns_answer(d: &Decoded<'_>) -> bool {
    d.proto == Proto::Udp
        && matches!(d.src_port, 53 | 137 | 5353 | 5355)
        && dns::is_response(d.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Inventory;
    use crate::decode::{ACK, PSH, SYN};
    use crate::dissect::identify::Protocol;
    use crate::flows::FlowConfig;
    use crate::flows::flow::segment;

    /// Items of two moments, observations of one time among them, in a scrambled order.
    fn mixed_items() -> Vec<Stamped> {
        let mut items = Vec::new();
        for i in 0..40u64 {
            let at = Timestamp::from_secs(100 + i % 2);
            let item = match i % 4 {
                0 => Item::Tick,
                1 => Item::Observation(Observation::Session(crate::identity::SessionEvent {
                    ts: Timestamp::from_secs(90 + i % 3),
                    account: format!("a{}", (i * 7) % 11),
                    assigned_ip: format!("10.8.0.{}", i % 5).parse().unwrap(),
                    public_ip: None,
                    status: crate::identity::SessionStatus::Start,
                })),
                _ => Item::Observation(Observation::Activity {
                    ts: Timestamp::from_secs(90),
                    host: format!("10.9.0.{}", (i * 13) % 37).parse().unwrap(),
                }),
            };
            items.push(Stamped { at, item });
        }
        items
    }

    fn describe(items: &[Stamped]) -> Vec<(Timestamp, u8, Option<String>)> {
        items
            .iter()
            .map(|s| {
                let id = match &s.item {
                    Item::Observation(o) => Some(o.id()),
                    _ => None,
                };
                (s.at, s.item.class(), id)
            })
            .collect()
    }

    #[test]
    fn sorting_with_ids_hashed_once_keeps_the_order_of_item_order() {
        let mut slow = mixed_items();
        slow.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.item.order(&b.item)));
        let mut fast = mixed_items();
        sort_items(&mut fast);
        assert_eq!(describe(&fast), describe(&slow));
        // Ties on time were broken by id: the test is not sorted already.
        assert_ne!(describe(&mixed_items()), describe(&slow));
    }

    fn scope() -> FlowScope {
        FlowScope {
            network: NetworkConfig::default(),
            identity: Identity::new(Arc::new(Inventory::default())),
            geo: Arc::new(Geo::open(&Default::default()).expect("embedded geo")),
        }
    }

    /// Sessions of the same SSH software keep one copy of their details once dissection
    /// is over (banners and fingerprints are the fleet's, not the session's); other
    /// software gets its own.
    #[test]
    fn finished_ssh_sessions_share_their_details() {
        let mut table = FlowTable::new(FlowConfig::default());
        let mut names = NameCache::new(16);
        let mut shared = SharedDetails::default();
        let mut stats = Stats::default();
        let mut out = Vec::new();
        let scope = scope();
        let mut details = Vec::new();
        for (i, client_banner) in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"SSH-2.0-PuTTY_0.81\r\n",
        ]
        .into_iter()
        .enumerate()
        {
            let port = 40000 + i as u16;
            let ts = Timestamp(i as u64 * 1_000_000_000);
            let mut events = Vec::new();
            // Banners, then the client's keystrokes where its KEXINIT would be: the SSH
            // parser has its answer, and the flow is dissected.
            let data = ACK | PSH;
            let after_banner = 1 + client_banner.len() as u32;
            for (from_client, seq, bytes) in [
                (false, 1, &b"SSH-2.0-OpenSSH_9.6\r\n"[..]),
                (true, 1, client_banner),
                (true, after_banner, &[0x41; 36][..]),
                (false, 22, &[0x42; 36][..]),
            ] {
                let packet = segment(port, 22, from_client, data, seq, bytes);
                let at = table.process(ts, &packet, 100, &mut events);
                // Not identified packet by packet: each keeps the bytes it lent.
                if let Some(streams) = table.at_mut(at).and_then(|f| f.streams.as_deref_mut()) {
                    streams.keep(bytes);
                }
            }
            let key = FlowKey::of(&segment(port, 22, true, data, 0, b""));
            let flow = table.get_mut(&key).unwrap();
            let mut ctx = Ctx {
                names: &mut names,
                shared: &mut shared,
                stats: &mut stats,
                scope: &scope,
                out: &mut out,
                clock: ts,
                payload: &[],
            };
            identify_flow(flow, &mut ctx, ts, false);
            assert!(flow.dissected);
            match flow.details.as_deref().and_then(|d| d.other.clone()) {
                Some(Protocol::Ssh(ssh)) => details.push(ssh),
                other => panic!("no SSH details: {other:?}"),
            }
        }
        assert_eq!(details[0].client.as_deref(), Some("SSH-2.0-OpenSSH_9.6"));
        assert!(Arc::ptr_eq(&details[0], &details[1]));
        assert!(!Arc::ptr_eq(&details[0], &details[2]));
        assert_eq!(shared.len(), (2, 0));
    }

    /// The flows open at the end of the input leave as records in record order, a chunk at a
    /// time, across the partitions: not in the order they were opened.
    #[test]
    fn end_records_come_in_record_order_a_chunk_at_a_time() {
        let mut worker = FlowWorker::new(&Config::default(), Arc::new(scope()), |_| true);
        let mut events = Vec::new();
        let mut partitions = HashSet::new();
        for k in 0..40u8 {
            let mut packet = segment(1000 + u16::from(k), 443, true, SYN, 0, b"");
            packet.src = IpAddr::from([192, 0, 2, k % 8]);
            let [a, b] = ends(
                packet.proto,
                (packet.src, packet.src_port),
                (packet.dst, packet.dst_port),
            );
            let index = partition_of(&worker.partitioner, a, b);
            partitions.insert(index);
            let ts = Timestamp::from_secs(100 + u64::from(k) * 7 % 10);
            let p = worker.partitions[index].as_mut().unwrap();
            p.flows.process(ts, &packet, 60, &mut events);
        }
        assert!(partitions.len() > 1);
        worker.finish(Timestamp::from_secs(200));
        let mut records = Vec::new();
        while let Some(chunk) = worker.end_records(3) {
            assert!(!chunk.is_empty() && chunk.len() <= 3);
            for s in chunk {
                assert_eq!(s.at, Timestamp::from_secs(200));
                let Item::Record(r) = s.item else {
                    panic!("not a record")
                };
                records.push(r);
            }
        }
        assert_eq!(records.len(), 40);
        assert!(
            records
                .windows(2)
                .all(|w| record_order(&w[0]) < record_order(&w[1]))
        );
        assert!(records.iter().all(|r| r.end_reason == Some("shutdown")));
        assert!(worker.end_records(3).is_none());
    }

    /// The integers of a record's order compare as the names and addresses they stand for.
    #[test]
    fn record_order_compares_as_names_and_addresses() {
        let protos = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Icmpv6];
        for a in protos {
            for b in protos {
                let (x, y) = (a.as_str(), b.as_str());
                assert_eq!(proto_order(x).cmp(&proto_order(y)), x.cmp(y), "{x} {y}");
            }
        }
        let ips: Vec<IpAddr> = [
            "0.0.0.0",
            "10.0.0.1",
            "10.0.0.2",
            "9.255.255.255",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "fe80::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for a in &ips {
            for b in &ips {
                assert_eq!(ip_order(*a).cmp(&ip_order(*b)), a.cmp(b), "{a} {b}");
            }
        }
    }

    /// Both directions of a flow, and an inside host's flows to anywhere outside, share a
    /// partition; flows between a pooled host and an inside server go with the pooled host,
    /// flows between two other inside hosts with the client.
    #[test]
    fn a_hosts_flows_share_its_partition() {
        let network = NetworkConfig {
            vpn_pool: vec!["10.8.0.0/16".parse().unwrap()].into(),
            ..Default::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let host = (ip("10.8.0.12"), 50_000);
        let there = partition_of(&network, host, (ip("198.51.100.1"), 443));
        let stone = (ip("10.20.0.7"), 40_000);
        let its = partition_of(&network, stone, (ip("198.51.100.1"), 443));
        for peer in 1..40u8 {
            let outside = (IpAddr::from([203, 0, 113, peer]), 22);
            assert_eq!(partition_of(&network, outside, host), there);
            assert_eq!(partition_of(&network, host, outside), there);
            let server = (IpAddr::from([10, 20, 0, peer]), 22);
            assert_eq!(partition_of(&network, server, host), there);
            assert_eq!(partition_of(&network, (server.0, 60_000), host), there);
            // Not pooled: the inside server's partition is its client's.
            assert_eq!(partition_of(&network, server, stone), its);
            assert_eq!(partition_of(&network, stone, server), its);
        }
        let (a, b) = ((ip("10.20.0.1"), 123), (ip("10.20.0.2"), 123));
        assert_eq!(partition_of(&network, a, b), partition_of(&network, b, a));
        let used: HashSet<usize> = (1..=255u8)
            .map(|h| {
                let client = (IpAddr::from([10, 8, 1, h]), 50_000);
                partition_of(&network, client, (ip("192.0.2.1"), 443))
            })
            .collect();
        assert!(
            used.len() > PARTITIONS / 2,
            "{} partitions used",
            used.len()
        );
    }

    /// A packet's partition, read from the decoded packet, is its ends' (`ends`), for
    /// IPv4 and IPv6, TCP, UDP and ICMP (whose type and code are no ports).
    #[test]
    fn a_packets_partition_is_its_ends() {
        let network = NetworkConfig {
            vpn_pool: vec!["10.8.0.0/16".parse().unwrap()].into(),
            ..Default::default()
        };
        let hosts = [
            "10.8.0.12",
            "10.20.0.7",
            "198.51.100.1",
            "2001:db8::1",
            "fd00::2",
        ];
        let v6 = |s: &str| s.contains(':');
        for a in hosts {
            for b in hosts.iter().filter(|b| v6(b) == v6(a)) {
                for (proto, ports) in [
                    (Proto::Tcp, (50_000, 22)),
                    (Proto::Udp, (53, 40_000)),
                    (Proto::Icmp, (8, 0)),
                    (Proto::Icmpv6, (0, 129)),
                ] {
                    let d = Decoded {
                        src: a.parse().unwrap(),
                        dst: b.parse().unwrap(),
                        proto,
                        src_port: ports.0,
                        dst_port: ports.1,
                        tcp: None,
                        ..segment(1, 2, true, 0, 0, b"")
                    };
                    let [x, y] = ends(proto, (d.src, d.src_port), (d.dst, d.dst_port));
                    let want = partition_of(&network, x, y);
                    assert_eq!(packet_partition(&network, &d), want, "{a} {b} {proto:?}");
                }
            }
        }
    }
}
