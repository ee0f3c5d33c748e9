//! Labels for flows picked up mid-stream (open before the capture started): no handshake
//! will come, so the label rests on the framing the bytes show. Each rule wants a chain of
//! frames whose lengths land exactly on the next header, or a constant header with a counter
//! that goes up by one, so that random bytes do not pass (REFERENCE-2 §2).

use crate::app::App;
use crate::dissect::identify::{Identification, Input, Probe};

/// Frames a chain must have before it counts.
pub const MIN_CHAIN: usize = 3;
/// How far into a TCP prefix a TLS chain may start: the first captured segment may begin
/// inside a record, which is at most 2^14 + 2048 bytes (RFC 5246 §6.2.3).
const TLS_SEARCH: usize = (1 << 14) + 2048 + 5;

/// The label a mid-stream TCP flow's bytes show, if any. Either direction is tried for
/// each rule: the first packet seen decided which end is the originator.
pub fn tcp(a: &[u8], b: &[u8]) -> Option<App> {
    let either = |rule: fn(&[u8]) -> bool| rule(a) || rule(b);
    if either(rdp_frames) {
        Some(App::Rdp)
    } else if either(rfb_client_messages) {
        Some(App::Vnc)
    } else if either(openvpn_tcp) {
        Some(App::Openvpn)
    } else if tls_records(a, b) {
        Some(App::Tls)
    } else {
        None
    }
}

/// The label one direction's datagrams show from their data packets alone.
pub fn udp(datagrams: &[Vec<u8>]) -> Option<App> {
    if wireguard_transport(datagrams) {
        Some(App::Wireguard)
    } else if openvpn_packets(datagrams.iter().map(Vec::as_slice)) {
        Some(App::Openvpn)
    } else {
        None
    }
}

/// Whether a first datagram could start a data-packet chain, so identification should wait
/// for [`MIN_CHAIN`] of them.
pub fn could_chain(datagram: &[u8]) -> bool {
    datagram.starts_with(&[4, 0, 0, 0])
        || datagram.first().is_some_and(|b| (0x48..=0x4f).contains(b))
        || tls_crypt_wrapped(datagram).is_some()
}

/// TLS record header (RFC 8446 §5.1): content type 20–24, version `03 00`–`03 04`, length
/// within the TLS 1.2 bound. Returns the offset of the next header.
fn tls_record(stream: &[u8], at: usize) -> Option<usize> {
    let h = stream.get(at..at + 5)?;
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    ((20..=24).contains(&h[0]) && h[1] == 3 && h[2] <= 4 && len > 0 && len <= (1 << 14) + 2048)
        .then_some(at + 5 + len)
}

/// TLS records from the start of a direction: how many chain, whether one is application
/// data, and whether the last ends exactly where the bytes do.
fn tls_chain(stream: &[u8]) -> (usize, bool, bool) {
    let (mut at, mut n, mut app_data) = (0, 0, false);
    while let Some(next) = tls_record(stream, at) {
        app_data |= stream[at] == 23;
        n += 1;
        at = next;
        if at >= stream.len() {
            break;
        }
    }
    (n, app_data, n > 0 && at == stream.len())
}

/// TLS mid-stream, from both directions: [`MIN_CHAIN`] chained records between them, or
/// each direction's records filling its bytes exactly (nDPI's rule, on both sides); else
/// a chain of [`MIN_CHAIN`] in one direction from some offset in the first record's reach
/// (the first segment seen may begin inside a record). Application data must be among them.
pub fn tls_records(a: &[u8], b: &[u8]) -> bool {
    let (ca, cb) = (tls_chain(a), tls_chain(b));
    let app_data = ca.1 || cb.1;
    (app_data && (ca.0 + cb.0 >= MIN_CHAIN || (ca.2 && cb.2)))
        || tls_chain_anywhere(a)
        || tls_chain_anywhere(b)
}

/// A chain of [`MIN_CHAIN`] records with application data, from some offset. A record's
/// second byte is its version's major, 3, so only the offsets before a 3 are tried (found
/// with memchr): a flow picked up mid-stream is searched again as each segment comes, and
/// trying every offset of the reach made this search half of a mid-stream replay's time.
fn tls_chain_anywhere(stream: &[u8]) -> bool {
    let reach = stream.len().min(TLS_SEARCH);
    let majors = stream
        .get(1..(reach + 1).min(stream.len()))
        .unwrap_or_default();
    memchr::memchr_iter(3, majors).any(|start| {
        let mut at = start;
        let mut app_data = false;
        for _ in 0..MIN_CHAIN {
            match tls_record(stream, at) {
                Some(next) => {
                    app_data |= stream[at] == 23;
                    at = next;
                }
                None => return false,
            }
        }
        app_data
    })
}

/// RDP's two framings after the handshake, chained from the start: TPKT (`03 00` + u16
/// length incl. the header, T.123 §8) and fast-path (MS-RDPBCGR 2.2.9.1.2 / 2.2.8.1.2:
/// action bits 00, then a 1- or 2-byte length incl. the header). At least one TPKT frame,
/// as fast-path alone is two loose bytes.
pub fn rdp_frames(stream: &[u8]) -> bool {
    let (mut at, mut frames, mut tpkt) = (0, 0, false);
    while frames < MIN_CHAIN + 1 {
        let Some(&first) = stream.get(at) else {
            break;
        };
        let len = if first == 3 {
            let h = stream.get(at..at + 4).filter(|h| h[1] == 0);
            tpkt |= h.is_some();
            h.map(|h| usize::from(u16::from_be_bytes([h[2], h[3]])))
                .filter(|&n| n >= 7)
        } else if first & 0x03 == 0 {
            match stream.get(at + 1) {
                Some(&b) if b & 0x80 != 0 => stream
                    .get(at + 2)
                    .map(|&lo| usize::from(u16::from_be_bytes([b & 0x7f, lo]))),
                Some(&b) => Some(usize::from(b)),
                None => None,
            }
            .filter(|&n| n >= 3)
        } else {
            None
        };
        let Some(len) = len else {
            break;
        };
        at += len;
        frames += 1;
        if at > stream.len() {
            break;
        }
    }
    tpkt && frames >= MIN_CHAIN
}

/// RFB client-to-server messages (RFC 6143 §7.5), chained from the start, with their
/// padding zero; at least one FramebufferUpdateRequest (the viewer asks for every frame).
pub fn rfb_client_messages(stream: &[u8]) -> bool {
    let (mut at, mut messages, mut request) = (0, 0, false);
    while let Some(&kind) = stream.get(at) {
        let m = &stream[at..];
        let len = match kind {
            // SetPixelFormat: 3 padding bytes.
            0 if m.get(1..4) == Some(&[0, 0, 0]) => 20,
            // SetEncodings: 1 padding byte, u16 count, 4 bytes each.
            2 if m.get(1) == Some(&0) => {
                m.get(2..4)
                    .map_or(0, |n| usize::from(u16::from_be_bytes([n[0], n[1]])))
                    * 4
                    + 4
            }
            // FramebufferUpdateRequest: incremental is 0 or 1.
            3 if m.get(1).is_some_and(|&b| b <= 1) => {
                request = true;
                10
            }
            // KeyEvent: down-flag 0/1, 2 padding bytes.
            4 if m.get(1).is_some_and(|&b| b <= 1) && m.get(2..4) == Some(&[0, 0]) => 8,
            5 => 6,
            // ClientCutText: 3 padding bytes, u32 length.
            6 if m.get(1..4) == Some(&[0, 0, 0]) => m.get(4..8).map_or(usize::MAX, |n| {
                8usize.saturating_add(u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            }),
            _ => break,
        };
        if at.saturating_add(len) > stream.len() {
            break;
        }
        at += len;
        messages += 1;
    }
    request && messages >= MIN_CHAIN
}

/// OpenVPN over TCP: each packet behind a u16 length (`ssl_pkt.h`); the packets must pass
/// [`openvpn_packets`].
fn openvpn_tcp(stream: &[u8]) -> bool {
    let mut packets = Vec::new();
    let mut at = 0;
    while packets.len() < OPENVPN_PACKETS {
        let Some(len) = stream
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        match stream.get(at + 2..at + 2 + len) {
            Some(p) => packets.push(p),
            None => break,
        }
        at += 2 + len;
    }
    openvpn_packets(packets.into_iter())
}

/// Packets of one direction looked at for OpenVPN: a renegotiation's control packets and
/// ACKs come between data packets, so a few more than [`MIN_CHAIN`].
const OPENVPN_PACKETS: usize = 2 * MIN_CHAIN + 2;

/// OpenVPN from a direction's packets: its first ones are data packets by the
/// [`openvpn_data`] rule, or its control packets are wrapped by tls-crypt
/// ([`tls_crypt_control`]).
fn openvpn_packets<'a>(packets: impl Iterator<Item = &'a [u8]> + Clone) -> bool {
    openvpn_data(packets.clone())
        || tls_crypt_control(packets.take(OPENVPN_PACKETS).filter_map(tls_crypt_wrapped))
}

/// The clear header of a control packet wrapped by tls-crypt (`tls_crypt.h`): opcode soft
/// reset, control or ACK (3–5) with its key id, the session id (bytes 1–8), the wrap's
/// packet id (9–12) and its time in Unix seconds (13–16); then a 32-byte HMAC tag and the
/// ciphertext, at least the ACK count. Without tls-crypt, byte 9 starts an ACK array
/// (plain) or an HMAC (tls-auth), so the packet id and time do not line up.
fn tls_crypt_wrapped(p: &[u8]) -> Option<(&[u8], u32, u32)> {
    let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let opcode = p.first()? >> 3;
    ((3..=5).contains(&opcode) && p.len() > 17 + 32).then(|| (&p[..9], u32_at(9), u32_at(13)))
}

/// How far a tls-crypt wrap's time may move between one direction's packets: a
/// renegotiation exchanges its control packets within a minute.
const TLS_CRYPT_TIME_STEP: u32 = 60;

/// tls-crypt control packets (headers from [`tls_crypt_wrapped`]): [`MIN_CHAIN`] of them
/// with one opcode byte's session (key id and session id), the packet id +1 each, and
/// times that never go back nor jump more than [`TLS_CRYPT_TIME_STEP`] — the session's
/// renegotiations (hourly by default) show them mid-stream even when the data packets
/// show no counter in clear (CBC ciphers).
fn tls_crypt_control<'a>(mut headers: impl Iterator<Item = (&'a [u8], u32, u32)>) -> bool {
    let Some((session, mut id, mut time)) = headers.next() else {
        return false;
    };
    let same_session = |h: &[u8]| h[0] & 0x07 == session[0] & 0x07 && h[1..] == session[1..];
    for _ in 1..MIN_CHAIN {
        match headers.next() {
            Some((h, i, t))
                if same_session(h)
                    && i == id.wrapping_add(1)
                    && t >= time
                    && t - time <= TLS_CRYPT_TIME_STEP =>
            {
                (id, time) = (i, t);
            }
            _ => return false,
        }
    }
    true
}

/// OpenVPN P_DATA_V2 (`ssl_pkt.h`, `crypto.h`): byte 0 constant in `0x48..=0x4F` (opcode 9,
/// key id), the peer id (bytes 1–3) constant, the packet id (bytes 4–7) +1 per packet, and
/// an AEAD tag (16 B) after it. Checked over the first [`MIN_CHAIN`] packets of a direction.
pub fn openvpn_data<'a>(mut packets: impl Iterator<Item = &'a [u8]>) -> bool {
    let Some(first) = packets.next().filter(|p| p.len() > 8 + 16) else {
        return false;
    };
    if !(0x48..=0x4f).contains(&first[0]) {
        return false;
    }
    let id = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let mut last = id(first);
    for _ in 1..MIN_CHAIN {
        match packets.next() {
            Some(p)
                if p.len() > 8 + 16 && p[..4] == first[..4] && id(p) == last.wrapping_add(1) =>
            {
                last = id(p)
            }
            _ => return false,
        }
    }
    true
}

/// WireGuard transport data (`noise-protocol.go`, `send.go`): type 4 with three zero bytes,
/// the same receiver index (LE u32 at 4), a counter (LE u64 at 8) +1 per packet, and a
/// ciphertext of 16 + 16k bytes (padded plaintext and the tag; the last block may be cut at
/// the MTU). Checked over a direction's first [`MIN_CHAIN`] datagrams.
pub fn wireguard_transport(datagrams: &[Vec<u8>]) -> bool {
    let header = |d: &[u8]| {
        (d.len() >= 32 && d[..4] == [4, 0, 0, 0]).then(|| {
            let index = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            let mut counter = [0; 8];
            counter.copy_from_slice(&d[8..16]);
            (index, u64::from_le_bytes(counter))
        })
    };
    let Some(chain) = datagrams.get(..MIN_CHAIN) else {
        return false;
    };
    let mut headers = chain.iter().map(|d| header(d));
    let Some(Some((index, mut counter))) = headers.next() else {
        return false;
    };
    headers.all(|h| {
        let ok = h == Some((index, counter.wrapping_add(1)));
        counter = counter.wrapping_add(1);
        ok
    })
}

/// TCP picked up mid-stream: no handshake will come, so the framing decides, and
/// identification waits while the prefix fills (a chain needs a few frames).
pub fn tcp_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    if !input.midstream {
        return Probe::No;
    }
    if let Some(app) = tcp(input.client, input.server) {
        id.app = Some(app);
        return Probe::Done;
    }
    Probe::done_if(input.client_closed && input.server_closed)
}

/// A UDP tunnel's data packets, its handshake before the capture: their chain decides.
pub fn udp_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let (cd, sd) = (input.client_datagrams, input.server_datagrams);
    if let Some(app) = udp(cd).or_else(|| udp(sd)) {
        id.app = Some(app);
        id.picked_up_mid_stream = true;
        return Probe::Done;
    }
    if could_chain(input.first_datagram()) {
        return Probe::done_if(cd.len() >= MIN_CHAIN && sd.len() >= MIN_CHAIN);
    }
    Probe::No
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(kind: u8, len: usize) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.resize(5 + len, 0xa5);
        r
    }

    /// The search tries only the offsets before a 3, and finds what trying every offset of
    /// the reach finds.
    #[test]
    fn tls_chain_anywhere_finds_what_every_offset_finds() {
        let every = |stream: &[u8]| {
            (0..stream.len().min(TLS_SEARCH)).any(|start| {
                let mut at = start;
                let mut app_data = false;
                for _ in 0..MIN_CHAIN {
                    let Some(next) = tls_record(stream, at) else {
                        return false;
                    };
                    app_data |= stream[at] == 23;
                    at = next;
                }
                app_data
            })
        };
        let chain = [tls(23, 40), tls(23, 100), tls(21, 7)].concat();
        let mut streams: Vec<Vec<u8>> = vec![vec![], vec![3], vec![23, 3], chain.clone()];
        for skip in [1, 5, 300, TLS_SEARCH - 2, TLS_SEARCH, TLS_SEARCH + 1] {
            streams.push([vec![3u8; skip], chain.clone()].concat());
            streams.push([vec![0x17u8; skip], chain.clone()].concat());
        }
        // Bytes of every value, 3s and record types among them.
        let mut x = 0x9e37_79b9u32;
        streams.push(
            (0..40_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    [3, 23, 0, 0x40, (x >> 8) as u8][(x % 5) as usize]
                })
                .collect(),
        );
        for stream in &streams {
            assert_eq!(
                tls_chain_anywhere(stream),
                every(stream),
                "{} bytes",
                stream.len()
            );
        }
        assert!(tls_chain_anywhere(&streams[5]));
    }

    #[test]
    fn tls_needs_three_chained_records() {
        let mut s = [tls(23, 40), tls(23, 100), tls(23, 7)].concat();
        assert!(tls_records(&s, b""));
        // Picked up inside a record: the chain starts further on.
        assert!(tls_records(&[&[0x11; 13][..], &s].concat(), b""));
        s.truncate(40 + 5 + 100 + 5 + 2);
        assert!(!tls_records(&s, b""));
        // Two, and the other side's one: three between them.
        assert!(tls_records(&s, &tls(23, 30)));
        let handshake = [tls(22, 40), tls(20, 1), tls(22, 9)].concat();
        assert!(!tls_records(&handshake, b""));
        // One record each way, each filling its side exactly.
        assert!(tls_records(&tls(23, 190), &tls(21, 26)));
        assert!(!tls_records(&tls(23, 190), &tls(21, 26)[..20]));
        let random = b"\x17\x03\x03\x00\x10random-bytes-xx";
        assert!(!tls_records(random, random));
    }

    #[test]
    fn rdp_wants_tpkt_and_a_chain() {
        let tpkt = [3, 0, 0, 9, 2, 0xf0, 0x80, 0x64, 0];
        let fast = [0x00, 0x05, 1, 2, 3];
        let long = [[0x80u8, 0x80, 0x08].as_slice(), &[7; 5]].concat();
        assert!(rdp_frames(&[&tpkt[..], &fast, &long].concat()));
        assert!(!rdp_frames(&[&fast[..], &fast, &fast, &fast].concat()));
        assert!(!rdp_frames(&[&tpkt[..], &[1, 2, 3]].concat()));
    }

    #[test]
    fn rfb_client_messages_chain() {
        let fbur = [3, 1, 0, 0, 0, 0, 4, 0, 3, 0];
        let key = [4, 1, 0, 0, 0, 0, 0xff, 0x0d];
        let pointer = [5, 0, 0, 10, 0, 20];
        assert!(rfb_client_messages(&[&fbur[..], &key, &pointer].concat()));
        assert!(!rfb_client_messages(&[&key[..], &key, &pointer].concat()));
        assert!(!rfb_client_messages(&[&fbur[..], &[4, 9, 9, 9]].concat()));
    }

    fn ovpn(id: u32) -> Vec<u8> {
        let mut p = vec![0x48, 0, 0, 1];
        p.extend_from_slice(&id.to_be_bytes());
        p.resize(8 + 16 + 20, 0x33);
        p
    }

    #[test]
    fn openvpn_data_counts_up() {
        let ok = [ovpn(7), ovpn(8), ovpn(9)];
        assert!(openvpn_data(ok.iter().map(Vec::as_slice)));
        assert_eq!(udp(&ok), Some(App::Openvpn));
        let skipped = [ovpn(7), ovpn(9), ovpn(10)];
        assert!(!openvpn_data(skipped.iter().map(Vec::as_slice)));
        let framed: Vec<u8> = ok
            .iter()
            .flat_map(|p| [&(p.len() as u16).to_be_bytes()[..], p].concat())
            .collect();
        assert_eq!(tcp(b"", &framed), Some(App::Openvpn));
    }

    /// A tls-crypt-wrapped control packet: opcode and key id, session id, packet id, time,
    /// then tag and ciphertext.
    fn wrapped(op: u8, id: u32, time: u32) -> Vec<u8> {
        let mut p = vec![op];
        p.extend_from_slice(&[0xd2, 0x6c, 0xd3, 0x3f, 0xac, 0x2b, 0x59, 0xb5]);
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&time.to_be_bytes());
        p.resize(17 + 32 + 20, 0x9e);
        p
    }

    #[test]
    fn tls_crypt_control_packets_count_up_in_one_session() {
        const T: u32 = 1_796_604_834;
        // A renegotiation (key id 1): soft reset, control, ACK; a data packet between.
        let ok = [
            wrapped(0x19, 1, T),
            ovpn(7),
            wrapped(0x21, 2, T),
            wrapped(0x29, 3, T + 1),
        ];
        assert!(could_chain(&ok[0]));
        assert_eq!(udp(&ok), Some(App::Openvpn));
        let framed: Vec<u8> = ok
            .iter()
            .flat_map(|p| [&(p.len() as u16).to_be_bytes()[..], p].concat())
            .collect();
        assert_eq!(tcp(&framed, b""), Some(App::Openvpn));
        // A packet id skipped, a time going back, another key id, a data opcode: no chain.
        let skipped = [
            wrapped(0x19, 1, T),
            wrapped(0x21, 3, T),
            wrapped(0x29, 4, T),
        ];
        assert_eq!(udp(&skipped), None);
        let back = [
            wrapped(0x19, 1, T),
            wrapped(0x21, 2, T - 1),
            wrapped(0x29, 3, T),
        ];
        assert_eq!(udp(&back), None);
        let jump = [
            wrapped(0x19, 1, T),
            wrapped(0x21, 2, T + 3600),
            wrapped(0x29, 3, T),
        ];
        assert_eq!(udp(&jump), None);
        let keys = [
            wrapped(0x19, 1, T),
            wrapped(0x22, 2, T),
            wrapped(0x29, 3, T),
        ];
        assert_eq!(udp(&keys), None);
        // Too short for the tag: not wrapped.
        assert!(!could_chain(&wrapped(0x19, 1, T)[..49]));
    }

    fn wg(counter: u64) -> Vec<u8> {
        let mut d = vec![4, 0, 0, 0, 0x78, 0x56, 0x34, 0x12];
        d.extend_from_slice(&counter.to_le_bytes());
        d.resize(32 + 16 * 3, 0x5c);
        d
    }

    #[test]
    fn wireguard_transport_counts_up_under_one_index() {
        assert_eq!(udp(&[wg(41), wg(42), wg(43)]), Some(App::Wireguard));
        assert_eq!(udp(&[wg(41), wg(41), wg(42)]), None);
        let mut other = wg(42);
        other[4] = 0;
        assert_eq!(udp(&[wg(41), other, wg(43)]), None);
        assert_eq!(udp(&[wg(41), wg(42)]), None);
    }
}
