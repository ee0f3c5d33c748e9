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

/// A veth pair whose sending end sits in a network namespace of its own (name prefix
/// `fwlc-`, or the one given to [`Veth::with_prefix`]); the sensor's end stays here. Both
/// are removed on drop, also when a test fails.
pub struct Veth {
    pub netns: String,
    /// The sensor's end, in this namespace.
    pub host: String,
    /// The sending end, in `netns`.
    pub peer: String,
}

impl Veth {
    /// `tag` tells apart the pairs of tests that run at the same time (one letter).
    pub fn new(tag: char) -> Veth {
        Veth::with_prefix("fwlc", tag)
    }

    /// A pair named from `prefix` (four letters: interface names have 15 characters).
    pub fn with_prefix(prefix: &str, tag: char) -> Veth {
        let id = std::process::id();
        let veth = Veth {
            netns: format!("{prefix}-{id}-{tag}"),
            host: format!("{prefix}{id}{tag}h"),
            peer: format!("{prefix}{id}{tag}p"),
        };
        must(Command::new("ip").args(["netns", "add", &veth.netns]));
        must(Command::new("ip").args([
            "link", "add", &veth.host, "type", "veth", "peer", "name", &veth.peer,
        ]));
        must(Command::new("ip").args(["link", "set", &veth.peer, "netns", &veth.netns]));
        // No IPv6 autoconfiguration chatter: the sensor must see the sent frames only.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", veth.host),
            "1",
        );
        veth.exec(&[
            "sh",
            "-c",
            &format!(
                "echo 1 > /proc/sys/net/ipv6/conf/{}/disable_ipv6",
                veth.peer
            ),
        ]);
        must(Command::new("ip").args(["link", "set", &veth.host, "up"]));
        veth.exec(&["ip", "link", "set", &veth.peer, "up"]);
        veth
    }

    /// Runs `args` inside the namespace, panicking with its output when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        must(
            Command::new("ip")
                .args(["netns", "exec", &self.netns])
                .args(args),
        )
    }

    /// `tcpreplay <options> -i <peer> <pcap>`: what it sent, as it reports it.
    pub fn tcpreplay(&self, options: &[&str], pcap: &str) -> Replayed {
        let mut args = vec!["tcpreplay"];
        args.extend_from_slice(options);
        args.extend_from_slice(&["-i", &self.peer, pcap]);
        Replayed::parse(&self.exec(&args))
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer, and with it the host end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .stderr(Stdio::null())
            .status();
    }
}

/// tcpdump writing what an interface receives to a pcap file with nanosecond timestamps:
/// the packets a sensor on the same interface captured, with the same kernel receive
/// timestamps. Stopped (SIGINT, which flushes the file) by [`Recorder::stop`], killed on
/// drop.
pub struct Recorder {
    child: Child,
    stderr: PathBuf,
}

impl Recorder {
    /// Starts tcpdump on `interface` and waits until it listens.
    pub fn start(interface: &str, pcap: &Path) -> Recorder {
        let stderr = pcap.with_extension("stderr");
        let child = Command::new("tcpdump")
            .args([
                "-n",
                "-U",
                "--time-stamp-precision=nano",
                "-i",
                interface,
                "-w",
            ])
            .arg(pcap)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start tcpdump");
        let recorder = Recorder { child, stderr };
        let listening = wait_for(Duration::from_secs(30), || {
            recorder.stderr().contains("listening on")
        });
        assert!(listening, "tcpdump never listened:\n{}", recorder.stderr());
        recorder
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Stops the capture, writing out what it holds; returns tcpdump's report.
    pub fn stop(mut self) -> String {
        must(
            Command::new("kill")
                .args(["-s", "INT"])
                .arg(self.child.id().to_string()),
        );
        let ended = wait_for(Duration::from_secs(30), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        assert!(ended, "tcpdump did not stop:\n{}", self.stderr());
        self.stderr()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// tcpreplay's report: packets it put on the link, and the rate it reached.
#[derive(Debug)]
pub struct Replayed {
    pub packets: u64,
    pub pps: f64,
}

impl Replayed {
    /// From "Rated: ... 241383.66 pps" and "Successful packets:  340000".
    fn parse(text: &str) -> Replayed {
        let value = |line_start: &str, unit: &str| -> Option<f64> {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(line_start))?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = if unit.is_empty() {
                words.len()
            } else {
                words.iter().position(|w| w.trim_end_matches(',') == unit)?
            };
            words.get(at.checked_sub(1)?)?.parse().ok()
        };
        Replayed {
            packets: value("Successful packets:", "")
                .unwrap_or_else(|| panic!("no packet count in tcpreplay's report:\n{text}"))
                as u64,
            pps: value("Rated:", "pps").unwrap_or(0.0),
        }
    }
}

/// The counters of the sensor's last line, "capture stopped packets=.. dropped_kernel=..".
pub fn exit_counts(stderr: &str) -> Option<(u64, u64, u64)> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("capture stopped"))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((
        field("packets")?,
        field("dropped_kernel")?,
        field("dropped_interface")?,
    ))
}
