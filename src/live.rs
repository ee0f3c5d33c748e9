//! `farmwatch live`: libpcap capture on one thread, the pipeline on worker threads, and the
//! control plane ([`crate::control`]) on a tokio runtime of its own.
//!
//! The capture thread only copies frames out of libpcap and picks a worker by a symmetric
//! hash of the innermost address pair, so every packet of a conversation (both directions,
//! and its IP fragments) reaches the same worker's flow table. Workers own a [`Pipeline`]
//! each; their output goes through [`SharedFile`], so several workers append whole lines to
//! one file. Packet time comes from the capture timestamps, never from the wall clock.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etherparse::{LaxNetSlice, LaxSlicedPacket};
use pcap::{Capture, Device, Precision};

use crate::accounts::Inventory;
use crate::config::Config;
use crate::decode::Decoder;
use crate::metrics::{Metrics, Stats};
use crate::pipeline::{Context, Pipeline, Sinks};
use crate::replay::Failure;
use crate::sink::{self, JsonLines, Target};
use crate::source::{LinkType, OwnedPacket, Packet};
use crate::timestamp::Timestamp;

/// How long libpcap waits for packets before the capture loop looks at the stop flag.
const READ_TIMEOUT_MS: i32 = 100;
/// Packets queued per worker; beyond it the capture drops rather than stall libpcap.
const QUEUE_PACKETS: usize = 8192;
/// How often workers flush output and hand their counters to the metrics.
const WORKER_TICK: Duration = Duration::from_secs(1);
/// How often libpcap's drop counters are read.
const CAPTURE_STATS_EVERY: Duration = Duration::from_secs(2);
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
    Network(Arc<crate::config::NetworkConfig>),
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
    /// Wakes a capture blocked in libpcap: its read timeout does not fire on an idle link.
    breaker: pcap::BreakLoop,
    /// Each worker's latest counters, summed into the metrics.
    worker_stats: Mutex<Vec<Stats>>,
    drops_kernel: AtomicU64,
    drops_interface: AtomicU64,
    /// SIGHUP asked for the account inventory to be read again.
    inventory_reload: AtomicBool,
    /// A re-read `[network]` waiting for the capture thread to hand it on.
    pending_network: Mutex<Option<crate::config::NetworkConfig>>,
    /// Packets dropped because a worker's queue was full.
    drops_queue: AtomicU64,
    outputs: Vec<SharedFile>,
    config_path: Option<PathBuf>,
    /// Sink errors last logged, and when.
    sink_log: Mutex<(u64, Option<Instant>)>,
}

impl Sensor {
    pub(crate) fn new(
        breaker: pcap::BreakLoop,
        workers: usize,
        outputs: Vec<SharedFile>,
        config_path: Option<PathBuf>,
    ) -> Sensor {
        Sensor {
            metrics: Metrics::new(),
            capturing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            breaker,
            worker_stats: Mutex::new(vec![Stats::default(); workers]),
            drops_kernel: AtomicU64::new(0),
            drops_interface: AtomicU64::new(0),
            inventory_reload: AtomicBool::new(false),
            pending_network: Mutex::new(None),
            drops_queue: AtomicU64::new(0),
            outputs,
            config_path,
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

    /// Asks the capture loop to end (SIGTERM, SIGINT).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.breaker.breakloop();
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
        total.capture_drops_queue = self.drops_queue.load(Ordering::Relaxed);
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
    /// and re-reads the config file, keeping the old one when the new one is invalid.
    pub fn reload(&self) {
        // The capture thread reads the inventory and hands it to every worker before the
        // next packet it dispatches.
        self.inventory_reload.store(true, Ordering::Relaxed);
        let mut reopened = 0;
        for out in &self.outputs {
            match out.reopen() {
                Ok(()) => reopened += 1,
                Err(e) => eprintln!("farmwatch: error: cannot reopen output: {e}"),
            }
        }
        eprintln!("farmwatch: SIGHUP: reopened outputs count={reopened}");
        // `[network]` applies at once (the capture thread hands it on); the other sections
        // shape state that lives across flows and take effect at the next start.
        match Config::load(self.config_path.as_deref()) {
            Ok(config) => {
                *self
                    .pending_network
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(config.network);
                self.inventory_reload.store(true, Ordering::Relaxed);
                eprintln!(
                    "farmwatch: SIGHUP: config re-read; [network] applied, [sensor] [geoip] [flows] [detect] apply at the next start"
                );
            }
            Err(e) => eprintln!("farmwatch: new config rejected, keeping the old one: {e}"),
        }
    }
}

/// Adds `b`'s counters to `a` (workers' stats summed for the metrics).
fn merge(a: &mut Stats, b: &Stats) {
    a.packets += b.packets;
    a.bytes += b.bytes;
    a.capture_drops_kernel += b.capture_drops_kernel;
    a.capture_drops_interface += b.capture_drops_interface;
    a.flows_active += b.flows_active;
    a.flows_total += b.flows_total;
    a.truncated_records += b.truncated_records;
    for (k, v) in &b.decode_errors {
        *a.decode_errors.entry(k).or_default() += v;
    }
    for (k, v) in &b.flows_evicted {
        *a.flows_evicted.entry(k).or_default() += v;
    }
    for (k, v) in &b.flows_by_app {
        *a.flows_by_app.entry(k).or_default() += v;
    }
    for (k, v) in &b.events {
        *a.events.entry(*k).or_default() += v;
    }
    for (k, v) in &b.remote_desktop_active {
        *a.remote_desktop_active.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &b.sink_errors {
        *a.sink_errors.entry(k).or_default() += v;
    }
    // An account's risk is scored where its flows are; the highest view wins.
    for (k, v) in &b.account_risk {
        let risk = a.account_risk.entry(k.clone()).or_insert(*v);
        *risk = risk.max(*v);
    }
    a.last_packet_ts = match (a.last_packet_ts, b.last_packet_ts) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
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
        capture.breakloop_handle(),
        args.workers,
        [Some(events.clone()), flows.clone()]
            .into_iter()
            .flatten()
            .collect(),
        args.config_path.clone(),
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
    let mut feeds = Feeds::new(args.accounts.clone(), args.sessions.clone());
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
    let queue = sensor.drops_queue.load(Ordering::Relaxed);
    eprintln!(
        "farmwatch: capture stopped packets={} dropped_kernel={} dropped_interface={} dropped_queue={queue}",
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
        .immediate_mode(true)
        .buffer_size(buffer)
        .timeout(READ_TIMEOUT_MS)
        .precision(Precision::Nano)
        .open()
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
    network: &crate::config::NetworkConfig,
    feeds: &mut Feeds,
) -> Option<String> {
    let mut shard = Sharder::new(queues.len(), network.clone());
    let mut drops = DropCounter::default();
    let mut next_stats = Instant::now() + CAPTURE_STATS_EVERY;
    let mut next_feeds = Instant::now();
    let mut clock_told = Timestamp::ZERO;
    while !sensor.stop.load(Ordering::Relaxed) {
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
                if Instant::now() >= next_feeds || sensor.inventory_reload.load(Ordering::Relaxed) {
                    next_feeds = Instant::now() + FEEDS_EVERY;
                    if let Some(network) = sensor
                        .pending_network
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take()
                    {
                        shard.network = network.clone();
                        let network = Arc::new(network);
                        broadcast(queues, || Work::Network(Arc::clone(&network)));
                    }
                    feeds.poll(queues, sensor);
                }
                let queue = shard.worker(pkt);
                match queues
                    .get(queue)
                    .map(|q| q.try_send(Work::Packet(pkt.into())))
                {
                    Some(Ok(())) => {}
                    Some(Err(TrySendError::Full(_))) | None => {
                        sensor.drops_queue.fetch_add(1, Ordering::Relaxed);
                    }
                    // A worker ended early (it panicked); its failure is reported at join.
                    Some(Err(TrySendError::Disconnected(_))) => return None,
                }
                if queues.len() > 1 && now.since(clock_told) >= CLOCK_EVERY {
                    clock_told = now;
                    // A full queue skips this tick: that worker is busy with newer packets.
                    for q in queues {
                        let _ = q.try_send(Work::Clock(now));
                    }
                }
            }
            Err(pcap::Error::TimeoutExpired) => {}
            // What a live capture returns after `pcap_breakloop`.
            Err(pcap::Error::NoMorePackets) => {}
            Err(e) => return Some(format!("capture failed: {e}")),
        }
        if Instant::now() >= next_stats {
            next_stats = Instant::now() + CAPTURE_STATS_EVERY;
            drops.poll(capture, sensor);
        }
    }
    drops.poll(capture, sensor);
    None
}

/// How often the session feed is looked at for new lines (before a packet is dispatched:
/// feed lines matter only for the packets after them).
const FEEDS_EVERY: Duration = Duration::from_secs(1);

/// The identity inputs that change while the sensor runs: the inventory (re-read on
/// SIGHUP) and the session feed (followed as the concentrator appends to it). Both go to
/// every worker, since each has its own view of identity.
pub struct Feeds {
    accounts: Option<PathBuf>,
    sessions: Option<(PathBuf, u64)>,
}

impl Feeds {
    /// `sessions_read`: bytes of the feed already read at start.
    pub fn new(accounts: Option<PathBuf>, sessions: Option<PathBuf>) -> Feeds {
        let sessions = sessions.map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        });
        Feeds { accounts, sessions }
    }

    fn poll(&mut self, queues: &[SyncSender<Work>], sensor: &Sensor) {
        if sensor.inventory_reload.swap(false, Ordering::Relaxed)
            && let Some(path) = &self.accounts
        {
            match Inventory::load(path) {
                Ok(inv) => {
                    let inv = Arc::new(inv);
                    eprintln!(
                        "farmwatch: SIGHUP: inventory reloaded accounts={}",
                        inv.accounts.len()
                    );
                    broadcast(queues, || Work::Inventory(Arc::clone(&inv)));
                }
                Err(problems) => eprintln!(
                    "farmwatch: new inventory rejected, keeping the old one: {}",
                    problems.first().map(|p| p.to_string()).unwrap_or_default()
                ),
            }
        }
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
    queue_logged: u64,
}

impl DropCounter {
    fn poll(&mut self, capture: &mut Capture<pcap::Active>, sensor: &Sensor) {
        let Ok(now) = capture.stats() else { return };
        let before = self.last.unwrap_or(pcap::Stat {
            received: 0,
            dropped: 0,
            if_dropped: 0,
        });
        self.last = Some(now);
        let kernel = u64::from(now.dropped.wrapping_sub(before.dropped));
        let interface = u64::from(now.if_dropped.wrapping_sub(before.if_dropped));
        let kernel_total = sensor.drops_kernel.fetch_add(kernel, Ordering::Relaxed) + kernel;
        let interface_total = sensor
            .drops_interface
            .fetch_add(interface, Ordering::Relaxed)
            + interface;
        let queue_total = sensor.drops_queue.load(Ordering::Relaxed);
        let queue = queue_total - self.queue_logged.min(queue_total);
        self.queue_logged = queue_total;
        if kernel + interface + queue > 0 {
            eprintln!(
                "farmwatch: warning: packets were dropped kernel={kernel} interface={interface} queue={queue} total_kernel={kernel_total} total_interface={interface_total} total_queue={queue_total}"
            );
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
