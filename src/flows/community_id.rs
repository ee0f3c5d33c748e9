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
    let mut id = *b"1:0000000000000000000000000000";
    // Standard base64 (RFC 4648 §4) of the 20-byte SHA-1: exactly 28 characters, written
    // in place (the crate's general encoder; no String allocated per flow).
    let written = STANDARD.encode_slice(h.finalize(), &mut id[2..]);
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
}
