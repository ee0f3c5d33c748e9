//! Flow records (`--flows`), one JSON object per finished flow, like a Zeek conn log
//! (DESIGN §4, a public contract: fields are added, never renamed).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::app::App;
use crate::decode::Tunnel;
use crate::dissect::identify::{Details, Evidence, Protocol};
use crate::dissect::tls::TlsDetails;
use crate::flows::activity::{ActivitySummary, round, round2};
use crate::flows::community_id::{CommunityId, community_id};
use crate::flows::flow::{Flow, History, ORIG, RESP};
use crate::flows::json::{Object, Plain, key};
use crate::geo::Country;
use crate::timestamp::Timestamp;

/// One flow record. The `--flows` sink writes it with [`FlowRecord::write_json`], the
/// report through the derived `Serialize`: a field added here goes into both.
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
    pub community_id: CommunityId,
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
    // Protocol details, present when dissected: TLS, then the one other protocol's field
    // (`quic`, `dns`, ..., in the order `protocols!` lists them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<TlsDetails>>,
    #[serde(flatten)]
    pub protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_evidence: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
    /// The round trip to the person at an inbound remote-desktop or SSH session, in ms
    /// (`flows::latency`): on the last record of the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_floor_ms: Option<f64>,
    /// The outside leg's passive RTT inside an inbound session (`flows::latency`): on the
    /// last record of the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_rtt: Option<crate::flows::latency::OutsideRtt>,
}

/// The history as its letters, a string in the record.
fn history_str<S: Serializer>(history: &History, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(history.as_str())
}

/// `o.field(key!(name), &r.name)` for each field, in order.
macro_rules! fields {
    ($o:ident, $r:ident: $($name:ident),* $(,)?) => {
        $($o.field(key!($name), &$r.$name)?;)*
    };
}

/// For each optional field, in order, `o.serde(key!(name), value)` when present, as
/// `skip_serializing_if = "Option::is_none"`.
macro_rules! present {
    ($o:ident, $r:ident: $($name:ident),* $(,)?) => {
        $(if let Some(value) = &$r.$name {
            $o.serde(key!($name), value)?;
        })*
    };
}

/// The fields of [`ActivitySummary`] as its `Serialize` writes them.
fn activity(o: &mut Object<'_>, s: &ActivitySummary) -> serde_json::Result<()> {
    fields!(o, s: data_pkts, small_pkts, large_pkts, max_payload, mean_payload, resumes,
        active_s, mean_gap_ms);
    Ok(())
}

/// The fields of [`TlsDetails`] as its `Serialize` writes them: TLS is on one flow in two,
/// and serde_json took twice as long as the rest of the record. Every field is named, so a
/// field added to `TlsDetails` does not compile until it is written here too.
fn tls(o: &mut Object<'_>, t: &TlsDetails) -> serde_json::Result<()> {
    let TlsDetails {
        client_version,
        version,
        sni,
        alpn,
        ja4,
        cipher,
        server_alpn,
        cert_subject,
        cert_issuer,
        cert_san,
        dtls,
    } = t;
    o.field(key!(client_version), client_version)?;
    o.field(key!(version), version)?;
    o.field(key!(sni), sni)?;
    o.field(key!(alpn), alpn)?;
    o.field(key!(ja4), ja4)?;
    o.field(key!(cipher), cipher)?;
    o.field(key!(server_alpn), server_alpn)?;
    o.field(key!(cert_subject), cert_subject)?;
    o.field(key!(cert_issuer), cert_issuer)?;
    o.field(key!(cert_san), cert_san)?;
    if *dtls {
        o.field(key!(dtls), dtls)?;
    }
    Ok(())
}

fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| round2(n as f64 / 1e6))
}

impl FlowRecord {
    /// The record of `flow`, whose protocol details are `details`: moved out of a flow that
    /// ended, cloned from one that goes on.
    pub fn new(
        flow: &Flow,
        details: Option<Box<Details>>,
        interim: bool,
        end_reason: Option<&'static str>,
    ) -> FlowRecord {
        let [o, r] = &flow.dir;
        let Details {
            tls,
            other,
            tool_evidence,
            relay,
        } = details.map(|d| *d).unwrap_or_default();
        let tool_evidence = tool_evidence.map(Evidence::as_str);
        let quic = match &other {
            Some(Protocol::Quic(q)) => Some(q),
            _ => None,
        };
        FlowRecord {
            ts: flow.first,
            end: flow.last,
            duration_s: round(flow.duration_ns() as f64 / 1e3) / 1e6,
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
                .ack()
                .zip(flow.tcp.syn())
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
            tunnel: flow.tunnel.map(Tunnel::as_str),
            retransmissions_orig: flow.tcp.retransmissions[ORIG],
            retransmissions_resp: flow.tcp.retransmissions[RESP],
            missed_bytes: flow.tcp.missed_bytes,
            ttl_orig: o.min_ttl,
            ttl_resp: (r.pkts > 0).then_some(r.min_ttl),
            activity_orig: o.summary(),
            activity_resp: r.summary(),
            dns_name: None,
            tls,
            protocol: other,
            tool_evidence,
            relay,
            latency_floor_ms: None,
            outside_rtt: None,
        }
    }

    /// Asks the CPU for the record's strings and TLS details, which lie elsewhere and have
    /// gone cold since the record was made (it waited in the merge of the workers' items):
    /// they arrive while the fields before them are written, instead of stalling each.
    fn prefetch_text(&self) {
        for s in [&self.sni, &self.ja4, &self.dns_name].into_iter().flatten() {
            crate::prefetch::bytes(s.as_bytes(), 1);
        }
        if let Some(tls) = &self.tls {
            crate::prefetch::value(&**tls);
        }
    }

    /// The TLS details' strings, once the details themselves are in the cache (asked for
    /// by [`prefetch_text`](Self::prefetch_text)).
    fn prefetch_tls_text(&self) {
        let Some(tls) = &self.tls else { return };
        for s in [&tls.sni, &tls.ja4].into_iter().flatten() {
            crate::prefetch::bytes(s.as_bytes(), 1);
        }
    }

    /// Appends the record as one JSON object: the bytes `serde_json` writes for the derived
    /// `Serialize` (same names, order and values), but field names are copied rather than
    /// escaped and plain values go through [`Json`]; protocol details without a writer of
    /// their own still go through serde_json. The test below holds the two encodings together.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        self.prefetch_text();
        let mut o = Object::new(out);
        fields!(o, self: ts, end, duration_s, proto, src_ip, src_port, dst_ip, dst_port, app,
            guess, sni, ja4, bytes_orig, bytes_resp, pkts_orig, pkts_resp, ip_bytes_orig,
            ip_bytes_resp, wire_bytes_orig, wire_bytes_resp, tcp_rtt_ms, tcp_rtt_resp_ms,
            tcp_rtt_orig_ms);
        o.field(key!(history), &Plain(self.history.as_str()))?;
        fields!(o, self: conn_state, account, resp_country, resp_asn, orig_country, orig_asn,
            interim, community_id, end_reason, tunnel, retransmissions_orig,
            retransmissions_resp, missed_bytes, ttl_orig, ttl_resp);
        self.prefetch_tls_text();
        o.object(key!(activity_orig), |a| activity(a, &self.activity_orig))?;
        o.object(key!(activity_resp), |a| activity(a, &self.activity_resp))?;
        o.field(key!(dns_name), &self.dns_name)?;
        if let Some(t) = &self.tls {
            o.object(key!(tls), |o| tls(o, t))?;
        }
        if let Some(p) = &self.protocol {
            p.write_json(&mut o)?;
        }
        present!(o, self: tool_evidence);
        if self.relay {
            o.field(key!(relay), &self.relay)?;
        }
        present!(o, self: latency_floor_ms, outside_rtt);
        o.end();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Proto;
    use crate::dissect::dns::{DnsAnswer, DnsDetails};

    fn summary(seed: u64) -> ActivitySummary {
        ActivitySummary {
            data_pkts: seed,
            small_pkts: seed + 1,
            large_pkts: seed + 2,
            max_payload: 1460,
            mean_payload: 1406.33,
            resumes: 3,
            active_s: 0.1,
            mean_gap_ms: 1e-7,
        }
    }

    /// Every field set, strings that need escaping, numbers of every shape.
    fn full() -> FlowRecord {
        let mut history = History::default();
        for (letter, from_orig) in [(b's', true), (b'h', false), (b'a', true), (b'd', false)] {
            history.push(letter, from_orig);
        }
        let text = |s: &str| Some(format!("{s} \"quoted\"\\n\u{1}é"));
        FlowRecord {
            ts: Timestamp(1_762_092_191_123_456_789),
            end: Timestamp(1_762_092_200_000_000_000),
            duration_s: 8.876543,
            proto: "tcp",
            src_ip: "10.0.0.1".parse().unwrap(),
            src_port: 49724,
            dst_ip: "2001:db8::1".parse().unwrap(),
            dst_port: 443,
            app: Some("rdp"),
            guess: Some("rdp"),
            sni: text("sni"),
            ja4: text("ja4"),
            bytes_orig: u64::MAX,
            bytes_resp: 0,
            pkts_orig: 8,
            pkts_resp: 9,
            ip_bytes_orig: 657,
            ip_bytes_resp: 8802,
            wire_bytes_orig: 769,
            wire_bytes_resp: 8928,
            tcp_rtt_ms: Some(19.0),
            tcp_rtt_resp_ms: Some(9.5),
            tcp_rtt_orig_ms: Some(1e21),
            history,
            conn_state: "SF",
            account: text("account"),
            resp_country: Country::new("de"),
            resp_asn: Some(3320),
            orig_country: Country::new("US"),
            orig_asn: Some(u32::MAX),
            interim: true,
            community_id: community_id(
                Proto::Tcp,
                "10.0.0.1".parse().unwrap(),
                49724,
                "2001:db8::1".parse().unwrap(),
                443,
            ),
            end_reason: Some("closed"),
            tunnel: Some("gre"),
            retransmissions_orig: 1,
            retransmissions_resp: 2,
            missed_bytes: 3,
            ttl_orig: 64,
            ttl_resp: Some(128),
            activity_orig: summary(1),
            activity_resp: summary(2),
            dns_name: text("name"),
            tls: Some(Arc::new(TlsDetails {
                sni: text("tls"),
                alpn: vec!["h2".into()],
                dtls: true,
                ..TlsDetails::default()
            })),
            protocol: Some(Protocol::Dns(Box::new(DnsDetails {
                query: text("query"),
                qtype: Some(28),
                rcode: Some(3),
                answers: vec![
                    DnsAnswer::Addr("192.0.2.1".parse().unwrap()),
                    DnsAnswer::Addr("2001:db8::1".parse().unwrap()),
                    DnsAnswer::Name(text("cname").unwrap()),
                ],
            }))),
            tool_evidence: Some("sni"),
            relay: true,
            latency_floor_ms: Some(121.5),
            outside_rtt: Some(crate::flows::latency::OutsideRtt {
                floor_ms: 120.2,
                samples: 40,
                data_ack_ms: Some(120.4),
                data_ack_samples: 31,
                ts_echo_ms: Some(120.2),
                ts_echo_samples: 38,
            }),
        }
    }

    /// Every optional field absent, every flag off.
    fn bare() -> FlowRecord {
        FlowRecord {
            app: None,
            guess: None,
            sni: None,
            ja4: None,
            tcp_rtt_ms: None,
            tcp_rtt_resp_ms: None,
            tcp_rtt_orig_ms: None,
            history: History::default(),
            account: None,
            resp_country: None,
            resp_asn: None,
            orig_country: None,
            orig_asn: None,
            interim: false,
            end_reason: None,
            tunnel: None,
            ttl_resp: None,
            dns_name: None,
            tls: None,
            protocol: None,
            tool_evidence: None,
            relay: false,
            latency_floor_ms: None,
            ..full()
        }
    }

    /// Every protocol's details (with their defaults), between the fields before and after.
    #[test]
    fn write_json_writes_what_serde_json_writes() {
        let each_protocol = Protocol::every().into_iter().map(|p| FlowRecord {
            protocol: Some(p),
            ..full()
        });
        let text = |s: &str| Some(format!("{s} \"quoted\"\\n\u{1}é"));
        let every_tls_field = FlowRecord {
            tls: Some(Arc::new(TlsDetails {
                client_version: Some(0x0303),
                version: Some(0x0304),
                sni: text("sni"),
                alpn: vec!["h2".into(), "http/1.1".into()],
                ja4: text("ja4"),
                cipher: Some(0x1301),
                server_alpn: text("alpn"),
                cert_subject: text("subject"),
                cert_issuer: text("issuer"),
                cert_san: vec!["a.example".into(), text("san").unwrap()],
                dtls: false,
            })),
            ..full()
        };
        let default_tls = FlowRecord {
            tls: Some(Arc::default()),
            ..bare()
        };
        let records = [full(), bare(), every_tls_field, default_tls];
        for record in records.into_iter().chain(each_protocol) {
            let mut ours = Vec::new();
            record.write_json(&mut ours).unwrap();
            let theirs = serde_json::to_vec(&record).unwrap();
            assert_eq!(String::from_utf8(ours), String::from_utf8(theirs));
        }
    }

    #[test]
    fn history_and_countries_are_strings() {
        let v = serde_json::to_value(full()).unwrap();
        assert_eq!(v["history"], "ShAd");
        assert_eq!(v["resp_country"], "DE");
        assert_eq!(v["orig_country"], "US");
        assert_eq!(v["ts"], "2025-11-02T14:03:11.123456Z");
    }
}
