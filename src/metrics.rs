//! Counters the pipeline keeps with plain integers (the packet path never touches an
//! atomic); the metrics module publishes them.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub capture_drops_kernel: u64,
    pub capture_drops_interface: u64,
    pub flows_active: u64,
    pub flows_total: u64,
    pub flows_evicted: BTreeMap<&'static str, u64>,
    pub flows_by_app: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    pub remote_desktop_active: BTreeMap<(&'static str, String), u64>,
    pub account_risk: BTreeMap<String, f64>,
    pub sink_errors: BTreeMap<&'static str, u64>,
    pub last_packet_ts: Option<f64>,
    pub truncated_records: u64,
}
