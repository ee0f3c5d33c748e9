//! OpenVPN: the control-channel header (opcode, session id, acks) that opens every
//! session, with or without a tls-auth HMAC in front of the ack array.
//!
//! Wire format from OpenVPN's `ssl_pkt.h`/`reliable.c` documentation ("OpenVPN protocol",
//! doc/doxygen/network_protocol.txt): `opcode<<3 | key_id`, session id (8), [tls-auth: HMAC,
//! replay packet-id (4), net time (4)], ack count (1), acks (4 each), remote session id (8,
//! if acks), message packet-id (4, not in P_ACK), payload. Over TCP each packet has a u16
//! big-endian length prefix.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;

pub const P_CONTROL_HARD_RESET_CLIENT_V1: u8 = 1;
pub const P_CONTROL_HARD_RESET_SERVER_V1: u8 = 2;
pub const P_CONTROL_SOFT_RESET_V1: u8 = 3;
pub const P_CONTROL_V1: u8 = 4;
pub const P_ACK_V1: u8 = 5;
pub const P_DATA_V1: u8 = 6;
pub const P_CONTROL_HARD_RESET_CLIENT_V2: u8 = 7;
pub const P_CONTROL_HARD_RESET_SERVER_V2: u8 = 8;
pub const P_DATA_V2: u8 = 9;
pub const P_CONTROL_HARD_RESET_CLIENT_V3: u8 = 10;
pub const P_CONTROL_WKC_V1: u8 = 11;

/// reliable.h RELIABLE_ACK_SIZE: at most 8 acks per packet.
const MAX_ACKS: usize = 8;
/// tls-auth HMAC sizes: MD5, SHA1, SHA256, SHA512 — SHA1 (the default) and SHA256 first.
const HMAC_LENS: [usize; 5] = [0, 20, 32, 16, 64];
/// A control-channel packet id this large means we are reading HMAC bytes, not an id.
const MAX_PACKET_ID: u32 = 1 << 24;
/// tls-auth net time must be a plausible Unix time (after 2001-01-01).
const MIN_NET_TIME: u32 = 978_307_200;
const SESSION_ID: std::ops::Range<usize> = 1..9;

/// One OpenVPN packet header.
#[derive(Clone, Debug, Serialize)]
pub struct Packet {
    pub opcode: u8,
    pub key_id: u8,
    /// The sender's session id; 0 for data packets, which carry none.
    pub session_id: u64,
    /// HMAC length when a tls-auth wrapper was recognised.
    pub hmac_len: Option<usize>,
    pub remote_session_id: Option<u64>,
    pub acks: Vec<u32>,
    /// Message packet-id of control packets (not P_ACK).
    pub packet_id: Option<u32>,
    /// Bytes of TLS payload after the header (control) or of the encrypted data (data).
    pub data_len: usize,
    /// P_DATA_V2 peer id.
    pub peer_id: Option<u32>,
}

/// Parses one packet; `over_tcp` expects the 2-byte length prefix and reports Incomplete
/// until the whole packet is present.
pub fn parse(bytes: &[u8], over_tcp: bool) -> Result<Packet> {
    let p = if over_tcp {
        let len = bytes.get(..2).ok_or(Error::Incomplete)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        bytes.get(2..2 + len).ok_or(Error::Incomplete)?
    } else {
        bytes
    };
    let first = *p.first().ok_or(Error::Invalid("openvpn empty"))?;
    let (opcode, key_id) = (first >> 3, first & 7);
    match opcode {
        P_DATA_V1 | P_DATA_V2 => {
            let head = if opcode == P_DATA_V2 { 4 } else { 1 };
            let data_len = p
                .len()
                .checked_sub(head)
                .filter(|&n| n > 0)
                .ok_or(Error::Invalid("openvpn data too short"))?;
            let peer_id = (opcode == P_DATA_V2).then(|| u32::from_be_bytes([0, p[1], p[2], p[3]]));
            Ok(Packet {
                opcode,
                key_id,
                session_id: 0,
                hmac_len: None,
                remote_session_id: None,
                acks: vec![],
                packet_id: None,
                data_len,
                peer_id,
            })
        }
        1..=5 | 7 | 8 | 10 | 11 => HMAC_LENS
            .iter()
            .find_map(|&h| control(p, opcode, key_id, h))
            .ok_or(Error::Invalid("openvpn control header")),
        _ => Err(Error::Invalid("openvpn opcode")),
    }
}

/// Reads a control packet assuming an HMAC of `hmac` bytes (0: no tls-auth); None when the
/// structure does not hold together under that assumption.
fn control(p: &[u8], opcode: u8, key_id: u8, hmac: usize) -> Option<Packet> {
    let u32_at = |at: usize| {
        p.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        p.get(at..at + 8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
    };
    let session_id = u64_at(SESSION_ID.start)?;
    let mut at = SESSION_ID.end;
    if hmac > 0 {
        let replay_id = u32_at(at + hmac)?;
        let net_time = u32_at(at + hmac + 4)?;
        if replay_id == 0 || replay_id >= MAX_PACKET_ID || net_time < MIN_NET_TIME {
            return None;
        }
        at += hmac + 8;
    }
    let n = *p.get(at)? as usize;
    at += 1;
    if n > MAX_ACKS {
        return None;
    }
    let acks = (0..n)
        .map(|i| u32_at(at + 4 * i))
        .collect::<Option<Vec<_>>>()?;
    if acks.iter().any(|&a| a >= MAX_PACKET_ID) {
        return None;
    }
    at += 4 * n;
    let remote_session_id = if n > 0 {
        at += 8;
        Some(u64_at(at - 8)?)
    } else {
        None
    };
    let packet_id = if opcode == P_ACK_V1 {
        None
    } else {
        at += 4;
        Some(u32_at(at - 4).filter(|&id| id < MAX_PACKET_ID)?)
    };
    let data_len = p.len().checked_sub(at)?;
    // A P_ACK carries nothing after its acks; a hard reset carries nothing or a short TLV.
    if opcode == P_ACK_V1 && (data_len != 0 || n == 0) {
        return None;
    }
    Some(Packet {
        opcode,
        key_id,
        session_id,
        hmac_len: (hmac > 0).then_some(hmac),
        remote_session_id,
        acks,
        packet_id,
        data_len,
        peer_id: None,
    })
}

/// True for the opcodes that start a session (client or server hard reset).
pub fn is_hard_reset(opcode: u8) -> bool {
    matches!(
        opcode,
        P_CONTROL_HARD_RESET_CLIENT_V1
            | P_CONTROL_HARD_RESET_SERVER_V1
            | P_CONTROL_HARD_RESET_CLIENT_V2
            | P_CONTROL_HARD_RESET_SERVER_V2
            | P_CONTROL_HARD_RESET_CLIENT_V3
    )
}

/// What a flow record says of an OpenVPN session: its opening packet.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpenvpnDetails {
    pub opcode: u8,
    pub tls_auth: bool,
}

impl Summary for OpenvpnDetails {}

/// Labels the flow OpenVPN, opened by `reset`.
fn found(id: &mut Identification, reset: &Packet) {
    id.app = Some(App::Openvpn);
    id.details.other = protocol(
        Protocol::Openvpn,
        OpenvpnDetails {
            opcode: reset.opcode,
            tls_auth: reset.hmac_len.is_some(),
        },
    );
}

/// OpenVPN over TCP: the client's hard reset, answered by the server's (or not answered
/// yet).
pub fn tcp_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let Some(p) = parse(input.client, true)
        .ok()
        .filter(|p| is_hard_reset(p.opcode))
    else {
        return Probe::No;
    };
    let answered = parse(input.server, true).is_ok_and(|r| is_hard_reset(r.opcode));
    if !answered && !input.server.is_empty() {
        return Probe::No;
    }
    found(id, &p);
    Probe::done_if(answered || input.server_closed)
}

/// OpenVPN over UDP: a client hard reset answered by a server hard reset. One packet
/// alone is too weak (a NetBIOS datagram can look like a reset).
pub fn udp_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let (cd, sd) = (input.client_datagrams, input.server_datagrams);
    let Some(Ok(p)) = cd.first().map(|d| parse(d, false)) else {
        return Probe::No;
    };
    if !matches!(
        p.opcode,
        P_CONTROL_HARD_RESET_CLIENT_V1
            | P_CONTROL_HARD_RESET_CLIENT_V2
            | P_CONTROL_HARD_RESET_CLIENT_V3
    ) {
        return Probe::No;
    }
    let answered = sd.first().is_some_and(|d| {
        parse(d, false).is_ok_and(|r| {
            matches!(
                r.opcode,
                P_CONTROL_HARD_RESET_SERVER_V1 | P_CONTROL_HARD_RESET_SERVER_V2
            )
        })
    });
    if answered {
        found(id, &p);
        return Probe::Done;
    }
    if sd.is_empty() {
        return Probe::More;
    }
    Probe::No
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tools::hex;

    #[test]
    fn plain_udp_handshake() {
        // zeek-spicy-analyzers/Traces/openvpn.pcap, first two datagrams.
        let c = parse(&hex("389aa6b1e434889ad30000000000"), false).unwrap();
        assert_eq!(
            (c.opcode, c.key_id, c.session_id),
            (7, 0, 0x9aa6b1e434889ad3)
        );
        assert_eq!((c.hmac_len, c.packet_id, c.data_len), (None, Some(0), 0));
        let s = parse(
            &hex("40e7a77eba7c1c51b501000000009aa6b1e434889ad300000000"),
            false,
        )
        .unwrap();
        assert_eq!((s.opcode, s.acks.as_slice()), (8, &[0][..]));
        assert_eq!(s.remote_session_id, Some(0x9aa6b1e434889ad3));
    }

    #[test]
    fn tls_auth_sha1_over_tcp() {
        // zeek-spicy-analyzers/Traces/openvpn-tcp-tls-auth.pcap, client's first segment.
        let b = hex(
            "002a3828e1328a7185e6ca779cda2d2230e4755040a78df956f0268c51fb710000000150ff20fd0000000000",
        );
        let p = parse(&b, true).unwrap();
        assert_eq!((p.opcode, p.hmac_len, p.packet_id), (7, Some(20), Some(0)));
        assert_eq!(p.session_id, 0x28e1328a7185e6ca);
        assert_eq!(parse(&b[..30], true).unwrap_err(), Error::Incomplete);
    }

    #[test]
    fn tls_auth_sha256_udp() {
        // zeek-spicy-analyzers/Traces/openvpn_udp_hmac_256.pcap, first datagram.
        let b = hex(
            "38a5f634996d295c25ba6bb43be6a33727c99a57f0aa5a32915328c14663c5d22858d31a0b661fac5a0000000160df195a0000000000",
        );
        assert_eq!(parse(&b, false).unwrap().hmac_len, Some(32));
        assert!(parse(&hex("f8000000"), false).is_err());
    }
}
