//! The `farmwatch` command line (DESIGN §2). Exit codes: 0 ok, 1 runtime failure,
//! 2 usage or configuration error — always with one clear line on stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};

use farmwatch::config::Config;
use farmwatch::correlate::{self, CorrelateArgs};
use farmwatch::live::{self, LiveArgs};
use farmwatch::publish::Publish;
use farmwatch::replay::{self, Failure, ReplayArgs};
use farmwatch::sink::{self, Target};

/// mimalloc: a sensor allocates and frees small objects per flow all day (records, protocol
/// details, reassembly buffers); glibc's allocator spent about a tenth of replay time on
/// them and returned pages to the kernel only to fault them back in. Built without
/// transparent huge pages (`no_thp` in Cargo.toml): a 2 MiB page is zeroed and resident
/// whole for the few flows that touch it (open flows: 506 -> 479 bytes each; office mix
/// peak RSS 69 -> 54 MB, CPU unchanged).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Whether standard output was closed when the process started (`farmwatch … >&-`). Rust's
/// runtime opens /dev/null in its place before `main`, which would turn every event into a
/// silent loss; a constructor sees the descriptor first.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

#[ctor::ctor(unsafe)]
fn note_closed_stdout() {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; it fails with EBADF when
    // descriptor 1 is not open.
    let closed = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1;
    STDOUT_CLOSED.store(closed, Ordering::Relaxed);
}

#[derive(Parser)]
#[command(
    name = "farmwatch",
    version,
    about = "Finds laptop farms in network traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What the account stage knows before any traffic: the config, the inventory and the
/// session feed (`replay`, `live` and `correlate` alike).
#[derive(Args)]
struct Known {
    /// farmwatch.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Account inventory (accounts.toml).
    #[arg(long)]
    accounts: Option<PathBuf>,
    /// VPN session feed (JSON lines: ts, account, assigned_ip, public_ip, event).
    #[arg(long)]
    sessions: Option<PathBuf>,
}

impl Known {
    fn config(&self) -> Result<Config, Failure> {
        Config::load(self.config.as_deref()).map_err(|e| Failure::Usage(e.to_string()))
    }

    /// Every file read, for the outputs to stay clear of: these and the geo databases.
    fn inputs<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = &'a Path> {
        let geo = &config.geoip;
        [&self.config, &self.accounts, &self.sessions]
            .into_iter()
            .chain([&geo.country, &geo.asn, &geo.city, &geo.hosting_asns])
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// What `replay` and `live` read and write besides the packets. In `live`, the config and
/// the inventory are re-read on SIGHUP, the feed is followed as it grows, and the outputs
/// are appended to and reopened on SIGHUP.
#[derive(Args)]
struct Inputs {
    #[command(flatten)]
    known: Known,
    /// Where events go, as JSON lines ("-" = stdout).
    #[arg(long, default_value = "-")]
    events: String,
    /// Where flow records go, as JSON lines ("-" = stdout, when events go to a file).
    #[arg(long)]
    flows: Option<String>,
    /// Also publish observations, events and the packet clock to NATS JetStream, for
    /// `farmwatch correlate` (needs [sensor] name in --config).
    #[arg(long, value_name = "URL[,URL...]")]
    publish: Option<String>,
}

impl Inputs {
    fn config(&self) -> Result<Config, Failure> {
        self.known.config()
    }

    /// `--publish`, started: its servers replace `[publish] servers`.
    fn publish(&self, config: &Config) -> Result<Option<Publish>, Failure> {
        let Some(arg) = &self.publish else {
            return Ok(None);
        };
        let servers = farmwatch::jetstream::split_servers(arg);
        Publish::start(config, self.known.config.as_deref(), &servers)
            .map(Some)
            .map_err(Failure::Usage)
    }

    fn events(&self) -> Target {
        Target::parse(&self.events)
    }

    fn flows(&self) -> Option<Target> {
        self.flows.as_deref().map(Target::parse)
    }

    /// Refuses outputs that would lose records or destroy inputs, before any work: standard
    /// output asked for twice or closed, and outputs that are an input, a capture, or each
    /// other (`extra` are the command's other outputs, `captures` the files it replays).
    fn check_outputs(
        &self,
        config: &Config,
        extra: &[(&str, &Path)],
        captures: &[PathBuf],
    ) -> Result<(), Failure> {
        let events = self.events();
        let flows = self.flows();
        if events == Target::Stdout && flows == Some(Target::Stdout) {
            return Err(Failure::Usage(
                "--flows - needs --events FILE: standard output carries one stream, \
                 and events go there by default"
                    .to_string(),
            ));
        }
        if (events == Target::Stdout || flows == Some(Target::Stdout))
            && STDOUT_CLOSED.load(Ordering::Relaxed)
        {
            let flag = if events == Target::Stdout {
                "--events"
            } else {
                "--flows"
            };
            return Err(Failure::Usage(format!(
                "standard output is closed, and {flag} writes there"
            )));
        }
        let extra: Vec<(&str, Target)> = extra
            .iter()
            .map(|(flag, p)| (*flag, Target::File(p.to_path_buf())))
            .collect();
        let mut outputs = vec![("--events", &events)];
        outputs.extend(flows.as_ref().map(|f| ("--flows", f)));
        outputs.extend(extra.iter().map(|(flag, t)| (*flag, t)));
        let inputs: Vec<&Path> = (self.known.inputs(config))
            .chain(captures.iter().map(PathBuf::as_path))
            .collect();
        sink::check_outputs(&outputs, &inputs).map_err(Failure::Usage)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Replay pcap/pcapng files (any mix, .gz too) in timestamp order.
    Replay {
        /// Capture files; `-` reads one from standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        inputs: Inputs,
        /// Write Prometheus metrics (text format) here at the end.
        #[arg(long)]
        metrics_out: Option<PathBuf>,
        /// Write an HTML case file here (self-contained: findings, timelines, charts).
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
        /// Flow-stage worker threads (default: one per core, at most 64, the number of
        /// partitions); the output is the same for every number.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: Option<u16>,
    },
    /// Capture from a network interface until SIGTERM/SIGINT; serve /metrics and /healthz.
    Live {
        /// Interface to capture on.
        #[arg(long)]
        interface: String,
        /// BPF capture filter (tcpdump syntax).
        #[arg(long)]
        bpf: Option<String>,
        #[command(flatten)]
        inputs: Inputs,
        /// Address and port of the HTTP endpoint (/metrics, /healthz).
        #[arg(long, default_value = "127.0.0.1:9477")]
        listen: SocketAddr,
        /// Bytes captured per packet.
        #[arg(long, default_value_t = 65535, value_parser = clap::value_parser!(u32).range(64..=262_144))]
        snaplen: u32,
        /// Promiscuous mode (the default).
        #[arg(long, overrides_with = "no_promisc")]
        promisc: bool,
        /// Capture only traffic addressed to this host.
        #[arg(long, overrides_with = "promisc")]
        no_promisc: bool,
        /// Kernel capture ring, in MiB: holds a burst while the workers catch up.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
        buffer_mb: u32,
        /// Flow-stage worker threads (at most 64, the number of partitions); the output is
        /// the same for every number.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
    },
    /// Run the account stage over the observations every sensor publishes to NATS JetStream
    /// (replay/live --publish), checkpointing its state there; serve /metrics and /healthz.
    Correlate {
        /// NATS server URLs, comma-separated (replace `[correlate] servers`).
        #[arg(long, value_name = "URL[,URL...]", required = true)]
        nats: String,
        /// The same config, inventory and session feed as the sensors'.
        #[command(flatten)]
        known: Known,
        /// Where account-stage events go, as JSON lines, appended ("-" = stdout).
        #[arg(long, default_value = "-")]
        events: String,
        /// Address and port of the HTTP endpoint (/metrics, /healthz).
        #[arg(long, default_value = "127.0.0.1:9478")]
        listen: SocketAddr,
        /// Exit 0 once every sensor sent its end marker, all was applied and checkpointed,
        /// and nothing new arrived for this long (e.g. "2s").
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        until_idle: Option<std::time::Duration>,
    },
    /// Say what the configured geo databases know about addresses.
    Geoip {
        #[arg(required = true)]
        ips: Vec<std::net::IpAddr>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Convert a VPN's logs into the session feed for --sessions (JSON lines on stdout).
    Sessions {
        /// The logs' format.
        #[arg(long, value_enum)]
        from: farmwatch::convert::Format,
        /// Time zone (IANA name) of times the logs write in server-local time.
        #[arg(long, default_value = "UTC")]
        timezone: chrono_tz::Tz,
        /// Log files, oldest first (OpenVPN: successive status snapshots).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate the config and the account inventory, list every problem, then exit
    /// (0 clean, 2 problems).
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        accounts: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay {
            files,
            inputs,
            metrics_out,
            report,
            workers,
        } => inputs.config().and_then(|config| {
            let extra: Vec<(&str, &Path)> =
                [("--metrics-out", &metrics_out), ("--report", &report)]
                    .into_iter()
                    .filter_map(|(flag, p)| Some((flag, p.as_deref()?)))
                    .collect();
            inputs.check_outputs(&config, &extra, &files)?;
            let publish = inputs.publish(&config)?;
            replay::run(ReplayArgs {
                publish,
                files,
                config,
                events: inputs.events(),
                flows: inputs.flows(),
                accounts: inputs.known.accounts,
                sessions: inputs.known.sessions,
                metrics_out,
                report,
                workers: workers.map_or_else(farmwatch::engine::default_workers, usize::from),
            })
        }),
        Command::Live {
            interface,
            bpf,
            inputs,
            listen,
            snaplen,
            promisc: _,
            no_promisc,
            buffer_mb,
            workers,
        } => inputs.config().and_then(|loaded| {
            inputs.check_outputs(&loaded, &[], &[])?;
            let flows = match inputs.flows() {
                Some(Target::Stdout) => {
                    return Err(Failure::Usage(
                        "live writes flow records to a file only, not to --flows -".to_string(),
                    ));
                }
                Some(Target::File(p)) => Some(p),
                None => None,
            };
            let publish = inputs.publish(&loaded)?;
            live::run(LiveArgs {
                publish,
                interface,
                bpf,
                config: loaded,
                events: inputs.events(),
                config_path: inputs.known.config,
                accounts: inputs.known.accounts,
                sessions: inputs.known.sessions,
                flows,
                listen,
                snaplen,
                promisc: !no_promisc,
                buffer_mb,
                workers: usize::from(workers),
            })
        }),
        Command::Correlate {
            nats,
            known,
            events,
            listen,
            until_idle,
        } => known.config().and_then(|loaded| {
            // The events file is appended to: it must not be one of the inputs.
            let events = Target::parse(&events);
            let inputs: Vec<&Path> = known.inputs(&loaded).collect();
            sink::check_outputs(&[("--events", &events)], &inputs).map_err(Failure::Usage)?;
            correlate::run(CorrelateArgs {
                servers: farmwatch::jetstream::split_servers(&nats),
                config: loaded,
                accounts: known.accounts,
                sessions: known.sessions,
                events,
                listen,
                until_idle,
            })
        }),
        Command::Geoip { ips, config } => geoip(config, &ips),
        Command::Check { config, accounts } => check(config, accounts),
        Command::Sessions {
            from,
            timezone,
            files,
        } => farmwatch::convert::run(from, &files, timezone, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("farmwatch: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("farmwatch: {msg}");
            ExitCode::from(1)
        }
    }
}

fn geoip(config: Option<PathBuf>, ips: &[std::net::IpAddr]) -> Result<(), Failure> {
    let config = Config::load(config.as_deref()).map_err(|e| Failure::Usage(e.to_string()))?;
    let geo =
        farmwatch::geo::Geo::open(&config.geoip).map_err(|e| Failure::Usage(e.to_string()))?;
    farmwatch::geo::run_geoip(&geo, ips, &mut std::io::stdout().lock())
        .map_err(|e| Failure::Runtime(e.to_string()))
}

/// Every problem of the config and the inventory, one per line on stdout.
fn check(config: Option<PathBuf>, accounts: Option<PathBuf>) -> Result<(), Failure> {
    let mut ok = true;
    match Config::load(config.as_deref()) {
        Ok(config) => {
            if let Err(e) = farmwatch::geo::Geo::open(&config.geoip) {
                println!("{e}");
                ok = false;
            }
        }
        Err(e) => {
            let every = config.as_deref().map(Config::every_problem);
            for problem in every.filter(|p| !p.is_empty()).unwrap_or(vec![e]) {
                println!("{problem}");
            }
            ok = false;
        }
    }
    if let Some(path) = accounts {
        ok &= farmwatch::accounts::run_check(&path, &mut std::io::stdout().lock())
            .map_err(|e| Failure::Runtime(e.to_string()))?;
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::Usage(
            "check found problems (listed above)".to_string(),
        ))
    }
}
