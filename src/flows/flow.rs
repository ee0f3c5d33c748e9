//! One flow: who started it, what each side sent, the TCP handshake and state.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::app::App;
use crate::decode::{ACK, Decoded, FIN, Proto, RST, SYN, Tunnel};
use crate::dissect::identify::Details;
use crate::flows::activity::{Activity, Resume};
use crate::flows::community_id::icmp_counterpart;
use crate::flows::reassembly::{Segment, Stream};
use crate::timestamp::Timestamp;

/// Direction-free flow identity: the lower (address, port) endpoint comes first, so both
/// directions of a conversation find the same entry. Ordered as the tuple of its fields
/// (see the `Ord` impl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub proto: Proto,
    pub lo: (IpAddr, u16),
    pub hi: (IpAddr, u16),
}

impl FlowKey {
    pub fn of(d: &Decoded<'_>) -> FlowKey {
        FlowKey::new(d.proto, (d.src, d.src_port), (d.dst, d.dst_port))
    }

    /// The key of a conversation between two endpoints, either way round. ICMP echo request
    /// and reply differ in type; they are keyed on the addresses alone so both directions
    /// meet.
    pub fn new(proto: Proto, a: (IpAddr, u16), b: (IpAddr, u16)) -> FlowKey {
        let (a, b) = match proto {
            Proto::Icmp | Proto::Icmpv6 => ((a.0, 0), (b.0, 0)),
            Proto::Tcp | Proto::Udp => (a, b),
        };
        let (lo, hi) = if endpoint_order(a) <= endpoint_order(b) {
            (a, b)
        } else {
            (b, a)
        };
        FlowKey { proto, lo, hi }
    }
}

/// As the tuple `(proto, lo, hi)` orders, in integers: the detectors' and operator
/// latency's maps keyed by flow search on every packet, and the derived order compares
/// each address as an enum and its bytes with `memcmp`.
impl Ord for FlowKey {
    fn cmp(&self, other: &FlowKey) -> Ordering {
        (self.proto as u8)
            .cmp(&(other.proto as u8))
            .then_with(|| endpoint_cmp(self.lo, other.lo))
            .then_with(|| endpoint_cmp(self.hi, other.hi))
    }
}

impl PartialOrd for FlowKey {
    fn partial_cmp(&self, other: &FlowKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Orders two endpoints as `(IpAddr, u16)` does; two IPv4 ones (most) as one 48-bit
/// integer each.
#[inline]
fn endpoint_cmp(a: (IpAddr, u16), b: (IpAddr, u16)) -> Ordering {
    match (a.0, b.0) {
        (IpAddr::V4(x), IpAddr::V4(y)) => v4_endpoint(x, a.1).cmp(&v4_endpoint(y, b.1)),
        _ => endpoint_order(a).cmp(&endpoint_order(b)),
    }
}

/// An IPv4 endpoint as an integer that orders as `(Ipv4Addr, u16)` does.
#[inline]
fn v4_endpoint(ip: std::net::Ipv4Addr, port: u16) -> u64 {
    u64::from(ip.to_bits()) << 16 | u64::from(port)
}

/// An endpoint as plain integers that order as `(IpAddr, u16)` does (IPv4 before IPv6, then
/// address, then port). Every packet's key and every probe of the table compares two
/// endpoints; the tuple of an `IpAddr` compared through a call per field.
fn endpoint_order((ip, port): (IpAddr, u16)) -> (bool, u128, u16) {
    match ip {
        IpAddr::V4(v4) => (false, u128::from(v4.to_bits()), port),
        IpAddr::V6(v6) => (true, v6.to_bits(), port),
    }
}

/// Hashes the key as few words: every packet looks its flow up, and the derived hash
/// feeds each enum tag and address byte to the hasher separately. An IPv4 key (both ends
/// of a packet have one IP version) is one 128-bit word, an IPv6 key three.
impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let ports = u64::from(self.lo.1) << 24 | u64::from(self.hi.1) << 8 | self.proto as u64;
        match (self.lo.0, self.hi.0) {
            (IpAddr::V4(lo), IpAddr::V4(hi)) => h.write_u128(
                u128::from(lo.to_bits()) << 96 | u128::from(hi.to_bits()) << 64 | u128::from(ports),
            ),
            (lo, hi) => {
                h.write_u128(address_bits(lo));
                h.write_u128(address_bits(hi));
                h.write_u64(ports);
            }
        }
    }
}

/// An address as 128 bits, IPv4 mapped into IPv6 (equal keys hash equally; a v4 address
/// and its mapped v6 form only share a bucket).
fn address_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Index of a direction in per-direction arrays.
pub const ORIG: usize = 0;
pub const RESP: usize = 1;

/// Zeek's connection history: a letter per event the first time it happens, upper case
/// for the originator, lower case for the responder.
#[derive(Clone, Copy, Debug, Default)]
pub struct History {
    letters: [u8; HISTORY_LETTERS],
    len: u8,
}

/// Every letter the table writes (`^` or `~`, which never meet, and ten letters for each
/// side) fits once: the history is never cut, and the array costs no byte more.
const HISTORY_LETTERS: usize = 21;

/// History letter: the flow was open before the capture saw it (a TCP flow whose first
/// packet is not a SYN or SYN/ACK, or a UDP tunnel labelled from data packets alone).
/// Zeek has no letter for this (it shows as a history without `S`/`H`); `~` is not one of
/// Zeek's, so it cannot be read as one.
pub const MID_STREAM: u8 = b'~';

impl History {
    #[expect(
        clippy::manual_contains,
        reason = "contains on bytes calls memchr: a call per packet for 21 bytes at most"
    )]
    pub fn push(&mut self, letter: u8, from_orig: bool) {
        let l = if from_orig {
            letter.to_ascii_uppercase()
        } else {
            letter.to_ascii_lowercase()
        };
        let now = &self.letters[..self.len as usize];
        if now.iter().any(|&x| x == l) || self.len as usize == self.letters.len() {
            return;
        }
        self.letters[self.len as usize] = l;
        self.len += 1;
    }

    /// The flow was picked up mid-stream ([`MID_STREAM`]).
    pub fn picked_up_mid_stream(&self) -> bool {
        self.letters[..self.len as usize].contains(&MID_STREAM)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.letters[..self.len as usize]).unwrap_or("")
    }
}

/// TCP handshake times and what each side has sent.
///
/// The times happen at most once each; they are kept as plain timestamps with a bit each
/// for "seen" (an `Option<Timestamp>` costs 16 bytes, this 8 and a bit: every tracked flow
/// carries them).
///
/// `repr(C)`, in this order: the fields every segment reads or writes (sequence ends,
/// flights, flags, bits) are the first 16 bytes, which [`Flow`] places at the end of a hot
/// cache line; the retransmission counts and the handshake times follow in the next.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct TcpTrack {
    /// Highest sequence number (end of data) each side has sent, for retransmissions.
    seq_end: [u32; 2],
    /// How long each side's opening flight lasted, in units of 10 µs from its first
    /// payload (`u16::MAX`: longer than that can say): the originator's until the
    /// responder's first payload, the responder's until the originator's second flight.
    /// Two bytes each keep a flow within its memory budget.
    flight: [u16; 2],
    /// OR of the TCP flags each side has sent.
    pub flags: [u8; 2],
    /// Bits 0–3: `times` seen; bits 4–5: `seq_end` known, per side; bit 6: operator
    /// latency holds a session of the connection ([`TcpTrack::latency_session`]).
    seen: u8,
    pub retransmissions: [u32; 2],
    /// Payload bytes of each direction that were never seen (holes in the sequence space).
    pub missed_bytes: u64,
    /// SYN, SYN/ACK, the originator's handshake-completing ACK, and its second flight.
    times: [Timestamp; 4],
}

const SYN_TIME: usize = 0;
const SYNACK_TIME: usize = 1;
const ACK_TIME: usize = 2;
const SECOND_FLIGHT_TIME: usize = 3;
const SEQ_END_SEEN: u8 = 1 << 4;
const LATENCY_SESSION: u8 = 1 << 6;
/// The unit of [`TcpTrack::flight`], ns.
const FLIGHT_UNIT_NS: u64 = 10_000;

impl TcpTrack {
    fn time(&self, i: usize) -> Option<Timestamp> {
        (self.seen & (1 << i) != 0).then(|| self.times[i])
    }

    /// Records time `i` unless it was already seen.
    fn mark(&mut self, i: usize, ts: Timestamp) {
        if self.seen & (1 << i) == 0 {
            self.times[i] = ts;
            self.seen |= 1 << i;
        }
    }

    /// The originator's first SYN.
    pub fn syn(&self) -> Option<Timestamp> {
        self.time(SYN_TIME)
    }

    /// The responder's first SYN/ACK.
    pub fn synack(&self) -> Option<Timestamp> {
        self.time(SYNACK_TIME)
    }

    /// The originator's ACK that completed the handshake.
    pub fn ack(&self) -> Option<Timestamp> {
        self.time(ACK_TIME)
    }

    /// The originator's first payload after the responder's first payload (the client's
    /// second flight, e.g. its answer to a ServerHello).
    pub fn orig_second_flight(&self) -> Option<Timestamp> {
        self.time(SECOND_FLIGHT_TIME)
    }

    /// Extends `side`'s opening flight, which started at `first`, to `ts`.
    fn extend_flight(&mut self, side: usize, first: Timestamp, ts: Timestamp) {
        let units = ts.0.saturating_sub(first.0) / FLIGHT_UNIT_NS;
        self.flight[side] = u16::try_from(units).unwrap_or(u16::MAX);
    }

    /// How long each side's opening flight lasted, ns (`[ORIG]` the originator's before
    /// the responder answered, `[RESP]` the responder's before the originator's second
    /// flight), to 10 µs; None past 655 ms, which is no flight. An answer is timed from
    /// the end of what it answers, not from its start.
    pub fn flight_ns(&self) -> [Option<u64>; 2] {
        self.flight
            .map(|f| (f != u16::MAX).then_some(u64::from(f) * FLIGHT_UNIT_NS))
    }

    fn seq_end(&self, side: usize) -> Option<u32> {
        (self.seen & (SEQ_END_SEEN << side) != 0).then(|| self.seq_end[side])
    }

    fn set_seq_end(&mut self, side: usize, end: u32) {
        self.seq_end[side] = end;
        self.seen |= SEQ_END_SEEN << side;
    }

    /// SYN→SYN/ACK: round trip between the sensor and the responder.
    pub fn rtt_resp_ns(&self) -> Option<u64> {
        self.synack()?.0.checked_sub(self.syn()?.0)
    }

    /// SYN/ACK→ACK: round trip between the sensor and the originator.
    pub fn rtt_orig_ns(&self) -> Option<u64> {
        self.ack()?.0.checked_sub(self.synack()?.0)
    }

    pub fn established(&self) -> bool {
        self.syn().is_some() && self.synack().is_some()
    }

    /// Operator latency may hold a session of this connection ([`crate::flows::latency`]):
    /// a packet of one without looks nothing up there. A bit of a byte every flow has
    /// anyway, where a field would cost a flow its size class.
    pub fn latency_session(&self) -> bool {
        self.seen & LATENCY_SESSION != 0
    }

    pub fn set_latency_session(&mut self, on: bool) {
        if on {
            self.seen |= LATENCY_SESSION;
        } else {
            self.seen &= !LATENCY_SESSION;
        }
    }
}

/// Per-direction reassembly, alive only while dissectors still want bytes.
#[derive(Debug)]
pub struct Streams {
    pub dir: [Stream; 2],
    /// UDP: the first datagrams of each direction.
    pub datagrams: [Vec<Vec<u8>>; 2],
}

impl Streams {
    /// The packet was not enough: the bytes it lent a stream in place are kept ([`Stream::keep`]).
    pub fn keep(&mut self, payload: &[u8]) {
        self.dir.iter_mut().for_each(|s| s.keep(payload));
    }
}

pub const MAX_DATAGRAMS: usize = 8;

/// Why a flow record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// FIN from both sides or a RST, then the close delay passed.
    Closed,
    /// No packet for the inactivity timeout of its state.
    Timeout,
    /// Pushed out by a newer flow when the table was full.
    Evicted,
    /// The input ended (end of replay, or shutdown).
    Shutdown,
    /// A new connection reused the ports of a closed one.
    Reused,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Timeout => "timeout",
            EndReason::Evicted => "evicted",
            EndReason::Shutdown => "shutdown",
            EndReason::Reused => "reused",
        }
    }
}

/// One tracked flow, boxed in the table.
///
/// `repr(C)`, its fields in the order a packet touches them: a flow's box is 376 bytes,
/// six cache lines (mimalloc's 384-byte class starts every block on a 128-byte boundary),
/// and a packet of a flow long out of the cache waits for each line it touches.
/// - Line 0: what the table's probe compares (`seq`, `proto`, the ends) and the flags
///   and counts every packet reads (`last`, `dissected`, `interim_records`...).
/// - Lines 1–3: `dir`, each direction's counters ([`Activity`] puts a packet's own first,
///   then a data packet's): the originator's in line 1, the responder's per-packet ones in
///   line 2 and its data ones in line 3.
/// - Line 4: the wheel's slot, the reassembly, the history and the TCP state a segment
///   reads ([`TcpTrack`] puts those first).
/// - Line 5: what a flow's first packets or its record read: handshake times,
///   retransmission counts, the details.
///
/// A pure ACK touches three lines, a data segment three or four.
#[derive(Debug)]
#[repr(C)]
pub struct Flow {
    /// Sequence number of the flow in the input, for deterministic ordering.
    pub seq: u64,
    pub last: Timestamp,
    pub orig: (IpAddr, u16),
    pub resp: (IpAddr, u16),
    pub proto: Proto,
    /// Identification is over: the reassembly buffers are gone.
    pub dissected: bool,
    /// Every later datagram is handed on too (DNS answers, RADIUS accounting).
    pub follow: bool,
    /// The application label, from evidence in the bytes.
    pub app: Option<App>,
    /// Interim records written so far; the next is due `interim_interval` after the last
    /// (see [`Flow::next_interim`]).
    pub interim_records: u32,
    pub dir: [Activity; 2],
    /// The second (of packet time) at which the table next looks at this flow.
    pub(super) timer_at: u64,
    pub first: Timestamp,
    pub streams: Option<Box<Streams>>,
    pub history: History,
    /// A port-only hint, when the bytes said nothing.
    pub guess: Option<App>,
    pub tunnel: Option<Tunnel>,
    pub tcp: TcpTrack,
    pub details: Option<Box<Details>>,
}

/// What a packet did to its flow, for the table's bookkeeping.
#[derive(Clone, Copy, Debug, Default)]
pub struct Update {
    /// The packet came from the originator.
    pub from_orig: bool,
    pub resumed: Option<Resume>,
    /// New in-order stream bytes (or a new datagram) arrived for the dissectors.
    pub new_bytes: bool,
    /// A datagram of a followed flow.
    pub follow: bool,
}

impl Flow {
    /// A flow from its first packet. A SYN/ACK seen first was sent by the responder
    /// (history gets `^`); otherwise the first sender is the originator.
    pub fn new(seq: u64, d: &Decoded<'_>, ts: Timestamp, reassembly_bytes: usize) -> Flow {
        let flags = d.tcp.map(|t| t.flags).unwrap_or(0);
        let flipped = flags & (SYN | ACK) == SYN | ACK;
        let (orig, resp) = if flipped {
            ((d.dst, d.dst_port), (d.src, d.src_port))
        } else if matches!(d.proto, Proto::Icmp | Proto::Icmpv6) {
            // As Zeek: the type, and the reply type of a request/reply pair (else the code).
            let other = icmp_counterpart(d.proto, d.src_port).unwrap_or(d.dst_port);
            ((d.src, d.src_port), (d.dst, other))
        } else {
            ((d.src, d.src_port), (d.dst, d.dst_port))
        };
        let mut history = History::default();
        if flipped {
            history.push(b'^', true);
        } else if d.proto == Proto::Tcp && flags & SYN == 0 {
            history.push(MID_STREAM, true);
        }
        let streams =
            (reassembly_bytes > 0 && matches!(d.proto, Proto::Tcp | Proto::Udp)).then(|| {
                Box::new(Streams {
                    dir: [Stream::new(reassembly_bytes), Stream::new(reassembly_bytes)],
                    datagrams: [Vec::new(), Vec::new()],
                })
            });
        Flow {
            seq,
            proto: d.proto,
            orig,
            resp,
            first: ts,
            last: ts,
            dir: [Activity::default(), Activity::default()],
            tcp: TcpTrack::default(),
            history,
            streams,
            tunnel: d.tunnel,
            interim_records: 0,
            timer_at: 0,
            app: None,
            guess: None,
            details: None,
            dissected: false,
            follow: false,
        }
    }

    /// The table's key of this flow.
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.proto, self.orig, self.resp)
    }

    /// Whether `key` is this flow's: `key() == *key`, without putting the ends in order
    /// (every packet's lookup compares at least one flow; inlined into the table's probe).
    #[inline]
    pub fn has_key(&self, key: &FlowKey) -> bool {
        let ends = |a: (IpAddr, u16), b: (IpAddr, u16)| match self.proto {
            Proto::Icmp | Proto::Icmpv6 => a.0 == key.lo.0 && b.0 == key.hi.0,
            Proto::Tcp | Proto::Udp => a == key.lo && b == key.hi,
        };
        self.proto == key.proto && (ends(self.orig, self.resp) || ends(self.resp, self.orig))
    }

    pub fn is_from_orig(&self, d: &Decoded<'_>) -> bool {
        (d.src, d.src_port) == self.orig && (d.dst, d.dst_port) == self.resp
            || (matches!(self.proto, Proto::Icmp | Proto::Icmpv6) && d.src == self.orig.0)
    }

    /// Whether packet `d` is this flow's ([`has_key`](Self::has_key) of its key), and then
    /// whether it came from the originator ([`is_from_orig`](Self::is_from_orig)): the
    /// table's probe answers both with one comparison of the ends.
    #[inline]
    pub fn side_of(&self, d: &Decoded<'_>) -> Option<bool> {
        if self.proto != d.proto {
            return None;
        }
        // ICMP: the addresses alone (the flow's "ports" are a type and its reply type).
        // Compared where they lie: copied out into pairs first, the packet's addresses
        // were read back wider than the decoder wrote them.
        let icmp = matches!(self.proto, Proto::Icmp | Proto::Icmpv6);
        let at =
            |ip: &IpAddr, port: u16, end: &(IpAddr, u16)| *ip == end.0 && (icmp || port == end.1);
        let (src, dst) = ((&d.src, d.src_port), (&d.dst, d.dst_port));
        if at(src.0, src.1, &self.orig) && at(dst.0, dst.1, &self.resp) {
            Some(true)
        } else if at(src.0, src.1, &self.resp) && at(dst.0, dst.1, &self.orig) {
            Some(false)
        } else {
            None
        }
    }

    /// When the next interim record is due: every `interval_ns` after the first packet.
    pub fn next_interim(&self, interval_ns: u64) -> Timestamp {
        let n = u64::from(self.interim_records) + 1;
        Timestamp(self.first.0.saturating_add(interval_ns.saturating_mul(n)))
    }

    pub fn duration_ns(&self) -> u64 {
        self.last.0.saturating_sub(self.first.0)
    }

    /// Whether this flow's TCP connection has finished: both FINs or a RST.
    pub fn is_closed(&self) -> bool {
        let f = self.tcp.flags;
        f[ORIG] & RST != 0 || f[RESP] & RST != 0 || (f[ORIG] & FIN != 0 && f[RESP] & FIN != 0)
    }

    pub fn observe(
        &mut self,
        d: &Decoded<'_>,
        ts: Timestamp,
        wire_len: u32,
        idle_ns: u64,
    ) -> Update {
        self.observe_from(self.is_from_orig(d), d, ts, wire_len, idle_ns)
    }

    /// [`observe`](Self::observe) a packet whose direction is known ([`Flow::side_of`]).
    pub fn observe_from(
        &mut self,
        from_orig: bool,
        d: &Decoded<'_>,
        ts: Timestamp,
        wire_len: u32,
        idle_ns: u64,
    ) -> Update {
        let side = if from_orig { ORIG } else { RESP };
        self.last = self.last.max(ts);
        let mut up = Update {
            from_orig,
            resumed: self.dir[side].observe(ts, d.payload_len, d.ip_len, wire_len, d.ttl, idle_ns),
            ..Update::default()
        };
        match d.tcp {
            Some(t) => self.observe_tcp(t, d, ts, side, &mut up),
            None => {
                if d.payload_len > 0 {
                    self.history.push(b'd', from_orig);
                    up.follow = self.follow;
                    if let Some(s) = self.streams.as_mut()
                        && s.datagrams[side].len() < MAX_DATAGRAMS
                    {
                        s.datagrams[side].push(d.payload.to_vec());
                        up.new_bytes = true;
                    }
                }
            }
        }
        if self.proto == Proto::Tcp && d.payload_len > 0 && self.tcp.orig_second_flight().is_none()
        {
            if side == ORIG && self.dir[RESP].first_data().is_some() {
                self.tcp.mark(SECOND_FLIGHT_TIME, ts);
            } else if let Some(first) = self.dir[side].first_data() {
                self.tcp.extend_flight(side, first, ts);
            }
        }
        up
    }

    fn observe_tcp(
        &mut self,
        t: crate::decode::Tcp,
        d: &Decoded<'_>,
        ts: Timestamp,
        side: usize,
        up: &mut Update,
    ) {
        let from_orig = side == ORIG;
        self.tcp.flags[side] |= t.flags;
        let syn = t.flags & SYN != 0;
        let ack = t.flags & ACK != 0;
        if syn && t.flags & FIN != 0 {
            self.history.push(b'q', from_orig);
        }
        if syn && !ack {
            self.history.push(b's', from_orig);
            if from_orig {
                self.tcp.mark(SYN_TIME, ts);
            }
        } else if syn && ack {
            self.history.push(b'h', from_orig);
            if !from_orig {
                self.tcp.mark(SYNACK_TIME, ts);
            }
        } else if ack && d.payload_len == 0 && t.flags & (FIN | RST) == 0 {
            self.history.push(b'a', from_orig);
        }
        if from_orig && ack && !syn && self.tcp.synack().is_some() {
            self.tcp.mark(ACK_TIME, ts);
        }
        if d.payload_len > 0 {
            self.history.push(b'd', from_orig);
        }
        if t.flags & FIN != 0 {
            self.history.push(b'f', from_orig);
        }
        if t.flags & RST != 0 {
            self.history.push(b'r', from_orig);
        }
        if t.window == 0 && t.flags & (SYN | FIN | RST) == 0 {
            self.history.push(b'w', from_orig);
        }
        // Retransmission: data that ends at or before what this side already sent.
        let end = t.seq.wrapping_add(d.payload_len);
        if d.payload_len > 0 {
            match self.tcp.seq_end(side) {
                Some(prev) if (end.wrapping_sub(prev) as i32) <= 0 => {
                    self.tcp.retransmissions[side] += 1;
                    self.history.push(b't', from_orig);
                }
                Some(prev) if (t.seq.wrapping_sub(prev) as i32) > 0 => {
                    self.tcp.missed_bytes += t.seq.wrapping_sub(prev) as u64;
                    self.history.push(b'g', from_orig);
                    self.tcp.set_seq_end(side, end);
                }
                _ => self.tcp.set_seq_end(side, end),
            }
        } else if syn {
            self.tcp.set_seq_end(side, t.seq.wrapping_add(1));
        }
        if let Some(s) = self.streams.as_mut() {
            let stream = &mut s.dir[side];
            if syn {
                stream.start(t.seq);
            } else if d.payload_len > 0 {
                let added = stream.add(t.seq, d.payload, d.payload_len);
                up.new_bytes = matches!(added, Segment::Appended | Segment::Lent);
            }
        }
    }

    /// Zeek's conn_state, from the flags each side sent.
    pub fn conn_state(&self) -> &'static str {
        let pkts_resp = self.dir[RESP].pkts;
        if self.proto != Proto::Tcp {
            return if pkts_resp == 0 { "S0" } else { "SF" };
        }
        let [o, r] = self.tcp.flags;
        let syn_o = self.tcp.syn().is_some();
        let synack_r = self.tcp.synack().is_some();
        match (syn_o, synack_r) {
            (true, true) => {
                if o & RST != 0 {
                    "RSTO"
                } else if r & RST != 0 {
                    "RSTR"
                } else if o & FIN != 0 && r & FIN != 0 {
                    "SF"
                } else if o & FIN != 0 {
                    "S2"
                } else if r & FIN != 0 {
                    "S3"
                } else {
                    "S1"
                }
            }
            (true, false) => {
                if r & RST != 0 {
                    "REJ"
                } else if o & RST != 0 {
                    "RSTOS0"
                } else if o & FIN != 0 {
                    "SH"
                } else {
                    "S0"
                }
            }
            (false, true) => {
                if r & RST != 0 {
                    "RSTRH"
                } else if r & FIN != 0 {
                    "SHR"
                } else {
                    "OTH"
                }
            }
            (false, false) => "OTH",
        }
    }
}

/// A TCP segment between 192.0.2.1:`client_port` and 198.51.100.7:`server_port`, for the
/// flow and table tests.
#[cfg(test)]
pub(crate) fn segment(
    client_port: u16,
    server_port: u16,
    from_client: bool,
    flags: u8,
    seq: u32,
    payload: &[u8],
) -> Decoded<'_> {
    let c = IpAddr::from([192, 0, 2, 1]);
    let s = IpAddr::from([198, 51, 100, 7]);
    let (src, dst, src_port, dst_port) = if from_client {
        (c, s, client_port, server_port)
    } else {
        (s, c, server_port, client_port)
    };
    Decoded {
        src,
        dst,
        proto: Proto::Tcp,
        src_port,
        dst_port,
        tcp: Some(crate::decode::Tcp {
            flags,
            seq,
            ack: 0,
            window: 1000,
            ts: None,
        }),
        payload,
        payload_len: payload.len() as u32,
        ip_len: 40 + payload.len() as u32,
        ttl: 64,
        tunnel: None,
        reassembled: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::PSH;

    fn seg(from_client: bool, flags: u8, seq: u32, payload: &[u8]) -> Decoded<'_> {
        segment(50000, 22, from_client, flags, seq, payload)
    }

    fn ms(m: u64) -> Timestamp {
        Timestamp(m * 1_000_000)
    }

    #[test]
    fn handshake_rtts_history_and_state() {
        let syn = seg(true, SYN, 100, b"");
        let mut f = Flow::new(1, &syn, ms(0), 1024);
        let idle = 500_000_000;
        // As the flow stage does when a packet does not settle its flow.
        let observe = |f: &mut Flow, d: &Decoded<'_>, ts, wire_len| {
            f.observe(d, ts, wire_len, idle);
            f.streams.as_deref_mut().unwrap().keep(d.payload);
        };
        observe(&mut f, &syn, ms(0), 54);
        observe(&mut f, &seg(false, SYN | ACK, 900, b""), ms(30), 54);
        observe(&mut f, &seg(true, ACK, 101, b""), ms(32), 54);
        observe(
            &mut f,
            &seg(true, ACK | PSH, 101, b"SSH-2.0-x\r\n"),
            ms(33),
            65,
        );
        observe(
            &mut f,
            &seg(true, ACK | PSH, 101, b"SSH-2.0-x\r\n"),
            ms(40),
            65,
        );
        observe(
            &mut f,
            &seg(false, ACK | PSH, 901, b"SSH-2.0-y\r\n"),
            ms(70),
            65,
        );
        observe(&mut f, &seg(true, ACK | PSH, 112, b"more"), ms(100), 58);
        observe(&mut f, &seg(true, FIN | ACK, 116, b""), ms(200), 54);
        assert!(!f.is_closed());
        observe(&mut f, &seg(false, FIN | ACK, 912, b""), ms(210), 54);
        assert!(f.is_closed());
        assert_eq!(f.tcp.rtt_resp_ns(), Some(30_000_000));
        assert_eq!(f.tcp.rtt_orig_ns(), Some(2_000_000));
        assert_eq!(f.history.as_str(), "ShADTdFf");
        assert_eq!(f.tcp.retransmissions, [1, 0]);
        assert_eq!(f.tcp.orig_second_flight(), Some(ms(100)));
        assert_eq!(f.conn_state(), "SF");
        let s = f.streams.as_ref().unwrap();
        assert_eq!(s.dir[ORIG].bytes(), b"SSH-2.0-x\r\nmore");
        assert_eq!(s.dir[RESP].bytes(), b"SSH-2.0-y\r\n");
    }

    #[test]
    fn synack_first_flips_direction() {
        let sa = seg(false, SYN | ACK, 900, b"");
        let f = Flow::new(1, &sa, ms(0), 0);
        assert_eq!(f.orig.1, 50000);
        assert_eq!(f.history.as_str(), "^");
    }

    /// A connection open before the capture: data first, no SYN. Its reassembly starts at
    /// the first segment seen, so the dissectors get its bytes.
    #[test]
    fn data_first_is_picked_up_mid_stream() {
        let data = seg(false, ACK | PSH, 7000, b"\x17\x03\x03\x00\x02hi");
        let mut f = Flow::new(1, &data, ms(0), 4096);
        f.observe(&data, ms(0), 61, 1);
        assert_eq!(f.history.as_str(), "~D");
        assert!(f.history.picked_up_mid_stream());
        // Read where it lies in the packet: nothing was copied yet.
        let stream = &f.streams.as_ref().unwrap().dir[ORIG];
        assert!(stream.bytes().is_empty());
        assert_eq!(stream.view(data.payload).len(), 7);
        let syn = seg(true, SYN, 1, b"");
        assert!(!Flow::new(1, &syn, ms(0), 0).history.picked_up_mid_stream());
    }

    #[test]
    fn rejected_and_unanswered_states() {
        let syn = seg(true, SYN, 1, b"");
        let mut f = Flow::new(1, &syn, ms(0), 0);
        f.observe(&syn, ms(0), 54, 1);
        assert_eq!(f.conn_state(), "S0");
        f.observe(&seg(false, RST | ACK, 0, b""), ms(1), 54, 1);
        assert_eq!(f.conn_state(), "REJ");
    }

    /// Every tracked flow costs this much (boxed in the table); it is a memory budget.
    /// 384 is an allocator size class (mimalloc's, and a glibc chunk with its header): one
    /// byte more and a flow takes 448.
    #[test]
    fn a_flow_fits_its_budget() {
        // (The budget is the allocator's: mimalloc's 384 class, and glibc's 384-byte chunk
        // for 376 bytes and its 8-byte header.)
        let size = std::mem::size_of::<Flow>();
        assert!(size <= 376, "Flow is {size} bytes");
    }

    /// The lines of [`Flow`]'s layout: what a packet of a known flow touches sits in few of
    /// them (the box starts on a line: mimalloc's 384-byte blocks are 128-byte aligned).
    #[test]
    fn a_packet_touches_few_lines() {
        use std::mem::offset_of;
        let line = |offset: usize| offset / 64;
        let in_line = |n: usize, from: usize, to: usize| line(from) == n && line(to - 1) == n;
        // The probe and the per-packet flags and counts.
        assert!(in_line(
            0,
            offset_of!(Flow, seq),
            offset_of!(Flow, interim_records) + 4
        ));
        // Each direction: its ACK counters in one line, its data counters in one line.
        let dir = |side: usize| offset_of!(Flow, dir) + side * size_of::<Activity>();
        let acks = offset_of!(Activity, min_ttl) + 1;
        let data = offset_of!(Activity, active_ns) + 8;
        assert!(acks <= 32 && offset_of!(Activity, bytes) == 32 && data == 64);
        assert!(in_line(1, dir(ORIG), dir(ORIG) + data));
        assert!(in_line(2, dir(RESP), dir(RESP) + acks));
        assert!(in_line(3, dir(RESP) + 32, dir(RESP) + data));
        // A segment's state: the wheel's slot, reassembly, history, TCP sequence and flags.
        let tcp = offset_of!(Flow, tcp);
        assert!(in_line(
            4,
            offset_of!(Flow, timer_at),
            tcp + offset_of!(TcpTrack, seen) + 1
        ));
        assert!(offset_of!(Flow, first) < tcp && offset_of!(Flow, history) < tcp);
    }

    /// The table finds a flow by the key it computes from the flow itself: it must be the
    /// key of the flow's packets, ICMP included (whose ports are type and code).
    #[test]
    fn a_flow_has_the_key_of_its_packets() {
        let syn = seg(true, SYN, 1, b"");
        assert_eq!(Flow::new(1, &syn, ms(0), 0).key(), FlowKey::of(&syn));
        let echo = Decoded {
            proto: Proto::Icmp,
            src_port: 8,
            dst_port: 0,
            tcp: None,
            ..seg(true, 0, 0, b"")
        };
        let reply = Decoded {
            src: echo.dst,
            dst: echo.src,
            src_port: 0,
            ..echo
        };
        let flow = Flow::new(1, &echo, ms(0), 0);
        assert_eq!(flow.key(), FlowKey::of(&echo));
        assert_eq!(flow.key(), FlowKey::of(&reply));
        assert!(flow.has_key(&FlowKey::of(&echo)) && flow.has_key(&FlowKey::of(&reply)));
        let tcp = Flow::new(1, &syn, ms(0), 0);
        assert!(tcp.has_key(&FlowKey::of(&syn)));
        assert!(tcp.has_key(&FlowKey::of(&seg(false, ACK, 1, b""))));
        assert!(!tcp.has_key(&FlowKey::of(&echo)));
        let other_port = Decoded {
            dst_port: 23,
            ..syn
        };
        assert!(!tcp.has_key(&FlowKey::of(&other_port)));
        // The table's probe: the same answer, and the side the packet came from.
        let from_server = seg(false, ACK, 1, b"");
        assert_eq!(flow.side_of(&echo), Some(true));
        assert_eq!(flow.side_of(&reply), Some(false));
        assert_eq!(tcp.side_of(&syn), Some(true));
        assert_eq!(tcp.side_of(&from_server), Some(false));
        assert_eq!(tcp.side_of(&echo), None);
        assert_eq!(tcp.side_of(&other_port), None);
        for d in [echo, reply] {
            assert_eq!(flow.side_of(&d), Some(flow.is_from_orig(&d)));
        }
        for d in [syn, from_server] {
            assert_eq!(tcp.side_of(&d), Some(tcp.is_from_orig(&d)));
        }
    }

    /// Every letter of both sides, each twice: all of them once, in order, none lost.
    #[test]
    fn the_history_holds_every_letter() {
        let mut h = History::default();
        h.push(b'^', true);
        for from_orig in [true, false, true, false] {
            for l in *b"qshadfrwtg" {
                h.push(l, from_orig);
            }
        }
        assert_eq!(h.as_str(), "^QSHADFRWTGqshadfrwtg");
    }

    /// Addresses at the edges of both families, for the ordering tests.
    const EDGES: [&str; 7] = [
        "0.0.0.0",
        "10.0.0.1",
        "10.0.0.2",
        "255.255.255.255",
        "::",
        "::1",
        "2001:db8::1",
    ];

    #[test]
    fn endpoints_order_as_their_tuples_do() {
        let mut endpoints = Vec::new();
        for ip in EDGES {
            for port in [0, 80, 65535] {
                endpoints.push((ip.parse::<IpAddr>().unwrap(), port));
            }
        }
        for &a in &endpoints {
            for &b in &endpoints {
                assert_eq!(
                    endpoint_order(a).cmp(&endpoint_order(b)),
                    a.cmp(&b),
                    "{a:?} {b:?}"
                );
            }
        }
    }

    /// The detectors' maps keyed by flow are read in key order: the integer comparison
    /// must order keys as their fields' tuple does, IPv4 and IPv6, every protocol.
    #[test]
    fn keys_order_as_their_tuples_do() {
        let mut keys = Vec::new();
        for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Icmpv6] {
            for a in EDGES {
                for b in EDGES {
                    for (pa, pb) in [(0, 80), (80, 0), (65535, 1), (7, 7)] {
                        let a = (a.parse::<IpAddr>().unwrap(), pa);
                        let b = (b.parse::<IpAddr>().unwrap(), pb);
                        keys.push(FlowKey::new(proto, a, b));
                        // Mixed families, as no packet has, still order as tuples.
                        keys.push(FlowKey {
                            proto,
                            lo: a,
                            hi: b,
                        });
                    }
                }
            }
        }
        for x in &keys {
            for y in &keys {
                let tuple = (x.proto, x.lo, x.hi).cmp(&(y.proto, y.lo, y.hi));
                assert_eq!(x.cmp(y), tuple, "{x:?} {y:?}");
                assert_eq!(x == y, tuple.is_eq());
            }
        }
    }

    #[test]
    fn key_is_direction_free() {
        let a = seg(true, SYN, 1, b"");
        let b = seg(false, ACK, 1, b"");
        assert_eq!(FlowKey::of(&a), FlowKey::of(&b));
    }
}
