//! JA4 TLS client fingerprint, per FoxIO's published specification
//! (FoxIO-LLC/ja4 `technical_details/JA4.md`; JA4 for TLS clients is BSD-3-Clause).
//!
//! `JA4 = a_b_c`: `a` = transport, version, SNI or not, cipher and extension counts, ALPN
//! first/last characters; `b` = truncated SHA-256 of the sorted cipher list; `c` = truncated
//! SHA-256 of the sorted extension list (without SNI and ALPN), then `_` and the signature
//! algorithms in wire order. GREASE values (RFC 8701) are ignored everywhere.

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

/// Returns `(ja4, ja4_r)`: the fingerprint and its raw (sorted, unhashed) form.
pub fn ja4(hello: &ClientHello, transport: Transport) -> (String, String) {
    let ciphers = without_grease(&hello.ciphers);
    let extensions = without_grease(&hello.extensions);
    let signature_algorithms = without_grease(&hello.signature_algorithms);

    let transport = match transport {
        Transport::Tcp => 't',
        Transport::Quic => 'q',
        Transport::Dtls => 'd',
    };
    let destination = if extensions.contains(&SNI) { 'd' } else { 'i' };
    let a = format!(
        "{transport}{}{destination}{:02}{:02}{}",
        version_code(version(hello)),
        ciphers.len().min(99),
        extensions.len().min(99),
        alpn_code(&hello.alpn_first_raw),
    );

    let mut sorted_ciphers = ciphers;
    sorted_ciphers.sort_unstable();
    let b_raw = hex_list(&sorted_ciphers);

    let mut sorted_extensions: Vec<u16> = extensions
        .into_iter()
        .filter(|&e| e != SNI && e != ALPN)
        .collect();
    sorted_extensions.sort_unstable();
    let mut c_raw = hex_list(&sorted_extensions);
    if !signature_algorithms.is_empty() {
        c_raw.push('_');
        c_raw.push_str(&hex_list(&signature_algorithms));
    }

    let ja4 = format!(
        "{a}_{}_{}",
        truncated_hash(!sorted_ciphers.is_empty(), &b_raw),
        truncated_hash(!sorted_extensions.is_empty(), &c_raw),
    );
    let ja4_r = format!("{a}_{b_raw}_{c_raw}");
    (ja4, ja4_r)
}

/// GREASE values (RFC 8701 §2): 0x?a?a with equal bytes.
pub fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

fn without_grease(values: &[u16]) -> Vec<u16> {
    values.iter().copied().filter(|&v| !is_grease(v)).collect()
}

/// The highest supported_versions entry, else the hello's legacy_version. DTLS numbers
/// count down (0xfefc is DTLS 1.3), so "highest" compares protocol order, not raw values.
fn version(hello: &ClientHello) -> u16 {
    let order = |v: u16| if v >> 8 == 0xfe { 0xffff - v } else { v };
    without_grease(&hello.versions)
        .into_iter()
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
fn alpn_code(first: &[u8]) -> String {
    match (first.first(), first.last()) {
        (Some(&f), Some(&l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() => {
            format!("{}{}", f as char, l as char)
        }
        (Some(&f), Some(&l)) => {
            let first_hex = format!("{f:02x}");
            let last_hex = format!("{l:02x}");
            format!("{}{}", &first_hex[..1], &last_hex[1..])
        }
        _ => "00".to_string(),
    }
}

fn hex_list(values: &[u16]) -> String {
    let hex: Vec<String> = values.iter().map(|v| format!("{v:04x}")).collect();
    hex.join(",")
}

fn truncated_hash(present: bool, raw: &str) -> String {
    if !present {
        return EMPTY_HASH.to_string();
    }
    let digest = Sha256::digest(raw.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
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
        let (ja4, raw) = ja4(&spec_example(), Transport::Tcp);
        assert_eq!(ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(
            raw,
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_\
             0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_\
             0403,0804,0401,0503,0805,0501,0806,0601"
        );
    }

    #[test]
    fn no_signature_algorithms_ends_without_underscore() {
        // JA4.md: "0005,…,ff01 = 6d807ffa2a79" when there are no signature algorithms.
        let mut hello = spec_example();
        hello.signature_algorithms.clear();
        let (ja4, raw) = ja4(&hello, Transport::Quic);
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
        let (ja4, _) = ja4(&hello, Transport::Dtls);
        assert_eq!(ja4, "d10d000200_000000000000_000000000000");
    }

    #[test]
    fn alpn_rules() {
        // The examples listed in JA4.md's ALPN section.
        assert_eq!(alpn_code(b"http/1.1"), "h1");
        assert_eq!(alpn_code(b""), "00");
        assert_eq!(alpn_code(b"h"), "hh");
        assert_eq!(alpn_code(&[0xab]), "ab");
        assert_eq!(alpn_code(&[0xab, 0xcd]), "ad");
        assert_eq!(alpn_code(&[0x30, 0xab]), "3b");
        assert_eq!(alpn_code(&[0x30, 0x31, 0xab, 0xcd]), "3d");
        assert_eq!(alpn_code(&[0x30, 0xab, 0xcd, 0x31]), "01");
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
            hello.ja4_r,
            "t13d030900_1301,1302,1303_000a,000d,001c,0023,002b,002d,0033,ff01_\
             0403,0503,0603,0203,0804,0805,0806,0401,0501,0601,0201,0402,0502,0602,0202"
        );
        assert_eq!(hello.ja4, "t13d030900_55b375c5d22e_59cd3dafc54d");
    }
}
