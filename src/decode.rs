//! Decode: from a captured frame to the innermost IP packet's addresses, ports and payload.
//!
//! Link layers (Ethernet, 802.1Q/QinQ, MPLS, PPPoE, Linux SLL/SLL2, BSD NULL/LOOP, raw IP)
//! and the encapsulations that SPAN/TAP feeds of VPN concentrators carry (GRE, ERSPAN II/III,
//! VXLAN, GENEVE, IP-in-IP, Teredo) are peeled here; IP and TCP headers are read with
//! etherparse. Fragments are reassembled in a bounded pool. A frame cut by the snaplen is
//! still used for its headers: counts come from the IP length fields, not the capture.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use etherparse::defrag::IpDefragBuf;
use etherparse::{
    IpFragOffset, IpNumber, Ipv6HeaderSlice, LaxIpPayloadSlice, LaxIpv4Slice, LaxIpv6Slice,
    TcpHeaderSlice, TcpOptionElement, TcpOptionsIterator,
};

use crate::source::{LinkType, Packet};
use crate::timestamp::Timestamp;

/// Transport protocols the flow table tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            // Zeek's conn log says "icmp" for both; the addresses tell the versions apart.
            Proto::Icmp | Proto::Icmpv6 => "icmp",
        }
    }

    /// The IANA protocol number, as the Community ID hashes it.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Icmpv6 => 58,
        }
    }
}

/// TCP header fields the session tracker reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tcp {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// The timestamp option (RFC 7323 §3): TSval and TSecr, for passive RTT
    /// (`flows::latency`); TSecr means something only when ACK is set.
    pub ts: Option<(u32, u32)>,
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The innermost transport packet of a frame. `payload` is what was captured of the
/// transport payload; `payload_len` is what the headers say it was.
#[derive(Clone, Copy, Debug)]
pub struct Decoded<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    /// For ICMP, the type and code (the Community ID convention).
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp: Option<Tcp>,
    pub payload: &'a [u8],
    pub payload_len: u32,
    /// Length of the innermost IP packet per its header.
    pub ip_len: u32,
    pub ttl: u8,
    /// The innermost encapsulation peeled off, if any.
    pub tunnel: Option<Tunnel>,
    /// Put together from IP fragments.
    pub reassembled: bool,
}

/// An encapsulation the decoder peels off; flow records name the innermost one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    IpInIp,
    Gre,
    Erspan,
    Vxlan,
    Geneve,
    Teredo,
    Ayiya,
}

impl Tunnel {
    pub fn as_str(self) -> &'static str {
        match self {
            Tunnel::IpInIp => "ip-in-ip",
            Tunnel::Gre => "gre",
            Tunnel::Erspan => "erspan",
            Tunnel::Vxlan => "vxlan",
            Tunnel::Geneve => "geneve",
            Tunnel::Teredo => "teredo",
            Tunnel::Ayiya => "ayiya",
        }
    }
}

/// Why a frame yielded no transport packet; each is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecodeError {
    UnsupportedLink,
    TruncatedLink,
    NotIp,
    TruncatedIp,
    BadIp,
    UnsupportedIpProto,
    TruncatedTransport,
    BadTcp,
    FragmentOverflow,
    BadFragment,
    TunnelDepth,
}

impl DecodeError {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::UnsupportedLink => "unsupported_link",
            DecodeError::TruncatedLink => "truncated_link",
            DecodeError::NotIp => "not_ip",
            DecodeError::TruncatedIp => "truncated_ip",
            DecodeError::BadIp => "bad_ip",
            DecodeError::UnsupportedIpProto => "unsupported_ip_proto",
            DecodeError::TruncatedTransport => "truncated_transport",
            DecodeError::BadTcp => "bad_tcp",
            DecodeError::FragmentOverflow => "fragment_overflow",
            DecodeError::BadFragment => "bad_fragment",
            DecodeError::TunnelDepth => "tunnel_depth",
        }
    }
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_QINQ_OLD: u16 = 0x9100;
const ETH_MPLS: u16 = 0x8847;
const ETH_PPPOE: u16 = 0x8864;
const ETH_BRIDGE: u16 = 0x6558;
const ETH_ERSPAN2: u16 = 0x88be;
const ETH_ERSPAN3: u16 = 0x22eb;

const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;
const TEREDO_PORT: u16 = 3544;
const AYIYA_PORT: u16 = 5072;

/// Encapsulations inside encapsulations are followed this deep.
const MAX_DEPTH: usize = 4;

/// A layer still to be peeled.
enum Layer<'a> {
    Ether(&'a [u8]),
    EtherType(u16, &'a [u8]),
    Ip(&'a [u8]),
}

/// Decodes frames; owns the fragment pool and a buffer for reassembled datagrams.
pub struct Decoder {
    fragments: Fragments,
    reassembled: Vec<u8>,
}

impl Decoder {
    pub fn new(max_fragment_sets: usize, fragment_timeout: std::time::Duration) -> Decoder {
        Decoder {
            fragments: Fragments {
                sets: HashMap::new(),
                max_sets: max_fragment_sets,
                timeout_ns: fragment_timeout.as_nanos() as u64,
                evicted: 0,
            },
            reassembled: Vec::new(),
        }
    }

    /// Fragment sets dropped unfinished (timed out or pushed out by the limit).
    pub fn fragments_evicted(&self) -> u64 {
        self.fragments.evicted
    }

    /// Ok(None): the frame was a fragment held for reassembly.
    pub fn decode<'a>(&'a mut self, pkt: Packet<'a>) -> Result<Option<Decoded<'a>>, DecodeError> {
        if let Some(d) = decode_plain(pkt) {
            return Ok(Some(d));
        }
        let (mut net, tunnel) = innermost(pkt)?;
        let mut reassembled = false;
        if let Some(frag) = net.fragment {
            let Some(whole) = self.fragments.add(pkt.ts, &net, frag)? else {
                return Ok(None);
            };
            self.reassembled = whole;
            reassembled = true;
            let len = self.reassembled.len() as u32;
            net = Net {
                payload: &self.reassembled,
                payload_len: len,
                ip_len: net.base_header_len + len,
                fragment: None,
                ..net
            };
        }
        // Called once, here, with the packet that was found: the record is built in place,
        // in the caller's result.
        transport(&net, tunnel, reassembled)
    }
}

/// A UDP header's ports, from its first four bytes; None when either port is one the
/// general way looks into for a tunnel (VXLAN, GENEVE, Teredo, AYIYA).
fn plain_udp_ports([s0, s1, d0, d1]: [u8; 4]) -> Option<(u16, u16)> {
    let (sport, dport) = (u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1]));
    let tunnel_port = matches!(dport, VXLAN_PORT | GENEVE_PORT)
        || matches!(sport, TEREDO_PORT | AYIYA_PORT)
        || matches!(dport, TEREDO_PORT | AYIYA_PORT);
    (!tunnel_port).then_some((sport, dport))
}

/// [`Decoder::decode`] for the common frame, read in place: untagged Ethernet or raw IP,
/// IPv4 or IPv6 carrying TCP, UDP or ICMP straight after the fixed header, whole, no tunnel
/// port. Every packet is decoded, and the general way costs several times this. The fields
/// are read as etherparse reads them for the general way (a unit test holds the two ways
/// to the same answer); anything else, and anything odd, takes the general way. Inlined,
/// so the record is written once, in the caller's result, not copied there (read back wider
/// than it was written, the copy waited on the stores). The IPv6 address bytes are carried
/// (spilled, copied) through an IPv4 packet's decoding too; taking the transport part into
/// each version's arm did not stop it (the two ways were merged again at the result) and
/// put the TCP header's `be32` out of line: callgrind office-5000, 1 worker, the decoding
/// +2.1 M Ir.
#[inline(always)]
fn decode_plain(pkt: Packet<'_>) -> Option<Decoded<'_>> {
    let ip = match pkt.link {
        LinkType::ETHERNET => {
            let version = match be16(pkt.data, 12)? {
                ETH_IPV4 => 4,
                ETH_IPV6 => 6,
                _ => return None,
            };
            let ip = pkt.data.get(14..)?;
            (*ip.first()? >> 4 == version).then_some(ip)?
        }
        LinkType::RAW | LinkType::IPV4 | LinkType::IPV6 => pkt.data,
        _ => return None,
    };
    let first = *ip.first()?;
    let (src, dst, number, ttl, ip_len, header_len): (IpAddr, IpAddr, u8, u8, usize, usize) =
        match first >> 4 {
            4 => {
                let header_len = usize::from(first & 0x0f) * 4;
                let total_len = usize::from(be16(ip, 2)?);
                let fragmenting = be16(ip, 6)? & 0x3fff != 0;
                if header_len < 20 || ip.len() < header_len || total_len < header_len || fragmenting
                {
                    return None;
                }
                let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                (src.into(), dst.into(), ip[9], ip[8], total_len, header_len)
            }
            // A zero payload length (a jumbogram, or a cut header) is the general way's.
            6 if ip.len() >= 40 && be16(ip, 4)? > 0 => {
                let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                let ip_len = 40 + usize::from(be16(ip, 4)?);
                (src.into(), dst.into(), ip[6], ip[7], ip_len, 40)
            }
            _ => return None,
        };
    // What was captured of the IP payload; its length is the header's (a snaplen cut).
    let p = &ip[header_len..ip_len.min(ip.len())];
    let ip_payload_len = (ip_len - header_len) as u32;
    let (proto, src_port, dst_port, tcp, transport_len) = match (IpNumber(number), p) {
        (IpNumber::TCP, [s0, s1, d0, d1, ..]) if p.len() >= 20 => {
            let header_len = usize::from(p[12] >> 4) * 4;
            let options = p.get(20..header_len)?;
            let be32 = |at: usize| u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
            let tcp = Tcp {
                flags: p[13],
                seq: be32(4),
                ack: be32(8),
                window: u16::from_be_bytes([p[14], p[15]]),
                ts: timestamps(options),
            };
            let ports = (
                u16::from_be_bytes([*s0, *s1]),
                u16::from_be_bytes([*d0, *d1]),
            );
            (Proto::Tcp, ports.0, ports.1, Some(tcp), header_len)
        }
        (IpNumber::UDP, [s0, s1, d0, d1, _, _, _, _, ..]) => {
            let (sport, dport) = plain_udp_ports([*s0, *s1, *d0, *d1])?;
            (Proto::Udp, sport, dport, None, 8)
        }
        (IpNumber::ICMP, [ty, code, ..]) => (Proto::Icmp, (*ty).into(), (*code).into(), None, 8),
        (IpNumber::IPV6_ICMP, [ty, code, ..]) => {
            (Proto::Icmpv6, (*ty).into(), (*code).into(), None, 8)
        }
        _ => return None,
    };
    Some(Decoded {
        src,
        dst,
        proto,
        src_port,
        dst_port,
        tcp,
        payload: p.get(transport_len..).unwrap_or_default(),
        payload_len: ip_payload_len.saturating_sub(transport_len as u32),
        ip_len: ip_len as u32,
        ttl,
        tunnel: None,
        reassembled: false,
    })
}

/// The innermost IP packet of a frame, or the fragment met on the way (a fragment's
/// payload cannot be peeled further until it is whole), and the innermost encapsulation.
fn innermost(pkt: Packet<'_>) -> Result<(Net<'_>, Option<Tunnel>), DecodeError> {
    let mut layer = link_layer(pkt.link, pkt.data)?;
    let mut tunnel = None;
    let mut depth = 0;
    // Every link step consumes header bytes, so this ends; encapsulations are capped.
    loop {
        let ip = match layer {
            Layer::Ether(frame) => {
                layer = ethernet(frame)?;
                continue;
            }
            Layer::EtherType(ty, rest) => {
                layer = ether_type(ty, rest)?;
                continue;
            }
            Layer::Ip(ip) => ip,
        };
        let net = ip_layer(ip)?;
        if net.fragment.is_some() {
            return Ok((net, tunnel));
        }
        match inner(&net) {
            Some(_) if depth == MAX_DEPTH => return Err(DecodeError::TunnelDepth),
            Some((kind, next)) => {
                depth += 1;
                tunnel = Some(kind);
                layer = next;
            }
            None => return Ok((net, tunnel)),
        }
    }
}

/// What sharing a packet out needs, read without decoding the rest (the worker that gets
/// the packet decodes it): the innermost addresses, ports and UDP payload, as
/// [`Decoder::decode`] would find them, and for a fragment which datagram it belongs to.
#[derive(Clone, Copy, Debug)]
pub struct Peek<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol, when the packet (or a fragment's first piece) names one
    /// the flow table tracks.
    pub proto: Option<Proto>,
    /// TCP and UDP ports, ICMP's type and code; zeros when there are none to read.
    pub src_port: u16,
    pub dst_port: u16,
    /// What follows a UDP header, for the DNS-answer check.
    pub udp_payload: &'a [u8],
    pub fragment: Option<Piece>,
}

/// A fragment: its datagram, and where in it the piece sits.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    pub datagram: FragKey,
    /// Bytes before this piece in the datagram's payload; the first piece (0) holds the
    /// transport header.
    pub offset: u32,
    pub len: u32,
    /// The last piece (no "more fragments"): the datagram's size is known from it.
    pub last: bool,
}

impl Piece {
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// Reads what [`Peek`] holds. A frame the decoder would reject may still peek fine: its
/// worker counts the error. Inlined with its common way, so the caller reads the fields
/// where they were made (returned through memory, they were written narrow and read back
/// wide, a store-forwarding stall per packet).
#[inline(always)]
pub fn peek(pkt: Packet<'_>) -> Result<Peek<'_>, DecodeError> {
    if let Some(peek) = peek_plain(pkt) {
        return Ok(peek);
    }
    let (net, _) = innermost(pkt)?;
    Ok(peek_net(net))
}

/// [`Peek`] from the innermost packet [`innermost`] found.
fn peek_net(net: Net<'_>) -> Peek<'_> {
    let fragment = net.fragment.map(|f| Piece {
        datagram: FragKey::of(&net, f),
        offset: u32::from(f.offset.byte_offset()),
        len: net.payload_len,
        last: !f.more,
    });
    let p = net.payload;
    let mut peek = Peek {
        src: net.addrs.src(),
        dst: net.addrs.dst(),
        proto: None,
        src_port: 0,
        dst_port: 0,
        udp_payload: &[],
        fragment,
    };
    if fragment.is_some_and(|f| !f.is_first()) {
        return peek;
    }
    let (proto, ports) = match net.proto {
        IpNumber::TCP => (Proto::Tcp, p.get(..4)),
        IpNumber::UDP => {
            peek.udp_payload = p.get(8..).unwrap_or_default();
            (Proto::Udp, p.get(..4))
        }
        IpNumber::ICMP => (Proto::Icmp, p.get(..2)),
        IpNumber::IPV6_ICMP => (Proto::Icmpv6, p.get(..2)),
        _ => return peek,
    };
    peek.proto = Some(proto);
    match ports {
        Some(&[s0, s1, d0, d1]) => {
            peek.src_port = u16::from_be_bytes([s0, s1]);
            peek.dst_port = u16::from_be_bytes([d0, d1]);
        }
        Some(&[ty, code]) => (peek.src_port, peek.dst_port) = (ty.into(), code.into()),
        _ => {}
    }
    peek
}

/// [`peek`] for the common frame, read in place: untagged Ethernet with IPv4 or IPv6
/// carrying TCP, UDP or ICMP straight after the fixed header, unfragmented, no tunnel port.
/// The headers are read as etherparse reads them for [`Decoder::decode`] (a unit test holds
/// the two ways to the same answer); anything else, and anything odd, takes the general way.
#[inline(always)]
fn peek_plain(pkt: Packet<'_>) -> Option<Peek<'_>> {
    if pkt.link != LinkType::ETHERNET {
        return None;
    }
    let ip = pkt.data.get(14..)?;
    let (src, dst, proto, payload): (IpAddr, IpAddr, u8, &[u8]) =
        match (be16(pkt.data, 12)?, *ip.first()?) {
            (ETH_IPV4, first) if first >> 4 == 4 => {
                let header_len = usize::from(first & 0x0f) * 4;
                let total_len = usize::from(be16(ip, 2)?);
                let fragmenting = be16(ip, 6)? & 0x3fff != 0;
                if header_len < 20 || total_len < header_len || ip.len() < header_len || fragmenting
                {
                    return None;
                }
                let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                let end = total_len.min(ip.len());
                (src.into(), dst.into(), ip[9], &ip[header_len..end])
            }
            (ETH_IPV6, first) if first >> 4 == 6 && ip.len() >= 40 => {
                let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                let end = (40 + usize::from(be16(ip, 4)?)).min(ip.len());
                (src.into(), dst.into(), ip[6], &ip[40..end])
            }
            _ => return None,
        };
    let mut peek = Peek {
        src,
        dst,
        proto: None,
        src_port: 0,
        dst_port: 0,
        udp_payload: &[],
        fragment: None,
    };
    match (IpNumber(proto), payload) {
        (IpNumber::TCP, [s0, s1, d0, d1, ..]) => {
            peek.proto = Some(Proto::Tcp);
            (peek.src_port, peek.dst_port) = (
                u16::from_be_bytes([*s0, *s1]),
                u16::from_be_bytes([*d0, *d1]),
            );
        }
        (IpNumber::UDP, [s0, s1, d0, d1, ..]) => {
            let (sport, dport) = plain_udp_ports([*s0, *s1, *d0, *d1])?;
            peek.proto = Some(Proto::Udp);
            (peek.src_port, peek.dst_port) = (sport, dport);
            peek.udp_payload = payload.get(8..).unwrap_or_default();
        }
        (IpNumber::ICMP | IpNumber::IPV6_ICMP, [ty, code, ..]) => {
            peek.proto = Some(if proto == IpNumber::ICMP.0 {
                Proto::Icmp
            } else {
                Proto::Icmpv6
            });
            (peek.src_port, peek.dst_port) = (u16::from(*ty), u16::from(*code));
        }
        _ => return None,
    }
    Some(peek)
}

fn link_layer(link: LinkType, data: &[u8]) -> Result<Layer<'_>, DecodeError> {
    match link {
        LinkType::ETHERNET => Ok(Layer::Ether(data)),
        LinkType::RAW | LinkType::IPV4 | LinkType::IPV6 => Ok(Layer::Ip(data)),
        // BSD loopback: a 4-byte address family in the writer's byte order (NULL) or in
        // network order (LOOP). AF_INET is 2 everywhere; AF_INET6 is 24, 28 or 30.
        LinkType::NULL | LinkType::LOOP => {
            let family = data.get(..4).ok_or(DecodeError::TruncatedLink)?;
            let rest = &data[4..];
            let le = u32::from_le_bytes([family[0], family[1], family[2], family[3]]);
            let be = u32::from_be_bytes([family[0], family[1], family[2], family[3]]);
            match (le, be) {
                (2, _) | (_, 2) | (24 | 28 | 30, _) | (_, 24 | 28 | 30) => Ok(Layer::Ip(rest)),
                _ => Err(DecodeError::NotIp),
            }
        }
        // Linux cooked v1: 16-byte header, protocol in the last two bytes.
        LinkType::LINUX_SLL => {
            let proto = be16(data, 14).ok_or(DecodeError::TruncatedLink)?;
            Ok(Layer::EtherType(proto, &data[16..]))
        }
        // Linux cooked v2: 20-byte header, protocol first.
        LinkType::LINUX_SLL2 => {
            let proto = be16(data, 0).ok_or(DecodeError::TruncatedLink)?;
            let rest = data.get(20..).ok_or(DecodeError::TruncatedLink)?;
            Ok(Layer::EtherType(proto, rest))
        }
        _ => Err(DecodeError::UnsupportedLink),
    }
}

fn ethernet(frame: &[u8]) -> Result<Layer<'_>, DecodeError> {
    let ty = be16(frame, 12).ok_or(DecodeError::TruncatedLink)?;
    Ok(Layer::EtherType(ty, &frame[14..]))
}

fn ether_type(ty: u16, rest: &[u8]) -> Result<Layer<'_>, DecodeError> {
    match ty {
        ETH_IPV4 | ETH_IPV6 => Ok(Layer::Ip(rest)),
        // 802.1Q / 802.1ad: 2 bytes TCI, then the next type.
        ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD => {
            let next = be16(rest, 2).ok_or(DecodeError::TruncatedLink)?;
            Ok(Layer::EtherType(next, &rest[4..]))
        }
        // MPLS (RFC 3032): labels until bottom-of-stack, then IP by its version nibble.
        ETH_MPLS => {
            let mut at = 0;
            loop {
                let entry = rest.get(at..at + 4).ok_or(DecodeError::TruncatedLink)?;
                at += 4;
                if entry[2] & 0x01 != 0 {
                    break;
                }
            }
            Ok(Layer::Ip(&rest[at..]))
        }
        // PPPoE session (RFC 2516): 6-byte header, then a PPP protocol number.
        ETH_PPPOE => match be16(rest, 6) {
            Some(0x0021) | Some(0x0057) => Ok(Layer::Ip(&rest[8..])),
            Some(_) => Err(DecodeError::NotIp),
            None => Err(DecodeError::TruncatedLink),
        },
        ETH_BRIDGE => Ok(Layer::Ether(rest)),
        _ => Err(DecodeError::NotIp),
    }
}

/// Where a fragment sits in its datagram.
#[derive(Clone, Copy, Debug)]
struct Fragment {
    id: u32,
    offset: IpFragOffset,
    more: bool,
}

/// An IP packet, headers read.
#[derive(Clone, Copy)]
struct Net<'a> {
    addrs: Addrs<'a>,
    proto: IpNumber,
    ttl: u8,
    ip_len: u32,
    /// The IPv4 header with options, or the fixed IPv6 header: what a reassembled
    /// datagram's length adds to its payload.
    base_header_len: u32,
    payload: &'a [u8],
    payload_len: u32,
    fragment: Option<Fragment>,
}

/// The addresses of an IP packet. Carried along as `IpAddr`s they were copied byte by
/// byte at each move; IPv6's stay in etherparse's header slice until the record is built.
#[derive(Clone, Copy)]
enum Addrs<'a> {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6HeaderSlice<'a>),
}

impl Addrs<'_> {
    fn src(&self) -> IpAddr {
        match self {
            Addrs::V4(src, _) => IpAddr::V4(*src),
            Addrs::V6(h) => IpAddr::V6(h.source_addr()),
        }
    }

    fn dst(&self) -> IpAddr {
        match self {
            Addrs::V4(_, dst) => IpAddr::V4(*dst),
            Addrs::V6(h) => IpAddr::V6(h.destination_addr()),
        }
    }
}

/// Reads the IP header, dispatching on the version nibble to etherparse's per-version lax
/// slices: their results are much smaller than `LaxIpSlice`'s, which is moved around
/// several times per packet. The lax slices keep a frame cut by the snaplen usable.
fn ip_layer(data: &[u8]) -> Result<Net<'_>, DecodeError> {
    let first = *data.first().ok_or(DecodeError::TruncatedIp)?;
    match first >> 4 {
        4 => ipv4(data, first & 0x0f),
        6 => ipv6(data),
        _ => Err(DecodeError::BadIp),
    }
}

fn ipv4(data: &[u8], ihl: u8) -> Result<Net<'_>, DecodeError> {
    // `LaxIpSlice` rejects a too-small IHL before it looks at the length, the per-version
    // slice the other way round; checked first so that such packets stay `BadIp`.
    if ihl < 5 {
        return Err(DecodeError::BadIp);
    }
    let (ip, _auth_err) = match LaxIpv4Slice::from_slice(data) {
        Ok(ok) => ok,
        Err(etherparse::err::ipv4::HeaderSliceError::Len(_)) => {
            return Err(DecodeError::TruncatedIp);
        }
        Err(etherparse::err::ipv4::HeaderSliceError::Content(_)) => {
            return Err(DecodeError::BadIp);
        }
    };
    let h = ip.header();
    let payload = ip.payload();
    let ip_len = h.total_len() as u32;
    let header_len = h.slice().len() as u32;
    Ok(Net {
        addrs: Addrs::V4(h.source_addr(), h.destination_addr()),
        proto: payload.ip_number,
        ttl: h.ttl(),
        ip_len,
        base_header_len: header_len,
        payload: payload.payload,
        payload_len: payload_len(payload, ip_len, header_len),
        fragment: h.is_fragmenting_payload().then(|| Fragment {
            id: h.identification() as u32,
            offset: h.fragments_offset(),
            more: h.more_fragments(),
        }),
    })
}

fn ipv6(data: &[u8]) -> Result<Net<'_>, DecodeError> {
    let (ip, _ext_err) = match LaxIpv6Slice::from_slice(data) {
        Ok(ok) => ok,
        Err(etherparse::err::ipv6::HeaderSliceError::Len(_)) => {
            return Err(DecodeError::TruncatedIp);
        }
        Err(etherparse::err::ipv6::HeaderSliceError::Content(_)) => {
            return Err(DecodeError::BadIp);
        }
    };
    let h = ip.header();
    let payload = ip.payload();
    let ip_len = 40 + h.payload_length() as u32;
    let header_len = 40 + ip.extensions().slice().len() as u32;
    Ok(Net {
        addrs: Addrs::V6(h),
        proto: payload.ip_number,
        ttl: h.hop_limit(),
        ip_len,
        base_header_len: 40,
        payload: payload.payload,
        payload_len: payload_len(payload, ip_len, header_len),
        fragment: ipv6_fragment(data),
    })
}

/// With a snaplen cut the captured payload is short; the header still knows the size.
fn payload_len(payload: &LaxIpPayloadSlice<'_>, ip_len: u32, header_len: u32) -> u32 {
    if payload.incomplete {
        ip_len.saturating_sub(header_len)
    } else {
        payload.payload.len() as u32
    }
}

/// The fragment header of an IPv6 packet, found by walking its extension-header chain
/// (RFC 8200 §4): hop-by-hop, routing and destination options are `(len + 1) × 8` bytes,
/// AH `(len + 2) × 4`. Walked here, bounds-checked, because etherparse 0.18's extension
/// iterator reads out of bounds on some malformed chains (found by
/// tests/fuzz_smoke_pipeline.rs) and its fragment-header accessors read the wrong bits.
/// The fragment header: offset in the top 13 bits of bytes 2..4, M in the lowest bit
/// (§4.5). An atomic fragment (offset 0, M clear) is a whole datagram.
fn ipv6_fragment(packet: &[u8]) -> Option<Fragment> {
    let mut next = *packet.get(6)?;
    let mut at = 40;
    for _ in 0..16 {
        match next {
            44 => {
                let header = packet.get(at..at + 8)?;
                let word = be16(header, 2)?;
                let offset = IpFragOffset::try_new(word >> 3).ok()?;
                let more = word & 1 != 0;
                let id = u32::from_be_bytes(header.get(4..8)?.try_into().ok()?);
                return (offset.value() != 0 || more).then_some(Fragment { id, offset, more });
            }
            0 | 43 | 60 => {
                next = *packet.get(at)?;
                at += (*packet.get(at + 1)? as usize + 1) * 8;
            }
            51 => {
                next = *packet.get(at)?;
                at += (*packet.get(at + 1)? as usize + 2) * 4;
            }
            _ => return None,
        }
    }
    None
}

/// The next layer if `net` carries an encapsulation we peel.
fn inner<'a>(net: &Net<'a>) -> Option<(Tunnel, Layer<'a>)> {
    let p = net.payload;
    match net.proto {
        IpNumber::IPV4 | IpNumber::IPV6 => Some((Tunnel::IpInIp, Layer::Ip(p))),
        IpNumber::GRE => gre(p),
        IpNumber::UDP => {
            let sport = be16(p, 0)?;
            let dport = be16(p, 2)?;
            let body = p.get(8..)?;
            if dport == VXLAN_PORT {
                // RFC 7348 §5: flags with the I bit, then 24-bit VNI; inner Ethernet.
                (body.len() >= 8 + 14 && body[0] & 0x08 != 0)
                    .then(|| (Tunnel::Vxlan, Layer::Ether(&body[8..])))
            } else if dport == GENEVE_PORT {
                // RFC 8926 §3.4: version 0, options length in 4-byte words, protocol type.
                let opt_len = (*body.first()? & 0x3f) as usize * 4;
                let ty = be16(body, 2)?;
                let rest = body.get(8 + opt_len..)?;
                (body[0] >> 6 == 0 && !rest.is_empty())
                    .then_some((Tunnel::Geneve, Layer::EtherType(ty, rest)))
            } else if sport == TEREDO_PORT || dport == TEREDO_PORT {
                teredo(body)
            } else if sport == AYIYA_PORT || dport == AYIYA_PORT {
                ayiya(body)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// GRE (RFC 2784/2890, and PPTP's enhanced GRE of RFC 2637), with ERSPAN type II/III.
fn gre(p: &[u8]) -> Option<(Tunnel, Layer<'_>)> {
    let flags = be16(p, 0)?;
    let version = flags & 0x7;
    let proto = be16(p, 2)?;
    let mut at = 4;
    if version == 1 {
        // Enhanced GRE: key (payload length + call id) is mandatory, seq/ack optional.
        at += 4;
        if flags & 0x1000 != 0 {
            at += 4;
        }
        if flags & 0x0080 != 0 {
            at += 4;
        }
        // PPP inside: address/control (0xff03) optional, protocol 0x0021 or 0x0057.
        let ppp = p.get(at..)?;
        let ppp = if ppp.starts_with(&[0xff, 0x03]) {
            &ppp[2..]
        } else {
            ppp
        };
        let (skip, ppp_proto) = match *ppp.first()? {
            0x21 => (1, 0x0021),
            0x57 => (1, 0x0057),
            _ => (2, be16(ppp, 0)?),
        };
        return matches!(ppp_proto, 0x0021 | 0x0057)
            .then(|| (Tunnel::Gre, Layer::Ip(ppp.get(skip..).unwrap_or_default())));
    }
    if version != 0 {
        return None;
    }
    if flags & 0x8000 != 0 {
        at += 4; // checksum + reserved
    }
    if flags & 0x2000 != 0 {
        at += 4; // key
    }
    if flags & 0x1000 != 0 {
        at += 4; // sequence
    }
    let body = p.get(at..)?;
    match proto {
        // ERSPAN type II: 8-byte header (version 1) before the mirrored frame.
        ETH_ERSPAN2 if flags & 0x1000 != 0 => Some((Tunnel::Erspan, Layer::Ether(body.get(8..)?))),
        // Type I has no sequence number and no ERSPAN header.
        ETH_ERSPAN2 => Some((Tunnel::Erspan, Layer::Ether(body))),
        // ERSPAN type III: 12 bytes, plus 8 of platform-specific subheader when O is set.
        ETH_ERSPAN3 => {
            let o = body.get(11)? & 0x01 != 0;
            Some((
                Tunnel::Erspan,
                Layer::Ether(body.get(if o { 20 } else { 12 }..)?),
            ))
        }
        _ => Some((Tunnel::Gre, Layer::EtherType(proto, body))),
    }
}

/// Teredo (RFC 4380 §5.1.1): IPv6 in UDP, optionally after authentication and origin
/// indication headers.
fn teredo(mut body: &[u8]) -> Option<(Tunnel, Layer<'_>)> {
    if body.starts_with(&[0x00, 0x01]) {
        let id_len = *body.get(2)? as usize;
        let au_len = *body.get(3)? as usize;
        body = body.get(4 + id_len + au_len + 9..)?;
    }
    if body.starts_with(&[0x00, 0x00]) {
        body = body.get(8..)?;
    }
    (body.len() >= 40 && body[0] >> 4 == 6).then_some((Tunnel::Teredo, Layer::Ip(body)))
}

/// AYIYA (draft-massar-v6ops-ayiya §5): a header whose identity and signature lengths
/// are in its first bytes, then the packet named by its next-header byte.
fn ayiya(body: &[u8]) -> Option<(Tunnel, Layer<'_>)> {
    let id_len = 1usize << (body.first()? >> 4);
    let sig_len = (body.get(1)? >> 4) as usize * 4;
    let opcode = body.get(2)? & 0x0f;
    let next = *body.get(3)?;
    let inner = body.get(8 + id_len + sig_len..)?;
    // Opcode 1 is "forward": only those carry a packet.
    (opcode == 1 && matches!(next, 4 | 41) && !inner.is_empty())
        .then_some((Tunnel::Ayiya, Layer::Ip(inner)))
}

/// Returns what `decode` returns, so that the record is written once, into the caller's
/// result.
fn transport<'a>(
    net: &Net<'a>,
    tunnel: Option<Tunnel>,
    reassembled: bool,
) -> Result<Option<Decoded<'a>>, DecodeError> {
    let p = net.payload;
    // The payload is what follows the transport header; the record is built once, below.
    let (proto, src_port, dst_port, tcp, header_len) = match net.proto {
        IpNumber::TCP => {
            let h = TcpHeaderSlice::from_slice(p).map_err(|e| match e {
                etherparse::err::tcp::HeaderSliceError::Len(_) => DecodeError::TruncatedTransport,
                etherparse::err::tcp::HeaderSliceError::Content(_) => DecodeError::BadTcp,
            })?;
            let tcp = Tcp {
                flags: p[13],
                seq: h.sequence_number(),
                ack: h.acknowledgment_number(),
                window: h.window_size(),
                ts: timestamps(h.options()),
            };
            let header_len = h.slice().len();
            (
                Proto::Tcp,
                h.source_port(),
                h.destination_port(),
                Some(tcp),
                header_len,
            )
        }
        IpNumber::UDP => {
            // The 8-byte header: ports, length, checksum.
            let [s0, s1, d0, d1, _, _, _, _, ..] = *p else {
                return Err(DecodeError::TruncatedTransport);
            };
            let (sport, dport) = (u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1]));
            (Proto::Udp, sport, dport, None, 8)
        }
        IpNumber::ICMP | IpNumber::IPV6_ICMP => {
            let ty = *p.first().ok_or(DecodeError::TruncatedTransport)?;
            let code = *p.get(1).ok_or(DecodeError::TruncatedTransport)?;
            let proto = if net.proto == IpNumber::ICMP {
                Proto::Icmp
            } else {
                Proto::Icmpv6
            };
            // A short ICMP message still names its type and code; its body is empty.
            (proto, ty as u16, code as u16, None, 8)
        }
        _ => return Err(DecodeError::UnsupportedIpProto),
    };
    Ok(Some(Decoded {
        src: net.addrs.src(),
        dst: net.addrs.dst(),
        proto,
        src_port,
        dst_port,
        tcp,
        payload: p.get(header_len..).unwrap_or_default(),
        payload_len: net.payload_len.saturating_sub(header_len as u32),
        ip_len: net.ip_len,
        ttl: net.ttl,
        tunnel,
        reassembled,
    }))
}

/// The timestamp option (RFC 7323 §3) of a TCP header's options. Most segments that carry
/// it carry it alone after two NOPs (RFC 7323 Appendix A), read here in place, in line;
/// any other layout is walked by etherparse. Left a call by `#[inline]`: `#[inline(always)]`
/// measured the same (callgrind office-5000, 1 worker: the engine's packet -0.001 M Ir).
#[inline]
fn timestamps(options: &[u8]) -> Option<(u32, u32)> {
    match *options {
        [] => None,
        [1, 1, 8, 10, v0, v1, v2, v3, e0, e1, e2, e3, ..] => Some((
            u32::from_be_bytes([v0, v1, v2, v3]),
            u32::from_be_bytes([e0, e1, e2, e3]),
        )),
        _ => walked_timestamps(options),
    }
}

/// [`timestamps`] of options in any other layout.
#[inline(never)]
fn walked_timestamps(options: &[u8]) -> Option<(u32, u32)> {
    TcpOptionsIterator::from_slice(options).find_map(|o| match o {
        Ok(TcpOptionElement::Timestamp(val, ecr)) => Some((val, ecr)),
        _ => None,
    })
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Key of one datagram being reassembled (RFC 791 §3.2, RFC 8200 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

impl FragKey {
    fn of(net: &Net<'_>, f: Fragment) -> FragKey {
        FragKey {
            src: net.addrs.src(),
            dst: net.addrs.dst(),
            proto: net.proto.0,
            id: f.id,
        }
    }

    /// The datagram's addresses.
    pub fn addresses(&self) -> (IpAddr, IpAddr) {
        (self.src, self.dst)
    }
}

/// Bounded reassembly: at most `max_sets` datagrams in progress, each dropped after
/// `timeout_ns` of packet time without a new fragment. The hole and overlap logic is
/// etherparse's `IpDefragBuf`.
struct Fragments {
    sets: HashMap<FragKey, (IpDefragBuf, Timestamp)>,
    max_sets: usize,
    timeout_ns: u64,
    evicted: u64,
}

impl Fragments {
    fn add(
        &mut self,
        now: Timestamp,
        net: &Net<'_>,
        f: Fragment,
    ) -> Result<Option<Vec<u8>>, DecodeError> {
        // A fragment cut by the snaplen cannot be placed; count it rather than guess.
        if (net.payload.len() as u32) < net.payload_len {
            return Err(DecodeError::BadFragment);
        }
        let key = FragKey::of(net, f);
        if !self.sets.contains_key(&key) {
            self.expire(now);
            if self.sets.len() >= self.max_sets {
                return Err(DecodeError::FragmentOverflow);
            }
        }
        let entry = self
            .sets
            .entry(key)
            .or_insert_with(|| (IpDefragBuf::new(net.proto, Vec::new(), Vec::new()), now));
        entry.1 = now;
        if entry.0.add(f.offset, f.more, net.payload).is_err() {
            self.sets.remove(&key);
            return Err(DecodeError::BadFragment);
        }
        if !entry.0.is_complete() {
            return Ok(None);
        }
        let (buf, _) = self
            .sets
            .remove(&key)
            .map(|(b, _)| b.take_bufs())
            .unwrap_or_default();
        Ok(Some(buf))
    }

    fn expire(&mut self, now: Timestamp) {
        let before = self.sets.len();
        let timeout = self.timeout_ns;
        self.sets
            .retain(|_, (_, last)| now.0.saturating_sub(last.0) < timeout);
        self.evicted += (before - self.sets.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::OwnedPacket;
    use etherparse::{PacketBuilder, PacketBuilderStep};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn packet(link: LinkType, data: Vec<u8>) -> OwnedPacket {
        OwnedPacket {
            ts: Timestamp::from_secs(1),
            link,
            orig_len: data.len() as u32,
            data,
        }
    }

    fn decoder() -> Decoder {
        Decoder::new(16, std::time::Duration::from_secs(30))
    }

    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([192, 0, 2, 1], [198, 51, 100, 2], 64)
            .tcp(40000, 3389, 1000, 65535)
            .syn();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn decodes_ethernet_ipv4_tcp() {
        let pkt = packet(LinkType::ETHERNET, tcp_frame(b"hello"));
        let mut d = decoder();
        let got = d.decode(pkt.view()).unwrap().unwrap();
        assert_eq!(got.src, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(got.dst_port, 3389);
        assert_eq!(got.proto, Proto::Tcp);
        assert_eq!(got.tcp.unwrap().flags & SYN, SYN);
        assert_eq!(got.payload, b"hello");
        assert_eq!(got.ip_len, 20 + 20 + 5);
    }

    /// The timestamp option read in place is the one etherparse's walk finds, and a layout
    /// the fast path does not know (the option after others, cut, or missing) is walked.
    #[test]
    fn tcp_timestamps_read_as_etherparse_walks_them() {
        let walked = |options: &[u8]| {
            TcpOptionsIterator::from_slice(options).find_map(|o| match o {
                Ok(TcpOptionElement::Timestamp(val, ecr)) => Some((val, ecr)),
                _ => None,
            })
        };
        let ts = [8, 10, 0, 0, 1, 2, 0xff, 0, 0, 9];
        let layouts: [&[u8]; 7] = [
            &[],
            &[1, 1, 8, 10, 0, 0, 1, 2, 0xff, 0, 0, 9],
            &[1, 1, 8, 10, 0, 0, 1, 2, 0xff, 0, 0],
            &[1, 1, 8, 9, 0, 0, 1, 2, 0xff, 0, 0, 9],
            &[
                2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 1, 2, 0xff, 0, 0, 9, 1, 3, 3, 7,
            ],
            &[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            &[0, 1, 1, 1],
        ];
        for options in layouts {
            assert_eq!(timestamps(options), walked(options), "{options:?}");
        }
        let with_ts = [&[1, 1][..], &ts].concat();
        assert_eq!(timestamps(&with_ts), Some((0x0102, 0xff00_0009)));
        assert_eq!(timestamps(layouts[4]), Some((0x0102, 0xff00_0009)));
    }

    #[test]
    fn snaplen_cut_frame_keeps_header_lengths() {
        let mut frame = tcp_frame(&[7u8; 1000]);
        frame.truncate(64);
        let pkt = packet(LinkType::ETHERNET, frame);
        let mut d = decoder();
        let got = d.decode(pkt.view()).unwrap().unwrap();
        assert_eq!(got.payload_len, 1000);
        assert_eq!(got.payload.len(), 64 - 54);
    }

    /// How the IP header was read before the per-version slices: through `LaxIpSlice`.
    #[allow(clippy::type_complexity)]
    fn lax_ip_reference(
        data: &[u8],
    ) -> Result<
        (
            IpAddr,
            IpAddr,
            u8,
            u8,
            u32,
            u32,
            &[u8],
            u32,
            Option<(u32, u16, bool)>,
        ),
        DecodeError,
    > {
        use etherparse::LaxIpSlice;
        let version = data.first().ok_or(DecodeError::TruncatedIp)? >> 4;
        let (ip, _) = LaxIpSlice::from_slice(data).map_err(|e| match e {
            etherparse::err::ip::LaxHeaderSliceError::Len(_) => DecodeError::TruncatedIp,
            etherparse::err::ip::LaxHeaderSliceError::Content(_) => DecodeError::BadIp,
        })?;
        let payload = ip.payload();
        let (ttl, ip_len, header_len, fragment) = match (&ip, version) {
            (LaxIpSlice::Ipv4(v4), 4) => {
                let h = v4.header();
                let frag = h.is_fragmenting_payload().then(|| Fragment {
                    id: h.identification() as u32,
                    offset: h.fragments_offset(),
                    more: h.more_fragments(),
                });
                (h.ttl(), h.total_len() as u32, h.slice().len() as u32, frag)
            }
            (LaxIpSlice::Ipv6(v6), 6) => {
                let h = v6.header();
                let ext_len = v6.extensions().slice().len() as u32;
                let frag = ipv6_fragment(data);
                (
                    h.hop_limit(),
                    40 + h.payload_length() as u32,
                    40 + ext_len,
                    frag,
                )
            }
            _ => return Err(DecodeError::BadIp),
        };
        let payload_len = if payload.incomplete {
            ip_len.saturating_sub(header_len)
        } else {
            payload.payload.len() as u32
        };
        Ok((
            ip.source_addr(),
            ip.destination_addr(),
            payload.ip_number.0,
            ttl,
            ip_len,
            if version == 4 { header_len } else { 40 },
            payload.payload,
            payload_len,
            fragment.map(|f| (f.id, f.offset.value(), f.more)),
        ))
    }

    /// IPv4 with options and with an authentication header, IPv6 with hop-by-hop options
    /// and a fragment header: cut at every length and with each of the first bytes
    /// overwritten, they read as they did through `LaxIpSlice`, errors included.
    #[test]
    fn ip_headers_read_as_lax_ip_slice_did() {
        let udp = |b: PacketBuilderStep<etherparse::IpHeaders>| {
            let mut v = Vec::new();
            b.udp(1000, 2000).write(&mut v, &[9u8; 30]).unwrap();
            v
        };
        let v4 = udp(PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64));
        let v6 = udp(PacketBuilder::ipv6([1; 16], [2; 16], 64));
        // IHL 6: four bytes of NOP options.
        let mut v4_options = v4[..20].to_vec();
        v4_options[0] = 0x46;
        v4_options[3] += 4;
        v4_options.extend_from_slice(&[1, 1, 1, 1]);
        v4_options.extend_from_slice(&v4[20..]);
        // Protocol 51: a 12-byte authentication header before the UDP header.
        let mut v4_auth = v4[..20].to_vec();
        v4_auth[9] = 51;
        v4_auth[3] += 12;
        v4_auth.extend_from_slice(&[17, 1, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1]);
        v4_auth.extend_from_slice(&v4[20..]);
        // Hop-by-hop options, then a first fragment (offset 0, M set).
        let mut v6_exts = v6[..40].to_vec();
        v6_exts[6] = 0;
        v6_exts[5] += 16;
        v6_exts.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
        v6_exts.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 42]);
        v6_exts.extend_from_slice(&v6[40..]);
        let mut cases = 0;
        for base in [&v4, &v4_options, &v4_auth, &v6, &v6_exts] {
            for at in 0..48 {
                for value in [
                    None,
                    Some(0x00),
                    Some(0x01),
                    Some(0x44),
                    Some(0x45),
                    Some(0x4f),
                    Some(0x60),
                    Some(0xff),
                ] {
                    let mut packet = base.clone();
                    if let Some(value) = value {
                        packet[at] = value;
                    }
                    for len in 0..=packet.len() {
                        let data = &packet[..len];
                        let got = ip_layer(data).map(|n| {
                            (
                                n.addrs.src(),
                                n.addrs.dst(),
                                n.proto.0,
                                n.ttl,
                                n.ip_len,
                                n.base_header_len,
                                n.payload,
                                n.payload_len,
                                n.fragment.map(|f| (f.id, f.offset.value(), f.more)),
                            )
                        });
                        assert_eq!(got, lax_ip_reference(data), "{data:02x?}");
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 30_000);
    }

    /// Frames the in-place readers take (TCP with and without the timestamp option, UDP,
    /// ICMP, over IPv4 and IPv6) and some they leave to the general way (tunnel ports).
    fn plain_frames() -> Vec<Vec<u8>> {
        use etherparse::TcpOptionElement::{Noop, Timestamp as Ts};
        let frame = |ip: PacketBuilderStep<etherparse::IpHeaders>, kind: u16| {
            let mut v = Vec::new();
            match kind {
                0 => ip
                    .tcp(40000, 443, 1, 1024)
                    .write(&mut v, &[9u8; 30])
                    .unwrap(),
                1 => ip
                    .tcp(40000, 443, 1, 1024)
                    .options(&[Noop, Noop, Ts(7, 8)])
                    .unwrap()
                    .ack(5)
                    .write(&mut v, &[9u8; 30])
                    .unwrap(),
                port => ip.udp(40000, port).write(&mut v, &[9u8; 30]).unwrap(),
            }
            let mut eth = vec![2; 12];
            eth.extend_from_slice(&[0x08, 0x00]);
            if v[0] >> 4 == 6 {
                eth[13] = 0xdd;
                eth[12] = 0x86;
            }
            eth.extend_from_slice(&v);
            eth
        };
        let v4 = || PacketBuilder::ipv4([10, 0, 0, 1], [192, 0, 2, 2], 64);
        let v6 = || PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64);
        let mut icmp = frame(v4(), 53);
        icmp[14 + 9] = 1;
        vec![
            frame(v4(), 0),
            frame(v4(), 1),
            frame(v4(), 53),
            frame(v4(), VXLAN_PORT),
            frame(v6(), 0),
            frame(v6(), 1),
            frame(v6(), TEREDO_PORT),
            icmp,
            tcp_frame(b"hello"),
        ]
    }

    /// Runs `quick` on every frame of [`plain_frames`] with each of its first 64 bytes
    /// overwritten by telling values (protocol numbers, versions, lengths), cut at every
    /// length, on each of `links` (raw: the frame without its Ethernet header). A frame
    /// `quick` takes, the general way must read too, and their answers (as text) agree.
    /// Returns how many frames it took.
    fn quick_takes(
        links: &[LinkType],
        quick: impl Fn(Packet<'_>) -> Option<String>,
        general: impl Fn(Packet<'_>) -> Option<String>,
    ) -> usize {
        let mut taken = 0;
        for base in &plain_frames() {
            for at in 0..64.min(base.len()) {
                for value in [
                    None,
                    Some(0x00),
                    Some(0x01),
                    Some(0x06),
                    Some(0x11),
                    Some(0x1c),
                    Some(0x30),
                    Some(0x3a),
                    Some(0x45),
                    Some(0x60),
                    Some(0xff),
                ] {
                    let mut data = base.clone();
                    if let Some(value) = value {
                        data[at] = value;
                    }
                    for &link in links {
                        let data = if link == LinkType::RAW {
                            &data[14..]
                        } else {
                            &data[..]
                        };
                        for len in 0..=data.len() {
                            let pkt = Packet {
                                ts: Timestamp::ZERO,
                                link,
                                orig_len: len as u32,
                                data: &data[..len],
                                shared: None,
                            };
                            if let Some(quick) = quick(pkt) {
                                let slow = general(pkt).expect("the general way reads it too");
                                assert_eq!(quick, slow, "{:02x?}", &data[..len]);
                                taken += 1;
                            }
                        }
                    }
                }
            }
        }
        taken
    }

    /// The in-place reading of common frames answers as the general one, for frames of
    /// every kind cut at every length and with each of their first bytes overwritten.
    #[test]
    fn plain_frames_peek_as_the_general_way_reads_them() {
        let fast = quick_takes(
            &[LinkType::ETHERNET],
            |pkt| peek_plain(pkt).map(|p| format!("{p:?}")),
            |pkt| {
                innermost(pkt)
                    .ok()
                    .map(|(net, _)| format!("{:?}", peek_net(net)))
            },
        );
        assert!(fast > 10_000, "{fast}");
    }

    /// [`decode_plain`] reads what the general way reads, or leaves the frame to it: every
    /// kind of plain frame (and some that are not), on Ethernet and raw, cut at every length
    /// and with each of their first bytes overwritten.
    #[test]
    fn plain_frames_decode_as_the_general_way_reads_them() {
        let fast = quick_takes(
            &[LinkType::ETHERNET, LinkType::RAW],
            |pkt| decode_plain(pkt).map(|d| format!("{d:?}")),
            |pkt| {
                let (net, tunnel) = innermost(pkt).ok()?;
                if net.fragment.is_some() {
                    return None;
                }
                let decoded = transport(&net, tunnel, false).ok()??;
                Some(format!("{decoded:?}"))
            },
        );
        assert!(fast > 10_000, "{fast}");
    }

    #[test]
    fn cut_ip_packets_keep_header_lengths() {
        // IPv4 and IPv6 cut mid-payload: payload_len from the header; mid-header: truncated.
        let mut d = decoder();
        let v4 = tcp_frame(&[7u8; 100]);
        let cut = packet(LinkType::ETHERNET, v4[..60].to_vec());
        let got = d.decode(cut.view()).unwrap().unwrap();
        assert_eq!(
            (got.payload.len(), got.payload_len, got.ip_len),
            (6, 100, 140)
        );
        let cut = packet(LinkType::ETHERNET, v4[..14 + 19].to_vec());
        assert_eq!(d.decode(cut.view()).unwrap_err(), DecodeError::TruncatedIp);
        let mut v6 = Vec::new();
        let b = PacketBuilder::ipv6([1; 16], [2; 16], 64).tcp(1, 2, 3, 4);
        b.write(&mut v6, &[7u8; 100]).unwrap();
        let cut = packet(LinkType::RAW, v6[..70].to_vec());
        let got = d.decode(cut.view()).unwrap().unwrap();
        assert_eq!(
            (got.payload.len(), got.payload_len, got.ip_len),
            (10, 100, 160)
        );
        let cut = packet(LinkType::RAW, v6[..39].to_vec());
        assert_eq!(d.decode(cut.view()).unwrap_err(), DecodeError::TruncatedIp);
        // An IHL below 5 is a bad header even when the packet is also too short.
        let short = packet(LinkType::RAW, vec![0x44, 0, 0, 20]);
        assert_eq!(d.decode(short.view()).unwrap_err(), DecodeError::BadIp);
    }

    #[test]
    fn peels_vlan_and_qinq() {
        let inner = tcp_frame(b"x");
        let mut frame = inner[..12].to_vec();
        frame.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0a]);
        frame.extend_from_slice(&inner[12..]);
        let pkt = packet(LinkType::ETHERNET, frame);
        assert_eq!(decoder().decode(pkt.view()).unwrap().unwrap().payload, b"x");
    }

    #[test]
    fn peels_vxlan() {
        let inner = tcp_frame(b"inner");
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 0x2a, 0];
        vx.extend_from_slice(&inner);
        let b = PacketBuilder::ethernet2([3; 6], [4; 6])
            .ipv4([203, 0, 113, 1], [203, 0, 113, 2], 64)
            .udp(50000, VXLAN_PORT);
        let mut outer = Vec::new();
        b.write(&mut outer, &vx).unwrap();
        let pkt = packet(LinkType::ETHERNET, outer);
        let mut d = decoder();
        let got = d.decode(pkt.view()).unwrap().unwrap();
        assert_eq!(got.tunnel, Some(Tunnel::Vxlan));
        assert_eq!(got.payload, b"inner");
        assert_eq!(got.dst_port, 3389);
    }

    #[test]
    fn reassembles_ipv4_fragments_out_of_order() {
        // One UDP datagram of 8 + 40 bytes split at offsets 0, 16 and 32 (RFC 791 §3.2).
        let payload: Vec<u8> = (0..40).collect();
        let b = PacketBuilder::ipv4([192, 0, 2, 9], [192, 0, 2, 10], 64).udp(5353, 53);
        let mut whole = Vec::new();
        b.write(&mut whole, &payload).unwrap();
        let l4 = &whole[20..];
        let frag = |off: usize, len: usize, more: bool| {
            let mut h = whole[..20].to_vec();
            let total = (20 + len) as u16;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[4..6].copy_from_slice(&77u16.to_be_bytes());
            let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            h.extend_from_slice(&l4[off..off + len]);
            packet(LinkType::RAW, h)
        };
        let mut d = decoder();
        assert!(d.decode(frag(16, 16, true).view()).unwrap().is_none());
        assert!(d.decode(frag(32, 16, false).view()).unwrap().is_none());
        let first = frag(0, 16, true);
        let got = d.decode(first.view()).unwrap().unwrap();
        assert_eq!(got.dst_port, 53);
        assert_eq!(got.payload, &payload[..]);
    }

    #[test]
    fn linux_sll2_and_null() {
        let ip = {
            let b = PacketBuilder::ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .udp(1000, 2000);
            let mut v = Vec::new();
            b.write(&mut v, b"abc").unwrap();
            v
        };
        let mut sll2 = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        sll2.extend_from_slice(&ip);
        let mut d = decoder();
        let sll2 = packet(LinkType::LINUX_SLL2, sll2);
        let got = d.decode(sll2.view()).unwrap().unwrap();
        assert_eq!(
            got.src,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
        );
        let mut null = 30u32.to_le_bytes().to_vec();
        null.extend_from_slice(&ip);
        let null = packet(LinkType::NULL, null);
        assert_eq!(d.decode(null.view()).unwrap().unwrap().payload, b"abc");
    }

    #[test]
    fn counts_non_ip_and_garbage() {
        let mut d = decoder();
        let mut arp = tcp_frame(b"");
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(
            d.decode(packet(LinkType::ETHERNET, arp).view())
                .unwrap_err(),
            DecodeError::NotIp
        );
        assert_eq!(
            d.decode(packet(LinkType::RAW, vec![0x45]).view())
                .unwrap_err(),
            DecodeError::TruncatedIp
        );
        assert_eq!(
            d.decode(packet(LinkType(147), vec![0; 40]).view())
                .unwrap_err(),
            DecodeError::UnsupportedLink
        );
    }
}
