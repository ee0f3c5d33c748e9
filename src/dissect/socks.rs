//! SOCKS 4/4a and 5: the proxy request that names where a client really connects, and the
//! proxy's reply. A host that talks SOCKS out of the corporate tunnel is relaying.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::wire::Reader;
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// User ids and host names are kept up to this many bytes (SOCKS5 caps both at 255).
const MAX_TEXT: usize = 255;
/// SOCKS4 user ids and 4a host names are NUL-terminated; give up on a missing NUL after this.
const MAX_NUL_SCAN: usize = 512;
/// RFC 1928 §3: username/password method; RFC 1929 §2: its sub-negotiation version.
const METHOD_USER_PASS: u8 = 0x02;
const USER_PASS_VERSION: u8 = 0x01;

/// A proxy request: SOCKS4 (socks4 protocol document), SOCKS4a, or SOCKS5 (RFC 1928 §4).
#[derive(Clone, Debug, Serialize)]
pub struct Request {
    pub version: u8,
    /// 1 connect, 2 bind, 3 UDP associate (SOCKS5).
    pub command: u8,
    /// The destination by name (SOCKS4a, SOCKS5 ATYP 3).
    pub host: Option<String>,
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// SOCKS4 USERID or the RFC 1929 UNAME (the password is never kept).
    pub user: Option<String>,
}

/// The proxy's answer to a request (SOCKS4 reply; RFC 1928 §6).
#[derive(Clone, Debug, Serialize)]
pub struct Reply {
    /// SOCKS4 CD (90 granted) or SOCKS5 REP (0 succeeded); for SOCKS5 a refused method
    /// selection (0xFF) or failed RFC 1929 authentication reports 0xFF / the auth status.
    pub status: u8,
    pub granted: bool,
    pub bound_addr: Option<IpAddr>,
    pub bound_port: Option<u16>,
}

/// A NUL-terminated string (SOCKS4 USERID, 4a host).
fn cstr(r: &mut Reader<'_>) -> Result<String> {
    match r.rest().iter().take(MAX_NUL_SCAN).position(|&b| b == 0) {
        Some(n) => {
            let s = text(r.take(n)?);
            r.take(1)?;
            Ok(s)
        }
        None if r.remaining() >= MAX_NUL_SCAN => Err(Error::Invalid("socks4 string too long")),
        None => Err(Error::Incomplete),
    }
}

/// RFC 1928 §4/§5: ATYP then IPv4, a length-prefixed name, or IPv6; then the port.
fn address(r: &mut Reader<'_>) -> Result<(Option<IpAddr>, Option<String>, u16)> {
    let (addr, host) = match r.u8()? {
        1 => (Some(ipv4(r.take(4)?)), None),
        3 => {
            let n = r.u8()? as usize;
            (None, Some(text(r.take(n)?)))
        }
        4 => {
            let b: [u8; 16] = r.take(16)?.try_into().unwrap_or_default();
            (Some(IpAddr::V6(Ipv6Addr::from(b))), None)
        }
        _ => return Err(Error::Invalid("socks5 address type")),
    };
    Ok((addr, host, r.u16()?))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(MAX_TEXT)]).into_owned()
}

fn ipv4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// Parses the client's side of the stream up to and including its request.
pub fn parse_request(client_stream: &[u8]) -> Result<Request> {
    let mut c = Reader::new(client_stream);
    match c.u8()? {
        4 => {
            let command = c.u8()?;
            if !matches!(command, 1 | 2) {
                return Err(Error::Invalid("socks4 command"));
            }
            let port = c.u16()?;
            let ip = c.take(4)?;
            let user = Some(cstr(&mut c)?).filter(|u| !u.is_empty());
            // SOCKS4a: 0.0.0.x with x != 0 means a host name follows the user id.
            let (addr, host) = if ip[..3] == [0, 0, 0] && ip[3] != 0 {
                (None, Some(cstr(&mut c)?))
            } else {
                (Some(ipv4(ip)), None)
            };
            Ok(Request {
                version: 4,
                command,
                host,
                addr,
                port,
                user,
            })
        }
        5 => {
            // RFC 1928 §3: NMETHODS, METHODS.
            let n = c.u8()? as usize;
            if n == 0 {
                return Err(Error::Invalid("socks5 no methods"));
            }
            let methods = c.take(n)?;
            let mut user = None;
            // The client's next byte tells whether the server chose username/password.
            if c.rest().first() == Some(&USER_PASS_VERSION) && methods.contains(&METHOD_USER_PASS) {
                c.take(1)?;
                let ulen = c.u8()? as usize;
                user = Some(text(c.take(ulen)?));
                let plen = c.u8()? as usize;
                c.take(plen)?;
            }
            if c.u8()? != 5 {
                return Err(Error::Invalid("socks5 request version"));
            }
            let command = c.u8()?;
            if !matches!(command, 1..=3) || c.u8()? != 0 {
                return Err(Error::Invalid("socks5 request"));
            }
            let (addr, host, port) = address(&mut c)?;
            Ok(Request {
                version: 5,
                command,
                host,
                addr,
                port,
                user,
            })
        }
        _ => Err(Error::Invalid("socks version")),
    }
}

/// Parses the server's side of the stream up to its reply to the request.
pub fn parse_reply(server_stream: &[u8], version: u8) -> Result<Reply> {
    let mut s = Reader::new(server_stream);
    let refused = |status| {
        Ok(Reply {
            status,
            granted: false,
            bound_addr: None,
            bound_port: None,
        })
    };
    match version {
        4 => {
            if s.u8()? != 0 {
                return Err(Error::Invalid("socks4 reply version"));
            }
            let status = s.u8()?;
            if !(90..=93).contains(&status) {
                return Err(Error::Invalid("socks4 reply code"));
            }
            let port = s.u16()?;
            let addr = ipv4(s.take(4)?);
            Ok(Reply {
                status,
                granted: status == 90,
                bound_addr: Some(addr),
                bound_port: Some(port),
            })
        }
        5 => {
            if s.u8()? != 5 {
                return Err(Error::Invalid("socks5 method selection"));
            }
            let method = s.u8()?;
            if method == 0xFF {
                return refused(0xFF);
            }
            if method == METHOD_USER_PASS {
                if s.u8()? != USER_PASS_VERSION {
                    return Err(Error::Invalid("socks5 auth reply"));
                }
                let status = s.u8()?;
                if status != 0 {
                    return refused(status);
                }
            }
            if s.u8()? != 5 {
                return Err(Error::Invalid("socks5 reply version"));
            }
            let status = s.u8()?;
            if s.u8()? != 0 {
                return Err(Error::Invalid("socks5 reply reserved"));
            }
            let (addr, _, port) = address(&mut s)?;
            Ok(Reply {
                status,
                granted: status == 0,
                bound_addr: addr,
                bound_port: Some(port),
            })
        }
        _ => Err(Error::Invalid("socks version")),
    }
}

/// What a flow record says of a SOCKS proxy request.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SocksDetails {
    pub version: u8,
    pub command: u8,
    pub target: String,
    pub granted: Option<bool>,
}

impl Summary for SocksDetails {}

/// SOCKS 4 or 5: a request alone is a guess; the server's well-formed reply confirms it.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let c = input.client;
    if !matches!(c.first(), Some(4) | Some(5)) {
        return Probe::No;
    }
    let req = parse_request(c);
    let Ok(req) = req else {
        return Probe::of(&req, input.client_closed);
    };
    let reply = parse_reply(input.server, req.version);
    let Ok(reply) = reply else {
        return Probe::of(&reply, input.server_closed);
    };
    id.app = Some(App::Socks);
    id.details.other = protocol(
        Protocol::Socks,
        SocksDetails {
            version: req.version,
            command: req.command,
            target: match (&req.host, req.addr) {
                (Some(h), _) => format!("{h}:{}", req.port),
                (None, Some(a)) => format!("{a}:{}", req.port),
                (None, None) => format!(":{}", req.port),
            },
            granted: Some(reply.granted),
        },
    );
    Probe::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dissect::tools::hex;

    #[test]
    fn socks5_with_username_password() {
        // zeek/Traces/socks-auth.pcap: greeting, RFC 1929 auth bob/alice, CONNECT
        // 192.168.0.2:22; server chose method 2, auth ok, reply bound 192.168.0.1:55951.
        let c = hex(concat!(
            "0503000302",
            "0103626f6205616c696365",
            "05010001c0a800020016"
        ));
        let r = parse_request(&c).unwrap();
        assert_eq!((r.version, r.command, r.port), (5, 1, 22));
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(r.addr, Some("192.168.0.2".parse().unwrap()));
        let s = hex(concat!("0502", "0100", "05000001c0a80001da8f"));
        let rep = parse_reply(&s, 5).unwrap();
        assert!(rep.granted);
        assert_eq!(
            (rep.bound_addr, rep.bound_port),
            (Some("192.168.0.1".parse().unwrap()), Some(55951))
        );
        assert_eq!(parse_request(&c[..12]).unwrap_err(), Error::Incomplete);
    }

    #[test]
    fn socks5_domain_name() {
        // zeek/Traces/socks.pcap: CONNECT www.osnews.com:80.
        let r = parse_request(&hex("050100050100030e7777772e6f736e6577732e636f6d0050")).unwrap();
        assert_eq!(
            (r.host.as_deref(), r.port, r.user),
            (Some("www.osnews.com"), 80, None)
        );
    }

    #[test]
    fn socks4_and_4a() {
        // SOCKS4 protocol document: VN 4, CD 1, port 80, 0.0.0.1 (4a), USERID "u", host
        // "example.com" (synthesized); reply 00 5a granted.
        let mut b = vec![4, 1, 0, 80, 0, 0, 0, 1, b'u', 0];
        b.extend(b"example.com\0");
        let r = parse_request(&b).unwrap();
        assert_eq!(
            (r.version, r.host.as_deref(), r.user.as_deref()),
            (4, Some("example.com"), Some("u"))
        );
        let r = parse_request(&[4, 1, 0, 22, 10, 0, 0, 1, 0]).unwrap();
        assert_eq!(r.addr, Some("10.0.0.1".parse().unwrap()));
        assert!(parse_reply(&[0, 90, 0, 0, 0, 0, 0, 0], 4).unwrap().granted);
        assert!(!parse_reply(&[0, 91, 0, 0, 0, 0, 0, 0], 4).unwrap().granted);
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1"),
            Err(Error::Invalid(_))
        ));
    }
}
