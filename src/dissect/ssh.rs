//! SSH: the identification banner and the first KEXINIT of each side, enough to name the
//! software and compute its HASSH fingerprint before the channel turns encrypted.

use super::identify::{Identification, Input, Probe, Protocol, Summary};
use super::{Error, Result};
use crate::app::App;
use serde::Serialize;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// RFC 4253 §4.2: a banner line is at most 255 bytes including CR LF.
const MAX_LINE: usize = 255;
/// How much pre-banner text a server may send before we stop calling it SSH (RFC 4253 §4.2
/// allows "other lines"; OpenSSH gives up after 1024 of them, we after 8 KiB).
const MAX_PRE_BANNER: usize = 8192;
/// RFC 4253 §6.1: implementations must handle packets of 35000 bytes; KEXINIT is far smaller.
const MAX_PACKET: usize = 35000;
/// SSH_MSG_KEXINIT, RFC 4253 §12.
const MSG_KEXINIT: u8 = 20;
/// A name-list is kept up to this many bytes (real lists are a few hundred).
const MAX_NAME_LIST: usize = 4096;

/// The identification string, RFC 4253 §4.2: `SSH-protoversion-softwareversion SP comments`.
#[derive(Clone, Debug, Serialize)]
pub struct Banner {
    /// The whole line without CR LF.
    pub raw: String,
    /// "2.0", or "1.99" for a server that also speaks SSH-1.
    pub proto: String,
    pub software: String,
    pub comments: Option<String>,
    /// Bytes consumed from the start of the stream, pre-banner lines and CR LF included.
    pub len: usize,
    /// Bytes of other lines before the banner.
    pub skipped: usize,
}

/// Parses the banner at the start of one direction's stream, skipping the other lines a
/// server may send first. Only servers may do that (RFC 4253 §4.2): for a client stream the
/// caller should require `skipped == 0`. On a text stream without a banner this returns
/// Incomplete until 8 KiB have been seen.
pub fn parse_banner(stream: &[u8]) -> Result<Banner> {
    let line = banner_line(stream)?;
    let Fields {
        proto,
        software,
        comments,
    } = banner_fields(line.text)?;
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(Banner {
        raw: lossy(line.text),
        proto: lossy(proto),
        software: lossy(software),
        comments: comments.map(lossy),
        len: line.len,
        skipped: line.skipped,
    })
}

/// The banner line of a stream as it lies there, not yet checked ([`banner_fields`]).
struct Line<'a> {
    /// From `SSH-`, without CR LF.
    text: &'a [u8],
    /// Bytes consumed from the start of the stream, pre-banner lines and CR LF included.
    len: usize,
    /// Bytes of other lines before the banner.
    skipped: usize,
}

/// Finds the banner line: [`parse_banner`] without building its strings (the probe runs
/// again each time a flow's stream grows, until both KEXINITs are in).
fn banner_line(stream: &[u8]) -> Result<Line<'_>> {
    let mut start = 0;
    loop {
        let rest = stream.get(start..).unwrap_or_default();
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // No full line yet: a prefix of "SSH-" or of a pre-banner line.
            let head = &rest[..rest.len().min(4)];
            return if rest.len() > MAX_LINE && rest.starts_with(b"SSH-") {
                Err(Error::Invalid("ssh banner too long"))
            } else if start + rest.len() > MAX_PRE_BANNER {
                Err(Error::Invalid("ssh banner not found"))
            } else if start == 0 && !b"SSH-".starts_with(head) && rest.contains(&0) {
                Err(Error::Invalid("not ssh"))
            } else {
                Err(Error::Incomplete)
            };
        };
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let len = start + nl + 1;
        if line.starts_with(b"SSH-") {
            if nl + 1 > MAX_LINE {
                return Err(Error::Invalid("ssh banner too long"));
            }
            return Ok(Line {
                text: line,
                len,
                skipped: start,
            });
        }
        if line.contains(&0) {
            return Err(Error::Invalid("not ssh"));
        }
        start = len;
        if start > MAX_PRE_BANNER {
            return Err(Error::Invalid("ssh banner not found"));
        }
    }
}

/// The parts of a banner line ([`Banner`] has them as text).
struct Fields<'a> {
    proto: &'a [u8],
    software: &'a [u8],
    comments: Option<&'a [u8]>,
}

/// A banner line's protocol version, software version and comments, checked. Split at
/// ASCII bytes, so each part reads as the same part of the whole line read as text.
fn banner_fields(line: &[u8]) -> Result<Fields<'_>> {
    let body = line.get(4..).ok_or(Error::Invalid("ssh banner"))?;
    let dash = body
        .iter()
        .position(|&b| b == b'-')
        .ok_or(Error::Invalid("ssh banner without software"))?;
    let (proto, rest) = (&body[..dash], &body[dash + 1..]);
    if proto.is_empty() || !proto.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return Err(Error::Invalid("ssh protocol version"));
    }
    let (software, comments) = match rest.iter().position(|&b| b == b' ') {
        Some(sp) => (&rest[..sp], Some(&rest[sp + 1..])),
        None => (rest, None),
    };
    Ok(Fields {
        proto,
        software,
        comments,
    })
}

/// The algorithm lists of SSH_MSG_KEXINIT, RFC 4253 §7.1 (languages are not kept).
#[derive(Clone, Debug, Default, Serialize)]
pub struct KexInit {
    pub kex: Vec<String>,
    pub host_key: Vec<String>,
    pub enc_c2s: Vec<String>,
    pub enc_s2c: Vec<String>,
    pub mac_c2s: Vec<String>,
    pub mac_s2c: Vec<String>,
    pub comp_c2s: Vec<String>,
    pub comp_s2c: Vec<String>,
}

/// RFC 4253 §6 binary packet: `uint32 packet_length, byte padding_length, payload, padding`.
mod packet {
    pub const LENGTH: std::ops::Range<usize> = 0..4;
    pub const PADDING: usize = 4;
    pub const PAYLOAD: usize = 5;
}
/// RFC 4253 §7.1: message number, then a 16-byte cookie, then the name-lists.
const KEXINIT_LISTS: usize = 17;

/// Parses the first binary packet after the banner, which must be KEXINIT (RFC 4253 §7.1).
pub fn parse_kexinit(after_banner: &[u8]) -> Result<KexInit> {
    let lists = kexinit_lists(after_banner)?;
    let list = |i: usize| names(&text(lists[i])).map(str::to_owned).collect();
    Ok(KexInit {
        kex: list(0),
        host_key: list(1),
        enc_c2s: list(2),
        enc_s2c: list(3),
        mac_c2s: list(4),
        mac_s2c: list(5),
        comp_c2s: list(6),
        comp_s2c: list(7),
    })
}

/// The eight algorithm name-lists of the KEXINIT after the banner, as they lie in the
/// packet, each cut at [`MAX_NAME_LIST`] bytes.
fn kexinit_lists(after_banner: &[u8]) -> Result<[&[u8]; 8]> {
    let len = be32(after_banner, packet::LENGTH.start).ok_or(Error::Incomplete)? as usize;
    if !(12..=MAX_PACKET).contains(&len) {
        return Err(Error::Invalid("ssh packet length"));
    }
    let padding = *after_banner.get(packet::PADDING).ok_or(Error::Incomplete)? as usize;
    if padding < 4 || padding + 1 >= len {
        return Err(Error::Invalid("ssh padding length"));
    }
    if after_banner
        .get(packet::PAYLOAD)
        .is_some_and(|&m| m != MSG_KEXINIT)
    {
        return Err(Error::Invalid("ssh first packet is not kexinit"));
    }
    let end = packet::LENGTH.end + len;
    let whole = after_banner.get(..end).ok_or(Error::Incomplete)?;
    let payload = whole
        .get(packet::PAYLOAD..end - padding)
        .ok_or(Error::Invalid("ssh padding length"))?;
    let mut lists: [&[u8]; 8] = [&[]; 8];
    let mut at = KEXINIT_LISTS;
    for list in &mut lists {
        let n = be32(payload, at).ok_or(Error::Invalid("ssh kexinit truncated"))? as usize;
        let whole = payload
            .get(at + 4..(at + 4).saturating_add(n))
            .ok_or(Error::Invalid("ssh name-list length"))?;
        at += 4 + n;
        *list = &whole[..whole.len().min(MAX_NAME_LIST)];
    }
    Ok(lists)
}

/// A name-list as text, bytes that are not UTF-8 replaced.
fn text(list: &[u8]) -> Cow<'_, str> {
    // Lists are ASCII: the lossy conversion would read them a character at a time.
    match std::str::from_utf8(list) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(list),
    }
}

/// The names of a name-list, empty ones left out.
fn names(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').filter(|s| !s.is_empty())
}

/// Salesforce HASSH: the algorithm string (client `kex;enc_c2s;mac_c2s;comp_c2s`, server
/// `kex;enc_s2c;mac_s2c;comp_s2c`) and its MD5 in lowercase hex.
pub fn hassh(k: &KexInit, client: bool) -> (String, String) {
    let (enc, mac, comp) = if client {
        (&k.enc_c2s, &k.mac_c2s, &k.comp_c2s)
    } else {
        (&k.enc_s2c, &k.mac_s2c, &k.comp_s2c)
    };
    let s = [&k.kex, enc, mac, comp].map(|l| l.join(",")).join(";");
    let hex = md5_hex(&s);
    (s, hex)
}

/// HASSH values a thread remembers, and the longest lists (all four, as a key) it
/// remembers one for: a few MiB at most, however crafted the lists (real ones are a few
/// hundred bytes each). Past either a list is hashed every time.
const HASSH_MEMO_ENTRIES: usize = 1024;
const HASSH_MEMO_KEY: usize = 4096;

thread_local! {
    /// HASSH by the name-lists it hashes, per thread (a flow worker is one). A fleet's SSH
    /// software sends a handful of distinct lists, each probe of a flow hashed them again
    /// until both sides' KEXINIT were in, and the MD5 was most of dissecting SSH. Bounded
    /// like the JA4 memo (`super::ja4::Memo`): past [`HASSH_MEMO_ENTRIES`] nothing is kept,
    /// nothing is lost, nothing is evicted.
    static HASSH_MEMO: RefCell<HasshMemo> = RefCell::new(HasshMemo::default());
}

#[derive(Default)]
struct HasshMemo {
    /// The hash by the lists it hashes, laid out as [`memo_key`] lays them.
    known: HashMap<Box<[u8]>, Box<str>, ahash::RandomState>,
    /// The lists being looked up, put together here rather than in a new Vec each time.
    key: Vec<u8>,
}

/// The four lists HASSH hashes, each after its length, as one key in `key`.
fn memo_key<'k>(key: &'k mut Vec<u8>, lists: &[&[u8]; 4]) -> &'k [u8] {
    key.clear();
    for list in lists {
        key.extend((list.len() as u32).to_le_bytes());
        key.extend_from_slice(list);
    }
    key
}

/// [`hassh`]'s hash straight from a KEXINIT's lists, remembered by the lists
/// ([`HASSH_MEMO`]): it builds no lists of names, and a list hashed before is not hashed
/// again.
fn hassh_of(lists: &[&[u8]; 8], client: bool) -> Box<str> {
    let side = usize::from(!client);
    let lists = [0, 2 + side, 4 + side, 6 + side].map(|i| lists[i]);
    HASSH_MEMO.with(|memo| {
        let Ok(mut memo) = memo.try_borrow_mut() else {
            return hassh_of_lists(&lists);
        };
        let HasshMemo { known, key } = &mut *memo;
        let key = memo_key(key, &lists);
        if let Some(hash) = known.get(key) {
            return hash.clone();
        }
        let hash = hassh_of_lists(&lists);
        if known.len() < HASSH_MEMO_ENTRIES && key.len() <= HASSH_MEMO_KEY {
            known.insert(key.into(), hash.clone());
        }
        hash
    })
}

/// HASSH's hash of the four lists it hashes, as they lie in the KEXINIT.
fn hassh_of_lists(lists: &[&[u8]; 4]) -> Box<str> {
    let mut s = String::with_capacity(lists.iter().map(|l| l.len() + 1).sum());
    for (i, list) in lists.iter().enumerate() {
        if i > 0 {
            s.push(';');
        }
        for (j, name) in names(&text(list)).enumerate() {
            if j > 0 {
                s.push(',');
            }
            s.push_str(name);
        }
    }
    md5_hex(&s).into()
}

fn md5_hex(s: &str) -> String {
    format!("{:x}", <md5::Md5 as md5::Digest>::digest(s.as_bytes()))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// What a flow record says of an SSH session.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct SshDetails {
    // Boxed strings, and the whole shared once dissection is over: one of these stays with
    // every SSH flow until it ends.
    pub client: Option<Box<str>>,
    pub server: Option<Box<str>>,
    pub hassh: Option<Box<str>>,
    pub hassh_server: Option<Box<str>>,
    pub kex: Option<Box<str>>,
}

impl Summary for SshDetails {}

/// Either side may speak first (RFC 4253 §4.2): a banner from either claims the flow.
/// Settled once each side's KEXINIT is parsed or will not come.
pub fn probe(input: &Input<'_>, id: &mut Identification) -> Probe {
    let (c, s) = (input.client, input.server);
    let (cc, sc) = (input.client_closed, input.server_closed);
    if !c.starts_with(b"SSH-") && !s.starts_with(b"SSH-") {
        return Probe::No;
    }
    // As parse_banner checks a banner, without its strings: a probe runs per segment.
    let banner = |stream| banner_line(stream).and_then(|l| banner_fields(l.text).map(|_| l));
    let cb = banner(c);
    let sb = banner(s);
    if cb.is_err() && sb.is_err() {
        return Probe::done_if(Probe::of(&cb, cc) == Probe::No && Probe::of(&sb, sc) == Probe::No);
    }
    id.app = Some(App::Ssh);
    let raw = |b: &Result<Line<'_>>| {
        b.as_ref()
            .ok()
            .map(|b| String::from_utf8_lossy(b.text).into())
    };
    let mut d = SshDetails {
        client: raw(&cb),
        server: raw(&sb),
        ..SshDetails::default()
    };
    let ck = cb
        .as_ref()
        .ok()
        .map(|b| kexinit_lists(c.get(b.len..).unwrap_or_default()));
    let sk = sb
        .as_ref()
        .ok()
        .map(|b| kexinit_lists(s.get(b.len..).unwrap_or_default()));
    if let Some(Ok(lists)) = &ck {
        d.hassh = Some(hassh_of(lists, true));
        d.kex = names(&text(lists[0])).next().map(Into::into);
    }
    if let Some(Ok(lists)) = &sk {
        d.hassh_server = Some(hassh_of(lists, false));
    }
    id.details.other = Some(Protocol::Ssh(Arc::new(d)));
    let settled = |k: &Option<Result<[&[u8]; 8]>>, closed: bool| match k {
        Some(r) => Probe::of(r, closed) != Probe::More,
        None => closed,
    };
    Probe::done_if(settled(&ck, cc) && settled(&sk, sc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A KEXINIT packet built per RFC 4253 §6/§7.1 (synthesized) with short lists.
    fn kexinit_packet(lists: [&str; 10]) -> Vec<u8> {
        let mut payload = vec![MSG_KEXINIT];
        payload.extend([0x11; 16]);
        for l in lists {
            payload.extend((l.len() as u32).to_be_bytes());
            payload.extend(l.as_bytes());
        }
        payload.extend([0, 0, 0, 0, 0]);
        let padding = 8 - (payload.len() + 5) % 8 + 4;
        let mut p = ((payload.len() + padding + 1) as u32)
            .to_be_bytes()
            .to_vec();
        p.push(padding as u8);
        p.extend(payload);
        p.extend(vec![0; padding]);
        p
    }

    #[test]
    fn banner_with_comments() {
        // RFC 4253 §4.2 example form.
        let b = parse_banner(b"SSH-2.0-billsSSH_3.6.3q3 comment\r\n\0\0").unwrap();
        assert_eq!(b.proto, "2.0");
        assert_eq!(b.software, "billsSSH_3.6.3q3");
        assert_eq!(b.comments.as_deref(), Some("comment"));
        assert_eq!(b.len, 34);
    }

    #[test]
    fn banner_after_other_lines_and_partial() {
        // Shape of zeek/Traces/ssh/server-pre-banner-data.pcap: text lines before "SSH-".
        let s = b"Welcome\r\nto the server\r\nSSH-1.99-OpenSSH_7.4\n";
        let b = parse_banner(s).unwrap();
        assert_eq!(
            (b.proto.as_str(), b.software.as_str()),
            ("1.99", "OpenSSH_7.4")
        );
        assert_eq!((b.len, b.skipped), (s.len(), 24));
        assert_eq!(
            parse_banner(b"SSH-2.0-Open").unwrap_err(),
            Error::Incomplete
        );
        assert!(matches!(
            parse_banner(b"SSH-2.0\r\n"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            parse_banner(b"\x16\x03\x01\x00\x00"),
            Err(Error::Invalid(_))
        ));
    }

    /// A KEXINIT's ten name-lists with `kex` first (the rest as OpenSSH might offer them).
    fn lists(kex: &str) -> [&str; 10] {
        [
            kex,
            "ssh-ed25519",
            "aes128-ctr",
            "aes256-ctr",
            "hmac-sha2-256",
            "hmac-sha1",
            "none",
            "none,zlib",
            "",
            "",
        ]
    }

    #[test]
    fn kexinit_and_hassh() {
        let p = kexinit_packet(lists("curve25519-sha256,diffie-hellman-group14-sha256"));
        let k = parse_kexinit(&p).unwrap();
        assert_eq!(k.host_key, ["ssh-ed25519"]);
        assert_eq!(k.comp_s2c, ["none", "zlib"]);
        let (s, h) = hassh(&k, true);
        assert_eq!(
            s,
            "curve25519-sha256,diffie-hellman-group14-sha256;aes128-ctr;hmac-sha2-256;none"
        );
        assert_eq!(h.len(), 32);
        assert_eq!(hassh(&k, false).0.split(';').nth(1), Some("aes256-ctr"));
        assert_eq!(
            parse_kexinit(&p[..p.len() - 1]).unwrap_err(),
            Error::Incomplete
        );
        let mut bad = p.clone();
        bad[5] = 21;
        assert!(matches!(parse_kexinit(&bad), Err(Error::Invalid(_))));
    }

    /// The hash a probe computes from the lists is HASSH's, with empty names and bytes that
    /// are not UTF-8 in the lists.
    #[test]
    fn hassh_from_the_lists_is_hassh() {
        let p = kexinit_packet([
            ",curve25519-sha256,,diffie-hellman-group14-sha256,",
            "ssh-ed25519",
            "aes128-ctr,aes\u{e9}-gcm",
            "aes256-ctr",
            "hmac-sha2-256",
            "",
            "none",
            "none,zlib",
            "",
            "",
        ]);
        let mut bad = p.clone();
        let at = bad
            .windows(2)
            .position(|w| w == "\u{e9}".as_bytes())
            .unwrap();
        bad[at] = 0xff;
        for p in [p, bad] {
            let (k, lists) = (parse_kexinit(&p).unwrap(), kexinit_lists(&p).unwrap());
            for client in [true, false] {
                assert_eq!(*hassh_of(&lists, client), hassh(&k, client).1);
            }
        }
    }

    /// The probe checks a banner as `parse_banner` does, and reads its line as the same
    /// text, bytes that are not UTF-8 included.
    #[test]
    fn the_probe_reads_a_banner_as_parse_banner_does() {
        let streams: [&[u8]; 10] = [
            b"SSH-2.0-OpenSSH_9.6 Ubuntu-3\r\n\0\0",
            b"Welcome\r\nSSH-1.99-Cisco-1.25\n",
            b"SSH-2.0-soft\xffware c\xe2\x82-x\r\n",
            b"SSH-2.\xff0-x\r\n",
            b"SSH-2.0\r\n",
            b"SSH--x\r\n",
            b"SSH-2.0-Open",
            b"\x16\x03\x01\x00\x00",
            b"hello\0\n",
            b"SSH-2.0-\r\n",
        ];
        for stream in streams {
            let whole = parse_banner(stream);
            let line = banner_line(stream).and_then(|l| banner_fields(l.text).map(|_| l));
            match (&whole, &line) {
                (Ok(b), Ok(l)) => {
                    assert_eq!(b.raw, String::from_utf8_lossy(l.text));
                    assert_eq!((b.len, b.skipped), (l.len, l.skipped));
                    let Fields {
                        proto,
                        software,
                        comments,
                    } = banner_fields(l.text).unwrap();
                    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    let rest = b.raw.split_once('-').unwrap().1.split_once('-').unwrap().1;
                    assert_eq!(lossy(proto), b.raw[4..].split_once('-').unwrap().0);
                    assert_eq!(lossy(software), rest.split_once(' ').map_or(rest, |s| s.0));
                    assert_eq!(comments.map(lossy), b.comments);
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!("{stream:?}: {whole:?} against {:?}", line.map(|l| l.len)),
            }
        }
    }

    /// A list hashed before is answered from the memo, with the hash it had.
    #[test]
    fn a_remembered_hassh_is_the_hash_of_its_lists() {
        let p = kexinit_packet(lists("curve25519-sha256"));
        let (k, lists) = (parse_kexinit(&p).unwrap(), kexinit_lists(&p).unwrap());
        let known = || HASSH_MEMO.with(|m| m.borrow().known.len());
        let before = known();
        let first = hassh_of(&lists, true);
        assert_eq!(known(), before + 1);
        assert_eq!(hassh_of(&lists, true), first);
        assert_eq!(known(), before + 1, "hashed once");
        assert_eq!(*first, hassh(&k, true).1);
        assert_eq!(*hassh_of(&lists, false), hassh(&k, false).1);
        // Lists longer than a key may be are hashed, not remembered.
        let long = "x,".repeat(HASSH_MEMO_KEY / 2);
        let mut lists = lists;
        lists[0] = long.as_bytes();
        let before = known();
        let hash = hassh_of(&lists, true);
        assert_eq!(known(), before);
        assert_eq!(
            hash,
            hassh_of_lists(&[lists[0], lists[2], lists[4], lists[6]])
        );
    }

    #[test]
    fn hassh_md5_of_known_string() {
        // The expected digest is `printf ';;;' | md5sum`.
        let (s, h) = hassh(&KexInit::default(), true);
        assert_eq!(s, ";;;");
        assert_eq!(h, "95420f9d932ddd22833f17b96a80bedb");
    }
}
