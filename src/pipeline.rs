//! The data path, one direction: decode → flows → dissect → detect → sinks. Replay and
//! live capture both push packets through one `Pipeline`; it reads no clock but the
//! packets' own.

use crate::app::App;
use crate::config::Config;
use crate::decode::{Decoder, Proto};
use crate::dissect::dns::{self, NameCache};
use crate::dissect::identify::{self, Input};
use crate::event::Event;
use crate::flows::flow::{ORIG, RESP};
use crate::flows::record::FlowRecord;
use crate::flows::{Flow, FlowEvent, FlowTable};
use crate::metrics::Stats;
use crate::sink::JsonLines;
use crate::source::Packet;
use crate::timestamp::Timestamp;

/// Fragment sets in reassembly at once, and how long one may wait for its last piece.
const MAX_FRAGMENT_SETS: usize = 4096;
const FRAGMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Addresses remembered from DNS answers, so a flow reached without SNI is still named.
const DNS_CACHE_ENTRIES: usize = 100_000;

pub struct Pipeline {
    decoder: Decoder,
    flows: FlowTable,
    names: NameCache,
    pending: Vec<FlowEvent>,
    events: Option<JsonLines>,
    flow_records: Option<JsonLines>,
    pub stats: Stats,
    pub first_ts: Option<Timestamp>,
    pub last_ts: Option<Timestamp>,
}

/// The sinks a pipeline writes to; each is optional.
#[derive(Default)]
pub struct Sinks {
    pub events: Option<JsonLines>,
    pub flows: Option<JsonLines>,
}

impl Pipeline {
    pub fn new(config: &Config, sinks: Sinks) -> Pipeline {
        Pipeline {
            decoder: Decoder::new(MAX_FRAGMENT_SETS, FRAGMENT_TIMEOUT),
            flows: FlowTable::new(config.flows.clone()),
            names: NameCache::new(DNS_CACHE_ENTRIES),
            pending: Vec::new(),
            events: sinks.events,
            flow_records: sinks.flows,
            stats: Stats::default(),
            first_ts: None,
            last_ts: None,
        }
    }

    pub fn packet(&mut self, pkt: &Packet) {
        self.stats.packets += 1;
        self.stats.bytes += pkt.orig_len as u64;
        self.first_ts.get_or_insert(pkt.ts);
        self.last_ts = Some(self.last_ts.map_or(pkt.ts, |t| t.max(pkt.ts)));
        match self.decoder.decode(pkt) {
            Ok(Some(d)) => self
                .flows
                .process(pkt.ts, &d, pkt.orig_len, &mut self.pending),
            Ok(None) => {}
            Err(e) => *self.stats.decode_errors.entry(e.as_str()).or_default() += 1,
        }
        self.drain_flow_events();
    }

    /// Ends every flow and flushes every sink: end of a replay, or shutdown.
    pub fn finish(&mut self) {
        self.flows.drain(&mut self.pending);
        self.drain_flow_events();
        self.sync_stats();
        for sink in [self.events.as_mut(), self.flow_records.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = sink.flush();
        }
        self.sync_stats();
    }

    /// Moves packet time forward without a packet of this pipeline's own: a live worker learns
    /// the capture's clock this way, so its flows expire as in a replay that sees every packet.
    pub fn advance(&mut self, ts: Timestamp) {
        self.flows.advance(ts, &mut self.pending);
        self.drain_flow_events();
    }

    /// Pushes buffered records out to the sinks (live: every second, so output is timely).
    pub fn flush_sinks(&mut self) {
        for sink in [self.events.as_mut(), self.flow_records.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = sink.flush();
        }
    }

    /// Writes one finding.
    pub fn emit(&mut self, mut event: Event) {
        event.seal();
        *self
            .stats
            .events
            .entry((event.kind.as_str(), event.reason, event.severity.as_str()))
            .or_default() += 1;
        if let Some(sink) = self.events.as_mut() {
            sink.write(&event);
        }
    }

    fn drain_flow_events(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        for ev in pending.drain(..) {
            match ev {
                FlowEvent::Resumed { .. } => {}
                FlowEvent::NewBytes { key, ts } => self.dissect(&key, ts),
                FlowEvent::Datagram { ts, bytes, .. } => self.datagram(ts, &bytes),
                FlowEvent::Interim { key, .. } => {
                    if let Some(flow) = self.flows.get(&key) {
                        let mut record = FlowRecord::new(flow, true, None);
                        record.dns_name = self
                            .names
                            .lookup(flow.last, flow.resp.0)
                            .map(str::to_string);
                        self.write_flow(&record);
                    }
                }
                FlowEvent::Ended { mut flow, why } => {
                    if !flow.dissected {
                        let ts = flow.last;
                        identify_flow(&mut flow, &mut self.names, &mut self.stats, ts, true);
                    }
                    self.flow_ended(&flow, why.as_str());
                }
            }
        }
        self.pending = pending;
    }

    /// Runs identification on a flow that got new bytes.
    fn dissect(&mut self, key: &crate::flows::FlowKey, ts: Timestamp) {
        if let Some(flow) = self.flows.get_mut(key)
            && !flow.dissected
        {
            identify_flow(flow, &mut self.names, &mut self.stats, ts, false);
        }
    }

    /// A datagram of a followed flow: DNS answers feed the name cache.
    fn datagram(&mut self, ts: Timestamp, bytes: &[u8]) {
        if let Ok(msg) = dns::parse_message(bytes)
            && msg.response
        {
            self.names.insert(ts, &msg);
        }
    }

    fn flow_ended(&mut self, flow: &Flow, why: &'static str) {
        let mut record = FlowRecord::new(flow, false, Some(why));
        record.dns_name = self
            .names
            .lookup(flow.last, flow.resp.0)
            .map(str::to_string);
        self.write_flow(&record);
    }

    fn write_flow(&mut self, record: &FlowRecord) {
        if let Some(sink) = self.flow_records.as_mut() {
            sink.write(record);
        }
    }

    /// Copies counters kept elsewhere (table, decoder, sinks) into `stats`.
    pub fn sync_stats(&mut self) {
        self.stats.flows_active = self.flows.len() as u64;
        self.stats.flows_total = self.flows.flows_total;
        self.stats
            .flows_evicted
            .insert("table_full", self.flows.evicted_table_full);
        let frag = self.decoder.fragments_evicted();
        if frag > 0 {
            self.stats.decode_errors.insert("fragment_expired", frag);
        }
        for (name, sink) in [("events", &self.events), ("flows", &self.flow_records)] {
            if let Some(s) = sink
                && s.errors > 0
            {
                self.stats.sink_errors.insert(name, s.errors);
            }
        }
        self.stats.last_packet_ts = self.last_ts.map(|t| t.as_secs_f64());
    }

    /// The first write error of each sink, for the exit status.
    pub fn sink_failures(&self) -> Vec<String> {
        [&self.events, &self.flow_records]
            .into_iter()
            .flatten()
            .filter_map(|s| {
                s.first_error
                    .as_ref()
                    .map(|e| format!("{:?}: {e}", s.target()))
            })
            .collect()
    }
}

/// Identifies `flow` from its reassembled prefixes; once settled (or `ending`), frees the
/// buffers and counts the label. DNS answers seen on the way feed the name cache.
fn identify_flow(
    flow: &mut Flow,
    names: &mut NameCache,
    stats: &mut Stats,
    ts: Timestamp,
    ending: bool,
) {
    let Some(streams) = flow.streams.as_deref() else {
        return;
    };
    let input = Input {
        proto: flow.proto,
        orig_port: flow.orig.1,
        resp_port: flow.resp.1,
        client: streams.dir[ORIG].bytes(),
        server: streams.dir[RESP].bytes(),
        client_closed: ending || streams.dir[ORIG].is_closed(),
        server_closed: ending || streams.dir[RESP].is_closed(),
        client_datagrams: &streams.datagrams[ORIG],
        server_datagrams: &streams.datagrams[RESP],
        dns_name: names.lookup(ts, flow.resp.0),
    };
    let id = identify::identify(&input);
    if id.app == Some(App::Dns) {
        for d in streams.datagrams.iter().flatten() {
            if let Ok(msg) = dns::parse_message(d)
                && msg.response
            {
                names.insert(ts, &msg);
            }
        }
    }
    flow.app = id.app;
    flow.details = Some(Box::new(id.details));
    if id.done || ending {
        flow.dissected = true;
        flow.guess = id.guess;
        flow.streams = None;
        flow.follow =
            flow.proto == Proto::Udp && matches!(id.app, Some(App::Dns) | Some(App::Radius));
        let label = flow.app.map_or("unknown", App::as_str);
        *stats.flows_by_app.entry(label).or_default() += 1;
    }
}
