//! A sensor's side of the stream: observations, events and clock messages go into a bounded
//! queue that the caller never waits on, and a thread with its own tokio runtime sends them
//! with JetStream acknowledgements.
//!
//! A message leaves the queue only when the server has acknowledged it, so "buffered" counts
//! everything not yet known to be stored. Sending is pipelined (`max_in_flight` before the
//! first acknowledgement is awaited); when an acknowledgement fails (server away, leader
//! election, timeout) the round stops there and the next round sends again from the first
//! unacknowledged message. Messages of the failed round that had in fact been stored come
//! back as duplicates (same `Nats-Msg-Id`), which is why they are counted apart and why a
//! retried message may land after one sent behind it: the correlator counts such an
//! observation as late.
//!
//! Conservation, at any moment once [`Publisher::finish`] has returned:
//! `offered == acked + duplicates + dropped + buffered`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use tokio::sync::Notify;

use super::{
    Clock, Error, Kind, PublishConfig, StreamConfig, StreamSetup, TS_HEADER, ensure_stream,
};
use crate::timestamp::Timestamp;

/// Counters for `/metrics`, readable at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Messages handed to `publish_obs`, `publish_event`, `clock` and `end`.
    pub offered: u64,
    /// Stored by the server (`farmwatch_publish_messages_total{result="acked"}`).
    pub acked: u64,
    /// Acknowledged as a duplicate of a stored message (`result="duplicate"`).
    pub duplicates: u64,
    /// Refused because the buffer was full (`result="dropped"`).
    pub dropped: u64,
    /// Rounds that stopped at a failed send or acknowledgement and were sent again
    /// (`farmwatch_publish_retries_total`).
    pub retries: u64,
    /// Messages held, not yet acknowledged (`farmwatch_publish_buffered`).
    pub buffered: u64,
    /// Their payload bytes (`farmwatch_publish_buffered_bytes`).
    pub buffered_bytes: u64,
}

/// What [`Publisher::finish`] leaves behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishReport {
    pub stats: PublishStats,
    /// Messages still unacknowledged when the time ran out (lost with this process).
    pub buffered_unsent: u64,
    /// The last send or connection problem met, even one that passed since (for the log).
    pub last_error: Option<String>,
}

/// One message waiting for its acknowledgement.
#[derive(Clone)]
struct Outgoing {
    kind: Kind,
    msg_id: String,
    ts: Option<Timestamp>,
    payload: Bytes,
}

#[derive(Default)]
struct Queue {
    msgs: VecDeque<Outgoing>,
    bytes: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    max_messages: usize,
    max_bytes: usize,
    /// A message was queued.
    wake: Notify,
    /// `finish` was called: stop once the queue is empty or the deadline passes.
    closing: Mutex<Option<tokio::time::Instant>>,
    closed: Notify,
    offered: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    last_error: Mutex<Option<String>>,
    setup: (Mutex<Option<Result<StreamSetup, Error>>>, Condvar),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Publishes one sensor's messages; see the module documentation.
pub struct Publisher {
    shared: Arc<Shared>,
    sensor: String,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Starts the publishing thread. Fails only on what retrying cannot fix (a bad sensor name,
    /// server URL, config value or credentials file); an unreachable server is not an error:
    /// messages are buffered until it answers.
    pub fn start(
        sensor: &str,
        servers: &[String],
        config: &PublishConfig,
        stream: &StreamConfig,
    ) -> Result<Publisher, Error> {
        super::check_sensor_name(sensor)?;
        config.validate()?;
        stream.validate()?;
        super::server_addrs(servers)?;
        config.auth.options()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(format!("publish runtime: {e}")))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            max_messages: config.buffer_messages,
            max_bytes: config.buffer_bytes,
            wake: Notify::new(),
            closing: Mutex::new(None),
            closed: Notify::new(),
            offered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            last_error: Mutex::new(None),
            setup: (Mutex::new(None), Condvar::new()),
        });
        let task = Task {
            shared: shared.clone(),
            sensor: sensor.to_string(),
            servers: servers.to_vec(),
            config: config.clone(),
            stream: stream.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("farmwatch-publish".into())
            .spawn(move || runtime.block_on(task.run()))
            .map_err(|e| Error::new(format!("publish thread: {e}")))?;
        Ok(Publisher {
            shared,
            sensor: sensor.to_string(),
            thread: Some(thread),
        })
    }

    /// Queues an observation (`obs.<id>`); false when it was dropped because the buffer is full.
    pub fn publish_obs(&self, id: &str, ts: Timestamp, json: Vec<u8>) -> bool {
        self.offer(
            Outgoing {
                kind: Kind::Obs,
                msg_id: format!("obs.{id}"),
                ts: Some(ts),
                payload: json.into(),
            },
            false,
        )
    }

    /// Queues one of this sensor's own events (`ev.<sensor>.<id>`).
    pub fn publish_event(&self, id: &str, json: Vec<u8>) -> bool {
        self.offer(
            Outgoing {
                kind: Kind::Event,
                msg_id: format!("ev.{}.{id}", self.sensor),
                ts: None,
                payload: json.into(),
            },
            false,
        )
    }

    /// Queues a heartbeat: this sensor's packet clock has reached `ts`.
    pub fn clock(&self, ts: Timestamp) -> bool {
        self.offer_clock(Clock {
            ts_ns: ts.as_nanos(),
            end: false,
        })
    }

    /// Queues the end marker: nothing after `ts` will come. It is queued even when the buffer
    /// is full (one message), because without it `correlate --until-idle` would wait forever.
    pub fn end(&self, ts: Timestamp) -> bool {
        self.offer_clock(Clock {
            ts_ns: ts.as_nanos(),
            end: true,
        })
    }

    fn offer_clock(&self, clock: Clock) -> bool {
        let payload = serde_json::to_vec(&clock).unwrap_or_default();
        self.offer(
            Outgoing {
                kind: Kind::Clock,
                msg_id: clock.msg_id(&self.sensor),
                ts: Some(clock.ts()),
                payload: payload.into(),
            },
            clock.end,
        )
    }

    /// Never waits on the network: only on the queue's lock, which the sending thread holds
    /// for a few clones at a time.
    fn offer(&self, msg: Outgoing, always: bool) -> bool {
        let s = &self.shared;
        s.offered.fetch_add(1, Relaxed);
        {
            let mut q = lock(&s.queue);
            let full = q.msgs.len() >= s.max_messages || q.bytes + msg.payload.len() > s.max_bytes;
            if full && !always {
                s.dropped.fetch_add(1, Relaxed);
                return false;
            }
            q.bytes += msg.payload.len();
            q.msgs.push_back(msg);
        }
        s.wake.notify_one();
        true
    }

    pub fn stats(&self) -> PublishStats {
        self.shared.stats()
    }

    /// The stream check (created, or existing with its differences), waiting up to `wait`
    /// for a first attempt; an error is the last failed attempt (they go on in the
    /// background), None means no attempt has ended yet.
    pub fn stream_setup(&self, wait: Duration) -> Option<Result<StreamSetup, Error>> {
        let (lock_, cond) = &self.shared.setup;
        let guard = lock(lock_);
        let (guard, _) = cond
            .wait_timeout_while(guard, wait, |s| s.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.clone()
    }

    /// Sends what is buffered for at most `timeout`, then stops the thread and reports.
    pub fn finish(mut self, timeout: Duration) -> PublishReport {
        self.stop(timeout);
        let stats = self.shared.stats();
        PublishReport {
            stats,
            buffered_unsent: stats.buffered,
            last_error: lock(&self.shared.last_error).clone(),
        }
    }

    fn stop(&mut self, timeout: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        *lock(&self.shared.closing) = Some(tokio::time::Instant::now() + timeout);
        self.shared.closed.notify_one();
        self.shared.wake.notify_one();
        // The thread only ever ends by returning; a panic there is a bug already reported.
        let _ = thread.join();
    }
}

impl Drop for Publisher {
    /// Dropped without `finish`: stop at once, leaving the buffer unsent.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

impl Shared {
    fn stats(&self) -> PublishStats {
        let (buffered, bytes) = {
            let q = lock(&self.queue);
            (q.msgs.len() as u64, q.bytes as u64)
        };
        PublishStats {
            offered: self.offered.load(Relaxed),
            acked: self.acked.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            retries: self.retries.load(Relaxed),
            buffered,
            buffered_bytes: bytes,
        }
    }

    fn note_error(&self, e: impl std::fmt::Display) {
        *lock(&self.last_error) = Some(e.to_string());
    }

    fn closing(&self) -> Option<tokio::time::Instant> {
        *lock(&self.closing)
    }
}

/// The sending thread's work.
struct Task {
    shared: Arc<Shared>,
    sensor: String,
    servers: Vec<String>,
    config: PublishConfig,
    stream: StreamConfig,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Task {
    /// Runs until `finish` is called and either the queue is empty or its deadline passed.
    async fn run(self) {
        let shared = self.shared.clone();
        let deadline = async {
            loop {
                if let Some(at) = shared.closing() {
                    tokio::time::sleep_until(at).await;
                    return;
                }
                shared.closed.notified().await;
            }
        };
        tokio::select! {
            _ = self.send_all() => {}
            _ = deadline => {}
        }
    }

    async fn send_all(&self) {
        let s = &self.shared;
        let name = format!("farmwatch-publish-{}", self.sensor);
        let client = match super::connect(
            &self.servers,
            &self.config.auth,
            &name,
            self.config.connect_timeout,
        )
        .await
        {
            Ok(client) => client,
            Err(e) => {
                s.note_error(&e);
                s.set_setup(Err(e));
                return;
            }
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(self.config.ack_timeout)
            .ack_timeout(self.config.ack_timeout)
            .max_ack_inflight(self.config.max_in_flight)
            .build(client);

        let mut backoff = BACKOFF_MIN;
        loop {
            match ensure_stream(&js, &self.stream).await {
                Ok(setup) => {
                    s.set_setup(Ok(setup));
                    break;
                }
                // Unreachable, or a stream with foreign subjects: say so and keep trying
                // (the server may come back, someone may fix the stream).
                Err(e) => {
                    s.note_error(&e);
                    s.set_setup(Err(e));
                }
            }
            if s.closing().is_some() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }

        let subjects =
            [Kind::Obs, Kind::Event, Kind::Clock].map(|k| super::subject(k, &self.sensor));
        let subject = |kind: Kind| match kind {
            Kind::Obs => &subjects[0],
            Kind::Event => &subjects[1],
            _ => &subjects[2],
        };
        backoff = BACKOFF_MIN;
        loop {
            let notified = s.wake.notified();
            let round: Vec<Outgoing> = {
                let q = lock(&s.queue);
                q.msgs
                    .iter()
                    .take(self.config.max_in_flight)
                    .cloned()
                    .collect()
            };
            if round.is_empty() {
                if s.closing().is_some() {
                    return;
                }
                notified.await;
                continue;
            }
            let done = self.send_round(&js, &round, subject).await;
            {
                let mut q = lock(&s.queue);
                for _ in 0..done {
                    if let Some(m) = q.msgs.pop_front() {
                        q.bytes -= m.payload.len();
                    }
                }
            }
            if done < round.len() {
                s.retries.fetch_add(1, Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            } else {
                backoff = BACKOFF_MIN;
            }
        }
    }

    /// Sends `round` pipelined and awaits the acknowledgements in order; returns how many
    /// from the front were acknowledged.
    async fn send_round<'a>(
        &self,
        js: &jetstream::Context,
        round: &[Outgoing],
        subject: impl Fn(Kind) -> &'a String,
    ) -> usize {
        let s = &self.shared;
        let mut acks = Vec::with_capacity(round.len());
        for m in round {
            let mut publish = PublishMessage::build()
                .payload(m.payload.clone())
                .message_id(&m.msg_id);
            if let Some(ts) = m.ts {
                publish = publish.header(TS_HEADER, ts.as_nanos().to_string());
            }
            match js.send_publish(subject(m.kind).clone(), publish).await {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    s.note_error(format!("publishing: {e}"));
                    break;
                }
            }
        }
        let mut done = 0;
        for ack in acks {
            match ack.await {
                Ok(ack) if ack.duplicate => s.duplicates.fetch_add(1, Relaxed),
                Ok(_) => s.acked.fetch_add(1, Relaxed),
                Err(e) => {
                    s.note_error(format!("acknowledgement: {e}"));
                    break;
                }
            };
            done += 1;
        }
        done
    }
}

impl Shared {
    fn set_setup(&self, result: Result<StreamSetup, Error>) {
        let (lock_, cond) = &self.setup;
        let mut guard = lock(lock_);
        if guard.as_ref().is_none_or(|r| r.is_err()) {
            *guard = Some(result);
        }
        cond.notify_all();
    }
}
