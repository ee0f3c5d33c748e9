//! The account inventory, `accounts.toml` (DESIGN §3): who the contractors, employees and
//! service accounts are, where they say they live, and which inside addresses are theirs.
//!
//! Loading is strict: every problem that makes the inventory unusable (syntax, unknown
//! keys, duplicate ids, bad kinds, bad addresses, hosts shared between accounts, unknown
//! allowed countries) is reported with its line and field, all at once. What an account
//! *declares* about a person (phone, country, time zone) is data, not configuration: a
//! bad value there is a finding (`kind: inventory`), because wrongly formatted phone
//! numbers and mismatched countries are tell-tale signs named in public reporting on
//! laptop-farm schemes. `farmwatch check` lists both.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::event::{Event, Kind, Severity};
use crate::geo::is_country;
use crate::timestamp::Timestamp;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    Contractor,
    Employee,
    Service,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Contractor => "contractor",
            AccountKind::Employee => "employee",
            AccountKind::Service => "service",
        }
    }
}

impl FromStr for AccountKind {
    type Err = ();
    fn from_str(s: &str) -> Result<AccountKind, ()> {
        match s {
            "contractor" => Ok(AccountKind::Contractor),
            "employee" => Ok(AccountKind::Employee),
            "service" => Ok(AccountKind::Service),
            _ => Err(()),
        }
    }
}

/// An account as identity hands it out: cheap to clone. `kind` is None for an account
/// that a session feed or RADIUS names but the inventory does not list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize)]
pub struct AccountRef {
    pub id: Arc<str>,
    pub kind: Option<AccountKind>,
}

/// One `[[account]]`, validated. Lines point into the file, for findings.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub kind: AccountKind,
    pub name: Option<String>,
    /// As written; may be unknown (an inventory finding, not a load error).
    pub declared_country: Option<String>,
    pub declared_timezone: Option<String>,
    /// The parsed zone, when `declared_timezone` is a known IANA name.
    pub timezone: Option<chrono_tz::Tz>,
    pub phone: Option<String>,
    /// Default: `[declared_country]`.
    pub allowed_countries: Vec<String>,
    pub hosts: Vec<IpNet>,
    /// Line of the `[[account]]` header and of each declared field.
    pub line: usize,
    lines: FieldLines,
}

#[derive(Clone, Debug, Default)]
struct FieldLines {
    country: Option<usize>,
    timezone: Option<usize>,
    phone: Option<usize>,
}

impl Account {
    pub fn account_ref(&self) -> AccountRef {
        AccountRef {
            id: Arc::from(self.id.as_str()),
            kind: Some(self.kind),
        }
    }
}

/// A problem in a file, with the line (1-based) and the field path (`account[2].phone`,
/// 0-based index) where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    account: Vec<Spanned<RawAccount>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    id: Spanned<String>,
    kind: Spanned<String>,
    name: Option<String>,
    declared_country: Option<Spanned<String>>,
    declared_timezone: Option<Spanned<String>>,
    phone: Option<Spanned<String>>,
    allowed_countries: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
}

/// The validated inventory.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub accounts: Vec<Account>,
    /// File name, for findings and messages.
    pub file: String,
    /// Index into `accounts` by id: events look their account up one at a time.
    by_id: HashMap<String, usize>,
    /// Every static host range as `(first, last, index into accounts)`, sorted by `first`.
    /// Ranges never overlap (the parser refuses that), so a binary search finds the one
    /// owner: the account stage asks for every address it sees.
    hosts: Vec<(u128, u128, usize)>,
}

impl Inventory {
    pub fn load(path: &Path) -> Result<Inventory, Vec<Problem>> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Inventory::parse(&text, &file),
            Err(e) => Err(vec![Problem {
                file,
                line: None,
                field: String::new(),
                message: e.to_string(),
            }]),
        }
    }

    /// Parses and validates; `file` names the source in problems.
    pub fn parse(text: &str, file: &str) -> Result<Inventory, Vec<Problem>> {
        let lines = LineIndex::new(text);
        let line_of = |offset: usize| lines.line(offset);
        let problem = |line: Option<usize>, field: String, message: String| Problem {
            file: file.to_string(),
            line,
            field,
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(s.start));
            let message = e.message().trim().to_string();
            vec![problem(line, String::new(), message)]
        })?;
        let mut problems = Vec::new();
        let mut accounts: Vec<Account> = Vec::new();
        // Header line of each id, so a duplicate is found without a scan per account.
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (i, acct) in raw.account.iter().enumerate() {
            let header = line_of(acct.span().start);
            let a = acct.get_ref();
            let at = |field: &str| format!("account[{i}].{field}");
            let id = a.id.get_ref().trim().to_string();
            if id.is_empty() {
                problems.push(problem(
                    Some(line_of(a.id.span().start)),
                    at("id"),
                    "is empty".into(),
                ));
            }
            if let Some(first) = first_line.get(&id) {
                problems.push(problem(
                    Some(line_of(a.id.span().start)),
                    at("id"),
                    format!("duplicate id {id:?} (first at line {first})"),
                ));
            } else {
                first_line.insert(id.clone(), header);
            }
            let kind = a.kind.get_ref().parse().unwrap_or_else(|()| {
                problems.push(problem(
                    Some(line_of(a.kind.span().start)),
                    at("kind"),
                    format!(
                        "{:?} is not contractor, employee or service",
                        a.kind.get_ref()
                    ),
                ));
                AccountKind::Contractor
            });
            let mut hosts = Vec::new();
            for (j, h) in a.hosts.iter().enumerate() {
                match parse_host(h.get_ref()) {
                    Some(net) => hosts.push(net),
                    None => problems.push(problem(
                        Some(line_of(h.span().start)),
                        at(&format!("hosts[{j}]")),
                        format!("{:?} is not an IP address or CIDR", h.get_ref()),
                    )),
                }
            }
            let declared_country = a.declared_country.as_ref().map(|c| c.get_ref().clone());
            let allowed_countries = match &a.allowed_countries {
                Some(list) => {
                    for (j, c) in list.iter().enumerate() {
                        if !is_country(c.get_ref()) {
                            problems.push(problem(
                                Some(line_of(c.span().start)),
                                at(&format!("allowed_countries[{j}]")),
                                format!("{:?} is not an ISO 3166-1 alpha-2 code", c.get_ref()),
                            ));
                        }
                    }
                    list.iter().map(|c| c.get_ref().clone()).collect()
                }
                None => declared_country.iter().cloned().collect(),
            };
            let declared_timezone = a.declared_timezone.as_ref().map(|t| t.get_ref().clone());
            accounts.push(Account {
                id,
                kind,
                name: a.name.clone(),
                timezone: declared_timezone.as_deref().and_then(|t| t.parse().ok()),
                declared_country,
                declared_timezone,
                phone: a.phone.as_ref().map(|p| p.get_ref().clone()),
                allowed_countries,
                hosts,
                line: header,
                lines: FieldLines {
                    country: a.declared_country.as_ref().map(|c| line_of(c.span().start)),
                    timezone: a
                        .declared_timezone
                        .as_ref()
                        .map(|t| line_of(t.span().start)),
                    phone: a.phone.as_ref().map(|p| line_of(p.span().start)),
                },
            });
        }
        problems.extend(overlapping_hosts(&raw.account, &accounts, &lines, file));
        if problems.is_empty() {
            Ok(Inventory::indexed(accounts, file))
        } else {
            problems.sort_by(|a, b| (a.line, &a.field).cmp(&(b.line, &b.field)));
            Err(problems)
        }
    }

    /// The inventory of `accounts` with its look-up indexes.
    fn indexed(accounts: Vec<Account>, file: &str) -> Inventory {
        let mut by_id = HashMap::with_capacity(accounts.len());
        let mut hosts = Vec::new();
        for (i, a) in accounts.iter().enumerate() {
            by_id.entry(a.id.clone()).or_insert(i);
            hosts.extend(a.hosts.iter().map(|n| {
                let (first, last) = bounds(*n);
                (first, last, i)
            }));
        }
        hosts.sort_unstable();
        Inventory {
            accounts,
            file: file.to_string(),
            by_id,
            hosts,
        }
    }

    pub fn get(&self, id: &str) -> Option<&Account> {
        self.accounts.get(*self.by_id.get(id)?)
    }

    /// The account whose static `hosts` contain `ip` (hosts never overlap between
    /// accounts, so there is at most one).
    pub fn static_owner(&self, ip: IpAddr) -> Option<&Account> {
        self.accounts.get(self.static_index(ip)?)
    }

    /// Index into `accounts` of [`Inventory::static_owner`].
    pub fn static_index(&self, ip: IpAddr) -> Option<usize> {
        let x = match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let after = self.hosts.partition_point(|&(first, _, _)| first <= x);
        let &(_, last, i) = self.hosts.get(after.checked_sub(1)?)?;
        (x <= last).then_some(i)
    }

    /// Findings about declared data, in file order: `phone_format`, `unknown_country`,
    /// `unknown_timezone`.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if let Some(c) = &a.declared_country
                && !is_country(c)
            {
                out.push(Finding {
                    account: i,
                    reason: "unknown_country",
                    line: a.lines.country,
                    field: format!("account[{i}].declared_country"),
                    message: format!("{c:?} is not an ISO 3166-1 alpha-2 code"),
                });
            }
            if let Some(tz) = &a.declared_timezone
                && a.timezone.is_none()
            {
                out.push(Finding {
                    account: i,
                    reason: "unknown_timezone",
                    line: a.lines.timezone,
                    field: format!("account[{i}].declared_timezone"),
                    message: format!("{tz:?} is not an IANA time zone"),
                });
            }
            if let Some(phone) = &a.phone
                && let Err(message) = check_phone(phone, a.declared_country.as_deref())
            {
                out.push(Finding {
                    account: i,
                    reason: "phone_format",
                    line: a.lines.phone,
                    field: format!("account[{i}].phone"),
                    message,
                });
            }
        }
        out
    }
}

/// A finding about one account's declared data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Index into `Inventory::accounts`.
    pub account: usize,
    /// `phone_format`, `unknown_country` or `unknown_timezone`.
    pub reason: &'static str,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

/// Where the lines of a text start, found in one pass, so naming the line of every field
/// costs a binary search rather than a count from the top (quadratic in a large inventory).
struct LineIndex {
    /// Byte offset of every `\n`, ascending.
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: (text.bytes().enumerate())
                .filter_map(|(at, b)| (b == b'\n').then_some(at))
                .collect(),
        }
    }

    /// 1-based line of a byte offset (past the end: the last line).
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

fn parse_host(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return (net.trunc() == net).then_some(net);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Hosts of different accounts that overlap: identity could not tell them apart.
/// Sorted by first address, each network is compared with the widest-reaching earlier one.
fn overlapping_hosts(
    raw: &[Spanned<RawAccount>],
    accounts: &[Account],
    lines: &LineIndex,
    file: &str,
) -> Vec<Problem> {
    let mut nets: Vec<(u128, u128, usize, usize)> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        for (j, h) in a.get_ref().hosts.iter().enumerate() {
            if let Some(net) = parse_host(h.get_ref()) {
                let (lo, hi) = bounds(net);
                nets.push((lo, hi, i, j));
            }
        }
    }
    nets.sort();
    let mut out = Vec::new();
    let mut reach: Option<(u128, usize, usize)> = None;
    for &(lo, hi, i, j) in &nets {
        if let Some((end, pi, pj)) = reach {
            if lo <= end && pi != i {
                let h = &raw[i].get_ref().hosts[j];
                let other = &raw[pi].get_ref().hosts[pj];
                out.push(Problem {
                    file: file.to_string(),
                    line: Some(lines.line(h.span().start)),
                    field: format!("account[{i}].hosts[{j}]"),
                    message: format!(
                        "{} overlaps {} of account {:?} (line {})",
                        h.get_ref(),
                        other.get_ref(),
                        accounts.get(pi).map_or("", |a| a.id.as_str()),
                        lines.line(other.span().start)
                    ),
                });
            }
            if hi > end {
                reach = Some((hi, i, j));
            }
        } else {
            reach = Some((hi, i, j));
        }
    }
    out
}

/// First and last address, IPv4 mapped into IPv6 space so the families never mix.
fn bounds(net: IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(n.network().to_ipv6_mapped()),
            u128::from(n.broadcast().to_ipv6_mapped()),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// E.164: `+`, a calling code and a number valid for it (spaces and dashes allowed), and
/// the calling code must be the declared country's.
pub fn check_phone(phone: &str, declared_country: Option<&str>) -> Result<(), String> {
    if !phone.trim_start().starts_with('+') {
        return Err(format!("{phone:?} is not E.164: no +country code"));
    }
    let number =
        phonenumber::parse(None, phone).map_err(|e| format!("{phone:?} is not E.164: {e}"))?;
    if !phonenumber::is_valid(&number) {
        return Err(format!("{phone:?} is not a valid number"));
    }
    let code = number.code().value();
    let expected = declared_country
        .and_then(|c| phonenumber::metadata::DATABASE.by_id(c))
        .map(|m| m.country_code());
    match (declared_country, expected) {
        (Some(c), Some(want)) if want != code => Err(format!(
            "calling code +{code} does not fit declared country {c} (+{want})"
        )),
        _ => Ok(()),
    }
}

/// The inventory checks' reasons and their weights in the account's risk score: a phone
/// number that does not fit is a sign named in public reporting; an unknown country or
/// time zone is a data problem, not evidence.
pub const REASONS: &[crate::detect::Reason] = &[
    crate::detect::Reason {
        name: "phone_format",
        weight: 10.0,
    },
    crate::detect::Reason {
        name: "unknown_country",
        weight: 0.0,
    },
    crate::detect::Reason {
        name: "unknown_timezone",
        weight: 0.0,
    },
];

/// The inventory findings as events (`kind: inventory`), in file order. `ts` is the time
/// the inventory was loaded in packet time (the first packet's, in a replay).
pub fn inventory_events(inv: &Inventory, ts: Timestamp) -> Vec<Event> {
    inv.findings()
        .into_iter()
        .filter_map(|f| {
            let a = inv.accounts.get(f.account)?;
            let severity = match f.reason {
                "phone_format" => Severity::Medium,
                _ => Severity::Low,
            };
            // The id comes from kind, reason and account; the key adds nothing that
            // shifts when accounts are reordered in the file.
            let mut e = Event::new(ts, Kind::Inventory, f.reason, severity, "")
                .evidence("field", f.field.clone())
                .evidence("detail", f.message.clone());
            if let Some(line) = f.line {
                e = e.evidence("line", line);
            }
            if let Some(c) = &a.declared_country {
                e = e.evidence("declared_country", c.clone());
            }
            e.account = Some(a.id.clone());
            e.summary = format!("Account {} in {}: {}", a.id, inv.file, f.message);
            Some(e)
        })
        .collect()
}

/// `farmwatch check` for the inventory: prints every problem, one per line, to `out`;
/// returns whether it is clean (exit 0) or not (exit 2).
pub fn run_check(accounts_path: &Path, out: &mut impl std::io::Write) -> std::io::Result<bool> {
    let (lines, ok) = check(accounts_path);
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(ok)
}

/// What `farmwatch check` prints for the inventory: every problem, one per line, and
/// whether it is clean (exit 0) or not (exit 2).
pub fn check(accounts_path: &Path) -> (Vec<String>, bool) {
    match Inventory::load(accounts_path) {
        Err(problems) => {
            // Parsing stops at the first bad key; list every one, then what the rest says.
            let text = std::fs::read_to_string(accounts_path).unwrap_or_default();
            let (parse, rest) = crate::config::every_parse_error::<RawFile>(accounts_path, &text);
            let mut lines: Vec<String> = parse.iter().map(|p| p.to_string()).collect();
            match Inventory::parse(&rest, &accounts_path.display().to_string()) {
                Err(more) if !lines.is_empty() => {
                    lines.extend(more.iter().map(|p| p.to_string()));
                    lines.dedup();
                }
                _ if !lines.is_empty() => {}
                _ => lines = problems.iter().map(|p| p.to_string()).collect(),
            }
            (lines, false)
        }
        Ok(inv) => {
            let lines: Vec<String> = inv
                .findings()
                .into_iter()
                .map(|f| {
                    Problem {
                        file: inv.file.clone(),
                        line: f.line,
                        field: f.field,
                        message: format!("{} ({})", f.message, f.reason),
                    }
                    .to_string()
                })
                .collect();
            let ok = lines.is_empty();
            (lines, ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_lists_every_unknown_key_not_only_the_first() {
        let path = std::env::temp_dir().join(format!("accounts-check-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[[account]]\nid = \"a\"\nkind = \"contractor\"\nknd = \"x\"\n\n\
             [[account]]\nid = \"b\"\nkind = \"employee\"\nphon = \"x\"\n",
        )
        .unwrap();
        let (lines, ok) = check(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(!ok);
        let at: Vec<&str> = lines
            .iter()
            .map(|l| l.split(": ").next().unwrap())
            .collect();
        let file = path.display().to_string();
        assert_eq!(at, [format!("{file}:4"), format!("{file}:9")], "{lines:?}");
    }

    #[test]
    fn lines_from_offsets() {
        let t = LineIndex::new("a\nbb\nc");
        assert_eq!(t.line(0), 1);
        assert_eq!(t.line(1), 1);
        assert_eq!(t.line(2), 2);
        assert_eq!(t.line(5), 3);
        assert_eq!(t.line(99), 3);
    }

    #[test]
    fn hosts_parse() {
        assert_eq!(
            parse_host("10.8.0.12"),
            Some("10.8.0.12/32".parse().unwrap())
        );
        assert_eq!(
            parse_host("10.8.0.0/24"),
            Some("10.8.0.0/24".parse().unwrap())
        );
        // Host bits set: a typo more often than not.
        assert_eq!(parse_host("10.8.0.1/24"), None);
        assert_eq!(parse_host("10.8.0.300"), None);
    }

    #[test]
    fn owners_are_found_by_binary_search() {
        let text = r#"
[[account]]
id = "a"
kind = "contractor"
hosts = ["10.8.0.0/24", "2001:db8::/64"]
[[account]]
id = "b"
kind = "employee"
hosts = ["10.8.1.7"]
[[account]]
id = "c"
kind = "service"
"#;
        let inv = Inventory::parse(text, "t.toml").unwrap();
        let owner = |ip: &str| inv.static_owner(ip.parse().unwrap()).map(|a| a.id.as_str());
        assert_eq!(owner("10.8.0.0"), Some("a"));
        assert_eq!(owner("10.8.0.255"), Some("a"));
        assert_eq!(owner("::ffff:10.8.0.9"), Some("a"));
        assert_eq!(owner("2001:db8::1"), Some("a"));
        assert_eq!(owner("10.8.1.7"), Some("b"));
        assert_eq!(owner("10.8.1.6"), None);
        assert_eq!(owner("10.8.1.8"), None);
        assert_eq!(owner("9.255.255.255"), None);
        assert_eq!(inv.get("c").map(|a| a.kind), Some(AccountKind::Service));
        assert!(inv.get("d").is_none());
    }

    #[test]
    fn phones() {
        assert_eq!(check_phone("+1 312 555 0142", Some("US")), Ok(()));
        let e = check_phone("+86 138 0013 8000", Some("US")).unwrap_err();
        assert_eq!(e, "calling code +86 does not fit declared country US (+1)");
        assert!(
            check_phone("312-555-0142", Some("US"))
                .unwrap_err()
                .contains("no +country code")
        );
    }
}
