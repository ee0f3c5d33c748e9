//! Observations: what the flow stage tells the account stage (DESIGN §7). They are the
//! account stage's only input from traffic, so one account's judgement is made in one
//! place however many flow workers — or sensors — saw its packets.
//!
//! Each observation has a packet-time `ts` and a stable `id` hashed from its content
//! without the sensor's name, so two sensors that see the same thing produce one
//! observation. They serialize as JSON for the scale-out stream.

use std::net::IpAddr;

use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::app::App;
use crate::event::{Event, FlowRef};
use crate::identity::SessionStatus;
use crate::timestamp::Timestamp;

/// One fact the flow stage saw, for the account stage.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Observation {
    /// RADIUS accounting on the wire (RFC 2866): who holds an inside address from `ts`,
    /// and from which public address (Calling-Station-Id) when it is one.
    Radius {
        ts: Timestamp,
        user: String,
        framed_ip: IpAddr,
        calling_station: Option<String>,
        status: SessionStatus,
    },
    /// An inside host started sending again after a pause: someone is at it. Sent once
    /// per host and hour of packet time, all the working-hours detector needs.
    Activity { ts: Timestamp, host: IpAddr },
    /// The TCP handshake RTT of a connection an outside client opened toward us: one
    /// sample of the path to that client, for RTT against distance.
    HandshakeRtt {
        ts: Timestamp,
        client: IpAddr,
        rtt_ns: u64,
        flow: FlowRef,
    },
    /// The round trip from the sensor to the person at an inbound remote-desktop or
    /// interactive session on `host` (`flows::latency`), sent when the session ends: the
    /// floor over `exchanges` answers, the TCP leg to the outside peer `viewer`, and whether
    /// the floor is far above that leg (`relay`: the peer forwards for someone farther).
    LatencyFloor {
        ts: Timestamp,
        host: IpAddr,
        viewer: IpAddr,
        app: App,
        floor_ms: f64,
        exchanges: u32,
        outside_leg_ms: Option<f64>,
        relay: bool,
        flow: FlowRef,
    },
    /// A finding of a flow detector (its account is named by the account stage).
    Finding { event: Box<Event> },
}

impl Observation {
    pub fn ts(&self) -> Timestamp {
        match self {
            Observation::Radius { ts, .. }
            | Observation::Activity { ts, .. }
            | Observation::HandshakeRtt { ts, .. }
            | Observation::LatencyFloor { ts, .. } => *ts,
            Observation::Finding { event } => event.ts,
        }
    }

    /// The stable id: a hash of the content, without the sensor's name.
    pub fn id(&self) -> String {
        let mut h = Sha1::new();
        match self {
            // A finding's own identity is its sealed id, plus its time: one finding
            // raised again later is another observation.
            Observation::Finding { event } => {
                h.update(b"finding\0");
                h.update(event.ts.as_nanos().to_be_bytes());
                h.update(&event.key);
                h.update([0]);
                h.update(event.kind.as_str());
                h.update([0]);
                h.update(event.reason);
                h.update([0]);
                if let Some(host) = event.host {
                    h.update(host.to_string());
                }
                if let Some(f) = &event.flow {
                    h.update(format!(
                        "{} {} {} {} {}",
                        f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port
                    ));
                }
            }
            other => {
                // serde_json writes fields in declaration order: the same content gives
                // the same bytes.
                h.update(serde_json::to_vec(other).unwrap_or_default());
            }
        }
        h.finalize()[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
