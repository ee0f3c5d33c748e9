//! Application identification: runs the probes of [`PROBES`] over a flow's first bytes and
//! decides its label from what they found. The label always rests on evidence in the
//! bytes (a handshake, an SNI, a certificate, a DNS answer seen earlier); a port-only hint
//! goes into `guess`.
//!
//! Each dissector owns its probe and its summary type (the details a flow record carries)
//! in its own file; this file holds the two lists that tie them together: [`PROBES`], the
//! order in which look-alikes are told apart, and `protocols!`, the summary types and
//! their record fields.
//!
//! Identification is re-run from the start of each direction's reassembled prefix as more
//! bytes arrive (the prefix is a few KB, so this is cheap) until every parser that applies
//! has an answer; then the flow's buffers are freed and it costs only counters.

use std::cell::Cell;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::app::App;
use crate::decode::Proto;
use crate::dissect::ja4::Memo as Ja4Memo;
use crate::dissect::tls::TlsDetails;
use crate::dissect::tools::{self, NameKind};
use crate::dissect::{
    Error, dns, http, ipsec, midstream, openvpn, quic, radius, rdp, rfb, socks, ssh, sslvpn, stun,
    tls, wireguard,
};
use crate::flows::json::{Key, Object, key};

/// What a flow looks like to the dissectors right now.
pub struct Input<'a> {
    pub proto: Proto,
    pub orig_port: u16,
    pub resp_port: u16,
    /// In-order bytes from the start of each TCP direction.
    pub client: &'a [u8],
    pub server: &'a [u8],
    /// No more bytes will come for the direction (prefix full, gap, or connection over).
    pub client_closed: bool,
    pub server_closed: bool,
    /// UDP: the first datagrams of each direction.
    pub client_datagrams: &'a [Vec<u8>],
    pub server_datagrams: &'a [Vec<u8>],
    /// The remote-access tool the name a DNS answer gave the responder's address points
    /// at, if one was seen and it points at one: matched once, when the answer was read
    /// (`dns::CacheEntry::tool`), not at every pass of every flow to the address.
    pub dns_tool: Option<tools::Match>,
    /// TCP: the connection was open before the capture saw it (no SYN came first), so no
    /// handshake will come: the framing decides (see [`midstream`]).
    pub midstream: bool,
    /// The TLS details an earlier pass found: a ClientHello parsed once is not parsed (nor
    /// its JA4 computed) again when the server's flight arrives. Lent for the TLS probe to
    /// take: its client part stays where it is, no string of it copied.
    pub tls: Cell<Option<Arc<TlsDetails>>>,
    /// The HTTP request an earlier pass read, lent as the TLS details are: a request head
    /// is not read (nor its strings copied) again when the response arrives.
    pub http: Cell<Option<Box<http::HttpDetails>>>,
    /// The worker's JA4 hashes already worked out (none: hashed every time).
    pub ja4: Option<&'a Ja4Memo>,
    /// The worker's server certificates already read (none: read every time).
    pub certs: Option<&'a tls::CertMemo>,
    /// The first server datagram as the name cache parsed it (`NameCache::parsed`), when
    /// it was the last response the worker read.
    pub dns_answer: Option<&'a dns::Message>,
    /// The DNS details an earlier pass found: its query, the first client datagram, is not
    /// parsed again when the answer arrives.
    pub dns: Option<&'a dns::DnsDetails>,
}

impl<'a> Input<'a> {
    /// UDP: the first datagram seen, from either side (empty when there is none).
    pub fn first_datagram(&self) -> &'a [u8] {
        let first = self
            .client_datagrams
            .first()
            .or(self.server_datagrams.first());
        first.map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether either end is on one of `ports`.
    pub fn on_port(&self, ports: &[u16]) -> bool {
        // Compared one by one: `contains` on a slice of u16 is a call, not inlined.
        ports
            .iter()
            .any(|&p| p == self.orig_port || p == self.resp_port)
    }

    /// Whether the client and the server have sent anything to look at.
    fn sent(&self) -> (bool, bool) {
        match self.proto {
            Proto::Tcp => (!self.client.is_empty(), !self.server.is_empty()),
            _ => (
                !self.client_datagrams.is_empty(),
                !self.server_datagrams.is_empty(),
            ),
        }
    }
}

/// A probe's answer about a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Not this protocol (or not yet a sign of it): the next probe runs.
    No,
    /// This probe decides the flow, and more bytes may still add to its answer (what it
    /// found so far, if anything, is in the identification).
    More,
    /// This probe decides the flow, and more bytes will not change its answer.
    Done,
}

impl Probe {
    /// A parser's result as a probe's answer: parsed, a valid prefix of a direction that
    /// may still grow, or not this protocol.
    pub fn of<T>(r: &crate::dissect::Result<T>, closed: bool) -> Probe {
        match r {
            Ok(_) => Probe::Done,
            Err(Error::Incomplete) if !closed => Probe::More,
            Err(_) => Probe::No,
        }
    }

    /// `Done` once `settled`, else `More`.
    pub fn done_if(settled: bool) -> Probe {
        if settled { Probe::Done } else { Probe::More }
    }
}

/// A probe: looks at the flow's first bytes and writes what it found (label, details)
/// into the identification. Guard on the first bytes first, so only plausible parsers run.
pub type ProbeFn = fn(&Input<'_>, &mut Identification) -> Probe;

/// The probes in priority order: the first of the flow's transport that does not answer
/// [`Probe::No`] decides it, so a looser probe goes below the stricter ones whose bytes it
/// could also accept.
pub static PROBES: &[(Proto, ProbeFn)] = &[
    (Proto::Tcp, ssh::probe),
    (Proto::Tcp, tls::probe),
    (Proto::Tcp, rdp::probe),
    (Proto::Tcp, rfb::probe),
    (Proto::Tcp, http::probe),
    (Proto::Tcp, socks::probe),
    (Proto::Tcp, openvpn::tcp_probe),
    (Proto::Tcp, dns::tcp_probe),
    // Last: framing alone, for connections older than the capture.
    (Proto::Tcp, midstream::tcp_probe),
    (Proto::Udp, dns::udp_probe),
    (Proto::Udp, radius::probe),
    (Proto::Udp, quic::probe),
    // Vendor DTLS that the plain DTLS parser would miss or call plain DTLS.
    (Proto::Udp, sslvpn::dtls_probe),
    (Proto::Udp, tls::dtls_probe),
    (Proto::Udp, stun::probe),
    (Proto::Udp, wireguard::probe),
    (Proto::Udp, ipsec::probe),
    (Proto::Udp, openvpn::udp_probe),
    (Proto::Udp, rdp::udp_probe),
    // Last: data packets alone, for tunnels older than the capture.
    (Proto::Udp, midstream::udp_probe),
];

/// TLS details as a flow holds them (shared once dissection is over; see [`super::shared`]).
pub fn tls_details(value: TlsDetails) -> Option<Arc<TlsDetails>> {
    Some(Arc::new(value))
}

/// The protocol details written into flow records. A flow has at most TLS (alone, or
/// inside RDP) and one other protocol, so they take two fields, not one per protocol: the
/// box a dissected flow keeps is 32 bytes (memory per flow).
#[derive(Clone, Debug, Default)]
pub struct Details {
    pub tls: Option<Arc<TlsDetails>>,
    pub other: Option<Protocol>,
    /// What named the remote-access tool.
    pub tool_evidence: Option<Evidence>,
    /// The flow goes to a remote-access vendor's relay or broker, not to the peer itself.
    pub relay: bool,
}

/// What named a remote-access tool; a byte where a string reference took 16 (every
/// identified flow carries one). Written as [`Evidence::as_str`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    Sni,
    Alpn,
    CertName,
    HttpHost,
    DnsName,
    Payload,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::Sni => "sni",
            Evidence::Alpn => "alpn",
            Evidence::CertName => "cert_name",
            Evidence::HttpHost => "http_host",
            Evidence::DnsName => "dns_name",
            Evidence::Payload => "payload",
        }
    }
}

/// A dissector's summary type: what a flow record carries of its protocol, written as the
/// record's field by serde_json unless the type has a faster writer.
pub trait Summary: Serialize {
    fn write_json(&self, o: &mut Object<'_>, key: Key) -> serde_json::Result<()> {
        o.serde(key, self)
    }
}

/// Declares [`Protocol`] from one list: each line is a variant, the flow-record field its
/// details go into (the JSON name) and its summary type. The order is the records' field
/// order (a public contract, DESIGN §4).
macro_rules! protocols {
    ($($(#[$doc:meta])* $variant:ident($field:ident): $details:ty,)*) => {
        /// The details of the protocol besides TLS, each boxed (or shared) so the enum
        /// stays small.
        #[derive(Clone, Debug)]
        pub enum Protocol {
            $($(#[$doc])* $variant($details),)*
        }

        impl Protocol {
            /// Writes the details as the flow record's field.
            pub fn write_json(&self, o: &mut Object<'_>) -> serde_json::Result<()> {
                match self {
                    $(Protocol::$variant(d) => Summary::write_json(&**d, o, key!($field)),)*
                }
            }

            /// Each variant with default details.
            #[cfg(test)]
            pub(crate) fn every() -> Vec<Protocol> {
                vec![$(Protocol::$variant(Default::default()),)*]
            }
        }

        /// As the flow record's field: a map of one entry, which the record flattens.
        impl Serialize for Protocol {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(1))?;
                match self {
                    $(Protocol::$variant(d) => map.serialize_entry(stringify!($field), d)?,)*
                }
                map.end()
            }
        }
    };
}

protocols! {
    Quic(quic): Box<quic::QuicDetails>,
    Dns(dns): Box<dns::DnsDetails>,
    Http(http): Box<http::HttpDetails>,
    /// Shared: flows of the same software point at one copy (see [`super::shared`]).
    Ssh(ssh): Arc<ssh::SshDetails>,
    Rdp(rdp): Box<rdp::RdpDetails>,
    Rfb(rfb): Box<rfb::Session>,
    Socks(socks): Box<socks::SocksDetails>,
    Wireguard(wireguard): Box<wireguard::WireguardDetails>,
    Openvpn(openvpn): Box<openvpn::OpenvpnDetails>,
    Ipsec(ipsec): Box<ipsec::IpsecDetails>,
    Stun(stun): Box<stun::StunDetails>,
    Radius(radius): Box<radius::Accounting>,
}

/// `Some(variant(Box::new(value)))`, for the probes.
pub fn protocol<T>(variant: fn(Box<T>) -> Protocol, value: T) -> Option<Protocol> {
    Some(variant(Box::new(value)))
}

/// The outcome of one identification pass.
#[derive(Clone, Debug, Default)]
pub struct Identification {
    pub app: Option<App>,
    pub guess: Option<App>,
    pub details: Details,
    /// Every parser that applies has its answer: the buffers can go.
    pub done: bool,
    /// The label came from data packets alone (a UDP tunnel whose handshake came before the
    /// capture): the flow's history gets `~`, as a TCP flow without its SYN does.
    pub picked_up_mid_stream: bool,
}

impl Details {
    /// Nothing was found: no protocol details, no tool evidence.
    pub fn is_empty(&self) -> bool {
        self.tls.is_none() && self.other.is_none() && self.tool_evidence.is_none() && !self.relay
    }

    /// A TURN allocation answered with a relayed address (RFC 8656): the media go through
    /// a relay.
    pub fn turn_relayed(&self) -> bool {
        matches!(&self.other, Some(Protocol::Stun(s)) if s.relayed)
    }

    /// The HTTP CONNECT request, when the flow is one.
    pub fn http_connect(&self) -> Option<&http::HttpDetails> {
        match &self.other {
            Some(Protocol::Http(h)) if h.connect => Some(h),
            _ => None,
        }
    }

    /// The DNS exchange, when the flow is one.
    pub fn dns(&self) -> Option<&dns::DnsDetails> {
        match &self.other {
            Some(Protocol::Dns(d)) => Some(d),
            _ => None,
        }
    }
}

pub fn identify(input: &Input<'_>) -> Identification {
    let mut id = Identification::default();
    let settled = match input.proto {
        Proto::Tcp | Proto::Udp => probe(input, &mut id),
        Proto::Icmp | Proto::Icmpv6 => true,
    };
    names(input, &mut id);
    let proto = match input.proto {
        Proto::Udp => tools::Proto::Udp,
        _ => tools::Proto::Tcp,
    };
    if id.app.is_none() {
        let (client, server) = match input.proto {
            Proto::Tcp => (Some(input.client), Some(input.server)),
            _ => (
                input.client_datagrams.first().map(Vec::as_slice),
                input.server_datagrams.first().map(Vec::as_slice),
            ),
        };
        let by_bytes = client
            .filter(|c| !c.is_empty())
            .and_then(|c| tools::match_payload(proto, true, c))
            .or_else(|| {
                server
                    .filter(|s| !s.is_empty())
                    .and_then(|s| tools::match_payload(proto, false, s))
            });
        if let Some(app) = by_bytes {
            id.app = Some(app);
            id.details.tool_evidence = Some(Evidence::Payload);
        }
    }
    let all_closed = match input.proto {
        Proto::Tcp => input.client_closed && input.server_closed,
        _ => {
            input.client_datagrams.len() >= crate::flows::flow::MAX_DATAGRAMS
                || input.server_datagrams.len() >= crate::flows::flow::MAX_DATAGRAMS
        }
    };
    id.done = settled || all_closed;
    if id.app.is_none() && id.done {
        id.guess = tools::port_guess(proto, input.resp_port);
    }
    id
}

/// Runs the probes of the flow's transport in [`PROBES`] order until one decides; returns
/// whether identification is settled.
fn probe(input: &Input<'_>, id: &mut Identification) -> bool {
    let (client, server) = input.sent();
    if !client && !server {
        return false;
    }
    for (proto, probe) in PROBES {
        if *proto != input.proto {
            continue;
        }
        match probe(input, id) {
            Probe::No => {}
            answer => return answer == Probe::Done,
        }
    }
    // Every probe is decided by the first bytes of a direction: once both sides have sent
    // and none matched, more bytes will not change that.
    client && server
}

/// Names that point at a remote-access tool relabel the flow: a TLS session to AnyDesk is
/// AnyDesk. The strongest evidence wins: handshake names, then the DNS name.
fn names(input: &Input<'_>, id: &mut Identification) {
    if let Some((m, what, peer_cert)) = named(input, &id.details) {
        id.app = Some(m.app);
        id.details.relay = m.relay && !peer_cert;
        id.details.tool_evidence = Some(what);
    }
}

/// The tool the strongest name points at, what named it, and whether a certificate of the
/// peer itself came too.
fn named(input: &Input<'_>, d: &Details) -> Option<(tools::Match, Evidence, bool)> {
    let tls = d.tls.as_ref();
    let (quic, http) = match &d.other {
        Some(Protocol::Quic(q)) => (Some(q), None),
        Some(Protocol::Http(h)) => (None, Some(h)),
        _ => (None, None),
    };
    // In order of strength, walked without collecting them: every pass of every flow asks.
    let sni = [
        tls.and_then(|t| t.sni.as_deref()),
        quic.and_then(|q| q.sni.as_deref()),
    ];
    let sni = sni
        .into_iter()
        .flatten()
        .map(|n| (NameKind::Sni, n, Evidence::Sni));
    let alpn = tls.map(|t| t.alpn.as_slice()).unwrap_or_default();
    let alpn = alpn
        .iter()
        .map(|a| (NameKind::Alpn, a.as_str(), Evidence::Alpn));
    let certs = tls
        .into_iter()
        .flat_map(|t| t.cert_subject.iter().chain(&t.cert_san));
    let certs = certs.map(|n| (NameKind::CertName, n.as_str(), Evidence::CertName));
    let host = http.and_then(|h| h.host.as_deref()).map(|h| {
        (
            NameKind::Sni,
            h.split(':').next().unwrap_or(h),
            Evidence::HttpHost,
        )
    });
    let mut candidates = sni.chain(alpn).chain(certs.clone()).chain(host);
    let by_handshake = candidates.find_map(|(kind, name, what)| {
        // A certificate subject is a DN: try its CN and O values.
        if kind == NameKind::CertName && name.contains('=') {
            name.split(',').find_map(|part| {
                let (_, v) = part.split_once('=')?;
                tools::match_name(kind, v.trim()).map(|m| (m, what))
            })
        } else {
            tools::match_name(kind, name).map(|m| (m, what))
        }
    });
    let hit = by_handshake.or(input.dns_tool.map(|m| (m, Evidence::DnsName)));
    // A peer's own certificate (AnyDesk's "AnyDesk Client") says the flow reached the
    // peer, whatever the ClientHello offered to a relay.
    let peer_cert = |m: tools::Match| {
        certs.clone().any(|(kind, name, _)| {
            tools::match_name(kind, name).is_some_and(|c| c.app == m.app && !c.relay)
        })
    };
    hit.map(|(m, what)| (m, what, peer_cert(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every identified flow keeps a boxed `Details` until it ends: a memory budget (an
    /// allocator class of 32 bytes).
    #[test]
    fn details_fit_their_budget() {
        assert!(std::mem::size_of::<Details>() <= 32);
    }

    fn input<'a>(dns_name: Option<&str>) -> Input<'a> {
        Input {
            proto: Proto::Tcp,
            orig_port: 50000,
            resp_port: 443,
            client: b"",
            server: b"",
            client_closed: false,
            server_closed: false,
            client_datagrams: &[],
            server_datagrams: &[],
            dns_tool: dns_name.and_then(|n| tools::match_name(NameKind::DnsName, n)),
            midstream: false,
            tls: Cell::new(None),
            http: Cell::new(None),
            ja4: None,
            certs: None,
            dns_answer: None,
            dns: None,
        }
    }

    fn label_for_sni(sni: &str) -> Option<App> {
        let mut id = Identification {
            app: Some(App::Tls),
            ..Identification::default()
        };
        id.details.tls = tls_details(TlsDetails {
            sni: Some(sni.to_string()),
            ..TlsDetails::default()
        });
        names(&input(None), &mut id);
        id.app
    }

    /// Video calls, streaming, game streaming and plain downloads stay `tls`: none of
    /// their names may match a remote-access tool (issue 3, look-alikes).
    #[test]
    fn look_alikes_are_not_remote_desktop() {
        for sni in [
            "zoom.us",
            "us04web.zoom.us",
            "teams.microsoft.com",
            "meet.google.com",
            "rr3---sn-4g5e6nsz.googlevideo.com",
            "www.netflix.com",
            "video-weaver.fra05.hls.ttvnw.net",
            "steamcdn-a.akamaihd.net",
            "play.geforcenow.com",
            "download.microsoft.com",
            "objects.githubusercontent.com",
        ] {
            assert_eq!(label_for_sni(sni), Some(App::Tls), "{sni}");
        }
    }

    #[test]
    fn tool_names_relabel_the_flow_and_mark_relays() {
        assert_eq!(
            label_for_sni("relay-4e2d1b.net.anydesk.com"),
            Some(App::Anydesk)
        );
        assert_eq!(
            label_for_sni("remotedesktop-pa.googleapis.com"),
            Some(App::ChromeRemoteDesktop)
        );
        let mut id = Identification::default();
        names(&input(Some("router7.teamviewer.com")), &mut id);
        assert_eq!(id.app, Some(App::Teamviewer));
        assert_eq!(id.details.tool_evidence, Some(Evidence::DnsName));
    }

    /// A TLS 1.3 ClientHello laid out per RFC 8446 §4.1.2 (record, handshake header,
    /// legacy_version, random, empty session id, one suite, null compression) with one ALPN
    /// extension (RFC 7301 §3.1): AnyDesk's client offers `anydesk/<version>/<os>` (the prefix
    /// nDPI's tls.c matches).
    fn client_hello_with_alpn(alpn: &[u8]) -> Vec<u8> {
        let mut list = vec![alpn.len() as u8];
        list.extend_from_slice(alpn);
        let mut ext = vec![0x00, 0x10];
        ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x5a; 32]);
        body.extend_from_slice(&[0, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0, 0, 0];
        hs[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn anydesk_alpn_without_a_name_is_the_relay() {
        let hello = client_hello_with_alpn(b"anydesk/8.0.8/windows");
        let i = Input {
            client: &hello,
            client_closed: true,
            server_closed: true,
            ..input(None)
        };
        let id = identify(&i);
        assert_eq!(id.app, Some(App::Anydesk));
        assert!(id.details.relay);
        assert_eq!(id.details.tool_evidence, Some(Evidence::Alpn));
        let plain = client_hello_with_alpn(b"h2");
        let i = Input {
            client: &plain,
            ..i
        };
        let id = identify(&i);
        assert_eq!(id.app, Some(App::Tls));
        assert!(!id.details.relay);
    }

    /// The peer's own "AnyDesk Client" certificate (nDPI #916) means a direct session.
    #[test]
    fn anydesk_peer_certificate_is_not_a_relay() {
        let mut id = Identification {
            app: Some(App::Tls),
            ..Identification::default()
        };
        id.details.tls = tls_details(TlsDetails {
            alpn: vec!["anydesk/8.0.8/windows".into()],
            cert_subject: Some("CN=AnyDesk Client".into()),
            cert_san: vec!["AnyDesk Client".into()],
            ..TlsDetails::default()
        });
        names(&input(None), &mut id);
        assert_eq!(id.app, Some(App::Anydesk));
        assert!(!id.details.relay);
    }

    /// The first datagram of zeek-spicy-analyzers' tailscale_linux.pcap, header only
    /// (magic, 32-byte key, 24-byte nonce) plus 8 bytes of sealed payload.
    #[test]
    fn tailscale_disco_is_wireguard() {
        let mut d = b"TS\xf0\x9f\x92\xac".to_vec();
        d.extend_from_slice(&[0xb6; 32]);
        d.extend_from_slice(&[0x11; 24]);
        d.extend_from_slice(&[0x22; 8]);
        let datagrams = [d];
        let i = Input {
            proto: Proto::Udp,
            client_datagrams: &datagrams,
            resp_port: 41641,
            ..input(None)
        };
        let id = identify(&i);
        assert_eq!(id.app, Some(App::Wireguard));
        assert!(matches!(&id.details.other, Some(Protocol::Wireguard(w)) if w.tailscale));
        let mut short = b"TS\xf0\x9f\x92\xac".to_vec();
        short.extend_from_slice(&[0; 20]);
        let datagrams = [short];
        let i = Input {
            proto: Proto::Udp,
            client_datagrams: &datagrams,
            ..input(None)
        };
        assert_eq!(identify(&i).app, None);
    }

    /// A parser that needs more bytes holds the flow only while its direction may grow.
    #[test]
    fn a_parser_result_is_a_probe_answer() {
        let incomplete: crate::dissect::Result<()> = Err(Error::Incomplete);
        assert_eq!(Probe::of(&Ok(()), true), Probe::Done);
        assert_eq!(Probe::of(&incomplete, false), Probe::More);
        assert_eq!(Probe::of(&incomplete, true), Probe::No);
        assert_eq!(Probe::of::<()>(&Err(Error::Invalid("x")), false), Probe::No);
    }

    #[test]
    fn a_port_alone_is_only_a_guess() {
        let i = Input {
            resp_port: 3389,
            client: b"\x17\x03\x03\x00\x10random-bytes-xx",
            server: b"\x17\x03\x03\x00\x10random-bytes-yy",
            client_closed: true,
            server_closed: true,
            ..input(None)
        };
        let id = identify(&i);
        assert_eq!(id.app, None);
        assert_eq!(id.guess, Some(App::Rdp));
        assert!(id.done);
    }
}
