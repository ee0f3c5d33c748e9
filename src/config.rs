//! `farmwatch.toml`: every key optional, every default documented in the README, unknown
//! keys are errors (a typo must not silently fall back to a default).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use crate::detect::DetectConfig;
use crate::flows::FlowConfig;
use crate::geo::GeoConfig;
use crate::jetstream::{CorrelateConfig, PublishConfig, StreamConfig};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sensor: SensorConfig,
    pub network: NetworkConfig,
    pub geoip: GeoConfig,
    pub detect: DetectConfig,
    pub flows: FlowConfig,
    /// `--publish`: how a sensor sends to NATS JetStream (DESIGN §7).
    pub publish: PublishConfig,
    /// `farmwatch correlate`: the one account stage over every sensor.
    pub correlate: CorrelateConfig,
    /// The stream `FARMWATCH`, as whoever connects first creates it.
    pub stream: StreamConfig,
}

/// `[sensor]`: who and where the sensor is (its position anchors RTT-vs-distance checks).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    pub name: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub country: Option<String>,
}

impl Default for SensorConfig {
    fn default() -> SensorConfig {
        SensorConfig {
            name: "farmwatch".to_string(),
            latitude: None,
            longitude: None,
            country: None,
        }
    }
}

/// `[network]`: which addresses are ours. Inside/outside decides which end of a flow is
/// the account's host ([`NetworkConfig::host`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Account hosts and corporate servers.
    pub inside: Nets,
    /// Addresses the VPN assigns to accounts.
    pub vpn_pool: Nets,
    /// The VPN's public endpoints (outer side).
    pub concentrators: Vec<IpAddr>,
}

impl Default for NetworkConfig {
    /// With no configuration, private (RFC 1918, RFC 4193) and carrier-grade NAT space is
    /// inside, which is what a sensor behind a VPN concentrator usually sees.
    fn default() -> NetworkConfig {
        let nets = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
        ];
        NetworkConfig {
            inside: nets
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect::<Vec<IpNet>>()
                .into(),
            vpn_pool: Nets::default(),
            concentrators: Vec::new(),
        }
    }
}

impl NetworkConfig {
    #[inline]
    pub fn is_inside(&self, ip: IpAddr) -> bool {
        self.inside.contains(ip)
    }

    /// In `vpn_pool`: an address the VPN gives an account, so a person's, not a server's.
    #[inline]
    pub fn is_pooled(&self, ip: IpAddr) -> bool {
        self.vpn_pool.contains(ip)
    }

    /// The host of a flow between ends `a` and `b` (address and port; the port 0 unless
    /// TCP or UDP): the end whose account the flow is about. The one rule for "which end is
    /// the host", used to share packets out, to name a record's account and a finding's
    /// host, so that all of a host's flows meet in one partition.
    ///
    /// The inside end when only one is inside; none when neither is. Between two inside
    /// hosts the one in the VPN pool when only one is (a laptop reaching a corporate
    /// server), else the client: people open connections and servers answer, so the
    /// client's account is the one at work. The originator is not known from one packet
    /// (a flow may be picked up mid-stream, a fragment carries no flags), so the client is
    /// the end with the higher port, as nfdump and Zeek decide when they saw no SYN:
    /// servers listen on low, well-known ports, clients send from ephemeral ones. Equal
    /// ports (ICMP, NTP 123 to 123) leave the lower address. Either way round, the same
    /// answer.
    pub fn host(&self, a: (IpAddr, u16), b: (IpAddr, u16)) -> Option<IpAddr> {
        // Two IPv4 ends (most flows) as integers, as `host_v4` reads them: as `IpAddr`s,
        // each of the four lookups was a call that matched on the family (~87
        // instructions a host, office mix).
        if let (IpAddr::V4(x), IpAddr::V4(y)) = (a.0, b.0) {
            let host = self.host_v4((x.to_bits(), a.1), (y.to_bits(), b.1));
            return host.map(|h| IpAddr::V4(Ipv4Addr::from_bits(h)));
        }
        host_by(a, b, |ip| self.is_inside(ip), |ip| self.is_pooled(ip))
    }

    /// [`host`](Self::host) of two IPv4 ends, as integers: every packet's partition asks
    /// (most are IPv4), and an `IpAddr` travels and compares as an enum.
    #[inline]
    pub fn host_v4(&self, a: (u32, u16), b: (u32, u16)) -> Option<u32> {
        let inside = |x| self.inside.contains_v4(x);
        host_by(a, b, inside, |x| self.vpn_pool.contains_v4(x))
    }
}

/// The host rule of [`NetworkConfig::host`] over any address that orders as `IpAddr` does,
/// with `inside` and `pooled` saying where an address is. Always inlined: every packet's
/// partition asks through [`NetworkConfig::host_v4`], and once `host` asked through it too,
/// the rule was left a call of its own: 0.6 M instructions more over the office mix.
#[inline(always)]
fn host_by<A: Copy + Ord>(
    a: (A, u16),
    b: (A, u16),
    inside: impl Fn(A) -> bool,
    pooled: impl Fn(A) -> bool,
) -> Option<A> {
    match (inside(a.0), inside(b.0)) {
        (true, false) => Some(a.0),
        (false, true) => Some(b.0),
        (false, false) => None,
        (true, true) => match (pooled(a.0), pooled(b.0)) {
            (true, false) => Some(a.0),
            (false, true) => Some(b.0),
            _ if a.1 != b.1 => Some(if a.1 > b.1 { a.0 } else { b.0 }),
            _ => Some(a.0.min(b.0)),
        },
    }
}

/// A list of networks, as written, and as sorted, merged ranges per address family: a
/// lookup (several per packet) is a binary search over integers instead of a mask per
/// network. Most IPv4 addresses are answered by their first two bytes alone ([`ByPrefix`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Vec<IpNet>")]
pub struct Nets {
    nets: Vec<IpNet>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    v4_prefix: ByPrefix,
}

/// Per first byte of an IPv4 address, and where that is not enough per first two bytes,
/// whether the ranges hold all of the addresses that start with them, none, or some (then
/// they are searched). A search's branches go one way or the other by the address, which
/// the processor cannot foresee; this is one or two loads. Private space is split below
/// its first byte (172.16/12, 192.168/16, 100.64/10), and 192 starts most test and
/// documentation addresses too, so one byte left most packets to the search.
/// Boxed: a `NetworkConfig` travels in reloads and should stay small.
#[derive(Clone, Debug)]
struct ByPrefix(Box<Prefixes>);

#[derive(Clone, Debug)]
struct Prefixes {
    first: [Block; 256],
    /// The second bytes of each first byte that is [`Block::Split`].
    second: Vec<[Coverage; 256]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coverage {
    None,
    Some,
    All,
}

/// A first byte's block: all, none, or split (by second byte, in `ByPrefix::second`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    None,
    All,
    Split(u8),
}

impl ByPrefix {
    /// Over sorted, disjoint `ranges`.
    fn of(ranges: &[(u32, u32)]) -> ByPrefix {
        let mut second = Vec::new();
        let first = std::array::from_fn(|a| {
            let a = (a as u32) << 24;
            match coverage(ranges, a, a | 0x00ff_ffff) {
                Coverage::None => Block::None,
                Coverage::All => Block::All,
                Coverage::Some => {
                    second.push(std::array::from_fn(|b| {
                        let b = a | (b as u32) << 16;
                        coverage(ranges, b, b | 0xffff)
                    }));
                    Block::Split((second.len() - 1) as u8)
                }
            }
        });
        ByPrefix(Box::new(Prefixes { first, second }))
    }

    /// How much of the addresses that start as `x` does are in the ranges.
    #[inline]
    fn coverage(&self, x: u32) -> Coverage {
        let p = &self.0;
        match p.first[(x >> 24) as usize] {
            Block::None => Coverage::None,
            Block::All => Coverage::All,
            Block::Split(i) => p.second[i as usize][(x >> 16 & 0xff) as usize],
        }
    }
}

/// How much of the block `lo..=hi` the sorted, disjoint `ranges` hold: the first range
/// that ends in or after the block holds all of it, some, or (starting after it) none.
fn coverage(ranges: &[(u32, u32)], lo: u32, hi: u32) -> Coverage {
    match ranges.get(ranges.partition_point(|r| r.1 < lo)) {
        Some(r) if r.0 <= lo && hi <= r.1 => Coverage::All,
        Some(r) if r.0 <= hi => Coverage::Some,
        _ => Coverage::None,
    }
}

impl Default for Nets {
    fn default() -> Nets {
        Nets::from(Vec::new())
    }
}

impl From<Vec<IpNet>> for Nets {
    fn from(nets: Vec<IpNet>) -> Nets {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in &nets {
            match net {
                IpNet::V4(n) => v4.push((n.network().to_bits(), n.broadcast().to_bits())),
                IpNet::V6(n) => v6.push((n.network().to_bits(), n.broadcast().to_bits())),
            }
        }
        merge(&mut v4);
        merge(&mut v6);
        let v4_prefix = ByPrefix::of(&v4);
        Nets {
            nets,
            v4,
            v6,
            v4_prefix,
        }
    }
}

/// The networks as written.
impl std::ops::Deref for Nets {
    type Target = [IpNet];

    fn deref(&self) -> &[IpNet] {
        &self.nets
    }
}

impl Nets {
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.contains_v4(a.to_bits()),
            IpAddr::V6(a) => within(&self.v6, a.to_bits()),
        }
    }

    /// [`contains`](Self::contains) of an IPv4 address, as its integer.
    #[inline]
    pub fn contains_v4(&self, x: u32) -> bool {
        match self.v4_prefix.coverage(x) {
            Coverage::None => false,
            Coverage::All => true,
            Coverage::Some => within(&self.v4, x),
        }
    }
}

/// Sorts `ranges` and joins those that overlap, so that at most one can hold an address.
fn merge<T: Ord + Copy>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// In one of the sorted, disjoint `ranges`: the last one starting at or before `x`.
fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|r| r.0 <= x);
    after > 0 && x <= ranges[after - 1].1
}

/// One line saying what is wrong with a config file, with the line number.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Reads a TOML file into `T`, turning any problem into one line: `path:line: message`.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    parse_toml(path, &text)
}

pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| located(path, text, &e))
}

fn located(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().replace('\n', " ");
    match line {
        Some(l) => ConfigError(format!("{}:{l}: {msg}", path.display())),
        None => ConfigError(format!("{}: {msg}", path.display())),
    }
}

/// Every problem parsing finds in `text`, not only the first (for `farmwatch check`): the
/// entry each error points into is blanked and the rest parsed again. Returns the problems
/// in file order, and the text without the bad entries (line numbers kept) for the checks
/// that follow. It stops where blanking would leave no valid TOML, so a syntax error ends
/// the list.
pub fn every_parse_error<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> (Vec<ConfigError>, String) {
    let mut text = text.to_string();
    let mut problems = Vec::new();
    // Each round blanks at least one line, so there are at most as many as lines.
    for _ in 0..=text.lines().count() {
        let Err(e) = toml::from_str::<T>(&text) else {
            break;
        };
        let Some(span) = e.span() else {
            problems.push((usize::MAX, located(path, &text, &e)));
            break;
        };
        // Blanked lines stay, so line numbers (not byte offsets) compare across rounds.
        let line = text[..span.start.min(text.len())].matches('\n').count();
        problems.push((line, located(path, &text, &e)));
        let blanked = blank_entry(&text, span.start);
        if blanked == text || blanked.parse::<toml::Table>().is_err() {
            break;
        }
        text = blanked;
    }
    // In file order: they are found in the order serde meets them.
    problems.sort_by_key(|(line, _)| *line);
    (problems.into_iter().map(|(_, p)| p).collect(), text)
}

/// `text` with the entry holding byte `at` made empty lines: a `[table]` header with its
/// keys, or a `key = value` with the lines its brackets span.
fn blank_entry(text: &str, at: usize) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut first = 0;
    let mut offset = 0;
    while first + 1 < lines.len() && offset + lines[first].len() <= at {
        offset += lines[first].len();
        first += 1;
    }
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let mut last = first;
    if lines.get(first).is_some_and(|l| is_header(l)) {
        while last + 1 < lines.len() && !is_header(lines[last + 1]) {
            last += 1;
        }
    } else {
        let mut depth = lines.get(first).map_or(0, |l| bracket_depth(l));
        while depth > 0 && last + 1 < lines.len() {
            last += 1;
            depth += bracket_depth(lines[last]);
        }
    }
    let mut out = String::with_capacity(text.len());
    for (i, l) in lines.iter().enumerate() {
        if !(first..=last).contains(&i) {
            out.push_str(l);
        } else if l.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Brackets and braces a line opens minus those it closes, outside strings and comments.
fn bracket_depth(line: &str) -> i64 {
    let mut depth = 0;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => break,
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = match path {
            Some(p) => load_toml(p)?,
            None => Config::default(),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Every problem of the config at `path`, for `farmwatch check`: each key or value
    /// that does not parse, then what validation says about the rest.
    pub fn every_problem(path: &Path) -> Vec<ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return vec![ConfigError(format!("{}: cannot read: {e}", path.display()))],
        };
        let (mut problems, rest) = every_parse_error::<Config>(path, &text);
        if let Ok(config) = toml::from_str::<Config>(&rest)
            && let Err(e) = config.validate(Some(path))
        {
            problems.push(e);
        }
        problems
    }

    fn validate(&self, path: Option<&Path>) -> Result<(), ConfigError> {
        let name = path.map(|p| p.display().to_string()).unwrap_or_default();
        let bad = |what: &str| Err(ConfigError(format!("{name}: {what}")));
        if let Some(lat) = self.sensor.latitude
            && !(-90.0..=90.0).contains(&lat)
        {
            return bad("sensor.latitude must be within -90..90");
        }
        if let Some(lon) = self.sensor.longitude
            && !(-180.0..=180.0).contains(&lon)
        {
            return bad("sensor.longitude must be within -180..180");
        }
        if self.sensor.latitude.is_some() != self.sensor.longitude.is_some() {
            return bad("sensor.latitude and sensor.longitude go together");
        }
        if self.flows.max_flows == 0 {
            return bad("flows.max_flows must be at least 1");
        }
        if self.flows.interim_interval.is_zero() {
            return bad("flows.interim_interval must be longer than zero");
        }
        let f = &self.flows;
        for (key, timeout) in [
            ("tcp_half_open_timeout", f.tcp_half_open_timeout),
            ("tcp_established_timeout", f.tcp_established_timeout),
            ("udp_timeout", f.udp_timeout),
            ("icmp_timeout", f.icmp_timeout),
            ("idle_threshold", f.idle_threshold),
        ] {
            if timeout.is_zero() {
                return bad(&format!("flows.{key} must be longer than zero"));
            }
        }
        self.detect
            .validate()
            .map_err(|e| ConfigError(format!("{name}: {e}")))?;
        // The scale-out sections are checked even when unused, so `check` finds their typos.
        self.publish
            .validate()
            .and_then(|()| self.correlate.validate())
            .and_then(|()| self.stream.validate())
            .map_err(|e| ConfigError(format!("{name}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rule for the host of a flow, the same either way round: the inside end; of two,
    /// the pooled one, else the client (the higher port), else the lower address.
    #[test]
    fn the_host_of_a_flow() {
        let network = NetworkConfig {
            vpn_pool: vec!["10.8.0.0/16".parse().unwrap()].into(),
            ..Default::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            (("192.0.2.1", 50_000), ("10.20.0.5", 22), Some("10.20.0.5")),
            (("10.20.0.5", 50_000), ("192.0.2.1", 443), Some("10.20.0.5")),
            (("10.20.0.5", 22), ("10.8.0.12", 50_000), Some("10.8.0.12")),
            (("10.8.0.12", 50_000), ("10.20.0.5", 22), Some("10.8.0.12")),
            (("10.20.0.5", 40_000), ("10.20.0.30", 22), Some("10.20.0.5")),
            (("10.8.0.1", 40_000), ("10.8.0.2", 3389), Some("10.8.0.1")),
            (("10.20.0.9", 123), ("10.20.0.5", 123), Some("10.20.0.5")),
            (("fd00::2", 0), ("fd00::1", 0), Some("fd00::1")),
            (("fd00::2", 0), ("2001:db8::1", 0), Some("fd00::2")),
            (("192.0.2.1", 1), ("198.51.100.1", 2), None),
        ];
        for ((a, pa), (b, pb), want) in cases {
            let (a, b) = ((ip(a), pa), (ip(b), pb));
            assert_eq!(network.host(a, b), want.map(ip), "{a:?} {b:?}");
            assert_eq!(network.host(b, a), want.map(ip), "{b:?} {a:?}");
            // The integer form of the rule, which places most packets, answers the same.
            if let (IpAddr::V4(x), IpAddr::V4(y)) = (a.0, b.0) {
                let (x, y) = ((x.to_bits(), a.1), (y.to_bits(), b.1));
                let v4 = |h: Option<u32>| h.map(|h| IpAddr::from(std::net::Ipv4Addr::from_bits(h)));
                assert_eq!(v4(network.host_v4(x, y)), want.map(ip), "{a:?} {b:?}");
                assert_eq!(v4(network.host_v4(y, x)), want.map(ip), "{b:?} {a:?}");
            }
        }
    }

    /// The sorted ranges answer as the networks do, at every edge, overlapping or not, and
    /// at the edges of every first byte and of every second byte of the split ones (where
    /// the lookup by prefix decides alone).
    #[test]
    fn inside_ranges_agree_with_the_networks() {
        let nets = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "11.0.0.0/7",
            "172.16.0.0/12",
            "192.0.2.128/25",
            "100.64.0.0/10",
            "0.0.0.0/32",
            "255.255.255.255/32",
        ];
        let network = NetworkConfig {
            inside: nets
                .iter()
                .map(|n| n.parse().unwrap())
                .collect::<Vec<IpNet>>()
                .into(),
            ..Default::default()
        };
        let edges = network.inside.iter().flat_map(|net| match net {
            IpNet::V4(n) => vec![n.network().to_bits(), n.broadcast().to_bits()],
            IpNet::V6(_) => vec![],
        });
        let firsts = (0..=255u32).flat_map(|b| [b << 24, (b << 24) | 0x00ff_ffff]);
        let seconds = [0u32, 10, 11, 100, 172, 192, 255]
            .into_iter()
            .flat_map(|a| {
                (0..=255u32).flat_map(move |b| {
                    let block = a << 24 | b << 16;
                    [block, block | 0xffff]
                })
            });
        let mut inside = 0;
        for edge in edges.chain(firsts).chain(seconds) {
            for x in [edge.wrapping_sub(1), edge, edge.wrapping_add(1)] {
                let ip = IpAddr::from(std::net::Ipv4Addr::from_bits(x));
                let by_nets = network.inside.iter().any(|n| n.contains(&ip));
                assert_eq!(network.is_inside(ip), by_nets, "{ip}");
                inside += usize::from(by_nets);
            }
        }
        assert!(inside > 0);
        assert!(!network.is_inside("fd00::1".parse().unwrap()));
        assert!(NetworkConfig::default().is_inside("fd00::1".parse().unwrap()));
        assert!(!NetworkConfig::default().is_pooled("10.8.0.1".parse().unwrap()));
    }

    #[test]
    fn parses_the_design_example() {
        let text = r#"
[sensor]
name = "vpn-east-1"
latitude = 39.04
longitude = -77.49
country = "US"

[network]
inside = ["10.8.0.0/16", "10.20.0.0/16"]
vpn_pool = ["10.8.0.0/16"]
concentrators = ["198.51.100.10"]

[flows]
max_flows = 1000000
interim_interval = "15m"
"#;
        let c: Config = parse_toml(Path::new("f.toml"), text).unwrap();
        assert_eq!(c.sensor.name, "vpn-east-1");
        assert!(c.network.is_inside("10.8.0.12".parse().unwrap()));
        assert!(!c.network.is_inside("73.14.2.9".parse().unwrap()));
        assert_eq!(c.flows.interim_interval.as_secs(), 900);
        assert_eq!(c.flows.reassembly_bytes, 8192);
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_one_line_errors_with_a_line_number() {
        let e = parse_toml::<Config>(
            Path::new("f.toml"),
            "[sensor]\nname = \"x\"\nnmae = \"y\"\n",
        )
        .unwrap_err();
        assert!(e.0.starts_with("f.toml:3: unknown field `nmae`"), "{e}");
        assert!(!e.0.contains('\n'));
        let e = parse_toml::<Config>(Path::new("f.toml"), "[flows]\nudp_timeout = \"soon\"\n")
            .unwrap_err();
        assert!(e.0.starts_with("f.toml:2:"), "{e}");
    }

    #[test]
    fn every_parse_error_lists_each_bad_key_and_value_with_its_line() {
        let text = "[sensor]\nnmae = \"x\"\n[network]\ninside = [\n  \"10.0.0.0/8\",\n]\n\
                    insid = [\"10.0.0.0/8\"]\n[flows]\nudp_timeout = \"soon\"\n[sensr]\nname = \"y\"\n";
        let (problems, rest) = every_parse_error::<Config>(Path::new("f.toml"), text);
        let lines: Vec<&str> = problems
            .iter()
            .map(|p| p.0.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            lines,
            ["f.toml:2", "f.toml:7", "f.toml:9", "f.toml:10"],
            "{problems:?}"
        );
        assert_eq!(rest.lines().count(), text.lines().count());
        assert!(toml::from_str::<Config>(&rest).is_ok());
        // A syntax error is the one problem: nothing after it can be trusted.
        let (problems, _) = every_parse_error::<Config>(Path::new("f.toml"), "[sensor\nx = 1\n");
        assert_eq!(problems.len(), 1);
    }
}
