//! What a replay keeps for its report, in bounded memory: the findings, the public-address
//! observations, per-account activity by hour, the least RTT seen to each outside address,
//! and those flow records the findings cite plus a bounded sample of the rest. Every table
//! has a limit; what did not fit is counted (`farmwatch_state_evicted_total{structure=
//! "report_..."}`) and the report says so.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use crate::app::App;
use crate::event::{Event, FlowRef, Severity, SteppingStoneEvidence};
use crate::flows::record::FlowRecord;
use crate::identity::PublicIpObservation;
use crate::timestamp::Timestamp;

/// Flow records kept although no finding cites them (the first ones of the replay).
pub const MAX_UNCITED_FLOWS: usize = 2_000;
/// Remote-desktop and tunnel flow records kept although no finding cites them.
pub const MAX_NOTABLE_FLOWS: usize = 5_000;
/// The newest records not otherwise kept, so a finding written after its flow ended can
/// still cite the record.
const RECENT_FLOWS: usize = 10_000;

/// The size of each table the collector keeps; beyond it, what does not fit is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Findings kept.
    pub events: usize,
    /// Public-address observations kept.
    pub observations: usize,
    /// (account, kind, reason, severity) rows of the findings tally: a finding of a new
    /// row beyond this is counted in none (the finding itself is still kept).
    pub tallies: usize,
    /// (account, hour) cells of flows started: a new account-hour beyond this is not drawn.
    pub activity: usize,
    /// Outside addresses whose least RTT is followed.
    pub rtt_addresses: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            events: 100_000,
            observations: 100_000,
            tallies: 100_000,
            activity: 500_000,
            rtt_addresses: 50_000,
        }
    }
}

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
    caps: Caps,
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
    /// Flows started per (account, hour since the epoch).
    pub activity: BTreeMap<(String, i64), u32>,
    /// Least TCP handshake leg (ms) between the sensor and each outside address.
    pub min_rtt: HashMap<IpAddr, f64>,
    /// Findings not tallied, flows not counted in `activity`, and RTT samples of
    /// addresses not followed, because their table was full.
    pub tallies_not_kept: u64,
    pub activity_not_kept: u64,
    pub rtt_not_kept: u64,
}

impl Collector {
    /// `full`: keep what the HTML report needs, not only the tally.
    pub fn new(full: bool) -> Collector {
        Collector::with_caps(full, Caps::default())
    }

    /// A collector whose tables hold at most `caps`.
    pub fn with_caps(full: bool, caps: Caps) -> Collector {
        Collector {
            full,
            caps,
            ..Collector::default()
        }
    }

    pub fn event(&mut self, e: &Event) {
        let key = (e.account.clone(), e.kind.as_str(), e.reason, e.severity);
        let room = self.tally.len() < self.caps.tallies;
        match self.tally.get_mut(&key) {
            Some(t) => {
                t.count += 1;
                t.first = t.first.min(e.ts);
                t.last = t.last.max(e.ts);
            }
            None if room => {
                let t = Tally {
                    count: 1,
                    first: e.ts,
                    last: e.ts,
                };
                self.tally.insert(key, t);
            }
            None => self.tallies_not_kept += 1,
        }
        if !self.full {
            return;
        }
        if self.events.len() >= self.caps.events {
            self.events_not_kept += 1;
            return;
        }
        self.cited_tuples
            .extend(cited_flows(e).iter().map(tuple_of_ref));
        self.events.push(e.clone());
    }

    pub fn observation(&mut self, o: &PublicIpObservation) {
        if !self.full {
            return;
        }
        if self.observations.len() >= self.caps.observations {
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
            let key = (account.clone(), (r.ts.secs() / 3600) as i64);
            let room = self.activity.len() < self.caps.activity;
            match self.activity.get_mut(&key) {
                Some(n) => *n = n.saturating_add(1),
                None if room => {
                    self.activity.insert(key, 1);
                }
                None => self.activity_not_kept += 1,
            }
        }
        for (ip, rtt) in [(r.src_ip, r.tcp_rtt_orig_ms), (r.dst_ip, r.tcp_rtt_resp_ms)] {
            let Some(rtt) = rtt else { continue };
            let room = self.min_rtt.len() < self.caps.rtt_addresses;
            match self.min_rtt.get_mut(&ip) {
                Some(m) => *m = m.min(rtt),
                None if room => {
                    self.min_rtt.insert(ip, rtt);
                }
                None => self.rtt_not_kept += 1,
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

    /// What each table did not admit at its limit, by structure, for
    /// `farmwatch_state_evicted_total` (flow records left out are not state: they are in
    /// `--flows`).
    pub fn evictions(&self) -> [(&'static str, u64); 5] {
        [
            ("report_findings", self.events_not_kept),
            ("report_public_ips", self.observations_not_kept),
            ("report_tallies", self.tallies_not_kept),
            ("report_activity", self.activity_not_kept),
            ("report_rtt_addresses", self.rtt_not_kept),
        ]
    }

    fn is_cited(&self, r: &FlowRecord) -> bool {
        self.cited_tuples.contains(&tuple_of(r))
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

pub fn tuple_of_ref(f: &FlowRef) -> Tuple {
    (
        f.proto.to_string(),
        f.src_ip,
        f.src_port,
        f.dst_ip,
        f.dst_port,
    )
}

/// The flows a finding cites: its own flow, and the legs its typed evidence names (a
/// stepping stone's inbound and outbound flows).
pub fn cited_flows(e: &Event) -> Vec<FlowRef> {
    let mut out: Vec<FlowRef> = e.flow.iter().cloned().collect();
    if let Some(chain) = e.read::<SteppingStoneEvidence>() {
        out.extend([chain.inbound_flow, chain.outbound_flow]);
    }
    out
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
