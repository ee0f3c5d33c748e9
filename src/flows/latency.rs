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
//! The outside leg (sensor → the TCP peer → sensor) is measured as tcptrace does: the
//! host's latest data segment against the peer's ACK of exactly its end. Its floor is the
//! interactive-SSH measurement, and beside a screen floor it tells relay from operator: a
//! floor far above the leg means the TCP peer is not where the person is.
//!
//! State lives in a side table per partition, only for inbound TCP sessions to an inside
//! host (dropped once identified as something else), bounded with counted evictions.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::app::App;
use crate::decode::{ACK, Decoded, Proto, SYN};
use crate::flows::{Flow, FlowKey};
use crate::observation::Observation;
use crate::timestamp::Timestamp;

/// Sessions followed at once per partition; past it the one seen longest ago goes.
pub const MAX_SESSIONS: usize = 1024;
/// Setup turns of an RDP connection that count as answers: X.224 confirm → ClientHello and
/// the host's TLS flight → the viewer's next flight.
const RDP_SETUP_TURNS: u32 = 2;
/// TLS record sizes of RDP frame acknowledgements (REFERENCE-2 §4: EGFX 66/73 B, TS_FRAME
/// ACKNOWLEDGE 58/65 B under TLS 1.3/1.2).
const RDP_FRAME_ACK_RECORDS: [usize; 4] = [58, 65, 66, 73];

/// One followed session.
struct Session {
    /// The outside peer (viewer, relay or ssh client).
    viewer: (IpAddr, u16),
    app: Option<App>,
    last: Timestamp,
    /// When the host's latest data ended, while the viewer has not answered it.
    pending: Option<Timestamp>,
    /// The host's latest data segment: its end sequence number and time, for data → ACK.
    unacked: Option<(u32, Timestamp)>,
    /// Viewer data segments answering host data so far (the RDP setup turns).
    turns: u32,
    floor_ns: Option<u64>,
    exchanges: u32,
    leg_ns: Option<u64>,
    leg_samples: u32,
}

impl Session {
    fn new(viewer: (IpAddr, u16), ts: Timestamp) -> Session {
        Session {
            viewer,
            app: None,
            last: ts,
            pending: None,
            unacked: None,
            turns: 0,
            floor_ns: None,
            exchanges: 0,
            leg_ns: None,
            leg_samples: 0,
        }
    }
}

/// The latency side table of one partition.
#[derive(Default)]
pub struct Latency {
    sessions: BTreeMap<FlowKey, Session>,
    evicted: u64,
}

impl Latency {
    /// Sessions dropped at [`MAX_SESSIONS`].
    pub fn evictions(&self) -> (&'static str, u64) {
        ("latency_sessions", self.evicted)
    }

    /// One TCP packet; `inside` says which addresses are ours.
    pub fn packet(&mut self, ts: Timestamp, d: &Decoded<'_>, inside: impl Fn(IpAddr) -> bool) {
        let Some(tcp) = d.tcp.as_ref().filter(|_| d.proto == Proto::Tcp) else {
            return;
        };
        let key = FlowKey::of(d);
        if !self.sessions.contains_key(&key) {
            // An outside peer opening a connection to an inside host.
            if tcp.flags & (SYN | ACK) != SYN || inside(d.src) || !inside(d.dst) {
                return;
            }
            self.evicted += crate::bounded::make_room(&mut self.sessions, MAX_SESSIONS, |s| s.last);
            self.sessions
                .insert(key, Session::new((d.src, d.src_port), ts));
            return;
        }
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        s.last = ts;
        let from_viewer = (d.src, d.src_port) == s.viewer;
        if !from_viewer {
            if d.payload_len > 0 {
                s.pending = Some(ts);
                let end = tcp.seq.wrapping_add(d.payload_len);
                // A segment at or below the newest end is a retransmission (Karn): no sample.
                s.unacked = match s.unacked {
                    Some((prev, _)) if end.wrapping_sub(prev) as i32 <= 0 => None,
                    _ => Some((end, ts)),
                };
            }
            return;
        }
        if tcp.flags & ACK != 0
            && let Some((end, sent)) = s.unacked
            && tcp.ack == end
        {
            let rtt = ts.since(sent).as_nanos() as u64;
            s.leg_ns = Some(s.leg_ns.map_or(rtt, |m| m.min(rtt)));
            s.leg_samples = s.leg_samples.saturating_add(1);
            s.unacked = None;
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
            let rtt = ts.since(since).as_nanos() as u64;
            s.floor_ns = Some(s.floor_ns.map_or(rtt, |m| m.min(rtt)));
            s.exchanges = s.exchanges.saturating_add(1);
            s.pending = None;
        }
    }

    /// The session's flow got its label: only remote-desktop and interactive sessions stay.
    /// One whose SYN was not seen (the sensor started during it) is followed from here when
    /// an outside originator reaches an inside responder.
    pub fn identified(&mut self, key: &FlowKey, flow: &Flow, inside: impl Fn(IpAddr) -> bool) {
        if !matches!(flow.app, Some(App::Vnc | App::Rdp | App::Ssh)) {
            self.sessions.remove(key);
            return;
        }
        if !self.sessions.contains_key(key) {
            if flow.proto != Proto::Tcp || inside(flow.orig.0) || !inside(flow.resp.0) {
                return;
            }
            self.evicted += crate::bounded::make_room(&mut self.sessions, MAX_SESSIONS, |s| s.last);
            self.sessions
                .insert(*key, Session::new(flow.orig, flow.last));
        }
        if let Some(s) = self.sessions.get_mut(key) {
            s.app = flow.app;
        }
    }

    /// `flow` ended: its session's latency floor, if it has one, for the flow record and
    /// the account stage.
    pub fn ended(&mut self, flow: &Flow, ts: Timestamp) -> Option<Observation> {
        let s = self.sessions.remove(&flow.key())?;
        let app = s.app?;
        let leg_ms = s.leg_ns.map(ms);
        let (floor_ms, exchanges) = match (app, s.floor_ns) {
            (App::Ssh, _) => (leg_ms?, s.leg_samples),
            (_, Some(f)) => (ms(f), s.exchanges),
            _ => return None,
        };
        let relay = leg_ms.is_some_and(|leg| is_relayed(floor_ms, leg));
        Some(Observation::LatencyFloor {
            ts,
            host: flow.resp.0,
            viewer: s.viewer.0,
            app,
            floor_ms,
            exchanges,
            outside_leg_ms: leg_ms,
            relay,
            flow: crate::detect::remote_desktop::flow_ref(flow),
        })
    }
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
    fn inside(ip: IpAddr) -> bool {
        ip == IpAddr::from([198, 51, 100, 7])
    }

    fn labelled(first: &Decoded<'_>, app: App) -> Flow {
        let mut flow = Flow::new(0, first, Timestamp(0), 0);
        flow.app = Some(app);
        flow
    }

    /// A session whose SYN was before the sensor started is followed from its label on;
    /// one an inside host opened is not.
    #[test]
    fn sessions_are_picked_up_at_their_label() {
        let mut l = Latency::default();
        let midway = segment(40001, 22, true, ACK | PSH, 7, b"x");
        l.identified(&FlowKey::of(&midway), &labelled(&midway, App::Ssh), inside);
        assert_eq!(l.sessions.len(), 1);
        let outbound = segment(40002, 22, false, ACK | PSH, 7, b"x");
        l.identified(
            &FlowKey::of(&outbound),
            &labelled(&outbound, App::Ssh),
            inside,
        );
        assert_eq!(l.sessions.len(), 1);
    }

    /// A VNC session: the viewer's key events follow updates at once and are not answers;
    /// its update requests come one round trip (48 ms) after each update ends, and its ACK
    /// of the last update segment gives the leg.
    #[test]
    fn vnc_floor_counts_update_requests_only() {
        let mut l = Latency::default();
        let syn = segment(40000, 5900, true, SYN, 0, b"");
        l.packet(Timestamp(0), &syn, inside);
        let key = FlowKey::of(&syn);
        l.identified(&key, &labelled(&syn, App::Vnc), inside);
        let request = [3, 1, 0, 0, 0, 0, 4, 0, 3, 0];
        let key_event = [4, 1, 0, 0, 0, 0, 0, 0x61];
        for (i, start) in [1000, 2000].into_iter().enumerate() {
            let update = [0u8, 0, 0, 1];
            let seq = 100 + 4 * i as u32;
            let host = segment(40000, 5900, false, ACK | PSH, seq, &update);
            l.packet(Timestamp(start * MS), &host, inside);
            let early = segment(40000, 5900, true, ACK | PSH, 1, &key_event);
            l.packet(Timestamp((start + 1) * MS), &early, inside);
            let mut answer = segment(40000, 5900, true, ACK | PSH, 9, &request);
            answer.tcp.as_mut().unwrap().ack = seq + 4;
            l.packet(Timestamp((start + 48 + i as u64) * MS), &answer, inside);
        }
        match l.ended(&labelled(&syn, App::Vnc), Timestamp(3000 * MS)) {
            Some(Observation::LatencyFloor {
                floor_ms,
                exchanges,
                outside_leg_ms,
                relay,
                app,
                ..
            }) => {
                assert_eq!((floor_ms, exchanges, app), (48.0, 2, App::Vnc));
                assert_eq!((outside_leg_ms, relay), (Some(48.0), false));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Past [`MAX_SESSIONS`] the eighth seen longest ago goes, counted; a flow identified
    /// as something else leaves at once.
    #[test]
    fn the_side_table_is_bounded_and_counts_evictions() {
        let mut l = Latency::default();
        for port in 0..(MAX_SESSIONS as u16 + 76) {
            let syn = segment(10000 + port, 5900, true, SYN, 0, b"");
            l.packet(Timestamp(u64::from(port)), &syn, inside);
        }
        assert_eq!(l.evictions(), ("latency_sessions", MAX_SESSIONS as u64 / 8));
        let syn = segment(10000 + MAX_SESSIONS as u16, 5900, true, SYN, 0, b"");
        let before = l.sessions.len();
        l.identified(&FlowKey::of(&syn), &labelled(&syn, App::Http), inside);
        assert_eq!(l.sessions.len(), before - 1);
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
