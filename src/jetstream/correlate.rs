//! The correlator's side of the stream: producers and their clocks, observations in stream
//! order, checkpoints, and the alerts it publishes. Every call blocks on the source's own
//! tokio runtime, so the account stage stays plain synchronous code (and must call it from a
//! plain thread, not from inside another runtime).
//!
//! **Where reading resumes.** The checkpoint is the authority, not the consumer's ack floor.
//! Acknowledgements only ever follow a stored checkpoint, so after a crash the ack floor is at
//! or behind the checkpoint's sequence (behind when the process died between storing and
//! acknowledging), and messages the server had delivered but not had acknowledged would come
//! back only after the ack wait, out of order. So [`CorrelateSource::open`] deletes the durable
//! consumer and creates it again delivering from the checkpoint's sequence + 1 (or from the
//! start without a checkpoint). The durable consumer then serves operators (`nats consumer
//! info` shows the correlator's progress) and the lag metric. Running two correlators with
//! the same consumer name is therefore wrong: each open resets the other.
//!
//! nats-server 2.9 allows one filter subject per consumer, so the consumer reads `farmwatch.>`
//! and the sensors' own events and the correlator's alerts are skipped here and counted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, kv, message::PublishMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Runtime;

use super::checkpoint::{self, Manifest};
use super::{
    ALERTS_SUBJECT, Clock, CorrelateConfig, Error, Kind, STREAM, StreamConfig, StreamSetup,
    TS_HEADER, ensure_stream, err, parse_subject,
};
use crate::timestamp::Timestamp;

/// A sensor known from its clock messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Producer {
    /// Its newest clock, and the stream sequence that carried it.
    pub clock: Clock,
    pub seq: u64,
}

/// What one stream message carries for the account stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An observation's JSON and its packet time.
    Obs { ts: Timestamp, payload: Bytes },
    /// A heartbeat or end marker.
    Clock(Clock),
}

/// One message from the stream, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub seq: u64,
    pub subject: String,
    pub sensor: String,
    pub record: Record,
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorrelateStats {
    /// Observations and clock messages handed out
    /// (`farmwatch_correlate_messages_total{kind="observation"|"clock"}`).
    pub observations: u64,
    pub clocks: u64,
    /// Sensors' events and alerts read past (`kind="skipped"`).
    pub skipped: u64,
    /// Messages that could not be read: an unknown subject, no or a bad timestamp header, a
    /// malformed clock (`kind="malformed"`).
    pub malformed: u64,
    /// Messages at or before what was already handed out, dropped (`kind="redelivered"`).
    pub redelivered: u64,
    /// Pulls that failed and made the consumer be created again
    /// (`farmwatch_correlate_fetch_errors_total`).
    pub fetch_errors: u64,
    /// Checkpoints stored (`farmwatch_correlate_checkpoints_total`).
    pub checkpoints: u64,
    /// The stream sequence the newest checkpoint reflects, stored or resumed from
    /// (`farmwatch_correlate_checkpoint_sequence`), and its compressed size
    /// (`farmwatch_correlate_checkpoint_bytes`).
    pub checkpoint_seq: u64,
    pub checkpoint_bytes: u64,
}

/// Reads the stream for the one account stage; see the module documentation.
pub struct CorrelateSource {
    rt: Runtime,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    consumer: PullConsumer,
    kv: kv::Store,
    config: CorrelateConfig,
    setup: StreamSetup,
    producers: BTreeMap<String, Producer>,
    /// Delivered, not yet acknowledged: acknowledging the newest up to a sequence acknowledges
    /// everything before it (`AckPolicy::All`).
    unacked: VecDeque<(u64, Acker)>,
    /// The highest stream sequence handed out or read past.
    position: u64,
    manifest: Option<Manifest>,
    resumed: Option<(u64, Vec<u8>)>,
    stats: CorrelateStats,
    last_error: Option<String>,
}

impl CorrelateSource {
    /// Connects, ensures the stream and the state bucket, loads the newest checkpoint, learns
    /// the producers from the last message on each clock subject, and creates the durable
    /// consumer delivering from just after the checkpoint. Server timeouts are retried for up
    /// to 30 s; a config problem, a foreign stream or a corrupt checkpoint fails at once.
    pub fn open(
        servers: &[String],
        config: &CorrelateConfig,
        stream: &StreamConfig,
    ) -> Result<CorrelateSource, Error> {
        config.validate()?;
        stream.validate()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(format!("correlate runtime: {e}")))?;
        let (js, a) = rt.block_on(async {
            let client = super::connect(
                servers,
                &config.auth,
                &config.consumer,
                config.connect_timeout,
            )
            .await?;
            let js = jetstream::new(client);
            let give_up = tokio::time::Instant::now() + OPEN_PATIENCE;
            let mut backoff = Duration::from_millis(200);
            loop {
                match attach(&js, config, stream).await {
                    Ok(a) => return Ok((js, a)),
                    Err(e)
                        if e.is_transient() && tokio::time::Instant::now() + backoff < give_up =>
                    {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => return Err(e),
                }
            }
        })?;
        Ok(CorrelateSource {
            rt,
            js,
            position: a.manifest.as_ref().map_or(0, |m| m.seq),
            stream: a.stream,
            consumer: a.consumer,
            kv: a.kv,
            config: config.clone(),
            setup: a.setup,
            producers: a.producers,
            unacked: VecDeque::new(),
            stats: CorrelateStats {
                checkpoint_seq: a.manifest.as_ref().map_or(0, |m| m.seq),
                checkpoint_bytes: a.manifest.as_ref().map_or(0, |m| m.bytes as u64),
                ..CorrelateStats::default()
            },
            manifest: a.manifest,
            resumed: a.resumed,
            last_error: None,
        })
    }

    /// Whether this connection created the stream, or how the existing one differs.
    pub fn stream_setup(&self) -> &StreamSetup {
        &self.setup
    }

    /// The checkpoint this source resumed from, as `(sequence, state)`; handed out once.
    pub fn take_checkpoint(&mut self) -> Option<(u64, Vec<u8>)> {
        self.resumed.take()
    }

    /// Producers known so far: from the last clock message of each sensor at open, then from
    /// every clock message delivered.
    pub fn producers(&self) -> &BTreeMap<String, Producer> {
        &self.producers
    }

    /// The highest stream sequence handed out or read past: what a checkpoint taken now
    /// reflects, once the account stage holds everything delivered.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn stats(&self) -> CorrelateStats {
        self.stats
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Up to `[correlate] batch` messages in stream order, waiting at most `wait` for the
    /// first. A failed pull is counted and the consumer created again from
    /// [`position`](Self::position) + 1; the call then returns what it had.
    pub fn next_batch(&mut self, wait: Duration) -> Vec<Delivery> {
        let wait = wait.max(Duration::from_millis(10));
        let consumer = &self.consumer;
        let batch = self.config.batch;
        let (msgs, failure) = self.rt.block_on(async {
            let mut got = Vec::new();
            let mut msgs = match consumer
                .batch()
                .max_messages(batch)
                .expires(wait)
                .messages()
                .await
            {
                Ok(msgs) => msgs,
                Err(e) => return (got, Some(err("pulling")(e))),
            };
            while let Some(msg) = msgs.next().await {
                match msg {
                    Ok(msg) => got.push(msg),
                    Err(e) => return (got, Some(err("pulling")(e))),
                }
            }
            (got, None)
        });
        let mut out = Vec::with_capacity(msgs.len());
        for msg in msgs {
            self.take(msg, &mut out);
        }
        if let Some(e) = failure {
            self.pull_failed(e);
        }
        out
    }

    fn take(&mut self, msg: jetstream::Message, out: &mut Vec<Delivery>) {
        let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
            self.stats.malformed += 1;
            return;
        };
        if seq <= self.position {
            self.stats.redelivered += 1;
            return;
        }
        self.position = seq;
        let (msg, acker) = msg.split();
        self.unacked.push_back((seq, acker));
        let subject = msg.subject.to_string();
        let Some((kind, sensor)) = parse_subject(&subject) else {
            self.stats.malformed += 1;
            return;
        };
        let record = match kind {
            Kind::Event | Kind::Alert => {
                self.stats.skipped += 1;
                return;
            }
            Kind::Obs => {
                let ts = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(TS_HEADER))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                match ts {
                    Some(ns) => Record::Obs {
                        ts: Timestamp(ns),
                        payload: msg.payload,
                    },
                    None => {
                        self.stats.malformed += 1;
                        return;
                    }
                }
            }
            Kind::Clock => match serde_json::from_slice::<Clock>(&msg.payload) {
                Ok(clock) => {
                    self.producers
                        .insert(sensor.to_string(), Producer { clock, seq });
                    Record::Clock(clock)
                }
                Err(_) => {
                    self.stats.malformed += 1;
                    return;
                }
            },
        };
        match record {
            Record::Obs { .. } => self.stats.observations += 1,
            Record::Clock(_) => self.stats.clocks += 1,
        }
        out.push(Delivery {
            seq,
            sensor: sensor.to_string(),
            subject,
            record,
        });
    }

    fn pull_failed(&mut self, e: Error) {
        self.stats.fetch_errors += 1;
        self.last_error = Some(e.to_string());
        let stream = &self.stream;
        let config = &self.config;
        let position = self.position;
        match self.rt.block_on(fresh_consumer(stream, config, position)) {
            Ok(consumer) => self.consumer = consumer,
            Err(e) => self.last_error = Some(e.to_string()),
        }
    }

    /// Acknowledges every delivered message up to `seq`. Call it only for what a stored
    /// checkpoint holds ([`save_checkpoint`](Self::save_checkpoint) does).
    pub fn ack_through(&mut self, seq: u64) -> Result<(), Error> {
        let mut newest = None;
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            newest = self.unacked.pop_front();
        }
        let Some((_, acker)) = newest else {
            return Ok(());
        };
        self.rt
            .block_on(acker.double_ack())
            .map_err(err("acknowledging"))
    }

    /// Stores `state` as the checkpoint reflecting the stream up to `seq`, then acknowledges
    /// up to `seq`.
    pub fn save_checkpoint(&mut self, seq: u64, state: &[u8]) -> Result<(), Error> {
        if seq > self.position {
            // Resuming after it would skip messages the state never saw.
            return Err(Error::new(format!(
                "checkpoint at sequence {seq} is past what was read ({})",
                self.position
            )));
        }
        let manifest = self.rt.block_on(checkpoint::save(
            &self.kv,
            &self.config.consumer,
            self.manifest.as_ref(),
            seq,
            state,
        ))?;
        self.stats.checkpoint_seq = manifest.seq;
        self.stats.checkpoint_bytes = manifest.bytes as u64;
        self.manifest = Some(manifest);
        self.stats.checkpoints += 1;
        self.ack_through(seq)
    }

    /// Reads the newest stored checkpoint again.
    pub fn load_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let key = &self.config.consumer;
        self.rt.block_on(async {
            match checkpoint::manifest(&self.kv, key).await? {
                Some(m) => Ok(Some((m.seq, checkpoint::load(&self.kv, key, &m).await?))),
                None => Ok(None),
            }
        })
    }

    /// Messages not yet covered by a checkpoint: not delivered, or delivered and not
    /// acknowledged (`farmwatch_correlate_consumer_lag`).
    pub fn lag(&mut self) -> Result<u64, Error> {
        let consumer = &mut self.consumer;
        self.rt.block_on(async {
            let info = consumer.info().await.map_err(err("consumer info"))?;
            Ok(info.num_pending + info.num_ack_pending as u64)
        })
    }

    /// Publishes one account-stage event on `farmwatch.alerts` (`Nats-Msg-Id: alert.<id>`, so
    /// an event derived again after a restart is stored once) and waits for its ack.
    pub fn publish_alert(&self, id: &str, json: Vec<u8>) -> Result<(), Error> {
        self.rt.block_on(async {
            let publish = PublishMessage::build()
                .payload(json.into())
                .message_id(format!("alert.{id}"));
            self.js
                .send_publish(ALERTS_SUBJECT, publish)
                .await
                .map_err(err("publishing alert"))?
                .await
                .map_err(err("alert acknowledgement"))?;
            Ok(())
        })
    }
}

/// How long `open` keeps trying while the servers time out or elect leaders (a cluster that
/// just lost a node), before it gives up with the last error.
const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// What `open` sets up on a connection.
struct Attached {
    stream: jetstream::stream::Stream,
    kv: kv::Store,
    setup: StreamSetup,
    manifest: Option<Manifest>,
    resumed: Option<(u64, Vec<u8>)>,
    producers: BTreeMap<String, Producer>,
    consumer: PullConsumer,
}

async fn attach(
    js: &jetstream::Context,
    config: &CorrelateConfig,
    stream: &StreamConfig,
) -> Result<Attached, Error> {
    let setup = ensure_stream(js, stream).await?;
    let kv = checkpoint::bucket(js, stream.replicas).await?;
    let manifest = checkpoint::manifest(&kv, &config.consumer).await?;
    let resumed = match &manifest {
        Some(m) => Some((m.seq, checkpoint::load(&kv, &config.consumer, m).await?)),
        None => None,
    };
    let position = manifest.as_ref().map_or(0, |m| m.seq);
    let handle = js
        .get_stream(STREAM)
        .await
        .map_err(err("stream FARMWATCH"))?;
    let producers = learn_producers(&handle).await?;
    let consumer = fresh_consumer(&handle, config, position).await?;
    Ok(Attached {
        stream: handle,
        kv,
        setup,
        manifest,
        resumed,
        producers,
        consumer,
    })
}

/// The last clock message of each sensor, by the stream's per-subject counts and "last
/// message for subject".
async fn learn_producers(
    stream: &jetstream::stream::Stream,
) -> Result<BTreeMap<String, Producer>, Error> {
    let subject = super::subject(Kind::Clock, ">");
    let mut subjects = stream
        .info_with_subjects(&subject)
        .await
        .map_err(err("listing clock subjects"))?;
    let mut names = Vec::new();
    while let Some(entry) = subjects.next().await {
        let (name, _count) = entry.map_err(err("listing clock subjects"))?;
        names.push(name);
    }
    let mut producers = BTreeMap::new();
    for name in names {
        let Some((Kind::Clock, sensor)) = parse_subject(&name) else {
            continue;
        };
        let msg = stream
            .get_last_raw_message_by_subject(&name)
            .await
            .map_err(err("reading last clock"))?;
        // A malformed clock teaches nothing; the next heartbeat will.
        if let Ok(clock) = serde_json::from_slice::<Clock>(&msg.payload) {
            producers.insert(
                sensor.to_string(),
                Producer {
                    clock,
                    seq: msg.sequence,
                },
            );
        }
    }
    Ok(producers)
}

/// The durable consumer, created anew to deliver from `after + 1`.
async fn fresh_consumer(
    stream: &jetstream::stream::Stream,
    config: &CorrelateConfig,
    after: u64,
) -> Result<PullConsumer, Error> {
    // Not found is the usual case on first start; anything else shows up in create.
    let _ = stream.delete_consumer(&config.consumer).await;
    let deliver_policy = match after {
        0 => DeliverPolicy::All,
        seq => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
    };
    stream
        .create_consumer(pull::Config {
            durable_name: Some(config.consumer.clone()),
            description: Some("farmwatch correlate".to_string()),
            deliver_policy,
            ack_policy: AckPolicy::All,
            // Acknowledgements wait for checkpoints; a redelivery before then would only be
            // dropped as already seen.
            ack_wait: (config.checkpoint_interval * 10).max(Duration::from_secs(300)),
            max_ack_pending: -1,
            filter_subject: super::SUBJECTS.to_string(),
            ..Default::default()
        })
        .await
        .map_err(err("creating consumer"))
}
