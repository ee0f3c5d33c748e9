//! What a replay keeps for its report, in bounded memory: the findings, the public-address
//! observations, per-account activity by hour, the least RTT seen to each outside address,
//! and those flow records the findings cite plus a bounded sample of the rest.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use crate::app::App;
use crate::event::{Event, Severity};
use crate::flows::record::FlowRecord;
use crate::identity::PublicIpObservation;
use crate::timestamp::Timestamp;

/// Findings kept for the report; beyond this they are counted, not kept.
const MAX_EVENTS: usize = 100_000;
/// Public-address observations kept.
const MAX_OBSERVATIONS: usize = 100_000;
/// Flow records kept although no finding cites them (the first ones of the replay).
pub const MAX_UNCITED_FLOWS: usize = 2_000;
/// Remote-desktop and tunnel flow records kept although no finding cites them.
pub const MAX_NOTABLE_FLOWS: usize = 5_000;
/// The newest records not otherwise kept, so a finding written after its flow ended can
/// still cite the record.
const RECENT_FLOWS: usize = 10_000;
/// Outside addresses whose least RTT is followed.
const MAX_RTT_ADDRESSES: usize = 50_000;

/// A flow's identity as events cite it: proto and the 5-tuple, initiator first.
pub type Tuple = (String, IpAddr, u16, IpAddr, u16);

/// How often one account had one kind of finding, and since when.
#[derive(Clone, Debug)]
pub struct Tally {
    pub count: u64,
    pub first: Timestamp,
    pub last: Timestamp,
}

/// Key of a [`Tally`]: account, kind, reason, severity.
pub type TallyKey = (Option<String>, &'static str, &'static str, Severity);

/// Fed by the pipeline as it writes; read once at the end to build the report. With
/// `full` off it only tallies findings (for the terminal summary).
#[derive(Default)]
pub struct Collector {
    full: bool,
    pub tally: BTreeMap<TallyKey, Tally>,
    pub events: Vec<Event>,
    pub events_not_kept: u64,
    pub observations: Vec<PublicIpObservation>,
    pub observations_not_kept: u64,
    /// Flow records kept, in the order they were written.
    pub flows: Vec<FlowRecord>,
    recent: VecDeque<FlowRecord>,
    uncited: usize,
    notable: usize,
    pub flows_seen: u64,
    cited_tuples: HashSet<Tuple>,
    cited_ids: HashSet<String>,
    /// Flows started per (account, hour since the epoch).
    pub activity: BTreeMap<(String, i64), u32>,
    /// Least TCP handshake leg (ms) between the sensor and each outside address.
    pub min_rtt: HashMap<IpAddr, f64>,
}

impl Collector {
    /// `full`: keep what the HTML report needs, not only the tally.
    pub fn new(full: bool) -> Collector {
        Collector {
            full,
            ..Collector::default()
        }
    }

    pub fn event(&mut self, e: &Event) {
        let t = self
            .tally
            .entry((e.account.clone(), e.kind.as_str(), e.reason, e.severity))
            .or_insert(Tally {
                count: 0,
                first: e.ts,
                last: e.ts,
            });
        t.count += 1;
        t.first = t.first.min(e.ts);
        t.last = t.last.max(e.ts);
        if !self.full {
            return;
        }
        if self.events.len() >= MAX_EVENTS {
            self.events_not_kept += 1;
            return;
        }
        event_citations(e, &mut self.cited_tuples, &mut self.cited_ids);
        self.events.push(e.clone());
    }

    pub fn observation(&mut self, o: &PublicIpObservation) {
        if !self.full {
            return;
        }
        if self.observations.len() >= MAX_OBSERVATIONS {
            self.observations_not_kept += 1;
        } else {
            self.observations.push(o.clone());
        }
    }

    /// A final flow record (interim records are not kept: the final one has the totals).
    pub fn flow(&mut self, r: &FlowRecord) {
        if !self.full {
            return;
        }
        self.flows_seen += 1;
        if let Some(account) = &r.account {
            let hour = (r.ts.secs() / 3600) as i64;
            *self.activity.entry((account.clone(), hour)).or_default() += 1;
        }
        for (ip, rtt) in [(r.src_ip, r.tcp_rtt_orig_ms), (r.dst_ip, r.tcp_rtt_resp_ms)] {
            let Some(rtt) = rtt else { continue };
            let room = self.min_rtt.len() < MAX_RTT_ADDRESSES;
            match self.min_rtt.get_mut(&ip) {
                Some(m) => *m = m.min(rtt),
                None if room => {
                    self.min_rtt.insert(ip, rtt);
                }
                None => {}
            }
        }
        if self.is_cited(r) {
            self.flows.push(r.clone());
        } else if is_notable(r) && self.notable < MAX_NOTABLE_FLOWS {
            self.notable += 1;
            self.flows.push(r.clone());
        } else if self.uncited < MAX_UNCITED_FLOWS {
            self.uncited += 1;
            self.flows.push(r.clone());
        } else {
            if self.recent.len() >= RECENT_FLOWS {
                self.recent.pop_front();
            }
            self.recent.push_back(r.clone());
        }
    }

    /// Moves the recent records that findings written after them cite into the kept
    /// ones. Called once, after the pipeline finished.
    pub fn settle(&mut self) {
        let recent = std::mem::take(&mut self.recent);
        let (cited, _): (Vec<FlowRecord>, Vec<FlowRecord>) =
            recent.into_iter().partition(|r| self.is_cited(r));
        self.flows.extend(cited);
        self.flows.sort_by_key(|r| r.ts);
    }

    /// Flow records seen but not in the report.
    pub fn flows_not_kept(&self) -> u64 {
        self.flows_seen.saturating_sub(self.flows.len() as u64)
    }

    fn is_cited(&self, r: &FlowRecord) -> bool {
        self.cited_ids.contains(&r.community_id) || self.cited_tuples.contains(&tuple_of(r))
    }
}

pub fn tuple_of(r: &FlowRecord) -> Tuple {
    (
        r.proto.to_string(),
        r.src_ip,
        r.src_port,
        r.dst_ip,
        r.dst_port,
    )
}

/// Remote-desktop and tunnel flows: what an analyst looks for first.
fn is_notable(r: &FlowRecord) -> bool {
    r.app
        .and_then(|a| App::ALL.iter().find(|x| x.as_str() == a))
        .is_some_and(|a| a.is_remote_desktop() || a.is_tunnel())
}

/// The flows a finding cites: its own flow, and every 5-tuple and Community ID in its
/// evidence.
pub fn event_citations(e: &Event, tuples: &mut HashSet<Tuple>, ids: &mut HashSet<String>) {
    if let Some(f) = &e.flow {
        tuples.insert((
            f.proto.to_string(),
            f.src_ip,
            f.src_port,
            f.dst_ip,
            f.dst_port,
        ));
    }
    for value in e.evidence.values() {
        citations(value, tuples, ids);
    }
}

/// Flows an event's evidence names: objects with a 5-tuple, and Community IDs (`1:...`).
pub fn citations(v: &serde_json::Value, tuples: &mut HashSet<Tuple>, ids: &mut HashSet<String>) {
    match v {
        serde_json::Value::String(s) if s.starts_with("1:") => {
            ids.insert(s.clone());
        }
        serde_json::Value::Array(items) => {
            for item in items {
                citations(item, tuples, ids);
            }
        }
        serde_json::Value::Object(map) => {
            let ip = |k: &str| map.get(k).and_then(|v| v.as_str()?.parse::<IpAddr>().ok());
            let port = |k: &str| {
                map.get(k)
                    .and_then(|v| v.as_u64())
                    .and_then(|p| u16::try_from(p).ok())
            };
            if let (Some(proto), Some(s), Some(sp), Some(d), Some(dp)) = (
                map.get("proto").and_then(|v| v.as_str()),
                ip("src_ip"),
                port("src_port"),
                ip("dst_ip"),
                port("dst_port"),
            ) {
                tuples.insert((proto.to_string(), s, sp, d, dp));
            }
            for item in map.values() {
                citations(item, tuples, ids);
            }
        }
        _ => {}
    }
}

/// The report's collector is an output like the others; it stays typed in the account stage
/// because the report reads it when the input is over.
impl crate::sink::Sink for Collector {
    fn name(&self) -> &'static str {
        "report"
    }

    fn event(&mut self, event: &Event) {
        Collector::event(self, event);
    }

    fn flow(&mut self, record: &FlowRecord) {
        Collector::flow(self, record);
    }

    fn observation(&mut self, obs: &PublicIpObservation) {
        Collector::observation(self, obs);
    }
}
