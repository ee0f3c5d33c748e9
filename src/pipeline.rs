//! The data path, one direction: decode → flows → dissect → detect → sinks. Replay and
//! live capture both push packets through one `Pipeline`; it reads no clock but the
//! packets' own.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::accounts::{self, Inventory};
use crate::app::App;
use crate::config::{Config, NetworkConfig};
use crate::decode::{Decoder, Proto};
use crate::detect::{Detectors, Scope};
use crate::dissect::dns::{self, NameCache};
use crate::dissect::identify::{self, Details, Input};
use crate::dissect::shared::SharedDetails;
use crate::event::Event;
use crate::flows::flow::{ORIG, RESP};
use crate::flows::record::FlowRecord;
use crate::flows::{EndReason, Flow, FlowEvent, FlowTable};
use crate::geo::Geo;
use crate::identity::{Identity, ObservationSource, PublicIpObservation};
use crate::metrics::Stats;
use crate::report::Collector;
use crate::sink::JsonLines;
use crate::source::Packet;
use crate::timestamp::Timestamp;

/// Fragment sets in reassembly at once, and how long one may wait for its last piece.
const MAX_FRAGMENT_SETS: usize = 4096;
const FRAGMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Addresses remembered from DNS answers, so a flow reached without SNI is still named.
const DNS_CACHE_ENTRIES: usize = 100_000;

/// Who is behind an address and where it is: the account inventory, the identity
/// mappings (inventory hosts, session feed, RADIUS) and the geo databases.
pub struct Context {
    pub identity: Identity,
    pub geo: Geo,
}

impl Context {
    /// Opens the geo databases named by the config (or the embedded ones), the inventory
    /// and the session feed. Every problem is one line, for exit code 2.
    pub fn load(
        config: &Config,
        accounts: Option<&Path>,
        sessions: Option<&Path>,
    ) -> Result<Context, String> {
        let geo = Geo::open(&config.geoip).map_err(|e| e.to_string())?;
        let inventory = match accounts {
            Some(p) => Inventory::load(p).map_err(|problems| {
                let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
                match problems.len() {
                    1 => first,
                    n => format!(
                        "{first} (and {} more problems; run `farmwatch check`)",
                        n - 1
                    ),
                }
            })?,
            None => Inventory::default(),
        };
        let mut identity = Identity::new(Arc::new(inventory));
        if let Some(p) = sessions {
            let file =
                std::fs::File::open(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            let report = identity.load_sessions(std::io::BufReader::new(file));
            if let Some(e) = report.errors.first() {
                eprintln!(
                    "farmwatch: {}: {} of {} session lines skipped (first: line {}: {})",
                    p.display(),
                    report.errors_total,
                    report.lines,
                    e.line,
                    e.message
                );
            }
        }
        Ok(Context { identity, geo })
    }
}

/// Detectors' view of the context, from disjoint fields so the pipeline can lend it while
/// it updates other state.
macro_rules! scope {
    ($p:expr) => {
        Scope {
            network: &$p.network,
            identity: &$p.context.identity,
            geo: &$p.context.geo,
        }
    };
}

pub struct Pipeline {
    decoder: Decoder,
    flows: FlowTable,
    names: NameCache,
    /// SSH and TLS details shared by the sessions of the same software.
    shared: SharedDetails,
    context: Context,
    network: NetworkConfig,
    detectors: Detectors,
    findings: Vec<Event>,
    /// The last whole second of packet time the detectors were ticked at.
    ticked: u64,
    /// Public-address observations (session feed, RADIUS) not yet due by packet time,
    /// newest first.
    observations: Vec<PublicIpObservation>,
    /// The one pipeline of a sensor that reports inventory findings and session-feed
    /// observations (live capture with several workers has one primary).
    primary: bool,
    pending: Vec<FlowEvent>,
    events: Option<JsonLines>,
    flow_records: Option<JsonLines>,
    /// Keeps findings and flow records for the replay's summary and report.
    pub collector: Option<Collector>,
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
    pub fn new(config: &Config, sinks: Sinks, context: Context) -> Pipeline {
        Pipeline {
            decoder: Decoder::new(MAX_FRAGMENT_SETS, FRAGMENT_TIMEOUT),
            flows: FlowTable::new(config.flows.clone()),
            names: NameCache::new(DNS_CACHE_ENTRIES),
            shared: SharedDetails::default(),
            context,
            network: config.network.clone(),
            detectors: Detectors::new(config),
            findings: Vec::new(),
            ticked: 0,
            observations: Vec::new(),
            primary: true,
            pending: Vec::new(),
            events: sinks.events,
            flow_records: sinks.flows,
            collector: None,
            stats: Stats::default(),
            first_ts: None,
            last_ts: None,
        }
    }

    /// A new account inventory (SIGHUP): static hosts and account kinds change from now on.
    pub fn reload_inventory(&mut self, inventory: Arc<Inventory>) {
        self.context.identity.reload_inventory(inventory);
    }

    /// A new `[network]` section (SIGHUP): which addresses are inside, from now on.
    pub fn set_network(&mut self, network: NetworkConfig) {
        self.network = network;
    }

    /// More of the session feed (lines appended since it was last read).
    pub fn load_sessions(&mut self, feed: impl std::io::BufRead) {
        let report = self.context.identity.load_sessions(feed);
        if let Some(e) = report.errors.first() {
            eprintln!(
                "farmwatch: session feed: {} of {} new lines skipped (first: {})",
                report.errors_total, report.lines, e.message
            );
        }
    }

    /// Makes this pipeline a secondary worker of a sensor: the inventory findings and the
    /// session feed's observations are the primary worker's, so they are reported once.
    pub fn secondary(&mut self) {
        self.primary = false;
    }

    /// Findings that do not wait for traffic (inventory checks), stamped with the first
    /// packet's time.
    fn start(&mut self, ts: Timestamp) {
        if !self.primary {
            return;
        }
        for event in accounts::inventory_events(self.context.identity.inventory(), ts) {
            self.emit(event);
        }
    }

    pub fn packet(&mut self, pkt: Packet<'_>) {
        self.stats.packets += 1;
        self.stats.bytes += pkt.orig_len as u64;
        if self.first_ts.is_none() {
            self.first_ts = Some(pkt.ts);
            self.start(pkt.ts);
        }
        self.last_ts = Some(self.last_ts.map_or(pkt.ts, |t| t.max(pkt.ts)));
        match self.decoder.decode(pkt) {
            Ok(Some(d)) => self
                .flows
                .process(pkt.ts, &d, pkt.orig_len, &mut self.pending),
            Ok(None) => {}
            Err(e) => *self.stats.decode_errors.entry(e.as_str()).or_default() += 1,
        }
        self.drain_flow_events();
        self.tick();
    }

    /// Once per second of packet time, identity, observations and detectors catch up.
    fn tick(&mut self) {
        let now = self.flows.now();
        if now.secs() > self.ticked {
            self.ticked = now.secs();
            self.context.identity.advance(now);
            self.release_observations(now);
            let scope = scope!(self);
            self.detectors
                .on_tick(&scope, now, &self.flows, &mut self.findings);
            self.emit_findings();
        }
    }

    /// Ends every flow and flushes every sink: end of a replay, or shutdown.
    pub fn finish(&mut self) {
        for flow in self.flows.drain() {
            self.pending.push(FlowEvent::Ended {
                flow,
                why: EndReason::Shutdown,
            });
            self.drain_flow_events();
        }
        self.release_observations(Timestamp(u64::MAX));
        let scope = scope!(self);
        self.detectors
            .finish(&scope, self.flows.now(), &mut self.findings);
        self.emit_findings();
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
        self.tick();
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

    /// Writes one finding, naming the account behind its host when the detector did not.
    pub fn emit(&mut self, mut event: Event) {
        if event.account.is_none()
            && let Some(host) = event.host
        {
            event.account = self.account_of(host, event.ts);
        }
        event.seal();
        *self
            .stats
            .events
            .entry((event.kind.as_str(), event.reason, event.severity.as_str()))
            .or_default() += 1;
        if let Some(c) = self.collector.as_mut() {
            c.event(&event);
        }
        if let Some(sink) = self.events.as_mut() {
            sink.write(&event);
        }
        if let Some(alert) = self.detectors.on_event(&event) {
            self.emit(alert);
        }
    }

    /// Hands the detectors every public-address observation up to `now`, in time order.
    fn release_observations(&mut self, now: Timestamp) {
        let mut fresh = self.context.identity.drain_public_ip_observations();
        if !fresh.is_empty() {
            self.observations.append(&mut fresh);
            self.observations.sort_by_key(|o| std::cmp::Reverse(o.ts));
        }
        while self.observations.last().is_some_and(|o| o.ts <= now) {
            let Some(obs) = self.observations.pop() else {
                break;
            };
            if !self.primary && obs.source == ObservationSource::SessionFeed {
                continue;
            }
            if let Some(c) = self.collector.as_mut() {
                c.observation(&obs);
            }
            let scope = scope!(self);
            self.detectors
                .on_public_ip(&scope, &obs, &mut self.findings);
        }
    }

    fn emit_findings(&mut self) {
        let findings = std::mem::take(&mut self.findings);
        for event in findings {
            self.emit(event);
        }
    }

    fn account_of(&self, host: IpAddr, ts: Timestamp) -> Option<String> {
        self.context
            .identity
            .account_at(host, ts)
            .map(|a| a.id.to_string())
    }

    fn drain_flow_events(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        for ev in pending.drain(..) {
            match ev {
                FlowEvent::Resumed {
                    key,
                    from_orig,
                    ts,
                    prev,
                } => {
                    if let Some(flow) = self.flows.get(&key) {
                        let scope = scope!(self);
                        self.detectors.on_resume(
                            &scope,
                            &key,
                            flow,
                            from_orig,
                            ts,
                            prev,
                            &mut self.findings,
                        );
                    }
                }
                FlowEvent::NewBytes { key, ts } => {
                    if let Some(flow) = self.flows.get_mut(&key)
                        && !flow.dissected
                    {
                        identify_flow(
                            flow,
                            &mut self.names,
                            &mut self.shared,
                            &mut self.context.identity,
                            &mut self.stats,
                            ts,
                            false,
                        );
                        if flow.dissected {
                            let scope = scope!(self);
                            self.detectors.on_identified(
                                &scope,
                                &key,
                                flow,
                                ts,
                                &mut self.findings,
                            );
                        }
                    }
                }
                FlowEvent::Datagram { app, ts, bytes, .. } => {
                    datagram(app, &mut self.names, &mut self.context.identity, ts, &bytes)
                }
                FlowEvent::Interim { key, .. } => {
                    if let Some(flow) = self.flows.get(&key) {
                        let record = flow_record(
                            flow,
                            flow.details.clone(),
                            true,
                            None,
                            &self.names,
                            &self.context,
                            &self.network,
                        );
                        if let Some(sink) = self.flow_records.as_mut() {
                            sink.write_with(|line| record.write_json(line));
                        }
                    }
                }
                FlowEvent::Ended { mut flow, why } => {
                    let ts = flow.last;
                    if !flow.dissected {
                        identify_flow(
                            &mut flow,
                            &mut self.names,
                            &mut self.shared,
                            &mut self.context.identity,
                            &mut self.stats,
                            ts,
                            true,
                        );
                    }
                    let scope = scope!(self);
                    self.detectors.on_end(&scope, &flow, ts, &mut self.findings);
                    let details = flow.details.take();
                    let record = flow_record(
                        &flow,
                        details,
                        false,
                        Some(why.as_str()),
                        &self.names,
                        &self.context,
                        &self.network,
                    );
                    if let Some(c) = self.collector.as_mut() {
                        c.flow(&record);
                    }
                    if let Some(sink) = self.flow_records.as_mut() {
                        sink.write_with(|line| record.write_json(line));
                    }
                }
            }
        }
        self.pending = pending;
        self.emit_findings();
    }

    /// Who is behind an address and where it is, as the pipeline used it.
    pub fn context(&self) -> &Context {
        &self.context
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
        let identity = &self.context.identity;
        let evictions = (self.detectors.evictions().into_iter())
            .chain(identity.evictions())
            .chain([("dns_names", self.names.evictions())])
            .chain([("geo_cache", self.context.geo.cache_evictions())]);
        self.stats.state_evicted.extend(evictions);
        self.stats.last_packet_ts = self.last_ts.map(|t| t.as_secs_f64());
        let now = self.last_ts.unwrap_or_default();
        let inventory = self.context.identity.inventory();
        // Account labels only from the inventory (a bounded set); other hosts count as "".
        self.stats.remote_desktop_active.clear();
        for (host, app) in self.detectors.active_remote_desktop(now) {
            let account = self
                .context
                .identity
                .account_at(host, now)
                .filter(|a| inventory.get(&a.id).is_some())
                .map(|a| a.id.to_string())
                .unwrap_or_default();
            *self
                .stats
                .remote_desktop_active
                .entry((app.as_str(), account))
                .or_default() += 1;
        }
        self.stats.account_risk = self
            .detectors
            .account_scores(self.last_ts.unwrap_or_default())
            .into_iter()
            .filter(|(id, _)| inventory.get(id).is_some())
            .collect();
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
/// buffers, shares its SSH and TLS details with flows of the same software and counts the
/// label. DNS answers seen on the way feed the name cache.
fn identify_flow(
    flow: &mut Flow,
    names: &mut NameCache,
    shared: &mut SharedDetails,
    identity: &mut Identity,
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
    let follow = flow.proto == Proto::Udp && matches!(id.app, Some(App::Dns) | Some(App::Radius));
    flow.app = id.app;
    // Most flows carry no protocol details: they cost no allocation.
    let mut details = id.details;
    if id.done && !ending {
        shared.share(&mut details);
    }
    // A flow identified again (a DNS query, then its answer) reuses its box.
    match (&mut flow.details, details.is_empty()) {
        (_, true) => flow.details = None,
        (Some(boxed), false) => **boxed = details,
        (None, false) => flow.details = Some(Box::new(details)),
    }
    if id.done || ending {
        if follow {
            // The datagrams seen so far; later ones arrive as they come. The first server
            // datagram was parsed by identification: it goes in as `datagram` would put it.
            let mut answer = id.dns_answer;
            for (side, list) in streams.datagrams.iter().enumerate() {
                for (i, d) in list.iter().enumerate() {
                    match answer.take_if(|_| side == RESP && i == 0) {
                        Some(msg) if flow.app == Some(App::Dns) && dns::is_response(d) => {
                            names.insert(ts, &msg);
                        }
                        _ => datagram(flow.app, names, identity, ts, d),
                    }
                }
            }
        }
        flow.dissected = true;
        flow.guess = id.guess;
        flow.streams = None;
        flow.follow = follow;
        let label = flow.app.map_or("unknown", App::as_str);
        *stats.flows_by_app.entry(label).or_default() += 1;
    }
}

/// A datagram of a followed flow, by the flow's label: DNS answers feed the name cache
/// (queries are not even parsed), RADIUS accounting feeds identity.
fn datagram(
    app: Option<App>,
    names: &mut NameCache,
    identity: &mut Identity,
    ts: Timestamp,
    bytes: &[u8],
) {
    match app {
        Some(App::Dns) if dns::is_response(bytes) => {
            if let Ok(msg) = dns::parse_message(bytes) {
                names.insert(ts, &msg);
            }
        }
        Some(App::Radius) => {
            if let Ok(packet) = crate::dissect::radius::parse(bytes) {
                radius_accounting(identity, ts, &packet);
            }
        }
        _ => {}
    }
}

/// RFC 2866 §5.1 Acct-Status-Type: 1 start, 2 stop, 3 interim update.
fn radius_accounting(
    identity: &mut Identity,
    ts: Timestamp,
    packet: &crate::dissect::radius::Packet,
) {
    use crate::identity::SessionStatus;
    let Some(acct) = packet.accounting.as_ref() else {
        return;
    };
    let status = match acct.status_type {
        Some(1) => SessionStatus::Start,
        Some(2) => SessionStatus::Stop,
        Some(3) => SessionStatus::Interim,
        _ => return,
    };
    if let (Some(user), Some(ip)) = (acct.user_name.as_deref(), acct.framed_ip) {
        identity.observe_radius(
            ts,
            user,
            IpAddr::V4(ip),
            acct.calling_station_id.as_deref(),
            status,
        );
    }
}

/// The flow record, with the account behind its inside end and where its ends are.
fn flow_record(
    flow: &Flow,
    details: Option<Box<Details>>,
    interim: bool,
    why: Option<&'static str>,
    names: &NameCache,
    context: &Context,
    network: &NetworkConfig,
) -> FlowRecord {
    let mut record = FlowRecord::new(flow, details, interim, why);
    record.dns_name = names.lookup(flow.last, flow.resp.0).map(str::to_string);
    let host = [flow.orig.0, flow.resp.0]
        .into_iter()
        .find(|ip| network.is_inside(*ip));
    record.account = host
        .and_then(|h| context.identity.account_at(h, flow.first))
        .map(|a| a.id.to_string());
    (record.resp_country, record.resp_asn) = context.geo.country_asn(flow.resp.0);
    (record.orig_country, record.orig_asn) = context.geo.country_asn(flow.orig.0);
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ACK, PSH};
    use crate::dissect::identify::Protocol;
    use crate::flows::flow::segment;
    use crate::flows::{FlowConfig, FlowKey};

    /// Sessions of the same SSH software keep one copy of their details once dissection
    /// is over (banners and fingerprints are the fleet's, not the session's); other
    /// software gets its own.
    #[test]
    fn finished_ssh_sessions_share_their_details() {
        let mut table = FlowTable::new(FlowConfig::default());
        let mut names = NameCache::new(16);
        let mut shared = SharedDetails::default();
        let mut identity = Identity::new(Arc::new(Inventory::default()));
        let mut stats = Stats::default();
        let mut details = Vec::new();
        for (i, client_banner) in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"SSH-2.0-PuTTY_0.81\r\n",
        ]
        .into_iter()
        .enumerate()
        {
            let port = 40000 + i as u16;
            let ts = Timestamp(i as u64 * 1_000_000_000);
            let mut events = Vec::new();
            // Banners, then the client's keystrokes where its KEXINIT would be: the SSH
            // parser has its answer, and the flow is dissected.
            let data = ACK | PSH;
            let after_banner = 1 + client_banner.len() as u32;
            for (from_client, seq, bytes) in [
                (false, 1, &b"SSH-2.0-OpenSSH_9.6\r\n"[..]),
                (true, 1, client_banner),
                (true, after_banner, &[0x41; 36][..]),
                (false, 22, &[0x42; 36][..]),
            ] {
                let packet = segment(port, 22, from_client, data, seq, bytes);
                table.process(ts, &packet, 100, &mut events);
            }
            let key = FlowKey::of(&segment(port, 22, true, data, 0, b""));
            let flow = table.get_mut(&key).unwrap();
            identify_flow(
                flow,
                &mut names,
                &mut shared,
                &mut identity,
                &mut stats,
                ts,
                false,
            );
            assert!(flow.dissected);
            match flow.details.as_deref().and_then(|d| d.other.clone()) {
                Some(Protocol::Ssh(ssh)) => details.push(ssh),
                other => panic!("no SSH details: {other:?}"),
            }
        }
        assert_eq!(details[0].client.as_deref(), Some("SSH-2.0-OpenSSH_9.6"));
        assert!(Arc::ptr_eq(&details[0], &details[1]));
        assert!(!Arc::ptr_eq(&details[0], &details[2]));
        assert_eq!(shared.len(), (2, 0));
    }
}
