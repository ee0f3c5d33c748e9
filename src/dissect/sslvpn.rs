//! Vendor SSL-VPNs from the bytes they show in clear. Their tunnels (AnyConnect CSTP,
//! Fortinet PPP, GlobalProtect, Pulse IF-T/TLS, SoftEther) run inside TLS to a gateway that
//! usually has no vendor name, so what identifies them is:
//!
//! - the DTLS channel beside the TLS one: AnyConnect/OpenConnect's ClientHello fakes a
//!   resumption (legacy `DTLS1_BAD_VER`) or negotiates PSK only, with the 32-byte session id
//!   the gateway handed out (`X-DTLS-Session-ID` / App-ID); Fortinet's starts with a
//!   cleartext `GFtype\0clthello\0SVPNCOOKIE\0…` payload;
//! - the tunnel request, when the HTTP is in clear (a TLS-terminating tap, a test gateway).
//!
//! Facts and sources: REFERENCE-2 §1 (openconnect `dtls.c`, `gnutls-dtls.c`,
//! `openssl-dtls.c`, `fortinet.c`, `gpst.c`, `pulse.c`; ocserv `worker-vpn.c`; SoftEther
//! `Protocol.c`).

use std::sync::LazyLock;

use crate::app::App;
use crate::dissect::identify::{Evidence, Identification, Input, Probe};
use crate::dissect::tls::ClientHello;

/// DTLS record header (13 B) + handshake header (12 B) + client_version (2) + random (32):
/// the session id's length byte (ocserv `RECORD_PAYLOAD_POS` + `HANDSHAKE_SESSION_ID_POS`).
const DTLS_SESSION_ID_LEN_AT: usize = 13 + 12 + 2 + 32;
/// The session id AnyConnect gateways hand out (`X-DTLS-Session-ID`, 64 hex digits).
const ANYCONNECT_SESSION_ID_LEN: u8 = 32;
/// openconnect's PSK-NEGOTIATE mode repeats the App-ID in this extension (`gnutls-dtls.c`).
const EXT_OPENCONNECT_APP_ID: u16 = 0xbb92;

/// Whether a DTLS ClientHello datagram is AnyConnect's: the session id of the gateway's
/// length and either the App-ID extension or only PSK cipher suites (PSK-NEGOTIATE: the key
/// comes from the TLS channel's exporter, so no certificate is ever asked for).
pub fn is_anyconnect_dtls(datagram: &[u8], hello: &ClientHello) -> bool {
    let session_id = datagram.get(DTLS_SESSION_ID_LEN_AT) == Some(&ANYCONNECT_SESSION_ID_LEN);
    let psk_only = !hello.ciphers.is_empty() && hello.ciphers.iter().all(|&c| is_psk_suite(c));
    session_id && (hello.extensions.contains(&EXT_OPENCONNECT_APP_ID) || psk_only)
}

/// Whether a datagram is a legacy AnyConnect DTLS ClientHello: record version `01 00`
/// (Cisco's pre-RFC `DTLS1_BAD_VER`, which no other DTLS stack sends) carrying a
/// ClientHello that resumes the gateway's 32-byte session.
pub fn is_anyconnect_legacy_dtls(datagram: &[u8]) -> bool {
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    datagram.first() == Some(&HANDSHAKE)
        && datagram.get(1..3) == Some(&[0x01, 0x00])
        && datagram.get(13) == Some(&CLIENT_HELLO)
        && datagram.get(DTLS_SESSION_ID_LEN_AT) == Some(&ANYCONNECT_SESSION_ID_LEN)
}

/// TLS_PSK_* and the PSK AEAD suites (IANA TLS Cipher Suites registry: RFC 4279, 5487,
/// 6655, 7905): no certificate, no (EC)DHE.
fn is_psk_suite(suite: u16) -> bool {
    matches!(
        suite,
        0x008a
            ..=0x008d
                | 0x00a8
                | 0x00a9
                | 0x00ae
                | 0x00af
                | 0xc0a4
                | 0xc0a5
                | 0xc0a8
                | 0xc0a9
                | 0xccab
    )
}

/// Fortinet's DTLS hello, in clear in the first datagram: a u16 length, then
/// `GFtype\0clthello\0SVPNCOOKIE\0` from the client or `GFtype\0svrhello\0` from the gateway.
pub fn is_fortinet_dtls_hello(datagram: &[u8]) -> bool {
    let Some(body) = datagram.get(2..) else {
        return false;
    };
    let length = datagram
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    length.is_some_and(|n| n == datagram.len() || n == body.len())
        && (body.starts_with(b"GFtype\0clthello\0SVPNCOOKIE\0")
            || body.starts_with(b"GFtype\0svrhello\0"))
}

/// The end of a message head, searched with memchr: every cleartext HTTP request comes
/// to [`tunnel_request`]. Built once: building the searcher cost more than the search.
static HEAD_END: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// The SSL-VPN a cleartext client request opens, from its request line and headers.
pub fn tunnel_request(client: &[u8]) -> Option<App> {
    let head_end = HEAD_END.find(client).unwrap_or(client.len());
    let head = client.get(..head_end.min(4096))?;
    let line_end = memchr::memchr(b'\r', head).unwrap_or(head.len());
    let line = head.get(..line_end)?;
    // Lines found with memchr, not byte by byte: every request is searched for a header.
    let lines = || {
        let mut rest = Some(head);
        std::iter::from_fn(move || {
            let r = rest?;
            let Some(end) = memchr::memchr(b'\n', r) else {
                rest = None;
                return Some(r);
            };
            rest = Some(&r[end + 1..]);
            Some(&r[..end])
        })
    };
    let has_header = |name: &[u8], value: &[u8]| {
        lines().any(|h| {
            let h = h.strip_suffix(b"\r").unwrap_or(h);
            h.len() >= name.len()
                && h[..name.len()].eq_ignore_ascii_case(name)
                && h.windows(value.len())
                    .any(|w| w.eq_ignore_ascii_case(value))
        })
    };
    if line.starts_with(b"CONNECT /CSCOSSLC/tunnel ") || has_header(b"X-CSTP-Version:", b"1") {
        Some(App::Anyconnect)
    } else if line.starts_with(b"GET /remote/sslvpn-tunnel") {
        Some(App::FortinetSslvpn)
    } else if line.starts_with(b"GET /ssl-tunnel-connect.sslvpn") {
        Some(App::Globalprotect)
    } else if line.starts_with(b"GET ") && has_header(b"Upgrade:", b"IF-T/TLS") {
        Some(App::PulseSecure)
    } else if line.starts_with(b"POST /vpnsvc/connect.cgi ") {
        Some(App::Softether)
    } else {
        None
    }
}

/// The vendor DTLS channels that open with a datagram the plain DTLS parser would miss
/// (Fortinet's cleartext hello) or call plain DTLS (AnyConnect's legacy resumption).
pub fn dtls_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let first = input.first_datagram();
    let app = if is_fortinet_dtls_hello(first) {
        App::FortinetSslvpn
    } else if is_anyconnect_legacy_dtls(first) {
        App::Anyconnect
    } else {
        return Probe::No;
    };
    id.app = Some(app);
    id.details.tool_evidence = Some(Evidence::Payload);
    Probe::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_requests_name_their_vpn() {
        let cases: [(&[u8], Option<App>); 8] = [
            (
                b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: vpn\r\nX-CSTP-Version: 1\r\n\r\n",
                Some(App::Anyconnect),
            ),
            // By the header alone, on a line of its own and on the last line of a head
            // still coming.
            (
                b"POST /tunnel HTTP/1.1\r\nx-cstp-version: 1\r\nHost: vpn\r\n\r\n",
                Some(App::Anyconnect),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: vpn\r\nUpgrade: IF-T/TLS 1.0",
                Some(App::PulseSecure),
            ),
            (
                b"GET /remote/sslvpn-tunnel HTTP/1.1\r\nHost: vpn\r\nUser-Agent: Mozilla/5.0 SV1\r\n\r\n",
                Some(App::FortinetSslvpn),
            ),
            (
                b"GET /ssl-tunnel-connect.sslvpn?user=a&authcookie=b HTTP/1.1\r\n\r\n",
                Some(App::Globalprotect),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Type: EAP\r\nUpgrade: IF-T/TLS 1.0\r\nContent-Length: 0\r\n\r\n",
                Some(App::PulseSecure),
            ),
            (
                b"POST /vpnsvc/connect.cgi HTTP/1.1\r\nContent-Type: image/jpeg\r\n\r\nGIF89a",
                Some(App::Softether),
            ),
            (
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                None,
            ),
        ];
        for (bytes, app) in cases {
            assert_eq!(
                tunnel_request(bytes),
                app,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn fortinet_dtls_hello_needs_its_length_and_words() {
        let body = b"GFtype\0clthello\0SVPNCOOKIE\0abc\0";
        let mut d = ((body.len() + 2) as u16).to_be_bytes().to_vec();
        d.extend_from_slice(body);
        assert!(is_fortinet_dtls_hello(&d));
        d[1] ^= 0x40;
        assert!(!is_fortinet_dtls_hello(&d));
        assert!(!is_fortinet_dtls_hello(b"\x00"));
    }

    #[test]
    fn legacy_dtls_hello_is_recognised_by_its_bad_version() {
        let mut d = vec![22, 0x01, 0x00];
        d.extend_from_slice(&[0; 10]);
        d.push(1);
        d.resize(DTLS_SESSION_ID_LEN_AT, 0);
        d.push(32);
        d.extend_from_slice(&[0xab; 32]);
        assert!(is_anyconnect_legacy_dtls(&d));
        d[2] = 0xfd;
        d[1] = 0xfe;
        assert!(!is_anyconnect_legacy_dtls(&d));
    }
}
