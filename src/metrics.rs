//! Prometheus metrics (DESIGN §4; the names are a public contract that the shipped alert rules
//! and dashboard in `deploy/` depend on).
//!
//! The packet path never touches Prometheus atomics: the pipeline keeps plain counters in
//! [`Stats`] and hands a snapshot to [`Metrics::publish`] now and then. Counters advance by the
//! difference to the previously published snapshot, so a pipeline may rebuild its `Stats`
//! (a restart from zero counts as a reset, never as a decrease). Labels come only from bounded
//! sets: static reason strings, app labels and inventory account ids — never an address or SNI.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use crate::jetstream::{CorrelateStats, PublishStats};
use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Plain counters the pipeline fills; cheap to clone into [`Metrics::publish`].
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    /// Decode problems by reason (a bounded set of static labels).
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub capture_drops_kernel: u64,
    pub capture_drops_interface: u64,
    /// Packets the sensor itself dropped because a worker's queue was full. `live` waits for
    /// room instead (the backlog stays in the kernel ring), so today this stays 0.
    pub capture_drops_queue: u64,
    pub flows_active: u64,
    pub flows_total: u64,
    /// Flows dropped before their end, by reason: `table_full`, ...
    pub flows_evicted: BTreeMap<&'static str, u64>,
    /// Flows by `App::as_str()`.
    pub flows_by_app: BTreeMap<&'static str, u64>,
    /// Events by (kind, reason, severity).
    pub events: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// Open remote-desktop sessions by (app, account); the account only from the inventory.
    pub remote_desktop_active: BTreeMap<(&'static str, String), u64>,
    /// Current risk score per inventory account.
    pub account_risk: BTreeMap<String, f64>,
    /// Records a sink did not write (full disk, I/O error), by sink: `events`, `flows`.
    pub sink_errors: BTreeMap<&'static str, u64>,
    /// Packet time (unix seconds) of the newest packet.
    pub last_packet_ts: Option<f64>,
    /// Capture records cut short (snaplen or a truncated file).
    pub truncated_records: u64,
    /// pcapng packets skipped because their interface is not defined in their section.
    pub capture_skipped_records: u64,
    /// pcapng blocks of types not read, skipped by their length as the spec allows.
    pub capture_unread_blocks: u64,
    /// Capture files stopped early at a corrupt record or a failed read.
    pub capture_corrupt_files: u64,
    /// Records the replay's walkers left out: their bytes were not where the index of the
    /// input said (none unless the index is wrong).
    pub capture_unindexed_records: u64,
    /// Bounded state: entries each structure dropped, or did not admit, at its limit (the
    /// README's "Limits" table names every structure). Counted, never silent.
    pub state_evicted: BTreeMap<&'static str, u64>,
    /// `--publish`: what the sensor handed to NATS JetStream (None without it).
    pub publish: Option<PublishStats>,
    /// `farmwatch correlate`: the stream read and the observations applied.
    pub correlate: Option<CorrelateFigures>,
}

/// What `farmwatch correlate` counts besides its stream source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorrelateFigures {
    pub source: CorrelateStats,
    /// Messages not yet applied (not acknowledged).
    pub lag: u64,
    /// Observations applied in packet-time order behind the watermark.
    pub applied: u64,
    /// Observations older than the watermark when they arrived: applied at once.
    pub late: u64,
    /// Observations whose JSON did not read back (an unknown reason, a newer sensor).
    pub undecodable: u64,
    /// Observations already applied, recognised by id (a replay published twice, beyond the
    /// server's duplicate window): not applied again.
    pub repeated: u64,
    /// Ids of applied observations forgotten early because [`crate::correlate`] holds at
    /// most so many (`farmwatch_state_evicted_total{structure="correlate_repeat_ids"}`).
    pub repeat_ids_evicted: u64,
    /// Times a producer silent for `[correlate] max_lag` stopped holding the others back.
    pub stalled: u64,
    /// How long the last checkpoint took to serialize and store.
    pub checkpoint_duration: std::time::Duration,
}

impl Stats {
    /// Adds another worker's counters to these (live capture with several workers). Every
    /// field is named here, without `..`: a new field does not compile until it says how
    /// workers' values combine.
    pub fn merge(&mut self, other: &Stats) {
        let Stats {
            packets,
            bytes,
            decode_errors,
            capture_drops_kernel,
            capture_drops_interface,
            capture_drops_queue,
            flows_active,
            flows_total,
            flows_evicted,
            flows_by_app,
            events,
            remote_desktop_active,
            account_risk,
            sink_errors,
            last_packet_ts,
            truncated_records,
            capture_skipped_records,
            capture_unread_blocks,
            capture_corrupt_files,
            capture_unindexed_records,
            state_evicted,
            publish,
            correlate,
        } = other;
        self.packets += packets;
        self.bytes += bytes;
        self.capture_drops_kernel += capture_drops_kernel;
        self.capture_drops_interface += capture_drops_interface;
        self.capture_drops_queue += capture_drops_queue;
        self.flows_active += flows_active;
        self.flows_total += flows_total;
        self.truncated_records += truncated_records;
        self.capture_skipped_records += capture_skipped_records;
        self.capture_unread_blocks += capture_unread_blocks;
        self.capture_corrupt_files += capture_corrupt_files;
        self.capture_unindexed_records += capture_unindexed_records;
        add_each(&mut self.decode_errors, decode_errors);
        add_each(&mut self.flows_evicted, flows_evicted);
        add_each(&mut self.flows_by_app, flows_by_app);
        add_each(&mut self.events, events);
        add_each(&mut self.remote_desktop_active, remote_desktop_active);
        add_each(&mut self.sink_errors, sink_errors);
        add_each(&mut self.state_evicted, state_evicted);
        // An account's risk is scored where its flows are; the highest view wins.
        for (k, v) in account_risk {
            let risk = self.account_risk.entry(k.clone()).or_insert(*v);
            *risk = risk.max(*v);
        }
        // One publisher and one correlator per process: there is nothing to add up.
        self.publish = self.publish.or(*publish);
        self.correlate = self.correlate.or(*correlate);
        self.last_packet_ts = match (self.last_packet_ts, *last_packet_ts) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
    }
}

fn add_each<K: Ord + Clone>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// The registry and the snapshot last published into it.
pub struct Metrics {
    registry: Registry,
    packets: IntCounter,
    bytes: IntCounter,
    capture_drops: IntCounterVec,
    decode_errors: IntCounterVec,
    truncated_records: IntCounter,
    capture_skipped_records: IntCounter,
    capture_unread_blocks: IntCounter,
    capture_unindexed_records: IntCounter,
    capture_corrupt_files: IntCounter,
    flows_active: Gauge,
    flows_total: IntCounter,
    flows_evicted: IntCounterVec,
    flows_by_app: IntCounterVec,
    events: IntCounterVec,
    remote_desktop_active: GaugeVec,
    account_risk: GaugeVec,
    sink_errors: IntCounterVec,
    state_evicted: IntCounterVec,
    last_packet_timestamp: Gauge,
    processing_lag: Gauge,
    /// Live sensor events outside the packet path, counted where they happen.
    reloads: IntCounterVec,
    /// Registered when a publisher or a correlator first reports.
    publish: PublishFamilies,
    correlate: CorrelateFamilies,
    /// What the counters stand at, and whether the packet-clock gauges are registered (they
    /// appear with the first packet: before it, "0" would be a lie).
    published: Mutex<Published>,
}

#[derive(Default)]
struct Published {
    stats: Stats,
    packet_clock: bool,
    publish: bool,
    correlate: bool,
}

/// `farmwatch_publish_*` (DESIGN §7).
struct PublishFamilies {
    messages: IntCounterVec,
    retries: IntCounter,
    buffered: Gauge,
    buffered_bytes: Gauge,
}

/// Results of `farmwatch_publish_messages_total`.
const PUBLISH_RESULTS: [&str; 3] = ["acked", "duplicate", "dropped"];

impl PublishFamilies {
    fn new() -> PublishFamilies {
        PublishFamilies {
            messages: unregistered(IntCounterVec::new(
                Opts::new(
                    "farmwatch_publish_messages_total",
                    "Messages offered to NATS JetStream, by result.",
                ),
                &["result"],
            )),
            retries: unregistered(IntCounter::new(
                "farmwatch_publish_retries_total",
                "Send rounds that stopped at a failed send or acknowledgement and were sent again.",
            )),
            buffered: unregistered(Gauge::new(
                "farmwatch_publish_buffered",
                "Messages held, not yet acknowledged by NATS JetStream.",
            )),
            buffered_bytes: unregistered(Gauge::new(
                "farmwatch_publish_buffered_bytes",
                "Payload bytes of the messages held.",
            )),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.messages.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.buffered.clone()),
            Box::new(self.buffered_bytes.clone()),
        ]
    }

    fn set(&self, now: &PublishStats, before: &PublishStats) {
        for (result, now, before) in [
            (PUBLISH_RESULTS[0], now.acked, before.acked),
            (PUBLISH_RESULTS[1], now.duplicates, before.duplicates),
            (PUBLISH_RESULTS[2], now.dropped, before.dropped),
        ] {
            advance(&self.messages.with_label_values(&[result]), now, before);
        }
        advance(&self.retries, now.retries, before.retries);
        self.buffered.set(now.buffered as f64);
        self.buffered_bytes.set(now.buffered_bytes as f64);
    }
}

/// `farmwatch_correlate_*` (DESIGN §7).
struct CorrelateFamilies {
    lag: Gauge,
    messages: IntCounterVec,
    observations: IntCounterVec,
    fetch_errors: IntCounter,
    checkpoints: IntCounter,
    /// The newest checkpoint: the sequence it reflects, its compressed size, its cost.
    checkpoint_seq: Gauge,
    checkpoint_bytes: Gauge,
    checkpoint_seconds: Gauge,
    stalled: IntCounter,
}

impl CorrelateFamilies {
    fn new() -> CorrelateFamilies {
        CorrelateFamilies {
            lag: unregistered(Gauge::new(
                "farmwatch_correlate_consumer_lag",
                "Stream messages not yet held by a checkpoint of the correlator (delivered or not).",
            )),
            messages: unregistered(IntCounterVec::new(
                Opts::new(
                    "farmwatch_correlate_messages_total",
                    "Stream messages read, by kind.",
                ),
                &["kind"],
            )),
            observations: unregistered(IntCounterVec::new(
                Opts::new(
                    "farmwatch_correlate_observations_total",
                    "Observations, by what became of them: applied in order, late (applied at once), undecodable, repeated (already applied: not applied again).",
                ),
                &["result"],
            )),
            fetch_errors: unregistered(IntCounter::new(
                "farmwatch_correlate_fetch_errors_total",
                "Pulls that failed and made the consumer be created again.",
            )),
            checkpoints: unregistered(IntCounter::new(
                "farmwatch_correlate_checkpoints_total",
                "Checkpoints of the account stage stored.",
            )),
            checkpoint_seq: unregistered(Gauge::new(
                "farmwatch_correlate_checkpoint_sequence",
                "The stream sequence the newest checkpoint reflects (stored or resumed from).",
            )),
            checkpoint_bytes: unregistered(Gauge::new(
                "farmwatch_correlate_checkpoint_bytes",
                "Compressed size of the newest checkpoint.",
            )),
            checkpoint_seconds: unregistered(Gauge::new(
                "farmwatch_correlate_checkpoint_seconds",
                "Time the last checkpoint took to serialize and store.",
            )),
            stalled: unregistered(IntCounter::new(
                "farmwatch_correlate_producers_stalled_total",
                "Times a silent sensor stopped holding the watermark back.",
            )),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.lag.clone()),
            Box::new(self.messages.clone()),
            Box::new(self.observations.clone()),
            Box::new(self.fetch_errors.clone()),
            Box::new(self.checkpoints.clone()),
            Box::new(self.checkpoint_seq.clone()),
            Box::new(self.checkpoint_bytes.clone()),
            Box::new(self.checkpoint_seconds.clone()),
            Box::new(self.stalled.clone()),
        ]
    }

    fn set(&self, now: &CorrelateFigures, before: &CorrelateFigures) {
        let (n, b) = (&now.source, &before.source);
        for (kind, now, before) in [
            ("observation", n.observations, b.observations),
            ("clock", n.clocks, b.clocks),
            ("skipped", n.skipped, b.skipped),
            ("malformed", n.malformed, b.malformed),
            ("redelivered", n.redelivered, b.redelivered),
        ] {
            advance(&self.messages.with_label_values(&[kind]), now, before);
        }
        for (result, now, before) in [
            ("applied", now.applied, before.applied),
            ("late", now.late, before.late),
            ("undecodable", now.undecodable, before.undecodable),
            ("repeated", now.repeated, before.repeated),
        ] {
            advance(&self.observations.with_label_values(&[result]), now, before);
        }
        advance(&self.fetch_errors, n.fetch_errors, b.fetch_errors);
        advance(&self.checkpoints, n.checkpoints, b.checkpoints);
        self.checkpoint_seq.set(n.checkpoint_seq as f64);
        self.checkpoint_bytes.set(n.checkpoint_bytes as f64);
        self.checkpoint_seconds
            .set(now.checkpoint_duration.as_secs_f64());
        advance(&self.stalled, now.stalled, before.stalled);
        self.lag.set(now.lag as f64);
    }
}

/// Registers `collectors` the first time `on` is true.
fn register_once(
    registry: &Registry,
    done: &mut bool,
    on: bool,
    collectors: Vec<Box<dyn Collector>>,
) {
    if on && !*done {
        for c in collectors {
            // Fails only for a name registered twice, which `done` prevents.
            let _ = registry.register(c);
        }
        *done = true;
    }
}

/// Drop sources of `farmwatch_capture_drops_total`: pcap's statistics (kernel, interface)
/// and the sensor's own worker queues.
const DROP_SOURCES: [&str; 3] = ["kernel", "interface", "queue"];
/// Results of `farmwatch_reloads_total`.
const RELOAD_RESULTS: [&str; 2] = ["ok", "failed"];
/// Sinks reported from the start, so an alert on their rate has a series before the first error.
const SINKS: [&str; 2] = ["events", "flows"];
/// Every bounded structure whose evictions are counted (`structure` of
/// `farmwatch_state_evicted_total`), reported from the start so a rate alert has a series.
pub const BOUNDED_STRUCTURES: [&str; 30] = [
    "fragment_routes",
    "identity_addresses",
    "identity_ranges",
    "dns_names",
    "geo_cache",
    "geo_records",
    "remote_desktop_sessions",
    "remote_desktop_turn",
    "stepping_stone",
    "rtt_split_pending",
    "rtt_split_relays",
    "shared_relay_relays",
    "relay_service_pending",
    "relay_service_reported",
    "tunnel_reported",
    "reverse_session_flows",
    "geo_anomaly_accounts",
    "geo_anomaly_reported",
    "farm_cluster_prefixes",
    "farm_cluster_reported",
    "rtt_distance_addresses",
    "latency_sessions",
    "operator_latency_addresses",
    "score_accounts",
    "report_findings",
    "report_public_ips",
    "report_tallies",
    "report_activity",
    "report_rtt_addresses",
    "correlate_repeat_ids",
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Metrics {
            packets: register(
                r,
                IntCounter::new("farmwatch_packets_total", "Packets seen."),
            ),
            bytes: register(
                r,
                IntCounter::new("farmwatch_bytes_total", "Bytes seen on the wire."),
            ),
            capture_drops: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_capture_drops_total",
                        "Packets the capture lost, by where they were dropped.",
                    ),
                    &["source"],
                ),
            ),
            decode_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_decode_errors_total",
                        "Packets that could not be decoded, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            truncated_records: register(
                r,
                IntCounter::new(
                    "farmwatch_capture_truncated_records_total",
                    "Capture records shorter than the packet on the wire.",
                ),
            ),
            capture_skipped_records: register(
                r,
                IntCounter::new(
                    "farmwatch_capture_skipped_records_total",
                    "pcapng packets skipped: their interface is not defined in their section.",
                ),
            ),
            capture_unread_blocks: register(
                r,
                IntCounter::new(
                    "farmwatch_capture_unread_blocks_total",
                    "pcapng blocks of types not read, skipped by their length.",
                ),
            ),
            capture_corrupt_files: register(
                r,
                IntCounter::new(
                    "farmwatch_capture_corrupt_files_total",
                    "Capture files stopped early at a corrupt record or a failed read.",
                ),
            ),
            capture_unindexed_records: register(
                r,
                IntCounter::new(
                    "farmwatch_capture_unindexed_records_total",
                    "Records replay walkers left out: not where the index of the input said.",
                ),
            ),
            flows_active: register(
                r,
                Gauge::new("farmwatch_flows_active", "Flows currently tracked."),
            ),
            flows_total: register(
                r,
                IntCounter::new("farmwatch_flows_total", "Flows started since launch."),
            ),
            flows_evicted: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_flows_evicted_total",
                        "Flows dropped from the table before their end, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            flows_by_app: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_flows_by_app_total",
                        "Flows by application label.",
                    ),
                    &["app"],
                ),
            ),
            events: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_events_total",
                        "Events written, by kind, reason and severity.",
                    ),
                    &["kind", "reason", "severity"],
                ),
            ),
            remote_desktop_active: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "farmwatch_remote_desktop_sessions_active",
                        "Open remote-desktop sessions by application and inventory account.",
                    ),
                    &["app", "account"],
                ),
            ),
            account_risk: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "farmwatch_account_risk_score",
                        "Current laptop-farm risk score of an inventory account.",
                    ),
                    &["account"],
                ),
            ),
            sink_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_sink_errors_total",
                        "Records an output did not write (lost to a full disk or an I/O error), by sink.",
                    ),
                    &["sink"],
                ),
            ),
            state_evicted: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_state_evicted_total",
                        "Entries a bounded structure dropped, or did not admit, at its limit, by structure.",
                    ),
                    &["structure"],
                ),
            ),
            last_packet_timestamp: unregistered(Gauge::new(
                "farmwatch_last_packet_timestamp_seconds",
                "Packet time of the newest packet, in unix seconds.",
            )),
            processing_lag: unregistered(Gauge::new(
                "farmwatch_processing_lag_seconds",
                "Wall-clock time minus the packet time of the newest packet.",
            )),
            reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "farmwatch_reloads_total",
                        "SIGHUP reloads of the config and inventory, by result.",
                    ),
                    &["result"],
                ),
            ),
            published: Mutex::new(Published::default()),
            publish: PublishFamilies::new(),
            correlate: CorrelateFamilies::new(),
            registry,
        };
        let build_info: IntGaugeVec = register(
            &metrics.registry,
            IntGaugeVec::new(
                Opts::new(
                    "farmwatch_build_info",
                    "Always 1; the version label says which build runs.",
                ),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for source in DROP_SOURCES {
            metrics.capture_drops.with_label_values(&[source]);
        }
        for sink in SINKS {
            metrics.sink_errors.with_label_values(&[sink]);
        }
        for result in RELOAD_RESULTS {
            metrics.reloads.with_label_values(&[result]);
        }
        for structure in BOUNDED_STRUCTURES {
            metrics.state_evicted.with_label_values(&[structure]);
        }
        metrics
    }

    /// One SIGHUP reload finished: `ok`, or `failed` (the old state was kept).
    pub fn count_reload(&self, ok: bool) {
        let result = RELOAD_RESULTS[usize::from(!ok)];
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Brings the registry to `stats`. `wall_now_unix` is the wall clock (unix seconds), used
    /// only for the processing lag; the caller reads it so this stays deterministic to test.
    pub fn publish(&self, stats: &Stats, wall_now_unix: f64) {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = &published.stats;

        advance(&self.packets, stats.packets, before.packets);
        advance(&self.bytes, stats.bytes, before.bytes);
        advance(
            &self.capture_drops.with_label_values(&[DROP_SOURCES[0]]),
            stats.capture_drops_kernel,
            before.capture_drops_kernel,
        );
        advance(
            &self.capture_drops.with_label_values(&[DROP_SOURCES[1]]),
            stats.capture_drops_interface,
            before.capture_drops_interface,
        );
        advance(
            &self.capture_drops.with_label_values(&[DROP_SOURCES[2]]),
            stats.capture_drops_queue,
            before.capture_drops_queue,
        );
        advance(
            &self.truncated_records,
            stats.truncated_records,
            before.truncated_records,
        );
        advance(
            &self.capture_skipped_records,
            stats.capture_skipped_records,
            before.capture_skipped_records,
        );
        advance(
            &self.capture_unread_blocks,
            stats.capture_unread_blocks,
            before.capture_unread_blocks,
        );
        advance(
            &self.capture_corrupt_files,
            stats.capture_corrupt_files,
            before.capture_corrupt_files,
        );
        advance(
            &self.capture_unindexed_records,
            stats.capture_unindexed_records,
            before.capture_unindexed_records,
        );
        advance(&self.flows_total, stats.flows_total, before.flows_total);
        advance_each(
            &self.decode_errors,
            &stats.decode_errors,
            &before.decode_errors,
            |reason| [*reason],
        );
        advance_each(
            &self.flows_evicted,
            &stats.flows_evicted,
            &before.flows_evicted,
            |reason| [*reason],
        );
        advance_each(
            &self.flows_by_app,
            &stats.flows_by_app,
            &before.flows_by_app,
            |app| [*app],
        );
        advance_each(
            &self.events,
            &stats.events,
            &before.events,
            |(kind, reason, severity)| [*kind, *reason, *severity],
        );
        advance_each(
            &self.sink_errors,
            &stats.sink_errors,
            &before.sink_errors,
            |sink| [*sink],
        );
        advance_each(
            &self.state_evicted,
            &stats.state_evicted,
            &before.state_evicted,
            |structure| [*structure],
        );

        self.flows_active.set(stats.flows_active as f64);
        set_each(
            &self.remote_desktop_active,
            &stats.remote_desktop_active,
            &before.remote_desktop_active,
            |(app, account)| [*app, account.as_str()],
            |sessions| *sessions as f64,
        );
        set_each(
            &self.account_risk,
            &stats.account_risk,
            &before.account_risk,
            |account| [account.as_str()],
            |score| *score,
        );

        let show_clock = stats.last_packet_ts.is_some();
        if show_clock != published.packet_clock {
            for gauge in [&self.last_packet_timestamp, &self.processing_lag] {
                let collector = Box::new(gauge.clone());
                // Both calls only fail for a registration state we just checked.
                let _ = if show_clock {
                    self.registry.register(collector)
                } else {
                    self.registry.unregister(collector)
                };
            }
            published.packet_clock = show_clock;
        }
        if let Some(ts) = stats.last_packet_ts {
            self.last_packet_timestamp.set(ts);
            self.processing_lag.set(wall_now_unix - ts);
        }

        register_once(
            &self.registry,
            &mut published.publish,
            stats.publish.is_some(),
            self.publish.collectors(),
        );
        if let Some(now) = &stats.publish {
            let before = published.stats.publish.unwrap_or_default();
            self.publish.set(now, &before);
        }
        register_once(
            &self.registry,
            &mut published.correlate,
            stats.correlate.is_some(),
            self.correlate.collectors(),
        );
        if let Some(now) = &stats.correlate {
            let before = published.stats.correlate.unwrap_or_default();
            self.correlate.set(now, &before);
        }

        published.stats = stats.clone();
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            // Only malformed families fail to encode; a comment keeps the scrape parseable.
            .unwrap_or_else(|e| format!("# farmwatch: cannot encode metrics: {e}\n"))
    }

    /// Writes [`Metrics::render`] to `path` (`replay --metrics-out`).
    pub fn write_to_file(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.render())
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Registers a metric defined above. Definitions are constants with distinct valid names, so
/// a failure is a programming error that `Metrics::new` in any test reveals.
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<C>,
) -> C {
    let metric = unregistered(metric);
    registry
        .register(Box::new(metric.clone()))
        .expect("farmwatch metric names are distinct");
    metric
}

fn unregistered<C>(metric: prometheus::Result<C>) -> C {
    metric.expect("farmwatch metric definitions are valid")
}

/// Advances `counter` by how far `now` moved since `before`; a value below `before` means the
/// source restarted from zero, so all of `now` is new.
fn advance(counter: &IntCounter, now: u64, before: u64) {
    counter.inc_by(now.checked_sub(before).unwrap_or(now));
}

fn advance_each<K: Ord, const N: usize>(
    vec: &IntCounterVec,
    now: &BTreeMap<K, u64>,
    before: &BTreeMap<K, u64>,
    labels: impl for<'a> Fn(&'a K) -> [&'a str; N],
) {
    for (key, value) in now {
        let old = before.get(key).copied().unwrap_or(0);
        advance(&vec.with_label_values(&labels(key)), *value, old);
    }
}

/// Sets one gauge per key of `now` and removes those of `before` that are gone, so a closed
/// session or a removed account stops being reported.
fn set_each<K: Ord, V, const N: usize>(
    vec: &GaugeVec,
    now: &BTreeMap<K, V>,
    before: &BTreeMap<K, V>,
    labels: impl for<'a> Fn(&'a K) -> [&'a str; N],
    value: impl Fn(&V) -> f64,
) {
    for (key, v) in now {
        vec.with_label_values(&labels(key)).set(value(v));
    }
    for key in before.keys().filter(|key| !now.contains_key(key)) {
        // Err only says the series was never created; nothing to remove then.
        let _ = vec.remove_label_values(&labels(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series` followed by a space.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    /// The HTTP endpoint shares one `Metrics` between the publisher and request handlers.
    #[test]
    fn metrics_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Metrics>();
    }

    #[test]
    fn counter_restart_counts_as_reset() {
        let metrics = Metrics::new();
        let mut stats = Stats {
            packets: 10,
            ..Stats::default()
        };
        metrics.publish(&stats, 0.0);
        stats.packets = 4;
        metrics.publish(&stats, 0.0);
        assert_eq!(
            sample(&metrics.render(), "farmwatch_packets_total"),
            Some(14.0)
        );
    }

    /// Workers' counters add up, the newest packet time wins, and a structure's evictions
    /// are exported under its label.
    #[test]
    fn merged_evictions_are_exported() {
        let mut one = Stats::default();
        one.state_evicted.insert("identity_addresses", 3);
        let mut two = Stats {
            last_packet_ts: Some(5.0),
            ..Stats::default()
        };
        two.state_evicted.insert("identity_addresses", 4);
        two.state_evicted.insert("dns_names", 1);
        one.merge(&two);
        assert_eq!(one.last_packet_ts, Some(5.0));
        let metrics = Metrics::new();
        metrics.publish(&one, 5.0);
        let text = metrics.render();
        let series = |s: &str| format!("farmwatch_state_evicted_total{{structure=\"{s}\"}}");
        assert_eq!(sample(&text, &series("identity_addresses")), Some(7.0));
        assert_eq!(sample(&text, &series("dns_names")), Some(1.0));
        assert_eq!(sample(&text, &series("score_accounts")), Some(0.0));
    }

    #[test]
    fn packet_clock_appears_with_first_packet() {
        let metrics = Metrics::new();
        metrics.publish(&Stats::default(), 100.0);
        assert!(
            !metrics
                .render()
                .contains("farmwatch_processing_lag_seconds")
        );
        let stats = Stats {
            last_packet_ts: Some(90.5),
            ..Stats::default()
        };
        metrics.publish(&stats, 100.0);
        let text = metrics.render();
        assert_eq!(sample(&text, "farmwatch_processing_lag_seconds"), Some(9.5));
        assert_eq!(
            sample(&text, "farmwatch_last_packet_timestamp_seconds"),
            Some(90.5)
        );
    }

    /// The publish and correlate families appear only once a publisher or a correlator
    /// reports, and then advance by delta like every other counter.
    #[test]
    fn scale_out_families_appear_with_their_source() {
        let metrics = Metrics::new();
        metrics.publish(&Stats::default(), 0.0);
        assert!(!metrics.render().contains("farmwatch_publish_"));
        assert!(!metrics.render().contains("farmwatch_correlate_"));
        let mut stats = Stats {
            publish: Some(PublishStats {
                offered: 12,
                acked: 10,
                dropped: 2,
                buffered: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        metrics.publish(&stats, 0.0);
        if let Some(p) = stats.publish.as_mut() {
            p.acked = 15;
        }
        stats.correlate = Some(CorrelateFigures {
            applied: 7,
            late: 1,
            lag: 4,
            ..Default::default()
        });
        metrics.publish(&stats, 0.0);
        let text = metrics.render();
        let at = |series: &str| sample(&text, series);
        assert_eq!(
            at("farmwatch_publish_messages_total{result=\"acked\"}"),
            Some(15.0)
        );
        assert_eq!(
            at("farmwatch_publish_messages_total{result=\"dropped\"}"),
            Some(2.0)
        );
        assert_eq!(at("farmwatch_publish_buffered"), Some(3.0));
        assert_eq!(
            at("farmwatch_correlate_observations_total{result=\"applied\"}"),
            Some(7.0)
        );
        assert_eq!(
            at("farmwatch_correlate_observations_total{result=\"late\"}"),
            Some(1.0)
        );
        assert_eq!(at("farmwatch_correlate_consumer_lag"), Some(4.0));
    }
}
