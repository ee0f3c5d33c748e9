//! Helpers shared by the integration tests: running the binary, finding the development
//! captures, and deciding whether a missing tool skips or fails (it fails when `CI=true`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_farmwatch")
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The development captures of other projects (`../shared/captures`), used in place.
pub fn captures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
    dir.is_dir().then_some(dir)
}

/// Returns false (the test should return early) when `what` is missing outside CI;
/// panics inside CI, where a missing tool or capture set is a broken setup.
pub fn require(available: bool, what: &str) -> bool {
    if !available {
        assert!(!in_ci(), "{what} is missing, and CI=true requires it");
        eprintln!("skipping: {what} is missing (set CI=true to make this a failure)");
    }
    available
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
