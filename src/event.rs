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
