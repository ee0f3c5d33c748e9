//! RADIUS (RFC 2865) and its accounting (RFC 2866): Accounting-Request packets on the wire
//! tell which user holds which VPN address, the same mapping as a concentrator's session log.

use super::identify::{Identification, Input, Probe, Protocol, Summary};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// RFC 2865 §3: code, identifier, length, 16-byte authenticator; length 20..=4096.
const HEADER_LEN: usize = 20;
const MAX_LEN: usize = 4096;
const MAX_TEXT: usize = 253;
/// RFC 2866 §4.1.
pub const ACCOUNTING_REQUEST: u8 = 4;

/// Attribute types (RFC 2865 §5, RFC 2866 §5, RFC 3162 §2/§3).
mod attr {
    pub const USER_NAME: u8 = 1;
    pub const NAS_IP_ADDRESS: u8 = 4;
    pub const FRAMED_IP_ADDRESS: u8 = 8;
    pub const CALLING_STATION_ID: u8 = 31;
    pub const ACCT_STATUS_TYPE: u8 = 40;
    pub const ACCT_SESSION_ID: u8 = 44;
    pub const NAS_IPV6_ADDRESS: u8 = 95;
    pub const FRAMED_IPV6_PREFIX: u8 = 97;
}

/// A RADIUS packet header, RFC 2865 §3, with the accounting attributes of an
/// Accounting-Request (RFC 2866 §4.1, §5).
#[derive(Clone, Debug, Serialize)]
pub struct Packet {
    pub code: u8,
    pub identifier: u8,
    pub accounting: Option<Accounting>,
}

/// What an Accounting-Request says about a session (RFC 2866 §5, RFC 2865 §5).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Accounting {
    /// Acct-Status-Type: 1 start, 2 stop, 3 interim-update, 7 accounting-on, 8 -off.
    pub status_type: Option<u32>,
    pub user_name: Option<String>,
    pub framed_ip: Option<Ipv4Addr>,
    /// Framed-IPv6-Prefix as "prefix/len" (RFC 3162 §2.3).
    pub framed_ipv6_prefix: Option<String>,
    pub calling_station_id: Option<String>,
    pub session_id: Option<String>,
    pub nas_ip: Option<IpAddr>,
}

/// Codes defined by RFC 2865 §3, RFC 2866 §3 and RFC 5176 (dynamic authorization).
fn known_code(code: u8) -> bool {
    matches!(code, 1..=5 | 11..=13 | 40..=45)
}

/// Parses one RADIUS datagram; attributes must tile the packet exactly (RFC 2865 §5).
pub fn parse(datagram: &[u8]) -> Result<Packet> {
    let h = datagram
        .get(..HEADER_LEN)
        .ok_or(Error::Invalid("radius too short"))?;
    let (code, identifier) = (h[0], h[1]);
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if !known_code(code) {
        return Err(Error::Invalid("radius code"));
    }
    // Octets beyond Length are padding and ignored (§3); fewer is an error.
    if !(HEADER_LEN..=MAX_LEN).contains(&len) || len > datagram.len() {
        return Err(Error::Invalid("radius length"));
    }
    let mut acct = Accounting::default();
    let mut rest = &datagram[HEADER_LEN..len];
    while !rest.is_empty() {
        let (t, n) = match rest {
            [t, n, ..] if *n >= 2 => (*t, *n as usize),
            _ => return Err(Error::Invalid("radius attribute length")),
        };
        let v = rest
            .get(2..n)
            .ok_or(Error::Invalid("radius attribute length"))?;
        let text = || Some(String::from_utf8_lossy(&v[..v.len().min(MAX_TEXT)]).into_owned());
        let v4: Option<[u8; 4]> = v.try_into().ok();
        let v16: Option<[u8; 16]> = v.try_into().ok();
        match t {
            attr::USER_NAME => acct.user_name = text(),
            attr::CALLING_STATION_ID => acct.calling_station_id = text(),
            attr::ACCT_SESSION_ID => acct.session_id = text(),
            attr::ACCT_STATUS_TYPE => acct.status_type = v4.map(u32::from_be_bytes),
            attr::FRAMED_IP_ADDRESS => acct.framed_ip = v4.map(Ipv4Addr::from),
            attr::NAS_IP_ADDRESS => acct.nas_ip = v4.map(|b| IpAddr::V4(b.into())),
            attr::NAS_IPV6_ADDRESS => acct.nas_ip = v16.map(|b| IpAddr::V6(b.into())),
            attr::FRAMED_IPV6_PREFIX => acct.framed_ipv6_prefix = ipv6_prefix(v),
            _ => {}
        }
        rest = &rest[n..];
    }
    Ok(Packet {
        code,
        identifier,
        accounting: (code == ACCOUNTING_REQUEST).then_some(acct),
    })
}

/// RFC 3162 §2.3: reserved, prefix-length (0..=128), then only the prefix's significant bytes.
fn ipv6_prefix(v: &[u8]) -> Option<String> {
    let (&plen, prefix) = v.get(1..)?.split_first()?;
    if plen > 128 || prefix.len() > 16 {
        return None;
    }
    let mut b = [0u8; 16];
    b[..prefix.len()].copy_from_slice(prefix);
    Some(format!("{}/{plen}", Ipv6Addr::from(b)))
}

impl Summary for Accounting {}

/// RADIUS on its ports (1812/1813, and the older 1645/1646); an accounting request's
/// details go into the record.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    if !input.on_port(&[1812, 1813, 1645, 1646]) {
        return Probe::No;
    }
    let Ok(p) = parse(input.first_datagram()) else {
        return Probe::No;
    };
    id.app = Some(App::Radius);
    id.details.other = p.accounting.map(|a| Protocol::Radius(Box::new(a)));
    Probe::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tools::hex;

    /// An Accounting-Request Start laid out per RFC 2866 §4.1/§5 (synthesized): User-Name
    /// "jdoe", NAS-IP 192.0.2.1, Framed-IP 10.8.0.12, Calling-Station-Id "73.14.2.9",
    /// Acct-Status-Type 1, Acct-Session-Id "S1", Framed-IPv6-Prefix 2001:db8::/32.
    fn start() -> Vec<u8> {
        let attrs = hex(concat!(
            "01066a646f65",
            "0406c0000201",
            "08060a08000c",
            "1f0b37332e31342e322e39",
            "280600000001",
            "2c045331",
            "6108002020010db8"
        ));
        let mut p = vec![4, 7];
        p.extend(((20 + attrs.len()) as u16).to_be_bytes());
        p.extend([0; 16]);
        p.extend(attrs);
        p
    }

    #[test]
    fn accounting_start() {
        let p = parse(&start()).unwrap();
        assert_eq!((p.code, p.identifier), (4, 7));
        let a = p.accounting.unwrap();
        assert_eq!(a.status_type, Some(1));
        assert_eq!(a.user_name.as_deref(), Some("jdoe"));
        assert_eq!(a.framed_ip, Some(Ipv4Addr::new(10, 8, 0, 12)));
        assert_eq!(a.calling_station_id.as_deref(), Some("73.14.2.9"));
        assert_eq!(a.session_id.as_deref(), Some("S1"));
        assert_eq!(a.nas_ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(a.framed_ipv6_prefix.as_deref(), Some("2001:db8::/32"));
    }

    #[test]
    fn rejects_broken_attributes_and_codes() {
        let mut p = start();
        p[21] = 60;
        assert!(parse(&p).is_err());
        let mut p = start();
        p[0] = 99;
        assert!(parse(&p).is_err());
        // RFC 2865 §7.1 example Access-Request (User-Name "nemo", NAS-IP 192.168.1.16).
        let a = parse(&hex(concat!(
            "010000380f403f9473978057bd83d5cb98f4227a",
            "01066e656d6f",
            "02120dbe708d93d413ce3196e43f782a0aee",
            "0406c0a80110",
            "050600000003"
        )))
        .unwrap();
        assert_eq!((a.code, a.identifier), (1, 0));
        assert!(a.accounting.is_none());
    }
}
