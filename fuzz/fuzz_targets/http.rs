#![no_main]
//! HTTP/1.x request and response heads.

use farmwatch::dissect::http;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = http::parse_request(data);
    let _ = http::parse_response(data);
});
