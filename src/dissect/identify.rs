//! Application identification: runs the protocol parsers over a flow's first bytes and
//! decides its label from what they found. The label always rests on evidence in the
//! bytes (a handshake, an SNI, a certificate, a DNS answer seen earlier); a port-only hint
//! goes into `guess`.
//!
//! Identification is re-run from the start of each direction's reassembled prefix as more
//! bytes arrive (the prefix is a few KB, so this is cheap) until every parser that applies
//! has an answer; then the flow's buffers are freed and it costs only counters.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::app::App;
use crate::decode::Proto;
use crate::dissect::tools::{self, NameKind};
use crate::dissect::{
    Error, dns, http, ipsec, midstream, openvpn, quic, radius, rdp, rfb, socks, ssh, sslvpn, stun,
    tls, wireguard,
};

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
    /// The name a DNS answer gave the responder's address, if one was seen.
    pub dns_name: Option<&'a str>,
    /// TCP: the connection was open before the capture saw it (no SYN came first), so no
    /// handshake will come: the framing decides (see [`midstream`]).
    pub midstream: bool,
    /// The TLS details an earlier pass found: a ClientHello parsed once is not parsed (nor
    /// its JA4 computed) again when the server's flight arrives.
    pub tls: Option<&'a TlsDetails>,
}

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

/// The details of the protocol besides TLS, each boxed so the enum stays small.
#[derive(Clone, Debug)]
pub enum Protocol {
    Quic(Box<QuicDetails>),
    Dns(Box<DnsDetails>),
    Http(Box<HttpDetails>),
    /// Shared: flows of the same software point at one copy (see [`super::shared`]).
    Ssh(Arc<SshDetails>),
    Rdp(Box<RdpDetails>),
    Rfb(Box<rfb::Session>),
    Socks(Box<SocksDetails>),
    Wireguard(Box<WireguardDetails>),
    Openvpn(Box<OpenvpnDetails>),
    Ipsec(Box<IpsecDetails>),
    Stun(Box<StunDetails>),
    Radius(Box<radius::Accounting>),
}

/// `Some(variant(Box::new(value)))`, for the probes.
pub fn protocol<T>(variant: fn(Box<T>) -> Protocol, value: T) -> Option<Protocol> {
    Some(variant(Box::new(value)))
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct TlsDetails {
    pub client_version: Option<u16>,
    pub version: Option<u16>,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub ja4: Option<String>,
    pub cipher: Option<u16>,
    pub server_alpn: Option<String>,
    pub cert_subject: Option<String>,
    pub cert_issuer: Option<String>,
    pub cert_san: Vec<String>,
    /// Datagram TLS (RFC 6347), as WebRTC media uses.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dtls: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QuicDetails {
    pub version: u32,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub ja4: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DnsDetails {
    pub query: Option<String>,
    pub qtype: Option<u16>,
    pub rcode: Option<u8>,
    pub answers: Vec<DnsAnswer>,
}

/// An address or CNAME answer, written as its text either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DnsAnswer {
    Addr(IpAddr),
    Name(String),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HttpDetails {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub status: Option<u16>,
    /// An explicit proxy request (RFC 9110 §9.3.6).
    pub connect: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct SshDetails {
    // Boxed strings, and the whole shared once dissection is over: one of these stays with
    // every SSH flow until it ends.
    pub client: Option<Box<str>>,
    pub server: Option<Box<str>>,
    pub hassh: Option<Box<str>>,
    pub hassh_server: Option<Box<str>>,
    pub kex: Option<Box<str>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RdpDetails {
    pub cookie: Option<String>,
    pub requested_protocols: Vec<&'static str>,
    pub selected_protocol: Option<&'static str>,
    pub failure_code: Option<u32>,
    /// The session moved to TLS/CredSSP after the X.224 exchange.
    pub tls: bool,
    /// MS-RDPEUDP: the UDP transport's SYN (and SYN/ACK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<rdp::RdpeudpSyn>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SocksDetails {
    pub version: u8,
    pub command: u8,
    pub target: String,
    pub granted: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WireguardDetails {
    pub handshake_initiation: bool,
    pub handshake_response: bool,
    pub transport: bool,
    /// Tailscale: its disco messages travel beside the WireGuard packets.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tailscale: bool,
}

/// Tailscale's disco message header (tailscale.com/disco, disco.go): the 6-byte magic
/// "TS💬", the sender's 32-byte disco key and a 24-byte nonce, then sealed payload.
const TAILSCALE_DISCO_MAGIC: &[u8] = b"TS\xf0\x9f\x92\xac";
const TAILSCALE_DISCO_HEADER: usize = 6 + 32 + 24;

fn is_tailscale_disco(datagram: &[u8]) -> bool {
    datagram.starts_with(TAILSCALE_DISCO_MAGIC) && datagram.len() > TAILSCALE_DISCO_HEADER
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct OpenvpnDetails {
    pub opcode: u8,
    pub tls_auth: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct IpsecDetails {
    pub ike_version: Option<u8>,
    pub exchange: Option<u8>,
    pub esp: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StunDetails {
    pub method: Option<&'static str>,
    pub software: Option<String>,
    /// A TURN allocation answered with a relayed address: media goes through a relay.
    pub relayed: bool,
    pub channel_data: bool,
}

/// The outcome of one identification pass.
#[derive(Clone, Debug, Default)]
pub struct Identification {
    pub app: Option<App>,
    pub guess: Option<App>,
    pub details: Details,
    /// Every parser that applies has its answer: the buffers can go.
    pub done: bool,
    /// The first server datagram as the DNS message it parsed to, so that the name cache
    /// is fed without parsing it a second time.
    pub dns_answer: Option<dns::Message>,
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
    pub fn http_connect(&self) -> Option<&HttpDetails> {
        match &self.other {
            Some(Protocol::Http(h)) if h.connect => Some(h),
            _ => None,
        }
    }
}

/// Parser state of one pass: did it find the protocol, and is it finished.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    No,
    Partial,
    Full,
}

fn found<T>(r: &crate::dissect::Result<T>, closed: bool) -> Found {
    match r {
        Ok(_) => Found::Full,
        Err(Error::Incomplete) if !closed => Found::Partial,
        Err(_) => Found::No,
    }
}

pub fn identify(input: &Input<'_>) -> Identification {
    let mut id = Identification::default();
    let settled = match input.proto {
        Proto::Tcp => tcp(input, &mut id),
        Proto::Udp => udp(input, &mut id),
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

/// TCP probes, each guarded by the first bytes so that only plausible parsers run.
/// Returns whether identification is settled.
fn tcp(input: &Input<'_>, id: &mut Identification) -> bool {
    let (c, s) = (input.client, input.server);
    let (cc, sc) = (input.client_closed, input.server_closed);
    if c.is_empty() && s.is_empty() {
        return false;
    }
    // SSH: either side may speak first (RFC 4253 §4.2).
    if c.starts_with(b"SSH-") || s.starts_with(b"SSH-") {
        return ssh_probe(c, s, cc, sc, id);
    }
    if c.first() == Some(&0x16) {
        let f = tls_probe(c, s, cc, sc, input.tls, id);
        if f != Found::No {
            return f == Found::Full;
        }
    }
    if c.starts_with(&[0x03, 0x00]) {
        let f = rdp_probe(c, s, cc, sc, id);
        if f != Found::No {
            return f == Found::Full;
        }
    }
    if s.starts_with(b"RFB ") {
        let r = rfb::parse_session(c, s);
        if let Ok(session) = &r {
            id.app = Some(App::Vnc);
            id.details.other = protocol(Protocol::Rfb, session.clone());
        }
        // The session summary grows with the handshake; settle once the auth is chosen.
        let settled = r.as_ref().is_ok_and(|s| s.auth_type.is_some()) || (cc && sc);
        if id.app.is_some() {
            return settled;
        }
    }
    if c.first().is_some_and(|b| b.is_ascii_uppercase()) {
        let req = http::parse_request(c);
        if let Ok(req) = &req {
            let resp = http::parse_response(s).ok();
            // A vendor SSL-VPN's tunnel request, when the HTTP is in clear.
            id.app = Some(sslvpn::tunnel_request(c).unwrap_or(App::Http));
            id.details.other = protocol(
                Protocol::Http,
                HttpDetails {
                    connect: req.method.eq_ignore_ascii_case("CONNECT"),
                    method: req.method.clone(),
                    target: req.target.clone(),
                    host: req.host.clone(),
                    user_agent: req.user_agent.clone(),
                    status: resp.as_ref().map(|r| r.status),
                },
            );
            return resp.is_some() || sc;
        }
        if found(&req, cc) == Found::Partial {
            return false;
        }
    }
    if matches!(c.first(), Some(4) | Some(5)) {
        let req = socks::parse_request(c);
        if let Ok(req) = &req {
            let version = req.version;
            let reply = socks::parse_reply(s, version);
            // A SOCKS request alone is a guess; the server's well-formed reply confirms it.
            if let Ok(reply) = &reply {
                id.app = Some(App::Socks);
                id.details.other = protocol(
                    Protocol::Socks,
                    SocksDetails {
                        version,
                        command: req.command,
                        target: match (&req.host, req.addr) {
                            (Some(h), _) => format!("{h}:{}", req.port),
                            (None, Some(a)) => format!("{a}:{}", req.port),
                            (None, None) => format!(":{}", req.port),
                        },
                        granted: Some(reply.granted),
                    },
                );
                return true;
            }
            if found(&reply, sc) == Found::Partial {
                return false;
            }
        } else if found(&req, cc) == Found::Partial {
            return false;
        }
    }
    if let Ok(p) = openvpn::parse(c, true)
        && openvpn::is_hard_reset(p.opcode)
    {
        let answered = openvpn::parse(s, true).is_ok_and(|r| openvpn::is_hard_reset(r.opcode));
        if answered || s.is_empty() {
            id.app = Some(App::Openvpn);
            id.details.other = protocol(
                Protocol::Openvpn,
                OpenvpnDetails {
                    opcode: p.opcode,
                    tls_auth: p.hmac_len.is_some(),
                },
            );
            return answered || sc;
        }
    }
    if (input.resp_port == 53 || input.orig_port == 53)
        && let Ok(msgs) = dns::parse_tcp_stream(c)
        && !msgs.is_empty()
    {
        id.app = Some(App::Dns);
        let resp = dns::parse_tcp_stream(s).ok();
        id.details.other = protocol(
            Protocol::Dns,
            dns_details(
                msgs.into_iter().next(),
                resp.as_ref().and_then(|r| r.first()),
            ),
        );
        return resp.is_some_and(|r| !r.is_empty()) || sc;
    }
    if input.midstream {
        if let Some(app) = midstream::tcp(c, s) {
            id.app = Some(app);
            return true;
        }
        // A chain needs a few frames: wait while the prefix fills.
        return cc && sc;
    }
    // Every probe is decided by the first bytes of a direction: once both sides have sent
    // and none matched, more bytes will not change that.
    !c.is_empty() && !s.is_empty()
}

fn ssh_probe(c: &[u8], s: &[u8], cc: bool, sc: bool, id: &mut Identification) -> bool {
    let cb = ssh::parse_banner(c);
    let sb = ssh::parse_banner(s);
    if cb.is_err() && sb.is_err() {
        return found(&cb, cc) == Found::No && found(&sb, sc) == Found::No;
    }
    id.app = Some(App::Ssh);
    let mut d = SshDetails {
        client: cb.as_ref().ok().map(|b| b.raw.as_str().into()),
        server: sb.as_ref().ok().map(|b| b.raw.as_str().into()),
        ..SshDetails::default()
    };
    let ck = cb
        .as_ref()
        .ok()
        .map(|b| ssh::parse_kexinit(c.get(b.len..).unwrap_or_default()));
    let sk = sb
        .as_ref()
        .ok()
        .map(|b| ssh::parse_kexinit(s.get(b.len..).unwrap_or_default()));
    if let Some(Ok(k)) = &ck {
        d.hassh = Some(ssh::hassh(k, true).1.into());
        d.kex = k.kex.first().map(|k| k.as_str().into());
    }
    if let Some(Ok(k)) = &sk {
        d.hassh_server = Some(ssh::hassh(k, false).1.into());
    }
    id.details.other = Some(Protocol::Ssh(Arc::new(d)));
    let settled = |k: &Option<crate::dissect::Result<ssh::KexInit>>, closed: bool| match k {
        Some(r) => found(r, closed) != Found::Partial,
        None => closed,
    };
    settled(&ck, cc) && settled(&sk, sc)
}

fn tls_probe(
    c: &[u8],
    s: &[u8],
    cc: bool,
    sc: bool,
    known: Option<&TlsDetails>,
    id: &mut Identification,
) -> Found {
    let mut d = match known.filter(|k| k.ja4.is_some() && !k.dtls) {
        // The client's part of an earlier pass: the ClientHello was whole then.
        Some(k) => TlsDetails {
            client_version: k.client_version,
            sni: k.sni.clone(),
            alpn: k.alpn.clone(),
            ja4: k.ja4.clone(),
            ..TlsDetails::default()
        },
        None => {
            let hello = tls::parse_client_hello(c);
            let Ok(hello) = hello else {
                return found(&hello, cc);
            };
            TlsDetails {
                client_version: Some(hello.legacy_version),
                sni: hello.sni,
                alpn: hello.alpn,
                ja4: Some(hello.ja4),
                ..TlsDetails::default()
            }
        }
    };
    id.app = Some(App::Tls);
    let server = tls::parse_server_hello(s);
    if let Ok(sh) = &server {
        d.version = Some(sh.version);
        d.cipher = Some(sh.cipher);
        d.server_alpn = sh.alpn.clone();
    }
    let cert = tls::parse_server_certificate(s);
    if let Ok(Some(cert)) = &cert {
        d.cert_subject = Some(cert.subject.clone());
        d.cert_issuer = Some(cert.issuer.clone());
        d.cert_san = cert.san_dns.iter().take(8).cloned().collect();
        d.cert_san.extend(cert.subject_cn.clone());
    }
    id.details.tls = tls_details(d);
    if found(&server, sc) == Found::Partial || found(&cert, sc) == Found::Partial {
        Found::Partial
    } else {
        Found::Full
    }
}

fn rdp_probe(c: &[u8], s: &[u8], cc: bool, sc: bool, id: &mut Identification) -> Found {
    let req = rdp::parse_connection_request(c);
    let Ok(req) = req else {
        return found(&req, cc);
    };
    id.app = Some(App::Rdp);
    let confirm = rdp::parse_connection_confirm(s);
    let mut d = RdpDetails {
        cookie: req.cookie.clone(),
        requested_protocols: req
            .requested_protocols
            .map(rdp::protocol_names)
            .unwrap_or_default(),
        ..RdpDetails::default()
    };
    if let Ok(cc) = &confirm {
        d.selected_protocol = cc.selected_protocol.and_then(rdp::selected_protocol_name);
        d.failure_code = cc.failure_code;
        d.tls = cc.selected_protocol.is_some_and(|p| p != 0);
    }
    // A TLS ClientHello after the X.224 request: record its fingerprint as well.
    let tpkt_len = c
        .get(2..4)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
    if let Some(rest) = tpkt_len.and_then(|n| c.get(n..))
        && let Ok(hello) = tls::parse_client_hello(rest)
    {
        d.tls = true;
        id.details.tls = tls_details(TlsDetails {
            client_version: Some(hello.legacy_version),
            sni: hello.sni,
            alpn: hello.alpn,
            ja4: Some(hello.ja4),
            ..TlsDetails::default()
        });
    }
    id.details.other = protocol(Protocol::Rdp, d);
    if found(&confirm, sc) == Found::Partial {
        Found::Partial
    } else {
        Found::Full
    }
}

/// UDP probes over the first datagrams; returns whether identification is settled.
fn udp(input: &Input<'_>, id: &mut Identification) -> bool {
    let (cd, sd) = (input.client_datagrams, input.server_datagrams);
    let Some(first) = cd.first().or(sd.first()) else {
        return false;
    };
    let ports = [input.orig_port, input.resp_port];
    // Compared one by one: `contains` on a slice of u16 is a call, not inlined.
    let on = |p: &[u16]| p.iter().any(|&x| x == ports[0] || x == ports[1]);
    if on(&[53, 137, 5353, 5355])
        && let Ok(q) = dns::parse_message(first)
    {
        id.app = Some(App::Dns);
        let answer = sd.first().and_then(|d| dns::parse_message(d).ok());
        id.details.other = protocol(Protocol::Dns, dns_details(Some(q), answer.as_ref()));
        // Settled with the answer, so the record carries it.
        id.dns_answer = answer;
        return id.dns_answer.is_some();
    }
    if on(&[1812, 1813, 1645, 1646])
        && let Ok(p) = radius::parse(first)
    {
        id.app = Some(App::Radius);
        id.details.other = p.accounting.map(|a| Protocol::Radius(Box::new(a)));
        return true;
    }
    if first.first().is_some_and(|b| b & 0xc0 == 0xc0)
        && let Ok(initial) = quic::parse_initial(first)
    {
        let initials: Vec<quic::Initial> = cd
            .iter()
            .filter_map(|d| quic::parse_initial(d).ok())
            .collect();
        let hello = quic::client_hello(&initials);
        id.app = Some(App::Quic);
        let mut d = QuicDetails {
            version: initial.version,
            ..QuicDetails::default()
        };
        let settled = hello.is_ok() || cd.len() >= 3;
        // The hello's JA4 was computed for QUIC as it was parsed.
        if let Ok(h) = hello {
            d.sni = h.sni;
            d.alpn = h.alpn;
            d.ja4 = Some(h.ja4);
        }
        id.details.other = protocol(Protocol::Quic, d);
        return settled;
    }
    if sslvpn::is_fortinet_dtls_hello(first) {
        id.app = Some(App::FortinetSslvpn);
        id.details.tool_evidence = Some(Evidence::Payload);
        return true;
    }
    if sslvpn::is_anyconnect_legacy_dtls(first) {
        id.app = Some(App::Anyconnect);
        id.details.tool_evidence = Some(Evidence::Payload);
        return true;
    }
    if let Ok(h) = tls::parse_dtls_client_hello(first) {
        if sslvpn::is_anyconnect_dtls(first, &h) {
            id.app = Some(App::Anyconnect);
            id.details.tool_evidence = Some(Evidence::Payload);
        }
        id.details.tls = tls_details(TlsDetails {
            client_version: Some(h.legacy_version),
            sni: h.sni,
            alpn: h.alpn,
            ja4: Some(h.ja4),
            dtls: true,
            ..TlsDetails::default()
        });
        return true;
    }
    let stun_msgs: Vec<stun::Message> = cd
        .iter()
        .chain(sd)
        .filter_map(|d| stun::parse(d).ok())
        .collect();
    if !stun_msgs.is_empty() {
        id.app = Some(App::Stun);
        id.details.other = protocol(
            Protocol::Stun,
            StunDetails {
                method: stun_msgs.first().and_then(|m| stun::method_name(m.method)),
                software: stun_msgs.iter().find_map(|m| m.software.clone()),
                relayed: stun_msgs.iter().any(|m| m.xor_relayed.is_some()),
                channel_data: cd.iter().chain(sd).any(|d| stun::is_channel_data(d)),
            },
        );
        // Settle once a request has its answer, so a TURN allocation's relayed address
        // (in the success response) is seen.
        return stun_msgs
            .iter()
            .any(|m| matches!(m.class, stun::Class::Success | stun::Class::Error));
    }
    if cd.iter().chain(sd).any(|d| is_tailscale_disco(d)) {
        id.app = Some(App::Wireguard);
        id.details.other = protocol(
            Protocol::Wireguard,
            WireguardDetails {
                tailscale: true,
                ..WireguardDetails::default()
            },
        );
        return true;
    }
    let wg: Vec<wireguard::Message> = cd
        .iter()
        .chain(sd)
        .filter_map(|d| wireguard::parse(d).ok())
        .collect();
    let initiation = wg
        .iter()
        .any(|m| matches!(m, wireguard::Message::HandshakeInitiation { .. }));
    let response = wg
        .iter()
        .any(|m| matches!(m, wireguard::Message::HandshakeResponse { .. }));
    let transport = wg
        .iter()
        .any(|m| matches!(m, wireguard::Message::Transport { .. }));
    // One message type alone is too weak (transport packets are just sized bytes): the
    // handshake, or a handshake message with transport, identifies WireGuard.
    if (initiation || response) && (initiation && response || transport) {
        id.app = Some(App::Wireguard);
        id.details.other = protocol(
            Protocol::Wireguard,
            WireguardDetails {
                handshake_initiation: initiation,
                handshake_response: response,
                transport,
                tailscale: false,
            },
        );
        return true;
    }
    if on(&[500, 4500]) {
        let natt = ports.contains(&4500);
        if let Ok(ike) = ipsec::parse_ike(first, natt) {
            id.app = Some(App::Ipsec);
            id.details.other = protocol(
                Protocol::Ipsec,
                IpsecDetails {
                    ike_version: Some(ike.version),
                    exchange: Some(ike.exchange),
                    esp: false,
                },
            );
            return true;
        }
        if natt && ipsec::parse_esp(first).is_ok() && !ipsec::is_nat_keepalive(first) {
            id.app = Some(App::Ipsec);
            id.details.other = protocol(
                Protocol::Ipsec,
                IpsecDetails {
                    esp: true,
                    ..IpsecDetails::default()
                },
            );
            return true;
        }
    }
    // OpenVPN over UDP: a client hard reset answered by a server hard reset. One packet
    // alone is too weak (a NetBIOS datagram can look like a reset).
    if let Some(Ok(p)) = cd.first().map(|d| openvpn::parse(d, false))
        && matches!(
            p.opcode,
            openvpn::P_CONTROL_HARD_RESET_CLIENT_V1
                | openvpn::P_CONTROL_HARD_RESET_CLIENT_V2
                | openvpn::P_CONTROL_HARD_RESET_CLIENT_V3
        )
    {
        let answered = sd
            .first()
            .map(|d| openvpn::parse(d, false))
            .is_some_and(|r| {
                r.is_ok_and(|r| {
                    matches!(
                        r.opcode,
                        openvpn::P_CONTROL_HARD_RESET_SERVER_V1
                            | openvpn::P_CONTROL_HARD_RESET_SERVER_V2
                    )
                })
            });
        if answered {
            id.app = Some(App::Openvpn);
            id.details.other = protocol(
                Protocol::Openvpn,
                OpenvpnDetails {
                    opcode: p.opcode,
                    tls_auth: p.hmac_len.is_some(),
                },
            );
            return true;
        }
        if sd.is_empty() {
            return false;
        }
    }
    if let Ok(syn) = rdp::parse_rdpeudp_syn(first) {
        id.app = Some(App::Rdp);
        let synack = sd.first().and_then(|d| rdp::parse_rdpeudp_syn(d).ok());
        id.details.other = protocol(
            Protocol::Rdp,
            RdpDetails {
                udp: Some(synack.unwrap_or(syn)),
                ..RdpDetails::default()
            },
        );
        return true;
    }
    // A tunnel's data packets, its handshake before the capture: their chain decides.
    if let Some(app) = midstream::udp(cd).or_else(|| midstream::udp(sd)) {
        id.app = Some(app);
        id.picked_up_mid_stream = true;
        return true;
    }
    if midstream::could_chain(first) {
        return cd.len() >= midstream::MIN_CHAIN && sd.len() >= midstream::MIN_CHAIN;
    }
    // As for TCP: both sides spoke and nothing matched.
    !cd.is_empty() && !sd.is_empty()
}

/// The query is taken by value: its first question's name moves into the details, where a
/// copy would cost an allocation on every pass over a DNS flow. The response is borrowed, as
/// the name cache is fed from it afterwards.
fn dns_details(q: Option<dns::Message>, r: Option<&dns::Message>) -> DnsDetails {
    let question = q.and_then(|m| m.questions.into_iter().next());
    DnsDetails {
        qtype: question.as_ref().map(|q| q.qtype),
        query: question.map(|q| q.name),
        rcode: r.map(|m| m.rcode),
        answers: r
            .map(|m| {
                m.answers
                    .iter()
                    .filter_map(|a| match &a.data {
                        dns::AnswerData::Addr(ip) => Some(DnsAnswer::Addr(*ip)),
                        dns::AnswerData::Cname(n) => Some(DnsAnswer::Name(n.clone())),
                        dns::AnswerData::Other(_) => None,
                    })
                    .take(16)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Names that point at a remote-access tool relabel the flow: a TLS session to AnyDesk is
/// AnyDesk. The strongest evidence wins: handshake names, then the DNS name.
fn names(input: &Input<'_>, id: &mut Identification) {
    let d = &id.details;
    let tls = d.tls.as_ref();
    let (quic, http) = match &d.other {
        Some(Protocol::Quic(q)) => (Some(q), None),
        Some(Protocol::Http(h)) => (None, Some(h)),
        _ => (None, None),
    };
    let mut candidates: Vec<(NameKind, &str, Evidence)> = Vec::new();
    for sni in [
        tls.and_then(|t| t.sni.as_deref()),
        quic.and_then(|q| q.sni.as_deref()),
    ]
    .into_iter()
    .flatten()
    {
        candidates.push((NameKind::Sni, sni, Evidence::Sni));
    }
    for alpn in tls.map(|t| t.alpn.as_slice()).unwrap_or_default() {
        candidates.push((NameKind::Alpn, alpn, Evidence::Alpn));
    }
    if let Some(t) = tls {
        for name in t.cert_subject.iter().chain(t.cert_san.iter()) {
            candidates.push((NameKind::CertName, name, Evidence::CertName));
        }
    }
    if let Some(h) = http.and_then(|h| h.host.as_deref()) {
        candidates.push((
            NameKind::Sni,
            h.split(':').next().unwrap_or(h),
            Evidence::HttpHost,
        ));
    }
    if let Some(n) = input.dns_name {
        candidates.push((NameKind::DnsName, n, Evidence::DnsName));
    }
    let hit = candidates.iter().find_map(|(kind, name, what)| {
        // A certificate subject is a DN: try its CN and O values.
        if *kind == NameKind::CertName && name.contains('=') {
            name.split(',').find_map(|part| {
                let (_, v) = part.split_once('=')?;
                tools::match_name(*kind, v.trim()).map(|m| (m, *what))
            })
        } else {
            tools::match_name(*kind, name).map(|m| (m, *what))
        }
    });
    if let Some((m, what)) = hit {
        // A peer's own certificate (AnyDesk's "AnyDesk Client") says the flow reached the
        // peer, whatever the ClientHello offered to a relay.
        let peer_cert = candidates.iter().any(|(kind, name, _)| {
            *kind == NameKind::CertName
                && tools::match_name(*kind, name).is_some_and(|c| c.app == m.app && !c.relay)
        });
        id.app = Some(m.app);
        id.details.relay = m.relay && !peer_cert;
        id.details.tool_evidence = Some(what);
    }
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

    fn input<'a>(dns_name: Option<&'a str>) -> Input<'a> {
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
            dns_name,
            midstream: false,
            tls: None,
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
