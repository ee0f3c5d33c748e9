#![no_main]
//! Every TLS/DTLS entry point on the same bytes: none may panic.

use farmwatch::dissect::tls;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tls::parse_client_hello(data);
    let _ = tls::parse_server_hello(data);
    let _ = tls::parse_server_certificate(data);
    let _ = tls::parse_dtls_client_hello(data);
});
