//! Findings, the product's main output: one JSON object per line (DESIGN §4, a public
//! contract). The `id` hashes the event's identity, not its time of writing, so the same
//! input gives the same ids run after run.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::app::App;
use crate::timestamp::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
