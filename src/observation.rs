//! Observations: what the flow stage tells the account stage (DESIGN §7). They are the
//! account stage's only input from traffic, so one account's judgement is made in one
//! place however many flow workers — or sensors — saw its packets.
//!
//! Each observation has a packet-time `ts` and a stable `id` hashed from its content
//! without the sensor's name, so two sensors that see the same thing produce one
//! observation. They serialize as JSON for the scale-out stream.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha1::{Digest, Sha1};

use crate::app::App;
use crate::event::{Event, FlowRef};
use crate::identity::{SessionEvent, SessionStatus};
use crate::timestamp::Timestamp;

/// One fact the flow stage saw, for the account stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The floor of passive RTT samples of the outside leg inside one TCP connection an
    /// outside client opened toward us (`flows::latency`): one RTT to `client` from a long
    /// session, for RTT against distance. Sent once, when the floor is stable, with the
    /// floors of its two sources (data → ACK, timestamp echo).
    SessionRtt {
        ts: Timestamp,
        client: IpAddr,
        rtt_ns: u64,
        samples: u32,
        data_ack_ns: Option<u64>,
        ts_echo_ns: Option<u64>,
        flow: FlowRef,
    },
    /// The round trip from the sensor to the person at an inbound remote-desktop or
    /// interactive session on `host` (`flows::latency`), sent once its floor is stable, or
    /// else when the session ends: the floor over `exchanges` answers, the TCP leg to the
    /// outside peer `viewer`, and whether the floor is far above that leg (`relay`: the
    /// peer forwards for someone farther).
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
    /// A record of the session feed (`--sessions`) the sensor read, so that `correlate`
    /// learns identity from the sensors; stamped with its own `ts`.
    Session(SessionEvent),
    /// A finding of a flow detector (its account is named by the account stage).
    Finding {
        #[serde(serialize_with = "finding_out", deserialize_with = "finding_in")]
        event: Box<Event>,
    },
}

/// A finding travels with its `key`, which the event's own JSON leaves out: the account
/// stage seals it again (naming its account), and the id must come out the same.
#[derive(Serialize)]
struct FindingOut<'a> {
    #[serde(flatten)]
    event: &'a Event,
    key: &'a str,
}

#[derive(Deserialize)]
struct FindingIn {
    #[serde(flatten)]
    event: Event,
    key: String,
}

fn finding_out<S: Serializer>(event: &Event, s: S) -> Result<S::Ok, S::Error> {
    FindingOut {
        event,
        key: &event.key,
    }
    .serialize(s)
}

fn finding_in<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Event>, D::Error> {
    let FindingIn { mut event, key } = FindingIn::deserialize(d)?;
    event.key = key;
    Ok(Box::new(event))
}

impl Observation {
    pub fn ts(&self) -> Timestamp {
        match self {
            Observation::Radius { ts, .. }
            | Observation::Activity { ts, .. }
            | Observation::HandshakeRtt { ts, .. }
            | Observation::SessionRtt { ts, .. }
            | Observation::LatencyFloor { ts, .. } => *ts,
            Observation::Session(s) => s.ts,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, Severity};

    #[test]
    fn observations_read_back_as_written() {
        let mut event = Event::new(
            Timestamp::from_secs(1_700_000_000),
            Kind::RemoteDesktop,
            "persistent_stream",
            Severity::Medium,
            "tier-1",
        );
        event.flow = Some(FlowRef {
            proto: "tcp",
            src_ip: "10.0.0.5".parse().unwrap(),
            src_port: 50000,
            dst_ip: "203.0.113.9".parse().unwrap(),
            dst_port: 3389,
        });
        event.seal();
        let all = [
            Observation::Radius {
                ts: Timestamp(1_700_000_000_123_456_000),
                user: "alice".into(),
                framed_ip: "10.0.0.5".parse().unwrap(),
                calling_station: Some("198.51.100.7".into()),
                status: SessionStatus::Start,
            },
            Observation::Activity {
                ts: Timestamp::from_secs(1_700_000_001),
                host: "10.0.0.5".parse().unwrap(),
            },
            Observation::SessionRtt {
                ts: Timestamp::from_secs(1_700_000_002),
                client: "192.0.2.30".parse().unwrap(),
                rtt_ns: 120_215_000,
                samples: 21,
                data_ack_ns: Some(120_226_000),
                ts_echo_ns: None,
                flow: FlowRef {
                    proto: "tcp",
                    src_ip: "192.0.2.30".parse().unwrap(),
                    src_port: 37728,
                    dst_ip: "10.8.0.12".parse().unwrap(),
                    dst_port: 1194,
                },
            },
            Observation::Session(SessionEvent {
                ts: Timestamp(1_700_000_002_000_001_000),
                account: "alice".into(),
                assigned_ip: "10.0.0.5".parse().unwrap(),
                public_ip: Some("198.51.100.7".parse().unwrap()),
                status: SessionStatus::Interim,
            }),
            Observation::Finding {
                event: Box::new(event),
            },
        ];
        for obs in all {
            let json = serde_json::to_vec(&obs).unwrap();
            let back: Observation = serde_json::from_slice(&json).unwrap();
            assert_eq!(back.id(), obs.id());
            assert_eq!(serde_json::to_vec(&back).unwrap(), json);
        }
    }

    #[test]
    fn unknown_reasons_and_protocols_are_refused() {
        let good = r#"{"type":"finding","event":{"ts":"2023-11-14T22:13:20.000000Z","id":"x","kind":"remote_desktop","reason":"persistent_stream","severity":"medium","account":null,"host":null,"flow":null,"app":null,"summary":"","evidence":{},"key":""}}"#;
        assert!(serde_json::from_str::<Observation>(good).is_ok());
        let bad_reason = good.replace("persistent_stream", "made_up");
        assert!(serde_json::from_str::<Observation>(&bad_reason).is_err());
        let bad_proto = good.replace(
            r#""flow":null"#,
            r#""flow":{"proto":"sctp","src_ip":"10.0.0.1","src_port":1,"dst_ip":"10.0.0.2","dst_port":2}"#,
        );
        assert!(serde_json::from_str::<Observation>(&bad_proto).is_err());
    }
}
