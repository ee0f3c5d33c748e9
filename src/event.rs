//! Findings, the product's main output: one JSON object per line (DESIGN §4, a public
//! contract). The `id` hashes the event's identity, not its time of writing, so the same
//! input gives the same ids run after run.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};
use sha1::{Digest, Sha1};

use crate::app::App;
use crate::timestamp::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    RemoteDesktop,
    RelayChain,
    GeoAnomaly,
    FarmCluster,
    OffHours,
    Inventory,
    Alert,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RemoteDesktop => "remote_desktop",
            Kind::RelayChain => "relay_chain",
            Kind::GeoAnomaly => "geo_anomaly",
            Kind::FarmCluster => "farm_cluster",
            Kind::OffHours => "off_hours",
            Kind::Inventory => "inventory",
            Kind::Alert => "alert",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The flow a finding is about; `src` is the initiator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FlowRef {
    pub proto: &'static str,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub ts: Timestamp,
    pub id: String,
    pub kind: Kind,
    pub reason: &'static str,
    pub severity: Severity,
    pub account: Option<String>,
    pub host: Option<IpAddr>,
    pub flow: Option<FlowRef>,
    pub app: Option<App>,
    pub summary: String,
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// Tells repeated findings of one kind on one subject apart (a duration tier, a peer).
    #[serde(skip)]
    pub key: String,
}

/// An [`Event`] as read back from the scale-out stream (DESIGN §7), before its reason is
/// looked up among the names farmwatch gives (every detector's, the inventory's, the scorer's).
#[derive(Deserialize)]
struct EventIn {
    ts: Timestamp,
    id: String,
    kind: Kind,
    reason: String,
    severity: Severity,
    account: Option<String>,
    host: Option<IpAddr>,
    flow: Option<FlowRef>,
    app: Option<App>,
    summary: String,
    evidence: serde_json::Map<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        let e = EventIn::deserialize(d)?;
        let reason = crate::detect::reasons()
            .map(|r| r.name)
            .chain([crate::detect::score::ALERT_REASON])
            .find(|r| *r == e.reason)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown reason {:?}", e.reason)))?;
        Ok(Event {
            ts: e.ts,
            id: e.id,
            kind: e.kind,
            reason,
            severity: e.severity,
            account: e.account,
            host: e.host,
            flow: e.flow,
            app: e.app,
            summary: e.summary,
            evidence: e.evidence,
            key: String::new(),
        })
    }
}

impl<'de> Deserialize<'de> for FlowRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FlowRef, D::Error> {
        FlowRefIn::deserialize(d)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

/// A [`FlowRef`] as read, before its protocol is checked against the names flows use.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowRefIn {
    proto: String,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
}

impl TryFrom<FlowRefIn> for FlowRef {
    type Error = String;

    fn try_from(f: FlowRefIn) -> Result<FlowRef, String> {
        let proto = ["tcp", "udp", "icmp"]
            .into_iter()
            .find(|p| *p == f.proto)
            .ok_or_else(|| format!("unknown protocol {:?}", f.proto))?;
        Ok(FlowRef {
            proto,
            src_ip: f.src_ip,
            src_port: f.src_port,
            dst_ip: f.dst_ip,
            dst_port: f.dst_port,
        })
    }
}

impl Event {
    /// A finding; `key` goes into the id, not the output.
    pub fn new(
        ts: Timestamp,
        kind: Kind,
        reason: &'static str,
        severity: Severity,
        key: &str,
    ) -> Event {
        Event {
            ts,
            id: String::new(),
            kind,
            reason,
            severity,
            account: None,
            host: None,
            flow: None,
            app: None,
            summary: String::new(),
            evidence: serde_json::Map::new(),
            key: key.to_string(),
        }
    }

    /// Fixes the id from the identity fields. Called by the sink, after the detector has
    /// filled in account, host and flow.
    pub fn seal(&mut self) {
        let mut h = Sha1::new();
        h.update(self.kind.as_str());
        h.update([0]);
        h.update(self.reason);
        h.update([0]);
        h.update(self.account.as_deref().unwrap_or(""));
        h.update([0]);
        if let Some(host) = self.host {
            h.update(host.to_string());
        }
        h.update([0]);
        if let Some(f) = &self.flow {
            h.update(format!(
                "{} {} {} {} {}",
                f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port
            ));
        }
        h.update([0]);
        h.update(&self.key);
        let digest = h.finalize();
        self.id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    }

    pub fn evidence(mut self, name: &str, value: impl Into<serde_json::Value>) -> Event {
        self.evidence.insert(name.to_string(), value.into());
        self
    }
}

/// Typed evidence: the figures of a finding that other parts of farmwatch read (the HTML
/// report), one struct per reason. A detector writes one with [`Event::with`], which puts
/// its fields into `evidence` under the keys the events output has always had; a reader
/// takes it back with [`Event::read`], also from an event read off the scale-out stream. So
/// the evidence object stays the one record of a finding, and no reader re-derives a
/// detector's decision or looks for a key by its spelling.
pub trait Evidence: Serialize + serde::de::DeserializeOwned {
    /// The reason whose findings carry it.
    const REASON: &'static str;
}

impl Event {
    /// Adds the fields of `evidence` to the evidence object.
    pub fn with<E: Evidence>(mut self, evidence: &E) -> Event {
        debug_assert_eq!(self.reason, E::REASON, "evidence of another reason");
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(evidence) {
            self.evidence.extend(fields);
        }
        self
    }

    /// The typed evidence of a finding of `E`'s reason; `None` for other reasons, or when
    /// the evidence lacks a field `E` needs (an event written by another version).
    pub fn read<E: Evidence>(&self) -> Option<E> {
        if self.reason != E::REASON {
            return None;
        }
        E::deserialize(&self.evidence).ok()
    }
}

/// Which end of a remote-desktop session the inside host is, as `persistent_stream`
/// decided from the session's bytes and packet sizes (`detect::remote_desktop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The inside host sends the screen: someone at the peer operates it.
    Controlled,
    /// The inside host receives the screen: it operates the peer.
    Controller,
    Undetermined,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controlled => "controlled",
            Role::Controller => "controller",
            Role::Undetermined => "undetermined",
        }
    }
}

/// How a remote-desktop session reached its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Direct,
    /// A flow of the session goes to the tool vendor's relay or broker.
    VendorRelay,
    /// The host had a TURN-relayed STUN flow during the session or just before it.
    TurnRelay,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::VendorRelay => "vendor_relay",
            Via::TurnRelay => "turn_relay",
        }
    }
}

/// `persistent_stream`: one remote-desktop session at an inside host (the event's `host`),
/// as of the tier it reached. Counters are seen from the host: `from` it and `to` it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionEvidence {
    /// The span that made it reported (`15m`, `1h`, ...).
    pub tier: String,
    pub role: Role,
    pub via: Via,
    pub peer_inside: bool,
    pub session_start: Timestamp,
    /// From the first packet to the latest payload, when reported.
    pub duration_s: u64,
    pub active_s: f64,
    pub flows: u32,
    pub bytes_from_host: u64,
    pub bytes_to_host: u64,
    pub byte_ratio: f64,
    pub large_pkts_from_host: u64,
    pub large_pkts_to_host: u64,
    pub small_pkts_from_host: u64,
    pub small_pkts_to_host: u64,
    /// The other end of the session's busiest flow.
    pub peer: Option<IpAddr>,
}

impl Evidence for SessionEvidence {
    const REASON: &'static str = "persistent_stream";
}

/// `stepping_stone`: the two legs of an interactive session relayed through the event's
/// `host`: activity arriving on `inbound_flow` is followed by activity on `outbound_flow`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SteppingStoneEvidence {
    #[serde(with = "flow_text")]
    pub inbound_flow: FlowRef,
    pub inbound_app: Option<App>,
    #[serde(with = "flow_text")]
    pub outbound_flow: FlowRef,
    pub hits: u32,
    pub consecutive_hits: u32,
    pub resumes_inbound: u32,
    pub resumes_outbound: u32,
    pub ratio: f64,
    pub delta_ms: u64,
}

impl Evidence for SteppingStoneEvidence {
    const REASON: &'static str = "stepping_stone";
}

/// A place on the globe as geo evidence gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub lat: f64,
    pub lon: f64,
    pub radius_km: f64,
    /// `city` or `country_centroid`.
    pub source: String,
}

/// `rtt_distance`: the least round trip to an account's public address against the
/// distance to where the databases put it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RttDistanceEvidence {
    /// `relayed` (far slower than the distance allows) or `geo_wrong` (faster than light).
    pub verdict: String,
    pub public_ip: IpAddr,
    pub min_rtt_ms: f64,
    pub samples: u64,
    pub distance_km: f64,
    pub position: Position,
    pub sensor: Position,
    pub vacuum_bound_ms: f64,
    /// The least round trip over `distance_km` in fibre.
    pub fibre_bound_ms: f64,
    /// The most a direct client at that distance needs.
    pub ceiling_ms: f64,
    pub country: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    /// Samples taken inside long sessions (passive RTT of the outside leg), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_session_samples: Option<u32>,
    /// `in_session` or `handshake`: where `min_rtt_ms` came from, when in-session samples
    /// were used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_source: Option<String>,
}

impl Evidence for RttDistanceEvidence {
    const REASON: &'static str = "rtt_distance";
}

/// `foreign_working_hours`: the UTC offset whose working week fits the account's activity
/// better than its declared time zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OffHoursEvidence {
    pub declared_timezone: String,
    /// `+09:00`.
    pub best_utc_offset: String,
    pub best_fit: f64,
    pub declared_fit: f64,
    pub active_days: u64,
    /// Activity by local hour in the declared zone.
    pub hours_local: Vec<u32>,
    /// `09:00-17:00`.
    pub working_day: String,
}

impl Evidence for OffHoursEvidence {
    const REASON: &'static str = "foreign_working_hours";
}

/// `rtt_split`: on connections of the event's `host`, the application round trip toward
/// one side is far longer than the TCP round trip: TCP ends at a relay on that side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RttSplitEvidence {
    /// `responder` or `originator`: the side whose TCP ends at the relay.
    pub relay_side: String,
    /// The relay's address (the end of `relay_side`).
    pub relay: IpAddr,
    /// `repeated` (judged on the low quantile of its recent connections) or `one_off`.
    pub evidence: String,
    pub connections: u64,
    pub extra_ms: f64,
    pub low_quantile_extra_ms: f64,
    /// The two legs as the sensor timed them.
    pub responder_side: Leg,
    pub originator_side: Leg,
    pub tls_version: Option<String>,
    pub certificate_in_clear: bool,
    pub min_ratio: f64,
    pub min_extra_ms: u64,
    pub min_connections: u64,
    pub quantile: f64,
}

impl Evidence for RttSplitEvidence {
    const REASON: &'static str = "rtt_split";
}

/// One side of a connection as `rtt_split` timed it: its TCP handshake leg against the
/// application's answer, or why it could not be timed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Leg {
    Measured {
        tcp_rtt_ms: f64,
        app_rtt_ms: f64,
        ratio: f64,
    },
    Skipped {
        skipped: String,
    },
}

/// `operator_latency`: the round trip to the person at an inbound interactive session on
/// the event's `host`, against the declared country's domestic ceiling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorLatencyEvidence {
    pub app: App,
    /// The outside end of the session.
    pub viewer: IpAddr,
    /// The floor of "the host's output ends → the next input arrives".
    pub floor_ms: f64,
    pub exchanges: u32,
    /// The floor is far above the TCP leg to `viewer`: it forwards for someone farther.
    pub relay: bool,
    pub declared_country: String,
    pub domestic_ceiling_ms: f64,
    pub ceiling_source: String,
    pub min_distance_km: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_leg_ms: Option<f64>,
}

impl Evidence for OperatorLatencyEvidence {
    const REASON: &'static str = "operator_latency";
}

/// A flow as text in evidence, `tcp 10.8.0.12:50000 -> 192.0.2.9:22` (IPv6 addresses
/// unbracketed: the port is after the last colon).
mod flow_text {
    use super::FlowRef;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &FlowRef, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{} {}:{} -> {}:{}",
            f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port
        ))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FlowRef, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not a flow: {text:?}")))
    }

    fn parse(text: &str) -> Option<FlowRef> {
        let (proto, rest) = text.split_once(' ')?;
        let (src, dst) = rest.split_once(" -> ")?;
        let end = |s: &str| {
            let (ip, port) = s.rsplit_once(':')?;
            Some((ip.parse().ok()?, port.parse().ok()?))
        };
        let ((src_ip, src_port), (dst_ip, dst_port)) = (end(src)?, end(dst)?);
        super::FlowRefIn {
            proto: proto.to_string(),
            src_ip,
            src_port,
            dst_ip,
            dst_port,
        }
        .try_into()
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionEvidence {
        SessionEvidence {
            tier: "1h".to_string(),
            role: Role::Controller,
            via: Via::TurnRelay,
            peer_inside: false,
            session_start: Timestamp::from_secs(1_793_628_000),
            duration_s: 3600,
            active_s: 8.4,
            flows: 2,
            bytes_from_host: 4608,
            bytes_to_host: 156_838,
            byte_ratio: 0.03,
            large_pkts_from_host: 0,
            large_pkts_to_host: 112,
            small_pkts_from_host: 115,
            small_pkts_to_host: 2,
            peer: None,
        }
    }

    #[test]
    fn typed_evidence_reads_back_what_it_wrote_under_the_contract_keys() {
        let e = Event::new(
            Timestamp::from_secs(1_793_631_600),
            Kind::RemoteDesktop,
            "persistent_stream",
            Severity::Low,
            "",
        )
        .with(&session());
        assert_eq!(e.read::<SessionEvidence>(), Some(session()));
        assert_eq!(e.evidence["role"], "controller");
        assert_eq!(e.evidence["via"], "turn_relay");
        assert_eq!(e.evidence["session_start"], "2026-11-02T14:00:00.000000Z");
        assert_eq!(e.evidence["peer"], serde_json::Value::Null);
        // Read as another reason's evidence, it is nothing.
        assert_eq!(e.read::<SteppingStoneEvidence>(), None);
        // Evidence missing a field (another version's) reads as nothing, not as defaults.
        let mut partial = e.clone();
        partial.evidence.remove("role");
        assert_eq!(partial.read::<SessionEvidence>(), None);
    }

    #[test]
    fn flow_text_reads_ipv6_and_refuses_what_is_not_a_flow() {
        let v = serde_json::json!({
            "inbound_flow": "udp [::1]:1 -> x",
            "inbound_app": null,
            "outbound_flow": "tcp 2001:db8::1:50000 -> 10.8.0.12:22",
            "hits": 1, "consecutive_hits": 1, "resumes_inbound": 1, "resumes_outbound": 1,
            "ratio": 1.0, "delta_ms": 1,
        });
        assert!(serde_json::from_value::<SteppingStoneEvidence>(v.clone()).is_err());
        let mut v = v;
        v["inbound_flow"] = "tcp 2001:db8::1:50000 -> 10.8.0.12:22".into();
        let s: SteppingStoneEvidence = serde_json::from_value(v).unwrap();
        assert_eq!(
            s.outbound_flow.src_ip,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(s.outbound_flow.src_port, 50000);
        assert_eq!(
            serde_json::to_value(&s).unwrap()["outbound_flow"],
            "tcp 2001:db8::1:50000 -> 10.8.0.12:22"
        );
    }
}
