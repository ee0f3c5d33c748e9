//! WireGuard: its four message types have a one-byte type, three zero bytes and exact
//! sizes (whitepaper §5.4), which is enough to recognise it without any key material.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;

/// Whitepaper §5.4.2–§5.4.7 message sizes.
const INITIATION_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_REPLY_LEN: usize = 64;
/// Transport: 16-byte header, then the AEAD tag (16) over zero-padded plaintext (multiple of 16).
const TRANSPORT_MIN: usize = 32;
/// Padding stops at the tunnel MTU (§5.4.6: "padded to a multiple of 16, not exceeding the
/// MTU"), so a full-MTU packet need not be a multiple of 16; real MTUs are ≥ 1280 (IPv6 min).
const MIN_TUNNEL_MTU: usize = 1280;

/// Field offsets after the 4-byte type/reserved word (all little-endian).
const SENDER: usize = 4;
const RECEIVER_IN_RESPONSE: usize = 8;
const RECEIVER: usize = 4;
const COUNTER: usize = 8;

/// A WireGuard message header, whitepaper §5.4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    HandshakeInitiation { sender: u32 },
    HandshakeResponse { sender: u32, receiver: u32 },
    CookieReply { receiver: u32 },
    Transport { receiver: u32, counter: u64 },
}

/// Parses one UDP datagram strictly: any deviation is Invalid (a datagram is whole).
pub fn parse(datagram: &[u8]) -> Result<Message> {
    let head = datagram
        .get(..4)
        .ok_or(Error::Invalid("wireguard too short"))?;
    if head[1..] != [0, 0, 0] {
        return Err(Error::Invalid("wireguard reserved bytes"));
    }
    let le32 = |at: usize| {
        datagram
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let len = datagram.len();
    let want = |n: usize| {
        if len == n {
            Ok(())
        } else {
            Err(Error::Invalid("wireguard length"))
        }
    };
    match head[0] {
        1 => want(INITIATION_LEN).map(|_| Message::HandshakeInitiation {
            sender: le32(SENDER).unwrap_or_default(),
        }),
        2 => want(RESPONSE_LEN).map(|_| Message::HandshakeResponse {
            sender: le32(SENDER).unwrap_or_default(),
            receiver: le32(RECEIVER_IN_RESPONSE).unwrap_or_default(),
        }),
        3 => want(COOKIE_REPLY_LEN).map(|_| Message::CookieReply {
            receiver: le32(RECEIVER).unwrap_or_default(),
        }),
        4 if len >= TRANSPORT_MIN
            && (len.is_multiple_of(16) || len - TRANSPORT_MIN >= MIN_TUNNEL_MTU) =>
        {
            let counter = datagram
                .get(COUNTER..COUNTER + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                .unwrap_or_default();
            Ok(Message::Transport {
                receiver: le32(RECEIVER).unwrap_or_default(),
                counter,
            })
        }
        4 => Err(Error::Invalid("wireguard length")),
        _ => Err(Error::Invalid("wireguard type")),
    }
}

/// What a flow record says of a WireGuard tunnel: which messages were seen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WireguardDetails {
    pub handshake_initiation: bool,
    pub handshake_response: bool,
    pub transport: bool,
    /// Tailscale: its disco messages travel beside the WireGuard packets.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tailscale: bool,
}

impl Summary for WireguardDetails {}

/// Tailscale's disco message header (tailscale.com/disco, disco.go): the 6-byte magic
/// "TS💬", the sender's 32-byte disco key and a 24-byte nonce, then sealed payload.
const TAILSCALE_DISCO_MAGIC: &[u8] = b"TS\xf0\x9f\x92\xac";
const TAILSCALE_DISCO_HEADER: usize = 6 + 32 + 24;

fn is_tailscale_disco(datagram: &[u8]) -> bool {
    datagram.starts_with(TAILSCALE_DISCO_MAGIC) && datagram.len() > TAILSCALE_DISCO_HEADER
}

/// WireGuard among either side's first datagrams: a Tailscale disco message, or the
/// handshake (or one handshake message with transport packets). One message type alone is
/// too weak: transport packets are just sized bytes.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let datagrams = || input.client_datagrams.iter().chain(input.server_datagrams);
    let d = if datagrams().any(|d| is_tailscale_disco(d)) {
        WireguardDetails {
            tailscale: true,
            ..WireguardDetails::default()
        }
    } else {
        let wg: Vec<Message> = datagrams().filter_map(|d| parse(d).ok()).collect();
        let seen = |f: fn(&Message) -> bool| wg.iter().any(f);
        let initiation = seen(|m| matches!(m, Message::HandshakeInitiation { .. }));
        let response = seen(|m| matches!(m, Message::HandshakeResponse { .. }));
        let transport = seen(|m| matches!(m, Message::Transport { .. }));
        if !((initiation || response) && (initiation && response || transport)) {
            return Probe::No;
        }
        WireguardDetails {
            handshake_initiation: initiation,
            handshake_response: response,
            transport,
            tailscale: false,
        }
    };
    id.app = Some(App::Wireguard);
    id.details.other = protocol(Protocol::Wireguard, d);
    Probe::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tools::hex;

    #[test]
    fn handshake() {
        // zeek-spicy-analyzers/Traces/wireguard.pcap, the first 16 bytes of the initiation
        // and of the response, padded with their real lengths' worth of zeros.
        let mut init = hex("01000000622863c4ffb0f7a584483804");
        init.resize(148, 0);
        assert_eq!(
            parse(&init).unwrap(),
            Message::HandshakeInitiation { sender: 0xc4632862 }
        );
        let mut resp = hex("020000008868e60a622863c44a827afb");
        resp.resize(92, 0);
        assert_eq!(
            parse(&resp).unwrap(),
            Message::HandshakeResponse {
                sender: 0x0ae66888,
                receiver: 0xc4632862
            }
        );
        assert!(parse(&init[..147]).is_err());
        init[3] = 1;
        assert!(parse(&init).is_err());
    }

    #[test]
    fn transport_and_cookie() {
        // Whitepaper §5.4.6: type 4, receiver, 8-byte counter, then ≥16 bytes (synthesized).
        let mut t = vec![4, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        t.resize(32, 0xaa);
        assert_eq!(
            parse(&t).unwrap(),
            Message::Transport {
                receiver: 7,
                counter: 2
            }
        );
        t.push(0);
        assert!(parse(&t).is_err());
        // wireguard.pcap carries 1452-byte transports: 1420 (the default MTU) + 32.
        t.resize(1452, 0);
        assert!(matches!(parse(&t), Ok(Message::Transport { .. })));
        let mut c = vec![3, 0, 0, 0, 9, 0, 0, 0];
        c.resize(64, 0);
        assert_eq!(parse(&c).unwrap(), Message::CookieReply { receiver: 9 });
        assert!(parse(&[5, 0, 0, 0]).is_err());
    }
}
