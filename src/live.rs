//! `farmwatch live`: libpcap capture on one thread feeding the [`Engine`] (the flow stage on
//! worker threads, the account stage on one more), and the control plane
//! ([`crate::control`]) on a tokio runtime of its own.
//!
//! The capture thread copies frames out of libpcap into the engine, which shares them out to
//! the flow workers exactly as a replay does, so live output equals a replay of the captured
//! packets. Packet time comes from the capture timestamps, never from the wall clock; the
//! wall clock only says when quiet output is pushed out. Outputs go through [`SharedFile`],
//! so SIGHUP can swap the file under the writer.
//!
//! Nothing slow runs on the capture thread: libpcap's TPACKET_V3 ring holds a burst while a
//! worker catches up (the capture waits for room in a worker's queue rather than drop), and
//! a SIGHUP's files are parsed on a thread of their own and handed over whole.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pcap::{Capture, Device, Precision};

use crate::account_stage::{Context, Sinks};
use crate::accounts::Inventory;
use crate::config::{Config, NetworkConfig};
use crate::engine::{Board, Engine};
use crate::flow_stage::Reload;
use crate::health::{Health, Status};
use crate::metrics::{Metrics, Stats};
use crate::publish::{self, Publish};
use crate::replay::Failure;
use crate::sink::{self, JsonLines, Target};
use crate::source::{LinkType, Packet};
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
/// How often libpcap's drop counters are read: on a timer, not on packet arrival, so the
/// metrics show a burst's final drop count once the link is quiet.
const CAPTURE_STATS_EVERY: Duration = Duration::from_millis(250);
/// Growing drop counts are logged at most this often.
const DROPS_LOG_EVERY: Duration = Duration::from_secs(2);
/// How often, in wall time, the capture hands the engine what it has while packets trickle
/// in, so output stays timely on a quiet link.
const IDLE_EVERY: Duration = Duration::from_millis(100);
/// Sink write failures are logged at most this often.
const SINK_LOG_EVERY: Duration = Duration::from_secs(60);

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
    /// `--publish`, started.
    pub publish: Option<Publish>,
}

/// State shared by the capture thread, the engine and the control plane.
pub struct Sensor {
    pub metrics: Metrics,
    capturing: AtomicBool,
    stop: AtomicBool,
    /// The stages' latest counters.
    board: Arc<Board>,
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
    /// What `/healthz` says, from the counters as published.
    health: Mutex<Health>,
}

/// What a SIGHUP read: applied whole, or (when any part is invalid) not at all.
struct Reloaded {
    network: NetworkConfig,
    inventory: Option<Arc<Inventory>>,
}

impl Sensor {
    pub(crate) fn new(
        board: Arc<Board>,
        outputs: Vec<SharedFile>,
        config_path: Option<PathBuf>,
        accounts_path: Option<PathBuf>,
    ) -> Sensor {
        Sensor {
            metrics: Metrics::new(),
            capturing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            board,
            drops_kernel: AtomicU64::new(0),
            drops_interface: AtomicU64::new(0),
            pending: Mutex::new(None),
            reloaded: AtomicBool::new(false),
            reloading: Mutex::new(()),
            outputs,
            config_path,
            accounts_path,
            sink_log: Mutex::new((0, None)),
            health: Mutex::new(Health::default()),
        }
    }

    /// True while the capture loop runs (`/healthz`).
    pub fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// `/healthz`: capturing, writing its outputs, and seeing every packet?
    pub fn health(&self) -> Status {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.status(Instant::now(), self.is_capturing())
    }

    pub(crate) fn set_capturing(&self, on: bool) {
        self.capturing.store(on, Ordering::Relaxed);
    }

    /// Asks the capture loop to end (SIGTERM, SIGINT); it wakes within [`WAKE_EVERY`].
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Puts the stages' counters with the capture's drop counts into the metrics, and logs
    /// sink failures (once a minute at most: a full disk must not flood the log).
    pub fn publish(&self) {
        self.publish_stats(self.board.snapshot());
    }

    pub(crate) fn publish_stats(&self, mut total: Stats) {
        total.capture_drops_kernel = self.drops_kernel.load(Ordering::Relaxed);
        total.capture_drops_interface = self.drops_interface.load(Ordering::Relaxed);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics.publish(&total, wall);

        let errors: u64 = total.sink_errors.values().sum();
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(
                Instant::now(),
                errors,
                total.capture_drops_kernel
                    + total.capture_drops_interface
                    + total.capture_drops_queue,
            );
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

/// One output file that [`JsonLines`] writers share. Each buffers whole lines and hands them
/// over in a single `write`, under the lock, so lines never interleave; SIGHUP swaps the file
/// underneath.
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
    let context = Context::load(
        &args.config,
        args.accounts.as_deref(),
        args.sessions.as_deref(),
    )
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

    let sinks = Sinks {
        events: Some(events.sink()),
        flows: flows.as_ref().map(SharedFile::sink),
        publish: args.publish,
    };
    let mut engine = Engine::new(&args.config, context, sinks, None, args.workers);
    let sensor = Arc::new(Sensor::new(
        engine.board(),
        [Some(events.clone()), flows.clone()]
            .into_iter()
            .flatten()
            .collect(),
        args.config_path.clone(),
        args.accounts.clone(),
    ));
    let control = crate::control::start(listener, Arc::clone(&sensor))
        .map_err(|e| Failure::Runtime(format!("cannot start the control plane: {e}")))?;

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
    let capture_error = capture_loop(&mut capture, link, &mut engine, &sensor, &mut feeds);
    sensor.set_capturing(false);

    let mut done = engine.finish();
    let mut failures: Vec<String> = capture_error.into_iter().collect();
    // Unlike a replay, a sensor that published what it could did its job: the report says
    // what was lost, the exit status does not change.
    if let Some(p) = done.account.publish.take() {
        let (lines, report) = p.finish(publish::FINISH_WAIT);
        for line in lines {
            eprintln!("farmwatch: {line}");
        }
        done.stats.publish = Some(report.stats);
    }
    failures.extend(done.account.sink_failures());
    for out in [Some(&events), flows.as_ref()].into_iter().flatten() {
        let mut out = out.clone();
        if let Err(e) = out.flush() {
            failures.push(format!("{:?}: {e}", out.target));
        }
    }
    sensor.publish_stats(done.stats.clone());
    control.shutdown();
    eprintln!(
        "farmwatch: capture stopped packets={} dropped_kernel={} dropped_interface={}",
        done.stats.packets,
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
    engine: &mut Engine,
    sensor: &Sensor,
    feeds: &mut Feeds,
) -> Option<String> {
    // A second descriptor of the capture's socket to sleep on while libpcap holds the first.
    let ring = match capture.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return Some(format!("capture failed: {e}")),
    };
    let mut drops = DropCounter::default();
    let mut next_stats = Instant::now() + CAPTURE_STATS_EVERY;
    let mut next_feeds = Instant::now();
    let mut next_idle = Instant::now() + IDLE_EVERY;
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
                // Feed lines and a reload matter only for the packets after them.
                if Instant::now() >= next_feeds || sensor.reloaded.load(Ordering::Relaxed) {
                    next_feeds = Instant::now() + FEEDS_EVERY;
                    hand_on(engine, sensor, feeds);
                }
                // A full worker queue makes the capture wait: the backlog stays in the
                // kernel ring.
                engine.packet(Packet {
                    ts,
                    link,
                    orig_len: p.header.len,
                    data: p.data,
                    shared: None,
                });
            }
            // The ring is empty: sleep until the kernel hands over a block, or a while.
            Err(pcap::Error::TimeoutExpired) => {
                wait_readable(&ring, WAKE_EVERY);
                if sensor.reloaded.load(Ordering::Relaxed) {
                    hand_on(engine, sensor, feeds);
                }
            }
            Err(pcap::Error::NoMorePackets) => {}
            Err(e) => return Some(format!("capture failed: {e}")),
        }
        if Instant::now() >= next_idle {
            next_idle = Instant::now() + IDLE_EVERY;
            engine.idle();
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

/// Gives the stages what changed outside the packets, at this moment of packet time: a
/// finished reload's network and inventory, and new session-feed lines.
fn hand_on(engine: &mut Engine, sensor: &Sensor, feeds: &mut Feeds) {
    if let Some(reloaded) = sensor.take_reloaded() {
        engine.reload(Reload::Network(reloaded.network));
        if let Some(inv) = reloaded.inventory {
            engine.reload(Reload::Inventory(inv));
        }
    }
    feeds.poll(engine);
}

/// How often the session feed is looked at for new lines (before a packet is dispatched:
/// feed lines matter only for the packets after them).
const FEEDS_EVERY: Duration = Duration::from_secs(1);

/// The session feed, followed as the concentrator appends to it. New lines enter the packet
/// stream at the moment they were read.
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

    fn poll(&mut self, engine: &mut Engine) {
        if let Some((path, read)) = &mut self.sessions
            && let Some(lines) = new_lines(path, read)
        {
            engine.reload(Reload::Sessions(Arc::new(lines)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_timestamps_are_nanoseconds_and_never_negative() {
        assert_eq!(
            timestamp(1_700_000_000, 123_456_789).0,
            1_700_000_000_123_456_789
        );
        assert_eq!(timestamp(-5, 7).0, 7);
        assert_eq!(timestamp(i64::MAX, 0).0, u64::MAX);
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
}
