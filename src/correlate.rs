//! `farmwatch correlate` (DESIGN §7): the one account stage over every sensor's observations,
//! read from NATS JetStream and applied in packet-time order behind the sensors' clocks.
//!
//! **Order.** Each producer (sensor) has a lane: its observations in stream order, and its
//! watermark, the newest clock it sent. An item is applied once every producer that has not
//! ended has a watermark past it; a producer silent for `[correlate] max_lag` (wall time)
//! stops holding the others back, and that is counted. Items of one moment are applied in the
//! order the replay's merge uses ([`Item::order`]), so the account stage makes the same
//! judgements as one `replay` of every sensor's input.
//!
//! **Checkpoints.** Every `[correlate] checkpoint_observations` observations read or
//! `checkpoint_interval`, and on the way out, the correlator stores its state in the
//! key-value bucket `FARMWATCH_STATE` with the stream sequence it reflects (everything read
//! so far): the account stage ([`StageState`]), the lanes with the items still waiting in
//! them, and the length of `--events`. The events reach `--events` before the state
//! that says they were written, and messages are acknowledged only once a checkpoint holds
//! them, so the consumer's lag is what a restart would read again. On start it restores the
//! newest checkpoint and reads from the sequence after it; without one, from the stream's
//! start. A checkpoint that does not read (another format version, corrupt) is refused.
//!
//! **Restart.** What was derived after the last checkpoint is derived again, identically:
//! the ids of the events written since (the lines of `--events` past the length the
//! checkpoint noted) are read back, so none is written twice, and `farmwatch.alerts` stores
//! an `alert.<id>` once within the stream's duplicate window. What was derived before it is
//! not derived again (the restored stage remembers what it reported), so the correlator
//! keeps the ids of the events written since its last checkpoint only.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::io::{BufRead, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::account_stage::{AccountStage, Context, Sinks, StageState};
use crate::config::Config;
use crate::flow_stage::{Item, Stamped, sort_items};
use crate::jetstream::{CorrelateSource, Delivery, Record, STATE_BUCKET, StreamSetup};
use crate::metrics::{CorrelateFigures, Metrics, Stats};
use crate::observation::Observation;
use crate::replay::Failure;
use crate::sink::{JsonLines, Target};
use crate::state;
use crate::timestamp::Timestamp;

/// The `correlate` command line, validated.
pub struct CorrelateArgs {
    /// `--nats`: replaces `[correlate] servers` when not empty.
    pub servers: Vec<String>,
    pub config: Config,
    pub accounts: Option<PathBuf>,
    pub sessions: Option<PathBuf>,
    pub events: Target,
    pub listen: SocketAddr,
    pub until_idle: Option<Duration>,
}

/// How long one pull waits for the first message.
const PULL_WAIT: Duration = Duration::from_millis(250);
/// How often `/metrics` is brought up to date and the events flushed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

pub fn run(args: CorrelateArgs) -> Result<(), Failure> {
    let config = args.config;
    let servers = if args.servers.is_empty() {
        config.correlate.servers.clone()
    } else {
        args.servers
    };
    let context = Context::load(&config, args.accounts.as_deref(), args.sessions.as_deref())
        .map_err(Failure::Usage)?;
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let opening = Instant::now();
    let mut source =
        CorrelateSource::open(&servers, &config.correlate, &config.stream).map_err(|e| {
            if e.is_transient() {
                Failure::Runtime(e.to_string())
            } else {
                Failure::Usage(e.to_string())
            }
        })?;
    if let StreamSetup::Existing(diffs) = source.stream_setup() {
        for d in diffs {
            eprintln!("farmwatch: {d}");
        }
    }
    let mut stage = AccountStage::new(&config, Sinks::default(), context);
    stage.emitted = Some(Vec::new());
    let mut merge = Merge::new(&config, source.producers().keys());
    let mut written = HashSet::new();
    let mut events_from = 0;
    let opened = opening.elapsed();
    let resumed = source.take_checkpoint();
    if let Some((seq, bytes)) = &resumed {
        let restoring = Instant::now();
        let refused = |e: String| {
            Failure::Usage(format!(
                "checkpoint {} in {STATE_BUCKET} (sequence {seq}): {e}; delete that key or \
                 name another [correlate] consumer to read the stream from its start",
                config.correlate.consumer
            ))
        };
        let checkpoint: Checkpoint = state::load(bytes).map_err(refused)?;
        stage.restore(checkpoint.stage).map_err(refused)?;
        merge.restore(checkpoint.merge).map_err(refused)?;
        written = checkpoint.written.into_owned();
        events_from = checkpoint.events_len;
        eprintln!(
            "farmwatch: checkpoint restored sequence={seq} state_bytes={} open_ms={} ms={}",
            bytes.len(),
            opened.as_millis(),
            restoring.elapsed().as_millis()
        );
    }
    let mut events =
        open_events(&args.events, events_from, &mut written).map_err(Failure::Usage)?;
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        stop: AtomicBool::new(false),
        last_error: Mutex::new(None),
    });
    let http = serve(listener, shared.clone())
        .map_err(|e| Failure::Runtime(format!("cannot start the HTTP endpoint: {e}")))?;
    eprintln!(
        "farmwatch: correlate started consumer={} listen={} resumed={}",
        config.correlate.consumer,
        http.local_addr,
        resumed.map_or(0, |(seq, _)| seq)
    );

    let mut figures = CorrelateFigures::default();
    let mut last_arrival = Instant::now();
    let mut refreshed = Instant::now();
    let mut saved = Saved::now(&source);
    let mut state_bytes = 0;
    let mut failures = Vec::new();
    loop {
        let stop = shared.stop.load(Ordering::Relaxed);
        let batch = if stop {
            Vec::new()
        } else {
            source.next_batch(PULL_WAIT)
        };
        if !batch.is_empty() {
            last_arrival = Instant::now();
        }
        for delivery in batch {
            merge.take(delivery, &mut stage, &mut figures);
        }
        merge.release(&mut stage, &mut figures, Instant::now());
        let idle = args
            .until_idle
            .is_some_and(|d| merge.all_ended() && last_arrival.elapsed() >= d);
        if idle {
            // Every producer is done: what waits for packet time is due, as at a replay's end.
            stage.finish();
            saved.finished_since = true;
        }
        for event in stage
            .emitted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            if !written.insert(event.id.clone()) {
                continue;
            }
            events.write(&event);
            match serde_json::to_vec(&event) {
                Ok(json) => {
                    if let Err(e) = source.publish_alert(&event.id, json) {
                        *lock(&shared.last_error) = Some(e.to_string());
                    }
                }
                Err(e) => *lock(&shared.last_error) = Some(e.to_string()),
            }
        }
        let last = stop || idle;
        if saved.due(&source, &config, last) {
            let begun = Instant::now();
            match checkpoint(&mut source, &stage, &merge, &mut events) {
                Ok(len) => {
                    // What was written before a stored checkpoint is never derived again:
                    // the restored stage remembers what it reported.
                    written.clear();
                    state_bytes = len;
                    saved = Saved::now(&source);
                    figures.checkpoint_duration = begun.elapsed();
                }
                Err(Problem::Events(e)) => {
                    failures.push(e);
                    break;
                }
                Err(Problem::Store(e)) => {
                    // Tried again after as many observations or as long.
                    saved = Saved {
                        position: saved.position,
                        ..Saved::now(&source)
                    };
                    *lock(&shared.last_error) = Some(e);
                }
            }
        }
        if last || refreshed.elapsed() >= REFRESH_EVERY {
            if events.flush().is_err()
                && let Some(e) = &events.first_error
            {
                failures.push(format!("{:?}: {e}", events.target()));
                break;
            }
            figures.source = source.stats();
            if let Ok(lag) = source.lag() {
                figures.lag = lag;
            }
            if let Some(e) = source.last_error() {
                *lock(&shared.last_error) = Some(e.to_string());
            }
            shared.publish(&mut stage, figures, merge.applied);
            refreshed = Instant::now();
        }
        if last {
            break;
        }
    }
    let _ = events.flush();
    if let Some(e) = &events.first_error {
        failures.push(format!("{:?}: {e}", events.target()));
    }
    http.shutdown();
    let read = source.stats();
    eprintln!(
        "farmwatch: correlate stopped read={} applied={} late={} undecodable={} repeated={} \
         events={} checkpoints={} checkpoint={} state_bytes={state_bytes} checkpoint_bytes={} \
         checkpoint_ms={}",
        read.observations,
        figures.applied,
        figures.late,
        figures.undecodable,
        figures.repeated,
        events.written,
        read.checkpoints,
        read.checkpoint_seq,
        read.checkpoint_bytes,
        figures.checkpoint_duration.as_millis()
    );
    failures.dedup();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(failures.join("; ")))
    }
}

/// The correlator's checkpoint: the account stage, the lanes with what waits in them, and
/// the events written, as of the stream sequence it is stored with.
#[derive(Serialize, Deserialize)]
struct Checkpoint<'a> {
    stage: StageState<'a>,
    merge: SavedMerge,
    /// Ids of events written that a restart must not write again. Always empty now: the
    /// restored stage remembers what it reported before the checkpoint, and what it reports
    /// after is read back from `--events` past `events_len`; so the correlator holds only
    /// the ids written since its last checkpoint, not every id of its life. Kept in the
    /// format so checkpoints of either kind read.
    written: Cow<'a, HashSet<String>>,
    /// The length of `--events` then: the ids written after it are read back at start.
    events_len: u64,
}

/// When the last checkpoint was stored, how far the stream had been read, and whether the
/// stage finished (`--until-idle`) since.
struct Saved {
    at: Instant,
    position: u64,
    /// Observations delivered, as counted by the source.
    observations: u64,
    finished_since: bool,
}

impl Saved {
    fn now(source: &CorrelateSource) -> Saved {
        Saved {
            at: Instant::now(),
            position: source.position(),
            observations: source.stats().observations,
            finished_since: false,
        }
    }

    /// After `[correlate] checkpoint_observations` observations or `checkpoint_interval`,
    /// or on the way out; never when the state did not change.
    fn due(&self, source: &CorrelateSource, config: &Config, last: bool) -> bool {
        let c = &config.correlate;
        let observed = source.stats().observations - self.observations;
        (source.position() > self.position || self.finished_since)
            && (last
                || observed >= c.checkpoint_observations
                || self.at.elapsed() >= c.checkpoint_interval)
    }
}

/// Why a checkpoint was not stored: the events could not be written (the correlator stops),
/// or the store failed (retried at the next one).
enum Problem {
    Events(String),
    Store(String),
}

/// Stores the state as of everything read so far, and acknowledges up to it; returns the
/// state's length. The events derived so far reach `--events` first: the state says they
/// were written.
fn checkpoint(
    source: &mut CorrelateSource,
    stage: &AccountStage,
    merge: &Merge,
    events: &mut JsonLines,
) -> Result<usize, Problem> {
    let target = events.target().clone();
    let failed = |e: &dyn std::fmt::Display| Problem::Events(format!("{target:?}: {e}"));
    events.flush().map_err(|e| failed(&e))?;
    let events_len = match &target {
        Target::File(path) => std::fs::metadata(path).map_err(|e| failed(&e))?.len(),
        _ => 0,
    };
    let state = Checkpoint {
        stage: stage.save().map_err(Problem::Store)?,
        merge: merge.save().map_err(Problem::Store)?,
        written: Cow::Owned(HashSet::new()),
        events_len,
    };
    let bytes = state::save(&state).map_err(Problem::Store)?;
    source
        .save_checkpoint(source.position(), &bytes)
        .map_err(|e| Problem::Store(e.to_string()))?;
    Ok(bytes.len())
}

/// Opens `--events` for appending: a torn last line (a crash mid-write) is cut first, and the
/// ids of the lines from byte `from` on (those written after the checkpoint) are added to
/// `written`, so an event derived again is not written twice.
fn open_events(
    target: &Target,
    from: u64,
    written: &mut HashSet<String>,
) -> Result<JsonLines, String> {
    if let Target::File(path) = target
        && path.exists()
    {
        let ids = read_ids(path, from).map_err(|e| format!("{}: {e}", path.display()))?;
        written.extend(ids);
    }
    JsonLines::open(target.clone()).map_err(|e| format!("cannot open events output: {e}"))
}

/// The `id` of every whole line of an events file from byte `from` (from its start when it
/// is shorter: another file), after cutting a torn last line.
fn read_ids(path: &Path, from: u64) -> std::io::Result<HashSet<String>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let from = if file.metadata()?.len() >= from {
        from
    } else {
        0
    };
    file.seek(SeekFrom::Start(from))?;
    let mut ids = HashSet::new();
    let mut whole = from;
    let mut reader = std::io::BufReader::new(&mut file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        whole += n as u64;
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        if let Ok(Id { id }) = serde_json::from_slice::<Id>(&line) {
            ids.insert(id);
        }
    }
    drop(reader);
    if file.metadata()?.len() > whole {
        file.set_len(whole)?;
        file.seek(SeekFrom::Start(whole))?;
    }
    Ok(ids)
}

/// One producer's items not yet applied, and how far its clock went.
struct Lane {
    /// Items with the stream sequence that carried them.
    queue: VecDeque<(u64, Stamped)>,
    mark: Timestamp,
    ended: bool,
    /// Wall time of its last message; None until it sent one.
    heard: Option<Instant>,
    stalled: bool,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            queue: VecDeque::new(),
            mark: Timestamp::ZERO,
            ended: false,
            heard: None,
            stalled: false,
        }
    }
}

/// How long the id of an applied observation is remembered, in packet time: the longest
/// window an account detector judges over (a week of travel, RTT floors and working days,
/// and a day to spare).
const REPEAT_WINDOW: Duration = Duration::from_secs(8 * 24 * 3600);
/// At most this many ids are remembered (16 bytes each); past it the eighth seen longest
/// ago is forgotten, and counted.
const MAX_REPEAT_IDS: usize = 4_000_000;

/// Whether `obs` was taken before (counted), else remembers it in `seen`.
fn repeated(
    seen: &mut BTreeMap<u64, Timestamp>,
    applied: Timestamp,
    obs: &Observation,
    ts: Timestamp,
    figures: &mut CorrelateFigures,
) -> bool {
    let id = obs.id();
    let Some(key) = id.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()) else {
        return false;
    };
    if seen.contains_key(&key) {
        figures.repeated += 1;
        return true;
    }
    if seen.len() >= MAX_REPEAT_IDS {
        let horizon = applied.0.saturating_sub(REPEAT_WINDOW.as_nanos() as u64);
        seen.retain(|_, t| t.0 >= horizon);
        figures.repeat_ids_evicted += crate::bounded::make_room(seen, MAX_REPEAT_IDS, |t| *t);
    }
    seen.insert(key, ts);
    false
}

/// The producers' lanes, merged by packet time behind their watermarks.
struct Merge {
    lanes: BTreeMap<String, Lane>,
    /// Ids (the first 64 bits of [`Observation::id`]) of the observations taken in the last
    /// [`REPEAT_WINDOW`], with their time: the server drops a message sent again only
    /// within its duplicate window, so one sent again later (a replay published twice) is
    /// recognised here.
    seen: BTreeMap<u64, Timestamp>,
    max_lag: Duration,
    /// The moment of the last item applied.
    applied: Timestamp,
    started: bool,
}

impl Merge {
    /// Lanes for the producers the stream knows and the ones `[correlate] sensors` lists.
    fn new<'a>(config: &'a Config, known: impl Iterator<Item = &'a String>) -> Merge {
        let names: BTreeSet<&String> = known.chain(&config.correlate.sensors).collect();
        Merge {
            lanes: names
                .into_iter()
                .map(|n| (n.clone(), Lane::new()))
                .collect(),
            seen: BTreeMap::new(),
            max_lag: config.correlate.max_lag,
            applied: Timestamp::ZERO,
            started: false,
        }
    }

    /// Files one message in its producer's lane; an observation older than what was
    /// already applied is late, and applied at once.
    fn take(&mut self, d: Delivery, stage: &mut AccountStage, figures: &mut CorrelateFigures) {
        let lane = self.lanes.entry(d.sensor).or_insert_with(Lane::new);
        lane.heard = Some(Instant::now());
        lane.stalled = false;
        match d.record {
            Record::Obs { ts, payload } => {
                let Ok(obs) = serde_json::from_slice::<Observation>(&payload) else {
                    figures.undecodable += 1;
                    return;
                };
                if repeated(&mut self.seen, self.applied, &obs, ts, figures) {
                    return;
                }
                let stamped = Stamped {
                    at: ts,
                    item: Item::Observation(obs),
                };
                if self.started && ts < self.applied {
                    figures.late += 1;
                    stage.apply(stamped);
                } else {
                    lane.queue.push_back((d.seq, stamped));
                }
            }
            Record::Clock(clock) => {
                lane.mark = lane.mark.max(clock.ts());
                lane.ended |= clock.end;
                lane.queue.push_back((
                    d.seq,
                    Stamped {
                        at: clock.ts(),
                        item: Item::Tick,
                    },
                ));
            }
        }
    }

    /// Applies every item every live producer's clock has passed.
    fn release(&mut self, stage: &mut AccountStage, figures: &mut CorrelateFigures, now: Instant) {
        let mut bound = Timestamp(u64::MAX);
        for lane in self.lanes.values_mut() {
            if lane.ended {
                continue;
            }
            let silent = lane
                .heard
                .is_none_or(|h| now.duration_since(h) >= self.max_lag);
            if silent && lane.heard.is_some() {
                if !lane.stalled {
                    lane.stalled = true;
                    figures.stalled += 1;
                }
                continue;
            }
            bound = bound.min(lane.mark);
        }
        let mut ready = Vec::new();
        for lane in self.lanes.values_mut() {
            while lane.queue.front().is_some_and(|(_, s)| s.at < bound) {
                ready.extend(lane.queue.pop_front().map(|(_, s)| s));
            }
        }
        if ready.is_empty() {
            return;
        }
        sort_items(&mut ready);
        for s in ready {
            // The input starts at the first packet, as in a replay: session records a sensor
            // read from its feed may come before it.
            if !self.started && !matches!(s.item, Item::Observation(Observation::Session(_))) {
                self.started = true;
                stage.apply(Stamped {
                    at: s.at,
                    item: Item::Start,
                });
            }
            if matches!(s.item, Item::Observation(_)) {
                figures.applied += 1;
            }
            self.applied = s.at;
            stage.apply(s);
        }
    }

    /// The lanes and how far the stage got, for a checkpoint. Observations keep the JSON
    /// they came in, which is how they travel.
    fn save(&self) -> Result<SavedMerge, String> {
        let mut lanes = Vec::with_capacity(self.lanes.len());
        for (name, lane) in &self.lanes {
            let mut queue = Vec::with_capacity(lane.queue.len());
            for (seq, s) in &lane.queue {
                let observation = match &s.item {
                    Item::Observation(obs) => {
                        Some(serde_json::to_vec(obs).map_err(|e| e.to_string())?)
                    }
                    _ => None,
                };
                queue.push(SavedItem {
                    seq: *seq,
                    at: s.at,
                    observation,
                });
            }
            lanes.push(SavedLane {
                name: name.clone(),
                mark: lane.mark,
                ended: lane.ended,
                queue,
            });
        }
        Ok(SavedMerge {
            lanes,
            applied: self.applied,
            started: self.started,
            seen: self.seen.iter().map(|(id, t)| (*id, *t)).collect(),
        })
    }

    /// Takes back the lanes of a checkpoint. A restored producer counts as heard now: it
    /// has `max_lag` to speak again before it stops holding the others back.
    fn restore(&mut self, saved: SavedMerge) -> Result<(), String> {
        for l in saved.lanes {
            crate::jetstream::check_sensor_name(&l.name)
                .map_err(|_| format!("bad sensor name {:?}", l.name))?;
            let mut queue = VecDeque::with_capacity(l.queue.len());
            for i in l.queue {
                let item = match i.observation {
                    Some(json) => Item::Observation(
                        serde_json::from_slice(&json)
                            .map_err(|e| format!("an observation waiting in {}: {e}", l.name))?,
                    ),
                    None => Item::Tick,
                };
                queue.push_back((i.seq, Stamped { at: i.at, item }));
            }
            let lane = Lane {
                queue,
                mark: l.mark,
                ended: l.ended,
                heard: Some(Instant::now()),
                stalled: false,
            };
            self.lanes.insert(l.name, lane);
        }
        self.applied = saved.applied;
        self.started = saved.started;
        if saved.seen.len() > MAX_REPEAT_IDS {
            return Err(format!(
                "{} observation ids, more than the {MAX_REPEAT_IDS} held",
                saved.seen.len()
            ));
        }
        self.seen = saved.seen.into_iter().collect();
        Ok(())
    }

    /// Every producer sent its end marker and everything it sent was applied.
    fn all_ended(&self) -> bool {
        !self.lanes.is_empty() && self.lanes.values().all(|l| l.ended && l.queue.is_empty())
    }
}

/// [`Merge`] in a checkpoint.
#[derive(Serialize, Deserialize)]
struct SavedMerge {
    lanes: Vec<SavedLane>,
    applied: Timestamp,
    started: bool,
    /// The ids of observations taken, with their time ([`Merge::seen`]).
    seen: Vec<(u64, Timestamp)>,
}

#[derive(Serialize, Deserialize)]
struct SavedLane {
    name: String,
    mark: Timestamp,
    ended: bool,
    queue: Vec<SavedItem>,
}

/// An item waiting in a lane: an observation's JSON, or a clock tick (None).
#[derive(Serialize, Deserialize)]
struct SavedItem {
    seq: u64,
    at: Timestamp,
    observation: Option<Vec<u8>>,
}

/// What the HTTP endpoint and the signal handlers share with the loop.
struct Shared {
    metrics: Metrics,
    stop: AtomicBool,
    last_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn publish(&self, stage: &mut AccountStage, figures: CorrelateFigures, applied: Timestamp) {
        stage.sync_stats(applied, &[]);
        let mut stats: Stats = stage.stats.clone();
        stats
            .state_evicted
            .insert("correlate_repeat_ids", figures.repeat_ids_evicted);
        stats.correlate = Some(figures);
        if applied > Timestamp::ZERO {
            stats.last_packet_ts = Some(applied.as_secs_f64());
        }
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics.publish(&stats, wall);
    }
}

/// The HTTP endpoint and the signal handlers, on a small runtime of their own thread.
struct Http {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Http {
    fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<Http> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (listener, mut term, mut int) = {
        let _context = runtime.enter();
        (
            tokio::net::TcpListener::from_std(listener)?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let (stop, mut stopped) = oneshot::channel::<()>();
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<Shared>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|State(s): State<Arc<Shared>>| async move {
                match lock(&s.last_error).clone() {
                    None => "ok\n".to_string(),
                    Some(e) => format!("ok (last problem: {e})\n"),
                }
            }),
        )
        .with_state(shared.clone());
    let thread = std::thread::Builder::new()
        .name("farmwatch-http".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                let http = tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                loop {
                    tokio::select! {
                        _ = term.recv() => shared.stop.store(true, Ordering::Relaxed),
                        _ = int.recv() => shared.stop.store(true, Ordering::Relaxed),
                        _ = &mut stopped => break,
                    }
                }
                http.abort();
            })
        })?;
    Ok(Http {
        local_addr,
        stop,
        thread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_and_ids_are_read_from_the_checkpoint_on() {
        let path =
            std::env::temp_dir().join(format!("farmwatch-torn-{}.jsonl", std::process::id()));
        let first = "{\"id\":\"a1\"}\n";
        std::fs::write(&path, format!("{first}{{\"id\":\"b2\"}}\n{{\"id\":\"c")).unwrap();
        let ids = read_ids(&path, first.len() as u64).unwrap();
        assert_eq!(ids, HashSet::from(["b2".to_string()]));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":\"a1\"}\n{\"id\":\"b2\"}\n"
        );
        // A file shorter than the checkpoint says is another file: read whole.
        let ids = read_ids(&path, 1 << 20).unwrap();
        assert_eq!(ids, HashSet::from(["a1".to_string(), "b2".to_string()]));
        std::fs::remove_file(&path).unwrap();
    }
}
