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
        /// Where events go, as JSON lines ("-" = stdout).
        #[arg(long, default_value = "-")]
        events: String,
        /// Where flow records go, as JSON lines.
        #[arg(long)]
        flows: Option<PathBuf>,
        /// Write Prometheus metrics (text format) here at the end.
        #[arg(long)]
        metrics_out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay {
            files,
            config,
            events,
            flows,
            metrics_out,
        } => Config::load(config.as_deref())
            .map_err(|e| Failure::Usage(e.to_string()))
            .and_then(|config| {
                replay::run(ReplayArgs {
                    files,
                    config,
                    events: Target::parse(&events),
                    flows,
                    metrics_out,
                })
            }),
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
