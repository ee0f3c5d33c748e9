//! RFB version, security types and the two-direction session walk. The first byte splits
//! the input into a client and a server prefix.
#![no_main]
use farmwatch::dissect::rfb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let (client, server) = rest.split_at((cut as usize).min(rest.len()));
    let _ = rfb::parse_session(client, server);
    for minor in [3, 7, 8, 889] {
        let _ = rfb::parse_security_types(server, minor);
    }
    let _ = rfb::parse_version(client);
});
