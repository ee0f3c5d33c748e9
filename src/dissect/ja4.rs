//! JA4 TLS client fingerprint, per FoxIO's published specification
//! (FoxIO-LLC/ja4 `technical_details/JA4.md`; JA4 for TLS clients is BSD-3-Clause).
//!
//! `JA4 = a_b_c`: `a` = transport, version, SNI or not, cipher and extension counts, ALPN
//! first/last characters; `b` = truncated SHA-256 of the sorted cipher list; `c` = truncated
//! SHA-256 of the sorted extension list (without SNI and ALPN), then `_` and the signature
//! algorithms in wire order. GREASE values (RFC 8701) are ignored everywhere.

use std::cell::RefCell;
use std::collections::HashMap;

use super::tls::ClientHello;
use sha2::{Digest, Sha256};

/// Which transport carried the hello: JA4's first character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Quic,
    Dtls,
}

const SNI: u16 = 0x0000;
const ALPN: u16 = 0x0010;

/// Hash part for an empty list: the spec prints twelve zeros rather than hashing nothing.
const EMPTY_HASH: &str = "000000000000";

/// The JA4 fingerprint of `hello`. Every TLS flow computes it, so it is written into one
/// string: no list is formatted and joined, and the hashed lists go through one scratch
/// buffer.
pub fn ja4(hello: &ClientHello, transport: Transport) -> String {
    let p = Parts::of(hello, transport);
    let mut out = String::with_capacity(36);
    out.push_str(a_str(&p.a));
    hashes(&Lists::of(&p.lists), &mut out);
    out
}

/// [`ja4`], its hashed parts taken from `memo` when the same lists were hashed before.
pub fn ja4_with(hello: &ClientHello, transport: Transport, memo: Option<&Memo>) -> String {
    match memo {
        Some(memo) => memo.ja4(hello, transport),
        None => ja4(hello, transport),
    }
}

/// Appends `_b_c`: the truncated hashes of the sorted ciphers, and of the sorted
/// extensions with the signature algorithms.
fn hashes(l: &Lists<'_>, out: &mut String) {
    let mut scratch = Vec::with_capacity(5 * l.ciphers.len().max(l.extensions.len()) + 128);
    for (list, sigs) in [(l.ciphers, &[][..]), (l.extensions, l.signature_algorithms)] {
        out.push('_');
        if list.is_empty() {
            out.push_str(EMPTY_HASH);
            continue;
        }
        scratch.clear();
        hex_list(&mut scratch, list);
        if !sigs.is_empty() {
            scratch.push(b'_');
            hex_list(&mut scratch, sigs);
        }
        for b in &Sha256::digest(&scratch)[..6] {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
    }
}

/// Distinct hashed parts a [`Memo`] keeps; past it a new one is hashed every time.
pub const MEMO_ENTRIES: usize = 4096;

/// JA4 hashes already worked out, by the lists they hash. A fleet's clients send a handful
/// of distinct cipher, extension and signature lists (GREASE left out), and the two
/// SHA-256 of each ClientHello were most of the instructions of dissecting a TLS flow.
/// Bounded like the shared details (`super::shared`): past [`MEMO_ENTRIES`] a new
/// fingerprint is not kept, only hashed, so nothing is lost and nothing evicted. A
/// worker's probes share one through [`super::identify::Input`], which they read
/// through `&`.
#[derive(Default)]
pub struct Memo {
    known: RefCell<Known>,
}

#[derive(Default)]
struct Known {
    /// `_b_c` by the lists they hash, laid out as [`Parts::lists`].
    hashes: HashMap<Box<[u16]>, String, ahash::RandomState>,
    /// The lists of the hello being looked up, put together here rather than in new
    /// Vecs each time.
    key: Vec<u16>,
}

impl Memo {
    /// [`ja4`] of `hello`, its hashes from the memo when its lists were hashed before.
    fn ja4(&self, hello: &ClientHello, transport: Transport) -> String {
        let Ok(mut known) = self.known.try_borrow_mut() else {
            return ja4(hello, transport);
        };
        let Known { hashes: map, key } = &mut *known;
        let a = Parts::fill(hello, transport, key);
        let mut out = String::with_capacity(36);
        out.push_str(a_str(&a));
        if let Some(tail) = map.get(key.as_slice()) {
            out.push_str(tail);
            return out;
        }
        let start = out.len();
        hashes(&Lists::of(key), &mut out);
        if map.len() < MEMO_ENTRIES {
            map.insert(key.as_slice().into(), out[start..].to_string());
        }
        out
    }

    /// Distinct hashed parts kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.known.borrow().hashes.len()
    }
}

/// JA4_r, the raw form: the sorted lists unhashed. Nothing writes it out, so it is
/// computed only on demand.
pub fn ja4_r(hello: &ClientHello, transport: Transport) -> String {
    let p = Parts::of(hello, transport);
    let l = Lists::of(&p.lists);
    let mut out = a_str(&p.a).as_bytes().to_vec();
    out.push(b'_');
    hex_list(&mut out, l.ciphers);
    out.push(b'_');
    hex_list(&mut out, l.extensions);
    if !l.signature_algorithms.is_empty() {
        out.push(b'_');
        hex_list(&mut out, l.signature_algorithms);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// What JA4 and JA4_r are made of: `a` (always 10 ASCII bytes), and `lists`: the sorted
/// cipher list after its length, the sorted extension list (extensions without SNI and
/// ALPN) after its length, then the signature algorithms in wire order, all without
/// GREASE. The lengths keep the lists apart, so `lists` is also a [`Memo`]'s key.
struct Parts {
    a: [u8; 10],
    lists: Vec<u16>,
}

impl Parts {
    fn of(hello: &ClientHello, transport: Transport) -> Parts {
        let mut lists = Vec::new();
        let a = Parts::fill(hello, transport, &mut lists);
        Parts { a, lists }
    }

    /// Puts the lists of `hello` into `lists` (what was there goes) and returns `a`.
    fn fill(hello: &ClientHello, transport: Transport, lists: &mut Vec<u16>) -> [u8; 10] {
        let real = |v: &&u16| !is_grease(**v);
        lists.clear();
        lists.push(0);
        lists.extend(hello.ciphers.iter().filter(real));
        let ciphers = lists.len() - 1;
        let at = lists.len();
        lists.push(0);
        let (mut extensions, mut sni) = (0, false);
        for &e in hello.extensions.iter().filter(real) {
            extensions += 1;
            sni |= e == SNI;
            if e != SNI && e != ALPN {
                lists.push(e);
            }
        }
        // A hello's lists are shorter than 2^16 entries: their lengths in bytes are u16s.
        lists[0] = ciphers as u16;
        lists[at] = (lists.len() - at - 1) as u16;
        lists[1..at].sort_unstable();
        lists[at + 1..].sort_unstable();
        lists.extend(hello.signature_algorithms.iter().filter(real));
        let mut a = [0u8; 10];
        a[0] = match transport {
            Transport::Tcp => b't',
            Transport::Quic => b'q',
            Transport::Dtls => b'd',
        };
        a[1..3].copy_from_slice(version_code(version(hello)).as_bytes());
        a[3] = if sni { b'd' } else { b'i' };
        a[4..6].copy_from_slice(&two_digits(ciphers));
        a[6..8].copy_from_slice(&two_digits(extensions));
        a[8..10].copy_from_slice(&alpn_code(&hello.alpn_first_raw));
        a
    }
}

/// The three lists of [`Parts::lists`], apart.
struct Lists<'a> {
    ciphers: &'a [u16],
    extensions: &'a [u16],
    signature_algorithms: &'a [u16],
}

impl Lists<'_> {
    fn of(lists: &[u16]) -> Lists<'_> {
        let (ciphers, rest) = counted(lists);
        let (extensions, signature_algorithms) = counted(rest);
        Lists {
            ciphers,
            extensions,
            signature_algorithms,
        }
    }
}

/// The list after its length at the start of `lists`, and what follows it.
fn counted(lists: &[u16]) -> (&[u16], &[u16]) {
    let Some((&len, rest)) = lists.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(len).min(rest.len()))
}

/// `a` as text: only ASCII bytes are ever written into it.
fn a_str(a: &[u8; 10]) -> &str {
    super::wire::ascii_str(a).unwrap_or("")
}

/// `n` as two decimal digits, 99 at most.
fn two_digits(n: usize) -> [u8; 2] {
    let n = n.min(99) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// GREASE values (RFC 8701 §2): 0x?a?a with equal bytes.
pub fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// The highest supported_versions entry, else the hello's legacy_version. DTLS numbers
/// count down (0xfefc is DTLS 1.3), so "highest" compares protocol order, not raw values.
fn version(hello: &ClientHello) -> u16 {
    let order = |v: u16| if v >> 8 == 0xfe { 0xffff - v } else { v };
    (hello.versions.iter().copied())
        .filter(|&v| !is_grease(v))
        .max_by_key(|&v| order(v))
        .unwrap_or(hello.legacy_version)
}

fn version_code(version: u16) -> &'static str {
    match version {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

/// First and last characters of the first ALPN value; "00" when there is none or it is
/// empty; when either end byte is not ASCII alphanumeric, the first and last characters of
/// the value's hex form instead.
fn alpn_code(first: &[u8]) -> [u8; 2] {
    match (first.first(), first.last()) {
        (Some(&f), Some(&l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() => [f, l],
        (Some(&f), Some(&l)) => [HEX[usize::from(f >> 4)], HEX[usize::from(l & 0x0f)]],
        _ => *b"00",
    }
}

/// Appends `values` as four-digit lower-case hex, comma-separated.
fn hex_list(out: &mut Vec<u8>, values: &[u16]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        for shift in [12, 8, 4, 0] {
            out.push(HEX[usize::from((v >> shift) & 0x0f)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tls::parse_client_hello;
    use crate::dissect::tls::tests::{RFC8448_CLIENT_HELLO, hex, records};

    /// The worked example of FoxIO's JA4.md: its cipher and extension lists, signature
    /// algorithms and the fingerprint `t13d1516h2_8daaf6152771_e5627efa2ab1`.
    fn spec_example() -> ClientHello {
        ClientHello {
            legacy_version: 0x0303,
            versions: vec![0x0a0a, 0x0304, 0x0303],
            sni: Some("example.com".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
            alpn_first_raw: b"h2".to_vec(),
            ciphers: vec![
                0x1a1a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
                0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            extensions: vec![
                0x2a2a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005,
                0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
            ],
            signature_algorithms: vec![
                0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ],
            ..ClientHello::default()
        }
    }

    #[test]
    fn foxio_spec_example() {
        let (ja4, raw) = (
            ja4(&spec_example(), Transport::Tcp),
            ja4_r(&spec_example(), Transport::Tcp),
        );
        assert_eq!(ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(
            raw,
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_\
             0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_\
             0403,0804,0401,0503,0805,0501,0806,0601"
        );
    }

    /// The memo answers what hashing answers: the same lists (GREASE aside) hit it, other
    /// lists do not, and past its limit fingerprints are still right.
    #[test]
    fn memo_gives_the_hashed_fingerprint() {
        let memo = Memo::default();
        let mut greased = spec_example();
        greased.ciphers[0] = 0x3a3a;
        greased.extensions[0] = 0xdada;
        let mut no_sigs = spec_example();
        no_sigs.signature_algorithms.clear();
        let mut sigs_as_extension = spec_example();
        // The same u16 values, one moved from the extensions to the signature algorithms:
        // the key keeps the lists apart.
        let last = sigs_as_extension.extensions.pop().unwrap();
        sigs_as_extension.signature_algorithms.insert(0, last);
        for (hello, transport, kept) in [
            (spec_example(), Transport::Tcp, 1),
            (spec_example(), Transport::Quic, 1),
            (greased, Transport::Tcp, 1),
            (no_sigs, Transport::Tcp, 2),
            (sigs_as_extension, Transport::Tcp, 3),
        ] {
            assert_eq!(
                ja4_with(&hello, transport, Some(&memo)),
                ja4(&hello, transport)
            );
            assert_eq!(memo.len(), kept);
        }
        assert!(ja4_with(&spec_example(), Transport::Tcp, Some(&memo)).ends_with("_e5627efa2ab1"));
        let full = Memo::default();
        for cipher in 0..MEMO_ENTRIES as u16 + 2 {
            let hello = ClientHello {
                ciphers: vec![cipher],
                ..spec_example()
            };
            assert_eq!(
                ja4_with(&hello, Transport::Tcp, Some(&full)),
                ja4(&hello, Transport::Tcp)
            );
        }
        assert_eq!(full.len(), MEMO_ENTRIES);
    }

    #[test]
    fn no_signature_algorithms_ends_without_underscore() {
        // JA4.md: "0005,…,ff01 = 6d807ffa2a79" when there are no signature algorithms.
        let mut hello = spec_example();
        hello.signature_algorithms.clear();
        let (ja4, raw) = (ja4(&hello, Transport::Quic), ja4_r(&hello, Transport::Quic));
        assert_eq!(ja4, "q13d1516h2_8daaf6152771_6d807ffa2a79");
        assert!(raw.ends_with("4469,ff01"));
    }

    #[test]
    fn empty_lists_hash_to_zeros() {
        let hello = ClientHello {
            legacy_version: 0x0301,
            ciphers: vec![0x0a0a],
            extensions: vec![SNI, ALPN],
            ..ClientHello::default()
        };
        let ja4 = ja4(&hello, Transport::Dtls);
        assert_eq!(ja4, "d10d000200_000000000000_000000000000");
    }

    #[test]
    fn alpn_rules() {
        // The examples listed in JA4.md's ALPN section.
        assert_eq!(alpn_code(b"http/1.1"), *b"h1");
        assert_eq!(alpn_code(b""), *b"00");
        assert_eq!(alpn_code(b"h"), *b"hh");
        assert_eq!(alpn_code(&[0xab]), *b"ab");
        assert_eq!(alpn_code(&[0xab, 0xcd]), *b"ad");
        assert_eq!(alpn_code(&[0x30, 0xab]), *b"3b");
        assert_eq!(alpn_code(&[0x30, 0x31, 0xab, 0xcd]), *b"3d");
        assert_eq!(alpn_code(&[0x30, 0xab, 0xcd, 0x31]), *b"01");
    }

    #[test]
    fn versions_and_grease() {
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && !is_grease(0x0a1a));
        assert_eq!(version_code(0x7f1c), "00");
        let mut hello = spec_example();
        hello.versions = vec![0xfefd, 0xfefc];
        assert_eq!(version(&hello), 0xfefc);
        hello.versions.clear();
        assert_eq!(version(&hello), 0x0303);
    }

    /// RFC 8448 §3 ClientHello. The expected hashes were computed independently with
    /// `printf '1301,1302,1303' | sha256sum` and the extension string below.
    #[test]
    fn rfc8448_client_hello() {
        let hello = parse_client_hello(&records(&hex(RFC8448_CLIENT_HELLO), 1 << 14)).unwrap();
        assert_eq!(
            ja4_r(&hello, Transport::Tcp),
            "t13d030900_1301,1302,1303_000a,000d,001c,0023,002b,002d,0033,ff01_\
             0403,0503,0603,0203,0804,0805,0806,0401,0501,0601,0201,0402,0502,0602,0202"
        );
        assert_eq!(hello.ja4, "t13d030900_55b375c5d22e_59cd3dafc54d");
    }
}
