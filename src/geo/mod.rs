//! Geolocation of public addresses: country, ASN and a position with an uncertainty
//! radius, from MaxMind-format (.mmdb) databases opened once.
//!
//! With no configuration the embedded databases in `geoip/` answer (a country database
//! and an ASN database whose licences allow redistribution, see `geoip/README.md`), so
//! `farmwatch geoip 8.8.8.8` works on a fresh clone. GeoLite2/GeoIP2 files replace them
//! when configured. Without a city database, a position is the country's centroid with a
//! radius that covers the country: impossible-travel needs positions with uncertainty.

pub mod writer;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize, Serializer};

/// The embedded country database (@ip-location-db/geo-whois-asn-country-mmdb).
static EMBEDDED_COUNTRY: &[u8] = include_bytes!("../../geoip/geo-whois-asn-country.mmdb");
/// The embedded ASN database, built from @ip-location-db/asn by `examples/build_geoip.rs`.
static EMBEDDED_ASN: &[u8] = include_bytes!("../../geoip/asn.mmdb");
/// Country → representative point and covering radius (`geoip/tools/build-centroids.py`).
static CENTROIDS: &str = include_str!("../../geoip/country-centroids.csv");
/// The curated hosting/VPN/proxy ASN list.
static HOSTING_ASNS: &str = include_str!("../../geoip/hosting-asns.csv");

/// Distinct addresses whose answers are kept. 65,536 entries of a few dozen bytes (the
/// records are shared): a few MB, and more distinct public addresses than a concentrator
/// sees in a day.
pub const CACHE_CAPACITY: usize = 65_536;

/// Database records whose decoded answers are kept. Addresses share records (every address
/// of a country in a country database, of an AS in an ASN database), and decoding one cost
/// twice the walk down the tree to it: most first lookups of an address find their records
/// decoded. A City database has millions of records, hence the bound.
pub const RECORD_CACHE_CAPACITY: usize = 16_384;

/// The `[geoip]` section of farmwatch.toml. Every key is optional.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// A Country or City database (City databases carry the country too). Replaces the
    /// embedded country database.
    pub country: Option<PathBuf>,
    /// An ASN database (GeoLite2-ASN layout). Replaces the embedded ASN database.
    pub asn: Option<PathBuf>,
    /// A City database for coordinates; without one, country centroids are used.
    pub city: Option<PathBuf>,
    /// Extra hosting/VPN/proxy ASNs, same CSV layout as `geoip/hosting-asns.csv`; added to
    /// the shipped list, and an entry here overrides the shipped category of its ASN.
    pub hosting_asns: Option<PathBuf>,
    /// Countries whose appearance on a contractor's session is itself a finding. Default:
    /// KP, CN, RU (where public reporting places DPRK IT workers and their facilitators:
    /// Microsoft "Jasper Sleet" 2025, Mandiant UNC5267 2024) and IR (comprehensively
    /// sanctioned, so no legitimate contractor can work from there).
    #[serde(default = "default_high_risk")]
    pub high_risk_countries: Vec<String>,
}

fn default_high_risk() -> Vec<String> {
    ["KP", "CN", "RU", "IR"].map(String::from).to_vec()
}

impl Default for GeoConfig {
    fn default() -> GeoConfig {
        GeoConfig {
            country: None,
            asn: None,
            city: None,
            hosting_asns: None,
            high_risk_countries: default_high_risk(),
        }
    }
}

/// Why an ASN's addresses are servers rather than people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Hosting,
    Vpn,
    Proxy,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Hosting => "hosting",
            Category::Vpn => "vpn",
            Category::Proxy => "proxy",
        }
    }

    fn parse(s: &str) -> Option<Category> {
        match s {
            "hosting" => Some(Category::Hosting),
            "vpn" => Some(Category::Vpn),
            "proxy" => Some(Category::Proxy),
            _ => None,
        }
    }
}

/// Where a position comes from, which says how far to trust it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LocationSource {
    City,
    CountryCentroid,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    /// The place is somewhere within this distance of (lat, lon).
    pub radius_km: f64,
    pub source: LocationSource,
}

impl Location {
    /// Great-circle distance (haversine, mean Earth radius 6371.0088 km).
    pub fn distance_km(&self, other: &Location) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * 6371.0088 * a.sqrt().min(1.0).asin()
    }

    /// The least distance between the two places given both uncertainty radii: zero when
    /// the circles overlap (neighbouring countries, a city inside its country).
    pub fn min_distance_km(&self, other: &Location) -> f64 {
        (self.distance_km(other) - self.radius_km - other.radius_km).max(0.0)
    }
}

/// What the databases say about one address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2 (always a valid [`Country`]).
    pub country: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    pub location: Option<Location>,
}

/// A country code held inline: every flow record carries two, so they must not allocate.
/// Two ASCII letters, upper case (ISO 3166-1 alpha-2, and the registries' EU/AP/ZZ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Country([u8; 2]);

impl Country {
    /// `code` as a country: two ASCII letters of either case, anything else is none.
    pub fn new(code: &str) -> Option<Country> {
        match *code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Two ASCII letters by construction: checked as ASCII, not decoded as UTF-8 (47
        // instructions for the two letters, and every flow record writes two).
        crate::dissect::wire::ascii_str(&self.0).unwrap_or_default()
    }
}

impl Serialize for Country {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct GeoError(pub String);

impl fmt::Display for GeoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GeoError {}

type Reader = maxminddb::Reader<Cow<'static, [u8]>>;

/// The fields farmwatch reads, from any of the layouts it accepts: GeoIP2 Country/City
/// (`country.iso_code`, `location`), GeoLite2-ASN (`autonomous_system_*`) and
/// ip-location-db's country databases (`country_code`). Unknown fields are skipped.
#[derive(Deserialize, Default)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    #[serde(borrow, default)]
    city: Option<CityNames<'a>>,
    #[serde(default)]
    location: Option<RecordLocation>,
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CityNames<'a> {
    #[serde(borrow, default)]
    names: HashMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct RecordLocation {
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u16>,
}

/// Country centroids: (lat, lon, radius_km).
/// By the code's two bytes, hashed with aHash: every address a database places is given
/// its country's centroid when no city is known, and hashing a `String` key with SipHash
/// was most of that.
type Centroids = HashMap<[u8; 2], (f64, f64, f64), ahash::RandomState>;

/// The centroid row of the country `cc`, matched exactly (`"us"` is no country).
fn centroid_of(cc: &str) -> Option<&'static (f64, f64, f64)> {
    let code: [u8; 2] = cc.as_bytes().try_into().ok()?;
    CENTROID_TABLE.get(&code)
}

static CENTROID_TABLE: LazyLock<Centroids> = LazyLock::new(|| parse_centroids(CENTROIDS));

/// Whether `cc` is an ISO 3166-1 alpha-2 country code (the 249 assigned codes plus XK,
/// Kosovo's user-assigned code, as listed in `geoip/country-centroids.csv`).
pub fn is_country(cc: &str) -> bool {
    centroid_of(cc).is_some()
}

/// A map of at most `capacity` entries: at the limit the oldest entry goes first (FIFO),
/// which is deterministic, and is counted.
struct Fifo<K, V> {
    map: HashMap<K, V, ahash::RandomState>,
    /// Insertion order.
    order: VecDeque<K>,
    capacity: usize,
    evictions: u64,
}

impl<K: Copy + Eq + Hash, V> Fifo<K, V> {
    fn new(capacity: usize) -> Fifo<K, V> {
        Fifo {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity,
            evictions: 0,
        }
    }

    fn insert(&mut self, key: K, value: V) {
        if self.map.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
            self.evictions += 1;
        }
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
        }
    }
}

/// What one database record says, in the fields farmwatch reads.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    country: Option<Country>,
    city: Option<String>,
    location: Option<Location>,
    asn: Option<u32>,
    as_org: Option<String>,
}

impl Answer {
    fn of(rec: Record<'_>) -> Answer {
        let country = rec
            .country
            .and_then(|c| c.iso_code)
            .or(rec.country_code)
            .or(rec.registered_country.and_then(|c| c.iso_code));
        let location = rec
            .location
            .and_then(|loc| match (loc.latitude, loc.longitude) {
                (Some(lat), Some(lon)) => Some(Location {
                    lat,
                    lon,
                    radius_km: f64::from(loc.accuracy_radius.unwrap_or(0)),
                    source: LocationSource::City,
                }),
                _ => None,
            });
        Answer {
            // A value that is not a country code counts as no answer.
            country: country.and_then(Country::new),
            city: rec
                .city
                .and_then(|c| c.names.get("en").map(|s| s.to_string())),
            location,
            asn: rec.autonomous_system_number,
            as_org: rec.autonomous_system_organization.map(str::to_string),
        }
    }
}

/// The databases [`Geo::open`] opens: city (when configured), country, ASN.
const MAX_READERS: usize = 3;

/// Each database's record for one address, in precedence order (none where it has none or
/// was not asked): what the address cache keeps, three pointers to shared records rather
/// than the strings of a [`GeoInfo`], put together only when [`Geo::lookup`] asks.
#[derive(Default)]
struct Found([Option<Arc<Answer>>; MAX_READERS]);

/// The opened databases and lists. Lookups go through a bounded cache.
pub struct Geo {
    /// In precedence order: city, country, asn (at most [`MAX_READERS`]). The first
    /// database that answers a field wins. The flag marks the embedded databases.
    readers: Vec<(Reader, bool)>,
    hosting: HashMap<u32, Category>,
    high_risk: Vec<String>,
    cache: Mutex<Fifo<IpAddr, Found>>,
    /// Decoded records by (database, offset of the record in it).
    records: Mutex<Fifo<(usize, usize), Arc<Answer>>>,
}

impl Geo {
    /// Opens the configured databases, the embedded ones where none is configured.
    pub fn open(cfg: &GeoConfig) -> Result<Geo, GeoError> {
        let mut readers = Vec::new();
        if let Some(p) = &cfg.city {
            readers.push((open_file(p)?, false));
        }
        readers.push(match &cfg.country {
            Some(p) => (open_file(p)?, false),
            None => (
                open_embedded(EMBEDDED_COUNTRY, "embedded country database")?,
                true,
            ),
        });
        readers.push(match &cfg.asn {
            Some(p) => (open_file(p)?, false),
            None => (open_embedded(EMBEDDED_ASN, "embedded ASN database")?, true),
        });
        let mut hosting = parse_hosting(HOSTING_ASNS, "geoip/hosting-asns.csv")?;
        if let Some(p) = &cfg.hosting_asns {
            let text = std::fs::read_to_string(p)
                .map_err(|e| GeoError(format!("{}: {e}", p.display())))?;
            hosting.extend(parse_hosting(&text, &p.display().to_string())?);
        }
        for c in &cfg.high_risk_countries {
            if !is_country(c) {
                return Err(GeoError(format!(
                    "geoip.high_risk_countries: {c:?} is not an ISO 3166-1 alpha-2 code"
                )));
            }
        }
        Ok(Geo {
            readers,
            hosting,
            high_risk: cfg.high_risk_countries.clone(),
            cache: Mutex::new(Fifo::new(CACHE_CAPACITY)),
            records: Mutex::new(Fifo::new(RECORD_CACHE_CAPACITY)),
        })
    }

    /// The embedded databases and lists, no configuration.
    pub fn embedded() -> Result<Geo, GeoError> {
        Geo::open(&GeoConfig::default())
    }

    /// What the databases say about `ip`. Private, loopback, link-local, shared (CGNAT),
    /// multicast and unspecified addresses have no place: they get an empty answer.
    /// Documentation ranges are answered only by configured databases (the test database
    /// maps them; the embedded whois data places 2001:db8::/32 in JP, its registry).
    /// IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        self.with_found(ip, |found| self.info(found))
    }

    /// The country and ASN of `ip`, as [`Geo::lookup`] has them, read from the records
    /// without putting the rest together: what every flow record carries.
    pub fn country_asn(&self, ip: IpAddr) -> (Option<Country>, Option<u32>) {
        self.with_found(ip, |found| {
            let mut answers = found.0.iter().flatten();
            let country = answers.clone().find_map(|a| a.country);
            (country, answers.find_map(|a| a.asn))
        })
    }

    /// `f` of the records the databases have for `ip`, from the cache when it is there.
    /// Addresses no database is asked about skip the cache: answering them costs less than
    /// a cache probe, and they would push out answers that cost a database lookup.
    fn with_found<T>(&self, ip: IpAddr, f: impl FnOnce(&Found) -> T) -> T {
        let ip = ip.to_canonical();
        if !self.asks_about(ip) {
            return f(&Found::default());
        }
        if let Ok(cache) = self.cache.lock()
            && let Some(hit) = cache.map.get(&ip)
        {
            return f(hit);
        }
        let found = self.find(ip);
        let answer = f(&found);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(ip, found);
        }
        answer
    }

    /// Whether some database is asked about `ip`: never for non-public addresses, and for
    /// documentation ranges only when a configured database may answer.
    fn asks_about(&self, ip: IpAddr) -> bool {
        if is_non_public(ip) {
            return false;
        }
        !is_documentation(ip) || self.readers.iter().any(|(_, embedded)| !embedded)
    }

    /// Each database's record for `ip`, walked down to and decoded (or taken decoded).
    fn find(&self, ip: IpAddr) -> Found {
        let mut found = Found::default();
        let documentation = is_documentation(ip);
        let readers = self.readers.iter().enumerate();
        for ((db, (reader, embedded)), slot) in readers.zip(&mut found.0) {
            if documentation && *embedded {
                continue;
            }
            if let Ok(result) = reader.lookup(ip) {
                *slot = self.answer(db, &result);
            }
        }
        found
    }

    /// What the records say, each field from the first database that answers it.
    fn info(&self, found: &Found) -> GeoInfo {
        let mut info = GeoInfo::default();
        for answer in found.0.iter().flatten() {
            if info.country.is_none() {
                info.country = answer.country.map(|c| c.as_str().to_string());
            }
            if info.city.is_none() {
                info.city.clone_from(&answer.city);
            }
            if info.location.is_none() {
                info.location = answer.location;
            }
            if info.asn.is_none() {
                info.asn = answer.asn;
                info.as_org.clone_from(&answer.as_org);
            }
        }
        if info.location.is_none() {
            info.location = info.country.as_deref().and_then(|c| self.centroid(c));
        }
        info
    }

    /// What the record `result` of database `db` found says, decoded once while it stays
    /// in the record cache. None when the database has no record for the address, or one
    /// this code cannot read (which counts as no answer from that database).
    fn answer(
        &self,
        db: usize,
        result: &maxminddb::LookupResult<'_, Cow<'static, [u8]>>,
    ) -> Option<Arc<Answer>> {
        let key = (db, result.offset()?);
        if let Ok(records) = self.records.lock()
            && let Some(hit) = records.map.get(&key)
        {
            return Some(Arc::clone(hit));
        }
        let answer = Arc::new(Answer::of(result.decode::<Record>().ok()??));
        if let Ok(mut records) = self.records.lock() {
            records.insert(key, Arc::clone(&answer));
        }
        Some(answer)
    }

    /// The country's representative point with a radius that covers its mainland.
    pub fn centroid(&self, country: &str) -> Option<Location> {
        centroid_of(country).map(|&(lat, lon, radius_km)| Location {
            lat,
            lon,
            radius_km,
            source: LocationSource::CountryCentroid,
        })
    }

    /// Whether the ASN is a hosting, VPN or proxy network (shipped list plus config).
    pub fn asn_category(&self, asn: u32) -> Option<Category> {
        self.hosting.get(&asn).copied()
    }

    pub fn is_high_risk(&self, country: &str) -> bool {
        self.high_risk.iter().any(|c| c == country)
    }

    pub fn high_risk_countries(&self) -> &[String] {
        &self.high_risk
    }

    /// Cache entries dropped to stay within [`CACHE_CAPACITY`].
    pub fn cache_evictions(&self) -> u64 {
        self.cache.lock().map(|c| c.evictions).unwrap_or(0)
    }

    /// Each cache's evictions, named as `farmwatch_state_evicted_total` names them: the
    /// addresses' answers and the decoded records within [`RECORD_CACHE_CAPACITY`].
    pub fn evictions(&self) -> [(&'static str, u64); 2] {
        let records = self.records.lock().map(|r| r.evictions).unwrap_or(0);
        [
            ("geo_cache", self.cache_evictions()),
            ("geo_records", records),
        ]
    }

    /// Database types and build dates, for the `geoip` subcommand's header.
    pub fn describe(&self) -> Vec<String> {
        self.readers
            .iter()
            .map(|(r, _)| {
                let m = r.metadata();
                let date = chrono::DateTime::from_timestamp(m.build_epoch as i64, 0)
                    .map(|t| t.format("%Y-%m-%d").to_string())
                    .unwrap_or_default();
                format!("{} (built {date})", m.database_type)
            })
            .collect()
    }
}

fn open_file(path: &Path) -> Result<Reader, GeoError> {
    let bytes = std::fs::read(path).map_err(|e| GeoError(format!("{}: {e}", path.display())))?;
    maxminddb::Reader::from_source(Cow::Owned(bytes))
        .map_err(|e| GeoError(format!("{}: not a MaxMind DB: {e}", path.display())))
}

fn open_embedded(bytes: &'static [u8], what: &str) -> Result<Reader, GeoError> {
    maxminddb::Reader::from_source(Cow::Borrowed(bytes))
        .map_err(|e| GeoError(format!("{what}: {e}")))
}

/// Addresses that no database should place: RFC 1918, loopback, link-local, CGNAT
/// (RFC 6598), multicast, unspecified, reserved; ULA and link-local IPv6. Documentation
/// ranges are handled in [`Geo::lookup`].
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// RFC 5737 (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and RFC 3849 (2001:db8::/32).
pub fn is_documentation(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
            [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
        ),
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0db8],
    }
}

/// `asn,category,status,name,source` lines; `#` starts a comment line.
fn parse_hosting(text: &str, origin: &str) -> Result<HashMap<u32, Category>, GeoError> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.splitn(5, ',');
        let asn = cols.next().map(str::trim).unwrap_or("");
        let cat = cols.next().map(str::trim).unwrap_or("");
        let bad = |what: &str| GeoError(format!("{origin}:{}: {what}", n + 1));
        let asn: u32 = asn
            .trim_start_matches("AS")
            .parse()
            .map_err(|_| bad("asn is not a number"))?;
        let cat =
            Category::parse(cat).ok_or_else(|| bad("category must be hosting, vpn or proxy"))?;
        out.insert(asn, cat);
    }
    Ok(out)
}

/// `country,lat,lon,radius_km,name` with a header line.
fn parse_centroids(text: &str) -> Centroids {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.splitn(5, ',');
            let cc = cols.next()?.as_bytes().try_into().ok()?;
            let lat = cols.next()?.parse().ok()?;
            let lon = cols.next()?.parse().ok()?;
            let r = cols.next()?.parse().ok()?;
            Some((cc, (lat, lon, r)))
        })
        .collect()
}

/// What `farmwatch geoip IP...` prints: one line per address.
pub fn run_geoip(geo: &Geo, ips: &[IpAddr], out: &mut impl Write) -> io::Result<()> {
    for ip in ips {
        writeln!(out, "{}", describe_ip(geo, *ip))?;
    }
    Ok(())
}

/// One human-readable line: `8.8.8.8  country US  AS15169 "Google LLC"  at 38.0000,-97.0000
/// ±2600 km (country centroid)`.
pub fn describe_ip(geo: &Geo, ip: IpAddr) -> String {
    if is_non_public(ip) {
        return format!("{ip}  not a public address (no location)");
    }
    let info = geo.lookup(ip);
    let mut parts = vec![ip.to_string()];
    match &info.country {
        Some(c) if geo.is_high_risk(c) => parts.push(format!("country {c} (high risk)")),
        Some(c) => parts.push(format!("country {c}")),
        None => parts.push("country unknown".to_string()),
    }
    if let Some(city) = &info.city {
        parts.push(format!("city {city}"));
    }
    match (info.asn, &info.as_org) {
        (Some(asn), Some(org)) => parts.push(format!("AS{asn} {org:?}")),
        (Some(asn), None) => parts.push(format!("AS{asn}")),
        _ => parts.push("ASN unknown".to_string()),
    }
    if let Some(cat) = info.asn.and_then(|a| geo.asn_category(a)) {
        parts.push(format!("network {}", cat.as_str()));
    }
    if let Some(loc) = info.location {
        let src = match loc.source {
            LocationSource::City => "city",
            LocationSource::CountryCentroid => "country centroid",
        };
        parts.push(format!(
            "at {:.4},{:.4} ±{:.0} km ({src})",
            loc.lat, loc.lon, loc.radius_km
        ));
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_ranges() {
        for ip in [
            "10.1.2.3",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_non_public(ip.to_canonical()), "{ip}");
        }
        assert!(!is_non_public("8.8.8.8".parse().unwrap()));
        assert!(!is_non_public("100.128.0.1".parse().unwrap()));
    }

    #[test]
    fn country_codes_are_two_ascii_letters() {
        let de = Country::new("de").unwrap();
        assert_eq!(de.as_str(), "DE");
        assert_eq!(serde_json::to_string(&Some(de)).unwrap(), "\"DE\"");
        for bad in ["", "D", "DEU", "D1", "é", "\"A"] {
            assert_eq!(Country::new(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_addresses_a_database_answers_are_cached() {
        let geo = Geo::embedded().unwrap();
        let cached = || geo.cache.lock().unwrap().map.len();
        for ip in ["10.1.2.3", "::ffff:192.168.0.1", "192.0.2.1", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(geo.lookup(ip), GeoInfo::default(), "{ip}");
            assert_eq!(geo.country_asn(ip), (None, None), "{ip}");
        }
        assert_eq!(cached(), 0);
        let google: IpAddr = "8.8.8.8".parse().unwrap();
        let info = geo.lookup(google);
        assert_eq!(cached(), 1);
        let (country, asn) = geo.country_asn(google);
        assert_eq!(country.map(|c| c.as_str().to_string()), info.country);
        assert_eq!((country.is_some(), asn), (true, Some(15169)));
        assert_eq!(cached(), 1);
    }

    /// Addresses of one network share its records: they are decoded once, and answer as a
    /// fresh decode does.
    #[test]
    fn records_are_decoded_once_for_the_addresses_they_answer() {
        let geo = Geo::embedded().unwrap();
        let records = || geo.records.lock().unwrap().map.len();
        let a = geo.lookup("8.8.8.8".parse().unwrap());
        let decoded = records();
        assert!(decoded > 0);
        let b = geo.lookup("8.8.4.4".parse().unwrap());
        assert_eq!(records(), decoded);
        assert_eq!((a.country.as_deref(), a.asn), (Some("US"), Some(15169)));
        assert_eq!(a, b);
        for (db, (reader, _)) in geo.readers.iter().enumerate() {
            let result = reader.lookup("8.8.4.4".parse().unwrap()).unwrap();
            let fresh = Answer::of(result.decode::<Record>().unwrap().unwrap());
            assert_eq!(*geo.answer(db, &result).unwrap(), fresh);
        }
    }

    /// A flow record's country and ASN, read from the records, are the lookup's, from the
    /// cache or not.
    #[test]
    fn country_and_asn_are_the_lookups() {
        let geo = Geo::embedded().unwrap();
        for ip in ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "81.20.14.213"] {
            let ip: IpAddr = ip.parse().unwrap();
            let uncached = Geo::embedded().unwrap().country_asn(ip);
            let info = geo.lookup(ip);
            let (country, asn) = geo.country_asn(ip);
            assert_eq!(
                country.map(|c| c.as_str().to_string()),
                info.country,
                "{ip}"
            );
            assert_eq!(asn, info.asn, "{ip}");
            assert_eq!(uncached, (country, asn), "{ip}");
            assert!(info.asn.is_some() && info.location.is_some(), "{ip}");
        }
    }

    #[test]
    fn caches_keep_their_newest_entries_and_count_the_rest() {
        let mut fifo = Fifo::new(2);
        for key in [1, 2, 2, 3, 4] {
            fifo.insert(key, key * 10);
        }
        assert_eq!(fifo.map.get(&3), Some(&30));
        assert_eq!(fifo.map.get(&4), Some(&40));
        assert_eq!((fifo.map.len(), fifo.evictions), (2, 2));
    }

    #[test]
    fn hosting_list_parses_and_rejects_bad_lines() {
        let m = parse_hosting("# c\n64500,vpn,verified,X,src, with comma\n", "t").unwrap();
        assert_eq!(m.get(&64500), Some(&Category::Vpn));
        let e = parse_hosting("\n64500,cloud,verified,X,src\n", "t").unwrap_err();
        assert_eq!(e.0, "t:2: category must be hosting, vpn or proxy");
        assert!(parse_hosting(HOSTING_ASNS, "shipped").unwrap().len() > 40);
    }

    #[test]
    fn distance_paris_berlin() {
        let p = Location {
            lat: 48.8566,
            lon: 2.3522,
            radius_km: 0.0,
            source: LocationSource::City,
        };
        let b = Location {
            lat: 52.52,
            lon: 13.405,
            radius_km: 0.0,
            source: LocationSource::City,
        };
        let d = p.distance_km(&b);
        assert!((d - 878.0).abs() < 5.0, "{d}");
    }

    #[test]
    fn neighbouring_countries_overlap() {
        let at = |cc: &str| {
            let (lat, lon, radius_km) = *centroid_of(cc).unwrap();
            Location {
                lat,
                lon,
                radius_km,
                source: LocationSource::CountryCentroid,
            }
        };
        assert_eq!(at("DE").min_distance_km(&at("PL")), 0.0);
        assert_eq!(at("US").min_distance_km(&at("CA")), 0.0);
        // Chicago to Shenyang is ~10,300 km; the country radii leave several thousand.
        assert!(at("US").min_distance_km(&at("CN")) > 5000.0);
    }

    #[test]
    fn centroid_table_covers_countries() {
        let c = parse_centroids(CENTROIDS);
        assert!(c.len() > 240);
        let (lat, lon, r) = c[b"DE"];
        assert_eq!((lat, lon, r), (51.0, 9.0, 490.0));
    }
}
