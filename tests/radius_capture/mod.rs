//! A capture where identity crosses partitions: RADIUS accounting (RFC 2866) starts an
//! account on a VPN address, then that address opens a WireGuard tunnel to a foreign
//! country, which the flow stage's tunnel detector reports. The RADIUS exchange (between
//! two corporate servers) and the host's flows land in different partitions, held by
//! different workers for every number of workers from 2 to 4, so only the one account
//! stage can name the finding's account. Built at test time with fixturegen's writers.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use farmwatch::config::Config;
use farmwatch::flow_stage::partition_of;
use fixturegen::capture::{ByteOrder, Capture, EPOCH, MS, SEC, TsUnit, linktype};
use fixturegen::conversation::{Conversation, UDP};
use fixturegen::packet::{Link, Side};
use fixturegen::rng::Rng;

/// The detector scenarios' network: inside 10.8.0.0/16 (the VPN pool) and 10.20.0.0/16.
pub const CONFIG: &str = "fixtures/detect.toml";
const NAS: &str = "10.20.0.2:40001";
const RADIUS_SERVER: &str = "10.20.0.9:1813";
/// WireGuard's endpoint in a country the test geo database places in RU.
const TUNNEL_END: &str = "192.0.2.100:51820";
pub const USER: &str = "rwong";

/// One RADIUS attribute (RFC 2865 §5): type, length, value.
fn attribute(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    out.push(u8::try_from(value.len() + 2).expect("short attribute"));
    out.extend_from_slice(value);
}

/// An Accounting-Request (RFC 2866 §4.1), Acct-Status-Type Start (§5.1), for `user` on
/// `framed`. The authenticator is left zero: a sensor cannot check it without the secret.
fn accounting_start(user: &str, framed: Ipv4Addr) -> Vec<u8> {
    let mut attrs = Vec::new();
    attribute(&mut attrs, 40, &1u32.to_be_bytes()); // Acct-Status-Type = Start
    attribute(&mut attrs, 44, b"fwap-1"); // Acct-Session-Id
    attribute(&mut attrs, 1, user.as_bytes()); // User-Name
    attribute(&mut attrs, 4, &[10, 20, 0, 2]); // NAS-IP-Address
    attribute(&mut attrs, 8, &framed.octets()); // Framed-IP-Address
    attribute(&mut attrs, 31, b"192.0.2.3"); // Calling-Station-Id
    let len = u16::try_from(20 + attrs.len()).expect("short packet");
    let mut p = vec![4, 1]; // Accounting-Request, identifier 1
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0; 16]);
    p.extend_from_slice(&attrs);
    p
}

/// A WireGuard handshake (whitepaper §5.4.2–5.4.3) and ten transport messages each way.
fn wireguard(client: SocketAddr, start: u64) -> Conversation {
    let mut rng = Rng::new(start);
    let mut filler = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.u64() as u8).collect() };
    let server: SocketAddr = TUNNEL_END.parse().expect("literal address");
    let mut c = Conversation::new(UDP, client, server, start);
    let mut init = vec![1, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
    init.extend(filler(140));
    let mut resp = vec![2, 0, 0, 0, 0x55, 0x66, 0x77, 0x88, 0x11, 0x22, 0x33, 0x44];
    resp.extend(filler(80));
    c.udp(Side::Client, &init, 0)
        .udp(Side::Server, &resp, 25 * MS);
    for i in 0..10u64 {
        let mut data = vec![4, 0, 0, 0, 0x55, 0x66, 0x77, 0x88];
        data.extend_from_slice(&i.to_le_bytes());
        data.extend(filler(96));
        c.udp(Side::Client, &data, 200 * MS);
        let mut back = vec![4, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
        back.extend_from_slice(&i.to_le_bytes());
        back.extend(filler(160));
        c.udp(Side::Server, &back, 25 * MS);
    }
    c
}

/// A VPN address whose partition no number of workers from 2 to 4 gives to the worker of
/// the RADIUS exchange's partition.
pub fn host_apart_from_radius() -> Ipv4Addr {
    let config = Config::load(Some(Path::new(CONFIG))).expect("the scenarios' config");
    let nas: SocketAddr = NAS.parse().unwrap();
    let server: SocketAddr = RADIUS_SERVER.parse().unwrap();
    let radius = partition_of(
        &config.network,
        (nas.ip(), nas.port()),
        (server.ip(), server.port()),
    );
    let outside: SocketAddr = TUNNEL_END.parse().unwrap();
    (1..=254u8)
        .map(|h| Ipv4Addr::new(10, 8, 3, h))
        .find(|h| {
            let p = partition_of(
                &config.network,
                (IpAddr::V4(*h), 41000),
                (outside.ip(), outside.port()),
            );
            (2..=4).all(|n| p % n != radius % n)
        })
        .expect("some host lands apart")
}

/// RADIUS accounting starts `USER` on `host`, then `host` opens a WireGuard tunnel to RU:
/// one Ethernet pcap.
pub fn radius_then_tunnel(host: Ipv4Addr) -> Vec<u8> {
    let nas: SocketAddr = NAS.parse().unwrap();
    let mut radius = Conversation::new(UDP, nas, RADIUS_SERVER.parse().unwrap(), EPOCH);
    radius.udp(Side::Client, &accounting_start(USER, host), 0);
    let tunnel = wireguard(SocketAddr::new(IpAddr::V4(host), 41000), EPOCH + 2 * SEC);
    let mut all: Vec<_> = radius.packets.iter().chain(&tunnel.packets).collect();
    all.sort_by_key(|p| p.ts);
    let mut cap = Capture::new(linktype::ETHERNET);
    for p in all {
        cap.push(p.ts, Link::Ethernet.frame(p));
    }
    cap.pcap(ByteOrder::Little, TsUnit::Micro)
}
