//! Identity: which account an inside address belongs to at a given packet time.
//!
//! Three sources: the inventory's static `hosts` (always valid), the `--sessions` feed (a
//! VPN concentrator's log in neutral JSON-lines form, DESIGN §3) and RADIUS accounting
//! seen on the wire. Dynamic mappings are time ranges, so a VPN address handed to another
//! person later maps to the right account at each time. Both dynamic sources also say
//! from which public address an account connects; those observations are queued for the
//! geo detectors.
//!
//! Memory is bounded: at most [`MAX_ADDRESSES`] addresses (at the limit those seen longest
//! ago go, an eighth at a time), at most [`MAX_RANGES_PER_ADDRESS`] ranges per address (the
//! oldest go first), and [`Identity::advance`] drops ranges that closed more than the
//! retention window ago. All are counted. Account names learned from the wire are cached
//! up to [`MAX_NAMES`]; past it a range holds its own copy of the name.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufRead;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accounts::{AccountRef, Inventory};
use crate::timestamp::Timestamp;

/// Ranges kept per address. A VPN address is rarely reassigned more than a few times a
/// day; 64 covers weeks of churn while capping what a flood of accounting packets costs.
pub const MAX_RANGES_PER_ADDRESS: usize = 64;
/// Addresses with session ranges. A /14 of VPN pools, all in use at once, fits; a flood of
/// accounting packets for made-up addresses costs at most this many entries (about 300
/// bytes each).
pub const MAX_ADDRESSES: usize = 1 << 18;
/// Account names from the session feed and RADIUS kept to share one copy between ranges.
pub const MAX_NAMES: usize = 1 << 16;
/// Default retention of closed ranges: long flows are attributed at their start time,
/// and a week covers the longest persistent remote-desktop sessions worth reporting.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Feed errors kept with their line numbers (all are counted).
pub const MAX_FEED_ERRORS_KEPT: usize = 100;

/// RADIUS Acct-Status-Type (RFC 2866 §5.1) and session-feed events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Start,
    Stop,
    /// RADIUS Interim-Update; feed `interim` or `update`.
    Interim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObservationSource {
    SessionFeed,
    Radius,
}

impl ObservationSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ObservationSource::SessionFeed => "session_feed",
            ObservationSource::Radius => "radius",
        }
    }
}

/// An account seen connecting from a public address at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIpObservation {
    pub ts: Timestamp,
    pub account: AccountRef,
    pub public_ip: IpAddr,
    pub assigned_ip: Option<IpAddr>,
    pub source: ObservationSource,
}

/// A feed line that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedError {
    pub line: usize,
    pub message: String,
}

/// What reading a session feed did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedReport {
    pub lines: usize,
    pub accepted: usize,
    pub errors_total: usize,
    /// The first [`MAX_FEED_ERRORS_KEPT`] errors.
    pub errors: Vec<FeedError>,
    /// The accepted records in the order they were applied (time order), for a sensor to
    /// publish as observations.
    pub sessions: Vec<SessionEvent>,
}

/// One session start, stop or interim update from the session feed: who holds
/// `assigned_ip` from `ts`, and from which public address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionEvent {
    pub ts: Timestamp,
    pub account: String,
    pub assigned_ip: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub status: SessionStatus,
}

/// Counters for metrics and the replay summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityStats {
    /// Ranges dropped because an address had too many.
    pub ranges_evicted: u64,
    /// Addresses dropped, with their ranges, because [`MAX_ADDRESSES`] were held.
    pub addresses_evicted: u64,
    /// Closed ranges dropped after the retention window.
    pub ranges_expired: u64,
    /// Stops for an address with no open range of that account.
    pub unmatched_stops: u64,
}

/// One account holding one address from `start` until `end` (open while None).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Range {
    start: Timestamp,
    end: Option<Timestamp>,
    account: AccountRef,
}

/// The ranges of one address, and the packet time it was last named by a session event.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Held {
    ranges: VecDeque<Range>,
    seen: Timestamp,
}

/// What it learned (names, ranges, observations not yet handed on, counters) is saved in the
/// correlator's checkpoints; the inventory and the retention come from the config.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    #[serde(skip)]
    inventory: Arc<Inventory>,
    /// AccountRefs of inventory accounts, by index, and of every account named so far.
    refs: HashMap<String, AccountRef>,
    #[serde(skip)]
    static_refs: Vec<AccountRef>,
    /// Per address, ranges in order of start.
    ranges: BTreeMap<IpAddr, Held>,
    observations: Vec<PublicIpObservation>,
    #[serde(skip)]
    retention: Duration,
    stats: IdentityStats,
}

/// The neutral session-feed record (DESIGN §3). Extra fields are ignored: concentrators
/// log more than this.
#[derive(Debug, Deserialize)]
struct FeedRecord {
    ts: String,
    account: String,
    assigned_ip: IpAddr,
    #[serde(default)]
    public_ip: Option<IpAddr>,
    event: String,
}

impl Identity {
    pub fn new(inventory: Arc<Inventory>) -> Identity {
        let static_refs: Vec<AccountRef> =
            inventory.accounts.iter().map(|a| a.account_ref()).collect();
        let refs = static_refs
            .iter()
            .map(|r| (r.id.to_string(), r.clone()))
            .collect();
        Identity {
            inventory,
            refs,
            static_refs,
            ranges: BTreeMap::new(),
            observations: Vec::new(),
            retention: DEFAULT_RETENTION,
            stats: IdentityStats::default(),
        }
    }

    /// A reloaded inventory (SIGHUP): static hosts and kinds from now on; session ranges
    /// already held keep the account they were made with.
    pub fn reload_inventory(&mut self, inventory: Arc<Inventory>) {
        let fresh = Identity::new(inventory);
        self.refs.extend(fresh.refs);
        self.static_refs = fresh.static_refs;
        self.inventory = fresh.inventory;
    }

    /// Takes the learned part of `saved` (a checkpoint's) in place of its own, which the
    /// checkpoint already holds (a session feed read again at start is the same feed).
    /// The inventory stays as loaded now, as after a reload. Refuses a state over a bound.
    pub fn restore(&mut self, saved: Identity) -> Result<(), String> {
        use crate::state::within;
        within("identity addresses", saved.ranges.len(), MAX_ADDRESSES)?;
        for held in saved.ranges.values() {
            within("identity ranges", held.ranges.len(), MAX_RANGES_PER_ADDRESS)?;
        }
        let names = saved.refs.len().saturating_sub(self.static_refs.len());
        within("identity names", names, MAX_NAMES)?;
        self.refs = saved.refs;
        self.refs.extend(
            self.static_refs
                .iter()
                .map(|r| (r.id.to_string(), r.clone())),
        );
        // One copy of each name again, shared by its ranges, as before the checkpoint.
        let refs = &self.refs;
        let shared = |a: &mut AccountRef| {
            if let Some(known) = refs.get(&*a.id).filter(|k| k.kind == a.kind) {
                *a = known.clone();
            }
        };
        self.ranges = saved.ranges;
        for held in self.ranges.values_mut() {
            held.ranges.iter_mut().for_each(|r| shared(&mut r.account));
        }
        self.observations = saved.observations;
        self.observations
            .iter_mut()
            .for_each(|o| shared(&mut o.account));
        self.stats = saved.stats;
        Ok(())
    }

    pub fn with_retention(mut self, retention: Duration) -> Identity {
        self.retention = retention;
        self
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn stats(&self) -> IdentityStats {
        self.stats
    }

    /// The account holding `addr` at `ts`: a session range first (the latest that
    /// started at or before `ts` and had not ended), then the inventory's static hosts.
    /// None means an unknown host; the caller reports it.
    pub fn account_at(&self, addr: IpAddr, ts: Timestamp) -> Option<&AccountRef> {
        let addr = addr.to_canonical();
        let dynamic = self.ranges.get(&addr).and_then(|held| {
            held.ranges
                .iter()
                .rev()
                .find(|r| r.start <= ts && r.end.is_none_or(|end| ts <= end))
                .map(|r| &r.account)
        });
        dynamic.or_else(|| self.static_refs.get(self.inventory.static_index(addr)?))
    }

    /// One session event, from the feed or from RADIUS.
    pub fn observe_session(
        &mut self,
        ts: Timestamp,
        account: &str,
        assigned_ip: IpAddr,
        public_ip: Option<IpAddr>,
        status: SessionStatus,
        source: ObservationSource,
    ) {
        let account = self.account_ref(account);
        let addr = assigned_ip.to_canonical();
        if !self.ranges.contains_key(&addr) {
            self.stats.addresses_evicted +=
                crate::bounded::make_room(&mut self.ranges, MAX_ADDRESSES, |held| held.seen);
        }
        let held = self.ranges.entry(addr).or_default();
        held.seen = held.seen.max(ts);
        let list = &mut held.ranges;
        // The range in force at `ts`: the latest that started by then and has not ended.
        // Ranges that start later may exist (a feed is loaded ahead of the packets).
        let at = list.partition_point(|r| r.start <= ts);
        let next_start = list.get(at).map(|r| r.start);
        let current = at
            .checked_sub(1)
            .and_then(|i| list.get_mut(i))
            .filter(|r| r.end.is_none_or(|end| ts <= end));
        match (status, current) {
            // The session already known.
            (SessionStatus::Start | SessionStatus::Interim, Some(r)) if r.account == account => {}
            (SessionStatus::Start | SessionStatus::Interim, current) => {
                if let Some(r) = current {
                    // Handed to someone else without a stop: the old session ended here.
                    r.end = Some(ts);
                }
                push_range(list, ts, next_start, account.clone(), &mut self.stats);
            }
            (SessionStatus::Stop, Some(r)) if r.account == account => r.end = Some(ts),
            (SessionStatus::Stop, _) => {
                // A stop for a session whose start this sensor never saw: all we know
                // is that the address was this account's at `ts`.
                self.stats.unmatched_stops += 1;
                push_range(list, ts, Some(ts), account.clone(), &mut self.stats);
            }
        }
        if let Some(public_ip) = public_ip {
            self.observations.push(PublicIpObservation {
                ts,
                account,
                public_ip: public_ip.to_canonical(),
                assigned_ip: Some(addr),
                source,
            });
        }
    }

    /// RADIUS accounting (RFC 2866): User-Name, Framed-IP-Address, Calling-Station-Id
    /// (the client's public address when it is an IP, as VPN concentrators send it).
    pub fn observe_radius(
        &mut self,
        ts: Timestamp,
        user_name: &str,
        framed_ip: IpAddr,
        calling_station_id: Option<&str>,
        status: SessionStatus,
    ) {
        let public_ip = calling_station_id.and_then(|s| s.trim().parse::<IpAddr>().ok());
        self.observe_session(
            ts,
            user_name,
            framed_ip,
            public_ip,
            status,
            ObservationSource::Radius,
        );
    }

    /// Reads a whole session feed. Records are applied in time order (stable for equal
    /// times), so a feed merged from several concentrators need not be sorted. Lines
    /// that do not parse are counted and reported with their numbers.
    pub fn load_sessions(&mut self, feed: impl BufRead) -> FeedReport {
        let mut report = FeedReport::default();
        let mut records = Vec::new();
        for (i, line) in feed.lines().enumerate() {
            report.lines = i + 1;
            let parsed = line
                .map_err(|e| e.to_string())
                .and_then(|l| parse_feed_line(&l));
            match parsed {
                Ok(Some(rec)) => records.push(rec),
                Ok(None) => {}
                Err(message) => {
                    report.errors_total += 1;
                    if report.errors.len() < MAX_FEED_ERRORS_KEPT {
                        report.errors.push(FeedError {
                            line: i + 1,
                            message,
                        });
                    }
                }
            }
        }
        records.sort_by_key(|r| r.0);
        report.accepted = records.len();
        report.sessions = records
            .into_iter()
            .map(|(ts, rec, status)| SessionEvent {
                ts,
                account: rec.account,
                assigned_ip: rec.assigned_ip,
                public_ip: rec.public_ip,
                status,
            })
            .collect();
        for session in &report.sessions {
            self.apply_session(session);
        }
        report
    }

    /// One record of a session feed, read here or by another sensor.
    pub fn apply_session(&mut self, s: &SessionEvent) {
        self.observe_session(
            s.ts,
            &s.account,
            s.assigned_ip,
            s.public_ip,
            s.status,
            ObservationSource::SessionFeed,
        );
    }

    /// Public-address observations since the last call, in arrival order.
    pub fn drain_public_ip_observations(&mut self) -> Vec<PublicIpObservation> {
        std::mem::take(&mut self.observations)
    }

    /// Packet time moved to `now`: drop ranges that closed before `now - retention`.
    pub fn advance(&mut self, now: Timestamp) {
        let Some(horizon) = now.as_nanos().checked_sub(self.retention.as_nanos() as u64) else {
            return;
        };
        let stats = &mut self.stats;
        self.ranges.retain(|_, held| {
            let list = &mut held.ranges;
            let before = list.len();
            list.retain(|r| r.end.is_none_or(|end| end.as_nanos() >= horizon));
            stats.ranges_expired += (before - list.len()) as u64;
            !list.is_empty()
        });
    }

    fn account_ref(&mut self, id: &str) -> AccountRef {
        if let Some(known) = self.refs.get(id) {
            return known.clone();
        }
        let fresh = AccountRef {
            id: Arc::from(id),
            kind: None,
        };
        if self.refs.len() < MAX_NAMES + self.static_refs.len() {
            self.refs.insert(id.to_string(), fresh.clone());
        }
        fresh
    }

    /// Entries dropped at a limit, by structure (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> [(&'static str, u64); 2] {
        [
            ("identity_addresses", self.stats.addresses_evicted),
            ("identity_ranges", self.stats.ranges_evicted),
        ]
    }
}

/// Inserts keeping start order, evicting the oldest beyond the cap.
fn push_range(
    list: &mut VecDeque<Range>,
    start: Timestamp,
    end: Option<Timestamp>,
    account: AccountRef,
    stats: &mut IdentityStats,
) {
    let at = list.partition_point(|r| r.start <= start);
    list.insert(
        at,
        Range {
            start,
            end,
            account,
        },
    );
    while list.len() > MAX_RANGES_PER_ADDRESS {
        list.pop_front();
        stats.ranges_evicted += 1;
    }
}

/// One feed line: Ok(None) for blank lines.
fn parse_feed_line(line: &str) -> Result<Option<(Timestamp, FeedRecord, SessionStatus)>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let rec: FeedRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let ts = parse_ts(&rec.ts)?;
    let status = match rec.event.as_str() {
        "start" => SessionStatus::Start,
        "stop" => SessionStatus::Stop,
        "interim" | "update" => SessionStatus::Interim,
        other => {
            return Err(format!(
                "event {other:?} is not start, stop, interim or update"
            ));
        }
    };
    if rec.account.trim().is_empty() {
        return Err("account is empty".to_string());
    }
    Ok(Some((ts, rec, status)))
}

/// RFC 3339 to packet-time nanoseconds.
fn parse_ts(s: &str) -> Result<Timestamp, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| format!("ts {s:?}: {e}"))?;
    let nanos = t
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("ts {s:?}: out of range"))?;
    Ok(Timestamp(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_line_forms() {
        let (ts, rec, st) = parse_feed_line(
            r#"{"ts":"2026-11-02T14:03:11Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"73.14.2.9","event":"start","nas":"vpn1"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ts, Timestamp::from_secs(1_793_628_191));
        assert_eq!(rec.account, "jdoe");
        assert_eq!(st, SessionStatus::Start);
        assert!(parse_feed_line("  ").unwrap().is_none());
        let e = parse_feed_line(r#"{"ts":"2026-11-02T14:03:11Z","account":"a","assigned_ip":"10.8.0.1","event":"login"}"#)
            .unwrap_err();
        assert_eq!(e, "event \"login\" is not start, stop, interim or update");
        assert!(
            parse_feed_line(
                r#"{"ts":"yesterday","account":"a","assigned_ip":"10.8.0.1","event":"stop"}"#
            )
            .is_err()
        );
    }
}
