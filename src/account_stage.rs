//! The account stage (DESIGN §7): one per sensor, after the flow stage. It consumes the
//! flow stage's items in packet-time order and owns everything that joins flows into
//! accounts: identity (inventory, session feed, RADIUS from the wire), per-account geo,
//! farm clusters, travel, working hours and the score. The scorer sees every finding
//! before any sink does, so an alert leaves with the findings behind it.
//!
//! Everything it learns can be saved and restored ([`StageState`]), for the correlator's
//! checkpoints; its config, inventory and outputs are not part of that state.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::accounts::{self, Inventory};
use crate::app::App;
use crate::config::{Config, NetworkConfig};
use crate::detect::score::Scorer;
use crate::detect::severity::SeverityPolicy;
use crate::detect::{Detectors, Moment, SavedDetector, Scope, Stage};
use crate::event::Event;
use crate::flow_stage::{Item, Reload, Stamped, record_host};
use crate::flows::record::FlowRecord;
use crate::geo::Geo;
use crate::identity::{Identity, PublicIpObservation, SessionEvent};
use crate::metrics::Stats;
use crate::observation::Observation;
use crate::publish::Publish;
use crate::report::Collector;
use crate::sink::{EventLines, FlowLines, JsonLines, Sink};
use crate::timestamp::Timestamp;

/// Who is behind an address and where it is: the account inventory, the identity
/// mappings (inventory hosts, session feed) and the geo databases.
pub struct Context {
    pub identity: Identity,
    pub geo: Arc<Geo>,
    /// The session feed's records as loaded into `identity`, in time order: a sensor that
    /// publishes hands them on as observations.
    pub feed: Vec<SessionEvent>,
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
        let mut feed = Vec::new();
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
            feed = report.sessions;
        }
        Ok(Context {
            identity,
            geo: Arc::new(geo),
            feed,
        })
    }
}

/// The JSON-lines outputs of `replay` and `live`; each is optional.
#[derive(Default)]
pub struct Sinks {
    pub events: Option<JsonLines>,
    pub flows: Option<JsonLines>,
    /// `--publish`: observations, events and the packet clock to NATS JetStream.
    pub publish: Option<Publish>,
}

impl Sinks {
    fn into_outputs(self) -> Vec<Box<dyn Sink>> {
        let events = self
            .events
            .map(|e| Box::new(EventLines(e)) as Box<dyn Sink>);
        let flows = self.flows.map(|f| Box::new(FlowLines(f)) as Box<dyn Sink>);
        events.into_iter().chain(flows).collect()
    }
}

/// What the account stage learned, borrowed to be saved or owned once read back: identity's
/// session ranges, every detector's state, the scores, and what waits for packet time.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StageState<'a> {
    identity: Cow<'a, Identity>,
    detectors: Vec<SavedDetector>,
    scorer: Cow<'a, Scorer>,
    ticked: u64,
    expired: u64,
    observations: Cow<'a, [PublicIpObservation]>,
}

pub struct AccountStage {
    context: Context,
    network: NetworkConfig,
    detectors: Detectors,
    scorer: Scorer,
    severity: SeverityPolicy,
    findings: Vec<Event>,
    /// The last whole second of packet time the stage caught up at.
    ticked: u64,
    /// The hour of packet time old state was last let go at.
    expired: u64,
    /// Public-address observations (session feed, RADIUS) not yet due by packet time,
    /// newest first.
    observations: Vec<PublicIpObservation>,
    /// The session feed loaded at start, as observations, published at the first packet
    /// when this stage publishes.
    feed: Vec<Observation>,
    /// Observation ids of that feed's records: a sensor publishing the same record
    /// (`correlate --sessions` given the feed too) does not apply it twice.
    feed_ids: HashSet<String>,
    /// Where events, flow records and observations go.
    outputs: Vec<Box<dyn Sink>>,
    /// Taken back by the replay at the end, for its report line and exit status.
    pub publish: Option<Publish>,
    /// Events written and not yet taken (`correlate` publishes them), when it is Some.
    pub emitted: Option<Vec<Event>>,
    /// Keeps findings and flow records for the replay's summary and report: a sink too,
    /// kept typed because the report reads it at the end.
    pub collector: Option<Collector>,
    /// Events, sinks and account figures (the flow stage counts packets and flows).
    pub stats: Stats,
}

impl AccountStage {
    pub fn new(config: &Config, mut sinks: Sinks, mut context: Context) -> AccountStage {
        let feed: Vec<Observation> = std::mem::take(&mut context.feed)
            .into_iter()
            .map(Observation::Session)
            .collect();
        let feed_ids = feed.iter().map(Observation::id).collect();
        AccountStage {
            context,
            network: config.network.clone(),
            detectors: Detectors::new(config, Stage::Account),
            scorer: Scorer::new(&config.detect.score),
            severity: SeverityPolicy::new(&config.detect.severity),
            findings: Vec::new(),
            ticked: 0,
            expired: 0,
            observations: Vec::new(),
            feed,
            feed_ids,
            publish: sinks.publish.take(),
            outputs: sinks.into_outputs(),
            emitted: None,
            collector: None,
            stats: Stats::default(),
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

    /// More of the session feed (lines appended since it was last read), learned at `now`
    /// and published stamped so.
    pub fn load_sessions(&mut self, now: Timestamp, feed: impl std::io::BufRead) {
        let report = self.context.identity.load_sessions(feed);
        if let Some(e) = report.errors.first() {
            eprintln!(
                "farmwatch: session feed: {} of {} new lines skipped (first: {})",
                report.errors_total, report.lines, e.message
            );
        }
        if let Some(p) = self.publish.as_mut() {
            for session in report.sessions {
                p.observation(now, &Observation::Session(session));
            }
        }
    }

    /// Publishes the session feed loaded at start, at the first packet `now`. A record
    /// before it is stamped with its own time, so `correlate` applies it where one replay of
    /// every sensor's input would have it; a later one is stamped `now`, as this sensor
    /// knew it from the start (stamps must not run ahead of the clock it publishes).
    fn publish_feed(&mut self, now: Timestamp) {
        let feed = std::mem::take(&mut self.feed);
        if let Some(p) = self.publish.as_mut() {
            for obs in feed {
                p.observation(obs.ts().min(now), &obs);
            }
        }
    }

    /// Its state, between two items (no finding waits to be written).
    pub fn save(&self) -> Result<StageState<'_>, String> {
        Ok(StageState {
            identity: Cow::Borrowed(&self.context.identity),
            detectors: self.detectors.save()?,
            scorer: Cow::Borrowed(&self.scorer),
            ticked: self.ticked,
            expired: self.expired,
            observations: Cow::Borrowed(&self.observations),
        })
    }

    /// Takes back a saved state in place of what it learned so far (a fresh stage's, or
    /// the session feed read again at start: the state already holds it).
    pub fn restore(&mut self, saved: StageState<'_>) -> Result<(), String> {
        self.context.identity.restore(saved.identity.into_owned())?;
        self.detectors.restore(&saved.detectors)?;
        self.scorer.restore(saved.scorer.into_owned())?;
        self.ticked = saved.ticked;
        self.expired = saved.expired;
        self.observations = saved.observations.into_owned();
        Ok(())
    }

    /// Who is behind an address and where it is, as the stage used it.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// One item of the flow stage, in packet-time order.
    pub fn apply(&mut self, stamped: Stamped) {
        let now = stamped.at;
        match stamped.item {
            Item::Reload(r) => match &*r {
                Reload::Inventory(inv) => self.reload_inventory(inv.clone()),
                Reload::Network(n) => self.set_network(n.clone()),
                Reload::Sessions(lines) => self.load_sessions(now, lines.as_bytes()),
            },
            Item::Start => {
                self.publish_feed(now);
                for event in accounts::inventory_events(self.context.identity.inventory(), now) {
                    self.emit(event);
                }
            }
            Item::Observation(obs) => {
                if let Some(p) = self.publish.as_mut() {
                    p.observation(now, &obs);
                }
                self.observe(obs)
            }
            Item::Record(record) => self.record(record),
            Item::Tick => {
                if let Some(p) = self.publish.as_mut() {
                    p.clock(now);
                }
                self.tick(now)
            }
        }
    }

    fn observe(&mut self, obs: Observation) {
        match obs {
            Observation::Radius {
                ts,
                user,
                framed_ip,
                calling_station,
                status,
            } => self.context.identity.observe_radius(
                ts,
                &user,
                framed_ip,
                calling_station.as_deref(),
                status,
            ),
            Observation::Session(ref session) => {
                if !self.feed_ids.contains(&obs.id()) {
                    self.context.identity.apply_session(session);
                }
            }
            other => {
                // A flow detector's finding goes out as it is; account detectors see it
                // too (shared_relay judges rtt_split's across hosts), and theirs follow it.
                let scope = scope(&self.network, &self.context);
                let mut derived = Vec::new();
                self.detectors
                    .on(&Moment::Observed(&other), &scope, &mut derived);
                if let Observation::Finding { event } = other {
                    self.findings.push(*event);
                }
                self.findings.append(&mut derived);
            }
        }
        self.emit_findings();
    }

    /// A flow record: the account behind its inside end is named, then it is written.
    /// Kept in its box: a record is some 700 bytes, which moving it out copied each time.
    fn record(&mut self, mut record: Box<FlowRecord>) {
        record.account = record_host(&self.network, &record)
            .and_then(|h| self.context.identity.account_at(h, record.ts))
            .map(|a| a.id.to_string());
        for sink in self.sinks() {
            sink.flow(&record);
        }
    }

    /// Once per second of packet time, identity and the account detectors catch up.
    fn tick(&mut self, now: Timestamp) {
        if now.secs() <= self.ticked {
            return;
        }
        self.ticked = now.secs();
        self.context.identity.advance(now);
        self.release_observations(now);
        if now.secs() / 3600 > self.expired {
            self.expired = now.secs() / 3600;
            let scope = scope(&self.network, &self.context);
            self.detectors
                .on(&Moment::Hour(now), &scope, &mut self.findings);
        }
        self.emit_findings();
    }

    /// The input is over: every pending observation is due, and every sink flushed.
    pub fn finish(&mut self) {
        self.release_observations(Timestamp(u64::MAX));
        self.emit_findings();
        self.flush_sinks();
        if let Some(p) = self.publish.as_mut() {
            p.end();
        }
    }

    /// Pushes buffered records out to the sinks (live: every second, so output is timely).
    pub fn flush_sinks(&mut self) {
        for sink in self.sinks() {
            sink.flush();
        }
    }

    /// Writes one finding, naming the account behind its host when the detector did not
    /// and weighing it for that account's kind; the scorer sees it first, and its alert
    /// follows it out.
    pub fn emit(&mut self, mut event: Event) {
        if event.account.is_none()
            && let Some(host) = event.host
        {
            event.account = self.account_of(host, event.ts);
        }
        let inventory = self.context.identity.inventory();
        if let Some(account) = event.account.as_deref().and_then(|id| inventory.get(id)) {
            event.severity = self
                .severity
                .severity(account.kind, event.reason, event.severity);
        }
        event.seal();
        let alert = self.scorer.observe(&event);
        self.write(&event);
        if let Some(alert) = alert {
            self.emit(alert);
        }
    }

    fn write(&mut self, event: &Event) {
        *self
            .stats
            .events
            .entry((event.kind.as_str(), event.reason, event.severity.as_str()))
            .or_default() += 1;
        for sink in self.sinks() {
            sink.event(event);
        }
        if let Some(p) = self.publish.as_mut() {
            p.event(event);
        }
        if let Some(out) = self.emitted.as_mut() {
            out.push(event.clone());
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
            for sink in self.sinks() {
                sink.observation(&obs);
            }
            let scope = scope(&self.network, &self.context);
            self.detectors
                .on(&Moment::PublicIp(&obs), &scope, &mut self.findings);
        }
    }

    fn emit_findings(&mut self) {
        if self.findings.is_empty() {
            return;
        }
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

    /// Fills the account figures of `stats` at packet time `now`: risk scores, and the
    /// remote-desktop sessions the flow stage has open, by account.
    pub fn sync_stats(&mut self, now: Timestamp, remote_desktop: &[(IpAddr, App)]) {
        let identity = &self.context.identity;
        let inventory = identity.inventory();
        // Account labels only from the inventory (a bounded set); other hosts count as "".
        self.stats.remote_desktop_active.clear();
        for (host, app) in remote_desktop {
            let account = identity
                .account_at(*host, now)
                .filter(|a| inventory.get(&a.id).is_some())
                .map(|a| a.id.to_string())
                .unwrap_or_default();
            *self
                .stats
                .remote_desktop_active
                .entry((app.as_str(), account))
                .or_default() += 1;
        }
        self.stats.publish = self.publish.as_ref().map(Publish::stats);
        self.stats.account_risk = self
            .scorer
            .scores(now)
            .into_iter()
            .filter(|(id, _)| inventory.get(id).is_some())
            .collect();
        let evictions = (self.detectors.evictions().into_iter())
            .chain([self.scorer.evictions()])
            .chain(identity.evictions())
            .chain(self.context.geo.evictions())
            .chain(self.collector.iter().flat_map(Collector::evictions));
        self.stats.state_evicted.extend(evictions);
        for sink in &self.outputs {
            let (lost, _) = sink.lost();
            if lost > 0 {
                self.stats.sink_errors.insert(sink.name(), lost);
            }
        }
    }

    /// The first write error of each sink, for the exit status.
    pub fn sink_failures(&self) -> Vec<String> {
        self.outputs.iter().filter_map(|s| s.lost().1).collect()
    }

    /// Every output, the collector included.
    fn sinks(&mut self) -> impl Iterator<Item = &mut dyn Sink> {
        let collector = self.collector.as_mut().map(|c| c as &mut dyn Sink);
        self.outputs
            .iter_mut()
            .map(|s| &mut **s as &mut dyn Sink)
            .chain(collector)
    }
}

/// The account detectors' view of the world.
fn scope<'a>(network: &'a NetworkConfig, context: &'a Context) -> Scope<'a> {
    Scope {
        network,
        identity: &context.identity,
        geo: &context.geo,
        sessions: None,
    }
}
