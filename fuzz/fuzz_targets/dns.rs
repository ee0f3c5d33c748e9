#![no_main]
//! DNS messages, TCP framing, and the name cache fed with whatever parses.

use farmwatch::dissect::dns::{self, NameCache};
use farmwatch::timestamp::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cache = NameCache::new(8);
    if let Ok(msg) = dns::parse_message(data) {
        cache.insert(Timestamp::from_secs(1), &msg);
    }
    if let Ok(msgs) = dns::parse_tcp_stream(data) {
        for msg in &msgs {
            cache.insert(Timestamp::from_secs(2), msg);
        }
    }
    let _ = cache.lookup(
        Timestamp::from_secs(3),
        std::net::Ipv4Addr::LOCALHOST.into(),
    );
});
