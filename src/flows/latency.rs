//! Operator latency: how far the person at a remote-desktop or interactive session is from
//! the sensor, measured inside the session (REFERENCE-2 §3, §4).
//!
//! A viewer answers some of the host's messages as soon as they arrive: VNC's incremental
//! FramebufferUpdateRequest after each update, RDP's frame acknowledgement, and during any
//! connection's setup the viewer's next message after the host's (X.224 confirm → TLS
//! ClientHello, the host's TLS flight → the viewer's). The least "host data ends → that
//! answer" over a session is the round trip from the sensor to the viewer's screen, through
//! any relay. Keystrokes and pointer moves come at any moment, so only answers count: a
//! naive "update → next viewer packet" falls to nearly zero.
//!
//! The outside leg (sensor → the TCP peer → sensor) is measured passively from two sources,
//! both taken from the host's data segments and the peer's answers to them:
//! - data → ACK, as tcptrace does: the host's latest data segment against the peer's ACK of
//!   exactly its end (a retransmitted segment gives no sample, Karn);
//! - the TCP timestamp echo, as pping does: each TSval the host first sends on a data
//!   segment, against the peer's segment whose TSecr echoes it. It also times the
//!   ACK of an earlier segment that comes after the host sent more, where data → ACK (which
//!   waits for the latest end) has none; hosts that send no timestamp option (Windows)
//!   leave it empty.
//!
//! A delayed ACK inflates a sample of either source by the peer's timer, never shrinks it:
//! the floor over many samples is the leg. It is the interactive-SSH measurement, and
//! beside a screen floor it tells relay from operator: a floor far above the leg means the
//! TCP peer is not where the person is. For `rtt_distance`, the leg's floor is one more
//! RTT to the outside client (`SessionRtt`), from inside one long connection.
//!
//! A floor is *stable* once [`STABLE_SAMPLES`] samples were taken and the last
//! [`STABLE_HELD`] of them did not lower it: then it is sent at once, at the time of the
//! packet that gave the sample (the same moment for every worker count and in live
//! capture), not at the session's end; a session labelled only later sends it at its first
//! sample after the label.
//! Each session sends its leg (`SessionRtt`) once, when stable, and its operator floor
//! (`LatencyFloor`) once, when stable or else when it ends; its flow record carries the
//! floor at the end.
//!
//! State lives in a side table per partition, only for TCP sessions an outside peer opens to
//! an inside host or a concentrator, kept past their label when they are remote-desktop or interactive sessions, VPN
//! tunnels, or reach a concentrator; bounded with counted evictions. Every TCP packet of a
//! flow that has a session looks it up, so the table is a hash map by the flow's sequence
//! number; nothing is read from it in hash order. The flow says whether it has one
//! ([`TcpTrack::latency_session`]): most packets of a mix with sessions are of flows
//! without.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::app::App;
use crate::config::NetworkConfig;
use crate::decode::{ACK, Decoded, FIN, Proto, SYN, Tcp};
use crate::event::FlowRef;
#[cfg(doc)]
use crate::flows::flow::TcpTrack;
use crate::flows::record::FlowRecord;
use crate::flows::{Flow, FlowKey};
use crate::observation::Observation;
use crate::timestamp::Timestamp;

/// Sessions followed at once per partition; past it the one seen longest ago goes.
pub const MAX_SESSIONS: usize = 1024;
/// Samples before a floor may be stable.
pub const STABLE_SAMPLES: u32 = 16;
/// Samples in a row that must not lower a floor for it to be stable.
pub const STABLE_HELD: u32 = 8;
/// TSvals of the host awaiting their echo per session. Past it the oldest is forgotten: a
/// sampling choice, like ePPing's one timestamp per flow, since the newer ones are timed.
const TSVALS: usize = 4;
/// Setup turns of an RDP connection that count as answers: X.224 confirm → ClientHello and
/// the host's TLS flight → the viewer's next flight. The lockstep turns that follow (MCS
/// attach, channel joins, Demand Active → Confirm Active) are not: FreeRDP 2 sends each on
/// a 100 ms beat, not when the host's message arrives (README, Operator latency).
const RDP_SETUP_TURNS: u32 = 2;
/// TLS record sizes of RDP frame acknowledgements (REFERENCE-2 §4: EGFX 66/73 B, TS_FRAME
/// ACKNOWLEDGE 58/65 B under TLS 1.3/1.2).
const RDP_FRAME_ACK_RECORDS: [usize; 4] = [58, 65, 66, 73];

/// The least of a series of samples, how many there were, and how many in a row since it
/// last fell.
#[derive(Clone, Copy, Debug, Default)]
struct Floor {
    ns: Option<u64>,
    samples: u32,
    held: u32,
}

impl Floor {
    fn add(&mut self, ns: u64) {
        self.samples = self.samples.saturating_add(1);
        if self.ns.is_none_or(|m| ns < m) {
            self.ns = Some(ns);
            self.held = 0;
        } else {
            self.held = self.held.saturating_add(1);
        }
    }

    fn stable(&self) -> bool {
        self.samples >= STABLE_SAMPLES && self.held >= STABLE_HELD
    }
}

/// Passive RTT of the outside leg.
#[derive(Default)]
struct Leg {
    /// The host's latest data segment: its end sequence number and time, for data → ACK.
    unacked: Option<(u32, Timestamp)>,
    /// The host's newer TSvals on data segments, each with the time first seen.
    tsvals: [Option<(u32, Timestamp)>; TSVALS],
    /// The newest TSval the host sent, and the slot the next one stored goes to.
    newest: Option<u32>,
    next: usize,
    data_ack: Floor,
    ts_echo: Floor,
    /// One sample per peer segment that answered: the lesser of the two sources.
    both: Floor,
}

impl Leg {
    /// A host segment; `end` when it carries data (or FIN) and ends there.
    fn host_segment(&mut self, ts: Timestamp, end: Option<u32>, tsval: Option<u32>) {
        if let Some(end) = end {
            // A segment at or below the newest end is a retransmission (Karn): no sample.
            self.unacked = match self.unacked {
                Some((prev, _)) if end.wrapping_sub(prev) as i32 <= 0 => None,
                _ => Some((end, ts)),
            };
        }
        // Only a TSval the host never sent before, on data: a pure ACK of the same tick
        // could be echoed before the data arrives, and read short.
        if let Some(val) = tsval.filter(|v| *v != 0)
            && self.newest.is_none_or(|n| (val.wrapping_sub(n) as i32) > 0)
        {
            self.newest = Some(val);
            if end.is_some() {
                self.tsvals[self.next] = Some((val, ts));
                self.next = (self.next + 1) % TSVALS;
            }
        }
    }

    /// A peer segment with ACK set; true when it gave a sample.
    fn peer_ack(&mut self, ts: Timestamp, ack: u32, tsecr: Option<u32>) -> bool {
        let mut best: Option<u64> = None;
        if let Some((end, sent)) = self.unacked
            && ack == end
        {
            let rtt = ts.since(sent).as_nanos() as u64;
            self.data_ack.add(rtt);
            best = Some(rtt);
            self.unacked = None;
        }
        if let Some(ecr) = tsecr.filter(|e| *e != 0)
            && let Some(slot) = self
                .tsvals
                .iter_mut()
                .find(|s| s.is_some_and(|(v, _)| v == ecr))
            && let Some((_, sent)) = slot.take()
        {
            let rtt = ts.since(sent).as_nanos() as u64;
            self.ts_echo.add(rtt);
            best = Some(best.map_or(rtt, |b| b.min(rtt)));
            // An echo answers every older TSval too: they can no longer give a sample.
            for s in &mut self.tsvals {
                if s.is_some_and(|(v, _)| (ecr.wrapping_sub(v) as i32) > 0) {
                    *s = None;
                }
            }
        }
        if let Some(rtt) = best {
            self.both.add(rtt);
        }
        best.is_some()
    }
}

/// One followed session.
struct Session {
    /// The outside peer (viewer, relay, ssh or VPN client): the connection's originator.
    viewer: (IpAddr, u16),
    /// The responder's end: the inside host (or the concentrator).
    host: (IpAddr, u16),
    app: Option<App>,
    /// Kept past its label.
    kept: bool,
    last: Timestamp,
    /// When the host's latest data ended, while the viewer has not answered it.
    pending: Option<Timestamp>,
    /// Viewer data segments answering host data so far (the RDP setup turns).
    turns: u32,
    screen: Floor,
    leg: Leg,
    /// The leg (`SessionRtt`) and the operator floor (`LatencyFloor`) were sent.
    leg_sent: bool,
    floor_sent: bool,
}

impl Session {
    fn new(viewer: (IpAddr, u16), host: (IpAddr, u16), ts: Timestamp) -> Session {
        Session {
            viewer,
            host,
            app: None,
            kept: false,
            last: ts,
            pending: None,
            turns: 0,
            screen: Floor::default(),
            leg: Leg::default(),
            leg_sent: false,
            floor_sent: false,
        }
    }

    fn flow(&self) -> FlowRef {
        FlowRef {
            proto: Proto::Tcp.as_str(),
            src_ip: self.viewer.0,
            src_port: self.viewer.1,
            dst_ip: self.host.0,
            dst_port: self.host.1,
        }
    }

    /// The operator floor and its answers: the screen's for VNC and RDP, the leg's for SSH.
    fn operator_floor(&self) -> Option<(u64, u32)> {
        match self.app? {
            App::Ssh => Some((self.leg.both.ns?, self.leg.both.samples)),
            App::Vnc | App::Rdp => Some((self.screen.ns?, self.screen.samples)),
            _ => None,
        }
    }

    fn operator_stable(&self) -> bool {
        match self.app {
            Some(App::Ssh) => self.leg.both.stable(),
            Some(App::Vnc | App::Rdp) => self.screen.stable(),
            _ => false,
        }
    }

    fn latency_floor(&self, ts: Timestamp) -> Option<Observation> {
        let app = self.app?;
        let (floor_ns, exchanges) = self.operator_floor()?;
        let floor_ms = ms(floor_ns);
        let leg_ms = self.leg.both.ns.map(ms);
        let relay = leg_ms.is_some_and(|leg| is_relayed(floor_ms, leg));
        Some(Observation::LatencyFloor {
            ts,
            host: self.host.0,
            viewer: self.viewer.0,
            app,
            floor_ms,
            exchanges,
            outside_leg_ms: leg_ms,
            relay,
            flow: self.flow(),
        })
    }

    fn session_rtt(&self, ts: Timestamp) -> Option<Observation> {
        Some(Observation::SessionRtt {
            ts,
            client: self.viewer.0,
            rtt_ns: self.leg.both.ns?,
            samples: self.leg.both.samples,
            data_ack_ns: self.leg.data_ack.ns,
            ts_echo_ns: self.leg.ts_echo.ns,
            flow: self.flow(),
        })
    }

    /// What became stable at `ts` and was not sent yet.
    fn send_stable(&mut self, ts: Timestamp, send: &mut impl FnMut(Observation)) {
        if !self.kept {
            return;
        }
        if !self.leg_sent && self.leg.both.stable() {
            self.leg_sent = true;
            self.session_rtt(ts).map(&mut *send);
        }
        if !self.floor_sent && self.operator_stable() {
            self.floor_sent = true;
            self.latency_floor(ts).map(&mut *send);
        }
    }
}

/// The outside leg's passive RTT over a whole session, for its flow record: the floor over
/// `samples` answers, and the floor and samples of each source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutsideRtt {
    pub floor_ms: f64,
    pub samples: u32,
    pub data_ack_ms: Option<f64>,
    pub data_ack_samples: u32,
    pub ts_echo_ms: Option<f64>,
    pub ts_echo_samples: u32,
}

/// The latency side table of one partition.
#[derive(Default)]
pub struct Latency {
    /// By the flow's sequence number.
    sessions: HashMap<u64, Session, ahash::RandomState>,
    evicted: u64,
}

impl Latency {
    /// Sessions dropped at [`MAX_SESSIONS`].
    pub fn evictions(&self) -> (&'static str, u64) {
        ("latency_sessions", self.evicted)
    }

    /// Room for one more session: at [`MAX_SESSIONS`] the eighth seen longest ago goes, ties
    /// in key order ([`crate::bounded::oldest`]).
    fn make_room(&mut self) {
        if self.sessions.len() < MAX_SESSIONS {
            return;
        }
        let seen = self.sessions.iter().map(|(seq, s)| {
            let key = FlowKey::new(Proto::Tcp, s.viewer, s.host);
            (s.last, (key, *seq))
        });
        let gone = crate::bounded::oldest(seen.collect(), MAX_SESSIONS / 8);
        for (_, seq) in &gone {
            self.sessions.remove(seq);
        }
        self.evicted += gone.len() as u64;
    }

    /// One packet, of `flow`. A floor that became stable with it goes to `send`.
    ///
    /// Every packet comes here, so what it passes by is decided in line: not TCP; a flow
    /// without a session ([`TcpTrack::latency_session`]), unless a SYN opens one; a
    /// labelled flow that is not followed (its label ended its session) and opens none.
    #[inline]
    pub fn packet(
        &mut self,
        ts: Timestamp,
        d: &Decoded<'_>,
        flow: &mut Flow,
        network: &NetworkConfig,
        send: impl FnMut(Observation),
    ) {
        let Some(tcp) = d.tcp.as_ref().filter(|_| d.proto == Proto::Tcp) else {
            return;
        };
        let opening = tcp.flags & (SYN | ACK) == SYN;
        if !flow.tcp.latency_session() && !opening || flow.dissected && !followed(flow, network) {
            return;
        }
        self.session_packet(ts, d, tcp, flow, network, send);
    }

    /// A TCP packet of `flow`, which may have a session.
    fn session_packet(
        &mut self,
        ts: Timestamp,
        d: &Decoded<'_>,
        tcp: &Tcp,
        flow: &mut Flow,
        network: &NetworkConfig,
        mut send: impl FnMut(Observation),
    ) {
        let opening = tcp.flags & (SYN | ACK) == SYN;
        let Some(s) = self.sessions.get_mut(&flow.seq) else {
            // An outside peer opening a connection to an inside host or a concentrator.
            if !opening || !inbound(network, d.src, d.dst) {
                return;
            }
            self.make_room();
            self.sessions.insert(
                flow.seq,
                Session::new((d.src, d.src_port), (d.dst, d.dst_port), ts),
            );
            flow.tcp.set_latency_session(true);
            return;
        };
        s.last = ts;
        let from_viewer = (d.src, d.src_port) == s.viewer;
        if !from_viewer {
            let fin = u32::from(tcp.flags & FIN != 0);
            if d.payload_len > 0 {
                s.pending = Some(ts);
            }
            let len = d.payload_len + fin;
            let end = (len > 0).then(|| tcp.seq.wrapping_add(len));
            s.leg.host_segment(ts, end, tcp.ts.map(|(val, _)| val));
            return;
        }
        if tcp.flags & ACK != 0 && s.leg.peer_ack(ts, tcp.ack, tcp.ts.map(|(_, ecr)| ecr)) {
            s.send_stable(ts, &mut send);
        }
        if d.payload_len == 0 {
            return;
        }
        let Some(since) = s.pending else {
            return;
        };
        let answer = match s.app {
            Some(App::Vnc) => has_update_request(d.payload),
            Some(App::Rdp) => s.turns < RDP_SETUP_TURNS || is_frame_ack(d.payload),
            _ => false,
        };
        s.turns = s.turns.saturating_add(1);
        if answer {
            s.screen.add(ts.since(since).as_nanos() as u64);
            s.pending = None;
            s.send_stable(ts, &mut send);
        }
    }

    /// The session's flow got its label: remote-desktop and interactive sessions, VPN
    /// tunnels and sessions to a concentrator stay followed. One whose SYN was not seen (the
    /// sensor started during it) is followed from here when an outside originator reaches
    /// an inside responder or a concentrator.
    pub fn identified(&mut self, flow: &mut Flow, network: &NetworkConfig) {
        if !followed(flow, network) {
            self.sessions.remove(&flow.seq);
            flow.tcp.set_latency_session(false);
            return;
        }
        if !self.sessions.contains_key(&flow.seq) {
            if flow.proto != Proto::Tcp || !inbound(network, flow.orig.0, flow.resp.0) {
                return;
            }
            self.make_room();
            self.sessions
                .insert(flow.seq, Session::new(flow.orig, flow.resp, flow.last));
        }
        if let Some(s) = self.sessions.get_mut(&flow.seq) {
            s.app = flow.app;
            s.kept = true;
            flow.tcp.set_latency_session(true);
        }
    }

    /// `flow` ended: its operator floor, unless sent already, goes to `send`; the floors it
    /// returns go on its flow record.
    pub fn ended(
        &mut self,
        flow: &Flow,
        ts: Timestamp,
        mut send: impl FnMut(Observation),
    ) -> Floors {
        let Some(s) = self.sessions.remove(&flow.seq).filter(|s| s.kept) else {
            return Floors::default();
        };
        let outside_rtt = s.leg.both.ns.map(|floor| OutsideRtt {
            floor_ms: ms(floor),
            samples: s.leg.both.samples,
            data_ack_ms: s.leg.data_ack.ns.map(ms),
            data_ack_samples: s.leg.data_ack.samples,
            ts_echo_ms: s.leg.ts_echo.ns.map(ms),
            ts_echo_samples: s.leg.ts_echo.samples,
        });
        let Some((floor_ns, _)) = s.operator_floor() else {
            return Floors {
                outside_rtt,
                latency_floor_ms: None,
            };
        };
        if !s.floor_sent {
            s.latency_floor(ts).map(&mut send);
        }
        Floors {
            outside_rtt,
            latency_floor_ms: Some(ms(floor_ns)),
        }
    }
}

/// What a followed session's record carries at its end: the outside leg and the operator's
/// round trip.
#[derive(Clone, Debug, Default)]
pub struct Floors {
    pub outside_rtt: Option<OutsideRtt>,
    pub latency_floor_ms: Option<f64>,
}

impl Floors {
    pub fn is_empty(&self) -> bool {
        self.outside_rtt.is_none() && self.latency_floor_ms.is_none()
    }

    /// Writes them on the session's record.
    pub fn write(self, record: &mut FlowRecord) {
        record.outside_rtt = self.outside_rtt;
        record.latency_floor_ms = self.latency_floor_ms;
    }
}

/// Whether a labelled flow's session stays followed: a remote-desktop or interactive
/// session, a VPN tunnel, or a session to a concentrator.
fn followed(flow: &Flow, network: &NetworkConfig) -> bool {
    let operator = matches!(flow.app, Some(App::Vnc | App::Rdp | App::Ssh));
    let tunnel = matches!(
        flow.app,
        Some(
            App::Openvpn
                | App::Anyconnect
                | App::FortinetSslvpn
                | App::Globalprotect
                | App::PulseSecure
                | App::Softether
        )
    );
    operator || tunnel || network.concentrators.contains(&flow.resp.0)
}

/// An outside peer reaching an inside host or a concentrator.
fn inbound(network: &NetworkConfig, src: IpAddr, dst: IpAddr) -> bool {
    !network.is_inside(src) && (network.is_inside(dst) || network.concentrators.contains(&dst))
}

/// A floor this far above the TCP leg is not the TCP peer's: the peer relays for someone
/// farther away (more than 5 ms and a quarter of the floor).
pub fn is_relayed(floor_ms: f64, leg_ms: f64) -> bool {
    floor_ms - leg_ms > (floor_ms / 4.0).max(5.0)
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

/// Whether a viewer segment holds an incremental FramebufferUpdateRequest (RFC 6143
/// §7.5.3), reading the client messages it starts with; a relay may have joined it to a
/// key or pointer event.
fn has_update_request(mut bytes: &[u8]) -> bool {
    while let Some(&kind) = bytes.first() {
        let len = match kind {
            // SetPixelFormat, FramebufferUpdateRequest, KeyEvent, PointerEvent.
            0 => 20,
            3 => {
                if bytes.len() >= 10 && bytes[1] == 1 {
                    return true;
                }
                10
            }
            4 => 8,
            5 => 6,
            // SetEncodings: 4 bytes, then 4 per encoding.
            2 if bytes.len() >= 4 => 4 + 4 * u16::from_be_bytes([bytes[2], bytes[3]]) as usize,
            _ => return false,
        };
        bytes = bytes.get(len..).unwrap_or_default();
    }
    false
}

/// Whether a viewer segment is one TLS application-data record of a frame
/// acknowledgement's size.
fn is_frame_ack(bytes: &[u8]) -> bool {
    bytes.len() >= 5
        && bytes[0] == 23
        && 5 + u16::from_be_bytes([bytes[3], bytes[4]]) as usize == bytes.len()
        && RDP_FRAME_ACK_RECORDS.contains(&bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::PSH;
    use crate::flows::flow::segment;

    const MS: u64 = 1_000_000;

    /// The server end of `segment` (198.51.100.7) is the inside host.
    fn network() -> NetworkConfig {
        NetworkConfig {
            inside: vec!["198.51.100.7/32".parse().unwrap()].into(),
            ..NetworkConfig::default()
        }
    }

    /// The flow of `first`, not labelled yet; the client's port tells test flows apart.
    fn fresh(first: &Decoded<'_>) -> Flow {
        let client = if first.src_port >= 10000 {
            first.src_port
        } else {
            first.dst_port
        };
        Flow::new(u64::from(client), first, Timestamp(0), 0)
    }

    fn labelled(first: &Decoded<'_>, app: App) -> Flow {
        let mut flow = fresh(first);
        flow.app = Some(app);
        flow.dissected = true;
        flow
    }

    /// A followed session of `app` opened by the outside client at time 0.
    fn opened(l: &mut Latency, port: u16, app: App) -> Flow {
        let syn = segment(40000, port, true, SYN, 0, b"");
        l.packet(Timestamp(0), &syn, &mut fresh(&syn), &network(), |_| {});
        let mut flow = labelled(&syn, app);
        l.identified(&mut flow, &network());
        assert!(flow.tcp.latency_session());
        flow
    }

    /// A segment of the session opened by [`opened`], with a timestamp option.
    fn stamped(
        port: u16,
        from_client: bool,
        seq: u32,
        ack: u32,
        ts: (u32, u32),
        payload: &[u8],
    ) -> Decoded<'_> {
        let mut d = segment(40000, port, from_client, ACK | PSH, seq, payload);
        let tcp = d.tcp.as_mut().unwrap();
        tcp.ack = ack;
        tcp.ts = Some(ts);
        d
    }

    /// A session whose SYN was before the sensor started is followed from its label on;
    /// one an inside host opened is not; one to a concentrator is.
    #[test]
    fn sessions_are_picked_up_at_their_label() {
        let mut l = Latency::default();
        let midway = segment(40001, 22, true, ACK | PSH, 7, b"x");
        l.identified(&mut labelled(&midway, App::Ssh), &network());
        assert_eq!(l.sessions.len(), 1);
        let outbound = segment(40002, 22, false, ACK | PSH, 7, b"x");
        l.identified(&mut labelled(&outbound, App::Ssh), &network());
        assert_eq!(l.sessions.len(), 1);
        let concentrator = NetworkConfig {
            inside: Default::default(),
            concentrators: vec![IpAddr::from([198, 51, 100, 7])],
            ..NetworkConfig::default()
        };
        let tls = segment(40003, 443, true, ACK | PSH, 7, b"x");
        l.identified(&mut labelled(&tls, App::Tls), &concentrator);
        assert_eq!(l.sessions.len(), 2);
    }

    /// A VNC session: the viewer's key events follow updates at once and are not answers;
    /// its update requests come one round trip (48 ms) after each update ends, and its ACK
    /// of the last update segment gives the leg. Too few answers to be stable: the floor is
    /// sent when the session ends.
    #[test]
    fn vnc_floor_counts_update_requests_only() {
        let mut l = Latency::default();
        let mut flow = opened(&mut l, 5900, App::Vnc);
        let request = [3, 1, 0, 0, 0, 0, 4, 0, 3, 0];
        let key_event = [4, 1, 0, 0, 0, 0, 0, 0x61];
        let mut sent = Vec::new();
        for (i, start) in [1000, 2000].into_iter().enumerate() {
            let update = [0u8, 0, 0, 1];
            let seq = 100 + 4 * i as u32;
            let host = segment(40000, 5900, false, ACK | PSH, seq, &update);
            l.packet(Timestamp(start * MS), &host, &mut flow, &network(), |o| {
                sent.push(o)
            });
            let early = segment(40000, 5900, true, ACK | PSH, 1, &key_event);
            l.packet(
                Timestamp((start + 1) * MS),
                &early,
                &mut flow,
                &network(),
                |o| sent.push(o),
            );
            let mut answer = segment(40000, 5900, true, ACK | PSH, 9, &request);
            answer.tcp.as_mut().unwrap().ack = seq + 4;
            let at = Timestamp((start + 48 + i as u64) * MS);
            l.packet(at, &answer, &mut flow, &network(), |o| sent.push(o));
        }
        assert!(sent.is_empty());
        let mut record = FlowRecord::new(&flow, None, false, None);
        l.ended(&flow, Timestamp(3000 * MS), |o| sent.push(o))
            .write(&mut record);
        assert_eq!(record.latency_floor_ms, Some(48.0));
        match &sent[..] {
            [
                Observation::LatencyFloor {
                    floor_ms,
                    exchanges,
                    outside_leg_ms,
                    relay,
                    app,
                    ts,
                    ..
                },
            ] => {
                assert_eq!((*floor_ms, *exchanges, *app), (48.0, 2, App::Vnc));
                assert_eq!((*outside_leg_ms, *relay), (Some(48.0), false));
                assert_eq!(*ts, Timestamp(3000 * MS));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The peer ACKs the first of two host segments after both left: data → ACK has no
    /// sample (the ACK is not the latest segment's end), the timestamp echo of the first
    /// segment's TSval has one. A TSval the host sent first on a pure ACK is not timed, even
    /// on data in the same tick: the peer may echo it before that data arrives.
    #[test]
    fn the_timestamp_echo_times_what_data_to_ack_cannot() {
        let mut l = Latency::default();
        let mut flow = opened(&mut l, 22, App::Ssh);
        let n = network();
        let packets = [
            (10_000, stamped(22, false, 100, 1, (500, 90), b"ab")),
            (11_000, stamped(22, false, 102, 1, (501, 90), b"cd")),
            // The ACK of the first segment only, echoing its TSval, 30 ms after it left.
            (40_000, stamped(22, true, 1, 102, (91, 500), b"")),
            (50_000, stamped(22, false, 104, 1, (502, 91), b"")),
            (50_500, stamped(22, false, 104, 1, (502, 91), b"ef")),
            // A keystroke sent before "ef" arrived, echoing the pure ACK's TSval.
            (80_000, stamped(22, true, 1, 104, (92, 502), b"k")),
        ];
        for (us, d) in &packets {
            l.packet(Timestamp(us * 1000), d, &mut flow, &n, |_| {});
        }
        let s = &l.sessions[&flow.seq];
        assert_eq!(
            (s.leg.ts_echo.ns, s.leg.ts_echo.samples),
            (Some(30 * MS), 1)
        );
        assert_eq!(s.leg.data_ack.samples, 0);
        assert_eq!((s.leg.both.ns, s.leg.both.samples), (Some(30 * MS), 1));
    }

    /// The leg's floor is sent the moment it is stable: at the 16th sample, the floor (50
    /// ms, reached at the third) having held over the last eight; once, as `SessionRtt`
    /// and (SSH) as `LatencyFloor`. The session's end sends nothing more, and its record
    /// gets the final floor.
    #[test]
    fn a_stable_floor_is_sent_during_the_session() {
        let mut l = Latency::default();
        let mut flow = opened(&mut l, 22, App::Ssh);
        let n = network();
        let mut sent = Vec::new();
        let mut at = Vec::new();
        for i in 1..=20u32 {
            let start = u64::from(i) * 1000;
            let rtt = if i == 3 {
                50
            } else {
                50 + u64::from(i % 5) + 1
            };
            let seq = 100 + 2 * i;
            let host = stamped(22, false, seq, 1, (1000 + i, 7), b"ab");
            l.packet(Timestamp(start * MS), &host, &mut flow, &n, |o| {
                sent.push(o)
            });
            let ack = stamped(22, true, 1, seq + 2, (7, 1000 + i), b"");
            l.packet(Timestamp((start + rtt) * MS), &ack, &mut flow, &n, |o| {
                at.push(i);
                sent.push(o)
            });
        }
        assert_eq!(at, [16, 16]);
        match &sent[..] {
            [
                Observation::SessionRtt {
                    ts,
                    client,
                    rtt_ns,
                    samples,
                    data_ack_ns,
                    ts_echo_ns,
                    flow: f,
                },
                Observation::LatencyFloor {
                    floor_ms,
                    exchanges,
                    ..
                },
            ] => {
                assert_eq!(*ts, Timestamp((16_000 + 52) * MS));
                assert_eq!(*client, IpAddr::from([192, 0, 2, 1]));
                assert_eq!((*rtt_ns, *samples), (50 * MS, 16));
                assert_eq!((*data_ack_ns, *ts_echo_ns), (Some(50 * MS), Some(50 * MS)));
                assert_eq!((f.src_port, f.dst_port), (40000, 22));
                assert_eq!((*floor_ms, *exchanges), (50.0, 16));
            }
            other => panic!("{other:?}"),
        }
        sent.clear();
        let mut record = FlowRecord::new(&flow, None, false, None);
        l.ended(&flow, Timestamp(30_000 * MS), |o| sent.push(o))
            .write(&mut record);
        assert!(sent.is_empty());
        assert_eq!(record.latency_floor_ms, Some(50.0));
        let leg = record.outside_rtt.unwrap();
        assert_eq!((leg.floor_ms, leg.samples), (50.0, 20));
        assert_eq!((leg.data_ack_ms, leg.ts_echo_ms), (Some(50.0), Some(50.0)));
        assert_eq!((leg.data_ack_samples, leg.ts_echo_samples), (20, 20));
    }

    /// Past [`MAX_SESSIONS`] the eighth seen longest ago goes, counted; a flow identified
    /// as something else leaves at once.
    #[test]
    fn the_side_table_is_bounded_and_counts_evictions() {
        let mut l = Latency::default();
        for port in 0..(MAX_SESSIONS as u16 + 76) {
            let syn = segment(10000 + port, 5900, true, SYN, 0, b"");
            l.packet(
                Timestamp(u64::from(port)),
                &syn,
                &mut fresh(&syn),
                &network(),
                |_| {},
            );
        }
        assert_eq!(l.evictions(), ("latency_sessions", MAX_SESSIONS as u64 / 8));
        let syn = segment(10000 + MAX_SESSIONS as u16, 5900, true, SYN, 0, b"");
        let before = l.sessions.len();
        l.identified(&mut labelled(&syn, App::Http), &network());
        assert_eq!(l.sessions.len(), before - 1);
    }

    /// A flow labelled as nothing followed leaves at its label, and none of its packets, a
    /// late SYN either, opens its session again.
    #[test]
    fn a_flow_labelled_otherwise_is_not_followed_again() {
        let mut l = Latency::default();
        let n = network();
        let syn = segment(40000, 80, true, SYN, 0, b"");
        l.packet(Timestamp(0), &syn, &mut fresh(&syn), &n, |_| {});
        assert_eq!(l.sessions.len(), 1);
        let mut http = labelled(&syn, App::Http);
        l.identified(&mut http, &n);
        assert!(l.sessions.is_empty() && !http.tcp.latency_session());
        l.packet(Timestamp(MS), &syn, &mut http, &n, |_| {});
        assert!(l.sessions.is_empty());
    }

    #[test]
    fn update_requests_are_found_behind_input() {
        let request = [3, 1, 0, 0, 0, 0, 4, 0, 3, 0];
        assert!(has_update_request(&request));
        let mut joined = vec![5, 0, 0, 10, 0, 20];
        joined.extend_from_slice(&request);
        assert!(has_update_request(&joined));
        // A full (non-incremental) request is the viewer asking, not answering.
        assert!(!has_update_request(&[3, 0, 0, 0, 0, 0, 4, 0, 3, 0]));
        assert!(!has_update_request(&[4, 1, 0, 0, 0, 0, 0, 0x61]));
        assert!(!has_update_request(&[9, 9, 9]));
    }

    #[test]
    fn frame_acks_are_single_records_of_their_size() {
        let mut record = vec![23, 3, 3, 0, 61];
        record.resize(66, 0);
        assert!(is_frame_ack(&record));
        record.push(0);
        assert!(!is_frame_ack(&record));
        assert!(!is_frame_ack(&[23, 3, 3, 0, 22, 0]));
    }

    #[test]
    fn relays_are_floors_far_above_the_leg() {
        assert!(is_relayed(58.0, 4.1));
        assert!(!is_relayed(10.4, 10.2));
        assert!(!is_relayed(240.5, 240.2));
    }
}
