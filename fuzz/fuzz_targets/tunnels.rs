//! Tunnel and relay headers: WireGuard, OpenVPN (UDP and TCP framing), IKE/ESP, STUN/TURN,
//! SOCKS requests and replies, and the remote-access tool table.
#![no_main]
use farmwatch::dissect::{ipsec, openvpn, socks, stun, tools, wireguard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wireguard::parse(data);
    let _ = openvpn::parse(data, false);
    let _ = openvpn::parse(data, true);
    let _ = ipsec::parse_ike(data, false);
    let _ = ipsec::parse_ike(data, true);
    let _ = ipsec::parse_esp(data);
    let _ = stun::parse(data);
    let _ = stun::is_channel_data(data);
    if let Ok(r) = socks::parse_request(data) {
        let _ = socks::parse_reply(data, r.version);
    }
    let _ = socks::parse_reply(data, 5);
    let _ = socks::parse_reply(data, 4);
    for proto in [tools::Proto::Tcp, tools::Proto::Udp] {
        let _ = tools::match_payload(proto, true, data);
        let _ = tools::match_payload(proto, false, data);
    }
    let name = String::from_utf8_lossy(data);
    for kind in [tools::NameKind::Sni, tools::NameKind::CertName, tools::NameKind::Alpn] {
        let _ = tools::match_name(kind, &name);
    }
});
