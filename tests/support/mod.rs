//! Helpers shared by the integration tests: running the binary, finding the real captures,
//! and deciding whether a missing input skips or fails (a missing tool or privilege fails
//! when `CI=true`). Every skip is recorded, so `tools/test` can count them in its last line.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_farmwatch")
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The capture suite whose traces may carry their own licences: never copied into the
/// project, read in place from `../shared/captures` when that exists (an optional input).
pub const SPICY: &str = "zeek-spicy-analyzers";

/// A capture suite's directory. `zeek` and `suricata-verify` are copied into
/// `tests/captures/` (see its README) and always here; [`SPICY`] is looked for in
/// `../shared/captures` beside the repository, and its absence is a recorded skip, also
/// under `CI=true`.
pub fn suite(name: &str) -> Option<PathBuf> {
    if name != SPICY {
        let dir = project_captures().join(name);
        assert!(dir.is_dir(), "{} is part of the project", dir.display());
        return Some(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/captures")
        .join(name);
    if !dir.is_dir() {
        skip("spicy-analyzer captures not found (../shared/captures/zeek-spicy-analyzers)");
        return None;
    }
    Some(dir)
}

/// The root of the copied suites (`tests/captures`): paths below it read like upstream's.
pub fn project_captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

/// A file of a copied suite by its path there, e.g. `zeek/Traces/ssh/ssh.pcap`.
pub fn capture(path: &str) -> PathBuf {
    let (name, rest) = path.split_once('/').expect("suite/path");
    assert_ne!(name, SPICY, "{SPICY} is optional: use suite()");
    let file = suite(name).expect("a copied suite").join(rest);
    assert!(file.is_file(), "{} is missing", file.display());
    file
}

/// Every capture file of every suite here: the copied ones, and the spicy-analyzer traces
/// when present (their absence is a recorded skip, and the sweep goes on without them).
pub fn all_capture_files() -> Vec<PathBuf> {
    ["zeek", "suricata-verify", SPICY]
        .into_iter()
        .filter_map(suite)
        .flat_map(|dir| capture_files(&dir))
        .collect()
}

/// Returns false (the test should return early, after a recorded skip) when `what` is
/// missing outside CI; panics inside CI, where a missing tool or privilege is a broken setup.
pub fn require(available: bool, what: &str) -> bool {
    if !available {
        assert!(!in_ci(), "{what} is missing, and CI=true requires it");
        skip(&format!("{what} missing"));
    }
    available
}

/// Notes on stderr that the running test skips some or all of its checks, and appends
/// `reason<TAB>test` to the skip log (`$FARMWATCH_TEST_SKIPS`, else
/// `target/test-skips/skips.txt`), which `tools/test` summarises after the run.
pub fn skip(reason: &str) {
    eprintln!("skipping: {reason}");
    let log = std::env::var_os("FARMWATCH_TEST_SKIPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-skips/skips.txt"));
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{reason}\t{}: {test}\n", env!("CARGO_CRATE_NAME"));
    // One write per line with O_APPEND: lines from parallel tests do not interleave.
    let written = log
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?
                .write_all(line.as_bytes())
        });
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", log.display());
    }
}

pub fn has_tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Every pcap/pcapng file below `dir`, sorted.
pub fn capture_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run farmwatch")
}

/// `cmd` writing its events, flow records and metrics to these files.
pub fn outputs<'a>(
    cmd: &'a mut Command,
    events: &Path,
    flows: &Path,
    metrics: &Path,
) -> &'a mut Command {
    cmd.arg("--events")
        .arg(events)
        .arg("--flows")
        .arg(flows)
        .arg("--metrics-out")
        .arg(metrics)
}

/// Replays `files` and returns (events, flow records) as JSON values.
pub fn replay(
    files: &[&Path],
    extra: &[&str],
    tag: &str,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let dir = scratch(tag);
    let events = dir.join("events.jsonl");
    let flows = dir.join("flows.jsonl");
    let mut args: Vec<String> = vec!["replay".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["--events".into(), events.display().to_string()]);
    args.extend(["--flows".into(), flows.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(bin())
        .args(&args)
        .output()
        .expect("run farmwatch");
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (read_jsonl(&events), read_jsonl(&flows))
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

/// xorshift64* (Vigna 2016): a tiny deterministic generator for the mutation tests, so a
/// failing input comes back run after run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Runs promtool with `args` and returns its output, or None (a recorded skip) when it is
/// not installed outside CI; a failing run fails the test.
pub fn promtool(args: &[&str]) -> Option<String> {
    match Command::new("promtool").args(args).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
            Some(text)
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool missing in CI ({e}): tools/setup-debian unpacks it into .tools/"
            );
            skip("promtool missing");
            None
        }
    }
}
