//! `farmwatch replay`: capture files through the pipeline as fast as the machine allows,
//! with packet timestamps as the clock.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::account_stage::{Context, Sinks};
use crate::config::Config;
use crate::engine::{Engine, Finished};
use crate::publish::{self, Publish};
use crate::report::{self, Collector, InputFile, ReportInput};
use crate::sink::{self, Target};
use crate::source::{self, FileReader, Replay, SourceError};

pub struct ReplayArgs {
    pub files: Vec<PathBuf>,
    pub config: Config,
    pub accounts: Option<PathBuf>,
    pub sessions: Option<PathBuf>,
    pub events: Target,
    pub flows: Option<Target>,
    /// Prometheus text-format metrics written at the end.
    pub metrics_out: Option<PathBuf>,
    /// The HTML case file written at the end.
    pub report: Option<PathBuf>,
    /// Flow-stage threads; the output is the same for every number.
    pub workers: usize,
    /// `--publish`, started.
    pub publish: Option<Publish>,
}

/// How a replay went wrong, by exit code.
pub enum Failure {
    /// Bad input named on the command line (exit 2).
    Usage(String),
    /// Something broke while running (exit 1).
    Runtime(String),
}

pub fn run(args: ReplayArgs) -> Result<(), Failure> {
    let context = Context::load(
        &args.config,
        args.accounts.as_deref(),
        args.sessions.as_deref(),
    )
    .map_err(Failure::Usage)?;
    if args.report.is_some()
        && let Some(p) = args.files.iter().find(|p| !source::is_regular_file(p))
    {
        return Err(Failure::Usage(format!(
            "{}: --report hashes its inputs at the end, so they must be regular files, not pipes",
            source::display_name(p)
        )));
    }
    let mut replay = Replay::open(&args.files).map_err(|e| match e {
        SourceError::Corrupt { .. } => Failure::Runtime(e.to_string()),
        _ => Failure::Usage(e.to_string()),
    })?;
    // Created first, so a bad path fails before any output is truncated or hours of
    // replay go by.
    for (what, path) in [("report", &args.report), ("metrics", &args.metrics_out)] {
        if let Some(p) = path {
            std::fs::File::create(p).map_err(|e| {
                Failure::Usage(format!("cannot open {what} output: {}: {e}", p.display()))
            })?;
        }
    }
    let events = sink::create(&args.events)
        .map_err(|e| Failure::Usage(format!("cannot open events output: {e}")))?;
    let flows = args
        .flows
        .as_ref()
        .map(sink::create)
        .transpose()
        .map_err(|e| Failure::Usage(format!("cannot open flows output: {e}")))?;
    let mut engine = Engine::new(
        &args.config,
        context,
        Sinks {
            events: Some(events),
            flows,
            publish: args.publish,
        },
        Some(Collector::new(args.report.is_some())),
        args.workers,
    );

    let total: u64 = args
        .files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    engine.replay(&mut replay, |packets, bytes| {
        if let Some(bar) = &progress {
            bar.set_position(bytes.min(total));
            bar.set_message(format!("{packets} packets"));
        }
    });
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let mut done = engine.finish();
    replay.count_into(&mut done.stats);
    print_summary(&replay, &done);
    let mut problems: Vec<String> = replay.errors.iter().map(|e| e.to_string()).collect();
    if let Some(p) = done.account.publish.take() {
        let (lines, report) = p.finish(publish::FINISH_WAIT);
        for line in lines {
            eprintln!("farmwatch: {line}");
        }
        done.stats.publish = Some(report.stats);
        if !publish::complete(&report) {
            problems.push("not every message was published (see above)".to_string());
        }
    }
    if let Some(path) = &args.report {
        write_report(path, &replay, &mut done, &args.config)?;
    }
    if let Some(path) = &args.metrics_out {
        let metrics = crate::metrics::Metrics::new();
        // Lag is measured against the capture's own clock, so a replay reports none.
        let now = done.stats.last_packet_ts.unwrap_or(0.0);
        metrics.publish(&done.stats, now);
        metrics
            .write_to_file(path)
            .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
    }

    problems.extend(done.account.sink_failures());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(problems.join("; ")))
    }
}

fn print_summary(replay: &Replay, p: &Finished) {
    let s = &p.stats;
    let mut err = std::io::stderr().lock();
    let span = match (p.first_ts, p.last_ts) {
        (Some(a), Some(b)) => format!(
            "{a} .. {b} ({})",
            humantime::format_duration(std::time::Duration::from_secs(b.since(a).as_secs()))
        ),
        _ => "no packets".to_string(),
    };
    let _ = writeln!(
        err,
        "farmwatch: {} file(s), {} packets, {} bytes, {span}",
        replay.readers().len(),
        s.packets,
        s.bytes
    );
    let evicted: u64 = s.flows_evicted.values().sum();
    let _ = writeln!(
        err,
        "flows: {} ({} evicted because the table was full)",
        s.flows_total, evicted
    );
    if !s.decode_errors.is_empty() {
        let parts: Vec<String> = s
            .decode_errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(err, "decode problems: {}", parts.join(", "));
    }
    for line in replay.readers().iter().filter_map(FileReader::summary) {
        let _ = writeln!(err, "{line}");
    }
    if s.capture_unindexed_records > 0 {
        let _ = writeln!(
            err,
            "{} record(s) left out: not where the walkers' index of the input said",
            s.capture_unindexed_records
        );
    }
    let total: u64 = s.events.values().sum();
    let _ = writeln!(err, "events: {total}");
    for ((kind, reason, severity), n) in &s.events {
        let _ = writeln!(err, "  {kind}/{reason} [{severity}]: {n}");
    }
    for (sink, n) in &s.sink_errors {
        let _ = writeln!(err, "{sink} output: {n} record(s) lost, not written");
    }
    if let Some(c) = &p.account.collector {
        let table = report::top_findings_table(c, TOP_FINDINGS);
        if !table.is_empty() {
            let _ = write!(err, "top findings:\n{table}");
        }
    }
}

/// Rows of the top-findings table on stderr.
const TOP_FINDINGS: usize = 10;

/// The HTML case file: what the replay found, with the inputs' sizes and hashes.
fn write_report(
    path: &std::path::Path,
    replay: &Replay,
    done: &mut Finished,
    config: &Config,
) -> Result<(), Failure> {
    let mut files = Vec::new();
    for r in replay.readers() {
        let mut f = InputFile::hash(r.path())
            .map_err(|e| Failure::Runtime(format!("{}: {e}", r.path().display())))?;
        f.truncated = r.truncated;
        f.skipped = r.skipped;
        files.push(f);
    }
    let mut collector = done.account.collector.take().unwrap_or_default();
    collector.settle();
    let html = report::render(
        &collector,
        &ReportInput {
            files,
            config,
            context: done.account.context(),
            stats: &done.stats,
            first_ts: done.first_ts,
            last_ts: done.last_ts,
        },
    );
    std::fs::write(path, html).map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))
}
