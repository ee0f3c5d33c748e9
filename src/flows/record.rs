//! Flow records (`--flows`), one JSON object per finished flow, like a Zeek conn log
//! (DESIGN §4, a public contract: fields are added, never renamed).

use std::net::IpAddr;

use serde::{Serialize, Serializer};

use crate::app::App;
use crate::dissect::identify::{
    Details, DnsDetails, HttpDetails, IpsecDetails, OpenvpnDetails, QuicDetails, RdpDetails,
    SocksDetails, SshDetails, StunDetails, TlsDetails, WireguardDetails,
};
use crate::dissect::{radius, rfb};
use crate::flows::activity::{ActivitySummary, round2};
use crate::flows::community_id::community_id;
use crate::flows::flow::{Flow, History, ORIG, RESP};
use crate::geo::Country;
use crate::timestamp::Timestamp;

#[derive(Clone, Debug, Serialize)]
pub struct FlowRecord {
    pub ts: Timestamp,
    pub end: Timestamp,
    pub duration_s: f64,
    pub proto: &'static str,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub app: Option<&'static str>,
    /// A port-only hint, never evidence.
    pub guess: Option<&'static str>,
    pub sni: Option<String>,
    pub ja4: Option<String>,
    pub bytes_orig: u64,
    pub bytes_resp: u64,
    pub pkts_orig: u64,
    pub pkts_resp: u64,
    pub ip_bytes_orig: u64,
    pub ip_bytes_resp: u64,
    pub wire_bytes_orig: u64,
    pub wire_bytes_resp: u64,
    /// SYN → handshake-completing ACK, as seen at the sensor.
    pub tcp_rtt_ms: Option<f64>,
    /// SYN → SYN/ACK: the sensor↔responder leg.
    pub tcp_rtt_resp_ms: Option<f64>,
    /// SYN/ACK → ACK: the sensor↔originator leg.
    pub tcp_rtt_orig_ms: Option<f64>,
    #[serde(serialize_with = "history_str")]
    pub history: History,
    pub conn_state: &'static str,
    pub account: Option<String>,
    pub resp_country: Option<Country>,
    pub resp_asn: Option<u32>,
    pub orig_country: Option<Country>,
    pub orig_asn: Option<u32>,
    pub interim: bool,
    pub community_id: String,
    /// Why the record was written: closed, timeout, evicted, shutdown, reused (null on
    /// interim records).
    pub end_reason: Option<&'static str>,
    pub tunnel: Option<&'static str>,
    pub retransmissions_orig: u32,
    pub retransmissions_resp: u32,
    pub missed_bytes: u64,
    pub ttl_orig: u8,
    pub ttl_resp: Option<u8>,
    pub activity_orig: ActivitySummary,
    pub activity_resp: ActivitySummary,
    /// The name a DNS answer gave the responder's address.
    pub dns_name: Option<String>,
    // Protocol details, present when dissected (fields, not a flattened map: flattening
    // sends every record through serde's slow map path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<TlsDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic: Option<Box<QuicDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Box<DnsDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<Box<SshDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdp: Option<Box<RdpDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rfb: Option<Box<rfb::Session>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socks: Option<Box<SocksDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<Box<WireguardDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openvpn: Option<Box<OpenvpnDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<Box<IpsecDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stun: Option<Box<StunDetails>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radius: Option<Box<radius::Accounting>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_evidence: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

/// The history as its letters, a string in the record.
fn history_str<S: Serializer>(history: &History, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(history.as_str())
}

fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| round2(n as f64 / 1e6))
}

impl FlowRecord {
    pub fn new(flow: &Flow, interim: bool, end_reason: Option<&'static str>) -> FlowRecord {
        let [o, r] = &flow.dir;
        let details = flow.details.as_deref();
        let Details {
            tls,
            quic,
            dns,
            http,
            ssh,
            rdp,
            rfb,
            socks,
            wireguard,
            openvpn,
            ipsec,
            stun,
            radius,
            tool_evidence,
            relay,
        } = details.cloned().unwrap_or_default();
        FlowRecord {
            ts: flow.first,
            end: flow.last,
            duration_s: (flow.duration_ns() as f64 / 1e3).round() / 1e6,
            proto: flow.proto.as_str(),
            src_ip: flow.orig.0,
            src_port: flow.orig.1,
            dst_ip: flow.resp.0,
            dst_port: flow.resp.1,
            app: flow.app.map(App::as_str),
            guess: flow.guess.map(App::as_str),
            sni: tls
                .as_ref()
                .and_then(|t| t.sni.clone())
                .or_else(|| quic.as_ref().and_then(|q| q.sni.clone())),
            ja4: tls
                .as_ref()
                .and_then(|t| t.ja4.clone())
                .or_else(|| quic.as_ref().and_then(|q| q.ja4.clone())),
            bytes_orig: o.bytes,
            bytes_resp: r.bytes,
            pkts_orig: o.pkts,
            pkts_resp: r.pkts,
            ip_bytes_orig: o.ip_bytes,
            ip_bytes_resp: r.ip_bytes,
            wire_bytes_orig: o.wire_bytes,
            wire_bytes_resp: r.wire_bytes,
            tcp_rtt_ms: ms(flow
                .tcp
                .ack
                .zip(flow.tcp.syn)
                .and_then(|(a, s)| a.0.checked_sub(s.0))),
            tcp_rtt_resp_ms: ms(flow.tcp.rtt_resp_ns()),
            tcp_rtt_orig_ms: ms(flow.tcp.rtt_orig_ns()),
            history: flow.history,
            conn_state: flow.conn_state(),
            account: None,
            resp_country: None,
            resp_asn: None,
            orig_country: None,
            orig_asn: None,
            interim,
            community_id: community_id(
                flow.proto,
                flow.orig.0,
                flow.orig.1,
                flow.resp.0,
                flow.resp.1,
            ),
            end_reason,
            tunnel: flow.tunnel,
            retransmissions_orig: flow.tcp.retransmissions[ORIG],
            retransmissions_resp: flow.tcp.retransmissions[RESP],
            missed_bytes: flow.tcp.missed_bytes,
            ttl_orig: o.min_ttl,
            ttl_resp: (r.pkts > 0).then_some(r.min_ttl),
            activity_orig: o.summary(),
            activity_resp: r.summary(),
            dns_name: None,
            tls,
            quic,
            dns,
            http,
            ssh,
            rdp,
            rfb,
            socks,
            wireguard,
            openvpn,
            ipsec,
            stun,
            radius,
            tool_evidence,
            relay,
        }
    }
}
