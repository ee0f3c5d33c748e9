//! Runs the two stages (DESIGN §7) over a stream of packets: the flow stage on N workers,
//! the account stage once, behind a merge that puts the workers' items back in packet-time
//! order. Replay and live capture both push packets through an [`Engine`].
//!
//! The packet clock is the sensor's, kept here: the newest timestamp seen. Each packet goes
//! to the worker that holds its partition, stamped with the clock; every whole second of
//! packet time reaches every worker (flows expire and detectors look around then), and
//! every DNS answer too (names learned anywhere name flows everywhere). A worker stamps
//! what it hands on with the clock of the moment that produced it, and reports how far it
//! got (its watermark); the merge applies an item once every worker has passed its moment,
//! items of one moment in the order of their content. So the account stage sees one
//! sequence, the same for every number of workers, whichever worker applies it (it has no
//! thread of its own: [`Account`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::account_stage::{AccountStage, Context, Sinks};
use crate::app::App;
use crate::config::{Config, NetworkConfig};
use crate::decode::{self, FragKey, Peek, Piece, Proto};
use crate::dissect::dns;
use crate::flow_stage::{
    END_CHUNK, FlowScope, FlowWorker, ItemSorter, PARTITIONS, Reload, Stamped, ends, partition_of,
    sort_items,
};
use crate::mapped::Shared;
use crate::metrics::Stats;
use crate::report::Collector;
use crate::source::{LinkType, Packet, Replay};
use crate::timestamp::Timestamp;

mod index;

use index::{CHUNK, Index, Step};

/// Fragmented datagrams the reader follows at once, and how long one may wait for its next
/// piece: as the workers' reassembly (`flow_stage.rs`).
const MAX_ROUTES: usize = 4096;
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Entries per batch handed to a worker: few enough to keep the workers' queues short,
/// enough that the hand-over costs little per packet.
const BATCH: usize = 512;
/// Batches queued per worker before the reader waits: enough to even out the workers'
/// pace, few enough that the batches going round stay few (every one is memory the
/// kernel zeroes once; 64 made a fifth of the run's fresh pages).
const QUEUED_BATCHES: usize = 16;
/// The fewest bytes a new batch has room for: it starts with the room the last one needed
/// (growing packet by packet reallocated and copied its bytes over and over), and keeps it
/// when it comes back to be filled again.
const BATCH_BYTES: usize = BATCH * 128;

/// How often the account stage pushes its buffered output out, in wall time (live).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often a replay reports its progress: every this many packets, or this often while
/// the workers walk the input.
const PROGRESS_PACKETS: u64 = 65_536;
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The flow-stage workers to run by default: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub struct Engine {
    clock: Clock,
    /// The flow stage's view of the world, as of the newest reload.
    scope: Arc<FlowScope>,
    board: Arc<Board>,
    run: Run,
}

/// The packet clock: the newest timestamp seen, and the moments it passes.
#[derive(Clone, Copy, Default)]
struct Clock {
    now: Timestamp,
    /// The last whole second handed on as a tick.
    ticked: u64,
    first: Option<Timestamp>,
}

impl Clock {
    /// Moves on to a packet of time `ts`: the clock then, whether it is the input's first
    /// packet, and whether a whole second of packet time passed.
    #[inline]
    fn packet(&mut self, ts: Timestamp) -> (Timestamp, bool, bool) {
        let start = self.first.is_none();
        self.first.get_or_insert(ts);
        self.now = self.now.max(ts);
        let tick = self.now.secs() > self.ticked;
        if tick {
            self.ticked = self.now.secs();
        }
        (self.now, start, tick)
    }

    /// The clock as of the last packet, if there was one.
    fn last(&self) -> Option<Timestamp> {
        self.first.map(|_| self.now)
    }
}

enum Run {
    /// One worker, on the caller's thread, and the account stage after it.
    Inline {
        worker: Box<FlowWorker>,
        merge: Merge,
        stage: Box<Stage>,
    },
    Threads(Box<Threads>),
}

/// A worker's counters and its open remote-desktop sessions (inside host, tool).
type WorkerReport = (Stats, Vec<(IpAddr, App)>);

/// The latest counters of every stage, for `/metrics` while the engine runs (live).
#[derive(Default)]
pub struct Board {
    /// Kept current only once somebody looks (a replay reads its counters at the end).
    watched: AtomicBool,
    /// Per worker: its counters and its open remote-desktop sessions.
    workers: Mutex<Vec<WorkerReport>>,
    account: Mutex<Stats>,
    /// The reader's own counters (several workers only).
    reader: Mutex<Stats>,
}

impl Board {
    fn new(workers: usize) -> Board {
        Board {
            watched: AtomicBool::new(false),
            workers: Mutex::new(vec![Default::default(); workers]),
            account: Mutex::default(),
            reader: Mutex::default(),
        }
    }

    fn watch(&self) {
        self.watched.store(true, Ordering::Relaxed);
    }

    fn is_watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    fn put_worker(&self, index: usize, worker: &mut FlowWorker, now: Timestamp) {
        worker.sync_stats();
        let remote = worker.active_remote_desktop(now);
        let mut w = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        w[index] = (worker.stats.clone(), remote);
    }

    fn put_reader(&self, routes: &Routes) {
        *self.reader.lock().unwrap_or_else(PoisonError::into_inner) = routes.stats();
    }

    fn remote_desktop(&self) -> Vec<(IpAddr, App)> {
        let w = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = w.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        all.sort();
        all
    }

    fn put_account(&self, account: &mut AccountStage, now: Timestamp) {
        account.sync_stats(now, &self.remote_desktop());
        *self.account.lock().unwrap_or_else(PoisonError::into_inner) = account.stats.clone();
    }

    /// Every counter as of the stages' last report.
    pub fn snapshot(&self) -> Stats {
        let mut stats = Stats::default();
        for (w, _) in self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            stats.merge(w);
        }
        stats.merge(&self.account.lock().unwrap_or_else(PoisonError::into_inner));
        stats.merge(&self.reader.lock().unwrap_or_else(PoisonError::into_inner));
        stats
    }
}

/// What the engine leaves when the input is over.
pub struct Finished {
    pub account: AccountStage,
    /// Every counter: the workers' summed, the account stage's added.
    pub stats: Stats,
    pub first_ts: Option<Timestamp>,
    pub last_ts: Option<Timestamp>,
}

impl Engine {
    /// `workers` flow-stage threads (1: everything on the caller's thread).
    pub fn new(
        config: &Config,
        context: Context,
        sinks: Sinks,
        collector: Option<Collector>,
        workers: usize,
    ) -> Engine {
        let workers = workers.clamp(1, PARTITIONS);
        // The flow stage's view of identity: what is known before the traffic.
        let scope = Arc::new(FlowScope {
            network: config.network.clone(),
            identity: context.identity.clone(),
            geo: context.geo.clone(),
        });
        let mut account = AccountStage::new(config, sinks, context);
        account.collector = collector;
        let board = Arc::new(Board::new(workers));
        let run = if workers == 1 {
            Run::Inline {
                worker: Box::new(FlowWorker::new(config, scope.clone(), |_| true)),
                merge: Merge::new(1),
                stage: Box::new(Stage::new(account)),
            }
        } else {
            Run::Threads(Box::new(Threads::start(
                config,
                scope.clone(),
                account,
                workers,
                board.clone(),
            )))
        };
        Engine {
            clock: Clock::default(),
            scope,
            board,
            run,
        }
    }

    /// Replays `replay` to its end, calling `progress(packets, bytes)` now and then. With
    /// several workers, no more than there are cores, and every file mapped, no thread
    /// reads for the workers: each walks the files itself, over the same mappings, and does
    /// what is its own ([`walk`]).
    pub fn replay(&mut self, replay: &mut Replay, mut progress: impl FnMut(u64, u64)) {
        if let Run::Threads(t) = &mut self.run
            && self.clock.first.is_none()
            && let Some(walked) = t.walk(replay, &mut progress)
        {
            // None: walker 0 panicked, which the finish reports.
            if let Some((walked, clock)) = walked {
                self.clock = clock;
                replay.take_over(walked);
            }
            return;
        }
        // Asking for the next packet's flow while this one is worked on (the packet after
        // it peeked, its flow's box prefetched from a table of the addresses last found)
        // cost more than the stalls it saved: 13 % more instructions (a peek per packet),
        // CPU 0.64 -> 0.67 s on the real mix, 0.40 -> 0.41 s on the office mix.
        let mut n: u64 = 0;
        while let Some(pkt) = replay.next_packet() {
            self.packet(pkt);
            n += 1;
            if n.is_multiple_of(PROGRESS_PACKETS) {
                progress(n, replay.consumed());
            }
        }
    }

    pub fn packet(&mut self, pkt: Packet<'_>) {
        let (clock, start, tick) = self.clock.packet(pkt.ts);
        match &mut self.run {
            Run::Inline {
                worker,
                merge,
                stage,
            } => {
                if start {
                    worker.start(clock);
                }
                worker.packet(pkt, clock, None);
                if tick {
                    worker.tick(clock, true);
                }
                if !worker.out.is_empty() {
                    merge.push(0, worker.out.drain(..));
                }
                merge.mark(0, clock);
                stage.release(merge);
                if tick && self.board.is_watched() {
                    self.board.put_worker(0, worker, clock);
                    self.board.put_account(&mut stage.account, clock);
                }
            }
            Run::Threads(t) => t.dispatch(pkt, clock, start, tick),
        }
    }

    /// The counters of every stage, kept current while the engine runs once `watch` was
    /// called (live serves them on `/metrics`).
    pub fn board(&self) -> Arc<Board> {
        self.board.watch();
        self.board.clone()
    }

    /// Applies `reload` from this moment of packet time on, in every stage.
    pub fn reload(&mut self, reload: Reload) {
        let reload = Arc::new(reload);
        self.scope = Arc::new(self.scope.with(&reload));
        let clock = self.clock.now;
        match &mut self.run {
            Run::Inline {
                worker,
                merge,
                stage,
            } => {
                worker.reload(self.scope.clone(), reload, clock, true);
                merge.push(0, worker.out.drain(..));
                stage.release(merge);
            }
            Run::Threads(t) => t.reload(self.scope.clone(), reload, clock),
        }
    }

    /// The input is quiet for now (live, between packets): everything handed in so far is
    /// applied and written out. A packet later stamped with the very same clock would
    /// follow items already written; packet time moving on is what a live link does.
    pub fn idle(&mut self) {
        let now = self.clock.now;
        let clock = Timestamp(now.0.saturating_add(1));
        match &mut self.run {
            Run::Inline {
                worker,
                merge,
                stage,
            } => {
                merge.push(0, worker.out.drain(..));
                merge.mark(0, clock);
                stage.release(merge);
                if self.board.is_watched() {
                    self.board.put_worker(0, worker, now);
                    self.board.put_account(&mut stage.account, now);
                }
                stage.flush_due(None);
            }
            Run::Threads(t) => t.idle(clock),
        }
    }

    /// Ends every flow, applies everything, flushes the sinks. The end of the input is a
    /// moment of its own, just after the last packet: live may already have applied the
    /// last packet's moment ([`Engine::idle`]), and what the end hands on must be ordered
    /// alike however many workers hand it on, and whether or not the input idled first.
    pub fn finish(self) -> Finished {
        let clock = self.clock.now;
        let end = Timestamp(clock.0.saturating_add(1));
        let (mut account, mut stats, remote) = match self.run {
            Run::Inline {
                mut worker,
                mut merge,
                mut stage,
            } => {
                worker.finish(end);
                merge.push(0, worker.out.drain(..));
                merge.mark(0, Timestamp(u64::MAX));
                stage.finish(&mut merge, |_| worker.end_records(END_CHUNK));
                let remote = worker.active_remote_desktop(clock);
                (stage.account, worker.stats.clone(), remote)
            }
            Run::Threads(t) => t.finish(clock, end),
        };
        account.finish();
        account.sync_stats(clock, &remote);
        stats.merge(&account.stats);
        let last_ts = self.clock.last();
        stats.last_packet_ts = last_ts.map(|t| t.as_secs_f64());
        Finished {
            account,
            stats,
            first_ts: self.clock.first,
            last_ts,
        }
    }
}

/// Puts the items of several workers back in one order: by moment, then by content.
///
/// The end of the input is one moment with a record per flow still open: a worker hands on
/// what its flows' ends found (marking `u64::MAX`), then their records in order, a chunk at
/// a time ([`Merge::push_end`]); once every worker has marked the end, the items left and
/// those streams are merged ([`Merge::release_end`]), so no more than a few chunks are
/// held.
struct Merge {
    queues: Vec<VecDeque<Stamped>>,
    /// How far each worker got: it will hand on nothing stamped before this.
    marks: Vec<Timestamp>,
    /// Once every worker has marked the end: what the queues held then, sorted.
    rest: Option<VecDeque<Stamped>>,
    /// Each worker's end records not yet released, in order, and whether it handed on
    /// its last.
    ends: Vec<VecDeque<Stamped>>,
    closed: Vec<bool>,
    /// A worker panicked: nobody waits for the end any more.
    broken: bool,
}

impl Merge {
    fn new(workers: usize) -> Merge {
        Merge {
            queues: (0..workers).map(|_| VecDeque::new()).collect(),
            marks: vec![Timestamp::ZERO; workers],
            rest: None,
            ends: (0..workers).map(|_| VecDeque::new()).collect(),
            closed: vec![false; workers],
            broken: false,
        }
    }

    fn push(&mut self, worker: usize, items: impl IntoIterator<Item = Stamped>) {
        self.queues[worker].extend(items);
    }

    fn mark(&mut self, worker: usize, at: Timestamp) {
        self.marks[worker] = self.marks[worker].max(at);
    }

    /// The moment every worker has passed, short of the end: once every worker has marked
    /// `u64::MAX` the rest is [`release_end`](Self::release_end)'s.
    fn bound(&self) -> Option<Timestamp> {
        let bound = self.marks.iter().copied().min().unwrap_or_default();
        (bound != Timestamp(u64::MAX)).then_some(bound)
    }

    /// Moves every item whose moment every worker has passed into `ready`, unsorted.
    fn release_into(&mut self, ready: &mut Vec<Stamped>) {
        let Some(bound) = self.bound() else {
            return;
        };
        for q in &mut self.queues {
            while q.front().is_some_and(|s| s.at < bound) {
                if let Some(s) = q.pop_front() {
                    ready.push(s);
                }
            }
        }
    }

    /// Whether [`release_into`](Self::release_into) or
    /// [`release_end`](Self::release_end) would move anything.
    fn has_released(&self) -> bool {
        let Some(bound) = self.bound() else {
            return self.end_comparable() && self.end_left();
        };
        (self.queues.iter()).any(|q| q.front().is_some_and(|s| s.at < bound))
    }

    /// `worker`'s next end records, in order (None: it has no more).
    fn push_end(&mut self, worker: usize, records: Option<Vec<Stamped>>) {
        let stream = &mut self.ends[worker];
        match records {
            // Taken as it is when the stream is empty (mostly): its items are not moved.
            Some(records) if stream.is_empty() => *stream = records.into(),
            Some(records) => stream.extend(records),
            None => self.closed[worker] = true,
        }
    }

    /// Whether `worker`'s end records are wanted now: it has none waiting and may have more.
    fn wants_end(&self, worker: usize) -> bool {
        !self.closed[worker] && self.ends[worker].is_empty()
    }

    /// Every worker has marked the end, and every stream that may have more has one
    /// waiting: the least item left is known.
    fn end_comparable(&self) -> bool {
        self.bound().is_none() && (0..self.ends.len()).all(|w| !self.wants_end(w))
    }

    /// Whether any item is left for the end to release.
    fn end_left(&self) -> bool {
        let rest = match &self.rest {
            Some(rest) => !rest.is_empty(),
            None => self.queues.iter().any(|q| !q.is_empty()),
        };
        rest || self.ends.iter().any(|e| !e.is_empty())
    }

    /// Once every worker has marked the end: hands the items left and the end records to
    /// `each`, in the order they are applied in, for as long as every stream that may have
    /// more has one to compare (a stream is read only when its last chunk is used up).
    /// Returns how many it handed.
    fn release_end(&mut self, mut each: impl FnMut(Stamped)) -> usize {
        if self.bound().is_some() {
            return 0;
        }
        let Merge {
            queues,
            rest,
            ends,
            closed,
            ..
        } = self;
        let rest = rest.get_or_insert_with(|| {
            let mut rest: Vec<Stamped> = queues.iter_mut().flat_map(|q| q.drain(..)).collect();
            sort_items(&mut rest);
            rest.into()
        });
        let n = ends.len();
        let mut released = 0;
        loop {
            if (0..n).any(|w| !closed[w] && ends[w].is_empty()) {
                return released;
            }
            // The stream whose next item is least (`n`: the rest); the first on ties.
            let mut least: Option<(usize, &Stamped)> = rest.front().map(|s| (n, s));
            for (w, stream) in ends.iter().enumerate() {
                if let Some(s) = stream.front()
                    && least.is_none_or(|(_, l)| in_order(s, l).is_lt())
                {
                    least = Some((w, s));
                }
            }
            let item = match least {
                None => return released,
                Some((w, _)) if w == n => rest.pop_front(),
                Some((w, _)) => ends[w].pop_front(),
            };
            if let Some(item) = item {
                each(item);
                released += 1;
            }
        }
    }
}

/// The account stage behind the merge, and what applying in order needs.
struct Stage {
    account: AccountStage,
    /// Items released, to sort and apply (kept for its room).
    ready: Vec<Stamped>,
    sorter: ItemSorter,
    /// The moment of the last item applied.
    applied: Timestamp,
    /// When the sinks were last flushed.
    flushed: Instant,
}

impl Stage {
    fn new(account: AccountStage) -> Stage {
        Stage {
            account,
            ready: Vec::new(),
            sorter: ItemSorter::default(),
            applied: Timestamp::ZERO,
            flushed: Instant::now(),
        }
    }

    /// Applies every item of `merge` whose moment every worker has passed.
    fn release(&mut self, merge: &mut Merge) {
        merge.release_into(&mut self.ready);
        self.apply_ready();
    }

    /// Applies the items released, in order.
    fn apply_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        self.sorter.sort(&mut self.ready);
        self.apply_sorted();
    }

    /// Applies the items released, in the order they are in.
    fn apply_sorted(&mut self) {
        for s in self.ready.drain(..) {
            self.applied = s.at;
            self.account.apply(s);
        }
    }

    /// Pushes the buffered output out if it was last [`FLUSH_EVERY`] ago (live), and puts
    /// the account stage's counters on `board` then if it is watched.
    fn flush_due(&mut self, board: Option<&Board>) {
        if self.flushed.elapsed() < FLUSH_EVERY {
            return;
        }
        self.account.flush_sinks();
        if let Some(board) = board.filter(|b| b.is_watched()) {
            board.put_account(&mut self.account, self.applied);
        }
        self.flushed = Instant::now();
    }

    /// The input is over and every worker has handed on all but its end records: applies
    /// everything left in `merge`, with the workers' end records merged in as they come
    /// (`records(worker)`: its next records, in order; None when it has no more).
    fn finish(
        &mut self,
        merge: &mut Merge,
        mut records: impl FnMut(usize) -> Option<Vec<Stamped>>,
    ) {
        loop {
            for w in 0..merge.ends.len() {
                while merge.wants_end(w) {
                    merge.push_end(w, records(w));
                }
            }
            let applied = merge.release_end(|s| {
                self.applied = s.at;
                self.account.apply(s);
            });
            if applied == 0 {
                return;
            }
        }
    }
}

/// The order the account stage applies items in: by moment, then by content
/// ([`sort_items`] sorts in it, hashing each observation's id once).
fn in_order(a: &Stamped, b: &Stamped) -> std::cmp::Ordering {
    a.at.cmp(&b.at).then_with(|| a.item.order(&b.item))
}

/// What a worker is told, in order.
#[derive(Clone, Copy)]
enum Work {
    Packet {
        link: LinkType,
        orig_len: u32,
        /// Its partition, as the reader found it.
        partition: usize,
    },
    /// A DNS answer of another worker's packet (only its UDP payload is sent).
    DnsAnswer,
    Tick,
    Start,
    /// A reload (its index in the batch's `reloads`).
    Reload(usize),
    /// Nothing more for now (live): hand on everything up to this clock.
    Idle,
    Finish,
}

/// A piece of work and the bytes it reads, which lie in `shared` when it is given.
#[derive(Clone, Copy)]
struct Task<'a> {
    work: Work,
    ts: Timestamp,
    bytes: &'a [u8],
    shared: Option<&'a Shared>,
}

impl Task<'_> {
    /// Work without bytes.
    fn mark(work: Work, ts: Timestamp) -> Task<'static> {
        Task {
            work,
            ts,
            bytes: &[],
            shared: None,
        }
    }
}

/// Which workers a task is for.
#[derive(Clone, Copy)]
enum To {
    One(usize),
    /// Every worker but this one, if any.
    AllBut(Option<usize>),
}

impl To {
    fn includes(self, worker: usize) -> bool {
        match self {
            To::One(w) => w == worker,
            To::AllBut(w) => w != Some(worker),
        }
    }
}

/// Does `task` on `worker` (the `index`th) at `clock`.
fn perform(
    index: usize,
    worker: &mut FlowWorker,
    task: Task<'_>,
    clock: Timestamp,
    reloads: &[(Arc<FlowScope>, Arc<Reload>)],
    board: &Board,
) {
    match task.work {
        Work::Packet {
            link,
            orig_len,
            partition,
        } => worker.packet(
            Packet {
                ts: task.ts,
                link,
                orig_len,
                data: task.bytes,
                shared: task.shared,
            },
            clock,
            Some(partition),
        ),
        Work::DnsAnswer => worker.dns_answer(task.ts, task.bytes),
        Work::Tick => {
            worker.tick(clock, index == 0);
            if board.is_watched() {
                board.put_worker(index, worker, clock);
            }
        }
        Work::Start => worker.start(clock),
        Work::Reload(i) => {
            if let Some((scope, reload)) = reloads.get(i) {
                worker.reload(scope.clone(), reload.clone(), clock, index == 0);
            }
        }
        Work::Finish => {
            worker.finish(clock);
            if board.is_watched() {
                board.put_worker(index, worker, clock);
            }
        }
        Work::Idle => {
            if board.is_watched() {
                board.put_worker(index, worker, clock);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    work: Work,
    ts: Timestamp,
    clock: Timestamp,
    /// Where its bytes are: the batch's `data` (None) or one of its `maps`, at
    /// `start..end`.
    map: Option<u32>,
    start: usize,
    end: usize,
}

/// Entries for one worker and the bytes they point into.
///
/// A packet of a mapped file stays where it is: the batch holds the mapping (once, not
/// per packet) and the entry its place there. Other bytes (standard input, .gz files,
/// live capture, held fragments) are copied into `data`.
///
/// Batches go round and come back emptied (a worker returns its batches to the reader; its
/// item list keeps its room, the items moved into the merge): a fresh buffer for each
/// batch is fresh pages for the kernel to zero, on the reader's thread, which is the one
/// that limits how fast several workers go.
struct Batch {
    entries: Vec<Entry>,
    data: Vec<u8>,
    /// The mapped files entries point into (several files replayed at once interleave).
    maps: Vec<Shared>,
    reloads: Vec<(Arc<FlowScope>, Arc<Reload>)>,
}

impl Batch {
    fn new(bytes: usize) -> Batch {
        Batch {
            entries: Vec::with_capacity(BATCH),
            data: Vec::with_capacity(bytes.max(BATCH_BYTES)),
            maps: Vec::new(),
            reloads: Vec::new(),
        }
    }

    /// Empty, keeping its room.
    fn clear(&mut self) {
        self.entries.clear();
        self.data.clear();
        self.maps.clear();
        self.reloads.clear();
    }

    /// An entry for `task` at `clock`.
    fn add(&mut self, task: Task<'_>, clock: Timestamp) {
        let bytes = task.bytes;
        let (map, start) = match task.shared.and_then(|m| self.place(m, bytes)) {
            Some((map, start)) => (Some(map), start),
            None => {
                let start = self.data.len();
                self.data.extend_from_slice(bytes);
                (None, start)
            }
        };
        self.entries.push(Entry {
            work: task.work,
            ts: task.ts,
            clock,
            map,
            start,
            end: start + bytes.len(),
        });
    }

    /// Where `bytes` are in mapping `shared`: its index in `maps` (added on its first
    /// packet) and their offset. None if they are not in it.
    fn place(&mut self, shared: &Shared, bytes: &[u8]) -> Option<(u32, usize)> {
        let all = shared.bytes();
        let start = (bytes.as_ptr() as usize).checked_sub(all.as_ptr() as usize)?;
        if start + bytes.len() > all.len() {
            return None;
        }
        let index = match self.maps.iter().position(|m| Arc::ptr_eq(m, shared)) {
            Some(i) => i,
            None => {
                self.maps.push(shared.clone());
                self.maps.len() - 1
            }
        };
        Some((index as u32, start))
    }

    /// The task of `e`, its bytes borrowed from the batch or its mapping.
    fn task(&self, e: &Entry) -> Task<'_> {
        let (bytes, shared) = match e.map {
            None => (&self.data[e.start..e.end], None),
            Some(i) => {
                let map = &self.maps[i as usize];
                (&map.bytes()[e.start..e.end], Some(map))
            }
        };
        Task {
            work: e.work,
            ts: e.ts,
            bytes,
            shared,
        }
    }
}

/// Adds `task` at `clock` to the batches of the workers it is for.
fn add_to(batches: &mut [Batch], to: To, task: Task<'_>, clock: Timestamp) {
    match to {
        To::One(w) => batches[w].add(task, clock),
        To::AllBut(_) => {
            for (i, b) in batches.iter_mut().enumerate() {
                if to.includes(i) {
                    b.add(task, clock);
                }
            }
        }
    }
}

/// The merge and the account stage behind it, which the workers share (several workers):
/// no thread of its own, which would take a core from a worker at each hand-on. A worker
/// hands its items and how far it got into the merge, then applies what every worker has
/// passed, unless another worker is applying: that one looks again once it is through. The
/// order of application is the merge's, whoever applies. The end's records too
/// ([`Account::end`]): merged by the engine's thread, they woke a third thread on the
/// workers' cores for every chunk, and every record was freed on a thread that had not
/// made it.
struct Account {
    merge: Mutex<Merge>,
    stage: Mutex<Stage>,
    /// Told when end records leave the merge: a worker with a chunk waiting may make its next.
    room: Condvar,
}

impl Account {
    fn new(workers: usize, account: AccountStage) -> Account {
        Account {
            merge: Mutex::new(Merge::new(workers)),
            stage: Mutex::new(Stage::new(account)),
            room: Condvar::new(),
        }
    }

    /// Hands on `worker`'s items, stamped before `mark` no more, and applies what it can.
    /// False once the account stage is broken (a worker panicked applying).
    fn hand(
        &self,
        worker: usize,
        items: impl IntoIterator<Item = Stamped>,
        mark: Timestamp,
        board: &Board,
    ) -> bool {
        {
            let mut merge = lock(&self.merge);
            merge.push(worker, items);
            merge.mark(worker, mark);
        }
        self.apply(board)
    }

    /// Applies what every worker has passed and flushes when due, unless another thread
    /// holds the stage. The holder looks at the merge again after letting the stage go, so
    /// what was handed on meanwhile (by a worker that found the stage held) is applied now,
    /// by it or by whoever then holds the stage, not at some later hand-on.
    fn apply(&self, board: &Board) -> bool {
        loop {
            let mut stage = match self.stage.try_lock() {
                Ok(stage) => stage,
                Err(TryLockError::WouldBlock) => return true,
                Err(TryLockError::Poisoned(_)) => return false,
            };
            let ended = {
                let mut merge = lock(&self.merge);
                merge.release_into(&mut stage.ready);
                if stage.ready.is_empty() {
                    merge.release_end(|s| stage.ready.push(s)) > 0
                } else {
                    false
                }
            };
            if ended {
                self.room.notify_all();
                stage.apply_sorted();
            } else {
                stage.apply_ready();
            }
            stage.flush_due(Some(board));
            drop(stage);
            if !lock(&self.merge).has_released() {
                return true;
            }
        }
    }

    /// Once `worker` has handed on all else (marking the end): hands on the records of the
    /// flows the end ended ([`FlowWorker::end_records`]), a chunk at a time while fewer than
    /// a chunk of its own wait in the merge, applying what it can after each.
    ///
    /// (Tried and not kept: sharing the applying out, a worker leaving a quarter chunk of
    /// its own in the merge for the other to apply while it made its next, so that no
    /// worker made records while nobody applied. Both workers were then busy at the end
    /// instead of one and a third, and the end took as long, 23 ms on the office mix of
    /// 46,500 flows, as with one thread applying: writing the records out is the end's
    /// length.)
    fn end(&self, index: usize, worker: &mut FlowWorker, board: &Board) {
        loop {
            {
                let mut merge = lock(&self.merge);
                while merge.ends[index].len() >= END_CHUNK && !merge.broken {
                    merge = self
                        .room
                        .wait(merge)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if merge.broken {
                    return;
                }
            }
            let records = worker.end_records(END_CHUNK);
            let last = records.is_none();
            lock(&self.merge).push_end(index, records);
            if !self.apply(board) || last {
                return;
            }
        }
    }
}

/// Unblocks the other workers' ends if its worker's thread panics: its end never comes.
struct Gone<'a>(&'a Account);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(&self.0.merge).broken = true;
            self.0.room.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a worker thread is given: batches of work from the reader, or the input to walk
/// itself.
enum Order {
    Batch(Batch),
    Walk(Box<Walk>),
}

/// The threaded engine: each worker runs its partitions and, as it hands on, the merge and
/// the account stage ([`Account`]). The caller's thread reads and shares packets out
/// ([`Router`]), unless the workers walk the input themselves ([`Threads::walk`]); at the
/// end it waits for the workers, which apply their end records themselves.
struct Threads {
    router: Router,
    batches: Vec<Batch>,
    senders: Vec<SyncSender<Order>>,
    /// Batches the workers are done with, to fill again.
    emptied: Receiver<Batch>,
    /// Each worker's counters and open remote-desktop sessions, once it is through.
    workers: Vec<JoinHandle<WorkerReport>>,
    account: Arc<Account>,
    board: Arc<Board>,
    /// The workers walked the input and finished it.
    walked: bool,
    /// Records the walkers left out ([`Index::missed`]).
    unindexed: u64,
}

impl Threads {
    fn start(
        config: &Config,
        scope: Arc<FlowScope>,
        account: AccountStage,
        n: usize,
        board: Arc<Board>,
    ) -> Threads {
        let shared = Arc::new(Account::new(n, account));
        // Room for every batch there can be, so that giving one back never waits.
        let (give_back, emptied) = sync_channel::<Batch>(n * (QUEUED_BATCHES + 2));
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for index in 0..n {
            let (tx, rx) = sync_channel::<Order>(QUEUED_BATCHES);
            senders.push(tx);
            let lanes = Lanes {
                orders: rx,
                give_back: give_back.clone(),
                account: shared.clone(),
            };
            let (config, scope, board) = (config.clone(), scope.clone(), board.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("flow-{index}"))
                    // Made on its own thread, which then owns the memory of its flow tables,
                    // and ended there: its end records applied, and its memory let go where
                    // it was taken (dropped on the engine's thread, after the others were
                    // joined, every block was a free from another thread: 2.9 M
                    // instructions at the very end on the office mix of 5,000 flows).
                    .spawn(move || {
                        let _gone = Gone(&lanes.account);
                        let worker = FlowWorker::new(&config, scope, |p| p % n == index);
                        let (mut worker, clock) = work(index, worker, &lanes, &board);
                        lanes.account.end(index, &mut worker, &board);
                        let remote = worker.active_remote_desktop(clock);
                        (std::mem::take(&mut worker.stats), remote)
                    })
                    .expect("spawn a flow worker"),
            );
        }
        Threads {
            router: Router::new(config.network.clone(), n),
            batches: (0..n).map(|_| Batch::new(0)).collect(),
            senders,
            emptied,
            workers,
            account: shared,
            board,
            walked: false,
            unindexed: 0,
        }
    }

    /// Shares a packet out as the [`Router`] says.
    fn dispatch(&mut self, pkt: Packet<'_>, clock: Timestamp, start: bool, tick: bool) {
        let batches = &mut self.batches;
        self.router
            .packet(pkt, clock, start, tick, &mut |to, task| {
                add_to(batches, to, task, clock);
            });
        if tick && self.board.is_watched() {
            self.board.put_reader(&self.router.routes);
        }
        for i in 0..self.batches.len() {
            if self.batches[i].entries.len() >= BATCH
                || (tick && !self.batches[i].entries.is_empty())
            {
                self.send(i);
            }
        }
    }

    /// Has every worker walk `replay` ([`walk`]) and waits until they are through it,
    /// calling `progress` now and then; then the replay, read to its end, and walker 0's
    /// clock (None if walker 0 panicked). None, and nothing done, unless every file of the
    /// replay is mapped and every worker can have a core: each walker follows all of the
    /// input, which pays only when the walkers run side by side (3 walkers on 2 cores took
    /// a third more CPU than a reader thread feeding 3 workers).
    fn walk(
        &mut self,
        replay: &Replay,
        progress: &mut impl FnMut(u64, u64),
    ) -> Option<Option<(Replay, Clock)>> {
        let n = self.senders.len();
        if n > default_workers() {
            return None;
        }
        let network = self.router.network.clone();
        let index = Index::new(replay.walker()?, network, self.router.owners, CHUNK)?;
        let index = Arc::new(index);
        let (back, walked) = sync_channel::<Walked>(1);
        for i in 0..n {
            let walk = Walk {
                index: index.clone(),
                router: Router::new(self.router.network.clone(), n),
                back: (i == 0).then(|| back.clone()),
            };
            // A worker that is gone has panicked; its join reports it.
            let _ = self.senders[i].send(Order::Walk(Box::new(walk)));
        }
        drop(back);
        self.walked = true;
        loop {
            match walked.recv_timeout(PROGRESS_EVERY) {
                Ok(w) => {
                    self.router = w.router;
                    self.unindexed = index.missed();
                    return Some(index.take_replay().map(|replay| (replay, w.clock)));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let (packets, bytes) = index.progress(0);
                    progress(packets, bytes);
                }
                // Walker 0 panicked: the finish reports it.
                Err(RecvTimeoutError::Disconnected) => return Some(None),
            }
        }
    }

    fn reload(&mut self, scope: Arc<FlowScope>, reload: Arc<Reload>, clock: Timestamp) {
        for b in &mut self.batches {
            b.reloads.push((scope.clone(), reload.clone()));
            let index = b.reloads.len() - 1;
            b.add(Task::mark(Work::Reload(index), clock), clock);
        }
    }

    fn idle(&mut self, clock: Timestamp) {
        for i in 0..self.batches.len() {
            self.batches[i].add(Task::mark(Work::Idle, clock), clock);
            self.send(i);
        }
    }

    fn send(&mut self, i: usize) {
        let used = self.batches[i].data.len();
        let room = self.emptied.try_recv().unwrap_or_else(|_| Batch::new(used));
        let batch = std::mem::replace(&mut self.batches[i], room);
        // A worker that is gone has panicked; its join reports it.
        let _ = self.senders[i].send(Order::Batch(batch));
    }

    /// Ends every worker at moment `end` (walkers ended themselves); `clock` is the last
    /// packet's. The workers apply the end themselves ([`Account::end`]).
    fn finish(
        mut self,
        clock: Timestamp,
        end: Timestamp,
    ) -> (AccountStage, Stats, Vec<(IpAddr, crate::app::App)>) {
        let mut stats = self.router.routes.stats();
        stats.capture_unindexed_records = self.unindexed;
        if !self.walked {
            let batches = &mut self.batches;
            self.router
                .finish(&mut |to, task| add_to(batches, to, task, end));
            for i in 0..self.batches.len() {
                self.batches[i].add(Task::mark(Work::Finish, clock), end);
                self.send(i);
            }
        }
        self.senders.clear();
        let mut remote = Vec::new();
        for w in self.workers {
            match w.join() {
                Ok((worker, open)) => {
                    stats.merge(&worker);
                    remote.extend(open);
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
        let account = Arc::into_inner(self.account)
            .expect("the workers are joined: the account stage is the engine's alone");
        let mut merge = account
            .merge
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let mut stage = account
            .stage
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        // The workers applied everything; were anything left (every worker has closed its
        // end stream), it is applied here in the same order rather than dropped unwritten.
        debug_assert!(!merge.end_left(), "the workers applied everything");
        stage.finish(&mut merge, |_| None);
        remote.sort();
        (stage.account, stats, remote)
    }
}

/// A worker's channels: its orders in and batches back; and where its items go.
struct Lanes {
    orders: Receiver<Order>,
    give_back: SyncSender<Batch>,
    account: Arc<Account>,
}

impl Lanes {
    /// Hands on what `worker` (the `index`th) produced, with how far it got. False once the
    /// account stage is broken.
    fn hand(&self, index: usize, worker: &mut FlowWorker, mark: Timestamp, board: &Board) -> bool {
        self.account.hand(index, worker.out.drain(..), mark, board)
    }
}

/// A worker thread: its batches in order, handing on what each produced; or the input,
/// walked. Returns the worker and the last packet's clock (as the finish said).
fn work(
    index: usize,
    mut worker: FlowWorker,
    lanes: &Lanes,
    board: &Board,
) -> (FlowWorker, Timestamp) {
    let mut mark = Timestamp::ZERO;
    let mut last = Timestamp::ZERO;
    for order in lanes.orders.iter() {
        let mut batch = match order {
            Order::Batch(batch) => batch,
            Order::Walk(w) => {
                last = walk(index, &mut worker, *w, lanes, board).unwrap_or(last);
                break;
            }
        };
        for e in &batch.entries {
            perform(
                index,
                &mut worker,
                batch.task(e),
                e.clock,
                &batch.reloads,
                board,
            );
            mark = e.clock;
        }
        let finished = batch
            .entries
            .last()
            .filter(|e| matches!(e.work, Work::Finish));
        if let Some(e) = finished {
            last = e.ts;
        }
        let finished = finished.is_some();
        batch.clear();
        let _ = lanes.give_back.try_send(batch);
        let mark = if finished { Timestamp(u64::MAX) } else { mark };
        if !lanes.hand(index, &mut worker, mark, board) {
            break;
        }
    }
    (worker, last)
}

/// Records of the input a walker passes between hand-ons of its items (checked at the
/// end of each chunk of the index): the other walkers' items wait in the merge until it
/// hands on, and each hand-on takes the merge's lock and may apply a batch.
const HAND_EVERY: u64 = 8192;

/// A worker's walk of a mapped replay.
struct Walk {
    /// The index every walker follows.
    index: Arc<Index>,
    router: Router,
    /// Walker 0's: where it gives back what the reader would have left (see [`Walked`]).
    back: Option<SyncSender<Walked>>,
}

/// What walker 0 gives back at the end of the input, where a reader thread would have
/// left it: the clock, the router (the fragment routes' counters).
struct Walked {
    clock: Clock,
    router: Router,
}

/// The workers walk a mapped replay, each on its own, following one index of it
/// ([`Index`]): each makes every decision the reader would ([`Router`]), the same ones,
/// since they depend on the packets alone, and does what the reader would have sent it.
/// The index has placed most packets already, once, and lists for each walker only its
/// own, with the packet clock; a packet whose place depends on what came before (a
/// fragment) or that several workers read (a DNS answer) each walker places itself, as the
/// reader would, and the packets a moment passes at every walker sees. So no packet is
/// handed from one thread to another, and each record is read once. Reader-level counters
/// are the index's reader's and walker 0's router's. It ends the input itself, as
/// [`Threads::finish`] ends a fed worker's. Returns the last packet's clock, unless it
/// stopped short (the account stage broke).
fn walk(
    index: usize,
    worker: &mut FlowWorker,
    walk: Walk,
    lanes: &Lanes,
    board: &Board,
) -> Option<Timestamp> {
    let Walk {
        index: input,
        mut router,
        back,
    } = walk;
    let mut passed = 0u64;
    let through = input.follow(index, |step| {
        let (pkt, partition, (now, start, tick)) = match step {
            Step::Packet(pkt, partition, clock) => (pkt, partition, clock),
            // Handed on by records passed, not packets seen: a walker with few packets of
            // its own still says how far it got, or the account stage would hold every
            // item of the others until the end.
            Step::Passed { records, now } => {
                passed += records;
                if passed < HAND_EVERY {
                    return true;
                }
                passed = 0;
                return lanes.hand(index, worker, now, board);
            }
        };
        let task = &mut |to: To, task: Task<'_>| {
            if to.includes(index) {
                perform(index, worker, task, now, &[], board);
            }
        };
        match partition {
            Some(partition) => router.placed(pkt, partition, start, tick, task),
            None => router.packet(pkt, now, start, tick, task),
        }
        if tick && index == 0 && board.is_watched() {
            board.put_reader(&router.routes);
        }
        true
    });
    if !through {
        return None;
    }
    let clock = input.clock();
    let end = Timestamp(clock.now.0.saturating_add(1));
    router.finish(&mut |to, task| {
        if to.includes(index) {
            perform(index, worker, task, end, &[], board);
        }
    });
    perform(
        index,
        worker,
        Task::mark(Work::Finish, clock.now),
        end,
        &[],
        board,
    );
    lanes.hand(index, worker, Timestamp(u64::MAX), board);
    if let Some(back) = back {
        let _ = back.send(Walked { clock, router });
    }
    Some(clock.now)
}

/// A DNS answer every worker must read (as `flow_stage::is_dns_answer`). A fragmented
/// answer is read only by its own worker, once whole.
#[inline]
fn dns_answer<'a>(peek: &Peek<'a>) -> Option<&'a [u8]> {
    (peek.proto == Some(Proto::Udp)
        && peek.fragment.is_none()
        && matches!(peek.src_port, 53 | 137 | 5353 | 5355)
        && dns::is_response(peek.udp_payload))
    .then_some(peek.udp_payload)
}

/// The partition of the packet `peek` read, by its addresses and ports.
#[inline]
fn partition_of_peek(network: &NetworkConfig, peek: &Peek<'_>) -> usize {
    // A protocol the flow table does not track has no ports to read, as ICMP.
    let [a, b] = ends(
        peek.proto.unwrap_or(Proto::Icmp),
        (peek.src, peek.src_port),
        (peek.dst, peek.dst_port),
    );
    partition_of(network, a, b)
}

/// The partition of `pkt` when [`Router::packet`] would place it alone, from the packet
/// alone ([`Router::placed`] then asks what it would): None for a fragment (its route
/// depends on the pieces before it) and for a DNS answer (every worker reads it).
#[inline(always)]
fn place_of(network: &NetworkConfig, pkt: Packet<'_>) -> Option<usize> {
    match decode::peek(pkt) {
        Err(_) => Some(0),
        Ok(peek) if peek.fragment.is_some() || dns_answer(&peek).is_some() => None,
        Ok(peek) => Some(partition_of_peek(network, &peek)),
    }
}

/// What the reader decides: which worker does what for each packet. Every decision
/// depends on the packets alone, in their order, so workers that walk the input each
/// with a router of their own decide alike.
struct Router {
    /// The network the sensor started with, which shares packets out.
    network: NetworkConfig,
    routes: Routes,
    /// The worker of each partition (a division per packet cost more than the lookup).
    owners: [u8; PARTITIONS],
}

impl Router {
    fn new(network: NetworkConfig, workers: usize) -> Router {
        Router {
            network,
            routes: Routes::default(),
            owners: std::array::from_fn(|p| (p % workers) as u8),
        }
    }

    fn owner(&self, partition: usize) -> usize {
        usize::from(self.owners[partition % PARTITIONS])
    }

    /// What `pkt` asks of the workers at `clock`, in the order they are to do it, through
    /// `task` (`start`: it is the input's first; `tick`: a whole second of packet time
    /// passed). From what [`decode::peek`] reads, not a full decode: its worker decodes it.
    #[inline]
    fn packet(
        &mut self,
        pkt: Packet<'_>,
        clock: Timestamp,
        start: bool,
        tick: bool,
        task: &mut impl FnMut(To, Task<'_>),
    ) {
        if start {
            task(To::One(0), Task::mark(Work::Start, pkt.ts));
        }
        // A frame that peeks badly decodes badly: any worker counts the error. (Read where
        // it lies: a copy of the peek costs a stall per packet.)
        let peeked = decode::peek(pkt);
        let placed = match &peeked {
            Ok(peek) => self.place(peek, pkt, clock, task),
            Err(_) => Some(0),
        };
        let owner = placed.map(|p| self.send(pkt, p, task));
        if let Some(payload) = peeked.as_ref().ok().and_then(dns_answer) {
            let task_of = Task {
                work: Work::DnsAnswer,
                ts: pkt.ts,
                bytes: payload,
                shared: pkt.shared,
            };
            task(To::AllBut(owner), task_of);
        }
        if tick {
            task(To::AllBut(None), Task::mark(Work::Tick, pkt.ts));
        }
    }

    /// What [`Router::packet`] asks for `pkt` when [`place_of`] found its `partition`.
    #[inline]
    fn placed(
        &self,
        pkt: Packet<'_>,
        partition: usize,
        start: bool,
        tick: bool,
        task: &mut impl FnMut(To, Task<'_>),
    ) {
        if start {
            task(To::One(0), Task::mark(Work::Start, pkt.ts));
        }
        self.send(pkt, partition, task);
        if tick {
            task(To::AllBut(None), Task::mark(Work::Tick, pkt.ts));
        }
    }

    /// Sends `pkt` to the worker of `partition`, and says which that is.
    #[inline]
    fn send(
        &self,
        pkt: Packet<'_>,
        partition: usize,
        task: &mut impl FnMut(To, Task<'_>),
    ) -> usize {
        let owner = self.owner(partition);
        let work = Work::Packet {
            link: pkt.link,
            orig_len: pkt.orig_len,
            partition,
        };
        let packet = Task {
            work,
            ts: pkt.ts,
            bytes: pkt.data,
            shared: pkt.shared,
        };
        task(To::One(owner), packet);
        owner
    }

    /// The partition of a packet; none for a fragment held until its datagram's first
    /// piece says where the datagram goes (then the held pieces go ahead of it).
    fn place(
        &mut self,
        peek: &Peek<'_>,
        pkt: Packet<'_>,
        clock: Timestamp,
        task: &mut impl FnMut(To, Task<'_>),
    ) -> Option<usize> {
        let partition = partition_of_peek(&self.network, peek);
        let Some(piece) = peek.fragment else {
            return Some(partition);
        };
        let first = piece.is_first().then_some(partition);
        let (placed, unplaced) = self.routes.piece(&piece, first, pkt, clock);
        for (key, held, partition) in unplaced {
            self.send_held(key, held, partition, task);
        }
        placed
    }

    /// Pieces held back, to `partition`, or where their addresses alone would go when
    /// their datagram was given up.
    fn send_held(
        &self,
        key: FragKey,
        held: Vec<Held>,
        partition: Option<usize>,
        task: &mut impl FnMut(To, Task<'_>),
    ) {
        let partition = partition.unwrap_or_else(|| {
            let (a, b) = key.addresses();
            partition_of(&self.network, (a, 0), (b, 0))
        });
        for h in held {
            let work = Work::Packet {
                link: h.link,
                orig_len: h.orig_len,
                partition,
            };
            let piece = Task {
                work,
                ts: h.ts,
                bytes: &h.data,
                shared: None,
            };
            task(To::One(self.owner(partition)), piece);
        }
    }

    /// The input is over: pieces still held go where their addresses alone would, for
    /// their worker's reassembly to give them up and count them.
    fn finish(&mut self, task: &mut impl FnMut(To, Task<'_>)) {
        for (key, held) in self.routes.take_held() {
            self.send_held(key, held, None, task);
        }
    }
}

/// Where the reader sends the pieces of fragmented datagrams. Only the first piece has the
/// ports that place a datagram ([`partition_of`]), and a worker can only reassemble what
/// it gets whole, so each datagram's partition is remembered from its first piece, and
/// pieces that come before it are held (copied) until it comes. Bounded as the workers'
/// reassembly: a datagram is forgotten once its bytes are all seen, after
/// [`ROUTE_TIMEOUT`] without a piece, or at [`MAX_ROUTES`] (the eighth seen longest ago
/// goes, counted as `fragment_routes`); pieces still held then go where their addresses
/// alone would, for their worker to count.
#[derive(Default)]
struct Routes {
    routes: BTreeMap<FragKey, Route>,
    evicted: u64,
}

struct Route {
    partition: Option<usize>,
    held: Vec<Held>,
    /// Payload bytes seen, and the datagram's size once its last piece came.
    seen_bytes: u32,
    size: Option<u32>,
    last_seen: Timestamp,
}

/// Held pieces to send on now: their datagram, and its partition when it is known.
type Release = (FragKey, Vec<Held>, Option<usize>);

/// A piece that came before its datagram's first, with a copy of its bytes (a mapped
/// file's too: it may wait long).
struct Held {
    ts: Timestamp,
    link: LinkType,
    orig_len: u32,
    data: Vec<u8>,
}

impl Routes {
    /// The partition of `piece` (`first`: the first piece's own), or none when it is held.
    /// Also returns pieces to send on now: held ones (with their route when the first
    /// piece just came, else given up).
    fn piece(
        &mut self,
        piece: &Piece,
        first: Option<usize>,
        pkt: Packet<'_>,
        now: Timestamp,
    ) -> (Option<usize>, Vec<Release>) {
        let mut unplaced = Vec::new();
        let key = piece.datagram;
        if !self.routes.contains_key(&key) {
            self.expire(now, &mut unplaced);
            let before = self.routes.len();
            if before >= MAX_ROUTES {
                let quota = (MAX_ROUTES / 8).max(1);
                let mut times: Vec<(Timestamp, FragKey)> =
                    self.routes.iter().map(|(k, r)| (r.last_seen, *k)).collect();
                times.sort_unstable();
                for (_, k) in times.into_iter().take(quota) {
                    if let Some(r) = self.routes.remove(&k) {
                        unplaced.push((k, r.held, None));
                    }
                }
                self.evicted += (before - self.routes.len()) as u64;
            }
        }
        let route = self.routes.entry(key).or_insert_with(|| Route {
            partition: None,
            held: Vec::new(),
            seen_bytes: 0,
            size: None,
            last_seen: now,
        });
        route.last_seen = now;
        route.seen_bytes = route.seen_bytes.saturating_add(piece.len);
        if piece.last {
            route.size = Some(piece.offset.saturating_add(piece.len));
        }
        if let Some(p) = first {
            route.partition = Some(p);
            if !route.held.is_empty() {
                unplaced.push((key, std::mem::take(&mut route.held), Some(p)));
            }
        }
        let placed = route.partition;
        if placed.is_none() {
            route.held.push(Held {
                ts: pkt.ts,
                link: pkt.link,
                orig_len: pkt.orig_len,
                data: pkt.data.to_vec(),
            });
        } else if route.size.is_some_and(|size| route.seen_bytes >= size) {
            // Every byte seen (overlaps aside): the datagram is whole at its worker.
            self.routes.remove(&key);
        }
        (placed, unplaced)
    }

    /// Forgets datagrams without a piece for [`ROUTE_TIMEOUT`].
    fn expire(&mut self, now: Timestamp, unplaced: &mut Vec<Release>) {
        let timeout = ROUTE_TIMEOUT.as_nanos() as u64;
        let stale: Vec<FragKey> = self
            .routes
            .iter()
            .filter(|(_, r)| now.0.saturating_sub(r.last_seen.0) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(r) = self.routes.remove(&k) {
                unplaced.push((k, r.held, None));
            }
        }
    }

    /// Every piece still held, by datagram; the counters stay.
    fn take_held(&mut self) -> impl Iterator<Item = (FragKey, Vec<Held>)> + use<> {
        std::mem::take(&mut self.routes)
            .into_iter()
            .map(|(k, r)| (k, r.held))
    }

    fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        stats.state_evicted.insert("fragment_routes", self.evicted);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow_stage::Item;
    use crate::observation::Observation;

    /// A piece of UDP datagram `id` from 10.0.0.1 to 10.0.0.2: 16 bytes at `offset`.
    fn piece(id: u16, offset: u16, more: bool) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        let flags = (offset / 8) | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&flags.to_be_bytes());
        ip.extend_from_slice(&[7; 16]);
        ip
    }

    /// Hands `data` to `routes` at second `at`, as the reader does (partition 5 for a first
    /// piece).
    fn hand(routes: &mut Routes, data: &[u8], at: u64) -> (Option<usize>, Vec<Release>) {
        let pkt = Packet {
            ts: Timestamp::from_secs(at),
            link: LinkType::RAW,
            orig_len: data.len() as u32,
            data,
            shared: None,
        };
        let p = decode::peek(pkt)
            .expect("a fragment")
            .fragment
            .expect("a piece");
        routes.piece(&p, p.is_first().then_some(5), pkt, pkt.ts)
    }

    #[test]
    fn pieces_follow_their_first_and_wait_for_it() {
        let mut routes = Routes::default();
        // In order: the route lives until every byte was seen.
        assert_eq!(hand(&mut routes, &piece(1, 0, true), 1).0, Some(5));
        assert_eq!(hand(&mut routes, &piece(1, 16, false), 1).0, Some(5));
        assert!(routes.routes.is_empty());
        // Last piece first: held, then released ahead of the first, to its partition.
        let (placed, released) = hand(&mut routes, &piece(2, 16, false), 2);
        assert_eq!((placed, released.len()), (None, 0));
        let (placed, released) = hand(&mut routes, &piece(2, 0, true), 2);
        assert_eq!(placed, Some(5));
        assert_eq!(released.len(), 1);
        assert_eq!((released[0].1.len(), released[0].2), (1, Some(5)));
        assert!(routes.routes.is_empty());
        // A piece whose first never comes is given up after the timeout, when the next
        // datagram starts, to where its addresses alone would go.
        hand(&mut routes, &piece(3, 16, false), 3);
        let (_, released) = hand(&mut routes, &piece(4, 0, true), 3 + 30);
        assert_eq!((released.len(), released[0].2), (1, None));
        assert_eq!(routes.evicted, 0);
    }

    #[test]
    fn at_the_limit_the_eighth_seen_longest_ago_goes_and_is_counted() {
        let mut routes = Routes::default();
        for id in 0..MAX_ROUTES as u16 {
            hand(&mut routes, &piece(id, 16, false), 1 + u64::from(id) / 1000);
        }
        let (_, released) = hand(&mut routes, &piece(u16::MAX, 16, false), 5);
        assert_eq!(released.len(), MAX_ROUTES / 8);
        assert!(released.iter().all(|r| r.1.len() == 1 && r.2.is_none()));
        assert_eq!(routes.evicted, (MAX_ROUTES / 8) as u64);
        assert_eq!(routes.routes.len(), MAX_ROUTES - MAX_ROUTES / 8 + 1);
        assert_eq!(routes.stats().state_evicted["fragment_routes"], 512);
    }

    /// The shared account stage of `workers` workers, with the default configuration.
    fn account(workers: usize) -> Account {
        let config = Config::default();
        let context = Context::load(&config, None, None).expect("the embedded geo data");
        Account::new(
            workers,
            AccountStage::new(&config, Sinks::default(), context),
        )
    }

    fn tick(secs: u64) -> Stamped {
        Stamped {
            at: Timestamp::from_secs(secs),
            item: Item::Tick,
        }
    }

    /// A hand-on that finds the stage held leaves its items in the merge, to whoever holds
    /// the stage next; nothing is applied past the slowest worker's mark.
    #[test]
    fn a_hand_on_that_finds_the_stage_held_leaves_its_items_to_the_holder() {
        let (account, board) = (account(2), Board::new(2));
        assert!(account.hand(0, [tick(1), tick(2)], Timestamp::from_secs(3), &board));
        assert!(
            lock(&account.merge).queues[0].len() == 2,
            "worker 1 is at 0"
        );
        let held = lock(&account.stage);
        assert!(account.hand(1, [tick(1)], Timestamp::from_secs(2), &board));
        assert!(lock(&account.merge).has_released());
        drop(held);
        assert!(account.apply(&board));
        let merge = lock(&account.merge);
        assert!(!merge.has_released());
        assert_eq!(merge.queues[0].len(), 1, "the item at 2 waits for worker 1");
        assert_eq!(lock(&account.stage).applied, Timestamp::from_secs(1));
    }

    /// A worker whose hand-on finds the stage held by the other, which is applying what
    /// the other's own hand-on released, leaves nothing released unapplied once both
    /// hand-ons returned: the holder looks again. Each round, worker 0 (the slower so far)
    /// hands on items that take a while to apply and gets ahead, and worker 1, a little
    /// later each round, releases its own item: sooner or later while worker 0 applies.
    #[test]
    fn once_every_hand_on_returned_nothing_released_is_left() {
        const ROUNDS: u64 = 300;
        let (account, board) = (account(2), Board::new(2));
        let secs = Timestamp::from_secs;
        assert!(account.hand(0, [], secs(2), &board));
        assert!(account.hand(1, [], secs(3), &board));
        let together = std::sync::Barrier::new(2);
        let left = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for w in 0..2 {
                let (account, board, together, left) = (&account, &board, &together, &left);
                s.spawn(move || {
                    for r in 1..=ROUNDS {
                        let (items, mark) = match w {
                            0 => ((0..300).map(|i| activity(2 * r, i)).collect(), 2 * r + 2),
                            _ => (vec![tick(2 * r + 1)], 2 * r + 3),
                        };
                        together.wait();
                        let start = Instant::now();
                        let late = Duration::from_micros(w as u64 * (r % 32) * 10);
                        while start.elapsed() < late {
                            std::hint::spin_loop();
                        }
                        assert!(account.hand(w, items, secs(mark), board));
                        together.wait();
                        if w == 0 && lock(&account.merge).has_released() {
                            left.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(left.load(Ordering::Relaxed), 0, "rounds with items left");
        assert_eq!(lock(&account.stage).applied, secs(2 * ROUNDS + 1));
    }

    /// Activity of host `i` at second `secs`.
    fn activity(secs: u64, i: u64) -> Stamped {
        let ts = Timestamp::from_secs(secs);
        let host = IpAddr::from([10, 9, (i >> 8) as u8, i as u8]);
        Stamped {
            at: ts,
            item: Item::Observation(Observation::Activity { ts, host }),
        }
    }

    /// Items of two moments, all different.
    fn item(i: u64) -> Stamped {
        Stamped {
            at: Timestamp::from_secs(100 + i % 2),
            item: Item::Observation(Observation::Activity {
                ts: Timestamp::from_secs(90 + i % 5),
                host: IpAddr::from([10, 9, 0, (i * 13 % 97) as u8]),
            }),
        }
    }

    fn id(s: &Stamped) -> (Timestamp, Option<String>) {
        match &s.item {
            Item::Observation(o) => (s.at, Some(o.id())),
            _ => (s.at, None),
        }
    }

    /// The end's streams, read a chunk at a time, and the items left over (in the queues,
    /// out of order) are released in the order one sort of them all gives, and a stream is
    /// read only when its chunk is used up.
    #[test]
    fn end_streams_merge_in_the_order_of_one_sort() {
        const CHUNK: usize = 4;
        let mut expected: Vec<Stamped> = (0..90).map(item).collect();
        expected.sort_by(in_order);
        let expected: Vec<_> = expected.iter().map(id).collect();
        // Three workers' sorted streams, and what was left over in the queues.
        let sorted_part = |w: u64| {
            let mut part: Vec<Stamped> = (0..90).filter(|i| i % 4 == w).map(item).collect();
            part.sort_by(in_order);
            part
        };
        let mut chunks: Vec<Vec<Vec<Stamped>>> = (0..3)
            .map(|w| {
                let mut part = sorted_part(w);
                let mut chunks = Vec::new();
                while !part.is_empty() {
                    let rest = part.split_off(part.len().min(CHUNK));
                    chunks.push(std::mem::replace(&mut part, rest));
                }
                chunks.reverse();
                chunks
            })
            .collect();
        let left_over: std::collections::HashSet<_> = sorted_part(3).iter().map(id).collect();
        let mut merge = Merge::new(3);
        for (i, s) in sorted_part(3).into_iter().rev().enumerate() {
            merge.push(i % 3, [s]);
        }
        let mut ready = Vec::new();
        merge.release_end(|s| ready.push(s));
        assert!(ready.is_empty(), "before every worker marked the end");
        for w in 0..3 {
            merge.mark(w, Timestamp(u64::MAX));
        }
        // Items read from the streams, and those released.
        let (mut pulled, mut applied) = (0, 0);
        let mut order = Vec::new();
        loop {
            for (w, chunks) in chunks.iter_mut().enumerate() {
                while merge.wants_end(w) {
                    let chunk = chunks.pop();
                    pulled += chunk.as_ref().map_or(0, Vec::len);
                    assert!(pulled - applied <= 3 * CHUNK, "read ahead");
                    merge.push_end(w, chunk);
                }
            }
            assert_eq!(merge.has_released(), merge.end_left());
            merge.release_end(|s| ready.push(s));
            if ready.is_empty() {
                break;
            }
            for s in ready.drain(..) {
                if !left_over.contains(&id(&s)) {
                    applied += 1;
                }
                order.push(id(&s));
            }
        }
        assert_eq!(order, expected);
        assert!(chunks.iter().all(Vec::is_empty));
    }
}
