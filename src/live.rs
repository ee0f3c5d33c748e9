//! `farmwatch live`: libpcap capture on one thread, the pipeline on worker threads, and the
//! control plane ([`crate::control`]) on a tokio runtime of its own.
//!
//! The capture thread only copies frames out of libpcap and picks a worker by a symmetric
//! hash of the innermost address pair, so every packet of a conversation (both directions,
//! and its IP fragments) reaches the same worker's flow table. Workers own a [`Pipeline`]
//! each; their output goes through [`SharedFile`], so several workers append whole lines to
//! one file. Packet time comes from the capture timestamps, never from the wall clock.
//!
//! Nothing slow runs on the capture thread: libpcap's TPACKET_V3 ring holds a burst while a
//! worker catches up (the capture waits for room in a worker's queue rather than drop), and
//! a SIGHUP's files are parsed on a thread of their own and handed over whole.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etherparse::{LaxNetSlice, LaxSlicedPacket};
use pcap::{Capture, Device, Precision};

use crate::accounts::Inventory;
use crate::config::{Config, NetworkConfig};
use crate::decode::Decoder;
use crate::metrics::{Metrics, Stats};
use crate::pipeline::{Context, Pipeline, Sinks};
use crate::replay::Failure;
use crate::sink::{self, JsonLines, Target};
use crate::source::{LinkType, OwnedPacket, Packet};
use crate::timestamp::Timestamp;

/// libpcap's packet buffer timeout. Without immediate mode libpcap uses TPACKET_V3, whose
/// ring is made of 256 KiB blocks filled at each packet's real length; the kernel hands a
/// block to the sensor when it is full or this old, so a quiet link's packets wait at most
/// this long. Longer would waste less of a block at low rates; shorter, lag less.
const BLOCK_TIMEOUT_MS: i32 = 100;
/// The longest the capture thread sleeps on an idle link before it looks at the stop flag,
/// a finished reload and the drop counters (a V3 ring wakes nobody while no packet comes).
const WAKE_EVERY: Duration = Duration::from_millis(100);
/// How long the capture goes on reading after a stop is asked for: packets that came before
/// it may sit in a block the kernel hands over only when [`BLOCK_TIMEOUT_MS`] has passed.
const STOP_DRAIN: Duration = Duration::from_millis(2 * BLOCK_TIMEOUT_MS as u64);
/// Packets queued per worker; when a queue is full the capture waits for it, and the
/// backlog stays in the kernel ring (whose overflow the kernel counts).
const QUEUE_PACKETS: usize = 8192;
/// How often workers flush output and hand their counters to the metrics.
const WORKER_TICK: Duration = Duration::from_secs(1);
/// How often libpcap's drop counters are read: on a timer, not on packet arrival, so the
/// metrics show a burst's final drop count once the link is quiet.
const CAPTURE_STATS_EVERY: Duration = Duration::from_millis(250);
/// Growing drop counts are logged at most this often.
const DROPS_LOG_EVERY: Duration = Duration::from_secs(2);
/// How far packet time moves before the capture tells every worker (see [`Work::Clock`]).
const CLOCK_EVERY: Duration = Duration::from_secs(1);
/// Sink write failures are logged at most this often.
const SINK_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the capture thread hands a worker.
enum Work {
    Packet(OwnedPacket),
    /// The capture's packet time. A worker sees only its shard of the traffic; without this
    /// its clock, and with it its flows' timeouts, would stall while its shard is quiet.
    Clock(Timestamp),
    /// A new account inventory (SIGHUP).
    Inventory(Arc<Inventory>),
    /// A new `[network]` section (SIGHUP).
    Network(Arc<NetworkConfig>),
    /// Lines appended to the session feed since it was last read.
    Sessions(Arc<String>),
}

/// The `live` command line, validated.
pub struct LiveArgs {
    pub interface: String,
    pub bpf: Option<String>,
    pub accounts: Option<PathBuf>,
    pub sessions: Option<PathBuf>,
    /// Re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    pub config: Config,
    pub events: Target,
    pub flows: Option<PathBuf>,
    pub listen: SocketAddr,
    pub snaplen: u32,
    pub promisc: bool,
    pub buffer_mb: u32,
    pub workers: usize,
}

/// State shared by the capture thread, the workers and the control plane.
pub struct Sensor {
    pub metrics: Metrics,
    capturing: AtomicBool,
    stop: AtomicBool,
    /// Each worker's latest counters, summed into the metrics.
    worker_stats: Mutex<Vec<Stats>>,
    drops_kernel: AtomicU64,
    drops_interface: AtomicU64,
    /// A SIGHUP's parsed files, waiting for the capture thread to hand them on; `reloaded`
    /// says one is there, so the capture looks at the lock only then.
    pending: Mutex<Option<Reloaded>>,
    reloaded: AtomicBool,
    /// Held while a reload reads its files, so two SIGHUPs in a row apply in order.
    reloading: Mutex<()>,
    outputs: Vec<SharedFile>,
    config_path: Option<PathBuf>,
    accounts_path: Option<PathBuf>,
    /// Sink errors last logged, and when.
    sink_log: Mutex<(u64, Option<Instant>)>,
}

/// What a SIGHUP read: applied whole, or (when any part is invalid) not at all.
struct Reloaded {
    network: NetworkConfig,
    inventory: Option<Arc<Inventory>>,
}

impl Sensor {
    pub(crate) fn new(
        workers: usize,
        outputs: Vec<SharedFile>,
        config_path: Option<PathBuf>,
        accounts_path: Option<PathBuf>,
    ) -> Sensor {
        Sensor {
            metrics: Metrics::new(),
            capturing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            worker_stats: Mutex::new(vec![Stats::default(); workers]),
            drops_kernel: AtomicU64::new(0),
            drops_interface: AtomicU64::new(0),
            pending: Mutex::new(None),
            reloaded: AtomicBool::new(false),
            reloading: Mutex::new(()),
            outputs,
            config_path,
            accounts_path,
            sink_log: Mutex::new((0, None)),
        }
    }

    /// True while the capture loop runs (`/healthz`).
    pub fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    pub(crate) fn set_capturing(&self, on: bool) {
        self.capturing.store(on, Ordering::Relaxed);
    }

    /// Asks the capture loop to end (SIGTERM, SIGINT); it wakes within [`WAKE_EVERY`].
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Sums the workers' counters with the capture's drop counts into the metrics, and logs
    /// sink failures (once a minute at most: a full disk must not flood the log).
    pub fn publish(&self) {
        let mut total = Stats::default();
        for s in self
            .worker_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            merge(&mut total, s);
        }
        total.capture_drops_kernel = self.drops_kernel.load(Ordering::Relaxed);
        total.capture_drops_interface = self.drops_interface.load(Ordering::Relaxed);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics.publish(&total, wall);

        let errors: u64 = total.sink_errors.values().sum();
        let mut log = self.sink_log.lock().unwrap_or_else(PoisonError::into_inner);
        let due = log.1.is_none_or(|t| t.elapsed() >= SINK_LOG_EVERY);
        if errors > log.0 && due {
            let which: Vec<String> = total
                .sink_errors
                .iter()
                .map(|(sink, n)| format!("{sink}={n}"))
                .collect();
            eprintln!(
                "farmwatch: error: output writes are failing; records are being lost failed_writes={errors} {}",
                which.join(" ")
            );
            *log = (errors, Some(Instant::now()));
        }
    }

    /// SIGHUP: reopens the output files (logrotate moved them away; they are created anew)
    /// and re-reads the config file and the inventory, on a thread of its own so that
    /// neither the capture nor the control plane waits for a large inventory to parse.
    pub fn reload(self: &Arc<Self>) {
        let sensor = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("farmwatch-reload".to_string())
            .spawn(move || sensor.reread());
        if let Err(e) = started {
            self.metrics.count_reload(false);
            eprintln!("farmwatch: error: SIGHUP reload failed: cannot start a thread: {e}");
        }
    }

    /// Reads what a SIGHUP reloads and leaves it for the capture thread; one log line says
    /// how it went. An invalid config or inventory keeps the old state of both.
    fn reread(&self) {
        let _in_order = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut failures = Vec::new();
        let mut reopened = 0;
        for out in &self.outputs {
            match out.reopen() {
                Ok(()) => reopened += 1,
                Err(e) => failures.push(format!("cannot reopen output {:?}: {e}", out.target)),
            }
        }
        let config = Config::load(self.config_path.as_deref())
            .map_err(|e| failures.push(format!("new config rejected: {e}")))
            .ok();
        let inventory = match self.accounts_path.as_deref().map(Inventory::load) {
            None => Some(None),
            Some(Ok(inv)) => Some(Some(Arc::new(inv))),
            Some(Err(problems)) => {
                let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
                failures.push(format!("new inventory rejected: {first}"));
                None
            }
        };
        let applied = match (config, inventory) {
            (Some(config), Some(inventory)) => {
                let accounts = inventory.as_ref().map(|inv| inv.accounts.len());
                *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(Reloaded {
                    network: config.network,
                    inventory,
                });
                self.reloaded.store(true, Ordering::Release);
                Some(accounts)
            }
            _ => None,
        };
        self.metrics.count_reload(failures.is_empty());
        match applied {
            Some(accounts) if failures.is_empty() => eprintln!(
                "farmwatch: SIGHUP: config{} reloaded{} outputs_reopened={reopened}; [network] applied, [sensor] [geoip] [flows] [detect] apply at the next start",
                accounts.map_or("", |_| " and inventory"),
                accounts
                    .map(|n| format!(" accounts={n}"))
                    .unwrap_or_default(),
            ),
            Some(_) => eprintln!(
                "farmwatch: error: SIGHUP reload: config and inventory applied, but {}",
                failures.join("; ")
            ),
            None => eprintln!(
                "farmwatch: error: SIGHUP reload failed, keeping the old config and inventory: {} (outputs_reopened={reopened})",
                failures.join("; ")
            ),
        }
    }

    /// The files a SIGHUP read, once; None until a reload has finished.
    fn take_reloaded(&self) -> Option<Reloaded> {
        if !self.reloaded.swap(false, Ordering::Acquire) {
            return None;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Adds `b`'s counters to `a` (workers' stats summed for the metrics).
fn merge(a: &mut Stats, b: &Stats) {
    a.merge(b);
}

/// One output file that every worker's [`JsonLines`] writes to. Each worker buffers whole
/// lines and hands them over in a single `write`, under the lock, so lines never interleave;
/// SIGHUP swaps the file underneath.
#[derive(Clone)]
pub(crate) struct SharedFile {
    target: Target,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl SharedFile {
    fn open(target: Target) -> io::Result<SharedFile> {
        let out = sink::open_target(&target)?;
        Ok(SharedFile {
            target,
            out: Arc::new(Mutex::new(out)),
        })
    }

    fn reopen(&self) -> io::Result<()> {
        if self.target == Target::Stdout {
            return Ok(());
        }
        let fresh = sink::open_target(&self.target)?;
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.flush()?;
        *out = fresh;
        Ok(())
    }

    /// A sink for one worker.
    fn sink(&self) -> JsonLines {
        JsonLines::with_writer(self.target.clone(), Box::new(self.clone()))
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush()
    }
}

pub fn run(args: LiveArgs) -> Result<(), Failure> {
    // Each worker has its own view of identity and geo.
    let contexts = (0..args.workers)
        .map(|_| {
            Context::load(
                &args.config,
                args.accounts.as_deref(),
                args.sessions.as_deref(),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Usage)?;
    let mut capture = open_capture(&args)?;
    let link = LinkType(capture.get_datalink().0 as u32);
    let listener = TcpListener::bind(args.listen)
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let events = SharedFile::open(args.events.clone())
        .map_err(|e| Failure::Usage(format!("cannot open events output: {e}")))?;
    let flows = args
        .flows
        .clone()
        .map(|p| SharedFile::open(Target::File(p)))
        .transpose()
        .map_err(|e| Failure::Usage(format!("cannot open flows output: {e}")))?;

    let sensor = Arc::new(Sensor::new(
        args.workers,
        [Some(events.clone()), flows.clone()]
            .into_iter()
            .flatten()
            .collect(),
        args.config_path.clone(),
        args.accounts.clone(),
    ));
    let control = crate::control::start(listener, Arc::clone(&sensor))
        .map_err(|e| Failure::Runtime(format!("cannot start the control plane: {e}")))?;

    let mut queues = Vec::with_capacity(args.workers);
    let mut workers = Vec::with_capacity(args.workers);
    for (index, context) in contexts.into_iter().enumerate() {
        let (tx, rx) = sync_channel(QUEUE_PACKETS);
        let sinks = Sinks {
            events: Some(events.sink()),
            flows: flows.as_ref().map(SharedFile::sink),
        };
        let mut pipeline = Pipeline::new(&args.config, sinks, context);
        if index > 0 {
            // Inventory and session-feed findings once per sensor, not once per worker.
            pipeline.secondary();
        }
        let sensor = Arc::clone(&sensor);
        let worker = std::thread::Builder::new()
            .name(format!("farmwatch-worker-{index}"))
            .spawn(move || work(index, pipeline, rx, &sensor))
            .map_err(|e| Failure::Runtime(format!("cannot start a worker thread: {e}")))?;
        queues.push(tx);
        workers.push(worker);
    }

    eprintln!(
        "farmwatch: capture started interface={} snaplen={} promisc={} buffer_mb={} workers={} listen={}{}",
        args.interface,
        args.snaplen,
        args.promisc,
        args.buffer_mb,
        args.workers,
        control.local_addr,
        args.bpf
            .as_deref()
            .map(|f| format!(" bpf={f:?}"))
            .unwrap_or_default()
    );
    sensor.set_capturing(true);
    let mut feeds = Feeds::new(args.sessions.clone());
    let capture_error = capture_loop(
        &mut capture,
        link,
        &queues,
        &sensor,
        &args.config.network,
        &mut feeds,
    );
    sensor.set_capturing(false);
    drop(queues);

    let mut failures: Vec<String> = capture_error.into_iter().collect();
    for worker in workers {
        match worker.join() {
            Ok(sink_failures) => failures.extend(sink_failures),
            Err(_) => failures.push("a worker thread panicked".to_string()),
        }
    }
    for out in [Some(&events), flows.as_ref()].into_iter().flatten() {
        let mut out = out.clone();
        if let Err(e) = out.flush() {
            failures.push(format!("{:?}: {e}", out.target));
        }
    }
    sensor.publish();
    control.shutdown();
    eprintln!(
        "farmwatch: capture stopped packets={} dropped_kernel={} dropped_interface={}",
        sensor
            .worker_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|s| s.packets)
            .sum::<u64>(),
        sensor.drops_kernel.load(Ordering::Relaxed),
        sensor.drops_interface.load(Ordering::Relaxed),
    );
    failures.dedup();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(failures.join("; ")))
    }
}

/// Opens and activates the capture; every way this fails is the operator's to fix (exit 2).
/// Not in immediate mode, so libpcap picks TPACKET_V3: packets sit in the ring at their own
/// length (a V2 ring has one snaplen-sized slot per packet: about 500 of them in 32 MiB at
/// snaplen 65535). Non-blocking, so the capture thread wakes on its own timer.
fn open_capture(args: &LiveArgs) -> Result<Capture<pcap::Active>, Failure> {
    let devices =
        Device::list().map_err(|e| Failure::Usage(format!("cannot list interfaces: {e}")))?;
    if !devices.iter().any(|d| d.name == args.interface) {
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        return Err(Failure::Usage(format!(
            "no such interface: {}; available: {}",
            args.interface,
            names.join(", ")
        )));
    }
    let privileges = |e: pcap::Error| {
        let text = pcap_message(&e);
        if text.contains("permission") || text.contains("not permitted") {
            Failure::Usage(format!(
                "cannot capture on {}: needs CAP_NET_RAW and CAP_NET_ADMIN (or root)",
                args.interface
            ))
        } else {
            Failure::Usage(format!("cannot capture on {}: {text}", args.interface))
        }
    };
    let buffer = i32::try_from(u64::from(args.buffer_mb) << 20).unwrap_or(i32::MAX);
    let mut capture = Capture::from_device(args.interface.as_str())
        .map_err(privileges)?
        .snaplen(i32::try_from(args.snaplen).unwrap_or(i32::MAX))
        .promisc(args.promisc)
        .buffer_size(buffer)
        .timeout(BLOCK_TIMEOUT_MS)
        .precision(Precision::Nano)
        .open()
        .map_err(privileges)?
        .setnonblock()
        .map_err(privileges)?;
    if let Some(filter) = &args.bpf {
        capture.filter(filter, true).map_err(|e| {
            Failure::Usage(format!("bad BPF filter {filter:?}: {}", pcap_message(&e)))
        })?;
    }
    Ok(capture)
}

/// libpcap's own words, without the crate's "libpcap error: " prefix.
fn pcap_message(e: &pcap::Error) -> String {
    let text = e.to_string();
    match text.strip_prefix("libpcap error: ") {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// Reads packets until a stop is requested; Some(message) when the capture broke.
fn capture_loop(
    capture: &mut Capture<pcap::Active>,
    link: LinkType,
    queues: &[SyncSender<Work>],
    sensor: &Sensor,
    network: &NetworkConfig,
    feeds: &mut Feeds,
) -> Option<String> {
    // A second descriptor of the capture's socket to sleep on while libpcap holds the first.
    let ring = match capture.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return Some(format!("capture failed: {e}")),
    };
    let mut shard = Sharder::new(queues.len(), network.clone());
    let mut drops = DropCounter::default();
    let mut next_stats = Instant::now() + CAPTURE_STATS_EVERY;
    let mut next_feeds = Instant::now();
    let mut clock_told = Timestamp::ZERO;
    let mut stop_at = None;
    loop {
        if stop_at.is_none() && sensor.stop.load(Ordering::Relaxed) {
            stop_at = Some(Instant::now() + STOP_DRAIN);
        }
        if stop_at.is_some_and(|at| Instant::now() >= at) {
            break;
        }
        match capture.next_packet() {
            Ok(p) => {
                // time_t and suseconds_t are i64 here but narrower on some targets.
                #[allow(clippy::useless_conversion)]
                let ts = timestamp(
                    i64::from(p.header.ts.tv_sec),
                    i64::from(p.header.ts.tv_usec),
                );
                let pkt = Packet {
                    ts,
                    link,
                    orig_len: p.header.len,
                    data: p.data,
                };
                let now = pkt.ts;
                // Feed lines and a reload matter only for the packets after them.
                if Instant::now() >= next_feeds || sensor.reloaded.load(Ordering::Relaxed) {
                    next_feeds = Instant::now() + FEEDS_EVERY;
                    hand_on(queues, sensor, &mut shard, feeds);
                }
                let queue = shard.worker(pkt);
                // A full queue makes the capture wait: the backlog stays in the kernel ring.
                if queues
                    .get(queue)
                    .is_some_and(|q| q.send(Work::Packet(pkt.into())).is_err())
                {
                    // A worker ended early (it panicked); its failure is reported at join.
                    return None;
                }
                if queues.len() > 1 && now.since(clock_told) >= CLOCK_EVERY {
                    clock_told = now;
                    // A full queue skips this tick: that worker is busy with newer packets.
                    for q in queues {
                        let _ = q.try_send(Work::Clock(now));
                    }
                }
            }
            // The ring is empty: sleep until the kernel hands over a block, or a while.
            Err(pcap::Error::TimeoutExpired) => {
                wait_readable(&ring, WAKE_EVERY);
                if sensor.reloaded.load(Ordering::Relaxed) {
                    hand_on(queues, sensor, &mut shard, feeds);
                }
            }
            Err(pcap::Error::NoMorePackets) => {}
            Err(e) => return Some(format!("capture failed: {e}")),
        }
        if Instant::now() >= next_stats {
            next_stats = Instant::now() + CAPTURE_STATS_EVERY;
            drops.poll(capture, sensor, false);
        }
    }
    drops.poll(capture, sensor, true);
    None
}

/// Sleeps until `fd` is readable or `limit` has passed. An error (a signal) only ends the
/// sleep early: the next read reports a broken capture.
fn wait_readable(fd: &OwnedFd, limit: Duration) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = Timespec {
        tv_sec: i64::try_from(limit.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(limit.subsec_nanos()),
    };
    let _ = poll(&mut [PollFd::new(fd, PollFlags::IN)], Some(&timeout));
}

/// Gives the workers (and the sharder) what changed outside the packets: a finished
/// reload's network and inventory, and new session-feed lines.
fn hand_on(queues: &[SyncSender<Work>], sensor: &Sensor, shard: &mut Sharder, feeds: &mut Feeds) {
    if let Some(reloaded) = sensor.take_reloaded() {
        shard.network = reloaded.network.clone();
        let network = Arc::new(reloaded.network);
        broadcast(queues, || Work::Network(Arc::clone(&network)));
        if let Some(inv) = reloaded.inventory {
            broadcast(queues, || Work::Inventory(Arc::clone(&inv)));
        }
    }
    feeds.poll(queues);
}

/// How often the session feed is looked at for new lines (before a packet is dispatched:
/// feed lines matter only for the packets after them).
const FEEDS_EVERY: Duration = Duration::from_secs(1);

/// The session feed, followed as the concentrator appends to it. New lines go to every
/// worker, since each has its own view of identity.
pub struct Feeds {
    sessions: Option<(PathBuf, u64)>,
}

impl Feeds {
    /// Lines already in the feed at start were read with the rest of the context.
    pub fn new(sessions: Option<PathBuf>) -> Feeds {
        let sessions = sessions.map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        });
        Feeds { sessions }
    }

    fn poll(&mut self, queues: &[SyncSender<Work>]) {
        if let Some((path, read)) = &mut self.sessions
            && let Some(lines) = new_lines(path, read)
        {
            let lines = Arc::new(lines);
            broadcast(queues, || Work::Sessions(Arc::clone(&lines)));
        }
    }
}

/// Control messages are rare and must not be lost: they wait for room in the queues.
fn broadcast(queues: &[SyncSender<Work>], work: impl Fn() -> Work) {
    for q in queues {
        let _ = q.send(work());
    }
}

/// The complete lines appended to `path` after byte `read`; a file that got shorter was
/// rotated or truncated and is read from its start.
fn new_lines(path: &std::path::Path, read: &mut u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len < *read {
        *read = 0;
    }
    if len == *read {
        return None;
    }
    file.seek(SeekFrom::Start(*read)).ok()?;
    let mut buf = Vec::new();
    file.take(len - *read).read_to_end(&mut buf).ok()?;
    let end = buf.iter().rposition(|&b| b == b'\n')? + 1;
    *read += end as u64;
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// libpcap's drop counters are 32 bits and wrap; this keeps 64-bit totals and logs growth.
#[derive(Default)]
struct DropCounter {
    last: Option<pcap::Stat>,
    /// The totals when growth was last logged, and when.
    logged: (u64, u64),
    logged_at: Option<Instant>,
}

impl DropCounter {
    /// Adds what libpcap counted since the last poll to the sensor's totals; logs the
    /// growth when there is some and the last such line is old enough, or when `last`.
    fn poll(&mut self, capture: &mut Capture<pcap::Active>, sensor: &Sensor, last: bool) {
        let Ok(now) = capture.stats() else { return };
        let before = self.last.unwrap_or(pcap::Stat {
            received: 0,
            dropped: 0,
            if_dropped: 0,
        });
        self.last = Some(now);
        let kernel = u64::from(now.dropped.wrapping_sub(before.dropped));
        let interface = u64::from(now.if_dropped.wrapping_sub(before.if_dropped));
        let totals = (
            sensor.drops_kernel.fetch_add(kernel, Ordering::Relaxed) + kernel,
            sensor
                .drops_interface
                .fetch_add(interface, Ordering::Relaxed)
                + interface,
        );
        let due = last
            || self
                .logged_at
                .is_none_or(|t| t.elapsed() >= DROPS_LOG_EVERY);
        if totals != self.logged && due {
            eprintln!(
                "farmwatch: warning: packets were dropped kernel={} interface={} total_kernel={} total_interface={}",
                totals.0 - self.logged.0,
                totals.1 - self.logged.1,
                totals.0,
                totals.1
            );
            self.logged = totals;
            self.logged_at = Some(Instant::now());
        }
    }
}

/// Packet time from the pcap header (nanosecond precision was requested, so the second
/// field holds nanoseconds).
fn timestamp(secs: i64, nanos: i64) -> Timestamp {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nanos = u64::try_from(nanos).unwrap_or(0);
    Timestamp(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Picks each packet's worker so both directions of a flow meet in one flow table, and so
/// every flow between an inside host and the outside lands with that host's other flows:
/// a flow with one inside end is hashed by that address alone (per-host detectors such as
/// stepping stones and remote-desktop sessions see all of the host's outside traffic);
/// other flows by a symmetric hash of the address pair. Ports are left out on purpose: a
/// fragment carries none, and hashing it differently from its flow's other packets would
/// split the flow between two workers.
struct Sharder {
    /// Used only for the addresses; without a fragment pool it holds nothing back.
    decoder: Decoder,
    workers: usize,
    network: crate::config::NetworkConfig,
}

impl Sharder {
    fn new(workers: usize, network: crate::config::NetworkConfig) -> Sharder {
        Sharder {
            decoder: Decoder::new(0, Duration::ZERO),
            workers,
            network,
        }
    }

    fn worker(&mut self, pkt: Packet<'_>) -> usize {
        if self.workers <= 1 {
            return 0;
        }
        let pair = match self.decoder.decode(pkt) {
            Ok(Some(d)) => Some((d.src, d.dst)),
            // Fragments (and frames the decoder rejects): the outer IP header's addresses,
            // which are the innermost ones unless the fragment travels in a tunnel.
            Ok(None) | Err(_) => outer_addresses(pkt),
        };
        pair.map_or(0, |(a, b)| {
            let h = match (self.network.is_inside(a), self.network.is_inside(b)) {
                (true, false) => symmetric_hash(a, a),
                (false, true) => symmetric_hash(b, b),
                _ => symmetric_hash(a, b),
            };
            (h % self.workers as u64) as usize
        })
    }
}

fn outer_addresses(pkt: Packet<'_>) -> Option<(IpAddr, IpAddr)> {
    let sliced = match pkt.link {
        LinkType::ETHERNET => LaxSlicedPacket::from_ethernet(pkt.data).ok()?,
        LinkType::RAW | LinkType::IPV4 | LinkType::IPV6 => {
            LaxSlicedPacket::from_ip(pkt.data).ok()?
        }
        _ => return None,
    };
    match sliced.net? {
        LaxNetSlice::Ipv4(ip) => {
            let h = ip.header();
            Some((h.source_addr().into(), h.destination_addr().into()))
        }
        LaxNetSlice::Ipv6(ip) => {
            let h = ip.header();
            Some((h.source_addr().into(), h.destination_addr().into()))
        }
        _ => None,
    }
}

/// The same for (a, b) and (b, a).
fn symmetric_hash(a: IpAddr, b: IpAddr) -> u64 {
    let mut h = DefaultHasher::new();
    (a.min(b), a.max(b)).hash(&mut h);
    h.finish()
}

/// A worker: runs its pipeline over its queue until the capture ends, then ends every flow.
/// Returns the sinks' write failures.
fn work(index: usize, mut pipeline: Pipeline, rx: Receiver<Work>, sensor: &Sensor) -> Vec<String> {
    let mut next_tick = Instant::now() + WORKER_TICK;
    loop {
        match rx.recv_timeout(WORKER_TICK) {
            Ok(Work::Packet(pkt)) => pipeline.packet(pkt.view()),
            Ok(Work::Clock(ts)) => pipeline.advance(ts),
            Ok(Work::Inventory(inv)) => pipeline.reload_inventory(inv),
            Ok(Work::Network(network)) => pipeline.set_network((*network).clone()),
            Ok(Work::Sessions(lines)) => pipeline.load_sessions(lines.as_bytes()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + WORKER_TICK;
            pipeline.flush_sinks();
            pipeline.sync_stats();
            report(sensor, index, &pipeline.stats);
        }
    }
    pipeline.finish();
    report(sensor, index, &pipeline.stats);
    pipeline.sink_failures()
}

fn report(sensor: &Sensor, index: usize, stats: &Stats) {
    let mut all = sensor
        .worker_stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(slot) = all.get_mut(index) {
        slot.clone_from(stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn frame(link: LinkType, data: Vec<u8>) -> OwnedPacket {
        OwnedPacket {
            ts: Timestamp::from_secs(1),
            link,
            orig_len: data.len() as u32,
            data,
        }
    }

    /// Ethernet + IPv4 + UDP, synthesized with etherparse (RFC 791, RFC 768 headers).
    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> OwnedPacket {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut out, b"payload")
            .unwrap();
        frame(LinkType::ETHERNET, out)
    }

    /// The first fragment of a UDP datagram from 10.0.0.1 to 10.0.0.2, written out by hand:
    /// RFC 791 §3.1, flags = MF (0x2000), fragment offset 0, 8 bytes of payload.
    const FIRST_FRAGMENT: [u8; 42] = [
        0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x1c, 0x12, 0x34, 0x20, 0x00, 0x40, 0x11, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x14, 0xe9, 0x00, 0x35, 0x00, 0x30, 0x00, 0x00,
    ];

    #[test]
    fn both_directions_and_fragments_of_a_flow_meet_on_one_worker() {
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        let fragment = frame(LinkType::ETHERNET, FIRST_FRAGMENT.to_vec());
        for workers in 2..=9 {
            let mut sharder = Sharder::new(workers, crate::config::NetworkConfig::default());
            let there = sharder.worker(udp(a, b, 5353, 53).view());
            assert_eq!(sharder.worker(udp(b, a, 53, 5353).view()), there);
            assert_eq!(sharder.worker(fragment.view()), there, "workers={workers}");
            assert!(there < workers);
        }
    }

    #[test]
    fn an_inside_hosts_outside_flows_share_a_worker() {
        let mut sharder = Sharder::new(8, crate::config::NetworkConfig::default());
        let host = [10, 8, 0, 12];
        let there = sharder.worker(udp(host, [198, 51, 100, 1], 1000, 53).view());
        for peer in 2..40u8 {
            assert_eq!(
                sharder.worker(udp([203, 0, 113, peer], host, 3389, 50000).view()),
                there
            );
            assert_eq!(
                sharder.worker(udp(host, [192, 0, 2, peer], 50001, 22).view()),
                there
            );
        }
    }

    #[test]
    fn address_pairs_spread_over_workers() {
        let mut sharder = Sharder::new(4, crate::config::NetworkConfig::default());
        let used: std::collections::BTreeSet<usize> = (1..=64)
            .map(|host| sharder.worker(udp([10, 0, 0, host], [10, 9, 9, 9], 1000, 53).view()))
            .collect();
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn frames_without_addresses_go_to_the_first_worker() {
        let mut sharder = Sharder::new(4, crate::config::NetworkConfig::default());
        assert_eq!(
            sharder.worker(frame(LinkType::ETHERNET, vec![0; 6]).view()),
            0
        );
        assert_eq!(
            sharder.worker(frame(LinkType(147), vec![0x45; 40]).view()),
            0
        );
    }

    #[test]
    fn capture_timestamps_are_nanoseconds_and_never_negative() {
        assert_eq!(
            timestamp(1_700_000_000, 123_456_789).0,
            1_700_000_000_123_456_789
        );
        assert_eq!(timestamp(-5, 7).0, 7);
        assert_eq!(timestamp(i64::MAX, 0).0, u64::MAX);
    }

    #[test]
    fn merged_stats_sum_counters_and_keep_the_newest_packet_time() {
        let mut one = Stats {
            packets: 3,
            last_packet_ts: Some(10.0),
            ..Stats::default()
        };
        one.events
            .insert(("alert", "laptop_farm_suspected", "high"), 1);
        one.account_risk.insert("jdoe".to_string(), 0.4);
        let mut two = Stats {
            packets: 4,
            last_packet_ts: Some(12.5),
            ..Stats::default()
        };
        two.events
            .insert(("alert", "laptop_farm_suspected", "high"), 2);
        two.account_risk.insert("jdoe".to_string(), 0.7);
        two.sink_errors.insert("events", 1);
        let mut total = Stats::default();
        merge(&mut total, &one);
        merge(&mut total, &two);
        assert_eq!(total.packets, 7);
        assert_eq!(total.last_packet_ts, Some(12.5));
        assert_eq!(total.events[&("alert", "laptop_farm_suspected", "high")], 3);
        assert_eq!(total.account_risk["jdoe"], 0.7);
        assert_eq!(total.sink_errors["events"], 1);
    }

    /// Two workers' sinks over one file: every line arrives whole; after the file is moved
    /// away, a reopen creates it anew and later lines go there.
    #[test]
    fn shared_file_keeps_lines_whole_and_reopens() {
        let dir = std::env::temp_dir().join(format!("live-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let shared = SharedFile::open(Target::File(path.clone())).unwrap();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let mut sink = shared.sink();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        sink.write(
                            &serde_json::json!({"worker": w, "i": i, "pad": "x".repeat(i % 97)}),
                        );
                    }
                    sink.flush().unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10_000);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                v["pad"].as_str().unwrap().len(),
                v["i"].as_u64().unwrap() as usize % 97
            );
        }

        std::fs::rename(&path, dir.join("events.jsonl.1")).unwrap();
        shared.reopen().unwrap();
        let mut sink = shared.sink();
        sink.write(&serde_json::json!({"after": "rotation"}));
        sink.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"after\":\"rotation\"}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A worker whose shard went quiet still ends its flows when the capture's clock passes
    /// their timeout (UDP: 60 s by default), before any shutdown.
    #[test]
    fn the_capture_clock_expires_a_quiet_workers_flows() {
        let path = std::env::temp_dir().join(format!("live-clock-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let shared = SharedFile::open(Target::File(path.clone())).unwrap();
        let config = Config::default();
        let mut pipeline = Pipeline::new(
            &config,
            Sinks {
                events: None,
                flows: Some(shared.sink()),
            },
            Context::load(&config, None, None).unwrap(),
        );
        pipeline.packet(udp([10, 0, 0, 1], [10, 0, 0, 2], 5353, 53).view());
        pipeline.advance(Timestamp::from_secs(30));
        pipeline.flush_sinks();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        pipeline.advance(Timestamp::from_secs(120));
        pipeline.flush_sinks();
        let text = std::fs::read_to_string(&path).unwrap();
        let record: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(record["dst_port"], 53);
        assert_eq!(record["interim"], false);
        std::fs::remove_file(&path).unwrap();
    }
}
