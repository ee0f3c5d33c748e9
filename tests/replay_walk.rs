//! With several workers (no more than the cores), a replay of regular files has every
//! worker walk the files itself over the same mappings, following one index of them that
//! the walkers fill chunk by chunk, and deciding as the reader thread would (`engine.rs`,
//! `walk`; `engine/index.rs`); an input through a pipe, or more workers than cores, still
//! goes through the reader thread. Both write, byte for byte, what one worker writes: events,
//! flow records, the summary and the metrics, whose reader-level counters (records cut
//! off, fragment routes) are counted once.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{bin, scratch};

/// Workers that walk: as many as there are cores, 3 at most (2 at least, to be several).
fn walkers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 3))
}

/// What a replay wrote: exit status, events, flow records, summary (stderr) and metrics.
#[derive(Debug, PartialEq)]
struct Output {
    code: Option<i32>,
    events: String,
    flows: String,
    summary: String,
    metrics: String,
}

/// Replays `files` (`stdin`: the one file through a pipe instead) with `workers`.
fn replay(files: &[PathBuf], stdin: Option<&Path>, workers: usize, dir: &Path) -> Output {
    let out = |name: &str| dir.join(format!("{name}-{workers}-{}", stdin.is_some()));
    let (events, flows, metrics) = (out("events"), out("flows"), out("metrics"));
    let mut cmd = Command::new(bin());
    cmd.arg("replay").args(files);
    if let Some(path) = stdin {
        cmd.arg("-").stdin(Stdio::from(
            std::fs::File::open(path).expect("open capture"),
        ));
    }
    cmd.args(["--config", "fixtures/detect.toml", "--workers"])
        .arg(workers.to_string());
    let run = support::outputs(&mut cmd, &events, &flows, &metrics)
        .output()
        .expect("run farmwatch");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Output {
        code: run.status.code(),
        events: read(&events),
        flows: read(&flows),
        summary: String::from_utf8_lossy(&run.stderr).replace("stdin", "FILE"),
        metrics: read(&metrics),
    }
}

/// Several files merged by time — fragments of IPv4 and IPv6 datagrams held out of order,
/// remote-desktop and VPN sessions, a file cut off inside its last record — give the same
/// output with one worker, with workers walking them, and with more workers than cores.
#[test]
fn workers_walking_several_files_write_what_one_worker_writes() {
    let dir = scratch("replay-walk-files");
    let cut = dir.join("cut.pcap");
    let farm = std::fs::read("fixtures/detect-rdp-farm.pcap").expect("read a fixture");
    std::fs::write(&cut, &farm[..farm.len() - 20]).expect("write the cut capture");
    let mut files: Vec<PathBuf> = [
        "fixtures/ipv4-fragments.pcap",
        "fixtures/ipv6-ext-fragments.pcap",
        "fixtures/lab/rdp-direct-25ms.pcap",
        "fixtures/lab/openvpn-tcp-5ms.pcap",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    files.push(cut);
    let one = replay(&files, None, 1, &dir);
    assert_eq!(one.code, Some(0), "{}", one.summary);
    assert!(one.flows.lines().count() > 3, "{}", one.flows);
    assert!(
        one.summary.contains("1 record(s) cut off"),
        "{}",
        one.summary
    );
    for workers in [walkers(), 4] {
        assert_eq!(
            replay(&files, None, workers, &dir),
            one,
            "{workers} workers"
        );
    }
}

/// A fragmented datagram, last piece first, and a file cut off: workers walking the mapped
/// file, as many fed by the reader thread from a pipe, and one worker write the same.
#[test]
fn walking_workers_and_the_reader_thread_decide_alike() {
    let dir = scratch("replay-walk-reader");
    for (name, bytes) in [
        (
            "fragments.pcap",
            std::fs::read("fixtures/ipv4-fragments.pcap"),
        ),
        (
            "farm-cut.pcap",
            std::fs::read("fixtures/detect-rdp-farm.pcap").map(|b| b[..b.len() - 20].to_vec()),
        ),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, bytes.expect("read a fixture")).expect("write the capture");
        let walked = replay(std::slice::from_ref(&file), None, walkers(), &dir);
        assert_eq!(walked.code, Some(0), "{}", walked.summary);
        let fed = replay(&[], Some(&file), walkers(), &dir);
        let one = replay(&[], Some(&file), 1, &dir);
        let walked = Output {
            summary: walked.summary.replace(&file.display().to_string(), "FILE"),
            ..walked
        };
        assert_eq!(fed, walked, "{name}: reader thread and walkers");
        assert_eq!(one, walked, "{name}: one worker and walkers");
    }
}

/// The records of a pcap file (little-endian, microseconds) `copies` times over, each copy
/// an hour after the one before, and the last record cut 20 bytes short.
fn repeated(pcap: &[u8], copies: u32) -> Vec<u8> {
    let mut out = pcap[..24].to_vec();
    for copy in 0..copies {
        let mut at = 24;
        while at + 16 <= pcap.len() {
            let word = |i: usize| u32::from_le_bytes(pcap[at + i..at + i + 4].try_into().unwrap());
            let len = 16 + word(8) as usize;
            let mut record = pcap[at..at + len].to_vec();
            record[..4].copy_from_slice(&(word(0) + 3600 * copy).to_le_bytes());
            out.extend_from_slice(&record);
            at += len;
        }
    }
    out.truncate(out.len() - 20);
    out
}

/// The byte offset of record `n` of a pcap file (little-endian).
fn record_offset(pcap: &[u8], n: usize) -> usize {
    let mut at = 24;
    for _ in 0..n {
        at += 16 + u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
    }
    at
}

/// A capture of many of the index's chunks (4,096 records), whose record count is not a
/// multiple of one, cut off inside its last record: walkers write what one worker writes.
/// The same capture with a corrupt record header midway stops there for every number of
/// workers: one line naming the file and the record's offset, exit 1, and what came
/// before it written alike.
#[test]
fn walkers_over_many_chunks_write_what_one_worker_writes() {
    let dir = scratch("replay-walk-chunks");
    let lab =
        std::fs::read("fixtures/lab/ssh-domestic-then-operator-5ms.pcap").expect("read a fixture");
    let whole = repeated(&lab, 7);
    let file = dir.join("repeated.pcap");
    std::fs::write(&file, &whole).expect("write the capture");
    let files = [file];
    let one = replay(&files, None, 1, &dir);
    assert_eq!(one.code, Some(0), "{}", one.summary);
    assert!(one.flows.lines().count() > 7, "{}", one.flows);
    assert!(
        one.summary.contains("1 record(s) cut off"),
        "{}",
        one.summary
    );
    assert_eq!(replay(&files, None, walkers(), &dir), one);

    let mut corrupt = whole;
    let at = record_offset(&corrupt, 6_000);
    corrupt[at + 8..at + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let file = dir.join("corrupt.pcap");
    std::fs::write(&file, &corrupt).expect("write the capture");
    let files = [file];
    let one = replay(&files, None, 1, &dir);
    assert_eq!(one.code, Some(1), "{}", one.summary);
    let line = format!("corrupt.pcap: corrupt capture at byte {at}: ");
    assert_eq!(one.summary.matches(&line).count(), 1, "{}", one.summary);
    assert!(one.flows.lines().count() > 3, "{}", one.flows);
    assert_eq!(replay(&files, None, walkers(), &dir), one);
}
