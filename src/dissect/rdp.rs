//! RDP: the X.224 connection request/confirm that opens every RDP/TCP session, and the
//! RDPEUDP SYN that opens the UDP transport. Everything after is TLS or RDP-encrypted.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol, tls_details};
use super::tls::{self, TlsDetails};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;

/// Cookie and routing-token text is kept up to this many bytes.
const MAX_TEXT: usize = 128;

/// RFC 1006 §6 TPKT header: version 3, reserved, u16 big-endian length of the whole TPKT.
mod tpkt {
    pub const VERSION: usize = 0;
    pub const LENGTH: std::ops::Range<usize> = 2..4;
    pub const HEADER: usize = 4;
}
/// X.224 (ITU-T X.224 §13.3/13.4) fixed part after TPKT: LI, code, dst-ref, src-ref, class.
mod x224 {
    pub const LI: usize = 4;
    pub const CODE: usize = 5;
    pub const VARIABLE: usize = 11;
    pub const CR: u8 = 0xE0;
    pub const CC: u8 = 0xD0;
}
/// MS-RDPBCGR 2.2.1.1.1 / 2.2.1.2.1 / 2.2.1.2.2: type, flags, u16le length = 8, u32le value.
mod neg {
    pub const REQ: u8 = 0x01;
    pub const RSP: u8 = 0x02;
    pub const FAILURE: u8 = 0x03;
    pub const LEN: usize = 8;
}

/// Client X.224 Connection Request PDU, MS-RDPBCGR 2.2.1.1.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionRequest {
    /// The `mstshash=` value of "Cookie: mstshash=IDENTIFIER\r\n" (optional, zeek/zeek#4237).
    pub cookie: Option<String>,
    /// Any other CR LF terminated token, e.g. "Cookie: msts=..." from a load balancer.
    pub routing_token: Option<String>,
    /// RDP_NEG_REQ requestedProtocols (MS-RDPBCGR 2.2.1.1.1), absent for legacy clients.
    pub requested_protocols: Option<u32>,
    pub flags: Option<u8>,
}

/// Server X.224 Connection Confirm PDU, MS-RDPBCGR 2.2.1.2.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionConfirm {
    /// RDP_NEG_RSP selectedProtocol (2.2.1.2.1).
    pub selected_protocol: Option<u32>,
    /// RDP_NEG_FAILURE failureCode (2.2.1.2.2).
    pub failure_code: Option<u32>,
}

/// Returns the X.224 TPDU's variable part (everything after the 7-byte fixed header, up to
/// the TPKT end) once the whole TPKT is present and its code matches.
fn tpdu(stream: &[u8], code: u8) -> Result<&[u8]> {
    if stream.get(tpkt::VERSION).is_some_and(|&v| v != 3) || stream.get(1).is_some_and(|&r| r != 0)
    {
        return Err(Error::Invalid("not tpkt"));
    }
    let len = stream
        .get(tpkt::LENGTH)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or(Error::Incomplete)?;
    if len < x224::VARIABLE {
        return Err(Error::Invalid("tpkt length"));
    }
    if let Some(&li) = stream.get(x224::LI)
        && (li < 6 || tpkt::HEADER + 1 + li as usize > len)
    {
        return Err(Error::Invalid("x224 length indicator"));
    }
    if stream.get(x224::CODE).is_some_and(|&c| c & 0xF0 != code) {
        return Err(Error::Invalid("x224 tpdu code"));
    }
    stream.get(x224::VARIABLE..len).ok_or(Error::Incomplete)
}

/// Reads the optional 8-byte negotiation structure after the X.224 header: (type, flags, value).
fn negotiation(b: &[u8]) -> Result<Option<(u8, u8, u32)>> {
    let Some(s) = b.get(..neg::LEN) else {
        return if b.is_empty() {
            Ok(None)
        } else {
            Err(Error::Invalid("rdp negotiation truncated"))
        };
    };
    if u16::from_le_bytes([s[2], s[3]]) as usize != neg::LEN {
        return Err(Error::Invalid("rdp negotiation length"));
    }
    Ok(Some((
        s[0],
        s[1],
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
    )))
}

/// Parses the client's first TPKT: X.224 CR with optional cookie or routing token and
/// optional RDP_NEG_REQ (MS-RDPBCGR 2.2.1.1).
pub fn parse_connection_request(stream: &[u8]) -> Result<ConnectionRequest> {
    let mut rest = tpdu(stream, x224::CR)?;
    let mut req = ConnectionRequest {
        cookie: None,
        routing_token: None,
        requested_protocols: None,
        flags: None,
    };
    if rest.starts_with(b"Cookie: ") {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Error::Invalid("rdp cookie without crlf"))?;
        let token = &rest[..end];
        let token = &token[..token.len().min(MAX_TEXT)];
        match token.strip_prefix(b"Cookie: mstshash=") {
            Some(v) => req.cookie = Some(String::from_utf8_lossy(v).into_owned()),
            None => req.routing_token = Some(String::from_utf8_lossy(token).into_owned()),
        }
        rest = &rest[end + 2..];
    }
    match negotiation(rest)? {
        Some((neg::REQ, flags, protocols)) => {
            req.flags = Some(flags);
            req.requested_protocols = Some(protocols);
        }
        Some(_) => return Err(Error::Invalid("rdp negotiation type")),
        None => {}
    }
    Ok(req)
}

/// Parses the server's first TPKT: X.224 CC with optional RDP_NEG_RSP or RDP_NEG_FAILURE
/// (MS-RDPBCGR 2.2.1.2).
pub fn parse_connection_confirm(stream: &[u8]) -> Result<ConnectionConfirm> {
    let rest = tpdu(stream, x224::CC)?;
    let mut cc = ConnectionConfirm {
        selected_protocol: None,
        failure_code: None,
    };
    match negotiation(rest)? {
        Some((neg::RSP, _, p)) => cc.selected_protocol = Some(p),
        Some((neg::FAILURE, _, f)) => cc.failure_code = Some(f),
        Some(_) => return Err(Error::Invalid("rdp negotiation type")),
        None => {}
    }
    Ok(cc)
}

/// Security protocol bits of requestedProtocols/selectedProtocol, MS-RDPBCGR 2.2.1.1.1.
const PROTOCOLS: [(u32, &str); 5] = [
    (0x01, "ssl"),
    (0x02, "hybrid"),
    (0x04, "rdstls"),
    (0x08, "hybrid_ex"),
    (0x10, "rdsaad"),
];

/// Names the bits set in a requestedProtocols field; `rdp` (standard RDP security) when none.
pub fn protocol_names(bits: u32) -> Vec<&'static str> {
    let names: Vec<_> = PROTOCOLS
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|&(_, n)| n)
        .collect();
    if names.is_empty() { vec!["rdp"] } else { names }
}

/// Names a selectedProtocol value (exactly one protocol); None for an undefined value.
pub fn selected_protocol_name(selected: u32) -> Option<&'static str> {
    if selected == 0 {
        return Some("rdp");
    }
    PROTOCOLS
        .iter()
        .find(|(b, _)| *b == selected)
        .map(|&(_, n)| n)
}

/// The first datagram of each side of an RDP-UDP connection, MS-RDPEUDP 3.1.5.1.
#[derive(Clone, Debug, Serialize)]
pub struct RdpeudpSyn {
    /// SYN+ACK from the server, as opposed to the client's SYN.
    pub synack: bool,
    pub up_mtu: u16,
    pub down_mtu: u16,
    /// uUdpVer of RDPUDP_SYNDATAEX_PAYLOAD (2.2.2.9): 1, 2, or 0x101 for RDPEUDP2.
    pub version: Option<u16>,
}

/// RDPUDP_FEC_HEADER, MS-RDPEUDP 2.2.2.1 (big-endian), then RDPUDP_SYNDATA_PAYLOAD (2.2.2.5).
mod udp {
    pub const SOURCE_ACK: std::ops::Range<usize> = 0..4;
    pub const FLAGS: usize = 6;
    pub const UP_MTU: usize = 12;
    pub const DOWN_MTU: usize = 14;
    pub const SYNDATA_END: usize = 16;
    pub const CORRELATION_ID_LEN: usize = 32;
    pub const SYN: u16 = 0x0001;
    pub const ACK: u16 = 0x0004;
    pub const CORRELATION_ID: u16 = 0x0800;
    pub const SYNEX: u16 = 0x1000;
    /// 3.1.5.1.1: MTUs lie in 1132..=1232.
    pub const MTU: std::ops::RangeInclusive<u16> = 1132..=1232;
}

/// Parses an RDPEUDP SYN or SYN+ACK datagram (MS-RDPEUDP 2.2.2.1, 2.2.2.5, 2.2.2.8, 2.2.2.9).
pub fn parse_rdpeudp_syn(datagram: &[u8]) -> Result<RdpeudpSyn> {
    let u16_at = |at: usize| {
        datagram
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(Error::Invalid("rdpeudp truncated"))
    };
    let flags = u16_at(udp::FLAGS)?;
    if flags & udp::SYN == 0 {
        return Err(Error::Invalid("rdpeudp not syn"));
    }
    let synack = flags & udp::ACK != 0;
    // The client SYN carries snSourceAck = -1 (2.2.2.1).
    if !synack && datagram.get(udp::SOURCE_ACK) != Some(&[0xFF; 4]) {
        return Err(Error::Invalid("rdpeudp syn source ack"));
    }
    let (up_mtu, down_mtu) = (u16_at(udp::UP_MTU)?, u16_at(udp::DOWN_MTU)?);
    if !udp::MTU.contains(&up_mtu) || !udp::MTU.contains(&down_mtu) {
        return Err(Error::Invalid("rdpeudp mtu"));
    }
    let mut at = udp::SYNDATA_END;
    if flags & udp::CORRELATION_ID != 0 {
        at += udp::CORRELATION_ID_LEN;
    }
    let version = if flags & udp::SYNEX != 0 {
        Some(u16_at(at + 2)?)
    } else {
        None
    };
    Ok(RdpeudpSyn {
        synack,
        up_mtu,
        down_mtu,
        version,
    })
}

/// What a flow record says of an RDP session.
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
    pub udp: Option<RdpeudpSyn>,
}

impl Summary for RdpDetails {}

/// RDP over TCP: the X.224 request in a TPKT (`03 00`), the server's confirm when it
/// comes, and the TLS ClientHello that may follow the request.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let (c, s) = (input.client, input.server);
    if !c.starts_with(&[0x03, 0x00]) {
        return Probe::No;
    }
    let req = parse_connection_request(c);
    let Ok(req) = req else {
        return Probe::of(&req, input.client_closed);
    };
    id.app = Some(App::Rdp);
    let confirm = parse_connection_confirm(s);
    let mut d = RdpDetails {
        cookie: req.cookie,
        requested_protocols: req
            .requested_protocols
            .map(protocol_names)
            .unwrap_or_default(),
        ..RdpDetails::default()
    };
    if let Ok(answer) = &confirm {
        d.selected_protocol = answer.selected_protocol.and_then(selected_protocol_name);
        d.failure_code = answer.failure_code;
        d.tls = answer.selected_protocol.is_some_and(|p| p != 0);
    }
    // A TLS ClientHello after the X.224 request: record its fingerprint as well.
    let tpkt_len = c
        .get(2..4)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
    if let Some(rest) = tpkt_len.and_then(|n| c.get(n..))
        && let Ok(hello) = tls::parse_client_hello(rest)
    {
        d.tls = true;
        id.details.tls = tls_details(TlsDetails::client(hello));
    }
    id.details.other = protocol(Protocol::Rdp, d);
    Probe::done_if(Probe::of(&confirm, input.server_closed) != Probe::More)
}

/// RDP over UDP: the RDPEUDP SYN (and the server's SYN/ACK when it came).
pub fn udp_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let Ok(syn) = parse_rdpeudp_syn(input.first_datagram()) else {
        return Probe::No;
    };
    id.app = Some(App::Rdp);
    let synack = input
        .server_datagrams
        .first()
        .and_then(|d| parse_rdpeudp_syn(d).ok());
    id.details.other = protocol(
        Protocol::Rdp,
        RdpDetails {
            udp: Some(synack.unwrap_or(syn)),
            ..RdpDetails::default()
        },
    );
    Probe::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// zeek/Traces/rdp/rdp-to-ssl.pcap, first client payload (tshark -e tcp.payload).
    const CR_COOKIE: &str = "0300002f2ae00000000000436f6f6b69653a206d737473686173683d4157414b45434f44490d0a0100080003000000";
    /// The server's reply in the same trace: RDP_NEG_RSP selecting HYBRID (2).
    const CC_HYBRID: &str = "030000130ed000001234000201080002000000";

    #[test]
    fn request_with_cookie() {
        let r = parse_connection_request(&hex(CR_COOKIE)).unwrap();
        assert_eq!(r.cookie.as_deref(), Some("AWAKECODI"));
        assert_eq!(r.requested_protocols, Some(3));
        assert_eq!(protocol_names(3), ["ssl", "hybrid"]);
        assert_eq!(
            parse_connection_request(&hex(CR_COOKIE)[..20]).unwrap_err(),
            Error::Incomplete
        );
    }

    #[test]
    fn request_without_cookie() {
        // MS-RDPBCGR 4.1.1 shape without the cookie: TPKT + CR + RDP_NEG_REQ (synthesized).
        let b = [
            3, 0, 0, 19, 14, 0xe0, 0, 0, 0, 0, 0, 1, 0, 8, 0, 0x0b, 0, 0, 0,
        ];
        let r = parse_connection_request(&b).unwrap();
        assert_eq!(r.cookie, None);
        assert_eq!(r.requested_protocols, Some(0x0b));
        assert_eq!(protocol_names(0), ["rdp"]);
    }

    #[test]
    fn confirm() {
        let c = parse_connection_confirm(&hex(CC_HYBRID)).unwrap();
        assert_eq!(c.selected_protocol, Some(2));
        assert_eq!(selected_protocol_name(2), Some("hybrid"));
        assert!(matches!(
            parse_connection_confirm(&hex(CR_COOKIE)),
            Err(Error::Invalid(_))
        ));
        // RDP_NEG_FAILURE SSL_NOT_ALLOWED_BY_SERVER (2.2.1.2.2), synthesized.
        let f = [3, 0, 0, 19, 14, 0xd0, 0, 0, 0, 0, 0, 3, 0, 8, 0, 2, 0, 0, 0];
        assert_eq!(parse_connection_confirm(&f).unwrap().failure_code, Some(2));
    }

    /// zeek/Traces/rdp/rdpeudp2-handshake-success.pcap: first 56 bytes of the client SYN and
    /// of the server SYN+ACK (the rest is zero padding).
    const SYN: &str = "ffffffff00401801a7eb5da404d004d0a2e2c8186de34f1e8d0f9175e4cd00000000000000000000000000000000000000010101";
    const SYNACK: &str = "a7eb5da4004010050547d72b04d004d000010101";

    #[test]
    fn rdpeudp() {
        let s = parse_rdpeudp_syn(&hex(SYN)).unwrap();
        assert!(!s.synack);
        assert_eq!((s.up_mtu, s.down_mtu, s.version), (1232, 1232, Some(0x101)));
        let a = parse_rdpeudp_syn(&hex(SYNACK)).unwrap();
        assert!(a.synack);
        assert_eq!(a.version, Some(0x101));
        assert!(parse_rdpeudp_syn(&hex(SYN)[..30]).is_err());
    }
}
