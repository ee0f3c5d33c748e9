//! RADIUS packets and their accounting attributes.
#![no_main]
use farmwatch::dissect::radius;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = radius::parse(data);
});
