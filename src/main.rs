//! The `farmwatch` command line (DESIGN §2). Exit codes: 0 ok, 1 runtime failure,
//! 2 usage or configuration error — always with one clear line on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use farmwatch::config::Config;
use farmwatch::live::{self, LiveArgs};
use farmwatch::replay::{self, Failure, ReplayArgs};
use farmwatch::sink::Target;

/// mimalloc: a sensor allocates and frees small objects per flow all day (records, protocol
/// details, reassembly buffers); glibc's allocator spent about a tenth of replay time on
/// them and returned pages to the kernel only to fault them back in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// What `replay` and `live` read and write besides the packets. In `live`, the config and
/// the inventory are re-read on SIGHUP, the feed is followed as it grows, and the outputs
/// are appended to and reopened on SIGHUP.
#[derive(Args)]
struct Inputs {
    /// farmwatch.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Account inventory (accounts.toml).
    #[arg(long)]
    accounts: Option<PathBuf>,
    /// VPN session feed (JSON lines: ts, account, assigned_ip, public_ip, event).
    #[arg(long)]
    sessions: Option<PathBuf>,
    /// Where events go, as JSON lines ("-" = stdout).
    #[arg(long, default_value = "-")]
    events: String,
    /// Where flow records go, as JSON lines.
    #[arg(long)]
    flows: Option<PathBuf>,
}

impl Inputs {
    fn config(&self) -> Result<Config, Failure> {
        Config::load(self.config.as_deref()).map_err(|e| Failure::Usage(e.to_string()))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Replay pcap/pcapng files (any mix, .gz too) in timestamp order.
    Replay {
        /// Capture files.
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
        /// Flow-stage worker threads (default: one per core); the output is the same for
        /// every number.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
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
        /// Kernel capture buffer, in MiB.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
        buffer_mb: u32,
        /// Worker threads; flows are sharded by address pair.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: u16,
    },
    /// Say what the configured geo databases know about addresses.
    Geoip {
        #[arg(required = true)]
        ips: Vec<std::net::IpAddr>,
        #[arg(long)]
        config: Option<PathBuf>,
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
            replay::run(ReplayArgs {
                files,
                config,
                events: Target::parse(&inputs.events),
                accounts: inputs.accounts,
                sessions: inputs.sessions,
                flows: inputs.flows,
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
            live::run(LiveArgs {
                interface,
                bpf,
                config: loaded,
                events: Target::parse(&inputs.events),
                config_path: inputs.config,
                accounts: inputs.accounts,
                sessions: inputs.sessions,
                flows: inputs.flows,
                listen,
                snaplen,
                promisc: !no_promisc,
                buffer_mb,
                workers: usize::from(workers),
            })
        }),
        Command::Geoip { ips, config } => geoip(config, &ips),
        Command::Check { config, accounts } => check(config, accounts),
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
            println!("{e}");
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
