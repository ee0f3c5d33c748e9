//! Helpers for the `farmwatch live` tests (next to the shared `support` module): a sensor
//! process, a minimal HTTP GET, and the rule for skipping: capture needs root; CI runs as
//! root and sets `CI=true`, so there a missing privilege fails the test instead of skipping.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use crate::support;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// False (with a note) when the test cannot run here: not root, outside CI.
pub fn can_capture() -> bool {
    support::require(is_root(), "root (live capture)")
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn must(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Polls `done` every 50 ms until it holds; false after `limit` (a bound on waiting, not an
/// assertion about speed).
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// `GET path` on 127.0.0.1:port: (status, content type, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, content_type, body.to_string()))
}

/// The value of sample `name` (no labels) in a text-format scrape.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A `farmwatch live` process; killed on drop if still running.
pub struct Sensor {
    child: Child,
    pub port: u16,
    stderr: PathBuf,
}

impl Sensor {
    /// Starts `farmwatch live --listen 127.0.0.1:<free port> <args>`, stderr to a file.
    pub fn start(dir: &Path, args: &[&str]) -> Sensor {
        Sensor::start_on(dir, free_port(), args)
    }

    pub fn start_on(dir: &Path, port: u16, args: &[&str]) -> Sensor {
        let stderr = dir.join("sensor.stderr");
        let child = Command::new(support::bin())
            .arg("live")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start farmwatch live");
        Sensor {
            child,
            port,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `/healthz` says the capture runs.
    pub fn wait_healthy(&mut self) {
        let port = self.port;
        let up = wait_for(Duration::from_secs(30), || {
            http_get(port, "/healthz").is_some_and(|(status, _, _)| status == 200)
        });
        assert!(up, "sensor never became healthy:\n{}", self.stderr());
    }

    pub fn signal(&self, name: &str) {
        must(
            Command::new("kill")
                .args(["-s", name])
                .arg(self.child.id().to_string()),
        );
    }

    /// Waits for the process to end (bounded), returning its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut status = None;
        wait_for(Duration::from_secs(60), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.unwrap_or_else(|| panic!("sensor did not exit:\n{}", self.stderr()))
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `farmwatch live <args>` expecting it to end by itself (a startup failure):
/// (exit code, stderr).
pub fn live_fails(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut sensor = Sensor::start(dir, args);
    let status = sensor.wait_exit();
    (status.code(), sensor.stderr())
}
