//! TLS and DTLS handshake dissector: the ClientHello fields that JA4 and the flow record
//! need, the server's choice, and the server's leaf certificate when it is sent in clear.
//!
//! Record layer: RFC 8446 §5.1 (TLS), RFC 6347 §4.1 (DTLS). Handshake messages: RFC 8446 §4,
//! RFC 5246 §7.4. A handshake message may span several records, and a record several TCP
//! segments, so the TCP parsers take a direction's in-order bytes from the flow start.
//!
//! This module also holds the small byte cursor and string helper the sibling dissectors
//! (QUIC, DNS, HTTP) share.

use std::borrow::Cow;
use std::sync::Arc;

use super::identify::{Evidence, Identification, Input, Probe, tls_details};
use super::ja4::{self, Transport};
use super::sslvpn;
use super::wire::{Reader, wire_string};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;

/// Longest handshake message we wait for. A ClientHello with post-quantum key shares is
/// about 2 KiB and certificate chains rarely pass 16 KiB; anything longer is not worth
/// buffering on a sensor.
const MAX_HANDSHAKE_LEN: usize = 1 << 17;

/// Most SAN names kept from one certificate.
const MAX_SAN_NAMES: usize = 64;

/// TLSPlaintext header (RFC 8446 §5.1): type(1) legacy_record_version(2) length(2).
mod record {
    pub const HEADER_LEN: usize = 5;
    pub const TYPE: usize = 0;
    pub const VERSION_MAJOR: usize = 1;
    pub const LENGTH: std::ops::Range<usize> = 3..5;
    /// RFC 8446 §5.2: no record is longer than 2^14 + 256 (we allow the TLS 1.2 bound).
    pub const MAX_LEN: usize = (1 << 14) + 2048;
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    pub const HANDSHAKE: u8 = 22;
}

/// Handshake message types (RFC 8446 §4, RFC 5246 §7.4).
mod handshake {
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const CERTIFICATE: u8 = 11;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const SERVER_HELLO_DONE: u8 = 14;
}

/// Extension types (IANA TLS ExtensionType registry).
mod ext {
    pub const SERVER_NAME: u16 = 0x0000;
    pub const SIGNATURE_ALGORITHMS: u16 = 0x000d;
    pub const ALPN: u16 = 0x0010;
    pub const SUPPORTED_VERSIONS: u16 = 0x002b;
}

const TLS13: u16 = 0x0304;

/// A ClientHello (RFC 8446 §4.1.2; RFC 5246 §7.4.1.2; DTLS adds a cookie, RFC 6347 §4.2.1).
/// Lists are in wire order with GREASE values kept; JA4 drops them itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientHello {
    pub legacy_version: u16,
    /// supported_versions extension (RFC 8446 §4.2.1), empty when absent.
    pub versions: Vec<u16>,
    /// First host_name of the server_name extension (RFC 6066 §3).
    pub sni: Option<String>,
    /// ALPN protocol names (RFC 7301 §3.1), lossily decoded.
    pub alpn: Vec<String>,
    /// The first ALPN value as sent: JA4 looks at its raw bytes.
    #[serde(skip)]
    pub alpn_first_raw: Vec<u8>,
    pub ciphers: Vec<u16>,
    pub extensions: Vec<u16>,
    pub signature_algorithms: Vec<u16>,
    pub ja4: String,
}

/// What the server chose (RFC 8446 §4.1.3).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerHello {
    /// The negotiated version: supported_versions' selected_version when present.
    pub version: u16,
    pub cipher: u16,
    pub alpn: Option<String>,
}

/// The server's leaf certificate (RFC 5246 §7.4.2, X.509 per RFC 5280 §4.1).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Certificate {
    /// RFC 4514-style distinguished names.
    pub subject: String,
    pub issuer: String,
    pub subject_cn: Option<String>,
    pub subject_org: Option<String>,
    /// dNSName entries of subjectAltName (RFC 5280 §4.2.1.6).
    pub san_dns: Vec<String>,
}

/// Parses the ClientHello at the start of a client's TLS-over-TCP byte stream.
pub fn parse_client_hello(stream: &[u8]) -> Result<ClientHello> {
    parse_client_hello_with(stream, None)
}

/// [`parse_client_hello`], its JA4 hashes taken from `memo` when they were worked out before.
pub fn parse_client_hello_with(stream: &[u8], memo: Option<&ja4::Memo>) -> Result<ClientHello> {
    let flight = Flight::read(stream)?;
    let mut messages = Reader::new(&flight.bytes);
    let (kind, body) = flight.complete(next_message(&mut messages))?;
    if kind != handshake::CLIENT_HELLO {
        return Err(Error::Invalid(
            "first handshake message is not a ClientHello",
        ));
    }
    client_hello_body(body, false, Transport::Tcp, memo)
}

/// Parses a ClientHello handshake message (type, length, body; RFC 8446 §4) carried
/// without a record layer, as in QUIC CRYPTO frames (RFC 9001 §4.1.3).
pub(crate) fn parse_client_hello_message(
    message: &[u8],
    transport: Transport,
) -> Result<ClientHello> {
    let mut r = Reader::new(message);
    let (kind, body) = next_message(&mut r)?;
    if kind != handshake::CLIENT_HELLO {
        return Err(Error::Invalid(
            "first handshake message is not a ClientHello",
        ));
    }
    client_hello_body(body, false, transport, None)
}

/// DTLSPlaintext header (RFC 6347 §4.1): type(1) version(2) epoch(2) sequence_number(6)
/// length(2).
mod dtls_record {
    pub const EPOCH_AND_SEQUENCE_LEN: usize = 8;
    /// DTLS versions are the one's complement of TLS ones: the major byte is 0xfe.
    pub const VERSION_MAJOR: u8 = 0xfe;
}

/// Parses the ClientHello in one DTLS 1.0/1.2 datagram (RFC 6347 §4.2.2 handshake header:
/// type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)). Fragments must
/// arrive in order; a ClientHello split over several datagrams is `Incomplete`.
pub fn parse_dtls_client_hello(datagram: &[u8]) -> Result<ClientHello> {
    let mut records = Reader::new(datagram);
    let mut message = Vec::new();
    let mut length = None;
    while records.remaining() > 0 {
        if records.u8()? != record::HANDSHAKE {
            if length.is_none() {
                return Err(Error::Invalid("not a DTLS handshake record"));
            }
            break;
        }
        if records.u16()? >> 8 != u16::from(dtls_record::VERSION_MAJOR) {
            return Err(Error::Invalid("not a DTLS record version"));
        }
        records.take(dtls_record::EPOCH_AND_SEQUENCE_LEN)?;
        let mut fragments = Reader::new(records.vec16()?);
        while fragments.remaining() > 0 {
            let kind = fragments.u8()?;
            let total = fragments.u24()?;
            let _message_seq = fragments.u16()?;
            let offset = fragments.u24()?;
            let fragment = fragments.vec24()?;
            if kind != handshake::CLIENT_HELLO {
                if length.is_none() {
                    return Err(Error::Invalid(
                        "first handshake message is not a ClientHello",
                    ));
                }
                continue;
            }
            if total > MAX_HANDSHAKE_LEN {
                return Err(Error::Invalid("handshake message too long"));
            }
            length = Some(total);
            if offset == message.len() {
                message.extend_from_slice(fragment);
            }
            if message.len() > total {
                return Err(Error::Invalid("DTLS fragment past the message end"));
            }
        }
    }
    match length {
        Some(total) if message.len() == total => {
            client_hello_body(&message, true, Transport::Dtls, None)
        }
        _ => Err(Error::Incomplete),
    }
}

/// Parses the ServerHello at the start of a server's TLS-over-TCP byte stream.
pub fn parse_server_hello(stream: &[u8]) -> Result<ServerHello> {
    server_hello_in(&Flight::read(stream)?)
}

/// [`parse_server_hello`] of a flight already read.
fn server_hello_in(flight: &Flight<'_>) -> Result<ServerHello> {
    let mut messages = Reader::new(&flight.bytes);
    let (kind, body) = flight.complete(next_message(&mut messages))?;
    if kind != handshake::SERVER_HELLO {
        return Err(Error::Invalid(
            "first server handshake message is not a ServerHello",
        ));
    }
    server_hello_body(body)
}

/// Finds the server's leaf certificate in its first flight. `Ok(None)` when the flight
/// shows the certificate will not come in clear: TLS 1.3 (RFC 8446 §2 encrypts it), a
/// resumed session (ChangeCipherSpec before any Certificate), an anonymous or PSK suite
/// (ServerKeyExchange/ServerHelloDone first), an empty list, or an alert.
pub fn parse_server_certificate(stream: &[u8]) -> Result<Option<Certificate>> {
    certificate_in(&Flight::read(stream)?, None, None)
}

/// [`parse_server_certificate`] of a flight already read, whose first message, when it is
/// a ServerHello, `hello` may hold already read ([`server_hello_in`]).
/// Certificates already read are taken from `memo`.
fn certificate_in(
    flight: &Flight<'_>,
    hello: Option<&ServerHello>,
    memo: Option<&CertMemo>,
) -> Result<Option<Certificate>> {
    let mut messages = Reader::new(&flight.bytes);
    let mut first = true;
    loop {
        let (kind, body) = match next_message(&mut messages) {
            Err(Error::Incomplete) if flight.end != End::More => return Ok(None),
            other => other?,
        };
        let version = |body| match hello.filter(|_| first) {
            Some(hello) => Ok(hello.version),
            None => server_hello_body(body).map(|h| h.version),
        };
        match kind {
            handshake::SERVER_HELLO if version(body)? == TLS13 => {
                return Ok(None);
            }
            handshake::SERVER_HELLO => {}
            _ if first => {
                return Err(Error::Invalid(
                    "first server handshake message is not a ServerHello",
                ));
            }
            handshake::CERTIFICATE => return leaf_certificate(body, memo),
            handshake::SERVER_KEY_EXCHANGE | handshake::SERVER_HELLO_DONE => return Ok(None),
            _ => {}
        }
        first = false;
    }
}

/// How the leading run of handshake records ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The stream ran out: more records may come.
    More,
    /// ChangeCipherSpec: what follows is encrypted.
    ChangeCipherSpec,
    /// Another content type (alert, application data).
    Other,
}

/// The handshake bytes of the leading handshake records of one direction, joined
/// (a handshake message may span records, RFC 8446 §5.1). Borrowed from the stream while
/// they lie in one record (most ClientHellos): joined, they are a copy.
struct Flight<'a> {
    bytes: Cow<'a, [u8]>,
    end: End,
}

impl<'a> Flight<'a> {
    fn read(stream: &'a [u8]) -> Result<Flight<'a>> {
        // Reject other protocols from the first bytes rather than waiting for a record.
        if stream
            .get(record::TYPE)
            .is_some_and(|&t| t != record::HANDSHAKE)
        {
            return Err(Error::Invalid("not a TLS handshake record"));
        }
        if stream.get(record::VERSION_MAJOR).is_some_and(|&v| v != 3) {
            return Err(Error::Invalid("not a TLS record version"));
        }
        let mut bytes = Cow::Borrowed(&[][..]);
        let mut rest = stream;
        let end = loop {
            let Some(header) = rest.get(..record::HEADER_LEN) else {
                break End::More;
            };
            let kind = header[record::TYPE];
            let len = header
                .get(record::LENGTH)
                .map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
            if header[record::VERSION_MAJOR] != 3 {
                return Err(Error::Invalid("not a TLS record version"));
            }
            if len > record::MAX_LEN {
                return Err(Error::Invalid("TLS record too long"));
            }
            match kind {
                record::HANDSHAKE => {}
                record::CHANGE_CIPHER_SPEC => break End::ChangeCipherSpec,
                _ => break End::Other,
            }
            let Some(fragment) = rest.get(record::HEADER_LEN..record::HEADER_LEN + len) else {
                break End::More;
            };
            match &mut bytes {
                Cow::Borrowed([]) => bytes = Cow::Borrowed(fragment),
                Cow::Borrowed(first) => {
                    // Room for the rest of the stream at once: it holds the records to come.
                    let mut joined = Vec::with_capacity(first.len() + rest.len());
                    joined.extend_from_slice(first);
                    joined.extend_from_slice(fragment);
                    bytes = Cow::Owned(joined);
                }
                Cow::Owned(joined) => joined.extend_from_slice(fragment),
            }
            rest = &rest[record::HEADER_LEN + len..];
            if bytes.len() > MAX_HANDSHAKE_LEN {
                break End::Other;
            }
        };
        Ok(Flight { bytes, end })
    }

    /// A message cut short is `Incomplete` only while more records may come.
    fn complete<T>(&self, message: Result<T>) -> Result<T> {
        match message {
            Err(Error::Incomplete) if self.end != End::More => Err(Error::Invalid(
                "handshake message cut short by another record",
            )),
            other => other,
        }
    }
}

/// Takes the next whole handshake message: msg_type(1) length(3) body (RFC 8446 §4).
fn next_message<'a>(r: &mut Reader<'a>) -> Result<(u8, &'a [u8])> {
    let kind = r.u8()?;
    let len = r.u24()?;
    if len > MAX_HANDSHAKE_LEN {
        return Err(Error::Invalid("handshake message too long"));
    }
    Ok((kind, r.take(len)?))
}

/// A whole message whose inner lengths overrun it is malformed, not incomplete.
fn overrun<T>(result: Result<T>, what: &'static str) -> Result<T> {
    result.map_err(|e| match e {
        Error::Incomplete => Error::Invalid(what),
        other => other,
    })
}

fn client_hello_body(
    body: &[u8],
    dtls: bool,
    transport: Transport,
    memo: Option<&ja4::Memo>,
) -> Result<ClientHello> {
    let mut hello = overrun(
        client_hello_fields(body, dtls),
        "ClientHello fields overrun the message",
    )?;
    hello.ja4 = ja4::ja4_with(&hello, transport, memo);
    Ok(hello)
}

/// ClientHello body: legacy_version(2) random(32) legacy_session_id<0..32>
/// [cookie<0..2^8-1> in DTLS] cipher_suites<2..2^16-2> legacy_compression_methods<1..2^8-1>
/// extensions<8..2^16-1> (absent in some TLS 1.0 hellos).
fn client_hello_fields(body: &[u8], dtls: bool) -> Result<ClientHello> {
    const RANDOM_LEN: usize = 32;
    let mut r = Reader::new(body);
    let mut hello = ClientHello {
        legacy_version: r.u16()?,
        ..ClientHello::default()
    };
    r.take(RANDOM_LEN)?;
    r.vec8()?;
    if dtls {
        r.vec8()?;
    }
    hello.ciphers = u16_list(r.vec16()?)?;
    r.vec8()?;
    if r.remaining() == 0 {
        return Ok(hello);
    }
    let mut exts = Reader::new(r.vec16()?);
    // Room for them all at once (an extension takes 4 bytes at least), not grown by
    // doubling: a browser's hello has a dozen or more.
    hello.extensions = Vec::with_capacity(exts.remaining() / 4);
    while exts.remaining() > 0 {
        let kind = exts.u16()?;
        let mut data = Reader::new(exts.vec16()?);
        hello.extensions.push(kind);
        match kind {
            ext::SERVER_NAME => hello.sni = server_name(&mut data)?,
            ext::ALPN => {
                let mut names = Reader::new(data.vec16()?);
                while names.remaining() > 0 {
                    let name = names.vec8()?;
                    if hello.alpn.is_empty() {
                        hello.alpn_first_raw = name.to_vec();
                    }
                    hello.alpn.push(wire_string(name));
                }
            }
            ext::SIGNATURE_ALGORITHMS => hello.signature_algorithms = u16_list(data.vec16()?)?,
            ext::SUPPORTED_VERSIONS => hello.versions = u16_list(data.vec8()?)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// server_name extension (RFC 6066 §3): ServerNameList of (name_type, HostName).
fn server_name(data: &mut Reader<'_>) -> Result<Option<String>> {
    const HOST_NAME: u8 = 0;
    let mut list = Reader::new(data.vec16()?);
    while list.remaining() > 0 {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == HOST_NAME {
            return Ok(Some(wire_string(name)));
        }
    }
    Ok(None)
}

/// ServerHello body: legacy_version(2) random(32) legacy_session_id_echo<0..32>
/// cipher_suite(2) legacy_compression_method(1) extensions<6..2^16-1> (RFC 8446 §4.1.3).
fn server_hello_body(body: &[u8]) -> Result<ServerHello> {
    overrun(
        server_hello_fields(body),
        "ServerHello fields overrun the message",
    )
}

fn server_hello_fields(body: &[u8]) -> Result<ServerHello> {
    let mut r = Reader::new(body);
    let mut version = r.u16()?;
    r.take(32)?;
    r.vec8()?;
    let cipher = r.u16()?;
    r.u8()?;
    let mut alpn = None;
    if r.remaining() > 0 {
        let mut exts = Reader::new(r.vec16()?);
        while exts.remaining() > 0 {
            let kind = exts.u16()?;
            let mut data = Reader::new(exts.vec16()?);
            match kind {
                ext::SUPPORTED_VERSIONS => version = data.u16()?,
                ext::ALPN => {
                    let mut names = Reader::new(data.vec16()?);
                    alpn = Some(wire_string(names.vec8()?));
                }
                _ => {}
            }
        }
    }
    Ok(ServerHello {
        version,
        cipher,
        alpn,
    })
}

/// Certificate body (RFC 5246 §7.4.2): certificate_list<0..2^24-1> of ASN.1Cert<1..2^24-1>,
/// the sender's own certificate first.
fn leaf_certificate(body: &[u8], memo: Option<&CertMemo>) -> Result<Option<Certificate>> {
    let mut r = Reader::new(body);
    let mut list = Reader::new(overrun(r.vec24(), "Certificate list overruns the message")?);
    if list.remaining() == 0 {
        return Ok(None);
    }
    let der = overrun(list.vec24(), "certificate overruns the list")?;
    match memo {
        Some(memo) => memo.read(der),
        None => read_certificate(der),
    }
    .map(Some)
}

/// Distinct certificates kept by a [`CertMemo`]: about a megabyte and a half of DER.
pub const CERT_MEMO_ENTRIES: usize = 1024;

/// Leaf certificates already read, by their DER bytes: a fleet's clients reach the same
/// servers, which send the same certificates, and decoding one was most of the
/// instructions of dissecting a TLS 1.2 flow. Bounded like the JA4 memo: past
/// [`CERT_MEMO_ENTRIES`] a new certificate is only read, so nothing is lost or evicted.
/// A worker's probes share one through [`Input`], which they read through `&`.
#[derive(Default)]
pub struct CertMemo {
    known: std::cell::RefCell<CertsRead>,
}

/// Certificates by their DER bytes.
type CertsRead = std::collections::HashMap<Box<[u8]>, Certificate, ahash::RandomState>;

impl CertMemo {
    /// [`read_certificate`] of `der`, from the memo when it was read before.
    fn read(&self, der: &[u8]) -> Result<Certificate> {
        let Ok(mut known) = self.known.try_borrow_mut() else {
            return read_certificate(der);
        };
        if let Some(cert) = known.get(der) {
            return Ok(cert.clone());
        }
        let cert = read_certificate(der)?;
        if known.len() < CERT_MEMO_ENTRIES {
            known.insert(der.into(), cert.clone());
        }
        Ok(cert)
    }
}

/// What a flow record takes of a DER X.509 certificate.
fn read_certificate(der: &[u8]) -> Result<Certificate> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| Error::Invalid("certificate is not DER X.509"))?;
    let subject = cert.subject();
    let mut san_dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                if san_dns.len() == MAX_SAN_NAMES {
                    break;
                }
                san_dns.push(wire_string(dns.as_bytes()));
            }
        }
    }
    Ok(Certificate {
        subject: wire_string(subject.to_string().as_bytes()),
        issuer: wire_string(cert.issuer().to_string().as_bytes()),
        subject_cn: first_value(subject.iter_common_name()),
        subject_org: first_value(subject.iter_organization()),
        san_dns,
    })
}

/// The first attribute value that is a string, e.g. the subject's CN.
fn first_value<'a, 'b: 'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
) -> Option<String> {
    values
        .find_map(|v| v.as_str().ok())
        .map(|s| wire_string(s.as_bytes()))
}

fn u16_list(bytes: &[u8]) -> Result<Vec<u16>> {
    if !bytes.len().is_multiple_of(2) {
        return Err(Error::Invalid("odd length of a 16-bit list"));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

/// What a flow record says of a TLS (or DTLS) session.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct TlsDetails {
    pub client_version: Option<u16>,
    pub version: Option<u16>,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub ja4: Option<String>,
    pub cipher: Option<u16>,
    pub server_alpn: Option<String>,
    pub cert_subject: Option<String>,
    pub cert_issuer: Option<String>,
    pub cert_san: Vec<String>,
    /// Datagram TLS (RFC 6347), as WebRTC media uses.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dtls: bool,
}

impl TlsDetails {
    /// The client's part: what its ClientHello offered.
    pub fn client(hello: ClientHello) -> TlsDetails {
        TlsDetails {
            client_version: Some(hello.legacy_version),
            sni: hello.sni,
            alpn: hello.alpn,
            ja4: Some(hello.ja4),
            ..TlsDetails::default()
        }
    }
}

/// TLS over TCP: a ClientHello, then the server's hello and certificate when they come.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let (c, s) = (input.client, input.server);
    if c.first() != Some(&record::HANDSHAKE) {
        return Probe::No;
    }
    let mut details = match input.tls.take().filter(|k| k.ja4.is_some() && !k.dtls) {
        // The client's part of an earlier pass (the ClientHello was whole then), kept where
        // it is: the server's part is read again below.
        Some(mut earlier) => {
            let k = Arc::make_mut(&mut earlier);
            *k = TlsDetails {
                client_version: k.client_version,
                sni: k.sni.take(),
                alpn: std::mem::take(&mut k.alpn),
                ja4: k.ja4.take(),
                ..TlsDetails::default()
            };
            earlier
        }
        None => {
            let hello = parse_client_hello_with(c, input.ja4);
            let Ok(hello) = hello else {
                return Probe::of(&hello, input.client_closed);
            };
            Arc::new(TlsDetails::client(hello))
        }
    };
    let d = Arc::make_mut(&mut details);
    id.app = Some(App::Tls);
    // The server's flight, read once for its hello and its certificate.
    let flight = Flight::read(s);
    let server = flight.as_ref().map_err(|e| *e).and_then(server_hello_in);
    if let Ok(sh) = &server {
        d.version = Some(sh.version);
        d.cipher = Some(sh.cipher);
        d.server_alpn = sh.alpn.clone();
    }
    let cert = (flight.as_ref().map_err(|e| *e))
        .and_then(|f| certificate_in(f, server.as_ref().ok(), input.certs));
    if let Ok(Some(cert)) = &cert {
        d.cert_subject = Some(cert.subject.clone());
        d.cert_issuer = Some(cert.issuer.clone());
        d.cert_san = cert.san_dns.iter().take(8).cloned().collect();
        d.cert_san.extend(cert.subject_cn.clone());
    }
    id.details.tls = Some(details);
    let sc = input.server_closed;
    Probe::done_if(Probe::of(&server, sc) != Probe::More && Probe::of(&cert, sc) != Probe::More)
}

/// DTLS over UDP: the first datagram is a ClientHello (an AnyConnect one names the VPN).
pub fn dtls_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let first = input.first_datagram();
    let Ok(hello) = parse_dtls_client_hello(first) else {
        return Probe::No;
    };
    if sslvpn::is_anyconnect_dtls(first, &hello) {
        id.app = Some(App::Anyconnect);
        id.details.tool_evidence = Some(Evidence::Payload);
    }
    id.details.tls = tls_details(TlsDetails {
        dtls: true,
        ..TlsDetails::client(hello)
    });
    Probe::Done
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// RFC 8448 §3 (Simple 1-RTT Handshake): the ClientHello handshake message.
    pub(crate) const RFC8448_CLIENT_HELLO: &str = "
        010000c00303cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef
        6283024dece7000006130113031302010000910000000b000900000673657276
        6572ff01000100000a00140012001d0017001800190100010101020103010400
        230000003300260024001d002099381de560e4bd43d23d8e435a7dbafeb3c06e
        51c13cae4d5413691e529aaf2c002b0003020304000d0020001e040305030603
        020308040805080604010501060102010402050206020202002d00020101001c
        00024001";

    /// RFC 8448 §3: the ServerHello handshake message.
    const RFC8448_SERVER_HELLO: &str = "
        020000560303a6af06a4121860dc5e6e60249cd34c95930c8ac5cb1434dac155
        772ed3e2692800130100002e00330024001d0020c9828876112095fe66762bdb
        f7c672e156d6cc253b833df1dd69b1b04e751f0f002b00020304";

    /// Wraps handshake bytes in TLS records of at most `chunk` bytes (RFC 8446 §5.1).
    pub(crate) fn records(handshake: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in handshake.chunks(chunk) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn rfc8448_client_hello() {
        let stream = records(&hex(RFC8448_CLIENT_HELLO), 1 << 14);
        let hello = parse_client_hello(&stream).unwrap();
        assert_eq!(hello.legacy_version, 0x0303);
        assert_eq!(hello.versions, vec![0x0304]);
        assert_eq!(hello.sni.as_deref(), Some("server"));
        assert!(hello.alpn.is_empty());
        assert_eq!(hello.ciphers, vec![0x1301, 0x1303, 0x1302]);
        assert_eq!(
            hello.extensions,
            vec![
                0x0000, 0xff01, 0x000a, 0x0023, 0x0033, 0x002b, 0x000d, 0x002d, 0x001c
            ]
        );
        assert_eq!(hello.signature_algorithms.len(), 15);
        assert_eq!(hello.signature_algorithms[..2], [0x0403, 0x0503]);
        // 3 ciphers, 9 extensions, no ALPN; the hashes are checked in ja4.rs.
        assert!(hello.ja4.starts_with("t13d030900_"), "{}", hello.ja4);
    }

    #[test]
    fn client_hello_across_records_and_segments() {
        let message = hex(RFC8448_CLIENT_HELLO);
        let whole = parse_client_hello(&records(&message, 1 << 14)).unwrap();
        // The same hello split into 50-byte records: every proper prefix is Incomplete.
        let stream = records(&message, 50);
        for cut in 0..stream.len() {
            assert_eq!(
                parse_client_hello(&stream[..cut]).unwrap_err(),
                Error::Incomplete,
                "{cut}"
            );
        }
        assert_eq!(parse_client_hello(&stream).unwrap(), whole);
    }

    #[test]
    fn rejects_other_protocols_early() {
        assert_eq!(
            parse_client_hello(b"G").unwrap_err(),
            Error::Invalid("not a TLS handshake record")
        );
        assert_eq!(
            parse_client_hello(b"\x16\x00").unwrap_err(),
            Error::Invalid("not a TLS record version")
        );
        // An alert after a partial hello: the hello will never complete.
        let mut stream = records(&hex(RFC8448_CLIENT_HELLO)[..100], 1 << 14);
        stream.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert!(matches!(
            parse_client_hello(&stream),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn rfc8448_server_hello() {
        let stream = records(&hex(RFC8448_SERVER_HELLO), 1 << 14);
        let hello = parse_server_hello(&stream).unwrap();
        assert_eq!(
            hello,
            ServerHello {
                version: 0x0304,
                cipher: 0x1301,
                alpn: None
            }
        );
        // TLS 1.3 sends the certificate encrypted.
        assert_eq!(parse_server_certificate(&stream), Ok(None));
    }

    /// A TLS 1.2 ServerHello (RFC 5246 §7.4.1.3) synthesized for these tests: version 0x0303,
    /// zero random, empty session id, cipher 0xc030, null compression, extensions
    /// renegotiation_info (ff01, empty) and ALPN "h2".
    fn tls12_server_hello() -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0xc0, 0x30, 0]);
        let exts = hex("ff01 0001 00  0010 0005 0003 02 6832");
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        message(handshake::SERVER_HELLO, &body)
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn tls12_server_hello_alpn() {
        let hello = parse_server_hello(&records(&tls12_server_hello(), 1 << 14)).unwrap();
        assert_eq!(hello.version, 0x0303);
        assert_eq!(hello.cipher, 0xc030);
        assert_eq!(hello.alpn.as_deref(), Some("h2"));
    }

    #[test]
    fn resumed_tls12_session_has_no_certificate() {
        let mut stream = records(&tls12_server_hello(), 1 << 14);
        assert_eq!(parse_server_certificate(&stream), Err(Error::Incomplete));
        stream.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        assert_eq!(parse_server_certificate(&stream), Ok(None));
    }

    #[test]
    fn empty_certificate_list_is_none() {
        let mut flight = tls12_server_hello();
        flight.extend_from_slice(&message(handshake::CERTIFICATE, &[0, 0, 0]));
        assert_eq!(
            parse_server_certificate(&records(&flight, 1 << 14)),
            Ok(None)
        );
        let mut garbage = tls12_server_hello();
        garbage.extend_from_slice(&message(handshake::CERTIFICATE, &[0, 0, 4, 0, 0, 1, 0x30]));
        assert!(matches!(
            parse_server_certificate(&records(&garbage, 1 << 14)),
            Err(Error::Invalid(_))
        ));
    }

    /// The RFC 8448 ClientHello body re-framed as DTLS 1.2 (RFC 6347 §4.2.1 adds an empty
    /// cookie after the session id; §4.1/§4.2.2 headers), split in two fragments.
    #[test]
    fn dtls_client_hello_in_fragments() {
        let tls = hex(RFC8448_CLIENT_HELLO);
        let body = &tls[4..];
        // legacy_version(2) random(32) session_id len(1)=0, then the empty cookie.
        let mut dtls_body = vec![0xfe, 0xfd];
        dtls_body.extend_from_slice(&body[2..35]);
        dtls_body.push(0);
        dtls_body.extend_from_slice(&body[35..]);
        let total = dtls_body.len();
        let mut datagram = Vec::new();
        for (offset, part) in [(0, &dtls_body[..100]), (100, &dtls_body[100..])] {
            let mut fragment = vec![handshake::CLIENT_HELLO];
            fragment.extend_from_slice(&(total as u32).to_be_bytes()[1..]);
            fragment.extend_from_slice(&[0, 0]);
            fragment.extend_from_slice(&(offset as u32).to_be_bytes()[1..]);
            fragment.extend_from_slice(&(part.len() as u32).to_be_bytes()[1..]);
            fragment.extend_from_slice(part);
            datagram.extend_from_slice(&[22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, offset as u8]);
            datagram.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            datagram.extend_from_slice(&fragment);
        }
        let hello = parse_dtls_client_hello(&datagram).unwrap();
        assert_eq!(hello.legacy_version, 0xfefd);
        assert_eq!(hello.sni.as_deref(), Some("server"));
        // supported_versions says 0x0304, which JA4 reports as "13" even over DTLS.
        assert!(hello.ja4.starts_with("d13d030900_"), "{}", hello.ja4);
        let first_record = 13 + 12 + 100;
        assert_eq!(
            parse_dtls_client_hello(&datagram[..first_record]),
            Err(Error::Incomplete)
        );
        assert!(matches!(
            parse_dtls_client_hello(&records(&tls, 1 << 14)),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn wire_string_caps_on_char_boundary() {
        let long = "é".repeat(200);
        let s = wire_string(long.as_bytes());
        assert_eq!(s.len(), crate::dissect::wire::MAX_STRING);
        assert_eq!(wire_string(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn varint_lengths() {
        // RFC 9000 §A.1 examples.
        for (bytes, value) in [
            (&hex("c2197c5eff14e88c")[..], 151_288_809_941_952_652u64),
            (&hex("9d7f3e7d"), 494_878_333),
            (&hex("7bbd"), 15_293),
            (&hex("25"), 37),
        ] {
            assert_eq!(Reader::new(bytes).varint(), Ok(value));
        }
        assert_eq!(Reader::new(&[0x40]).varint(), Err(Error::Incomplete));
    }

    /// A real TLS 1.2 server flight: frame 6 of suricata-verify's `ja4-sv-handshake`
    /// capture (a CloudShark sample): ServerHello, Certificate (one self-signed RSA
    /// certificate), ServerKeyExchange and ServerHelloDone in four records.
    const TLS12_SERVER_FLIGHT: &str = "
        16030300410200003d03036fc423565fc896271f5edb40813dc85b562a50ec02
        cc85fc24f66579655ad8e200c030000015ff01000100000b0004030001020023
        000000170000160303028f0b00028b00028800028530820281308201ea020900
        91ba747bf28a9ae4300d06092a864886f70d01010b0500308184310b30090603
        550406130255533116301406035504080c0d4e65772048616d70736869726531
        13301106035504070c0a506f7274736d6f75746831133011060355040a0c0a43
        6c6f7564536861726b310c300a06035504030c03746c733125302306092a8648
        86f70d0109011616737570706f727440636c6f7564736861726b2e6f7267301e
        170d3138303732333138343430375a170d3139303732333138343430375a3081
        84310b30090603550406130255533116301406035504080c0d4e65772048616d
        7073686972653113301106035504070c0a506f7274736d6f7574683113301106
        0355040a0c0a436c6f7564536861726b310c300a06035504030c03746c733125
        302306092a864886f70d0109011616737570706f727440636c6f756473686172
        6b2e6f726730819f300d06092a864886f70d010101050003818d003081890281
        8100e7b1cb95fbcc75f071e2ea670dbb55356294cd2df170b7d137b0fd6d84d5
        482bc89be5a44a359f77fa200deaadce6c261c65dc8c616328686c72dae46cf9
        8b7bf00112346c2880def7b3e2d7ad54ab707ab17c0c4d543246c665b1f89447
        6b5aadd6bc204af260252a8aa6f6b59e6fa7ff82c200a8fa22c1f84b30c0fffb
        087f0203010001300d06092a864886f70d01010b050003818100b2bb0e1baf5b
        5c12357182dddc26a7bbcc421d77ee7a09221643653a660ef8114e7c2d4b9d54
        8d40aaacd332a60b5b9b4ae3e1c6be1701f536dc23d6a85dc09bc4f58084103a
        c9f49298d2d162576c2ce2abed02393b5fa2da8ac0e057e56446d5eaad0c291e
        aae615c6db39f6fc6f1cb2aab64425ef5a1ae846e46aa8c0286e16030300ac0c
        0000a803001d20287efb7934ca39e1cf5c404bf2e29276d210d2ce7c0bdac911
        60b6a800780628080400807f4141287ada8a317e3259d9addb4813739f89dc82
        2ab375a4b2b75b4ce7d07a4e51805cb1c75708a7b00718b0e6303880b6c4b46b
        24aca51443327fceb9a2b2609f9b8c5b3189dbf5f9378145683ff6ceb86ea39e
        c1ec3a3216d11b00817d194a28e775974a60552d5e7b3a43f0a0821193a69223
        e5e7ccc98a37a4880e02fc16030300040e000000";

    #[test]
    fn the_memo_reads_a_certificate_as_a_first_reading_does() {
        let flight = hex(TLS12_SERVER_FLIGHT);
        let want = parse_server_certificate(&flight).unwrap();
        assert!(want.is_some());
        let memo = CertMemo::default();
        let read = Flight::read(&flight).unwrap();
        for _ in 0..2 {
            assert_eq!(certificate_in(&read, None, Some(&memo)), Ok(want.clone()));
        }
        assert_eq!(memo.known.borrow().len(), 1);
    }

    /// The probe lends the ServerHello it read: the certificate is looked for as when the
    /// hello is read again (TLS 1.2: found; TLS 1.3: encrypted, none).
    #[test]
    fn a_server_hello_read_once_finds_the_certificate_alike() {
        for flight in [
            hex(TLS12_SERVER_FLIGHT),
            records(&hex(RFC8448_SERVER_HELLO), 1 << 14),
        ] {
            let read = Flight::read(&flight).unwrap();
            let hello = server_hello_in(&read).unwrap();
            assert_eq!(
                certificate_in(&read, Some(&hello), None),
                parse_server_certificate(&flight)
            );
        }
    }

    #[test]
    fn tls12_server_flight_certificate() {
        let flight = hex(TLS12_SERVER_FLIGHT);
        let hello = parse_server_hello(&flight).unwrap();
        assert_eq!((hello.version, hello.cipher), (0x0303, 0xc030));
        let cert = parse_server_certificate(&flight).unwrap().unwrap();
        // The names tshark 4.0 decodes for this certificate.
        let dn = "C=US, ST=New Hampshire, L=Portsmouth, O=CloudShark, CN=tls, \
                  Email=support@cloudshark.org";
        assert_eq!(
            cert,
            Certificate {
                subject: dn.to_string(),
                issuer: dn.to_string(),
                subject_cn: Some("tls".into()),
                subject_org: Some("CloudShark".into()),
                san_dns: vec![],
            }
        );
        // Every prefix short of the Certificate message is Incomplete.
        for cut in [0, 5, 70, 200] {
            assert_eq!(
                parse_server_certificate(&flight[..cut]),
                Err(Error::Incomplete),
                "{cut}"
            );
        }
    }
}
