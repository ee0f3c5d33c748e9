//! IPsec: the IKE header (v1 RFC 2408 §3.1, v2 RFC 7296 §3.1) on UDP 500/4500 and the ESP
//! header (RFC 4303 §2) — enough to say a host runs its own IPsec tunnel.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;

/// RFC 7296 §3.1 / RFC 2408 §3.1 header layout (big-endian).
mod field {
    use std::ops::Range;
    pub const INITIATOR_SPI: Range<usize> = 0..8;
    pub const RESPONDER_SPI: Range<usize> = 8..16;
    pub const NEXT_PAYLOAD: usize = 16;
    pub const VERSION: usize = 17;
    pub const EXCHANGE: usize = 18;
    pub const FLAGS: usize = 19;
    pub const LENGTH: Range<usize> = 24..28;
    pub const HEADER_LEN: usize = 28;
}
/// RFC 3948 §2.2: on port 4500, IKE is preceded by four zero bytes (ESP never has SPI 0).
const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// An IKE message header.
#[derive(Clone, Debug, Serialize)]
pub struct Ike {
    /// Major version: 1 (ISAKMP/IKEv1) or 2.
    pub version: u8,
    pub exchange: u8,
    pub initiator_spi: u64,
    pub responder_spi: u64,
    pub flags: u8,
    pub length: u32,
    pub next_payload: u8,
}

/// Parses an IKE header; `non_esp_marker` is true for UDP 4500, where it must follow the
/// marker (a datagram without the marker there is ESP).
pub fn parse_ike(datagram: &[u8], non_esp_marker: bool) -> Result<Ike> {
    let d = if non_esp_marker {
        datagram
            .strip_prefix(&NON_ESP_MARKER)
            .ok_or(Error::Invalid("ike without non-esp marker"))?
    } else {
        datagram
    };
    let h = d
        .get(..field::HEADER_LEN)
        .ok_or(Error::Invalid("ike too short"))?;
    let be64 = |r: std::ops::Range<usize>| u64::from_be_bytes(h[r].try_into().unwrap_or_default());
    let version = h[field::VERSION] >> 4;
    let exchange = h[field::EXCHANGE];
    let next_payload = h[field::NEXT_PAYLOAD];
    // Payload types 128..=255 are private use (e.g. draft NAT-T's 130), allowed in both.
    let (ok_exchange, ok_payload) = match version {
        // RFC 2408 §3.1 exchanges 0..=5, RFC 2409 Quick Mode 32 / New Group 33; payloads
        // RFC 2408 §3.1 0..=13, RFC 3947 NAT-D 20 / NAT-OA 21.
        1 => (
            matches!(exchange, 0..=5 | 32 | 33),
            matches!(next_payload, 0..=13 | 20 | 21 | 128..),
        ),
        // RFC 7296 §3.1 exchanges 34..=37, RFC 5723 38, RFC 9242 43, RFC 9370 44; payloads
        // 0 or 33..=55 (IANA IKEv2 payload types).
        2 => (
            matches!(exchange, 34..=38 | 43 | 44),
            matches!(next_payload, 0 | 33..=55 | 128..),
        ),
        _ => return Err(Error::Invalid("ike version")),
    };
    if !ok_exchange {
        return Err(Error::Invalid("ike exchange type"));
    }
    if !ok_payload {
        return Err(Error::Invalid("ike next payload"));
    }
    let initiator_spi = be64(field::INITIATOR_SPI);
    if initiator_spi == 0 {
        return Err(Error::Invalid("ike initiator spi zero"));
    }
    let length = u32::from_be_bytes(h[field::LENGTH].try_into().unwrap_or_default());
    if (length as usize) < field::HEADER_LEN || length as usize > d.len() {
        return Err(Error::Invalid("ike length"));
    }
    Ok(Ike {
        version,
        exchange,
        initiator_spi,
        responder_spi: be64(field::RESPONDER_SPI),
        flags: h[field::FLAGS],
        length,
        next_payload,
    })
}

/// An ESP header, RFC 4303 §2.
#[derive(Clone, Debug, Serialize)]
pub struct Esp {
    pub spi: u32,
    pub seq: u32,
}

/// RFC 4303 §2: SPI, sequence number, then at least an IV/payload and an ICV.
const ESP_MIN_LEN: usize = 16;

/// Parses an ESP header (IP protocol 50, or UDP 4500 without the marker). SPIs 0..=255 are
/// reserved (RFC 4303 §2.1), which also rules out IKE's marker and NAT keepalives.
pub fn parse_esp(bytes: &[u8]) -> Result<Esp> {
    if bytes.len() < ESP_MIN_LEN {
        return Err(Error::Invalid("esp too short"));
    }
    let spi = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if spi <= 255 {
        return Err(Error::Invalid("esp reserved spi"));
    }
    Ok(Esp {
        spi,
        seq: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    })
}

/// RFC 3948 §2.3: the one-byte 0xFF NAT-keepalive on port 4500.
pub fn is_nat_keepalive(datagram: &[u8]) -> bool {
    datagram == [0xFF]
}

/// What a flow record says of an IPsec flow: its IKE exchange, or ESP.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IpsecDetails {
    pub ike_version: Option<u8>,
    pub exchange: Option<u8>,
    pub esp: bool,
}

impl Summary for IpsecDetails {}

/// IKE on UDP 500 or 4500, or ESP in UDP on 4500 (NAT traversal, RFC 3948).
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    if !input.on_port(&[500, 4500]) {
        return Probe::No;
    }
    let first = input.first_datagram();
    let natt = input.on_port(&[4500]);
    let d = if let Ok(ike) = parse_ike(first, natt) {
        IpsecDetails {
            ike_version: Some(ike.version),
            exchange: Some(ike.exchange),
            esp: false,
        }
    } else if natt && parse_esp(first).is_ok() && !is_nat_keepalive(first) {
        IpsecDetails {
            esp: true,
            ..IpsecDetails::default()
        }
    } else {
        return Probe::No;
    };
    id.app = Some(App::Ipsec);
    id.details.other = protocol(Protocol::Ipsec, d);
    Probe::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tools::hex;

    /// zeek-spicy-analyzers/Traces/ipsec-ikev1-isakmp-main-mode.pcap, first datagram's
    /// 28-byte header (tshark -e udp.payload); the payloads are replaced by zeros.
    const IKEV1: &str = "e47a591fd057587f00000000000000000110020000000000000000a8";

    #[test]
    fn ikev1_main_mode() {
        let mut d = hex(IKEV1);
        d.resize(168, 0);
        let i = parse_ike(&d, false).unwrap();
        assert_eq!((i.version, i.exchange, i.length), (1, 2, 168));
        assert_eq!(i.initiator_spi, 0xe47a591fd057587f);
        assert!(parse_ike(&d[..100], false).is_err());
        let mut marked = vec![0; 4];
        marked.extend(&d);
        assert_eq!(parse_ike(&marked, true).unwrap().exchange, 2);
        assert!(parse_ike(&d, true).is_err());
    }

    #[test]
    fn ikev2_sa_init_and_esp() {
        // RFC 7296 §3.1 layout, IKE_SA_INIT (34), version 0x20, flag I (0x08) (synthesized).
        let mut d = vec![
            1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 33, 0x20, 34, 0x08,
        ];
        d.extend([0, 0, 0, 0, 0, 0, 0, 28]);
        let i = parse_ike(&d, false).unwrap();
        assert_eq!((i.version, i.exchange, i.flags), (2, 34, 8));
        d[18] = 2;
        assert!(parse_ike(&d, false).is_err());
        let esp = parse_esp(&hex("0000100100000001aaaaaaaaaaaaaaaa")).unwrap();
        assert_eq!((esp.spi, esp.seq), (0x1001, 1));
        assert!(parse_esp(&[0; 16]).is_err());
        assert!(is_nat_keepalive(&[0xff]));
    }
}
