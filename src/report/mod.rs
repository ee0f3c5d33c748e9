//! The forensic case file (`replay --report FILE.html`): one self-contained HTML file an
//! analyst can read and hand on without the JSON lines. What the detectors decided (a
//! host's role, a chain's legs, an RTT bound, a foreign working week) it reads from their
//! findings' typed evidence ([`crate::event::Evidence`]) and never decides again. Rust does
//! the arithmetic (ranking, time zones, clusters) and embeds the result as JSON; a small
//! inline script draws tables and SVG charts from it. Nothing from the wire reaches the
//! page as markup: the JSON is escaped so it cannot end its `<script>` element, and the
//! script inserts every value with `textContent`.

pub mod collect;
mod hours;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::account_stage::Context;
use crate::app::App;
use crate::config::Config;
use crate::event::{
    Leg, OperatorLatencyEvidence, Role, RttDistanceEvidence, RttSplitEvidence, SessionEvidence,
    SteppingStoneEvidence, Via,
};
use crate::flows::record::FlowRecord;
use crate::geo::{Geo, Location, LocationSource};
use crate::identity::PublicIpObservation;
use crate::metrics::Stats;
use crate::timestamp::Timestamp;
pub use collect::Collector;
use collect::{Tally, TallyKey};
use hours::{Heat, heat};

const TEMPLATE: &str = include_str!("template.html");
const STYLE: &str = include_str!("report.css");
const SCRIPT: &str = include_str!("report.js");

/// Accounts drawn with charts; the rest are listed in the ranking only.
const CHARTED_ACCOUNTS: usize = 50;
/// Findings listed under one account (all are in the findings table).
const EVENTS_PER_ACCOUNT: usize = 200;
/// Flow records linked from one finding.
const LINKS_PER_EVENT: usize = 5;
/// Light in fibre covers about 200 km per millisecond, so a round trip over `d` km takes
/// at least d / 100 ms.
const KM_PER_MS_ROUND_TRIP: f64 = 100.0;

/// A capture file as the report's header names it.
#[derive(Clone, Debug, Serialize)]
pub struct InputFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Records cut off at the end of the file, and packets skipped (unknown link type).
    pub truncated: u64,
    pub skipped: u64,
}

impl InputFile {
    /// Size and SHA-256 of the file as it is on disk now.
    pub fn hash(path: &Path) -> std::io::Result<InputFile> {
        let mut file = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size = size.saturating_add(n as u64);
            h.update(buf.get(..n).unwrap_or_default());
        }
        Ok(InputFile {
            path: path.display().to_string(),
            size,
            sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            truncated: 0,
            skipped: 0,
        })
    }
}

/// Everything besides the collector that the report states.
pub struct ReportInput<'a> {
    pub files: Vec<InputFile>,
    pub config: &'a Config,
    pub context: &'a Context,
    pub stats: &'a Stats,
    pub first_ts: Option<Timestamp>,
    pub last_ts: Option<Timestamp>,
}

/// One line of the top-findings table (terminal and report).
#[derive(Clone, Debug, Serialize)]
pub struct TopFinding {
    pub account: Option<String>,
    pub kind: &'static str,
    pub reason: &'static str,
    pub severity: &'static str,
    pub count: u64,
    pub first: Timestamp,
    pub last: Timestamp,
}

/// The tallies ranked: severity, then count, then first seen.
pub fn top_findings(c: &Collector, limit: usize) -> Vec<TopFinding> {
    let mut rows: Vec<(&TallyKey, &Tally)> = c.tally.iter().collect();
    rows.sort_by(|(ka, a), (kb, b)| {
        kb.3.cmp(&ka.3)
            .then(b.count.cmp(&a.count))
            .then(a.first.cmp(&b.first))
    });
    rows.into_iter()
        .take(limit)
        .map(|((account, kind, reason, sev), t)| TopFinding {
            account: account.clone(),
            kind,
            reason,
            severity: sev.as_str(),
            count: t.count,
            first: t.first,
            last: t.last,
        })
        .collect()
}

/// `s` safe to print on a terminal: C0 and C1 control characters and DEL become escapes
/// like `\u{1b}`, so a name from the wire (a RADIUS User-Name, a feed's account) cannot
/// move the cursor, retitle the window or ring the bell. Everything else is left as it is.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The top findings as a fixed-width text table, for the terminal. Account names may come
/// from the wire: they are printed through [`terminal_safe`].
pub fn top_findings_table(c: &Collector, limit: usize) -> String {
    let rows = top_findings(c, limit);
    if rows.is_empty() {
        return String::new();
    }
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.account
                    .as_deref()
                    .map_or_else(|| "-".to_string(), |a| terminal_safe(a).into_owned()),
                format!("{}/{}", r.kind, r.reason),
                r.severity.to_string(),
                r.count.to_string(),
                r.first.rfc3339(),
            ]
        })
        .collect();
    let head = ["account", "finding", "severity", "count", "first seen"];
    let mut width = head.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::from(" ");
        for (i, (c, w)) in row.iter().zip(width).enumerate() {
            // Counts align right, text left.
            if i == 3 {
                s.push_str(&format!(" {c:>w$}"));
            } else {
                s.push_str(&format!(" {c:<w$}"));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head.map(str::to_string));
    for row in &cells {
        out.push_str(&line(row));
    }
    let total = c.tally.len();
    if total > rows.len() {
        out.push_str(&format!("  ... and {} more\n", total - rows.len()));
    }
    out
}

/// The report page: template, style, script and the data.
pub fn render(c: &Collector, input: &ReportInput<'_>) -> String {
    let data = build(c, input);
    let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_string());
    TEMPLATE
        .replacen("/*STYLE*/", STYLE, 1)
        .replacen("/*SCRIPT*/", SCRIPT, 1)
        // Last, so nothing in the data is ever taken for a placeholder.
        .replacen("/*DATA*/", &script_safe(&json), 1)
}

/// JSON that cannot leave a `<script>` element: `<`, `>` and `&` only occur inside JSON
/// strings, where their `\u` escapes mean the same, so `</script>` and `<!--` never appear.
fn script_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 64);
    for ch in json.chars() {
        match ch {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Serialize)]
struct Data {
    meta: Meta,
    health: Health,
    top: Vec<TopFinding>,
    accounts: Vec<AccountView>,
    events: Vec<EventView>,
    flows: Vec<Value>,
    rd_sessions: Vec<RdSession>,
    rd_flows: Vec<RdFlow>,
    relay_chains: Vec<RelayChain>,
    rtt_splits: Vec<RttSplit>,
    operators: Vec<Operator>,
    clusters: Vec<Cluster>,
}

#[derive(Serialize)]
struct Meta {
    version: &'static str,
    files: Vec<InputFile>,
    first_ts: Option<Timestamp>,
    last_ts: Option<Timestamp>,
    packets: u64,
    bytes: u64,
    flows_total: u64,
    sensor: Vec<(&'static str, String)>,
    databases: Vec<String>,
    accounts_file: String,
    limits: Limits,
}

/// What the report left out, so the reader knows.
#[derive(Serialize)]
struct Limits {
    flows_seen: u64,
    flows_kept: usize,
    flows_not_kept: u64,
    uncited_flows_kept_max: usize,
    notable_flows_kept_max: usize,
    events_not_kept: u64,
    observations_not_kept: u64,
    /// Findings counted in no (account, finding) row, flows in no account-hour, RTT
    /// samples of addresses not followed: their tables were full.
    tallies_not_kept: u64,
    activity_not_kept: u64,
    rtt_not_kept: u64,
    charted_accounts: usize,
    events_per_account: usize,
}

#[derive(Serialize)]
struct Health {
    decode_errors: BTreeMap<&'static str, u64>,
    truncated_records: u64,
    capture_drops_kernel: u64,
    capture_drops_interface: u64,
    flows_evicted: BTreeMap<&'static str, u64>,
    flows_by_app: BTreeMap<&'static str, u64>,
    sink_errors: BTreeMap<&'static str, u64>,
    geo_cache_evictions: u64,
    /// Address-to-account ranges dropped (too many per address) and stops that matched
    /// no session: places where a flow may be tied to nobody or the wrong account.
    identity_ranges_evicted: u64,
    identity_unmatched_stops: u64,
}

#[derive(Serialize)]
struct EventView {
    ts: Timestamp,
    id: String,
    kind: &'static str,
    reason: &'static str,
    severity: &'static str,
    account: Option<String>,
    host: Option<IpAddr>,
    flow: Option<String>,
    app: Option<&'static str>,
    summary: String,
    evidence: Value,
    /// Indices into `flows` of the records this finding cites.
    flows: Vec<usize>,
}

#[derive(Serialize)]
struct AccountView {
    id: String,
    name: Option<String>,
    kind: Option<&'static str>,
    declared_country: Option<String>,
    declared_timezone: Option<String>,
    in_inventory: bool,
    risk: f64,
    /// `scorer` (the alert detector's score) or `severity` (summed severity weights).
    risk_source: &'static str,
    reasons: Vec<TopFinding>,
    events: Vec<usize>,
    events_total: usize,
    charted: bool,
    heat: Option<Heat>,
    sessions: Vec<SessionView>,
    rtt: Vec<RttPoint>,
    /// Each kept session's operator round trip, and the ceiling it is held against.
    latency: Vec<LatencyPoint>,
    ceiling: Option<Ceiling>,
    rd: Vec<usize>,
    rd_flows: Vec<usize>,
    flows: u64,
}

#[derive(Serialize)]
struct SessionView {
    ts: Timestamp,
    public_ip: IpAddr,
    assigned_ip: Option<IpAddr>,
    country: Option<String>,
    asn: Option<u32>,
    as_org: Option<String>,
    source: &'static str,
}

#[derive(Serialize)]
struct RttPoint {
    ip: Option<String>,
    country: Option<String>,
    distance_km: f64,
    rtt_ms: f64,
    bound_ms: f64,
    source: String,
}

/// A session's operator round trip (`latency_floor_ms` of its flow record).
#[derive(Serialize)]
struct LatencyPoint {
    /// The flow record (index into `flows`).
    flow: usize,
    ts: Timestamp,
    floor_ms: f64,
    app: Option<&'static str>,
    /// The session's client: the viewer, or a relay in front of it.
    peer: IpAddr,
}

/// The domestic ceiling an account's latest `operator_latency` finding named. Without a
/// finding the report knows no ceiling: the detector names one only when it is exceeded.
#[derive(Serialize)]
struct Ceiling {
    ms: f64,
    country: String,
    source: String,
}

/// A remote-desktop session as `persistent_stream` reported it, from its latest finding:
/// the role is the detector's decision, never worked out again here.
#[derive(Serialize)]
struct RdSession {
    /// The finding (index into `events`).
    finding: usize,
    /// When the session started.
    ts: Timestamp,
    /// Its span when last reported.
    duration_s: u64,
    app: Option<&'static str>,
    account: Option<String>,
    severity: &'static str,
    host: Option<IpAddr>,
    /// What the inside host is: `controlled`, `controller` or `undetermined`.
    role: Role,
    peer: Option<IpAddr>,
    via: Via,
    bytes_from_host: u64,
    bytes_to_host: u64,
    /// The session's busiest flow among the kept records.
    flow: Option<usize>,
    /// The round trip to the person at the viewer (`flows::latency`), when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_floor_ms: Option<f64>,
}

/// A remote-desktop flow record that no session finding cites: shorter than the reported
/// span, or another flow of a reported session. No role: no detector decided one.
#[derive(Serialize)]
struct RdFlow {
    flow: usize,
    ts: Timestamp,
    duration_s: f64,
    app: &'static str,
    account: Option<String>,
    src: String,
    dst: String,
    bytes_orig: u64,
    bytes_resp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_floor_ms: Option<f64>,
}

/// A `stepping_stone` finding's legs: `source` reaches `host` on the inbound flow, and
/// `host` reaches `target` on the outbound one.
#[derive(Serialize)]
struct RelayChain {
    finding: usize,
    ts: Timestamp,
    account: Option<String>,
    severity: &'static str,
    source: IpAddr,
    host: Option<IpAddr>,
    target: IpAddr,
    inbound: String,
    outbound: String,
    delta_ms: u64,
    hits: u32,
    /// The kept records of the two legs.
    flows: Vec<usize>,
}

/// An `operator_latency` finding: how far the person at a session is, against the ceiling
/// of the declared country.
#[derive(Serialize)]
struct Operator {
    finding: usize,
    ts: Timestamp,
    account: Option<String>,
    severity: &'static str,
    host: Option<IpAddr>,
    #[serde(flatten)]
    evidence: OperatorLatencyEvidence,
}

/// An `rtt_split` finding's relay and the two legs it timed.
#[derive(Serialize)]
struct RttSplit {
    finding: usize,
    ts: Timestamp,
    account: Option<String>,
    severity: &'static str,
    host: Option<IpAddr>,
    relay: IpAddr,
    relay_side: String,
    evidence: String,
    connections: u64,
    extra_ms: f64,
    /// Each side as `TCP ms / application ms`, or why it was not timed.
    responder_leg: String,
    originator_leg: String,
    flows: Vec<usize>,
}

#[derive(Serialize)]
struct Cluster {
    public_ip: IpAddr,
    country: Option<String>,
    asn: Option<u32>,
    accounts: Vec<ClusterAccount>,
    days: Vec<String>,
}

#[derive(Serialize)]
struct ClusterAccount {
    id: String,
    days: Vec<String>,
}

fn build(c: &Collector, input: &ReportInput<'_>) -> Data {
    let geo = &input.context.geo;
    let inventory = input.context.identity.inventory();
    let flows: Vec<Value> = c
        .flows
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    let events = event_views(c);

    let sensor_location = sensor_location(input.config, geo);
    let mut ids: BTreeSet<String> = inventory.accounts.iter().map(|a| a.id.clone()).collect();
    ids.extend(c.events.iter().filter_map(|e| e.account.clone()));
    ids.extend(c.activity.keys().map(|(a, _)| a.clone()));
    ids.extend(c.observations.iter().map(|o| o.account.id.to_string()));

    let rd = rd_sessions(c, &events);
    let rd_flows = rd_flows(c, &rd);
    let events_of = by_account(&c.events, |e| e.account.as_deref());
    let observations_of = by_account(&c.observations, |o| Some(&*o.account.id));
    let rd_of = by_account(&rd, |s| s.account.as_deref());
    let rd_flows_of = by_account(&rd_flows, |s| s.account.as_deref());
    let mut reasons_of: HashMap<String, Vec<TopFinding>> = HashMap::new();
    for t in top_findings(c, usize::MAX) {
        if let Some(a) = &t.account {
            reasons_of.entry(a.clone()).or_default().push(t);
        }
    }
    let mut accounts: Vec<AccountView> = ids
        .into_iter()
        .map(|id| {
            let declared = inventory.get(&id);
            let reasons = reasons_of.remove(&id).unwrap_or_default();
            let mine = events_of.get(id.as_str()).map_or(&[][..], Vec::as_slice);
            let (risk, risk_source) = match input.stats.account_risk.get(&id) {
                Some(r) => (*r, "scorer"),
                None => (
                    reasons
                        .iter()
                        .map(|t| severity_weight(t.severity) * t.count as f64)
                        .sum(),
                    "severity",
                ),
            };
            let flows_n: u64 = c
                .activity
                .range((id.clone(), i64::MIN)..=(id.clone(), i64::MAX))
                .map(|(_, n)| u64::from(*n))
                .sum();
            AccountView {
                name: declared.and_then(|a| a.name.clone()),
                kind: declared.map(|a| a.kind.as_str()),
                declared_country: declared.and_then(|a| a.declared_country.clone()),
                declared_timezone: declared.and_then(|a| a.declared_timezone.clone()),
                in_inventory: declared.is_some(),
                risk: (risk * 100.0).round() / 100.0,
                risk_source,
                events_total: mine.len(),
                events: mine.iter().copied().take(EVENTS_PER_ACCOUNT).collect(),
                reasons,
                charted: false,
                heat: None,
                rtt: Vec::new(),
                latency: Vec::new(),
                ceiling: None,
                rd: rd_of.get(id.as_str()).cloned().unwrap_or_default(),
                rd_flows: rd_flows_of.get(id.as_str()).cloned().unwrap_or_default(),
                sessions: Vec::new(),
                flows: flows_n,
                id,
            }
        })
        .collect();
    accounts.sort_by(|a, b| {
        b.risk
            .total_cmp(&a.risk)
            .then(b.events_total.cmp(&a.events_total))
            .then(b.flows.cmp(&a.flows))
            .then(a.id.cmp(&b.id))
    });
    // Charts, and the sessions they draw, only for the accounts ranked first among those
    // with anything to draw.
    for a in accounts
        .iter_mut()
        .filter(|a| {
            a.events_total > 0 || a.flows > 0 || observations_of.contains_key(a.id.as_str())
        })
        .take(CHARTED_ACCOUNTS)
    {
        a.charted = true;
        a.sessions = observations_of
            .get(a.id.as_str())
            .into_iter()
            .flatten()
            .filter_map(|&i| c.observations.get(i))
            .map(|o| session_view(o, geo))
            .collect();
        let declared = inventory.get(&a.id);
        a.heat = Some(heat(c, &a.id, declared.and_then(|d| d.timezone), &a.events));
        a.rtt = rtt_points(c, a, geo, sensor_location.as_ref());
        let all_events = events_of.get(a.id.as_str()).map_or(&[][..], Vec::as_slice);
        (a.latency, a.ceiling) = latency_points(c, &a.id, all_events);
    }

    let s = &input.config.sensor;
    let net = &input.config.network;
    let join = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut sensor = vec![("name", s.name.clone())];
    if let (Some(lat), Some(lon)) = (s.latitude, s.longitude) {
        sensor.push(("position", format!("{lat}, {lon}")));
    }
    if let Some(cc) = &s.country {
        sensor.push(("country", cc.clone()));
    }
    sensor.push((
        "inside",
        join(net.inside.iter().map(|n| n.to_string()).collect()),
    ));
    sensor.push((
        "vpn_pool",
        join(net.vpn_pool.iter().map(|n| n.to_string()).collect()),
    ));
    sensor.push((
        "concentrators",
        join(net.concentrators.iter().map(|n| n.to_string()).collect()),
    ));

    let st = input.stats;
    Data {
        meta: Meta {
            version: env!("CARGO_PKG_VERSION"),
            files: input.files.clone(),
            first_ts: input.first_ts,
            last_ts: input.last_ts,
            packets: st.packets,
            bytes: st.bytes,
            flows_total: st.flows_total,
            sensor,
            // One file may serve several roles (country, city, ASN): name it once.
            databases: geo
                .describe()
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            accounts_file: inventory.file.clone(),
            limits: Limits {
                flows_seen: c.flows_seen,
                flows_kept: c.flows.len(),
                flows_not_kept: c.flows_not_kept(),
                uncited_flows_kept_max: collect::MAX_UNCITED_FLOWS,
                notable_flows_kept_max: collect::MAX_NOTABLE_FLOWS,
                events_not_kept: c.events_not_kept,
                observations_not_kept: c.observations_not_kept,
                tallies_not_kept: c.tallies_not_kept,
                activity_not_kept: c.activity_not_kept,
                rtt_not_kept: c.rtt_not_kept,
                charted_accounts: CHARTED_ACCOUNTS,
                events_per_account: EVENTS_PER_ACCOUNT,
            },
        },
        health: Health {
            decode_errors: st.decode_errors.clone(),
            truncated_records: st.truncated_records,
            capture_drops_kernel: st.capture_drops_kernel,
            capture_drops_interface: st.capture_drops_interface,
            flows_evicted: st.flows_evicted.clone(),
            flows_by_app: st.flows_by_app.clone(),
            sink_errors: st.sink_errors.clone(),
            geo_cache_evictions: geo.cache_evictions(),
            identity_ranges_evicted: input.context.identity.stats().ranges_evicted,
            identity_unmatched_stops: input.context.identity.stats().unmatched_stops,
        },
        top: top_findings(c, 20),
        accounts,
        relay_chains: relay_chains(c, &events),
        rtt_splits: rtt_splits(c, &events),
        operators: c
            .events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                Some(Operator {
                    evidence: e.read::<OperatorLatencyEvidence>()?,
                    finding: i,
                    ts: e.ts,
                    account: e.account.clone(),
                    severity: e.severity.as_str(),
                    host: e.host,
                })
            })
            .collect(),
        events,
        flows,
        rd_sessions: rd,
        rd_flows,
        clusters: clusters(&c.observations, geo),
    }
}

/// Indices of `items` grouped by the account each belongs to, in order.
fn by_account<'a, T>(
    items: &'a [T],
    account: impl Fn(&'a T) -> Option<&'a str>,
) -> HashMap<&'a str, Vec<usize>> {
    let mut out: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(a) = account(item) {
            out.entry(a).or_default().push(i);
        }
    }
    out
}

fn severity_weight(s: &str) -> f64 {
    match s {
        "critical" => 10.0,
        "high" => 6.0,
        "medium" => 3.0,
        "low" => 1.0,
        _ => 0.0,
    }
}

/// Findings with the indices of the flow records they cite by 5-tuple: the event's `flow`
/// and the legs its typed evidence names.
fn event_views(c: &Collector) -> Vec<EventView> {
    let mut by_tuple: HashMap<collect::Tuple, Vec<usize>> = HashMap::new();
    for (i, r) in c.flows.iter().enumerate() {
        by_tuple.entry(collect::tuple_of(r)).or_default().push(i);
    }
    c.events
        .iter()
        .map(|e| {
            let mut linked: BTreeSet<usize> = BTreeSet::new();
            for f in collect::cited_flows(e) {
                let t = collect::tuple_of_ref(&f);
                linked.extend(by_tuple.get(&t).into_iter().flatten().copied());
            }
            // A reused 5-tuple matches several records: the ones nearest the finding.
            let mut linked: Vec<usize> = linked.into_iter().collect();
            linked.sort_by_key(|&i| c.flows.get(i).map_or(u64::MAX, |r| time_apart(r, e.ts)));
            linked.truncate(LINKS_PER_EVENT);
            linked.sort_unstable();
            EventView {
                ts: e.ts,
                id: e.id.clone(),
                kind: e.kind.as_str(),
                reason: e.reason,
                severity: e.severity.as_str(),
                account: e.account.clone(),
                host: e.host,
                flow: e.flow.as_ref().map(|f| {
                    format!(
                        "{} {} → {}",
                        f.proto,
                        endpoint(f.src_ip, f.src_port),
                        endpoint(f.dst_ip, f.dst_port)
                    )
                }),
                app: e.app.map(App::as_str),
                summary: e.summary.clone(),
                evidence: Value::Object(e.evidence.clone()),
                flows: linked,
            }
        })
        .collect()
}

/// Nanoseconds between `ts` and the flow's lifetime (zero inside it).
fn time_apart(r: &FlowRecord, ts: Timestamp) -> u64 {
    if ts < r.ts {
        r.ts.0 - ts.0
    } else {
        ts.0.saturating_sub(r.end.0)
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn session_view(o: &PublicIpObservation, geo: &Geo) -> SessionView {
    let g = geo.lookup(o.public_ip);
    SessionView {
        ts: o.ts,
        public_ip: o.public_ip,
        assigned_ip: o.assigned_ip,
        country: g.country,
        asn: g.asn,
        as_org: g.as_org,
        source: o.source.as_str(),
    }
}

/// The remote-desktop sessions the `persistent_stream` findings report, one row per
/// session (host, tool, start) from its latest finding.
fn rd_sessions(c: &Collector, views: &[EventView]) -> Vec<RdSession> {
    // A session is its start, host and tool; each tier reports it again, longer.
    type Session = (Timestamp, Option<IpAddr>, Option<App>);
    let mut latest: BTreeMap<Session, (usize, SessionEvidence)> = BTreeMap::new();
    for (i, e) in c.events.iter().enumerate() {
        let Some(s) = e.read::<SessionEvidence>() else {
            continue;
        };
        let key = (s.session_start, e.host, e.app);
        if latest
            .get(&key)
            .is_none_or(|(_, seen)| seen.duration_s <= s.duration_s)
        {
            latest.insert(key, (i, s));
        }
    }
    latest
        .into_values()
        .filter_map(|(i, s)| {
            let e = c.events.get(i)?;
            // The record of the session's busiest flow: the event's own flow.
            let flow = e.flow.as_ref().and_then(|f| {
                let t = collect::tuple_of_ref(f);
                views
                    .get(i)?
                    .flows
                    .iter()
                    .copied()
                    .find(|&k| c.flows.get(k).is_some_and(|r| collect::tuple_of(r) == t))
            });
            Some(RdSession {
                finding: i,
                ts: s.session_start,
                duration_s: s.duration_s,
                app: e.app.map(App::as_str),
                account: e.account.clone(),
                severity: e.severity.as_str(),
                host: e.host,
                role: s.role,
                peer: s.peer,
                via: s.via,
                bytes_from_host: s.bytes_from_host,
                bytes_to_host: s.bytes_to_host,
                latency_floor_ms: flow.and_then(|k| c.flows.get(k)?.latency_floor_ms),
                flow,
            })
        })
        .collect()
}

/// The operator round trips of `account`'s kept flow records, and the ceiling named by the
/// latest of its findings (`events`, indices into `c.events`) that judged one.
fn latency_points(
    c: &Collector,
    account: &str,
    events: &[usize],
) -> (Vec<LatencyPoint>, Option<Ceiling>) {
    let points = c
        .flows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.account.as_deref() == Some(account))
        .filter_map(|(i, r)| {
            Some(LatencyPoint {
                flow: i,
                ts: r.ts,
                floor_ms: r.latency_floor_ms?,
                app: r.app,
                peer: r.src_ip,
            })
        })
        .collect();
    let ceiling = events
        .iter()
        .filter_map(|&i| c.events.get(i)?.read::<OperatorLatencyEvidence>())
        .next_back()
        .map(|e| Ceiling {
            ms: e.domestic_ceiling_ms,
            country: e.declared_country,
            source: e.ceiling_source,
        });
    (points, ceiling)
}

/// Remote-desktop flow records among the kept ones that no session row cites.
fn rd_flows(c: &Collector, sessions: &[RdSession]) -> Vec<RdFlow> {
    let cited: BTreeSet<usize> = sessions.iter().filter_map(|s| s.flow).collect();
    c.flows
        .iter()
        .enumerate()
        .filter(|(i, _)| !cited.contains(i))
        .filter_map(|(i, r)| {
            let app = App::ALL
                .into_iter()
                .find(|a| Some(a.as_str()) == r.app)
                .filter(|a| a.is_remote_desktop())?;
            Some(RdFlow {
                flow: i,
                ts: r.ts,
                duration_s: r.duration_s,
                app: app.as_str(),
                account: r.account.clone(),
                src: endpoint(r.src_ip, r.src_port),
                dst: endpoint(r.dst_ip, r.dst_port),
                bytes_orig: r.bytes_orig,
                bytes_resp: r.bytes_resp,
                latency_floor_ms: r.latency_floor_ms,
            })
        })
        .collect()
}

/// The legs of each `stepping_stone` finding, from its typed evidence.
fn relay_chains(c: &Collector, views: &[EventView]) -> Vec<RelayChain> {
    let show = |f: &crate::event::FlowRef| {
        format!(
            "{} {} → {}",
            f.proto,
            endpoint(f.src_ip, f.src_port),
            endpoint(f.dst_ip, f.dst_port)
        )
    };
    c.events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let chain = e.read::<SteppingStoneEvidence>()?;
            Some(RelayChain {
                finding: i,
                ts: e.ts,
                account: e.account.clone(),
                severity: e.severity.as_str(),
                source: chain.inbound_flow.src_ip,
                host: e.host,
                target: chain.outbound_flow.dst_ip,
                inbound: show(&chain.inbound_flow),
                outbound: show(&chain.outbound_flow),
                delta_ms: chain.delta_ms,
                hits: chain.hits,
                flows: views.get(i).map(|v| v.flows.clone()).unwrap_or_default(),
            })
        })
        .collect()
}

/// The relays `rtt_split` found, with the legs it timed, from its typed evidence.
fn rtt_splits(c: &Collector, views: &[EventView]) -> Vec<RttSplit> {
    let leg = |l: &Leg| match l {
        Leg::Measured {
            tcp_rtt_ms,
            app_rtt_ms,
            ..
        } => format!("{tcp_rtt_ms} ms TCP / {app_rtt_ms} ms application"),
        Leg::Skipped { skipped } => format!("not timed ({skipped})"),
    };
    c.events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let split = e.read::<RttSplitEvidence>()?;
            Some(RttSplit {
                finding: i,
                ts: e.ts,
                account: e.account.clone(),
                severity: e.severity.as_str(),
                host: e.host,
                relay: split.relay,
                responder_leg: leg(&split.responder_side),
                originator_leg: leg(&split.originator_side),
                relay_side: split.relay_side,
                evidence: split.evidence,
                connections: split.connections,
                extra_ms: split.extra_ms,
                flows: views.get(i).map(|v| v.flows.clone()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Where the sensor is: its configured position, else its country's centroid.
fn sensor_location(config: &Config, geo: &Geo) -> Option<Location> {
    let s = &config.sensor;
    match (s.latitude, s.longitude) {
        (Some(lat), Some(lon)) => Some(Location {
            lat,
            lon,
            radius_km: 0.0,
            source: LocationSource::City,
        }),
        _ => s.country.as_deref().and_then(|cc| geo.centroid(cc)),
    }
}

/// The least RTT to each public address the account came from, against the speed-of-light
/// bound for the place the databases put it; plus the figures of `rtt_distance` findings.
fn rtt_points(
    c: &Collector,
    a: &AccountView,
    geo: &Geo,
    sensor: Option<&Location>,
) -> Vec<RttPoint> {
    let mut out = Vec::new();
    if let Some(sensor) = sensor {
        let ips: BTreeSet<IpAddr> = a.sessions.iter().map(|s| s.public_ip).collect();
        for ip in ips {
            let (Some(rtt), g) = (c.min_rtt.get(&ip), geo.lookup(ip)) else {
                continue;
            };
            let Some(loc) = g.location else { continue };
            let d = sensor.min_distance_km(&loc);
            out.push(RttPoint {
                ip: Some(ip.to_string()),
                country: g.country,
                distance_km: d.round(),
                rtt_ms: *rtt,
                bound_ms: (d / KM_PER_MS_ROUND_TRIP * 100.0).round() / 100.0,
                source: "least handshake RTT".to_string(),
            });
        }
    }
    for &i in &a.events {
        let Some(e) = c.events.get(i) else { continue };
        let Some(f) = e.read::<RttDistanceEvidence>() else {
            continue;
        };
        out.push(RttPoint {
            ip: Some(f.public_ip.to_string()),
            country: f.country,
            distance_km: f.distance_km,
            rtt_ms: f.min_rtt_ms,
            bound_ms: f.fibre_bound_ms,
            source: format!("finding {}", e.id),
        });
    }
    out
}

/// Public addresses that more than one account came from, with the days (UTC) each did.
fn clusters(observations: &[PublicIpObservation], geo: &Geo) -> Vec<Cluster> {
    let mut by_ip: BTreeMap<IpAddr, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for o in observations {
        by_ip
            .entry(o.public_ip)
            .or_default()
            .entry(o.account.id.to_string())
            .or_default()
            .insert(o.ts.rfc3339().get(..10).unwrap_or_default().to_string());
    }
    by_ip
        .into_iter()
        .filter(|(_, accounts)| accounts.len() > 1)
        .map(|(ip, accounts)| {
            let g = geo.lookup(ip);
            let days: BTreeSet<String> = accounts.values().flatten().cloned().collect();
            Cluster {
                public_ip: ip,
                country: g.country,
                asn: g.asn,
                accounts: accounts
                    .into_iter()
                    .map(|(id, days)| ClusterAccount {
                        id,
                        days: days.into_iter().collect(),
                    })
                    .collect(),
                days: days.into_iter().collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, FlowRef, Kind, Severity};

    #[test]
    fn terminal_safe_escapes_every_control_character() {
        assert_eq!(terminal_safe("jdoe"), "jdoe");
        assert_eq!(terminal_safe("Zoë 李"), "Zoë 李");
        assert_eq!(
            terminal_safe("a\u{1b}[2Jb\u{7}\u{7f}\u{9b}\t\n"),
            "a\\u{1b}[2Jb\\u{7}\\u{7f}\\u{9b}\\u{9}\\u{a}"
        );
    }

    #[test]
    fn script_safe_json_cannot_close_the_script_element() {
        let hostile = serde_json::json!({
            "sni": "</script><script>alert(1)</script>",
            "dns": "<!--<img src=x onerror=alert(2)>-->&amp;\u{2028}",
        });
        let json = serde_json::to_string(&hostile).unwrap();
        let safe = script_safe(&json);
        for bad in ["<", ">", "&", "\u{2028}"] {
            assert!(!safe.contains(bad), "{bad} left in {safe}");
        }
        // The escapes mean the same to a JSON parser.
        assert_eq!(serde_json::from_str::<Value>(&safe).unwrap(), hostile);
    }

    #[test]
    fn top_findings_rank_by_severity_then_count() {
        let mut c = Collector::new(false);
        let mut add = |account: &str, kind, reason, severity, secs| {
            let mut e = Event::new(Timestamp::from_secs(secs), kind, reason, severity, "");
            e.account = Some(account.to_string());
            c.event(&e);
        };
        add(
            "a",
            Kind::RemoteDesktop,
            "persistent_stream",
            Severity::Medium,
            10,
        );
        add(
            "a",
            Kind::RemoteDesktop,
            "persistent_stream",
            Severity::Medium,
            5,
        );
        add(
            "b",
            Kind::Alert,
            "laptop_farm_suspected",
            Severity::Critical,
            20,
        );
        add("b", Kind::Inventory, "phone_format", Severity::Medium, 1);
        let top = top_findings(&c, 10);
        let order: Vec<&str> = top.iter().map(|t| t.reason).collect();
        assert_eq!(
            order,
            ["laptop_farm_suspected", "persistent_stream", "phone_format"]
        );
        assert_eq!(top[1].count, 2);
        assert_eq!(top[1].first, Timestamp::from_secs(5));
        // Without `full` nothing but the tally is kept.
        assert!(c.events.is_empty());
        let table = top_findings_table(&c, 2);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "  account finding                          severity count first seen"
        );
        assert_eq!(
            lines[1],
            "  b       alert/laptop_farm_suspected      critical     1 1970-01-01T00:00:20.000000Z"
        );
        assert_eq!(lines[3], "  ... and 1 more");
    }

    #[test]
    fn a_stepping_stone_cites_both_legs_from_its_typed_evidence() {
        let leg = |src: &str, sp, dst: &str, dp| FlowRef {
            proto: "tcp",
            src_ip: src.parse().unwrap(),
            src_port: sp,
            dst_ip: dst.parse().unwrap(),
            dst_port: dp,
        };
        let inbound = leg("203.0.113.9", 50000, "10.8.0.12", 22);
        let outbound = leg("10.8.0.12", 41000, "2001:db8::7", 22);
        let mut e = Event::new(
            Timestamp::from_secs(1),
            Kind::RelayChain,
            "stepping_stone",
            Severity::High,
            "",
        )
        .with(&SteppingStoneEvidence {
            inbound_flow: inbound.clone(),
            inbound_app: Some(App::Ssh),
            outbound_flow: outbound.clone(),
            hits: 12,
            consecutive_hits: 4,
            resumes_inbound: 12,
            resumes_outbound: 13,
            ratio: 0.92,
            delta_ms: 500,
        });
        e.flow = Some(outbound.clone());
        // The legs are written as the events output always had them.
        assert_eq!(
            e.evidence["outbound_flow"],
            "tcp 10.8.0.12:41000 -> 2001:db8::7:22"
        );
        assert_eq!(
            collect::cited_flows(&e),
            [outbound.clone(), inbound, outbound]
        );
        // Another reason's evidence is not read as a stepping stone's.
        e.reason = "tunnel";
        assert_eq!(collect::cited_flows(&e).len(), 1);
    }
}
