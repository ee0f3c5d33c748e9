//! DNS message dissector (RFC 1035 §4) and a passive address→name cache, so a flow to an
//! address can be labelled with the name its client resolved just before.

use super::identify::{Identification, Input, Probe, Protocol, Summary, protocol};
use super::tools::{self, NameKind};
use super::wire::{Reader, ascii_string};
use super::{Error, Result};
use crate::app::App;
use crate::flows::json::{Json, Key, Object, key};
use crate::timestamp::Timestamp;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Header (RFC 1035 §4.1.1): ID(2) flags(2) QDCOUNT(2) ANCOUNT(2) NSCOUNT(2) ARCOUNT(2).
mod header {
    pub const LEN: usize = 12;
    pub const QR: u16 = 0x8000;
    pub const RCODE_MASK: u16 = 0x000f;
}

/// RR types we decode (RFC 1035 §3.2.2, RFC 3596 §2.1).
mod rr_type {
    pub const A: u16 = 1;
    pub const CNAME: u16 = 5;
    pub const AAAA: u16 = 28;
}

/// Names are at most 255 octets (RFC 1035 §2.3.4); the text form with escapes may be longer.
const MAX_NAME_TEXT: usize = 1024;
/// Compression pointers followed per name before we call it a loop.
const MAX_POINTERS: usize = 64;
/// Questions or answers a message gets room for before it is read (the first growth of a
/// vector makes room for four as well).
const PREALLOCATED: usize = 4;
/// Label length byte: two top bits 11 = pointer (RFC 1035 §4.1.4), 00 = length.
const POINTER: u8 = 0xc0;

/// A DNS message's header and the question and answer sections (RFC 1035 §4.1).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    pub rcode: u8,
    pub questions: Vec<Question>,
    pub answers: Vec<Answer>,
}

/// RFC 1035 §4.1.2. Names are lower-cased, dot-separated, without the root dot; bytes
/// outside printable ASCII (and dots inside a label) are escaped as `\DDD` (RFC 4343 §2.1).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
}

/// RFC 1035 §4.1.3, the answer section only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Answer {
    pub name: String,
    pub ttl: u32,
    pub data: AnswerData,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AnswerData {
    /// A (RFC 1035 §3.4.1) or AAAA (RFC 3596 §2.2).
    Addr(IpAddr),
    /// CNAME target (RFC 1035 §3.3.1).
    Cname(String),
    /// Any other type, by number.
    Other(u16),
}

/// Whether a message is a response, from its header's QR bit alone (RFC 1035 §4.1.1).
pub fn is_response(bytes: &[u8]) -> bool {
    bytes
        .get(2..4)
        .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & header::QR != 0)
}

/// Parses one DNS message (a UDP payload, or one TCP-framed message).
pub fn parse_message(bytes: &[u8]) -> Result<Message> {
    let mut r = Reader::new(bytes);
    let id = r.u16()?;
    let flags = r.u16()?;
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    r.take(header::LEN - 8)?; // NSCOUNT, ARCOUNT: authority and additional are not read
    // Counts come from the wire: room for a few entries is made up front (growing from
    // empty costs more than the allocation itself), more are pushed as parsed.
    let room = |count: u16| usize::from(count).min(PREALLOCATED);
    let mut message = Message {
        id,
        response: flags & header::QR != 0,
        rcode: (flags & header::RCODE_MASK) as u8,
        questions: Vec::with_capacity(room(qdcount)),
        answers: Vec::with_capacity(room(ancount)),
    };
    let mut first_literal = false;
    for i in 0..qdcount {
        let name = read_name(bytes, &mut r, None)?;
        first_literal |= i == 0 && name.literal;
        let qtype = r.u16()?;
        r.u16()?; // QCLASS
        message.questions.push(Question {
            name: name.text,
            qtype,
        });
    }
    let known = message
        .questions
        .first()
        .filter(|_| first_literal)
        .map(|q| Known {
            offset: header::LEN,
            text: &q.name,
        });
    for _ in 0..ancount {
        let name = read_name(bytes, &mut r, known)?.text;
        let kind = r.u16()?;
        r.u16()?; // CLASS
        let ttl = r.u32()?;
        let rdata = r.vec16()?;
        let data = match (kind, rdata.len()) {
            (rr_type::A, 4) => AnswerData::Addr(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (rr_type::AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(rdata);
                AnswerData::Addr(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            (rr_type::A | rr_type::AAAA, _) => {
                return Err(Error::Invalid("address record of the wrong length"));
            }
            (rr_type::CNAME, _) => {
                // The target may point back into the message, but must end with its RDATA.
                let offset = bytes.len() - r.remaining() - rdata.len();
                let cname = name_at(bytes, offset, known).map_err(|e| match e {
                    Error::Incomplete => Error::Invalid("CNAME target overruns the message"),
                    other => other,
                })?;
                if cname.end != offset + rdata.len() {
                    return Err(Error::Invalid("CNAME target does not fill its RDATA"));
                }
                AnswerData::Cname(cname.text)
            }
            (other, _) => AnswerData::Other(other),
        };
        message.answers.push(Answer { name, ttl, data });
    }
    Ok(message)
}

/// Splits a DNS-over-TCP stream into messages: each has a two-byte length prefix (RFC 1035
/// §4.2.2). Returns the complete messages; `Incomplete` only when there is none yet.
pub fn parse_tcp_stream(stream: &[u8]) -> Result<Vec<Message>> {
    let mut r = Reader::new(stream);
    let mut messages = Vec::new();
    while let Ok(framed) = r.vec16() {
        let message = parse_message(framed).map_err(|e| match e {
            Error::Incomplete => Error::Invalid("DNS message shorter than its sections"),
            other => other,
        })?;
        messages.push(message);
    }
    if messages.is_empty() {
        return Err(Error::Incomplete);
    }
    Ok(messages)
}

/// Reads the name at the cursor of a reader over `message` and advances past it.
fn read_name(message: &[u8], r: &mut Reader<'_>, known: Option<Known<'_>>) -> Result<Name> {
    let start = message.len() - r.remaining();
    let name = name_at(message, start, known)?;
    r.take(name.end - start)?;
    Ok(name)
}

/// A decoded name.
struct Name {
    text: String,
    /// The offset just past the name where it was written.
    end: usize,
    /// Written out in full, without a compression pointer.
    literal: bool,
}

/// A name already decoded from the message, written out in full at `offset`. Answers
/// nearly always name their owner with a pointer to the question's name (RFC 1035
/// §4.1.4): copying its text costs a fraction of decoding it again.
#[derive(Clone, Copy)]
struct Known<'a> {
    offset: usize,
    text: &'a str,
}

/// Each byte as a label's text has it: printable ASCII other than the dot and the
/// backslash as itself, lower-cased; 0 for a byte written as an escape. A table: tested
/// byte by byte as ranges, the bytes of a name cost ~7 instructions each to check.
const LABEL_TEXT: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        if b != b'.' && b != b'\\' {
            table[b as usize] = b.to_ascii_lowercase();
        }
        b += 1;
    }
    table
};

/// Decodes a possibly compressed domain name (RFC 1035 §3.1, §4.1.4) starting at `start`.
/// A pointer must point strictly before itself, and pointer hops are capped, which ends a
/// name that loops through its own labels. A pointer to the `known` name takes its text as
/// decoding the labels there would: that name has no pointer, so the hop count is the same.
fn name_at(message: &[u8], start: usize, known: Option<Known<'_>>) -> Result<Name> {
    // Bytes, all ASCII, made a `String` once at the end: pushed to a `String` as chars,
    // one by one, each behind its own tests, they cost ~25 instructions a byte.
    let mut text = Vec::with_capacity(64);
    let mut pos = start;
    let mut end = None;
    let mut pointers = 0;
    let (end, literal) = loop {
        let len = *message.get(pos).ok_or(Error::Incomplete)?;
        match len & POINTER {
            POINTER => {
                let low = *message.get(pos + 1).ok_or(Error::Incomplete)?;
                let target = usize::from(u16::from_be_bytes([len & !POINTER, low]));
                // The name ends after its first pointer.
                let name_end = *end.get_or_insert(pos + 2);
                if target >= pos || pointers == MAX_POINTERS {
                    return Err(Error::Invalid(
                        "DNS compression pointer does not point back",
                    ));
                }
                pointers += 1;
                pos = target;
                if let Some(known) = known.filter(|k| k.offset == target) {
                    if !text.is_empty() && !known.text.is_empty() {
                        text.push(b'.');
                    }
                    text.extend_from_slice(known.text.as_bytes());
                    if text.len() > MAX_NAME_TEXT {
                        return Err(Error::Invalid("DNS name too long"));
                    }
                    break (name_end, false);
                }
            }
            0 if len == 0 => break (end.unwrap_or(pos + 1), end.is_none()),
            0 => {
                let label = message
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(Error::Incomplete)?;
                if !text.is_empty() {
                    text.push(b'.');
                }
                // Mapped in one run (room made once), then undone for the rare label
                // that needs an escape.
                let at = text.len();
                text.extend(label.iter().map(|&b| LABEL_TEXT[usize::from(b)]));
                if text[at..].contains(&0) {
                    text.truncate(at);
                    for &b in label {
                        match LABEL_TEXT[usize::from(b)] {
                            0 => {
                                text.push(b'\\');
                                text.extend([b / 100, b / 10 % 10, b % 10].map(|d| b'0' + d));
                            }
                            c => text.push(c),
                        }
                    }
                }
                if text.len() > MAX_NAME_TEXT {
                    return Err(Error::Invalid("DNS name too long"));
                }
                pos += 1 + label.len();
            }
            _ => return Err(Error::Invalid("DNS label type reserved")),
        }
    };
    let text = ascii_string(text).ok_or(Error::Invalid("DNS name not ASCII"))?;
    Ok(Name { text, end, literal })
}

/// How long an answer labels an address: its TTL (the smallest along a CNAME chain),
/// clamped. The floor keeps TTL-0 answers useful for the connection the client opens right
/// after resolving; the ceiling bounds stale labels after an address moves.
const MIN_TTL: Duration = Duration::from_secs(30);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// CNAME hops followed back from an address record.
const MAX_CHAIN: usize = 16;

/// What the cache knows about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// The name the client asked for: the question, at the head of any CNAME chain.
    pub name: String,
    /// The CNAME targets from `name` down to the address record's owner, in order
    /// (empty without a chain).
    pub cnames: Vec<String>,
    pub expires: Timestamp,
    /// The remote-access tool `name` points at ([`tools::match_name`] as a DNS name),
    /// matched once here: every flow to the address asks at each identification pass, and
    /// reading the name there was a visit to memory long out of the cache.
    pub tool: Option<tools::Match>,
}

/// A bounded address→name cache fed by DNS responses seen on the wire, with packet time
/// for its clock. When full it evicts the entry that expires first (ties by address), so
/// its contents depend only on its input.
#[derive(Debug)]
pub struct NameCache {
    capacity: usize,
    /// Looked up for every new flow: hashed with aHash (the order of entries never shows).
    /// Keyed by a wrapper hashed as one integer instead (`IpAddr`'s hash takes three steps),
    /// lookups cost 0.05 M instructions less over the office mix, 0.01 %: not kept.
    entries: HashMap<IpAddr, CacheEntry, ahash::RandomState>,
    /// (expiry, address) of every entry, in eviction order.
    by_expiry: BTreeSet<(Timestamp, IpAddr)>,
    evictions: u64,
    /// The last response read, as its bytes and the message they parsed to: the DNS flow
    /// it answers is dissected right after, and takes it rather than parsing it again.
    last: (Vec<u8>, Option<Message>),
}

impl NameCache {
    pub fn new(capacity: usize) -> NameCache {
        NameCache {
            capacity,
            entries: HashMap::default(),
            by_expiry: BTreeSet::new(),
            evictions: 0,
            last: (Vec::new(), None),
        }
    }

    /// Reads a datagram that may be a DNS response and records its answers.
    pub fn insert_answer(&mut self, now: Timestamp, datagram: &[u8]) {
        if is_response(datagram)
            && let Ok(msg) = parse_message(datagram)
        {
            self.insert(now, &msg);
            let (bytes, parsed) = &mut self.last;
            bytes.clear();
            bytes.extend_from_slice(datagram);
            *parsed = Some(msg);
        }
    }

    /// `datagram` as [`parse_message`] reads it, when it is the last response read.
    pub fn parsed(&self, datagram: &[u8]) -> Option<&Message> {
        let (bytes, parsed) = &self.last;
        parsed.as_ref().filter(|_| bytes.as_slice() == datagram)
    }

    /// Records the A/AAAA answers of a successful response, each under the queried name.
    pub fn insert(&mut self, now: Timestamp, msg: &Message) {
        const NO_ERROR: u8 = 0;
        if !msg.response || msg.rcode != NO_ERROR || self.capacity == 0 {
            return;
        }
        // CNAME target → (owner, ttl), to walk chains back in constant time per hop. Built
        // at the first answer not owned by a question: most responses have no chain.
        let mut links: Option<HashMap<&str, (&str, u32)>> = None;
        for answer in &msg.answers {
            let AnswerData::Addr(addr) = answer.data else {
                continue;
            };
            let mut name = answer.name.as_str();
            let mut ttl = answer.ttl;
            let mut cnames = Vec::new();
            for _ in 0..MAX_CHAIN {
                if msg.questions.iter().any(|q| q.name == name) {
                    break;
                }
                let links = links.get_or_insert_with(|| {
                    msg.answers
                        .iter()
                        .filter_map(|a| match &a.data {
                            AnswerData::Cname(target) => {
                                Some((target.as_str(), (a.name.as_str(), a.ttl)))
                            }
                            _ => None,
                        })
                        .collect()
                });
                let Some(&(owner, link_ttl)) = links.get(name) else {
                    break;
                };
                cnames.push(name.to_string());
                name = owner;
                ttl = ttl.min(link_ttl);
            }
            cnames.reverse();
            let ttl = Duration::from_secs(u64::from(ttl)).clamp(MIN_TTL, MAX_TTL);
            self.put(now, addr, name, cnames, now.plus(ttl));
        }
    }

    /// Records that `addr` is `name` (reached through `cnames`) until `expires`.
    fn put(
        &mut self,
        now: Timestamp,
        addr: IpAddr,
        name: &str,
        cnames: Vec<String>,
        expires: Timestamp,
    ) {
        // An address answered again (the usual case) has its entry updated where it is,
        // found by one hash: under the same name it keeps the name's text and the tool
        // matched the first time, and it does not count against the capacity.
        if let Some(e) = self.entries.get_mut(&addr) {
            if e.expires != expires {
                self.by_expiry.remove(&(e.expires, addr));
                self.by_expiry.insert((expires, addr));
                e.expires = expires;
            }
            if e.name != name {
                e.name.clear();
                e.name.push_str(name);
                e.tool = tools::match_name(NameKind::DnsName, name);
            }
            e.cnames = cnames;
            // Its expiry is later than now: it stays while expired entries go.
            self.drop_expired(now);
            return;
        }
        self.drop_expired(now);
        if self.entries.len() >= self.capacity
            && let Some((_, old)) = self.by_expiry.pop_first()
        {
            self.entries.remove(&old);
            self.evictions += 1;
        }
        let entry = CacheEntry {
            tool: tools::match_name(NameKind::DnsName, name),
            name: name.to_string(),
            cnames,
            expires,
        };
        self.by_expiry.insert((expires, addr));
        self.entries.insert(addr, entry);
    }

    /// Drops the entries expired by `now`: housekeeping, not eviction.
    fn drop_expired(&mut self, now: Timestamp) {
        while let Some(&(expires, old)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&old);
        }
    }

    /// The name a client resolved to reach `addr`, while the answer is still valid.
    pub fn lookup(&self, now: Timestamp, addr: IpAddr) -> Option<&str> {
        self.lookup_entry(now, addr).map(|e| e.name.as_str())
    }

    /// The whole entry for `addr`, CNAME chain included, while still valid.
    pub fn lookup_entry(&self, now: Timestamp, addr: IpAddr) -> Option<&CacheEntry> {
        self.entries.get(&addr).filter(|e| e.expires > now)
    }

    /// Valid entries dropped because the cache was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a flow record says of a DNS exchange: the first question and the answers to it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DnsDetails {
    pub query: Option<String>,
    pub qtype: Option<u16>,
    pub rcode: Option<u8>,
    pub answers: Vec<DnsAnswer>,
}

/// An address or CNAME answer, written as its text either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DnsAnswer {
    Addr(IpAddr),
    Name(String),
}

impl DnsDetails {
    /// The query's first question is taken by value: its name moves into the details. The
    /// response is borrowed, from the name cache when it read it.
    fn of(question: Option<Question>, r: Option<&Message>) -> DnsDetails {
        DnsDetails {
            qtype: question.as_ref().map(|q| q.qtype),
            query: question.map(|q| q.name),
            rcode: r.map(|m| m.rcode),
            answers: r
                .map(|m| {
                    m.answers
                        .iter()
                        .filter_map(|a| match &a.data {
                            AnswerData::Addr(ip) => Some(DnsAnswer::Addr(*ip)),
                            AnswerData::Cname(n) => Some(DnsAnswer::Name(n.clone())),
                            AnswerData::Other(_) => None,
                        })
                        .take(16)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The first question of the query, as [`of`](Self::of) took it.
    fn question(&self) -> Option<Question> {
        let (name, qtype) = self.query.clone().zip(self.qtype)?;
        Some(Question { name, qtype })
    }
}

/// The first question of a message.
fn first_question(m: Message) -> Option<Question> {
    m.questions.into_iter().next()
}

/// Written field by field, not through serde_json: DNS is on one flow in two.
impl Summary for DnsDetails {
    fn write_json(&self, o: &mut Object<'_>, key: Key) -> serde_json::Result<()> {
        o.object(key, |o| {
            o.field(key!(query), &self.query)?;
            o.field(key!(qtype), &self.qtype)?;
            o.field(key!(rcode), &self.rcode)?;
            o.field(key!(answers), &self.answers)
        })
    }
}

impl Json for DnsAnswer {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            DnsAnswer::Addr(ip) => ip.write_json(out),
            DnsAnswer::Name(name) => name.write_json(out),
        }
    }
}

/// DNS over TCP (port 53): length-prefixed queries, settled with the response.
pub fn tcp_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    if !input.on_port(&[53]) {
        return Probe::No;
    }
    let Some(query) = parse_tcp_stream(input.client)
        .ok()
        .and_then(|m| m.into_iter().next())
    else {
        return Probe::No;
    };
    id.app = Some(App::Dns);
    let resp = parse_tcp_stream(input.server).ok();
    let answer = resp.as_ref().and_then(|r| r.first());
    id.details.other = protocol(Protocol::Dns, DnsDetails::of(first_question(query), answer));
    Probe::done_if(answer.is_some() || input.server_closed)
}

/// DNS, mDNS, LLMNR and NetBIOS name service over UDP: settled with the answer, so the
/// record carries it. The answer comes parsed when the name cache read it just before, the
/// query when an earlier pass read it.
pub fn udp_probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    if !input.on_port(&[53, 137, 5353, 5355]) {
        return Probe::No;
    }
    // A pass leaves details for a next one only when it awaits the answer: the query it
    // read was the first client datagram, which stays the first, and is not read again.
    let question = match input.dns {
        Some(earlier) => earlier.question(),
        None => match parse_message(input.first_datagram()) {
            Ok(query) => first_question(query),
            Err(_) => return Probe::No,
        },
    };
    debug_assert!(input.dns.is_none_or(|_| {
        parse_message(input.first_datagram()).map(first_question) == Ok(question.clone())
    }));
    id.app = Some(App::Dns);
    let answer = input
        .server_datagrams
        .first()
        .and_then(|d| match input.dns_answer {
            Some(parsed) => Some(Cow::Borrowed(parsed)),
            None => parse_message(d).ok().map(Cow::Owned),
        });
    id.details.other = protocol(Protocol::Dns, DnsDetails::of(question, answer.as_deref()));
    Probe::done_if(answer.is_some())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dissect::tls::tests::hex;

    /// A response synthesized per RFC 1035 §4.1 with §4.1.4 compression: question
    /// www.example.com A; answers www.example.com CNAME cdn.example.com (TTL 300, target
    /// "cdn" + pointer to offset 16) and cdn.example.com (pointer to offset 45) A
    /// 93.184.216.34 (TTL 60).
    pub(crate) const RESPONSE: &str = "
        1234 8180 0001 0002 0000 0000
        03777777 076578616d706c65 03636f6d 00 0001 0001
        c00c 0005 0001 0000012c 0006 0363646e c010
        c02d 0001 0001 0000003c 0004 5db8d822";

    #[test]
    fn response_with_compressed_cname_chain() {
        let msg = parse_message(&hex(RESPONSE)).unwrap();
        assert_eq!(msg.id, 0x1234);
        assert!(msg.response);
        assert_eq!(msg.rcode, 0);
        assert_eq!(
            msg.questions,
            vec![Question {
                name: "www.example.com".into(),
                qtype: 1
            }]
        );
        assert_eq!(
            msg.answers,
            vec![
                Answer {
                    name: "www.example.com".into(),
                    ttl: 300,
                    data: AnswerData::Cname("cdn.example.com".into())
                },
                Answer {
                    name: "cdn.example.com".into(),
                    ttl: 60,
                    data: AnswerData::Addr("93.184.216.34".parse().unwrap())
                },
            ]
        );
    }

    #[test]
    fn the_header_says_response_or_query() {
        let mut bytes = hex(RESPONSE);
        assert!(is_response(&bytes));
        bytes[2] &= 0x7f;
        assert!(!is_response(&bytes));
        assert!(!is_response(&bytes[..3]));
    }

    #[test]
    fn truncated_and_malformed() {
        let bytes = hex(RESPONSE);
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_message(&bytes[..cut]),
                Err(Error::Incomplete),
                "{cut}"
            );
        }
        // A name that points at itself, and one that points forward.
        let looped = hex("0000 0000 0001 0000 0000 0000 c00c 0001 0001");
        assert!(matches!(parse_message(&looped), Err(Error::Invalid(_))));
        let forward = hex("0000 0000 0001 0000 0000 0000 c00e 00 0001 0001");
        assert!(matches!(parse_message(&forward), Err(Error::Invalid(_))));
        // An A record with five bytes of RDATA.
        let mut bad_a = bytes.clone();
        let a_len = bad_a.len() - 6;
        bad_a[a_len + 1] = 5;
        bad_a.push(0);
        assert!(matches!(parse_message(&bad_a), Err(Error::Invalid(_))));
    }

    #[test]
    fn names_escape_odd_bytes() {
        let msg = hex("0000 0000 0001 0000 0000 0000 03 412e20 02 c3a9 00 0001 0001");
        let name = &parse_message(&msg).unwrap().questions[0].name;
        assert_eq!(name, "a\\046\\032.\\195\\169");
        // Plain labels are lower-cased too (RFC 4343 §2: names compare case-insensitively).
        let msg = hex("0000 0000 0001 0000 0000 0000 03 577757 07 4578616d706c65 00 0001 0001");
        let name = &parse_message(&msg).unwrap().questions[0].name;
        assert_eq!(name, "www.example");
    }

    /// A message of `questions` (each name as wire bytes, type A) and `answers` (owner
    /// name as wire bytes, then an A record), header counts to match.
    fn message(questions: &[&[u8]], answers: &[&[u8]]) -> Vec<u8> {
        let mut m = hex("1234 8180");
        m.extend_from_slice(&(questions.len() as u16).to_be_bytes());
        m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        for q in questions {
            m.extend_from_slice(q);
            m.extend_from_slice(&hex("0001 0001"));
        }
        for a in answers {
            m.extend_from_slice(a);
            m.extend_from_slice(&hex("0001 0001 0000003c 0004 c0000250"));
        }
        m
    }

    fn answer_names(bytes: &[u8]) -> Result<Vec<String>> {
        Ok(parse_message(bytes)?
            .answers
            .into_iter()
            .map(|a| a.name)
            .collect())
    }

    /// An answer that points at the question's name takes its text without decoding it
    /// again: the same text as the name written out in full, the same errors.
    #[test]
    fn pointers_to_the_question_read_as_the_name_written_out() {
        let question = hex("03 575757 07 4578616d706c65 03 434f4d 00"); // WWW.Example.COM
        for (pointed, written) in [
            (hex("c00c"), question.clone()),
            // A label, then the question's labels.
            (
                hex("03 636466 c00c"),
                hex("03 636466 03 777777 07 6578616d706c65 03 636f6d 00"),
            ),
        ] {
            let pointed = answer_names(&message(&[&question], &[&pointed]));
            let written = answer_names(&message(&[&question], &[&written]));
            assert_eq!(pointed, written);
        }
        assert_eq!(
            answer_names(&message(&[&question], &[&hex("03 636466 c00c")])).unwrap(),
            ["cdf.www.example.com"]
        );
        // The root name: a pointer to it adds no dot.
        let root = hex("00");
        assert_eq!(
            answer_names(&message(&[&root], &[&hex("c00c"), &hex("01 61 c00c")])).unwrap(),
            ["", "a"]
        );
        // Escapes come along as they are.
        let odd = hex("03 412e20 00");
        assert_eq!(
            answer_names(&message(&[&odd], &[&hex("c00c")])).unwrap(),
            ["a\\046\\032"]
        );
        // The length limit holds for the copied text: the question is 4 × 252 + 3 = 1011
        // characters; 13 more and a dot are too many, 12 are not.
        let mut long = Vec::new();
        for _ in 0..4 {
            long.push(63);
            long.extend_from_slice(&[0; 63]);
        }
        long.push(0);
        let with_label = |n: usize| {
            let mut owner = vec![n as u8];
            owner.extend(std::iter::repeat_n(b'a', n));
            owner.extend_from_slice(&hex("c00c"));
            message(&[&long], &[&owner])
        };
        assert_eq!(answer_names(&with_label(12)).unwrap()[0].len(), 1024);
        assert_eq!(
            answer_names(&with_label(13)),
            Err(Error::Invalid("DNS name too long"))
        );
    }

    /// A question whose own name is compressed is decoded again through the pointer, hops
    /// and all: here "a" and a pointer to the header, whose first bytes read as "b".
    #[test]
    fn pointers_to_a_compressed_question_are_followed() {
        let mut m = message(&[&hex("01 61 c000")], &[&hex("c00c")]);
        m[..3].copy_from_slice(&hex("01 62 00")); // ID 0x0162, then the flags' first byte
        let msg = parse_message(&m).unwrap();
        assert_eq!(msg.questions[0].name, "a.b");
        assert_eq!(msg.answers[0].name, "a.b");
    }

    /// Pointers may only point back, yet a name can loop through its own labels: the hop
    /// cap ends it. A chain of exactly `MAX_POINTERS` hops is still read.
    #[test]
    fn pointer_hops_are_capped() {
        let looped = message(&[&hex("01 61 c00c")], &[]);
        assert_eq!(
            parse_message(&looped),
            Err(Error::Invalid(
                "DNS compression pointer does not point back"
            ))
        );
        // Question 0 is the root name at offset 12 (5 bytes with its type and class); question
        // k points at question k - 1 (6 bytes each from offset 17), k hops in all.
        let chain = |hops: usize| {
            let mut names = vec![vec![0u8]];
            for k in 1..=hops {
                let target = if k == 1 { 12 } else { 17 + 6 * (k as u16 - 2) };
                names.push((0xc000 | target).to_be_bytes().to_vec());
            }
            let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
            message(&names, &[])
        };
        let read = parse_message(&chain(MAX_POINTERS)).unwrap();
        assert!(read.questions.iter().all(|q| q.name.is_empty()));
        assert!(matches!(
            parse_message(&chain(MAX_POINTERS + 1)),
            Err(Error::Invalid(_))
        ));
    }

    /// Escaped text over `MAX_NAME_TEXT` is refused, whatever the label count.
    #[test]
    fn over_long_names_are_refused() {
        let mut name = Vec::new();
        for _ in 0..5 {
            name.push(63);
            name.extend_from_slice(&[0xff; 63]);
        }
        name.push(0);
        assert_eq!(
            parse_message(&message(&[&name], &[])),
            Err(Error::Invalid("DNS name too long"))
        );
    }

    #[test]
    fn tcp_stream_framing() {
        let msg = hex(RESPONSE);
        let mut stream = (msg.len() as u16).to_be_bytes().to_vec();
        stream.extend_from_slice(&msg);
        stream.extend_from_slice(&stream.clone());
        assert_eq!(parse_tcp_stream(&stream).unwrap().len(), 2);
        assert_eq!(
            parse_tcp_stream(&stream[..stream.len() - 1]).unwrap().len(),
            1
        );
        assert_eq!(parse_tcp_stream(&stream[..10]), Err(Error::Incomplete));
        assert!(matches!(
            parse_tcp_stream(&[0, 3, 0, 0, 0]),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn cache_maps_address_to_queried_name() {
        let msg = parse_message(&hex(RESPONSE)).unwrap();
        let addr: IpAddr = "93.184.216.34".parse().unwrap();
        let t0 = Timestamp::from_secs(1_000);
        let mut cache = NameCache::new(4);
        cache.insert(t0, &msg);
        assert_eq!(cache.lookup(t0, addr), Some("www.example.com"));
        assert_eq!(
            cache.lookup_entry(t0, addr).unwrap().cnames,
            vec!["cdn.example.com"]
        );
        // The chain's smallest TTL (60 s) bounds the entry.
        assert_eq!(
            cache.lookup(Timestamp::from_secs(1_059), addr),
            Some("www.example.com")
        );
        assert_eq!(cache.lookup(Timestamp::from_secs(1_060), addr), None);
        // Queries and failed responses teach nothing.
        let mut query = msg.clone();
        query.response = false;
        let mut empty = NameCache::new(4);
        empty.insert(t0, &query);
        assert!(empty.is_empty());
    }

    /// A query with the question of [`RESPONSE`]: QR clear, no answers.
    fn query() -> Vec<u8> {
        [
            &hex("1234 0100 0001 0000 0000 0000")[..],
            &hex(RESPONSE)[12..33],
        ]
        .concat()
    }

    /// A DNS flow's input on port 53 with these datagrams.
    fn udp_input<'a>(client: &'a [Vec<u8>], server: &'a [Vec<u8>]) -> Input<'a> {
        Input {
            proto: crate::decode::Proto::Udp,
            orig_port: 40000,
            resp_port: 53,
            client: b"",
            server: b"",
            client_closed: false,
            server_closed: false,
            client_datagrams: client,
            server_datagrams: server,
            dns_tool: None,
            midstream: false,
            tls: std::cell::Cell::new(None),
            http: std::cell::Cell::new(None),
            ja4: None,
            certs: None,
            dns_answer: None,
            dns: None,
        }
    }

    /// The response the name cache read last is lent parsed, for its own bytes only, and
    /// the DNS flow's details are the same whether it takes it or parses the datagram.
    #[test]
    fn the_last_response_read_is_lent_parsed() {
        let (query, response) = (query(), hex(RESPONSE));
        let t0 = Timestamp::from_secs(1_000);
        let mut cache = NameCache::new(4);
        assert_eq!(cache.parsed(&response), None);
        cache.insert_answer(t0, &query);
        assert_eq!(cache.parsed(&query), None);
        cache.insert_answer(t0, &response);
        assert_eq!(
            cache.parsed(&response),
            parse_message(&response).ok().as_ref()
        );
        let mut other = response.clone();
        other[1] ^= 1;
        assert_eq!(cache.parsed(&other), None);

        let (client, server) = ([query], [response.clone()]);
        let input = udp_input(&client, &server);
        let (mut own, mut lent) = (Identification::default(), Identification::default());
        let own_probe = udp_probe(&input, &mut own);
        let lent_input = Input {
            dns_answer: cache.parsed(&response),
            ..input
        };
        assert_eq!(udp_probe(&lent_input, &mut lent), own_probe);
        assert_eq!(own_probe, Probe::Done);
        let details = format!("{:?}", own.details.other);
        assert!(details.contains("93.184.216.34"), "{details}");
        assert_eq!(format!("{:?}", lent.details.other), details);
    }

    /// The query an earlier pass read (it awaited the answer) is taken from its details
    /// when the answer arrives: the details are those of reading both datagrams again.
    #[test]
    fn the_query_an_earlier_pass_read_is_not_read_again() {
        let (client, server) = ([query()], [hex(RESPONSE)]);
        let mut waiting = Identification::default();
        assert_eq!(
            udp_probe(&udp_input(&client, &[]), &mut waiting),
            Probe::More
        );
        let earlier = waiting.details.dns();
        assert_eq!(
            earlier.and_then(|d| d.query.as_deref()),
            Some("www.example.com")
        );
        let (mut again, mut taken) = (Identification::default(), Identification::default());
        assert_eq!(
            udp_probe(&udp_input(&client, &server), &mut again),
            Probe::Done
        );
        let answered = Input {
            dns: earlier,
            ..udp_input(&client, &server)
        };
        assert_eq!(udp_probe(&answered, &mut taken), Probe::Done);
        let details = format!("{:?}", again.details.other);
        assert!(details.contains("93.184.216.34"), "{details}");
        assert_eq!(format!("{:?}", taken.details.other), details);
    }

    fn answer(name: &str, addr: &str, ttl: u32) -> Message {
        Message {
            id: 0,
            response: true,
            rcode: 0,
            questions: vec![Question {
                name: name.into(),
                qtype: 1,
            }],
            answers: vec![Answer {
                name: name.into(),
                ttl,
                data: AnswerData::Addr(addr.parse().unwrap()),
            }],
        }
    }

    /// An address answered again replaces its entry: it takes no room of its own, so a
    /// full cache evicts nothing for it.
    #[test]
    fn cache_replaces_an_address_answered_again() {
        let t0 = Timestamp::from_secs(1_000);
        let mut cache = NameCache::new(2);
        cache.insert(t0, &answer("one.example", "10.0.0.1", 600));
        cache.insert(t0, &answer("two.example", "10.0.0.2", 300));
        let later = Timestamp::from_secs(1_100);
        cache.insert(later, &answer("again.example", "10.0.0.2", 900));
        assert_eq!(cache.evictions(), 0);
        assert_eq!(cache.len(), 2);
        let again = "10.0.0.2".parse().unwrap();
        assert_eq!(cache.lookup(later, again), Some("again.example"));
        assert_eq!(
            cache.lookup_entry(later, again).unwrap().expires,
            Timestamp::from_secs(2_000)
        );
        // The old expiry is gone from the eviction order: a new address evicts 10.0.0.1,
        // which now expires first.
        cache.insert(later, &answer("three.example", "10.0.0.3", 60));
        assert_eq!(cache.evictions(), 1);
        assert_eq!(cache.lookup(later, "10.0.0.1".parse().unwrap()), None);
        assert_eq!(cache.lookup(later, again), Some("again.example"));
    }

    #[test]
    fn cache_evicts_the_entry_expiring_first() {
        let t0 = Timestamp::from_secs(1_000);
        let mut cache = NameCache::new(2);
        cache.insert(t0, &answer("long.example", "10.0.0.1", 3600));
        cache.insert(t0, &answer("short.example", "10.0.0.2", 120));
        cache.insert(t0, &answer("new.example", "10.0.0.3", 600));
        assert_eq!(cache.evictions(), 1);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup(t0, "10.0.0.2".parse().unwrap()), None);
        assert_eq!(
            cache.lookup(t0, "10.0.0.1".parse().unwrap()),
            Some("long.example")
        );
        // Expired entries make room without counting as evictions; TTL 0 still lasts 30 s.
        let later = Timestamp::from_secs(1_000 + 601);
        cache.insert(later, &answer("zero.example", "10.0.0.4", 0));
        assert_eq!(cache.evictions(), 1);
        assert_eq!(
            cache.lookup(later, "10.0.0.4".parse().unwrap()),
            Some("zero.example")
        );
        // A ttl far above a day is clamped.
        cache.insert(later, &answer("far.example", "10.0.0.5", u32::MAX));
        let entry = cache
            .lookup_entry(later, "10.0.0.5".parse().unwrap())
            .unwrap();
        assert_eq!(entry.expires, later.plus(MAX_TTL));
    }
}
