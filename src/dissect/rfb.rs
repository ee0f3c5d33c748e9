//! RFB (VNC, Apple Remote Desktop): the version and security handshake and the ServerInit,
//! RFC 6143 §7.1–§7.3. Both sides speak first in a fixed order, so each direction's stream
//! prefix can be walked on its own, with the other side telling the path taken.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::wire::Reader;
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;

/// RFC 6143 §7.1.1: "RFB xxx.yyy\n".
const VERSION_LEN: usize = 12;
/// Apple Remote Desktop's security type (registered with IANA, RFB security types).
pub const SECURITY_ARD: u8 = 30;
const SECURITY_NONE: u8 = 1;
const SECURITY_VNC: u8 = 2;
/// §7.2.2 VNC Authentication: challenge and response are 16 bytes.
const VNC_CHALLENGE: usize = 16;
/// ARD authentication (Apple's extension): the client sends 128 bytes of encrypted
/// credentials followed by its Diffie-Hellman public key.
const ARD_CREDENTIALS: usize = 128;
/// §7.3.2 ServerInit: width, height, 16-byte PIXEL_FORMAT, then a u32 name length.
const SERVER_INIT_NAME: usize = 24;
const MAX_NAME: usize = 256;
/// The reason strings of failures are skipped, but not beyond this length.
const MAX_REASON: usize = 4096;

/// Parses the ProtocolVersion message (RFC 6143 §7.1.1): (major, minor, bytes consumed).
/// The minor is u16 because Apple sends "RFB 003.889".
pub fn parse_version(stream: &[u8]) -> Result<(u8, u16, usize)> {
    let want = b"RFB 000.000\n";
    for (i, (&b, &w)) in stream.iter().zip(want).enumerate() {
        let ok = if w == b'0' {
            b.is_ascii_digit()
        } else {
            b == w
        };
        if !ok {
            return Err(Error::Invalid(if i < 4 {
                "not rfb"
            } else {
                "rfb version"
            }));
        }
    }
    let v = stream.get(..VERSION_LEN).ok_or(Error::Incomplete)?;
    let num =
        |r: std::ops::Range<usize>| v[r].iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let major = u8::try_from(num(4..7)).map_err(|_| Error::Invalid("rfb version"))?;
    Ok((major, num(8..11), VERSION_LEN))
}

/// 3.3 servers pick the security type; 3.7 and later (including Apple's 3.889) offer a list
/// (§7.1.2). Other minors are treated as 3.3, as the RFC says.
fn offers_list(minor: u16) -> bool {
    minor >= 7
}

/// Parses the security types a server offers right after its version (§7.1.2); for 3.3 the
/// one type it chose. An empty list means the server refused the connection.
pub fn parse_security_types(server_after_version: &[u8], minor: u16) -> Result<Vec<u8>> {
    security_types(&mut Reader::new(server_after_version), minor)
}

fn security_types(s: &mut Reader<'_>, minor: u16) -> Result<Vec<u8>> {
    if offers_list(minor) {
        let n = s.u8()? as usize;
        Ok(s.take(n)?.to_vec())
    } else {
        let t = s.u32()?;
        match u8::try_from(t) {
            Ok(0) => Ok(vec![]),
            Ok(t) => Ok(vec![t]),
            Err(_) => Err(Error::Invalid("rfb security type")),
        }
    }
}

/// Names a security type as Zeek's rfb.log does (IANA RFB security types registry).
pub fn security_type_name(t: u8) -> &'static str {
    match t {
        0 => "Invalid",
        1 => "None",
        2 => "VNC",
        5 => "RA2",
        6 => "RA2ne",
        16 => "Tight",
        17 => "Ultra",
        18 => "TLS",
        19 => "VeNCrypt",
        20 => "GTK-VNC SASL",
        21 => "MD5 hash authentication",
        22 => "Colin Dean xvp",
        SECURITY_ARD => "Apple Remote Desktop",
        _ => "unknown",
    }
}

/// What the two handshake prefixes of one RFB connection say, RFC 6143 §7.1–§7.3.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Session {
    pub client_version: Option<(u8, u16)>,
    pub server_version: Option<(u8, u16)>,
    /// Types the server offered (3.7+) or chose (3.3); empty if it refused.
    pub auth_types: Vec<u8>,
    /// The type in use: the client's choice (3.7+) or the server's (3.3).
    pub auth_type: Option<u8>,
    /// Apple Remote Desktop authentication was offered or chosen.
    pub ard: bool,
    /// SecurityResult: true when the server accepted the credentials.
    pub auth_ok: Option<bool>,
    pub share_flag: Option<bool>,
    pub width: Option<u16>,
    pub height: Option<u16>,
    pub desktop_name: Option<String>,
    /// The server's reason text for refusing the connection or the credentials.
    pub failure_reason: Option<String>,
}

/// Walks both directions' stream prefixes as far as they go. Fails only when the server's
/// bytes are not RFB (or need more bytes to tell); later gaps leave fields `None`.
pub fn parse_session(client: &[u8], server: &[u8]) -> Result<Session> {
    let (smaj, sminor, _) = parse_version(server)?;
    let mut st = Session {
        server_version: Some((smaj, sminor)),
        ..Session::default()
    };
    let mut s = Reader::new(server.get(VERSION_LEN..).unwrap_or_default());
    let mut c = Reader::new(client);
    let _ = walk(&mut st, &mut c, &mut s);
    Ok(st)
}

/// The handshake after the server's version; stops at the first missing byte.
fn walk(st: &mut Session, c: &mut Reader<'_>, s: &mut Reader<'_>) -> Result<()> {
    let (cmaj, cminor, _) = parse_version(c.rest())?;
    c.take(VERSION_LEN)?;
    st.client_version = Some((cmaj, cminor));
    // The version in use is the lower of the two (§7.1.1).
    let minor = cminor.min(st.server_version.map_or(cminor, |v| v.1));
    st.auth_types = security_types(s, minor)?;
    st.ard = st.auth_types.contains(&SECURITY_ARD);
    if st.auth_types.is_empty() {
        st.failure_reason = Some(text(s)?);
        return Ok(());
    }
    let chosen = if offers_list(minor) {
        c.u8()?
    } else {
        st.auth_types[0]
    };
    st.auth_type = Some(chosen);
    st.ard |= chosen == SECURITY_ARD;
    let has_result = match chosen {
        SECURITY_NONE => minor >= 8,
        SECURITY_VNC => {
            s.take(VNC_CHALLENGE)?;
            c.take(VNC_CHALLENGE)?;
            true
        }
        SECURITY_ARD => {
            // Server: u16 generator, u16 key length, prime and public key of that length.
            s.take(2)?;
            let key = s.u16()? as usize;
            s.take(key.saturating_mul(2))?;
            c.take(ARD_CREDENTIALS.saturating_add(key))?;
            true
        }
        // Other types run their own sub-protocols (TLS, VeNCrypt ...): stop here.
        _ => return Ok(()),
    };
    if has_result {
        let ok = s.u32()? == 0;
        st.auth_ok = Some(ok);
        if !ok {
            // 3.8 adds a reason string to a failed SecurityResult (§7.1.3).
            if minor >= 8 {
                st.failure_reason = Some(text(s)?);
            }
            return Ok(());
        }
    }
    st.share_flag = Some(c.u8()? != 0);
    st.width = Some(s.u16()?);
    st.height = Some(s.u16()?);
    s.take(SERVER_INIT_NAME - 4 - 4)?;
    st.desktop_name = Some(text(s)?);
    Ok(())
}

/// A u32-length-prefixed string (§7.1.2 reason-string, §7.3.2 name-string).
fn text(s: &mut Reader<'_>) -> Result<String> {
    let n = s.u32()? as usize;
    if n > MAX_REASON {
        return Err(Error::Invalid("rfb string length"));
    }
    let b = s.take(n)?;
    Ok(String::from_utf8_lossy(&b[..n.min(MAX_NAME)]).into_owned())
}

impl Summary for Session {}

/// RFB: the server speaks first (`RFB 003.008\n`). The session summary grows with the
/// handshake; settled once the auth type is chosen.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    if !input.server.starts_with(b"RFB ") {
        return Probe::No;
    }
    let Ok(session) = parse_session(input.client, input.server) else {
        return Probe::No;
    };
    id.app = Some(App::Vnc);
    let settled = session.auth_type.is_some() || (input.client_closed && input.server_closed);
    id.details.other = protocol(Protocol::Rfb, session);
    Probe::done_if(settled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        // zeek/Traces/rfb/vncmac.pcap server and client both send "RFB 003.889\n".
        assert_eq!(parse_version(b"RFB 003.889\n").unwrap(), (3, 889, 12));
        assert_eq!(parse_version(b"RFB 003.00").unwrap_err(), Error::Incomplete);
        assert!(matches!(
            parse_version(b"SSH-2.0-x\r\n"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            parse_version(b"RFB 003.0a8\n"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn security_types_by_version() {
        // vncmac.pcap: "02 1e 23" (3.889 list); vnc-mac-to-linux.pcap: "00 00 00 02" (3.3).
        assert_eq!(
            parse_security_types(&[2, 0x1e, 0x23], 889).unwrap(),
            [30, 35]
        );
        assert_eq!(parse_security_types(&[0, 0, 0, 2], 3).unwrap(), [2]);
        assert_eq!(
            parse_security_types(&[2, 0x1e], 8).unwrap_err(),
            Error::Incomplete
        );
        assert_eq!(security_type_name(30), "Apple Remote Desktop");
    }

    #[test]
    fn session_vnc_auth_with_server_init() {
        // Handshake of RFC 6143 §7 for 3.8 with VNC auth (synthesized; challenge bytes from
        // zeek/Traces/rfb/vnc-scanner.pcap), then ClientInit and a ServerInit.
        let mut server = b"RFB 003.008\n".to_vec();
        server.extend([2, 2, 16]);
        server.extend([0x43; 16]);
        server.extend([0, 0, 0, 0]);
        server.extend([4, 0, 3, 0]);
        server.extend([0; 16]);
        server.extend([0, 0, 0, 4]);
        server.extend(b"desk");
        let mut client = b"RFB 003.008\n".to_vec();
        client.push(2);
        client.extend([0x50; 16]);
        client.push(1);
        let s = parse_session(&client, &server).unwrap();
        assert_eq!(s.client_version, Some((3, 8)));
        assert_eq!(s.auth_types, [2, 16]);
        assert_eq!(
            (s.auth_type, s.auth_ok, s.share_flag),
            (Some(2), Some(true), Some(true))
        );
        assert_eq!((s.width, s.height), (Some(1024), Some(768)));
        assert_eq!(s.desktop_name.as_deref(), Some("desk"));
        assert!(!s.ard);
        // A failed result stops the walk (vnc-scanner.pcap: SecurityResult 1).
        let mut failed = server[..12 + 3 + 16].to_vec();
        failed.extend([0, 0, 0, 1]);
        let s = parse_session(&client, &failed).unwrap();
        assert_eq!((s.auth_ok, s.width), (Some(false), None));
    }
}
