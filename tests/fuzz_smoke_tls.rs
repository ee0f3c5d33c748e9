//! Deterministic mutation smoke test for the TLS, QUIC, DNS and HTTP dissectors: a seeded
//! xorshift mutates the unit tests' static vectors a few thousand times per parser; no
//! input may panic. It runs on every `cargo test`; the cargo-fuzz targets in `fuzz/` do
//! the same job with coverage guidance for longer runs.
//!
//! The seeds are read from the hex constants of the modules' test code, so each vector
//! has a single source (and its provenance is cited there).

mod support;

use farmwatch::dissect::quic::{self, Initial};
use farmwatch::dissect::{dns, http, tls};
use farmwatch::timestamp::Timestamp;
use support::Rng;

/// One to four random edits: bit flips, boundary bytes, truncation, deletion,
/// duplication and insertion — the ones that break length fields.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const INTERESTING: [u8; 7] = [0x00, 0x01, 0x7f, 0x80, 0xc0, 0xfe, 0xff];
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 if at < v.len() => v[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => v.truncate(at),
            3 => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(32)).min(v.len());
                let copy = v[at..end].to_vec();
                v.splice(at..at, copy);
            }
            _ => v.insert(at, rng.next() as u8),
        }
    }
    v
}

fn run(seeds: &[Vec<u8>], iterations: usize, parse: impl Fn(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in seeds {
        parse(seed);
    }
    for i in 0..iterations {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        parse(&input);
    }
}

/// The bytes of `const NAME: &str = "<hex>"` in a dissector's source.
fn vector(module: &str, name: &str) -> Vec<u8> {
    let path = format!("{}/src/dissect/{module}.rs", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).expect("read module source");
    let start = source
        .find(&format!("{name}: &str = \""))
        .expect("vector in source");
    let hex = source[start..].split('"').nth(1).expect("string literal");
    let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Handshake bytes in one TLS record (RFC 8446 §5.1).
fn record(handshake: &[u8]) -> Vec<u8> {
    let mut out = vec![22, 3, 1];
    out.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    out.extend_from_slice(handshake);
    out
}

/// A TLS ClientHello message re-framed as one unfragmented DTLS 1.2 record (RFC 6347
/// §4.1, §4.2.2): an empty cookie after the session id.
fn dtls(tls_hello: &[u8]) -> Vec<u8> {
    let body = &tls_hello[4..];
    let mut hello = vec![0xfe, 0xfd];
    hello.extend_from_slice(&body[2..35]);
    hello.push(0);
    hello.extend_from_slice(&body[35..]);
    let len = (hello.len() as u32).to_be_bytes();
    let mut fragment = vec![
        1, len[1], len[2], len[3], 0, 0, 0, 0, 0, len[1], len[2], len[3],
    ];
    fragment.extend_from_slice(&hello);
    let mut out = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
    out.extend_from_slice(&fragment);
    out
}

#[test]
fn tls_survives_mutation() {
    let client = vector("tls", "RFC8448_CLIENT_HELLO");
    let server = vector("tls", "RFC8448_SERVER_HELLO");
    let flight = vector("tls", "TLS12_SERVER_FLIGHT");
    let seeds = [record(&client), record(&server), dtls(&client), flight];
    assert!(tls::parse_dtls_client_hello(&seeds[2]).is_ok());
    run(&seeds, 4000, |b| {
        let _ = tls::parse_client_hello(b);
        let _ = tls::parse_server_hello(b);
        let _ = tls::parse_server_certificate(b);
        let _ = tls::parse_dtls_client_hello(b);
    });
}

#[test]
fn quic_survives_mutation() {
    // Whole packets: each mutation costs a decryption attempt, so fewer rounds.
    let packet = vector("quic", "RFC9001_CLIENT_INITIAL");
    run(&[packet], 1000, |b| {
        if let Ok(initial) = quic::parse_initial(b) {
            let _ = quic::client_hello(&[initial]);
        }
    });
    // The CRYPTO stream behind the decryption, cut into two fragments.
    let hello = vector("quic", "RFC9001_CLIENT_HELLO");
    run(&[hello], 4000, |b| {
        let cut = b.len() / 3;
        let initial = Initial {
            version: 1,
            dcid: Vec::new(),
            crypto: vec![(cut as u64, b[cut..].to_vec()), (0, b[..cut].to_vec())],
        };
        let _ = quic::client_hello(&[initial]);
    });
}

#[test]
fn dns_survives_mutation() {
    let response = vector("dns", "RESPONSE");
    let mut framed = (response.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&response);
    let mut cache = dns::NameCache::new(16);
    let cache = std::cell::RefCell::new(&mut cache);
    run(&[response, framed], 4000, |b| {
        if let Ok(msg) = dns::parse_message(b) {
            cache.borrow_mut().insert(Timestamp::from_secs(1), &msg);
        }
        let _ = dns::parse_tcp_stream(b);
    });
}

#[test]
fn http_survives_mutation() {
    let seeds = [
        b"GET /where?q=now HTTP/1.1\r\nHost: www.example.org\r\nUser-Agent: curl/8.5.0\r\n\r\n"
            .to_vec(),
        b"CONNECT server.example.com:80 HTTP/1.1\nHost: server.example.com\n\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.25.3\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ];
    run(&seeds, 4000, |b| {
        let _ = http::parse_request(b);
        let _ = http::parse_response(b);
    });
}
