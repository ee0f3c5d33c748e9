//! The index of a mapped replay that walking workers share ([`super::walk`]): each stretch
//! of the input is read once, record header by record header, and peeked once, by
//! whichever walker needs it first; every walker then follows its own part of the index.
//!
//! Reading a record's header is what a walk waits on (its start is known only from the
//! header before it, and its first load misses the cache), so the input is read in chunks
//! of records: the walker that needs a chunk not indexed yet holds the one reader while it
//! reads the chunk's records, peeks their packets and notes, for each, its place (where
//! every packet of its partition goes) or that each walker is to place it itself (a
//! fragment, whose route depends on the pieces before it; a DNS answer every worker
//! reads), and the packet clock. Each walker has a list of its own in each chunk: the
//! packets of its partitions, and those every walker sees (placed by each walker, or a
//! moment of the clock passing at them). A walker that takes a chunk with fewer than
//! [`LEAD`] indexed beyond it indexes the next, if nobody else is indexing: so the reading
//! shares itself out (the walker ahead does more of it), and the index keeps ahead of the
//! walkers instead of each waiting at every chunk for the other to index it. A ring of
//! [`RING`] chunks bounds how far ahead the index, and so any walker, runs of the slowest
//! walker; the pages of the files are handed back behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use crate::config::NetworkConfig;
use crate::mapped::Shared;
use crate::prefetch;
use crate::source::{LinkType, Packet, Replay, Spot};
use crate::timestamp::Timestamp;

use super::{Clock, PARTITIONS, place_of};

/// Records per chunk: enough that taking a chunk costs little per record, few enough that
/// the packets of a chunk are still in the cache when their walker decodes them.
pub const CHUNK: usize = 4096;
/// Packet bytes per chunk, at most (give or take a packet): what the ring holds resident
/// of the files is then bounded however large the packets are.
const CHUNK_BYTES: usize = 1 << 20;
/// How many packets ahead a walker asks for the bytes of its own. (Measured on the real
/// mix, 2 workers, 15 alternating runs each: 16 ahead changed nothing; no such request
/// at all cost wall +0.03-0.04 s and CPU +0.06-0.07 s, so it pays despite its samples;
/// measured again: 4 or 12 ahead, or the first line of each alone, changed nothing.)
const AHEAD: usize = 8;
/// Chunks indexed and not yet passed by every walker, at most.
const RING: u64 = 8;
/// Bytes of a file the indexer asks for ahead of the record it reads, line by line: it
/// does little with a record but peek it, so the next header's first load, asked for
/// only one record ahead, still found it waiting on memory. (Measured and not kept:
/// mapping each file 4 MiB ahead of the indexer in one `MADV_POPULATE_READ` once less
/// than a chunk's bytes were left halved a 2-worker run's page faults on the real mix,
/// 15.6 k -> 7.2 k, and changed neither wall nor CPU time in five sets of alternating
/// runs: the kernel's cost is per page mapped, not per fault. Measured again with 2 workers
/// on the real mix, alternating runs, wall and CPU within the noise of 2048: none, 1 KiB,
/// 4 KiB, every second or fourth line only; worse: 8 KiB, a `prefetchnta` hint (CPU +0.03 s),
/// and the walkers asking for the next chunk's bytes 4 to 16 lines per packet they follow,
/// to find them cached when indexing (CPU +0.03-0.05 s: the lines then come from the other
/// core's cache, and the walkers stall on the requests). The indexer is bound by the file's
/// bytes coming from memory, however it asks for them.)
const READ_AHEAD: usize = 2048;
/// Chunks indexed ahead of the one a walker takes: a walker that takes a chunk with fewer
/// ahead indexes the next, so the other seldom waits for one being indexed (indexing a
/// chunk only once a walker needed it, with the walkers in step, had each wait for the
/// other's indexing at every chunk).
const LEAD: u64 = 2;
/// Looks a walker that waits for room in the ring spins for before it sleeps, and how
/// long it sleeps.
const SPINS: u32 = 64;
const NAP: Duration = Duration::from_micros(50);

/// A record as the index holds it: where its packet lies, where it goes, and the packet
/// clock as it passes. Half a cache line: the lists are written on one core and read on
/// the others, once per packet.
#[derive(Clone, Copy)]
struct Indexed {
    ts: Timestamp,
    /// Its bytes: `start..start + len` of file `file`'s mapping.
    start: usize,
    len: u32,
    orig_len: u32,
    link: LinkType,
    file: u16,
    /// Its partition, or [`ROUTE`].
    place: u8,
    /// [`START`] and [`TICK`]: the moments it passes, which every walker sees; [`LATE`].
    moments: u8,
}

/// [`Indexed::moments`]: the input's first packet, and a whole second of packet time passed.
const START: u8 = 1;
const TICK: u8 = 2;
/// [`Indexed::moments`]: its time is before the clock's (a file out of order), the clock at
/// it being its list's next [`List::late`]; the clock at any other packet is its own time.
const LATE: u8 = 4;

/// [`Indexed::place`] of a packet each walker places itself.
const ROUTE: u8 = u8::MAX;
const _: () = assert!(super::PARTITIONS < ROUTE as usize);
const _: () = assert!(std::mem::size_of::<Indexed>() == 32);

/// What one walker is to see of a chunk.
#[derive(Clone, Default)]
struct List {
    entries: Vec<Indexed>,
    /// The clock at each of its [`LATE`] entries, in order.
    late: Vec<Timestamp>,
}

impl List {
    /// (Measured and not kept: asking for each list's line four entries ahead for writing,
    /// `prefetchw`, as the other walker read it last: no change in wall or CPU time.)
    fn push(&mut self, e: Indexed, now: Timestamp) {
        if e.moments & LATE != 0 {
            self.late.push(now);
        }
        self.entries.push(e);
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.late.clear();
    }
}

impl Indexed {
    /// Its partition; None when each walker is to place it itself.
    fn partition(&self) -> Option<usize> {
        (self.place != ROUTE).then_some(usize::from(self.place))
    }

    /// Whether every walker sees it, not its partition's walker alone.
    fn for_all(&self) -> bool {
        self.place == ROUTE || self.moments & (START | TICK) != 0
    }

    /// The clock at it, as [`Clock::packet`] gives it, `late` holding the clock at each
    /// [`LATE`] entry from here on.
    fn clock(&self, late: &mut impl Iterator<Item = Timestamp>) -> (Timestamp, bool, bool) {
        let now = if self.moments & LATE != 0 {
            late.next().unwrap_or(self.ts)
        } else {
            self.ts
        };
        (now, self.moments & START != 0, self.moments & TICK != 0)
    }
}

/// Consecutive records of the input.
#[derive(Default)]
struct Chunk {
    /// What each walker is to see of them, in order: the packets of its partitions, and
    /// those every walker sees. (One list per walker, not one list each walker skips
    /// through: reading every entry, written on another core, was a fifth of a walker's
    /// time.)
    lists: Vec<List>,
    /// How many records it holds.
    records: u64,
    /// The packet clock at its last record.
    now: Timestamp,
    /// The input ends with this chunk.
    last: bool,
    /// Bytes of input read once it was indexed (for progress).
    consumed: u64,
    /// How far each file was read once it was indexed: no later chunk reads before.
    read_to: Vec<usize>,
}

/// What a walker meets as it follows the index ([`Index::follow`]).
pub enum Step<'a> {
    /// A packet it sees: its partition as [`super::place_of`] found it (None: the walker
    /// places it itself), and the clock at it as [`Clock::packet`] gives it.
    Packet(Packet<'a>, Option<usize>, (Timestamp, bool, bool)),
    /// It is through a chunk: `records` more records of the input, however few of them
    /// were its own, behind it, the clock at the last being `now`. So a walker with little
    /// of its own still says how far it got (the account stage releases nothing past the
    /// slowest word).
    Passed { records: u64, now: Timestamp },
}

/// Marks walker `.1` gone when dropped: it holds nobody back.
struct Leaving<'a>(&'a Index, usize);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.walkers[self.1]
            .chunks
            .store(u64::MAX, Ordering::Release);
    }
}

/// The index walkers share: the one reader, and the ring of chunks.
pub struct Index {
    reader: Mutex<Reader>,
    /// Chunk `k` is in slot `k % RING` once `published` is past `k`.
    slots: Box<[Mutex<Arc<Chunk>>]>,
    published: AtomicU64,
    walkers: Box<[Progress]>,
    /// The mapping of each file, in the replay's order.
    maps: Box<[Shared]>,
    /// The walker of each partition (as the walkers' [`super::Router`]s have it).
    owners: [u8; PARTITIONS],
    chunk: usize,
    /// Entries whose bytes were not where they said, left out by every walker and counted
    /// by walker 0 (as reader-level counters are): none unless the index is wrong.
    missed: AtomicU64,
}

/// The reader of the input, held by the walker that indexes.
struct Reader {
    /// None once taken back at the end ([`Index::take_replay`]).
    replay: Option<Replay>,
    network: NetworkConfig,
    /// The packet clock, as of the last record indexed.
    clock: Clock,
    /// The chunk to index next.
    next: u64,
    /// The last chunk is indexed.
    ended: bool,
}

/// How far a walker got, on cache lines of its own (the others read it while it writes).
#[derive(Default)]
#[repr(align(128))]
struct Progress {
    /// Chunks it is through (`u64::MAX` once it is gone).
    chunks: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Index {
    /// An index of `replay` (a walker of it, [`Replay::walker`]) for the walkers `owners`
    /// names (the walker of each partition), in chunks of `chunk` records. None unless
    /// every file is mapped.
    pub fn new(
        replay: Replay,
        network: NetworkConfig,
        owners: [u8; PARTITIONS],
        chunk: usize,
    ) -> Option<Index> {
        let walkers = owners
            .iter()
            .map(|&w| usize::from(w) + 1)
            .max()
            .unwrap_or(1);
        let maps = replay
            .readers()
            .iter()
            .map(|r| r.mapping().cloned())
            .collect::<Option<Box<[Shared]>>>()?;
        // A file beyond what an entry can name ([`Indexed::file`]) is read by a reader
        // thread instead.
        if maps.len() > usize::from(u16::MAX) {
            return None;
        }
        Some(Index {
            reader: Mutex::new(Reader {
                replay: Some(replay),
                network,
                clock: Clock::default(),
                next: 0,
                ended: false,
            }),
            slots: (0..RING).map(|_| Mutex::default()).collect(),
            published: AtomicU64::new(0),
            walkers: (0..walkers).map(|_| Progress::default()).collect(),
            maps,
            owners,
            chunk: chunk.max(1),
            missed: AtomicU64::new(0),
        })
    }

    /// Follows the index to its end as walker `walker`: `each` in order, with
    /// [`Step::Packet`] for every packet of its partitions and every packet every walker
    /// sees (one each walker places itself, and one a moment passes at), and
    /// [`Step::Passed`] after each chunk. Stops early, and false, once `each` says false. However it ends (a panic too), the walker
    /// then holds the others back no more. The first bytes of its own packets, and of those
    /// without a partition, are asked for a few packets ahead: most were last read on the
    /// core of the walker that indexed them.
    pub fn follow(&self, walker: usize, mut each: impl FnMut(Step<'_>) -> bool) -> bool {
        let _leaving = Leaving(self, walker);
        let mut packets = 0u64;
        let mine = |e: &Indexed| e.partition().is_none_or(|p| self.owner(p) == walker);
        for k in 0.. {
            let chunk = self.chunk(k);
            let (list, late) = chunk
                .lists
                .get(walker)
                .map_or((&[][..], &[][..]), |l| (&l.entries[..], &l.late[..]));
            let mut late = late.iter().copied();
            for (i, e) in list.iter().enumerate() {
                // The list itself was written on the core that indexed the chunk.
                if let Some(far) = list.get(i + 4 * AHEAD) {
                    prefetch::value(far);
                }
                if let Some(ahead) = list.get(i + AHEAD)
                    && mine(ahead)
                    && let Some(pkt) = self.packet(ahead)
                {
                    prefetch::bytes(pkt.data, 2);
                }
                let clock = e.clock(&mut late);
                let Some(pkt) = self.packet(e) else {
                    // Counted once: by its walker, or by walker 0 when every walker sees it.
                    if walker == 0 || !e.for_all() {
                        self.missed.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                };
                if !each(Step::Packet(pkt, e.partition(), clock)) {
                    return false;
                }
            }
            packets += chunk.records;
            let (last, bytes, records, now) =
                (chunk.last, chunk.consumed, chunk.records, chunk.now);
            drop(chunk);
            self.through(walker, k, bytes, packets);
            if !each(Step::Passed { records, now }) {
                return false;
            }
            if last {
                break;
            }
        }
        true
    }

    /// Chunk `k`, for a walker through the chunks before it: indexed now if nobody has
    /// yet. While the ring is full the walker waits, holding nothing: the reader is held
    /// only while a chunk is read, so a walker behind is never kept from chunks indexed.
    fn chunk(&self, k: u64) -> Arc<Chunk> {
        loop {
            let published = self.published.load(Ordering::Acquire);
            if published > k {
                if published <= k + LEAD {
                    self.index_ahead();
                }
                return lock(&self.slots[(k % RING) as usize]).clone();
            }
            if let Some(freed) = (k + 1).checked_sub(RING) {
                self.wait_through(freed);
            }
            let mut reader = lock(&self.reader);
            if reader.next == k {
                self.index(&mut reader, k);
            } else if reader.next == k + 1 && self.has_room(k + 1) {
                // It waited while another walker indexed chunk k: it indexes the next, or
                // the one that indexed would go on indexing every chunk (its packets are
                // the ones in its cache, so it is through a chunk first), and the other wait.
                self.index(&mut reader, k + 1);
            }
        }
    }

    /// Indexes the next chunk if nobody is indexing one and it has a slot: so the index
    /// keeps [`LEAD`] chunks ahead of the walkers, indexed by whichever takes a chunk while
    /// it is short, and a walker waits for a chunk being indexed only when it caught up.
    fn index_ahead(&self) {
        let mut reader = match self.reader.try_lock() {
            Ok(reader) => reader,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let next = reader.next;
        if self.has_room(next) {
            self.index(&mut reader, next);
        }
    }

    /// Indexes chunk `k` into its slot (every walker is through the chunk there), unless
    /// the input ended before it.
    fn index(&self, reader: &mut Reader, k: u64) {
        if reader.ended {
            return;
        }
        let slot = &self.slots[(k % RING) as usize];
        let old = std::mem::take(&mut *lock(slot));
        // Its room again, unless a walker that is gone still holds it.
        let mut chunk = Arc::try_unwrap(old).unwrap_or_default();
        let Reader {
            replay,
            network,
            clock,
            ..
        } = reader;
        if let Some(replay) = replay {
            // Every walker is past the chunk that was here.
            replay.hand_back_before(&chunk.read_to);
            chunk.lists.resize_with(self.walkers.len(), List::default);
            chunk.lists.iter_mut().for_each(List::clear);
            chunk.records = 0;
            chunk.last = false;
            let mut bytes = 0;
            // The file and offset asked for up to ([`READ_AHEAD`]).
            let mut asked = (usize::MAX, 0);
            while (chunk.records as usize) < self.chunk && bytes < CHUNK_BYTES {
                let Some((pkt, spot)) = replay.next_packet_at() else {
                    chunk.last = true;
                    break;
                };
                let end = spot.offset + spot.len as usize;
                if asked.0 != spot.file || asked.1 < end {
                    asked = (spot.file, end);
                }
                if let Some(map) = self.maps.get(spot.file) {
                    let want = end + READ_AHEAD;
                    if let Some(ahead) = map.bytes().get(asked.1..want.min(map.bytes().len())) {
                        prefetch::bytes(ahead, ahead.len().div_ceil(64));
                    }
                    asked.1 = asked.1.max(want);
                }
                bytes += pkt.data.len();
                chunk.records += 1;
                let now = clock.packet(pkt.ts);
                // (Measured and not kept: CLDEMOTE of the first lines of each packet once
                // peeked, and of each list's lines once written, so the walker on the other
                // core finds them in the shared cache and not in this core's: CPU +0.05-0.08 s
                // with 2 workers on the real mix.)
                let e = entry(pkt, spot, now, network);
                match e.partition() {
                    Some(p) if !e.for_all() => chunk.lists[self.owner(p)].push(e, now.0),
                    _ => chunk.lists.iter_mut().for_each(|l| l.push(e, now.0)),
                }
            }
            chunk.now = clock.now;
            chunk.consumed = replay.consumed();
            chunk.read_to = replay.read_to();
        } else {
            chunk.last = true;
        }
        reader.ended = chunk.last;
        *lock(slot) = Arc::new(chunk);
        reader.next = k + 1;
        self.published.store(k + 1, Ordering::Release);
    }

    /// The packet of `e`, borrowed from its file's mapping; None (which [`Index::follow`]
    /// counts) if it is not there, which an entry made by [`entry`] always is.
    #[inline]
    fn packet(&self, e: &Indexed) -> Option<Packet<'_>> {
        let map = self.maps.get(usize::from(e.file))?;
        let data = map
            .bytes()
            .get(e.start..e.start.checked_add(e.len as usize)?)?;
        Some(Packet {
            ts: e.ts,
            link: e.link,
            orig_len: e.orig_len,
            data,
            shared: Some(map),
        })
    }

    /// Walker `walker` is through chunk `k` (and no longer holds it): `packets` packets in
    /// all, `bytes` of input (the chunk's [`Chunk::consumed`]).
    fn through(&self, walker: usize, k: u64, bytes: u64, packets: u64) {
        let w = &self.walkers[walker];
        w.packets.store(packets, Ordering::Relaxed);
        w.bytes.store(bytes, Ordering::Relaxed);
        w.chunks.store(k + 1, Ordering::Release);
    }

    /// Whether chunk `k` has a slot: every walker is through the chunk there.
    fn has_room(&self, k: u64) -> bool {
        let freed = (k + 1).saturating_sub(RING);
        self.walkers
            .iter()
            .all(|w| w.chunks.load(Ordering::Acquire) >= freed)
    }

    /// Waits until every walker is through `chunks` chunks.
    fn wait_through(&self, chunks: u64) {
        let mut looks = 0;
        while self
            .walkers
            .iter()
            .any(|w| w.chunks.load(Ordering::Acquire) < chunks)
        {
            if looks < SPINS {
                std::hint::spin_loop();
                looks += 1;
            } else {
                std::thread::sleep(NAP);
            }
        }
    }

    /// How far walker `walker` got: packets and bytes.
    pub fn progress(&self, walker: usize) -> (u64, u64) {
        let w = &self.walkers[walker];
        (
            w.packets.load(Ordering::Relaxed),
            w.bytes.load(Ordering::Relaxed),
        )
    }

    /// The replay, read to its end, once the last chunk is indexed.
    pub fn take_replay(&self) -> Option<Replay> {
        lock(&self.reader).replay.take()
    }

    /// The packet clock, as of the last record indexed (at the end: of the input).
    pub fn clock(&self) -> Clock {
        lock(&self.reader).clock
    }

    /// The walker of partition `p`.
    fn owner(&self, p: usize) -> usize {
        usize::from(self.owners[p % PARTITIONS])
    }

    /// Entries left out because their bytes were not where they said.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

/// The index entry of `pkt`, which lies at `spot` of the replay of the index's files, at
/// `clock` ([`Clock::packet`]).
fn entry(
    pkt: Packet<'_>,
    spot: Spot,
    (now, start, tick): (Timestamp, bool, bool),
    network: &NetworkConfig,
) -> Indexed {
    Indexed {
        ts: pkt.ts,
        moments: if start { START } else { 0 }
            | if tick { TICK } else { 0 }
            | if now != pkt.ts { LATE } else { 0 },
        start: spot.offset,
        len: spot.len,
        // Index::new takes no more files than an entry names.
        file: spot.file as u16,
        place: place_of(network, pkt).map_or(ROUTE, |p| p as u8),
        link: pkt.link,
        orig_len: pkt.orig_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// What following the index gives, or reading the replay itself: every packet's time,
    /// bytes, partition and clock, in order.
    type Seen = Vec<(Timestamp, Vec<u8>, Option<usize>, (Timestamp, bool, bool))>;

    fn files() -> Vec<PathBuf> {
        // Merged by time: fragments held out of order, DNS, tunnels, a cut-off record.
        [
            "fixtures/detect-tunnels.pcap",
            "fixtures/ipv4-fragments.pcap",
            "fixtures/pcap-le-us.pcap",
            "fixtures/truncated.pcap",
        ]
        .iter()
        .map(PathBuf::from)
        .collect()
    }

    /// The walker of each partition, for `n` walkers (as the engine's router has it).
    fn owners(n: usize) -> [u8; PARTITIONS] {
        std::array::from_fn(|p| (p % n) as u8)
    }

    fn read(replay: &mut Replay, network: &NetworkConfig) -> Seen {
        let (mut seen, mut clock) = (Vec::new(), Clock::default());
        while let Some(pkt) = replay.next_packet() {
            let partition = place_of(network, pkt);
            seen.push((pkt.ts, pkt.data.to_vec(), partition, clock.packet(pkt.ts)));
        }
        seen
    }

    /// What walker `w` of `n` is to see of `all`: its partitions' packets, those without a
    /// partition, and those a moment passes at.
    fn of_walker(all: &Seen, w: usize, n: usize) -> Seen {
        let mine = |(_, _, p, (_, start, tick)): &(_, _, Option<usize>, (_, bool, bool))| {
            p.is_none_or(|p| p % n == w) || *start || *tick
        };
        all.iter().filter(|s| mine(s)).cloned().collect()
    }

    /// Follows `index` with `n` walkers side by side: what each saw, and each chunk it
    /// passed (records, clock).
    fn follow_all(index: &Index, n: usize) -> Vec<(Seen, Vec<(u64, Timestamp)>)> {
        std::thread::scope(|s| {
            let walkers: Vec<_> = (0..n)
                .map(|w| {
                    s.spawn(move || {
                        let mut seen = Seen::new();
                        let mut passed = Vec::new();
                        let through = index.follow(w, |step| {
                            match step {
                                Step::Packet(pkt, partition, clock) => {
                                    seen.push((pkt.ts, pkt.data.to_vec(), partition, clock));
                                }
                                Step::Passed { records, now } => passed.push((records, now)),
                            }
                            true
                        });
                        assert!(through);
                        (seen, passed)
                    })
                })
                .collect();
            walkers.into_iter().map(|w| w.join().unwrap()).collect()
        })
    }

    /// Chunks of any size, the input's end inside a chunk or right after one, and a ring
    /// that fills up: every walker, side by side, sees what is its own once, in order, with
    /// the clock the whole input gives, and the replay given back has counted what the
    /// files lost, once.
    #[test]
    fn every_walker_sees_its_records_once_across_chunk_boundaries() {
        let network = NetworkConfig::default();
        let mut whole = Replay::open(&files()).unwrap();
        let expected = read(&mut whole, &network);
        let mut counted = crate::metrics::Stats::default();
        whole.count_into(&mut counted);
        let records = expected.len();
        assert!(records > 3 * RING as usize, "{records} records");
        assert!(expected.iter().any(|(_, _, p, _)| p.is_none()));
        assert!(
            expected
                .iter()
                .filter(|(_, _, _, (_, _, tick))| *tick)
                .count()
                > 2
        );
        assert!(counted.truncated_records > 0);
        for chunk in [1, 2, 3, 7, records - 1, records, records + 1, CHUNK] {
            let replay = Replay::open(&files()).unwrap();
            let index = Index::new(replay.walker().unwrap(), network.clone(), owners(3), chunk);
            let index = index.unwrap();
            let seen = follow_all(&index, 3);
            for (w, (seen, passed)) in seen.iter().enumerate() {
                let mine = of_walker(&expected, w, 3);
                assert!(mine.len() < records && !mine.is_empty());
                assert_eq!(seen.len(), mine.len(), "chunks of {chunk}, walker {w}");
                assert!(*seen == mine, "chunks of {chunk}, walker {w}");
                // Every walker passes every record, its own or not, each chunk with the
                // clock at its last record.
                let mut behind = 0;
                for &(n, now) in passed {
                    behind += n as usize;
                    if n > 0 {
                        assert_eq!(now, expected[behind - 1].3.0, "chunks of {chunk}");
                    }
                }
                assert_eq!(behind, records, "chunks of {chunk}, walker {w}");
            }
            let end = expected.last().map(|s| s.3.0);
            assert_eq!(Some(index.clock().now), end);
            let mut stats = crate::metrics::Stats::default();
            index.take_replay().unwrap().count_into(&mut stats);
            assert_eq!(stats.truncated_records, counted.truncated_records);
        }
    }

    /// A file out of time order: at a packet older than the clock, every walker that sees it
    /// sees the clock as the replay read it, not the packet's own time ([`LATE`]).
    #[test]
    fn a_packet_before_the_clock_is_seen_at_the_clock() {
        // Every third record of a little-endian pcap a second back (record headers: seconds,
        // fraction, captured and original length, after the 24-byte file header).
        let mut bytes = std::fs::read("fixtures/detect-tunnels.pcap").unwrap();
        let (mut at, mut n) = (24, 0);
        while at + 16 <= bytes.len() {
            let word = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
            if n % 3 == 2 {
                let back = word(&bytes, at) - 1;
                bytes[at..at + 4].copy_from_slice(&back.to_le_bytes());
            }
            at += 16 + word(&bytes, at + 8) as usize;
            n += 1;
        }
        let path = std::env::temp_dir().join(format!("fw-index-late-{}.pcap", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let files = [path.clone()];
        let network = NetworkConfig::default();
        let expected = read(&mut Replay::open(&files).unwrap(), &network);
        let late = expected
            .iter()
            .filter(|(ts, _, _, (now, ..))| now != ts)
            .count();
        assert!(late > 2, "{late} packets before the clock");
        for chunk in [1, 5, CHUNK] {
            let replay = Replay::open(&files).unwrap();
            let index = Index::new(replay.walker().unwrap(), network.clone(), owners(2), chunk);
            for (w, (seen, _)) in follow_all(&index.unwrap(), 2).iter().enumerate() {
                assert!(
                    *seen == of_walker(&expected, w, 2),
                    "chunks of {chunk}, walker {w}"
                );
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// Each packet a walker follows lies where the replay read it: in the same file's
    /// mapping (the files interleave), at the same offset; and an entry whose bytes are not
    /// where it says is left out and counted once.
    #[test]
    fn entries_name_the_file_and_offset_their_packets_were_read_at() {
        let network = NetworkConfig::default();
        let mut whole = Replay::open(&files()).unwrap();
        let maps: Vec<Shared> = (whole.readers().iter())
            .map(|r| r.mapping().unwrap().clone())
            .collect();
        let mut spots = Vec::new();
        while let Some((pkt, spot)) = whole.next_packet_at() {
            let end = spot.offset + spot.len as usize;
            let bytes = &maps[spot.file].bytes()[spot.offset..end];
            assert!(std::ptr::eq(pkt.data, bytes));
            spots.push(spot);
        }
        let switches = spots.windows(2).filter(|w| w[0].file != w[1].file).count();
        assert!(switches > 3, "files interleave {switches} times");
        let replay = Replay::open(&files()).unwrap();
        let index = Index::new(replay.walker().unwrap(), network, owners(2), 7).unwrap();
        // A walker's packet, as a spot of the index's files.
        let spot_of = |pkt: Packet<'_>| {
            let file = (index.maps.iter())
                .position(|m| Arc::ptr_eq(m, pkt.shared.unwrap()))
                .unwrap();
            let offset = pkt.data.as_ptr() as usize - index.maps[file].bytes().as_ptr() as usize;
            let len = pkt.data.len() as u32;
            Spot { file, offset, len }
        };
        // Chunk 1's first entry of walker 0 points past its file's end (in every list that
        // holds it).
        drop(index.chunk(0));
        let chunk = index.chunk(1);
        let first = chunk.lists[0].entries[0];
        let broken = (first.file, first.start);
        let mut lists = chunk.lists.clone();
        let past = index.maps[usize::from(first.file)].bytes().len();
        for e in lists.iter_mut().flat_map(|l| l.entries.iter_mut()) {
            if (e.file, e.start) == broken {
                e.start = past;
            }
        }
        let (records, now, last, consumed) = (chunk.records, chunk.now, chunk.last, chunk.consumed);
        let read_to = chunk.read_to.clone();
        drop(chunk);
        let chunk = Chunk {
            lists,
            records,
            now,
            last,
            consumed,
            read_to,
        };
        *lock(&index.slots[1]) = Arc::new(chunk);
        let mut followed: Vec<usize> = std::thread::scope(|s| {
            let walkers: Vec<_> = (0..2)
                .map(|w| {
                    let (index, spot_of, spots) = (&index, &spot_of, &spots);
                    s.spawn(move || {
                        let mut seen = Vec::new();
                        assert!(index.follow(w, |step| {
                            let Step::Packet(pkt, _, _) = step else {
                                return true;
                            };
                            let spot = spot_of(pkt);
                            seen.push(spots.iter().position(|s| *s == spot).unwrap());
                            true
                        }));
                        assert!(seen.windows(2).all(|p| p[0] < p[1]), "walker {w} in order");
                        seen
                    })
                })
                .collect();
            walkers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        followed.sort_unstable();
        followed.dedup();
        let missing: Vec<usize> = (0..spots.len())
            .filter(|i| followed.binary_search(i).is_err())
            .collect();
        let broken = spots
            .iter()
            .position(|s| (s.file as u16, s.offset) == broken);
        assert_eq!(missing, broken.into_iter().collect::<Vec<_>>());
        assert_eq!(index.missed(), 1);
    }

    /// A walker that stops early (or panics) holds the others back no more: they go on to
    /// the end past a full ring.
    #[test]
    fn a_walker_gone_holds_nobody_back() {
        let network = NetworkConfig::default();
        let replay = Replay::open(&files()).unwrap();
        let index = Index::new(replay.walker().unwrap(), network, owners(2), 1).unwrap();
        assert!(!index.follow(0, |_| false));
        // Chunks of one record: the chunks it passes are the records.
        let mut chunks = 0;
        assert!(index.follow(1, |step| {
            chunks += usize::from(matches!(step, Step::Passed { .. }));
            true
        }));
        assert!(chunks > RING as usize);
    }
}
