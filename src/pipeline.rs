//! The data path, one direction: decode → flows → dissect → detect → sinks. Replay and
//! live capture both push packets through one `Pipeline`; it reads no clock but the
//! packets' own.

use crate::config::Config;
use crate::decode::Decoder;
use crate::event::Event;
use crate::flows::record::FlowRecord;
use crate::flows::{Flow, FlowEvent, FlowTable};
use crate::metrics::Stats;
use crate::sink::JsonLines;
use crate::source::Packet;
use crate::timestamp::Timestamp;

/// Fragment sets in reassembly at once, and how long one may wait for its last piece.
const MAX_FRAGMENT_SETS: usize = 4096;
const FRAGMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Pipeline {
    decoder: Decoder,
    flows: FlowTable,
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
                FlowEvent::Resumed { .. } | FlowEvent::NewBytes { .. } => {}
                FlowEvent::Interim { key, .. } => {
                    if let Some(flow) = self.flows.get(&key) {
                        let record = FlowRecord::new(flow, true, None);
                        self.write_flow(&record);
                    }
                }
                FlowEvent::Ended { flow, why } => {
                    self.flow_ended(&flow, why.as_str());
                }
            }
        }
        self.pending = pending;
    }

    fn flow_ended(&mut self, flow: &Flow, why: &'static str) {
        let record = FlowRecord::new(flow, false, Some(why));
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
            self.stats.decode_errors.insert("fragment_timeout", frag);
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
