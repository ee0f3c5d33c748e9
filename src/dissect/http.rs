//! HTTP/1.x message-head dissector (RFC 9112): the request or status line and the few
//! headers that name the client, the server and the destination.

use super::identify::{Identification, Input, Probe, Protocol, Summary};
use super::sslvpn;
use super::wire::wire_string;
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;

/// Longest message head (start line and header section) we wait for.
const MAX_HEAD: usize = 16 * 1024;
/// Most header fields read from one head.
const MAX_HEADERS: usize = 100;
/// Longest method token: the registered ones are short, and a long one is not HTTP.
const MAX_METHOD: usize = 24;

/// A request head (RFC 9112 §3: request-line = method SP request-target SP HTTP-version).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Request {
    pub method: String,
    /// As sent: origin-form, absolute-form, or CONNECT's authority-form (§3.2.3).
    pub target: String,
    pub version: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
}

/// A response head (RFC 9112 §4: status-line = HTTP-version SP status-code SP [reason]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub server: Option<String>,
}

/// Parses the request head at the start of a client's byte stream.
pub fn parse_request(stream: &[u8]) -> Result<Request> {
    check_method_prefix(stream)?;
    let head = head(stream)?;
    let mut parts = head.start.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Invalid("HTTP request line is not three fields"));
    };
    if target.is_empty() || !is_version(version) {
        return Err(Error::Invalid("HTTP request line malformed"));
    }
    Ok(Request {
        method: wire_string(method),
        target: wire_string(target),
        version: wire_string(version),
        host: head.header(b"host"),
        user_agent: head.header(b"user-agent"),
    })
}

/// Parses the response head at the start of a server's byte stream.
pub fn parse_response(stream: &[u8]) -> Result<Response> {
    let (version, status, head) = response_head(stream)?;
    Ok(Response {
        version: wire_string(version),
        status,
        server: head.header(b"server"),
    })
}

/// The version and status code of the response head at the start of a server's byte
/// stream, and the head: what [`parse_response`] reads, no string of it copied (a probe
/// wants only the status).
fn response_head(stream: &[u8]) -> Result<(&[u8], u16, Head<'_>)> {
    const PREFIX: &[u8] = b"HTTP/";
    let n = stream.len().min(PREFIX.len());
    if stream[..n] != PREFIX[..n] {
        return Err(Error::Invalid("not an HTTP status line"));
    }
    let head = head(stream)?;
    let mut parts = head.start.splitn(3, |&b| b == b' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(Error::Invalid("HTTP status line is too short"));
    };
    // status-code = 3DIGIT (RFC 9110 §15).
    let status = match code {
        [a, b, c] if code.iter().all(u8::is_ascii_digit) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(Error::Invalid("HTTP status code is not three digits")),
    };
    if !is_version(version) {
        return Err(Error::Invalid("HTTP version malformed"));
    }
    Ok((version, status, head))
}

/// Rejects non-HTTP clients from their first bytes: a method is a token (RFC 9110 §9.1,
/// tchar of §5.6.2) followed by a space.
fn check_method_prefix(stream: &[u8]) -> Result<()> {
    let method_end = stream.iter().position(|&b| !is_tchar(b));
    match method_end {
        None if stream.len() <= MAX_METHOD => Ok(()),
        Some(end) if end > 0 && end <= MAX_METHOD && stream[end] == b' ' => Ok(()),
        _ => Err(Error::Invalid("not an HTTP request method")),
    }
}

/// token characters (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3).
fn is_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// A message head (RFC 9112 §2.1): its start line, and its header section up to the empty
/// line, every field in it checked to have a name. Read in place: the lines and fields
/// are walked again where asked for, not collected.
struct Head<'a> {
    start: &'a [u8],
    /// The header lines, each ending in its LF.
    section: &'a [u8],
}

/// The lines of `bytes` that end in LF, without their line ending (CRLF, or a bare LF as
/// §2.2 allows).
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let end = memchr::memchr(b'\n', rest)?;
        let line = &rest[..end];
        rest = &rest[end + 1..];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// Splits a message head into its start line and header section (RFC 9112 §2.1).
/// `Incomplete` until the empty line.
fn head(stream: &[u8]) -> Result<Head<'_>> {
    let window = stream.get(..MAX_HEAD).unwrap_or(stream);
    let mut start = None;
    let mut section = 0..0;
    let mut count = 0;
    let mut rest = window;
    loop {
        let Some(end) = memchr::memchr(b'\n', rest) else {
            return Err(if stream.len() >= MAX_HEAD {
                Error::Invalid("HTTP head too long")
            } else {
                Error::Incomplete
            });
        };
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        let at = window.len() - rest.len();
        rest = &rest[end + 1..];
        if line.is_empty() {
            section.end = at;
            break;
        }
        count += 1;
        if count == 1 {
            start = Some(line);
            section.start = window.len() - rest.len();
        }
        if count > MAX_HEADERS + 1 {
            return Err(Error::Invalid("too many HTTP header fields"));
        }
    }
    let start = start.ok_or(Error::Invalid("HTTP head without a start line"))?;
    let head = Head {
        start,
        section: &window[section],
    };
    for line in lines(head.section) {
        if !is_continuation(line) && !line.contains(&b':') {
            return Err(Error::Invalid("HTTP header field without a colon"));
        }
    }
    Ok(head)
}

/// An obs-fold continuation line (§5.2): it carries no field we read.
fn is_continuation(line: &[u8]) -> bool {
    line.first().is_some_and(|&b| b == b' ' || b == b'\t')
}

impl Head<'_> {
    /// The header fields (RFC 9112 §5), as (name, value).
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        lines(self.section)
            .filter(|line| !is_continuation(line))
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], line[colon + 1..].trim_ascii()))
            })
    }

    /// The first value of a header field, by case-insensitive name (RFC 9110 §5.1).
    fn header(&self, name: &[u8]) -> Option<String> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| wire_string(v))
    }
}

/// What a flow record says of an HTTP/1.x exchange.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HttpDetails {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub status: Option<u16>,
    /// An explicit proxy request (RFC 9110 §9.3.6).
    pub connect: bool,
    /// What [`sslvpn::tunnel_request`] made of the client's first `.0` bytes: asked again
    /// only when more came, not at every pass (it walks the head header by header). A
    /// `u32` keeps the box in the allocator class it had without it (memory per flow).
    #[serde(skip)]
    pub(crate) tunnel: (u32, Option<App>),
}

impl Summary for HttpDetails {}

/// HTTP/1.x: a request head from the client (a method starts with an upper-case letter),
/// settled with the response's status line.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let c = input.client;
    if !c.first().is_some_and(u8::is_ascii_uppercase) {
        return Probe::No;
    }
    // The request an earlier pass read was whole then, and the client's bytes only grow:
    // it is kept where it is, and only the response is read again.
    let mut details = match input.http.take() {
        Some(earlier) => earlier,
        None => {
            let req = parse_request(c);
            let Ok(req) = req else {
                return Probe::of(&req, input.client_closed);
            };
            Box::new(HttpDetails {
                connect: req.method.eq_ignore_ascii_case("CONNECT"),
                method: req.method,
                target: req.target,
                host: req.host,
                user_agent: req.user_agent,
                status: None,
                tunnel: (0, None),
            })
        }
    };
    debug_assert!(parse_request(c).is_ok_and(|r| r.method == details.method
        && r.target == details.target
        && r.host == details.host
        && r.user_agent == details.user_agent));
    details.status = response_head(input.server)
        .ok()
        .map(|(_, status, _)| status);
    // A vendor SSL-VPN's tunnel request, when the HTTP is in clear. The client's bytes only
    // grow: as many as before are the same bytes.
    let read = u32::try_from(c.len()).ok();
    if read != Some(details.tunnel.0) {
        details.tunnel = (read.unwrap_or(0), sslvpn::tunnel_request(c));
    }
    debug_assert_eq!(details.tunnel.1, sslvpn::tunnel_request(c));
    id.app = Some(details.tunnel.1.unwrap_or(App::Http));
    let settled = details.status.is_some() || input.server_closed;
    id.details.other = Some(Protocol::Http(details));
    Probe::done_if(settled)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Request in the form of RFC 9112 §3.2.1's example, with a User-Agent added.
    pub(crate) const REQUEST: &[u8] = b"GET /where?q=now HTTP/1.1\r\nHost: www.example.org\r\n\
        user-agent:  curl/8.5.0 \r\nAccept: */*\r\n\r\n";
    /// Status line as in RFC 9112 §4, with a Server field (RFC 9110 §10.2.4).
    pub(crate) const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.25.3\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn request() {
        let req = parse_request(REQUEST).unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/where?q=now");
        assert_eq!(req.version, "HTTP/1.1");
        assert_eq!(req.host.as_deref(), Some("www.example.org"));
        assert_eq!(req.user_agent.as_deref(), Some("curl/8.5.0"));
        for cut in 0..REQUEST.len() - 1 {
            assert_eq!(
                parse_request(&REQUEST[..cut]),
                Err(Error::Incomplete),
                "{cut}"
            );
        }
    }

    #[test]
    fn a_field_without_a_colon_is_refused_once_the_head_is_whole() {
        let partial = b"GET / HTTP/1.1\r\nno colon here\r\n";
        assert_eq!(parse_request(partial), Err(Error::Incomplete));
        let whole = b"GET / HTTP/1.1\r\nno colon here\r\n\r\n";
        assert_eq!(
            parse_request(whole),
            Err(Error::Invalid("HTTP header field without a colon"))
        );
        // A continuation line (obs-fold) is no field, colon or not; the first Host counts.
        let folded = b"GET / HTTP/1.1\nHost: a.example\n  folded\nHOST: b.example\n\n";
        assert_eq!(
            parse_request(folded).unwrap().host.as_deref(),
            Some("a.example")
        );
    }

    #[test]
    fn connect_authority_form() {
        // RFC 9112 §3.2.3's example.
        let req =
            parse_request(b"CONNECT server.example.com:80 HTTP/1.1\nHost: server.example.com\n\n")
                .unwrap();
        assert_eq!(req.method, "CONNECT");
        assert_eq!(req.target, "server.example.com:80");
    }

    #[test]
    fn response() {
        let resp = parse_response(RESPONSE).unwrap();
        assert_eq!(resp.version, "HTTP/1.1");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.server.as_deref(), Some("nginx/1.25.3"));
        assert_eq!(parse_response(b"HTTP/1.0 404\r\n\r\n").unwrap().status, 404);
        assert_eq!(parse_response(b"HTT"), Err(Error::Incomplete));
        assert!(matches!(
            parse_response(b"HTTP/1.1 20x OK\r\n\r\n"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn rejects_other_protocols_and_bounds() {
        assert!(matches!(
            parse_request(b"\x16\x03\x01"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            parse_request(b"SSH-2.0-OpenSSH_9.6\r\n"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            parse_request(b"GET / FTP/1.0\r\n\r\n"),
            Err(Error::Invalid(_))
        ));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(
            parse_request(&long),
            Err(Error::Invalid("HTTP head too long"))
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&many),
            Err(Error::Invalid("too many HTTP header fields"))
        );
        let ua = [
            b"GET / HTTP/1.1\r\nUser-Agent: ".as_slice(),
            &[b'u'; 1000],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(parse_request(&ua).unwrap().user_agent.unwrap().len(), 256);
    }

    /// Every HTTP flow keeps its boxed details until it ends: 112 bytes is the allocator
    /// class they took before the tunnel was kept in them.
    #[test]
    fn details_fit_their_budget() {
        assert!(std::mem::size_of::<HttpDetails>() <= 112);
    }

    /// A pass after the first takes the request, and the SSL-VPN it opens, from the earlier
    /// one; the tunnel is asked again once the client sent more.
    #[test]
    fn a_later_pass_keeps_the_request_and_its_tunnel() {
        let pass = |client: &[u8], server: &[u8], earlier| {
            let input = Input {
                proto: crate::decode::Proto::Tcp,
                orig_port: 50000,
                resp_port: 443,
                client,
                server,
                client_closed: false,
                server_closed: false,
                client_datagrams: &[],
                server_datagrams: &[],
                dns_tool: None,
                midstream: false,
                tls: std::cell::Cell::new(None),
                http: std::cell::Cell::new(earlier),
                ja4: None,
                certs: None,
                dns_answer: None,
                dns: None,
            };
            let mut id = Identification::default();
            let probe = probe(&input, &mut id);
            let Some(Protocol::Http(details)) = id.details.other else {
                panic!("no HTTP details");
            };
            (probe, id.app, details)
        };
        // An OpenConnect CSTP request (ocserv's worker-http.c reads X-CSTP-Version).
        let cstp = b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: vpn.example\r\n\r\n";
        let (first, app, details) = pass(cstp, b"", None);
        assert_eq!((first, app), (Probe::More, Some(App::Anyconnect)));
        let (second, app, _) = pass(cstp, b"HTTP/1.1 200 OK\r\n\r\n", Some(details));
        assert_eq!((second, app), (Probe::Done, Some(App::Anyconnect)));
        // A head ended by bare LFs: the tunnel looks at what follows it too.
        let plain = b"GET / HTTP/1.1\nHost: vpn.example\n\n";
        let (_, app, details) = pass(plain, b"", None);
        assert_eq!(app, Some(App::Http));
        let grown = [plain.as_slice(), b"X-CSTP-Version: 1\r\n"].concat();
        let (_, app, _) = pass(&grown, b"", Some(details));
        assert_eq!(app, Some(App::Anyconnect));
    }
}
