//! The `farmwatch` command line (DESIGN §2). Exit codes: 0 ok, 1 runtime failure,
//! 2 usage or configuration error — always with one clear line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use farmwatch::config::Config;
use farmwatch::replay::{self, Failure, ReplayArgs};
use farmwatch::sink::Target;

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

#[derive(Subcommand)]
enum Command {
    /// Replay pcap/pcapng files (any mix, .gz too) in timestamp order.
    Replay {
        /// Capture files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
        /// Write Prometheus metrics (text format) here at the end.
        #[arg(long)]
        metrics_out: Option<PathBuf>,
        /// Write an HTML case file here (self-contained: findings, timelines, charts).
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
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
            config,
            accounts,
            sessions,
            events,
            flows,
            metrics_out,
            report,
        } => Config::load(config.as_deref())
            .map_err(|e| Failure::Usage(e.to_string()))
            .and_then(|config| {
                replay::run(ReplayArgs {
                    files,
                    config,
                    accounts,
                    sessions,
                    events: Target::parse(&events),
                    flows,
                    metrics_out,
                    report,
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
