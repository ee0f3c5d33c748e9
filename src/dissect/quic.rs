//! QUIC client Initial dissector: removes Initial protection (RFC 9001 §5) to reach the
//! CRYPTO frames that carry the TLS ClientHello, for SNI and JA4 over QUIC.
//!
//! Initial keys derive from the client's first Destination Connection ID with a published
//! salt, so anyone on the path can read them; that is by design (RFC 9001 §5.2).

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::ja4::Transport;
use super::tls::{self, ClientHello};
use super::wire::Reader;
use super::{Error, Result};
use crate::app::App;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::aead::{AeadInPlace, generic_array::GenericArray};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use serde::Serialize;
use sha2::Sha256;

/// QUIC versions whose Initial protection we know.
const VERSION_1: u32 = 0x0000_0001;
const VERSION_2: u32 = 0x6b33_43cf;

/// RFC 9001 §5.2 initial_salt for QUIC v1.
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// RFC 9369 §3.3.1 initial_salt for QUIC v2.
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// Long header (RFC 9000 §17.2): first byte, version(4), DCID len(1) + DCID, SCID len(1) +
/// SCID; an Initial (§17.2.2) adds a Token (varint length) and a Length varint covering the
/// packet number and protected payload.
mod long_header {
    pub const FORM: u8 = 0x80;
    pub const FIXED: u8 = 0x40;
    pub const TYPE_SHIFT: u8 = 4;
    pub const TYPE_MASK: u8 = 0x03;
    /// Packet type bits of an Initial: 0b00 in v1, 0b01 in v2 (RFC 9369 §3.2).
    pub const INITIAL_V1: u8 = 0;
    pub const INITIAL_V2: u8 = 1;
    /// Retry (v1 0b11, v2 0b00) has no Length field.
    pub const RETRY_V1: u8 = 3;
    pub const RETRY_V2: u8 = 0;
    pub const MAX_CID_LEN: usize = 20;
    /// Header protection masks the low four bits of a long header's first byte (§5.4.1).
    pub const PROTECTED_BITS: u8 = 0x0f;
    pub const PN_LEN_MASK: u8 = 0x03;
}

/// AES-128 key, IV and header-protection key lengths (RFC 9001 §5.3, AEAD_AES_128_GCM).
const KEY_LEN: usize = 16;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Header protection samples 16 bytes, 4 bytes past the packet number start (§5.4.2).
const SAMPLE_OFFSET: usize = 4;
const SAMPLE_LEN: usize = 16;

/// Most CRYPTO bytes gathered for one ClientHello.
const MAX_CRYPTO: usize = 1 << 16;

/// Frame types allowed in Initial packets (RFC 9000 §12.4, Table 3).
mod frame {
    pub const PADDING: u64 = 0x00;
    pub const PING: u64 = 0x01;
    pub const ACK: u64 = 0x02;
    pub const ACK_ECN: u64 = 0x03;
    pub const CRYPTO: u64 = 0x06;
    pub const CONNECTION_CLOSE: u64 = 0x1c;
}

/// The client Initial packets of one datagram, decrypted (RFC 9000 §17.2.2, §12.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Initial {
    pub version: u32,
    pub dcid: Vec<u8>,
    /// CRYPTO frames (RFC 9000 §19.6) as (stream offset, data).
    pub crypto: Vec<(u64, Vec<u8>)>,
}

/// Decrypts the client Initial packets of a UDP datagram. Coalesced packets (RFC 9000
/// §12.2) of other types are skipped; at least one Initial must decrypt.
pub fn parse_initial(datagram: &[u8]) -> Result<Initial> {
    let mut rest = datagram;
    let mut initial: Option<Initial> = None;
    while let Some(&first) = rest.first() {
        if first & long_header::FORM == 0 {
            break; // a short header packet or padding: it runs to the datagram's end
        }
        // Trailing bytes that do not parse (another version, junk) cannot undo the
        // Initials already opened.
        let (packet, next) = match open_packet(rest) {
            Err(_) if initial.is_some() => break,
            other => other?,
        };
        if let Some(packet) = packet {
            match &mut initial {
                None => initial = Some(packet),
                Some(i) if i.dcid == packet.dcid => i.crypto.extend(packet.crypto),
                Some(_) => return Err(Error::Invalid("coalesced Initials with different DCIDs")),
            }
        }
        rest = next;
    }
    initial.ok_or(Error::Invalid("no QUIC Initial packet"))
}

/// Reassembles the ClientHello from the CRYPTO frames of a connection's client Initials
/// (RFC 9001 §4.1.3: handshake messages without a record layer) and fingerprints it with
/// JA4's `q` transport.
pub fn client_hello(initials: &[Initial]) -> Result<ClientHello> {
    let mut fragments: Vec<(u64, &[u8])> = initials
        .iter()
        .flat_map(|i| {
            i.crypto
                .iter()
                .map(|(offset, data)| (*offset, data.as_slice()))
        })
        .collect();
    fragments.sort_by_key(|&(offset, _)| offset);
    let mut stream = Vec::new();
    for (offset, data) in fragments {
        let Ok(offset) = usize::try_from(offset) else {
            break;
        };
        let end = offset.saturating_add(data.len());
        if offset > stream.len() || end > MAX_CRYPTO {
            break; // a gap: the rest needs a datagram we have not seen
        }
        if end > stream.len() {
            stream.extend_from_slice(&data[stream.len() - offset..]);
        }
    }
    tls::parse_client_hello_message(&stream, Transport::Quic)
}

/// Parses one long-header packet at the start of `bytes`; returns the decrypted Initial
/// (None for another packet type) and the bytes after the packet.
fn open_packet(bytes: &[u8]) -> Result<(Option<Initial>, &[u8])> {
    let mut r = Reader::new(bytes);
    let first = r.u8()?;
    let version = r.u32()?;
    if first & long_header::FIXED == 0 {
        return Err(Error::Invalid("QUIC fixed bit is zero"));
    }
    let dcid = r.vec8()?;
    let scid = r.vec8()?;
    if dcid.len() > long_header::MAX_CID_LEN || scid.len() > long_header::MAX_CID_LEN {
        return Err(Error::Invalid("QUIC connection ID too long"));
    }
    let kind = (first >> long_header::TYPE_SHIFT) & long_header::TYPE_MASK;
    let (salt, labels, initial, retry) = match version {
        VERSION_1 => (
            &SALT_V1,
            &LABELS_V1,
            long_header::INITIAL_V1,
            long_header::RETRY_V1,
        ),
        VERSION_2 => (
            &SALT_V2,
            &LABELS_V2,
            long_header::INITIAL_V2,
            long_header::RETRY_V2,
        ),
        _ => return Err(Error::Invalid("unknown QUIC version")),
    };
    if kind == retry {
        return Ok((None, &[]));
    }
    if kind == initial {
        r.vec_varint()?; // token
    }
    let length = usize::try_from(r.varint()?).map_err(|_| Error::Invalid("QUIC length"))?;
    let header_len = bytes.len() - r.remaining();
    let packet_end = header_len
        .checked_add(length)
        .filter(|&end| end <= bytes.len())
        .ok_or(Error::Invalid("QUIC packet longer than its datagram"))?;
    let next = &bytes[packet_end..];
    if kind != initial {
        return Ok((None, next));
    }
    let keys = Keys::client_initial(salt, labels, dcid);
    let crypto = decrypt(&keys, &bytes[..packet_end], header_len)?;
    Ok((
        Some(Initial {
            version,
            dcid: dcid.to_vec(),
            crypto: crypto_frames(&crypto)?,
        }),
        next,
    ))
}

/// Removes header protection (RFC 9001 §5.4) and opens the payload (§5.3). `packet` is
/// the whole packet; the packet number starts at `pn_offset`.
fn decrypt(keys: &Keys, packet: &[u8], pn_offset: usize) -> Result<Vec<u8>> {
    let sample_start = pn_offset + SAMPLE_OFFSET;
    let sample = packet
        .get(sample_start..sample_start + SAMPLE_LEN)
        .ok_or(Error::Invalid("QUIC packet too short to sample"))?;
    let mut mask = GenericArray::clone_from_slice(sample);
    aes::Aes128::new(GenericArray::from_slice(&keys.hp)).encrypt_block(&mut mask);

    let mut header = packet[..pn_offset].to_vec();
    header[0] ^= mask[0] & long_header::PROTECTED_BITS;
    let pn_len = usize::from(header[0] & long_header::PN_LEN_MASK) + 1;
    let protected_pn = packet
        .get(pn_offset..pn_offset + pn_len)
        .ok_or(Error::Invalid("QUIC packet number cut short"))?;
    let mut packet_number = 0u64;
    for (i, &b) in protected_pn.iter().enumerate() {
        let b = b ^ mask[1 + i];
        header.push(b);
        packet_number = (packet_number << 8) | u64::from(b);
    }
    let mut payload = packet[pn_offset + pn_len..].to_vec();
    if payload.len() < TAG_LEN {
        return Err(Error::Invalid("QUIC payload shorter than the AEAD tag"));
    }
    let tag = payload.split_off(payload.len() - TAG_LEN);
    // The nonce is the IV XORed with the packet number (RFC 9001 §5.3); a client's first
    // Initials have small numbers, so the truncated number is the full one.
    let mut nonce = keys.iv;
    for (n, p) in nonce
        .iter_mut()
        .rev()
        .zip(packet_number.to_be_bytes().iter().rev())
    {
        *n ^= p;
    }
    Aes128Gcm::new(GenericArray::from_slice(&keys.key))
        .decrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &header,
            &mut payload,
            GenericArray::from_slice(&tag),
        )
        .map_err(|_| Error::Invalid("QUIC Initial does not decrypt"))?;
    Ok(payload)
}

/// Walks the frames of a decrypted Initial payload (RFC 9000 §19) and keeps CRYPTO data.
fn crypto_frames(payload: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let bad = |e| match e {
        Error::Incomplete => Error::Invalid("QUIC frame overruns the packet"),
        other => other,
    };
    let mut r = Reader::new(payload);
    let mut crypto = Vec::new();
    while r.remaining() > 0 {
        match r.varint().map_err(bad)? {
            frame::PADDING | frame::PING => {}
            kind @ (frame::ACK | frame::ACK_ECN) => {
                // Largest Acknowledged, ACK Delay, then a count of ranges after the first.
                r.varint().map_err(bad)?;
                r.varint().map_err(bad)?;
                let ranges = r.varint().map_err(bad)?;
                r.varint().map_err(bad)?;
                for _ in 0..ranges {
                    r.varint().map_err(bad)?;
                    r.varint().map_err(bad)?;
                }
                if kind == frame::ACK_ECN {
                    for _ in 0..3 {
                        r.varint().map_err(bad)?;
                    }
                }
            }
            frame::CRYPTO => {
                let offset = r.varint().map_err(bad)?;
                let data = r.vec_varint().map_err(bad)?;
                crypto.push((offset, data.to_vec()));
            }
            frame::CONNECTION_CLOSE => {
                r.varint().map_err(bad)?; // error code
                r.varint().map_err(bad)?; // frame type
                r.vec_varint().map_err(bad)?; // reason phrase
            }
            _ => return Err(Error::Invalid("frame type not allowed in an Initial")),
        }
    }
    Ok(crypto)
}

/// HKDF labels for the packet protection keys: "quic …" in v1, "quicv2 …" in v2
/// (RFC 9369 §3.3.2).
struct Labels {
    key: &'static [u8],
    iv: &'static [u8],
    hp: &'static [u8],
}

const LABELS_V1: Labels = Labels {
    key: b"quic key",
    iv: b"quic iv",
    hp: b"quic hp",
};
const LABELS_V2: Labels = Labels {
    key: b"quicv2 key",
    iv: b"quicv2 iv",
    hp: b"quicv2 hp",
};

/// Client Initial packet protection keys (RFC 9001 §5.2).
#[derive(Debug, PartialEq, Eq)]
struct Keys {
    key: [u8; KEY_LEN],
    iv: [u8; IV_LEN],
    hp: [u8; KEY_LEN],
}

impl Keys {
    fn client_initial(salt: &[u8], labels: &Labels, dcid: &[u8]) -> Keys {
        let (initial_secret, _) = Hkdf::<Sha256>::extract(Some(salt), dcid);
        let mut client_secret = [0u8; 32];
        expand_label(&initial_secret, b"client in", &mut client_secret);
        let mut keys = Keys {
            key: [0; KEY_LEN],
            iv: [0; IV_LEN],
            hp: [0; KEY_LEN],
        };
        expand_label(&client_secret, labels.key, &mut keys.key);
        expand_label(&client_secret, labels.iv, &mut keys.iv);
        expand_label(&client_secret, labels.hp, &mut keys.hp);
        keys
    }
}

/// HKDF-Expand-Label with an empty context (RFC 8446 §7.1): the info is the output length,
/// the label prefixed with "tls13 ", and a zero-length context.
fn expand_label(secret: &[u8], label: &[u8], out: &mut [u8]) {
    const PREFIX: &[u8] = b"tls13 ";
    let mut info = Vec::with_capacity(4 + PREFIX.len() + label.len());
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push((PREFIX.len() + label.len()) as u8);
    info.extend_from_slice(PREFIX);
    info.extend_from_slice(label);
    info.push(0);
    // Secrets are 32-byte SHA-256 PRKs and outputs at most 32 bytes, so expansion cannot fail.
    if let Ok(hkdf) = Hkdf::<Sha256>::from_prk(secret) {
        let _ = hkdf.expand(&info, out);
    }
}

/// What a flow record says of a QUIC connection: its version and the client's hello.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QuicDetails {
    pub version: u32,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub ja4: Option<String>,
}

impl Summary for QuicDetails {}

/// QUIC: a long-header client Initial that decrypts. Settled with the ClientHello (which
/// may span the first few Initials), or after three datagrams without it.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let first = input.first_datagram();
    // Header form and fixed bit set: a long header (RFC 9000 §17.2).
    let long_header = first.first().is_some_and(|b| b & 0xc0 == 0xc0);
    if !long_header {
        return Probe::No;
    }
    let Ok(initial) = parse_initial(first) else {
        return Probe::No;
    };
    let version = initial.version;
    let cd = input.client_datagrams;
    // The first datagram is the client's first when the client has sent one: decrypted
    // once, above, not again with the rest (each decryption derives its keys anew).
    let initials: Vec<Initial> = match cd.split_first() {
        Some((_, rest)) => std::iter::once(initial)
            .chain(rest.iter().filter_map(|d| parse_initial(d).ok()))
            .collect(),
        None => Vec::new(),
    };
    let hello = client_hello(&initials);
    id.app = Some(App::Quic);
    let mut d = QuicDetails {
        version,
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
    Probe::done_if(settled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tls::tests::hex;

    /// RFC 9001 Appendix A.1: the client's Destination Connection ID.
    const DCID: &str = "8394c8f03e515708";

    /// RFC 9001 Appendix A.2: the protected client Initial (a 1200-byte datagram).
    pub(crate) const RFC9001_CLIENT_INITIAL: &str = "
        c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11
        d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399
        1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c
        8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212
        30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5
        457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208
        4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec
        4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3
        485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db
        059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c
        7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8
        9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556
        be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74
        68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a
        c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00
        f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632
        291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964
        25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd
        14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff
        ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198
        e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd
        c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73
        203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f
        cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e
        fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade
        a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047
        90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2
        162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4
        40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0
        6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e
        8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0
        be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400
        54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab
        760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9
        f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4
        056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064
        7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241
        e221af44860018ab0856972e194cd934";

    /// RFC 9001 Appendix A.2: the ClientHello inside the CRYPTO frame.
    const RFC9001_CLIENT_HELLO: &str = "
        010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47
        f06a2b69484c00000413011302010000c000000010000e00000b6578616d706c
        652e636f6dff01000100000a00080006001d0017001800100007000504616c70
        6e000500050100000000003300260024001d00209370b2c9caa47fbabaf4559f
        edba753de171fa71f50f1ce15d43e994ec74d748002b0003020304000d001000
        0e0403050306030203080408050806002d00020101001c00024001003900320408
        ffffffffffffffff05048000ffff07048000ffff0801100104800075300901100f
        088394c8f03e51570806048000ffff";

    #[test]
    fn rfc9001_a1_keys() {
        let keys = Keys::client_initial(&SALT_V1, &LABELS_V1, &hex(DCID));
        assert_eq!(keys.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(keys.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(keys.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
    }

    /// RFC 9369 Appendix A.1: the same DCID under QUIC v2's salt and labels.
    #[test]
    fn rfc9369_a1_keys() {
        let keys = Keys::client_initial(&SALT_V2, &LABELS_V2, &hex(DCID));
        assert_eq!(keys.key.to_vec(), hex("8b1a0bc121284290a29e0971b5cd045d"));
        assert_eq!(keys.iv.to_vec(), hex("91f73e2351d8fa91660e909f"));
        assert_eq!(keys.hp.to_vec(), hex("45b95e15235d6f45a6b19cbcb0294ba9"));
    }

    #[test]
    fn rfc9001_a2_client_initial() {
        let datagram = hex(RFC9001_CLIENT_INITIAL);
        assert_eq!(datagram.len(), 1200);
        let initial = parse_initial(&datagram).unwrap();
        assert_eq!(initial.version, VERSION_1);
        assert_eq!(initial.dcid, hex(DCID));
        assert_eq!(initial.crypto, vec![(0, hex(RFC9001_CLIENT_HELLO))]);

        let hello = client_hello(&[initial]).unwrap();
        assert_eq!(hello.sni.as_deref(), Some("example.com"));
        assert_eq!(hello.alpn, vec!["alpn".to_string()]);
        assert_eq!(hello.ciphers, vec![0x1301, 0x1302]);
        // 2 ciphers, 11 extensions (incl. quic_transport_parameters 0x39), ALPN "alpn".
        assert!(hello.ja4.starts_with("q13d0211an_"), "{}", hello.ja4);
    }

    #[test]
    fn tampered_or_truncated_initial_fails() {
        let mut datagram = hex(RFC9001_CLIENT_INITIAL);
        assert!(matches!(
            parse_initial(&datagram[..40]),
            Err(Error::Invalid(_))
        ));
        datagram[100] ^= 1;
        assert_eq!(
            parse_initial(&datagram),
            Err(Error::Invalid("QUIC Initial does not decrypt"))
        );
        assert!(matches!(
            parse_initial(b"\x16\x03\x01"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn crypto_reassembly_across_initials() {
        let message = hex(RFC9001_CLIENT_HELLO);
        let part = |offset: usize, end: usize| Initial {
            version: VERSION_1,
            dcid: hex(DCID),
            crypto: vec![(offset as u64, message[offset..end].to_vec())],
        };
        // Out of order and overlapping, as retransmissions may be.
        let initials = [part(100, message.len()), part(0, 120)];
        assert_eq!(
            client_hello(&initials).unwrap().sni.as_deref(),
            Some("example.com")
        );
        assert_eq!(client_hello(&initials[..1]), Err(Error::Incomplete));
        assert_eq!(client_hello(&initials[1..]), Err(Error::Incomplete));
    }

    #[test]
    fn frames() {
        // PING, ACK (largest 5, delay 0, one extra range), CRYPTO "ab" at 3, PADDING.
        let payload = hex("01 02 05 00 01 00 00 00 06 03 02 6162 00 00");
        assert_eq!(crypto_frames(&payload), Ok(vec![(3, b"ab".to_vec())]));
        assert!(matches!(
            crypto_frames(&hex("08 00")),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            crypto_frames(&hex("06 00 05 61")),
            Err(Error::Invalid(_))
        ));
    }

    /// RFC 9369 Appendix A.2: the same client Initial protected for QUIC v2 (Initial
    /// type bits 0b01, v2 salt and labels).
    const RFC9369_CLIENT_INITIAL: &str = "
        d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485
        dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04
        9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d
        250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a
        12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500
        cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68
        18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33
        12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3
        d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd
        6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520
        bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045
        636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f
        ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12
        16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5
        4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4
        fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b
        8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7
        14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9
        9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91
        abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd
        80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db
        848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18
        d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15
        c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc
        7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61
        f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710
        10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b
        3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e
        06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce
        8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1
        34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1
        e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd
        5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3
        8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89
        d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53
        6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19
        9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b
        a18b2faa745b6fe189cf772a9f84cbfc";

    #[test]
    fn rfc9369_a2_client_initial() {
        let datagram = hex(RFC9369_CLIENT_INITIAL);
        assert_eq!(datagram.len(), 1200);
        let initial = parse_initial(&datagram).unwrap();
        assert_eq!(initial.version, VERSION_2);
        assert_eq!(initial.crypto, vec![(0, hex(RFC9001_CLIENT_HELLO))]);
        // Under v1 rules the same type bits mean 0-RTT: relabelled, it is no Initial.
        let mut as_v1 = datagram.clone();
        as_v1[1..5].copy_from_slice(&VERSION_1.to_be_bytes());
        assert!(matches!(parse_initial(&as_v1), Err(Error::Invalid(_))));
    }
}
