//! RDP X.224 request/confirm and RDPEUDP SYN parsing.
#![no_main]
use farmwatch::dissect::rdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = rdp::parse_connection_request(data) {
        let _ = r.requested_protocols.map(rdp::protocol_names);
    }
    if let Ok(c) = rdp::parse_connection_confirm(data) {
        let _ = c.selected_protocol.map(rdp::selected_protocol_name);
    }
    let _ = rdp::parse_rdpeudp_syn(data);
});
