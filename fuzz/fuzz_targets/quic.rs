#![no_main]
//! QUIC: random bytes rarely pass the AEAD, so besides `parse_initial` the input is also
//! cut into CRYPTO fragments (2-byte offset, 1-byte length, data) to exercise reassembly
//! and the ClientHello parser behind it.

use farmwatch::dissect::quic::{self, Initial};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(initial) = quic::parse_initial(data) {
        let _ = quic::client_hello(&[initial]);
    }
    let mut crypto = Vec::new();
    let mut rest = data;
    while let [hi, lo, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        crypto.push((
            u64::from(u16::from_be_bytes([*hi, *lo])),
            tail[..n].to_vec(),
        ));
        rest = &tail[n..];
    }
    let initial = Initial {
        version: 1,
        dcid: Vec::new(),
        crypto,
    };
    let _ = quic::client_hello(&[initial]);
});
