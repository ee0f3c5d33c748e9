//! A small MaxMind DB writer (MaxMind DB File Format Specification 2.0), so the repository
//! can build its own databases from readable sources: the test database from
//! `geoip/test/test-geo.json`, and the embedded ASN database from the CSV that the
//! `@ip-location-db/asn` package ships (no mmdb form of it is published).
//!
//! Always an IPv6 tree: IPv4 networks live under `::/96`, where readers look for them.
//! Identical records are stored once; output is a pure function of the inserts and the
//! metadata, so a rebuild is byte-for-byte reproducible.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// A data-section value (spec "Output Data Section": the types this project writes).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    F64(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

// Type numbers, spec "Output Data Section".
const TYPE_STRING: u8 = 2;
const TYPE_DOUBLE: u8 = 3;
const TYPE_U16: u8 = 5;
const TYPE_U32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_U64: u8 = 9;
const TYPE_ARRAY: u8 = 11;
const TYPE_BOOL: u8 = 14;

/// Spec "Database Metadata": the marker before the metadata map.
pub const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// Spec "Data Section Separator": 16 zero bytes between tree and data.
const SEPARATOR: usize = 16;

impl Value {
    /// Appends the encoded value (control byte, size, payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Str(s) => {
                control(out, TYPE_STRING, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::F64(f) => {
                control(out, TYPE_DOUBLE, 8);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Value::U16(v) => uint(out, TYPE_U16, u64::from(*v)),
            Value::U32(v) => uint(out, TYPE_U32, u64::from(*v)),
            Value::U64(v) => uint(out, TYPE_U64, *v),
            Value::Bool(b) => control(out, TYPE_BOOL, usize::from(*b)),
            Value::Map(pairs) => {
                control(out, TYPE_MAP, pairs.len());
                for (k, v) in pairs {
                    Value::Str(k.clone()).encode(out);
                    v.encode(out);
                }
            }
            Value::Array(items) => {
                control(out, TYPE_ARRAY, items.len());
                for v in items {
                    v.encode(out);
                }
            }
        }
    }
}

/// Unsigned integers are big-endian with leading zero bytes dropped; size = byte count.
fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = (v.leading_zeros() / 8) as usize;
    let payload = bytes.get(skip..).unwrap_or(&[]);
    control(out, ty, payload.len());
    out.extend_from_slice(payload);
}

/// Control byte: type in the top 3 bits (0 = extended, type - 7 in the next byte), size in
/// the low 5 bits with 29/30/31 announcing 1/2/3 further size bytes.
fn control(out: &mut Vec<u8>, ty: u8, size: usize) {
    let (bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 285 {
        (29, vec![(size - 29) as u8])
    } else if size < 65_821 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        let v = (size - 65_821) as u32;
        (31, v.to_be_bytes().get(1..).unwrap_or(&[]).to_vec())
    };
    if ty <= 7 {
        out.push((ty << 5) | bits);
    } else {
        out.push(bits);
        out.push(ty - 7);
    }
    out.extend_from_slice(&extra);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    Empty,
    Node(u32),
    /// Offset into the data section.
    Data(u32),
}

/// Builds one database in memory; `finish` lays it out.
pub struct Writer {
    database_type: String,
    description: String,
    nodes: Vec<[Record; 2]>,
    data: Vec<u8>,
    offsets: HashMap<Vec<u8>, u32>,
}

impl Writer {
    pub fn new(database_type: &str, description: &str) -> Writer {
        Writer {
            database_type: database_type.to_string(),
            description: description.to_string(),
            nodes: vec![[Record::Empty; 2]],
            data: Vec::new(),
            offsets: HashMap::new(),
        }
    }

    /// Maps `net` to `value`. A more specific network inserted later splits the earlier
    /// one; a network inserted later replaces whatever it covers.
    pub fn insert(&mut self, net: IpNet, value: &Value) {
        let (bits, len) = match net.trunc() {
            IpNet::V4(n) => (u128::from(u32::from(n.network())), 96 + n.prefix_len()),
            IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
        };
        let mut encoded = Vec::new();
        value.encode(&mut encoded);
        let next = self.data.len() as u32;
        let offset = *self.offsets.entry(encoded.clone()).or_insert(next);
        if offset == next {
            self.data.extend_from_slice(&encoded);
        }
        self.insert_bits(bits, len, Record::Data(offset));
    }

    /// Maps every address from `first` to `last` (same family), as the fewest CIDRs.
    pub fn insert_range(&mut self, first: IpAddr, last: IpAddr, value: &Value) {
        for net in range_to_cidrs(first, last) {
            self.insert(net, value);
        }
    }

    fn insert_bits(&mut self, bits: u128, len: u8, rec: Record) {
        if len == 0 {
            self.nodes = vec![[rec; 2]];
            return;
        }
        let mut node = 0usize;
        for depth in 0..len {
            let side = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == len {
                self.nodes[node][side] = rec;
                return;
            }
            node = match self.nodes[node][side] {
                Record::Node(n) => n as usize,
                other => {
                    // Empty or a less specific network: push it down one level.
                    self.nodes.push([other; 2]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][side] = Record::Node(n as u32);
                    n
                }
            };
        }
    }

    /// The finished file: search tree, separator, data section, metadata.
    pub fn finish(self, build_epoch: u64) -> Vec<u8> {
        let node_count = self.nodes.len() as u64;
        let max = node_count + SEPARATOR as u64 + self.data.len() as u64;
        let record_size: u16 = if max < 1 << 24 {
            24
        } else if max < 1 << 28 {
            28
        } else {
            32
        };
        let value = |r: Record| -> u32 {
            match r {
                Record::Empty => node_count as u32,
                Record::Node(n) => n,
                Record::Data(off) => (node_count + SEPARATOR as u64) as u32 + off,
            }
        };
        let mut out = Vec::with_capacity(self.nodes.len() * 7 + self.data.len() + 512);
        for [l, r] in &self.nodes {
            let (l, r) = (value(*l).to_be_bytes(), value(*r).to_be_bytes());
            match record_size {
                24 => {
                    out.extend_from_slice(&l[1..]);
                    out.extend_from_slice(&r[1..]);
                }
                28 => {
                    out.extend_from_slice(&l[1..]);
                    out.push((l[0] << 4) | (r[0] & 0x0f));
                    out.extend_from_slice(&r[1..]);
                }
                _ => {
                    out.extend_from_slice(&l);
                    out.extend_from_slice(&r);
                }
            }
        }
        out.extend_from_slice(&[0; SEPARATOR]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(METADATA_MARKER);
        let metadata = Value::Map(vec![
            ("binary_format_major_version".into(), Value::U16(2)),
            ("binary_format_minor_version".into(), Value::U16(0)),
            ("build_epoch".into(), Value::U64(build_epoch)),
            ("database_type".into(), Value::Str(self.database_type)),
            (
                "description".into(),
                Value::Map(vec![("en".into(), Value::Str(self.description))]),
            ),
            ("ip_version".into(), Value::U16(6)),
            (
                "languages".into(),
                Value::Array(vec![Value::Str("en".into())]),
            ),
            ("node_count".into(), Value::U32(node_count as u32)),
            ("record_size".into(), Value::U16(record_size)),
        ]);
        metadata.encode(&mut out);
        out
    }
}

/// The fewest CIDR blocks covering `first..=last`; empty when the families differ or
/// `first > last`.
pub fn range_to_cidrs(first: IpAddr, last: IpAddr) -> Vec<IpNet> {
    let (mut lo, hi, width, v4) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (
            u128::from(u32::from(a)),
            u128::from(u32::from(b)),
            32u32,
            true,
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128, false),
        _ => return vec![],
    };
    let mut out = Vec::new();
    while lo <= hi {
        // Largest aligned block starting at `lo` that ends within `hi`.
        let mut size_bits = lo.trailing_zeros().min(width);
        while size_bits > 0 {
            let span = if size_bits >= 128 {
                u128::MAX
            } else {
                (1u128 << size_bits) - 1
            };
            if lo.checked_add(span).is_some_and(|end| end <= hi) {
                break;
            }
            size_bits -= 1;
        }
        let prefix = (width - size_bits) as u8;
        let addr = if v4 {
            IpAddr::from((lo as u32).to_be_bytes())
        } else {
            IpAddr::from(lo.to_be_bytes())
        };
        if let Ok(net) = IpNet::new(addr, prefix) {
            out.push(net);
        }
        let step = if size_bits >= 128 {
            break;
        } else {
            1u128 << size_bits
        };
        match lo.checked_add(step) {
            Some(next) => lo = next,
            None => break,
        }
    }
    out
}

/// One network of the readable test-database source (`geoip/test/test-geo.json`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceNetwork {
    network: IpNet,
    country: Option<String>,
    city: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u16>,
    asn: Option<u32>,
    as_org: Option<String>,
    /// Free text for the reader of the JSON; not written.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    database_type: String,
    description: String,
    build_epoch: u64,
    networks: Vec<SourceNetwork>,
}

/// Builds a database in GeoIP2-City plus GeoLite2-ASN layout from the JSON source, so
/// one file serves as `country`, `city` and `asn` database in tests.
pub fn build_from_json(json: &str) -> Result<Vec<u8>, String> {
    let src: Source = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut w = Writer::new(&src.database_type, &src.description);
    for n in &src.networks {
        let mut rec = Vec::new();
        if let Some(asn) = n.asn {
            rec.push(("autonomous_system_number".to_string(), Value::U32(asn)));
        }
        if let Some(org) = &n.as_org {
            rec.push((
                "autonomous_system_organization".to_string(),
                Value::Str(org.clone()),
            ));
        }
        if let Some(city) = &n.city {
            let names = Value::Map(vec![("en".into(), Value::Str(city.clone()))]);
            rec.push((
                "city".to_string(),
                Value::Map(vec![("names".into(), names)]),
            ));
        }
        if let Some(cc) = &n.country {
            let iso = Value::Map(vec![("iso_code".into(), Value::Str(cc.clone()))]);
            rec.push(("country".to_string(), iso));
        }
        if let (Some(lat), Some(lon)) = (n.latitude, n.longitude) {
            let mut loc = Vec::new();
            if let Some(r) = n.accuracy_radius {
                loc.push(("accuracy_radius".to_string(), Value::U16(r)));
            }
            loc.push(("latitude".to_string(), Value::F64(lat)));
            loc.push(("longitude".to_string(), Value::F64(lon)));
            rec.push(("location".to_string(), Value::Map(loc)));
        }
        w.insert(n.network, &Value::Map(rec));
    }
    Ok(w.finish(src.build_epoch))
}

/// Builds a GeoLite2-ASN-layout database from ip-location-db's `asn-ipv4.csv` and
/// `asn-ipv6.csv` (`first,last,asn,org`, org quoted when it holds a comma). Adjacent rows
/// of one AS are merged first, which keeps the tree small. Returns the database and the
/// number of lines that were skipped as unreadable.
pub fn build_asn_from_csv(csvs: &[&str], build_epoch: u64) -> (Vec<u8>, usize) {
    let mut w = Writer::new(
        "farmwatch-ASN",
        "IP to ASN from @ip-location-db/asn (RouteViews, RIRs, DB-IP ASN Lite; CC BY 4.0)",
    );
    let mut skipped = 0;
    for csv in csvs {
        let mut pending: Option<(IpAddr, IpAddr, u32, String)> = None;
        for line in csv.lines().filter(|l| !l.trim().is_empty()) {
            let f = csv_fields(line);
            let row = match f.as_slice() {
                [a, b, asn, org, ..] => a
                    .parse::<IpAddr>()
                    .ok()
                    .zip(b.parse::<IpAddr>().ok())
                    .zip(asn.parse::<u32>().ok())
                    .map(|((a, b), asn)| (a, b, asn, org.clone())),
                _ => None,
            };
            let Some((first, last, asn, org)) = row else {
                skipped += 1;
                continue;
            };
            if let Some(p) = &mut pending
                && p.2 == asn
                && p.3 == org
                && next_addr(p.1) == Some(first)
            {
                p.1 = last;
                continue;
            }
            if let Some(p) = pending.replace((first, last, asn, org)) {
                insert_asn(&mut w, p);
            }
        }
        if let Some(p) = pending {
            insert_asn(&mut w, p);
        }
    }
    (w.finish(build_epoch), skipped)
}

fn insert_asn(w: &mut Writer, (first, last, asn, org): (IpAddr, IpAddr, u32, String)) {
    let mut rec = vec![("autonomous_system_number".to_string(), Value::U32(asn))];
    if !org.is_empty() {
        rec.push((
            "autonomous_system_organization".to_string(),
            Value::Str(org),
        ));
    }
    w.insert_range(first, last, &Value::Map(rec));
}

fn next_addr(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|n| IpAddr::from(n.to_be_bytes())),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|n| IpAddr::from(n.to_be_bytes())),
    }
}

/// Splits one CSV line (RFC 4180 quoting: `"a, b"`, `""` for a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_spec_examples() {
        // Spec "Output Data Section": a uint16 of 500 is 0xA2 0x01 0xF4; strings of 29+
        // bytes take one extra size byte.
        let mut out = Vec::new();
        Value::U16(500).encode(&mut out);
        assert_eq!(out, [0xa2, 0x01, 0xf4]);
        out.clear();
        Value::Str("a".repeat(30)).encode(&mut out);
        assert_eq!(&out[..2], &[0x5d, 0x01]);
        out.clear();
        // Extended type: boolean true = control 0x01, type byte 14 - 7.
        Value::Bool(true).encode(&mut out);
        assert_eq!(out, [0x01, 0x07]);
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            csv_fields(r#"1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc.""#),
            ["1.0.0.0", "1.0.0.255", "13335", "Cloudflare, Inc."]
        );
        assert_eq!(csv_fields(r#"a,"""Q"" PP""#), ["a", r#""Q" PP"#]);
    }

    #[test]
    fn asn_rows_merge_and_read_back() {
        let csv = "192.0.2.0,192.0.2.127,64500,\"Example, Inc.\"\n192.0.2.128,192.0.2.255,64500,\"Example, Inc.\"\nbad line\n";
        let (db, skipped) = build_asn_from_csv(&[csv], 0);
        assert_eq!(skipped, 1);
        let r = maxminddb::Reader::from_source(db).unwrap();
        let asn: maxminddb::geoip2::Asn = r
            .lookup("192.0.2.200".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert_eq!(asn.autonomous_system_number, Some(64500));
        assert_eq!(asn.autonomous_system_organization, Some("Example, Inc."));
    }

    #[test]
    fn splits_ranges_into_cidrs() {
        let nets = range_to_cidrs("192.0.2.1".parse().unwrap(), "192.0.2.6".parse().unwrap());
        let s: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            s,
            [
                "192.0.2.1/32",
                "192.0.2.2/31",
                "192.0.2.4/31",
                "192.0.2.6/32"
            ]
        );
        let all = range_to_cidrs(
            "::".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        );
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].to_string(), "::/0");
    }

    #[test]
    fn written_database_reads_back() {
        let mut w = Writer::new("farmwatch-Test", "unit test");
        let v = Value::Map(vec![("n".into(), Value::U32(7))]);
        w.insert("198.51.100.0/24".parse().unwrap(), &v);
        w.insert(
            "198.51.100.128/25".parse().unwrap(),
            &Value::Map(vec![("n".into(), Value::U32(8))]),
        );
        let db = w.finish(1);
        let reader = maxminddb::Reader::from_source(db).unwrap();
        let n = |ip: &str| -> Option<u32> {
            reader
                .lookup(ip.parse().unwrap())
                .unwrap()
                .decode_path(&[maxminddb::PathElement::Key("n")])
                .unwrap()
        };
        assert_eq!(n("198.51.100.1"), Some(7));
        assert_eq!(n("198.51.100.200"), Some(8));
        assert_eq!(n("198.51.101.1"), None);
        assert_eq!(reader.metadata().record_size, 24);
    }
}
