//! Remote-access tool (and SSL-VPN vendor) identification as one declarative table: which names (SNI, DNS, TLS
//! certificate, ALPN) and which first-payload bytes point at which tool. Adding a tool or a
//! domain is adding a row; one engine reads the table.
//!
//! Tor is deliberately absent: its TLS uses random-looking SNIs and self-signed certificates
//! with random names, so no fixed byte or name trait identifies it from one flow's bytes;
//! Tor is left to relay-list (address) lookups elsewhere.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::app::App;
use serde::Serialize;

/// Where a name was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameKind {
    /// TLS ClientHello server_name.
    Sni,
    /// A DNS question or answer name (the caller then labels flows to the answered addresses).
    DnsName,
    /// A certificate subject CN/O or SAN.
    CertName,
    /// A TLS ALPN protocol id.
    Alpn,
}

/// Transport of a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    Tcp,
    Udp,
}

/// Which side sent the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Originator,
    Responder,
    Either,
}

/// How much a row can be trusted alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// A vendor-specific handshake field or name; no other software produces it.
    High,
    /// Vendor documentation or a dissector in a maintained DPI engine, not checked on a capture.
    Medium,
    /// A short byte pattern that other traffic can produce now and then.
    Low,
}

/// One kind of evidence.
#[derive(Clone, Copy, Debug)]
pub enum Evidence {
    /// A host name seen as SNI, DNS name or certificate name: domain-suffix match on label
    /// boundaries, case-insensitive (`net.anydesk.com` matches `relay-1.net.anydesk.com`).
    Host(&'static str),
    Sni(&'static str),
    DnsName(&'static str),
    /// A certificate subject name, matched whole (case-insensitive) or as a domain suffix.
    CertName(&'static str),
    AlpnPrefix(&'static str),
    /// The first TCP payload of one direction starts with `bytes` (under `mask`, if given;
    /// a mask byte of 0xFF keeps the whole byte) and has a length in `len`.
    TcpPrefix {
        dir: Dir,
        bytes: &'static [u8],
        mask: Option<&'static [u8]>,
        len: (usize, usize),
    },
    /// The first UDP payload has `bytes` at `offset` and a length in `len`.
    UdpPattern {
        dir: Dir,
        offset: usize,
        bytes: &'static [u8],
        len: (usize, usize),
    },
}

/// A table row.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub app: App,
    pub evidence: Evidence,
    /// The name belongs to the vendor's relay/broker/rendezvous service, not to the peer.
    pub relay: bool,
    pub confidence: Confidence,
}

const fn host(app: App, name: &'static str, confidence: Confidence) -> Rule {
    Rule {
        app,
        evidence: Evidence::Host(name),
        relay: true,
        confidence,
    }
}

/// The table. Each row names its public source.
pub static RULES: &[Rule] = &[
    // source: AnyDesk help center "Firewall" (allow *.net.anydesk.com on TCP 80/443/6568);
    // also nDPI ndpi_content_match.c.inc host list.
    host(App::Anydesk, "net.anydesk.com", Confidence::High),
    // source: nDPI src/lib/protocols/tls.c tls_subclassify_by_alpn ("anydesk/" ALPN prefix).
    // The client offers it to AnyNet, the vendor's relay; a peer it reaches directly answers
    // with the "AnyDesk Client" certificate below, which takes `relay` back (identify.rs).
    Rule {
        app: App::Anydesk,
        evidence: Evidence::AlpnPrefix("anydesk/"),
        relay: true,
        confidence: Confidence::High,
    },
    // source: nDPI issue ntop/nDPI#916 and PR #919 (peer certificate CN "AnyDesk Client").
    Rule {
        app: App::Anydesk,
        evidence: Evidence::CertName("AnyDesk Client"),
        relay: false,
        confidence: Confidence::High,
    },
    // source: TeamViewer knowledge base "Which ports are used by TeamViewer?" (allow
    // *.teamviewer.com on 5938/443/80: routers, masters, ping servers).
    host(App::Teamviewer, "teamviewer.com", Confidence::High),
    // source: nDPI src/lib/protocols/teamviewer.c (TCP payload starts 0x17 0x24, len > 2).
    Rule {
        app: App::Teamviewer,
        evidence: Evidence::TcpPrefix {
            dir: Dir::Either,
            bytes: &[0x17, 0x24],
            mask: None,
            len: (3, usize::MAX),
        },
        relay: false,
        confidence: Confidence::Low,
    },
    // source: nDPI teamviewer.c (UDP: byte 0 = 0x00 counter, bytes 11..13 = 0x17 0x24, len > 13).
    Rule {
        app: App::Teamviewer,
        evidence: Evidence::UdpPattern {
            dir: Dir::Either,
            offset: 11,
            bytes: &[0x17, 0x24],
            len: (14, usize::MAX),
        },
        relay: false,
        confidence: Confidence::Low,
    },
    // source: rustdesk/rustdesk libs/hbb_common/src/config.rs RENDEZVOUS_SERVERS
    // ["rs-ny.rustdesk.com"]; rs-sg/rs-cn are the earlier public servers (medium).
    host(App::Rustdesk, "rs-ny.rustdesk.com", Confidence::High),
    host(App::Rustdesk, "rs-sg.rustdesk.com", Confidence::Medium),
    host(App::Rustdesk, "rs-cn.rustdesk.com", Confidence::Medium),
    // source: Google Chrome Enterprise help "Chrome Remote Desktop" network requirements
    // (remotedesktop-pa.googleapis.com for host/client signalling; remotedesktop.google.com UI).
    host(
        App::ChromeRemoteDesktop,
        "remotedesktop-pa.googleapis.com",
        Confidence::Medium,
    ),
    host(
        App::ChromeRemoteDesktop,
        "remotedesktop.google.com",
        Confidence::Medium,
    ),
    // source: Splashtop support "Firewall exceptions and ports" (*.splashtop.com, *.splashtop.eu).
    host(App::Splashtop, "splashtop.com", Confidence::Medium),
    host(App::Splashtop, "splashtop.eu", Confidence::Medium),
    // source: ConnectWise ScreenConnect Cloud docs (instances *.screenconnect.com, relay
    // instance-*-relay.screenconnect.com).
    host(App::Screenconnect, "screenconnect.com", Confidence::Medium),
    // source: Parsec support "Required hosts and ports" (*.parsec.app, *.parsecgaming.com).
    host(App::Parsec, "parsec.app", Confidence::Medium),
    host(App::Parsec, "parsecgaming.com", Confidence::Medium),
    // source: nDPI src/lib/protocols/nomachine.c (11..14-byte "NXSH-"/"NXD-" version banner
    // before TLS).
    Rule {
        app: App::Nomachine,
        evidence: Evidence::TcpPrefix {
            dir: Dir::Either,
            bytes: b"NXSH-",
            mask: None,
            len: (11, 14),
        },
        relay: false,
        confidence: Confidence::High,
    },
    Rule {
        app: App::Nomachine,
        evidence: Evidence::TcpPrefix {
            dir: Dir::Either,
            bytes: b"NXD-",
            mask: None,
            len: (11, 14),
        },
        relay: false,
        confidence: Confidence::High,
    },
    // source: Zoho Assist help "Domains to be whitelisted" (assist.zoho.com and regional
    // assist.zoho.eu/.in/.com.au, *.zohoassist.com).
    host(App::ZohoAssist, "assist.zoho.com", Confidence::Medium),
    host(App::ZohoAssist, "assist.zoho.eu", Confidence::Medium),
    host(App::ZohoAssist, "zohoassist.com", Confidence::Medium),
    // source: GoTo support "Allowlisting and firewall configuration for LogMeIn / GoTo
    // Resolve" (*.logmein.com, *.logmeininc.com, *.gotoassist.com).
    host(App::Logmein, "logmein.com", Confidence::Medium),
    host(App::Logmein, "logmeininc.com", Confidence::Medium),
    host(App::Logmein, "gotoassist.com", Confidence::Medium),
    // source: SoftEther src/Cedar (DDNS names *.softether-network.net; VPN Azure, the
    // vendor's relay cloud, *.vpnazure.net), as REFERENCE-2 §1 reads them.
    Rule {
        app: App::Softether,
        evidence: Evidence::Host("softether-network.net"),
        relay: false,
        confidence: Confidence::Medium,
    },
    host(App::Softether, "vpnazure.net", Confidence::Medium),
    // source: nDPI src/lib/protocols/radmin.c (10-byte client hello 01 00 00 00 01 ..; reply
    // 46 bytes 01 00 00 00 25 ..).
    Rule {
        app: App::Radmin,
        evidence: Evidence::TcpPrefix {
            dir: Dir::Originator,
            bytes: &[1, 0, 0, 0, 1],
            mask: None,
            len: (10, 10),
        },
        relay: false,
        confidence: Confidence::Medium,
    },
    Rule {
        app: App::Radmin,
        evidence: Evidence::TcpPrefix {
            dir: Dir::Responder,
            bytes: &[1, 0, 0, 0, 0x25],
            mask: None,
            len: (46, 46),
        },
        relay: false,
        confidence: Confidence::Medium,
    },
];

/// A name match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Match {
    pub app: App,
    /// The name is the vendor's relay/broker, not an endpoint.
    pub relay: bool,
}

/// True when `name` equals `pattern` or ends with `.pattern` (ASCII case-insensitive).
/// `name` comes without its trailing dot. The definition [`Names`] answers faster.
#[cfg(test)]
fn domain_match(name: &str, pattern: &str) -> bool {
    let (n, p) = (name.len(), pattern.len());
    n >= p
        && name
            .get(n - p..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(pattern))
        && (n == p || name.as_bytes().get(n - p - 1) == Some(&b'.'))
}

/// Whether a name row applies to a name seen as `kind`.
fn applies(evidence: &Evidence, kind: NameKind) -> bool {
    matches!(
        (evidence, kind),
        (
            Evidence::Host(_),
            NameKind::Sni | NameKind::DnsName | NameKind::CertName
        ) | (Evidence::Sni(_), NameKind::Sni)
            | (Evidence::DnsName(_), NameKind::DnsName)
            | (Evidence::CertName(_), NameKind::CertName)
    )
}

/// The longest name pattern a lookup can find: a name's suffixes beyond it are not looked
/// up (a test keeps every row's pattern within it).
const LONGEST: usize = 64;

/// The name rows by lower-case pattern, built once. Every TLS, HTTP and DNS flow asks about
/// a name, usually one no row has: looking up the name's few suffixes on label boundaries
/// replaces comparing its tail with every row's pattern.
struct Names {
    rows: HashMap<Box<[u8]>, Vec<usize>, ahash::RandomState>,
    /// Bit `n` is set when some pattern is `n` bytes long: most suffixes are not looked up.
    lengths: u128,
    /// The last labels of the patterns (`com`, `eu`, ...): a name ending in another one
    /// matches no row, and none of its suffixes is hashed.
    last_labels: Vec<Box<[u8]>>,
}

static NAMES: LazyLock<Names> = LazyLock::new(|| {
    let mut names = Names {
        rows: HashMap::default(),
        lengths: 0,
        last_labels: Vec::new(),
    };
    for (i, r) in RULES.iter().enumerate() {
        if let Evidence::Host(p) | Evidence::Sni(p) | Evidence::DnsName(p) | Evidence::CertName(p) =
            r.evidence
            && p.len() <= LONGEST
        {
            names.lengths |= 1 << p.len();
            let last = p.rsplit('.').next().unwrap_or(p).to_ascii_lowercase();
            if !names.last_labels.iter().any(|l| **l == *last.as_bytes()) {
                names.last_labels.push(last.into_bytes().into());
            }
            (names.rows)
                .entry(p.to_ascii_lowercase().into_bytes().into())
                .or_default()
                .push(i);
        }
    }
    names
});

impl Names {
    /// The index of the row `name` (without its trailing dot) matches as `kind`: the
    /// highest confidence, then the first in [`RULES`].
    fn find(&self, kind: NameKind, name: &[u8]) -> Option<usize> {
        // Every suffix looked up below ends with the name's last label, as the pattern it
        // would equal does: most names are turned away by their last few bytes.
        let last = name.rsplit(|&b| b == b'.').next().unwrap_or(name);
        if !self
            .last_labels
            .iter()
            .any(|l| l.eq_ignore_ascii_case(last))
        {
            return None;
        }
        let start = name.len().saturating_sub(LONGEST);
        let mut buffer = [0u8; LONGEST];
        let tail = &mut buffer[..name.len() - start];
        for (t, b) in tail.iter_mut().zip(&name[start..]) {
            *t = b.to_ascii_lowercase();
        }
        // The suffixes after each dot, and the whole name when it fits.
        let whole = (start == 0).then_some(0);
        let after_dots = memchr::memchr_iter(b'.', tail).map(|dot| dot + 1);
        let mut best: Option<usize> = None;
        for i in whole.into_iter().chain(after_dots) {
            let suffix = &tail[i..];
            if self.lengths & (1 << suffix.len()) == 0 {
                continue;
            }
            for &r in self.rows.get(suffix).into_iter().flatten() {
                let rank = |r: usize| (RULES[r].confidence, r);
                if applies(&RULES[r].evidence, kind) && best.is_none_or(|b| rank(r) < rank(b)) {
                    best = Some(r);
                }
            }
        }
        best
    }
}

/// Looks a name up in the table; the highest-confidence row wins. Names match on label
/// boundaries (see [`Names`]), ALPN ids by prefix.
pub fn match_name(kind: NameKind, name: &str) -> Option<Match> {
    let row = if kind == NameKind::Alpn {
        RULES
            .iter()
            .filter(|r| match r.evidence {
                Evidence::AlpnPrefix(p) => {
                    name.len() > p.len()
                        && name
                            .get(..p.len())
                            .is_some_and(|h| h.eq_ignore_ascii_case(p))
                }
                _ => false,
            })
            .min_by_key(|r| r.confidence)
    } else {
        let name = name.strip_suffix('.').unwrap_or(name);
        NAMES.find(kind, name.as_bytes()).map(|i| &RULES[i])
    };
    row.map(|r| Match {
        app: r.app,
        relay: r.relay,
    })
}

/// Looks the first payload of one direction up in the table's byte rules.
pub fn match_payload(proto: Proto, from_originator: bool, first_payload: &[u8]) -> Option<App> {
    let dir_ok = |d: Dir| match d {
        Dir::Either => true,
        Dir::Originator => from_originator,
        Dir::Responder => !from_originator,
    };
    let len_ok = |(lo, hi): (usize, usize)| (lo..=hi).contains(&first_payload.len());
    RULES
        .iter()
        // Most rows are names: a test of the kind alone passes over them without a call.
        .filter(|r| {
            matches!(
                (&r.evidence, proto),
                (Evidence::TcpPrefix { .. }, Proto::Tcp)
                    | (Evidence::UdpPattern { .. }, Proto::Udp)
            )
        })
        // The evidence by reference: copying every row's 64 bytes cost more than the test.
        .filter(|r| match (&r.evidence, proto) {
            (
                &Evidence::TcpPrefix {
                    dir,
                    bytes,
                    mask,
                    len,
                },
                Proto::Tcp,
            ) => {
                dir_ok(dir)
                    && len_ok(len)
                    && first_payload.get(..bytes.len()).is_some_and(|head| {
                        head.iter().zip(bytes).enumerate().all(|(i, (&h, &b))| {
                            let m = mask.and_then(|m| m.get(i)).copied().unwrap_or(0xFF);
                            h & m == b & m
                        })
                    })
            }
            (
                &Evidence::UdpPattern {
                    dir,
                    offset,
                    bytes,
                    len,
                },
                Proto::Udp,
            ) => {
                dir_ok(dir)
                    && len_ok(len)
                    && first_payload.get(offset..offset + bytes.len()) == Some(bytes)
            }
            _ => false,
        })
        .min_by_key(|r| r.confidence)
        .map(|r| r.app)
}

/// Well-known ports of remote-access tools and tunnels: a hint the caller reports as `guess`,
/// never as `app` (DESIGN §4). Sources: IANA registry (3389, 5900, 22, 23, 500, 4500, 1194,
/// 1080, 1812/1813, 3478), vendor docs (5938 TeamViewer, 6568/7070 AnyDesk, 21115-21119
/// RustDesk, 4000 NoMachine, 4899 Radmin, 8040/8041 ScreenConnect, 6783 Splashtop LAN,
/// 8000-8010/udp Parsec, 51820 WireGuard), 9001 Tor ORPort default (torrc manual).
pub fn port_guess(proto: Proto, port: u16) -> Option<App> {
    use Proto::*;
    Some(match (proto, port) {
        (_, 3389) => App::Rdp,
        (Tcp, 5800 | 5900..=5903) => App::Vnc,
        (_, 5938) => App::Teamviewer,
        (Tcp, 6568 | 7070) => App::Anydesk,
        (Tcp, 21115..=21119) | (Udp, 21116) => App::Rustdesk,
        (_, 4000) => App::Nomachine,
        (Tcp, 4899) => App::Radmin,
        (Tcp, 8040 | 8041) => App::Screenconnect,
        (Tcp, 6783) => App::Splashtop,
        (Udp, 8000..=8010) => App::Parsec,
        (Tcp, 22) => App::Ssh,
        (Tcp, 23) => App::Telnet,
        (Udp, 500 | 4500) => App::Ipsec,
        (_, 1194) => App::Openvpn,
        (Udp, 51820) => App::Wireguard,
        (_, 3478) => App::Stun,
        (Tcp, 1080) => App::Socks,
        (Udp, 1812 | 1813) => App::Radius,
        (Tcp, 9001) => App::Tor,
        _ => return None,
    })
}

/// Test helper shared by the dissector test modules: bytes from a hex string.
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_label_boundaries() {
        let m = match_name(NameKind::Sni, "relay-4e2d1b.net.AnyDesk.com.").unwrap();
        assert_eq!(
            m,
            Match {
                app: App::Anydesk,
                relay: true
            }
        );
        assert_eq!(match_name(NameKind::DnsName, "notteamviewer.com"), None);
        assert_eq!(
            match_name(NameKind::DnsName, "router7.teamviewer.com").map(|m| m.app),
            Some(App::Teamviewer)
        );
        assert_eq!(
            match_name(NameKind::Sni, "rs-ny.rustdesk.com").map(|m| m.app),
            Some(App::Rustdesk)
        );
        assert_eq!(match_name(NameKind::Sni, "rustdesk.com"), None);
        let cert = match_name(NameKind::CertName, "anydesk client").unwrap();
        assert_eq!(
            cert,
            Match {
                app: App::Anydesk,
                relay: false
            }
        );
        assert_eq!(match_name(NameKind::Sni, "AnyDesk Client"), None);
        assert_eq!(
            match_name(NameKind::Alpn, "anydesk/6.2.0/windows"),
            Some(Match {
                app: App::Anydesk,
                relay: true
            })
        );
        assert_eq!(
            match_name(NameKind::Sni, "vpn1.softether-network.net"),
            Some(Match {
                app: App::Softether,
                relay: false
            })
        );
        assert_eq!(match_name(NameKind::Alpn, "h2"), None);
    }

    /// The lookup by suffix answers as a scan of every row with [`domain_match`] does.
    #[test]
    fn names_match_as_a_scan_of_the_table_would() {
        let scan = |kind: NameKind, name: &str| {
            let name = name.strip_suffix('.').unwrap_or(name);
            RULES
                .iter()
                .filter(|r| match r.evidence {
                    Evidence::Host(p)
                    | Evidence::Sni(p)
                    | Evidence::DnsName(p)
                    | Evidence::CertName(p) => applies(&r.evidence, kind) && domain_match(name, p),
                    _ => false,
                })
                .min_by_key(|r| r.confidence)
                .map(|r| Match {
                    app: r.app,
                    relay: r.relay,
                })
        };
        let long = format!("{}.teamviewer.com", "a".repeat(70));
        let longest = format!("{}.remotedesktop-pa.googleapis.com", "b".repeat(40));
        let mut names = vec![
            "",
            ".",
            "com",
            "..",
            long.as_str(),
            longest.as_str(),
            "x.Teamviewer.COM.",
            "é.teamviewer.com",
            "teamviewer.com.",
            "xteamviewer.com",
            "a..teamviewer.com",
            "anydesk client",
            "AnyDesk Client.",
            "x.anydesk client",
            "rs-ny.rustdesk.com",
            "net.anydesk.com.example",
            "teamviewer.co",
            "x.teamviewer.comx",
            "x.splashtop.EU",
        ];
        let mut made = Vec::new();
        for r in RULES {
            if let Evidence::Host(p) | Evidence::CertName(p) = r.evidence {
                assert!(p.len() <= LONGEST, "{p} is longer than a lookup reads");
                made.extend([
                    p.to_string(),
                    p.to_ascii_uppercase(),
                    format!("relay.{p}"),
                    format!("relay{p}"),
                    format!("{p}."),
                    p[1..].to_string(),
                    format!("{}.{p}", "c".repeat(LONGEST - p.len())),
                    format!("{}.{p}", "c".repeat(LONGEST + 1 - p.len())),
                    format!("{}{p}", "c".repeat(LONGEST - p.len())),
                ]);
            }
        }
        names.extend(made.iter().map(String::as_str));
        for name in names {
            for kind in [NameKind::Sni, NameKind::DnsName, NameKind::CertName] {
                assert_eq!(match_name(kind, name), scan(kind, name), "{kind:?} {name}");
            }
        }
    }

    #[test]
    fn payloads() {
        // nomachine.c: the banner "NXSH-8.4.2\n" (synthesized from the documented shape).
        assert_eq!(
            match_payload(Proto::Tcp, true, b"NXSH-8.4.2\n"),
            Some(App::Nomachine)
        );
        assert_eq!(
            match_payload(Proto::Tcp, false, b"NXD-8.4.2\n\0"),
            Some(App::Nomachine)
        );
        // radmin.c: 10-byte client hello, only from the originator.
        let radmin = [1, 0, 0, 0, 1, 0, 0, 0, 8, 8];
        assert_eq!(match_payload(Proto::Tcp, true, &radmin), Some(App::Radmin));
        assert_eq!(match_payload(Proto::Tcp, false, &radmin), None);
        assert_eq!(
            match_payload(Proto::Tcp, true, &[0x17, 0x24, 0x0a, 0]),
            Some(App::Teamviewer)
        );
        let mut udp = [0u8; 20];
        udp[11..13].copy_from_slice(&[0x17, 0x24]);
        assert_eq!(match_payload(Proto::Udp, true, &udp), Some(App::Teamviewer));
        assert_eq!(
            match_payload(Proto::Tcp, true, b"\x16\x03\x01\x02\x00"),
            None
        );
    }

    #[test]
    fn every_app_in_the_table_is_remote_desktop_or_an_ssl_vpn() {
        assert!(
            RULES
                .iter()
                .all(|r| r.app.is_remote_desktop() || r.app.is_ssl_vpn())
        );
        assert_eq!(port_guess(Proto::Tcp, 3389), Some(App::Rdp));
        assert_eq!(port_guess(Proto::Udp, 22), None);
    }
}
