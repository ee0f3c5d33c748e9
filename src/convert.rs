//! `farmwatch sessions`: a VPN's own logs turned into the neutral session feed (DESIGN §3),
//! one JSON line per session event, for `--sessions`.
//!
//! Two sources, read as their projects document them:
//! - OpenVPN's `--status` file, versions 1, 2 and 3 (`CLIENT_LIST` lines; in version 1 the
//!   client list and the routing table, joined on common name and real address). A status
//!   file is a snapshot, so each FILE is one snapshot, in the order given: a session seen
//!   first is a `start` at its "Connected Since", one gone from the next snapshot a `stop`
//!   at that snapshot's time.
//! - FreeRADIUS `detail` files (RFC 2866 accounting records): Acct-Status-Type Start,
//!   Stop and Interim-Update with User-Name and Framed-IP-Address. Other records
//!   (Accounting-On/Off, records without an address) are counted, not converted.
//!
//! A line that does not parse stops the conversion with the file, line and byte offset.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::replay::Failure;

/// The input formats `farmwatch sessions --from` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// OpenVPN `--status` file (status-version 1, 2 or 3).
    OpenvpnStatus,
    /// FreeRADIUS `detail` accounting file.
    RadiusDetail,
}

/// One session-feed line (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    /// RFC 3339, UTC.
    pub ts: String,
    pub account: String,
    pub assigned_ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    /// start, stop or interim.
    pub event: &'static str,
}

/// Where and why a file could not be converted.
#[derive(Debug, PartialEq, Eq)]
pub struct ConvertError {
    pub path: PathBuf,
    pub line: usize,
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: line {} (byte {}): {}",
            self.path.display(),
            self.line,
            self.offset,
            self.message
        )
    }
}

/// What a conversion produced: the records, and the input records it passed over.
#[derive(Debug, Default)]
pub struct Converted {
    pub records: Vec<SessionRecord>,
    /// Input records that are not session events (e.g. RADIUS Accounting-On, a client
    /// without an assigned address), by reason.
    pub skipped: BTreeMap<String, usize>,
}

/// Converts `files` (already read) of one format. `local` is the time zone of timestamps
/// that the source writes in server-local time without a zone.
pub fn convert(
    format: Format,
    files: &[(PathBuf, String)],
    local: Tz,
) -> Result<Converted, ConvertError> {
    let mut out = Converted::default();
    match format {
        Format::OpenvpnStatus => {
            let mut open: BTreeMap<(String, IpAddr, i64), Option<IpAddr>> = BTreeMap::new();
            for (path, text) in files {
                let snapshot = parse_openvpn_status(path, text, local)?;
                for (reason, n) in snapshot.skipped {
                    *out.skipped.entry(reason).or_default() += n;
                }
                let now: BTreeMap<_, _> = snapshot
                    .clients
                    .iter()
                    .map(|c| ((c.account.clone(), c.assigned_ip, c.since), c.public_ip))
                    .collect();
                for ((account, ip, since), public) in &now {
                    if !open.contains_key(&(account.clone(), *ip, *since)) {
                        out.records
                            .push(record(*since, account, *ip, *public, "start"));
                    }
                }
                let updated = snapshot.updated.ok_or_else(|| ConvertError {
                    path: path.clone(),
                    line: 1,
                    offset: 0,
                    message: "no TIME or Updated line: not an OpenVPN status file".into(),
                })?;
                for ((account, ip, since), public) in &open {
                    if !now.contains_key(&(account.clone(), *ip, *since)) {
                        out.records
                            .push(record(updated, account, *ip, *public, "stop"));
                    }
                }
                open = now;
            }
        }
        Format::RadiusDetail => {
            for (path, text) in files {
                parse_radius_detail(path, text, local, &mut out)?;
            }
        }
    }
    // In time order (stable: a start stays before a stop of the same second); the
    // timestamps are all `YYYY-MM-DDTHH:MM:SSZ`, so text order is time order.
    out.records.sort_by(|a, b| a.ts.cmp(&b.ts));
    Ok(out)
}

/// `farmwatch sessions`: converts `files`, writes the feed to `out`, and says on stderr
/// how many records came out and which input records were passed over.
pub fn run(
    format: Format,
    files: &[PathBuf],
    local: Tz,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let texts = files
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| (p.clone(), t))
                .map_err(|e| Failure::Runtime(format!("{}: cannot read: {e}", p.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let converted = convert(format, &texts, local).map_err(|e| Failure::Runtime(e.to_string()))?;
    for r in &converted.records {
        let line = serde_json::to_string(r).map_err(|e| Failure::Runtime(e.to_string()))?;
        writeln!(out, "{line}").map_err(|e| Failure::Runtime(format!("stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::Runtime(format!("stdout: {e}")))?;
    let skipped: Vec<String> = converted
        .skipped
        .iter()
        .map(|(why, n)| format!("{why} ({n})"))
        .collect();
    eprintln!(
        "farmwatch: sessions: {} records from {} files{}",
        converted.records.len(),
        files.len(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; passed over: {}", skipped.join(", "))
        }
    );
    Ok(())
}

fn record(
    ts: i64,
    account: &str,
    assigned_ip: IpAddr,
    public_ip: Option<IpAddr>,
    event: &'static str,
) -> SessionRecord {
    let ts = DateTime::<Utc>::from_timestamp(ts, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    SessionRecord {
        ts,
        account: account.to_string(),
        assigned_ip,
        public_ip,
        event,
    }
}

/// Lines of `text` with their 1-based numbers and byte offsets.
fn lines(text: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let mut offset = 0;
    text.split_inclusive('\n').enumerate().map(move |(i, l)| {
        let at = offset;
        offset += l.len();
        (i + 1, at, l.trim_end_matches(['\n', '\r']))
    })
}

fn fail(path: &Path, line: usize, offset: usize, message: impl Into<String>) -> ConvertError {
    ConvertError {
        path: path.to_path_buf(),
        line,
        offset,
        message: message.into(),
    }
}

/// A time as OpenVPN and FreeRADIUS print it in server-local time: ctime's
/// `Thu Jun 18 08:00:01 2015`, or OpenVPN 2.6's `2015-06-18 08:00:01`.
fn local_time(text: &str, local: Tz) -> Option<i64> {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let naive = ["%a %b %d %H:%M:%S %Y", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&text, f).ok())?;
    // A time in a DST fold is taken at its first occurrence; one in a gap does not exist.
    local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp())
}

/// An OpenVPN real address: `198.51.100.7:51234` (IPv4, and IPv4-mapped IPv6, with the
/// port) or a bare IPv6 address (OpenVPN prints no port there: "too ambiguous").
fn real_address(text: &str) -> Option<IpAddr> {
    text.parse().ok().or_else(|| {
        let (addr, port) = text.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    })
}

struct Client {
    account: String,
    assigned_ip: IpAddr,
    public_ip: Option<IpAddr>,
    since: i64,
}

struct Snapshot {
    updated: Option<i64>,
    clients: Vec<Client>,
    skipped: BTreeMap<String, usize>,
}

/// One OpenVPN status file. Versions 2 and 3 name their columns in `HEADER` lines, which
/// are followed here (OpenVPN has added columns over the years); version 1 has fixed ones.
fn parse_openvpn_status(path: &Path, text: &str, local: Tz) -> Result<Snapshot, ConvertError> {
    let mut snap = Snapshot {
        updated: None,
        clients: Vec::new(),
        skipped: BTreeMap::new(),
    };
    let mut header: Vec<String> = Vec::new();
    // Version 1: CLIENT LIST rows wait for the ROUTING TABLE that gives their addresses.
    let mut v1_section = "";
    let mut v1_clients: Vec<(String, String, i64)> = Vec::new();
    let mut v1_routes: BTreeMap<(String, String), IpAddr> = BTreeMap::new();
    for (n, at, line) in lines(text) {
        if line.is_empty() {
            continue;
        }
        let sep = if line.contains('\t') { '\t' } else { ',' };
        let f: Vec<&str> = line.split(sep).collect();
        let bad = |m: String| fail(path, n, at, m);
        match f[0] {
            "TITLE"
            | "GLOBAL_STATS"
            | "END"
            | "ROUTING_TABLE"
            | "Max bcast/mcast queue length"
            | "Common Name"
            | "Virtual Address" => {}
            "OpenVPN CLIENT LIST" => v1_section = "clients",
            "ROUTING TABLE" => v1_section = "routes",
            "GLOBAL STATS" => v1_section = "",
            "HEADER" if f.get(1) == Some(&"CLIENT_LIST") => {
                header = f[2..].iter().map(|s| s.to_string()).collect();
            }
            "HEADER" => {}
            "TIME" => {
                let unix = f.get(2).and_then(|s| s.parse().ok());
                snap.updated = unix.or_else(|| f.get(1).and_then(|s| local_time(s, local)));
                if snap.updated.is_none() {
                    return Err(bad(format!("cannot read the time in {line:?}")));
                }
            }
            "Updated" => {
                snap.updated = Some(
                    local_time(f.get(1).unwrap_or(&""), local)
                        .ok_or_else(|| bad(format!("cannot read the time in {line:?}")))?,
                );
            }
            "CLIENT_LIST" => {
                if header.is_empty() {
                    return Err(bad("CLIENT_LIST before its HEADER line".into()));
                }
                let col = |name: &str| {
                    header
                        .iter()
                        .position(|h| h == name)
                        .and_then(|i| f.get(i + 1))
                        .map(|s| s.trim())
                };
                let user = col("Username").filter(|u| !u.is_empty() && *u != "UNDEF");
                let Some(account) = user.or(col("Common Name")).filter(|a| !a.is_empty()) else {
                    return Err(bad("a client without a common name or username".into()));
                };
                let since = col("Connected Since (time_t)")
                    .and_then(|s| s.parse().ok())
                    .or_else(|| col("Connected Since").and_then(|s| local_time(s, local)))
                    .ok_or_else(|| bad("cannot read the client's Connected Since".into()))?;
                let public_ip = col("Real Address").and_then(real_address);
                let v4 = col("Virtual Address").filter(|s| !s.is_empty());
                let v6 = col("Virtual IPv6 Address").filter(|s| !s.is_empty());
                let mut any = false;
                for addr in [v4, v6].into_iter().flatten() {
                    let ip = addr
                        .parse()
                        .map_err(|_| bad(format!("virtual address {addr:?} is not an IP")))?;
                    snap.clients.push(Client {
                        account: account.to_string(),
                        assigned_ip: ip,
                        public_ip,
                        since,
                    });
                    any = true;
                }
                if !any {
                    *snap
                        .skipped
                        .entry("OpenVPN client without a virtual address".into())
                        .or_default() += 1;
                }
            }
            _ if v1_section == "clients" => {
                if f.len() < 5 {
                    return Err(bad(format!("a client line with {} fields, not 5", f.len())));
                }
                let since = local_time(f[4], local)
                    .ok_or_else(|| bad(format!("cannot read the time {:?}", f[4])))?;
                v1_clients.push((f[0].to_string(), f[1].to_string(), since));
            }
            _ if v1_section == "routes" => {
                if f.len() < 4 {
                    return Err(bad(format!("a route line with {} fields, not 4", f.len())));
                }
                // Routes to subnets (iroute, "10.9.0.0/24") and MAC addresses (TAP) are not
                // a client's own address; a trailing C marks a cached (learned) route.
                if let Ok(ip) = f[0].trim_end_matches('C').parse::<IpAddr>() {
                    v1_routes
                        .entry((f[1].to_string(), f[2].to_string()))
                        .or_insert(ip);
                }
            }
            _ => return Err(bad(format!("not an OpenVPN status line: {line:?}"))),
        }
    }
    for (cn, real, since) in v1_clients {
        match v1_routes.get(&(cn.clone(), real.clone())) {
            Some(ip) => snap.clients.push(Client {
                account: cn,
                assigned_ip: *ip,
                public_ip: real_address(&real),
                since,
            }),
            None => {
                *snap
                    .skipped
                    .entry("OpenVPN client without a virtual address".into())
                    .or_default() += 1
            }
        }
    }
    Ok(snap)
}

/// FreeRADIUS `detail` files: a record is a line with the time it was written (ctime,
/// server-local), then `Attribute = value` lines indented by a tab, then a blank line.
fn parse_radius_detail(
    path: &Path,
    text: &str,
    local: Tz,
    out: &mut Converted,
) -> Result<(), ConvertError> {
    let mut record: Option<RadiusRecord> = None;
    for (n, at, line) in lines(text) {
        if line.trim().is_empty() {
            if let Some(r) = record.take() {
                r.finish(path, out)?;
            }
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            if let Some(r) = record.take() {
                r.finish(path, out)?;
            }
            let header = local_time(line, local).ok_or_else(|| {
                fail(path, n, at, format!("not a detail record header: {line:?}"))
            })?;
            record = Some(RadiusRecord {
                line: n,
                offset: at,
                header,
                attrs: BTreeMap::new(),
            });
            continue;
        }
        let Some(r) = record.as_mut() else {
            return Err(fail(path, n, at, "an attribute before any record header"));
        };
        let Some((name, value)) = line.trim().split_once(" = ") else {
            return Err(fail(
                path,
                n,
                at,
                format!("not `Attribute = value`: {line:?}"),
            ));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // Tagged attributes (RFC 2868) are written `Tunnel-Client-Endpoint:0 = ...`.
        let name = name.trim();
        let name = name.split_once(':').map_or(name, |(base, _)| base);
        r.attrs.insert(name.to_string(), (value.to_string(), n, at));
    }
    if let Some(r) = record {
        r.finish(path, out)?;
    }
    Ok(())
}

struct RadiusRecord {
    line: usize,
    offset: usize,
    header: i64,
    /// Attribute → (value without quotes, line, offset).
    attrs: BTreeMap<String, (String, usize, usize)>,
}

impl RadiusRecord {
    fn get(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(|(v, _, _)| v.as_str())
    }

    fn fail(&self, path: &Path, name: &str, message: String) -> ConvertError {
        let (line, offset) = self
            .attrs
            .get(name)
            .map_or((self.line, self.offset), |(_, l, o)| (*l, *o));
        fail(path, line, offset, message)
    }

    /// The event's time: Event-Timestamp (the NAS's clock; FreeRADIUS writes it as
    /// `Nov  2 2026 14:03:11 UTC`, or as a number), else Timestamp (when FreeRADIUS wrote
    /// the record, Unix seconds), else the record's header line.
    fn time(&self) -> Option<i64> {
        let event = self.get("Event-Timestamp").and_then(|v| {
            v.parse().ok().or_else(|| {
                let v = v.strip_suffix(" UTC").or_else(|| v.strip_suffix(" GMT"))?;
                let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                NaiveDateTime::parse_from_str(&v, "%b %d %Y %H:%M:%S")
                    .ok()
                    .map(|t| t.and_utc().timestamp())
            })
        });
        event
            .or_else(|| self.get("Timestamp").and_then(|v| v.parse().ok()))
            .or(Some(self.header))
    }

    fn finish(self, path: &Path, out: &mut Converted) -> Result<(), ConvertError> {
        let mut skip = |why: &str| *out.skipped.entry(why.to_string()).or_default() += 1;
        let event = match self.get("Acct-Status-Type") {
            Some("Start" | "1") => "start",
            Some("Stop" | "2") => "stop",
            Some("Interim-Update" | "Alive" | "3") => "interim",
            Some(other) => {
                skip(&format!("RADIUS Acct-Status-Type {other}"));
                return Ok(());
            }
            None => {
                skip("RADIUS record without Acct-Status-Type");
                return Ok(());
            }
        };
        let Some(account) = self.get("User-Name").filter(|u| !u.is_empty()) else {
            skip("RADIUS record without User-Name");
            return Ok(());
        };
        let Some(addr) = self.get("Framed-IP-Address") else {
            skip("RADIUS record without Framed-IP-Address");
            return Ok(());
        };
        let assigned_ip: IpAddr = addr.parse().map_err(|_| {
            self.fail(
                path,
                "Framed-IP-Address",
                format!("Framed-IP-Address {addr:?} is not an IPv4 address"),
            )
        })?;
        // The client's public address: Calling-Station-Id on VPN concentrators (ASA,
        // strongSwan, OpenVPN's RADIUS plugin), or Tunnel-Client-Endpoint (RFC 2868). On
        // other NASes Calling-Station-Id is a MAC or a phone number: then there is none.
        let public_ip = ["Calling-Station-Id", "Tunnel-Client-Endpoint"]
            .iter()
            .find_map(|a| self.get(a).and_then(real_address));
        let ts = self.time().unwrap_or(self.header);
        out.records
            .push(record(ts, account, assigned_ip, public_ip, event));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(format: Format, text: &str) -> Result<Converted, ConvertError> {
        convert(format, &[("in".into(), text.to_string())], Tz::UTC)
    }

    #[test]
    fn real_addresses_as_openvpn_prints_them() {
        assert_eq!(
            real_address("198.51.100.7:51234"),
            "198.51.100.7".parse().ok()
        );
        assert_eq!(real_address("2001:db8::7"), "2001:db8::7".parse().ok());
        assert_eq!(real_address("aa:bb:cc:dd:ee:ff"), None);
        assert_eq!(real_address("198.51.100.7:port"), None);
    }

    #[test]
    fn local_times_in_both_openvpn_styles_and_a_zone() {
        let utc = local_time("Thu Jun 18 08:00:01 2015", Tz::UTC);
        assert_eq!(utc, Some(1_434_614_401));
        assert_eq!(local_time("2015-06-18 08:00:01", Tz::UTC), utc);
        assert_eq!(
            local_time("Mon Nov  2 14:03:11 2026", Tz::UTC),
            Some(1_793_628_191)
        );
        let chicago = local_time("2015-06-18 03:00:01", chrono_tz::America::Chicago);
        assert_eq!(chicago, utc);
        assert_eq!(local_time("yesterday", Tz::UTC), None);
    }

    #[test]
    fn a_v2_client_line_without_its_header_stops_with_the_line() {
        let e = one(
            Format::OpenvpnStatus,
            "TIME,x,1434615135\nCLIENT_LIST,a,1.2.3.4:5,10.8.0.6\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.offset), (2, 18));
        assert!(e.message.contains("HEADER"), "{e}");
    }

    #[test]
    fn a_radius_attribute_without_a_value_stops_with_the_line() {
        let text = "Mon Nov  2 14:03:11 2026\n\tAcct-Status-Type = Start\n\tUser-Name\n";
        let e = one(Format::RadiusDetail, text).unwrap_err();
        assert_eq!((e.line, e.offset), (3, 51));
    }

    #[test]
    fn radius_records_that_are_not_sessions_are_counted() {
        let text = "Mon Nov  2 14:03:11 2026\n\tAcct-Status-Type = Accounting-On\n\n\
                    Mon Nov  2 14:03:12 2026\n\tAcct-Status-Type = Start\n\tUser-Name = \"a\"\n";
        let c = one(Format::RadiusDetail, text).unwrap();
        assert!(c.records.is_empty());
        assert_eq!(c.skipped["RADIUS Acct-Status-Type Accounting-On"], 1);
        assert_eq!(c.skipped["RADIUS record without Framed-IP-Address"], 1);
    }
}
