//! STUN/TURN (RFC 5389, RFC 5766): the binding and relay messages of WebRTC and remote
//! desktop media paths. A TURN allocation means media is relayed through a third host.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// RFC 5389 §6: the fixed cookie at bytes 4..8.
const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const TRANSACTION_ID: std::ops::Range<usize> = 8..20;
const MAX_TEXT: usize = 256;

/// RFC 5389 §18.2 / RFC 5766 §14 attribute types.
mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REALM: u16 = 0x0014;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const SOFTWARE: u16 = 0x8022;
}

/// RFC 5389 §6 message class (the C1/C0 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// A STUN message with the attributes that name software, users and addresses (RFC 5389 §15).
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub class: Class,
    /// 1 Binding; TURN (RFC 5766 §13): 3 Allocate, 4 Refresh, 6 Send, 7 Data,
    /// 8 CreatePermission, 9 ChannelBind.
    pub method: u16,
    pub transaction_id: [u8; 12],
    pub software: Option<String>,
    pub username: Option<String>,
    pub realm: Option<String>,
    pub mapped: Option<SocketAddr>,
    pub xor_mapped: Option<SocketAddr>,
    pub xor_relayed: Option<SocketAddr>,
    pub error_code: Option<u16>,
}

/// Names a method as RFC 5389/5766 do.
pub fn method_name(method: u16) -> Option<&'static str> {
    Some(match method {
        1 => "binding",
        3 => "allocate",
        4 => "refresh",
        6 => "send",
        7 => "data",
        8 => "create_permission",
        9 => "channel_bind",
        _ => return None,
    })
}

/// Parses one STUN datagram (RFC 5389 §6): the header length must cover the datagram exactly
/// and every attribute must fit.
pub fn parse(datagram: &[u8]) -> Result<Message> {
    let h = datagram
        .get(..HEADER_LEN)
        .ok_or(Error::Invalid("stun too short"))?;
    let ty = u16::from_be_bytes([h[0], h[1]]);
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if ty & 0xC000 != 0 {
        return Err(Error::Invalid("stun type top bits"));
    }
    if u32::from_be_bytes([h[4], h[5], h[6], h[7]]) != MAGIC_COOKIE {
        return Err(Error::Invalid("stun magic cookie"));
    }
    if !len.is_multiple_of(4) || HEADER_LEN + len != datagram.len() {
        return Err(Error::Invalid("stun length"));
    }
    let class = match ty & 0x0110 {
        0x0000 => Class::Request,
        0x0010 => Class::Indication,
        0x0100 => Class::Success,
        _ => Class::Error,
    };
    // Method bits M0-M3, M4-M6, M7-M11 are split around the class bits (§6, Figure 3).
    let method = (ty & 0x000F) | ((ty & 0x00E0) >> 1) | ((ty & 0x3E00) >> 2);
    let mut m = Message {
        class,
        method,
        transaction_id: h[TRANSACTION_ID].try_into().unwrap_or_default(),
        software: None,
        username: None,
        realm: None,
        mapped: None,
        xor_mapped: None,
        xor_relayed: None,
        error_code: None,
    };
    let mut rest = &datagram[HEADER_LEN..];
    while !rest.is_empty() {
        let (t, n) = match rest {
            [a, b, c, d, ..] => (
                u16::from_be_bytes([*a, *b]),
                u16::from_be_bytes([*c, *d]) as usize,
            ),
            _ => return Err(Error::Invalid("stun attribute header")),
        };
        let value = rest
            .get(4..4 + n)
            .ok_or(Error::Invalid("stun attribute length"))?;
        let text = || Some(String::from_utf8_lossy(&value[..n.min(MAX_TEXT)]).into_owned());
        match t {
            attr::SOFTWARE => m.software = text(),
            attr::USERNAME => m.username = text(),
            attr::REALM => m.realm = text(),
            attr::MAPPED_ADDRESS => m.mapped = Some(address(value, None)?),
            attr::XOR_MAPPED_ADDRESS => {
                m.xor_mapped = Some(address(value, Some(&m.transaction_id))?)
            }
            attr::XOR_RELAYED_ADDRESS => {
                m.xor_relayed = Some(address(value, Some(&m.transaction_id))?)
            }
            // §15.6: class (hundreds) and number in the low bits of the 4th byte.
            attr::ERROR_CODE => match value {
                [_, _, class, number, ..] if (3..=6).contains(class) && *number < 100 => {
                    m.error_code = Some(u16::from(*class) * 100 + u16::from(*number));
                }
                _ => return Err(Error::Invalid("stun error code")),
            },
            _ => {}
        }
        // Values are padded to a multiple of 4 (§15).
        rest = rest.get(4 + n.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(m)
}

/// (XOR-)MAPPED-ADDRESS, RFC 5389 §15.1/§15.2: reserved, family, port, address; the XOR form
/// masks the port with the cookie's top half and the address with cookie‖transaction id.
fn address(v: &[u8], xor: Option<&[u8; 12]>) -> Result<SocketAddr> {
    let mut mask = [0u8; 16];
    if let Some(tid) = xor {
        mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        mask[4..].copy_from_slice(tid);
    }
    let port = u16::from_be_bytes(v.get(2..4).map_or([0, 0], |p| [p[0], p[1]]))
        ^ u16::from_be_bytes([mask[0], mask[1]]);
    let ip = match (v.get(1), v.len()) {
        (Some(1), 8) => IpAddr::V4(Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|i| {
            v[4 + i] ^ mask[i]
        }))),
        (Some(2), 20) => IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|i| {
            v[4 + i] ^ mask[i]
        }))),
        _ => return Err(Error::Invalid("stun address")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// TURN ChannelData (RFC 5766 §11.4): channel number 0x4000..=0x7FFF, a length, the data,
/// and over UDP optionally padding up to a multiple of 4.
pub fn is_channel_data(datagram: &[u8]) -> bool {
    let [a, b, c, d, ..] = *datagram else {
        return false;
    };
    let channel = u16::from_be_bytes([a, b]);
    let len = u16::from_be_bytes([c, d]) as usize;
    (0x4000..=0x7FFF).contains(&channel)
        && (4 + len..=4 + len.next_multiple_of(4)).contains(&datagram.len())
}

/// What a flow record says of a STUN/TURN exchange.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StunDetails {
    pub method: Option<&'static str>,
    pub software: Option<String>,
    /// A TURN allocation answered with a relayed address: media goes through a relay.
    pub relayed: bool,
    pub channel_data: bool,
}

impl Summary for StunDetails {}

/// STUN messages among either side's first datagrams. Settled once a request has its
/// answer, so a TURN allocation's relayed address (in the success response) is seen.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let datagrams = || input.client_datagrams.iter().chain(input.server_datagrams);
    let messages: Vec<Message> = datagrams().filter_map(|d| parse(d).ok()).collect();
    if messages.is_empty() {
        return Probe::No;
    }
    id.app = Some(App::Stun);
    id.details.other = protocol(
        Protocol::Stun,
        StunDetails {
            method: messages.first().and_then(|m| method_name(m.method)),
            software: messages.iter().find_map(|m| m.software.clone()),
            relayed: messages.iter().any(|m| m.xor_relayed.is_some()),
            channel_data: datagrams().any(|d| is_channel_data(d)),
        },
    );
    Probe::done_if(
        messages
            .iter()
            .any(|m| matches!(m.class, Class::Success | Class::Error)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tools::hex;

    #[test]
    fn binding_request_and_mapped_response() {
        // zeek-spicy-analyzers/Traces/stun-ice-testcall.pcap, datagrams 1 and 2; Zeek's
        // stun.log baseline says MAPPED_ADDRESS 70.199.128.46:4604.
        let r = parse(&hex("000100002112a442534f70436969354a6663317a")).unwrap();
        assert_eq!((r.class, r.method), (Class::Request, 1));
        assert_eq!(&r.transaction_id, b"SOpCii5Jfc1z");
        let s = parse(&hex(
            "0101000c2112a442534f70436969354a6663317a00010008000111fc46c7802e",
        ))
        .unwrap();
        assert_eq!(s.class, Class::Success);
        assert_eq!(s.mapped, Some("70.199.128.46:4604".parse().unwrap()));
    }

    #[test]
    fn rfc5769_sample_response() {
        // RFC 5769 §2.2 sample IPv4 response: SOFTWARE "test vector ", XOR-MAPPED-ADDRESS
        // 192.0.2.1:32853 (MESSAGE-INTEGRITY and FINGERPRINT ignored).
        let b = hex(concat!(
            "0101003c2112a442b7e7a701bc34d686fa87dfae",
            "8022000b7465737420766563746f7220",
            "002000080001a147e112a643",
            "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7",
            "80280004c07d4c96"
        ));
        let m = parse(&b).unwrap();
        assert_eq!(m.software.as_deref(), Some("test vector"));
        assert_eq!(m.xor_mapped, Some("192.0.2.1:32853".parse().unwrap()));
        let mut broken = b.clone();
        broken[23] = 0xff;
        assert!(parse(&broken).is_err());
    }

    #[test]
    fn turn_allocate_success_and_channel_data() {
        // RFC 5766 §6.3 Allocate success (class 0x0100 | method 3) with XOR-RELAYED-ADDRESS
        // 192.0.2.15:50000 and an ERROR-CODE-less body (synthesized).
        let b = hex("0103000c2112a442000102030405060708090a0b001600080001e242e112a64d");
        let m = parse(&b).unwrap();
        assert_eq!(
            (m.class, method_name(m.method)),
            (Class::Success, Some("allocate"))
        );
        assert_eq!(m.xor_relayed, Some("192.0.2.15:50000".parse().unwrap()));
        assert!(is_channel_data(&hex("40000003aabbcc00")));
        assert!(!is_channel_data(&hex("80000003aabbcc")));
    }
}
