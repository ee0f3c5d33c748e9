//! Community ID v1 (corelight/community-id-spec): a direction-free hash of the 5-tuple that
//! Zeek and Suricata also write, so our flow records join with theirs.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Serialize, Serializer};
use sha1::{Digest, Sha1};

use crate::decode::Proto;

/// ICMP types whose reply type maps back to the request (spec: "ICMP/ICMPv6 one-way").
pub fn icmp_counterpart(proto: Proto, ty: u16) -> Option<u16> {
    let pairs: &[(u16, u16)] = match proto {
        // echo, timestamp, info, router solicit/advert, address mask
        Proto::Icmp => &[(8, 0), (13, 14), (15, 16), (10, 9), (17, 18)],
        // echo, router, neighbor, multicast listener query/report, node info, home agent
        Proto::Icmpv6 => &[
            (128, 129),
            (133, 134),
            (135, 136),
            (130, 131),
            (139, 140),
            (144, 145),
        ],
        _ => return None,
    };
    pairs.iter().find_map(|&(a, b)| {
        if ty == a {
            Some(b)
        } else if ty == b {
            Some(a)
        } else {
            None
        }
    })
}

/// A Community ID's text, `1:` and the 28 base64 characters of a SHA-1, held inline:
/// every flow record carries one, and a `String` was an allocation per flow.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommunityId([u8; 30]);

impl CommunityId {
    pub fn as_bytes(&self) -> &[u8; 30] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Base64 is ASCII, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for CommunityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CommunityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CommunityId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `1:<base64 sha1>` with seed 0. For ICMP, `src_port`/`dst_port` are type and code.
pub fn community_id(
    proto: Proto,
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
) -> CommunityId {
    // ICMP: the type stands for the source port and, for request/reply pairs, the
    // counterpart type for the destination port; unpaired types hash one-way with the code.
    let (sport, dport, one_way) = match proto {
        Proto::Icmp | Proto::Icmpv6 => match icmp_counterpart(proto, src_port) {
            Some(other) => (src_port, other, false),
            None => (src_port, dst_port, true),
        },
        Proto::Tcp | Proto::Udp => (src_port, dst_port, false),
    };
    let ordered = one_way || (src, sport) < (dst, dport);
    let (a, ap, b, bp) = if ordered {
        (src, sport, dst, dport)
    } else {
        (dst, dport, src, sport)
    };
    // The hashed bytes: seed (0), addresses, protocol, a zero byte, ports. Put together
    // first and hashed in one call: an `update` a part went through the hasher's block
    // buffer seven times.
    let mut input = [0u8; 40];
    let addresses = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            input[2..6].copy_from_slice(&a.octets());
            input[6..10].copy_from_slice(&b.octets());
            8
        }
        _ => {
            input[2..18].copy_from_slice(&to_v6(a));
            input[18..34].copy_from_slice(&to_v6(b));
            32
        }
    };
    let at = 2 + addresses;
    input[at] = proto.number();
    input[at + 2..at + 4].copy_from_slice(&ap.to_be_bytes());
    input[at + 4..at + 6].copy_from_slice(&bp.to_be_bytes());
    let digest = Sha1::digest(&input[..8 + addresses]);
    let mut id = *b"1:0000000000000000000000000000";
    // Standard base64 (RFC 4648 §4) of the 20-byte SHA-1: exactly 28 characters, written
    // in place (the crate's general encoder; no String allocated per flow).
    let written = STANDARD.encode_slice(digest, &mut id[2..]);
    debug_assert_eq!(written, Ok(28));
    CommunityId(id)
}

fn to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Baseline values from the spec's test vectors (community-id-spec, baseline/baseline_deflt.json).
    #[test]
    fn matches_spec_baseline() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            community_id(
                Proto::Tcp,
                ip("128.232.110.120"),
                34855,
                ip("66.35.250.204"),
                80
            )
            .as_str(),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        // Direction-free.
        assert_eq!(
            community_id(
                Proto::Tcp,
                ip("66.35.250.204"),
                80,
                ip("128.232.110.120"),
                34855
            )
            .to_string(),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
    }

    /// The hash of the bytes put together is the hash of the spec's parts fed one by one,
    /// for both address families, mixed ones and ICMP.
    #[test]
    fn one_update_hashes_the_parts_in_order() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            (Proto::Udp, ip("192.168.1.52"), 54585, ip("8.8.8.8"), 53),
            (
                Proto::Tcp,
                ip("2001:db8::1"),
                443,
                ip("fe80::1:0:0:1"),
                60000,
            ),
            (Proto::Tcp, ip("10.0.0.1"), 1, ip("2001:db8::1"), 2),
            (Proto::Icmp, ip("10.0.0.1"), 8, ip("10.0.0.2"), 0),
            (Proto::Icmpv6, ip("2001:db8::2"), 1, ip("2001:db8::1"), 4),
        ];
        for (proto, src, sp, dst, dp) in cases {
            let id = community_id(proto, src, sp, dst, dp);
            let parts = |(a, ap, b, bp): (IpAddr, u16, IpAddr, u16)| {
                let mut h = Sha1::new();
                h.update(0u16.to_be_bytes());
                match (a, b) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        h.update(a.octets());
                        h.update(b.octets());
                    }
                    _ => {
                        h.update(to_v6(a));
                        h.update(to_v6(b));
                    }
                }
                h.update([proto.number(), 0]);
                h.update(ap.to_be_bytes());
                h.update(bp.to_be_bytes());
                let mut text = *b"1:0000000000000000000000000000";
                STANDARD.encode_slice(h.finalize(), &mut text[2..]).unwrap();
                text
            };
            // The ends in either order (the order is not what this test is about).
            let sport_dport = match icmp_counterpart(proto, sp) {
                Some(other) => [(src, sp, dst, other), (dst, other, src, sp)],
                None => [(src, sp, dst, dp), (dst, dp, src, sp)],
            };
            assert!(
                sport_dport
                    .into_iter()
                    .any(|ends| parts(ends) == *id.as_bytes()),
                "{id}"
            );
        }
    }
}
