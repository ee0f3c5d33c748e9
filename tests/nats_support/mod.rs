//! Real nats-server processes on loopback ports for the JetStream tests: started with
//! JetStream on, waited for until they accept connections, killed when dropped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support;

pub const BINARY: &str = "nats-server";

/// A nats-server process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Whether Debian's nats-server is installed; under CI=true a missing one fails the test,
/// elsewhere the test records a skip.
pub fn have_server() -> bool {
    match Command::new(BINARY).arg("--version").output() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "nats-server missing in CI ({e}): install Debian's nats-server"
            );
            support::skip("nats-server missing");
            false
        }
    }
}

/// A loopback port for a server, below the kernel's ephemeral range: a port taken from
/// that range (`bind(:0)`) and let go can be reused at once as the local port of any
/// outgoing connection (the tests' own clients among them), and the server then cannot
/// listen; a test that stops and restarts a server on its port has the same window. Ports
/// handed out are not handed out again in this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Spread processes (test binaries run one after another, tests in threads) apart.
    let seed = std::process::id() as u64 * 7919 + handed.len() as u64 * 104_729;
    for i in 0..LOW_PORTS as u64 {
        let port = LOW_PORT_BASE + ((seed + i * 2_654_435_761) % LOW_PORTS as u64) as u16;
        if !handed.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.push(port);
            return port;
        }
    }
    panic!(
        "no free loopback port in {LOW_PORT_BASE}..{}",
        LOW_PORT_BASE + LOW_PORTS
    );
}

/// Linux's default ephemeral range starts at 32768; these are under it.
const LOW_PORT_BASE: u16 = 20_000;
const LOW_PORTS: u16 = 12_000;

/// Starts nats-server with `args` and waits until it accepts connections on `port`.
pub fn spawn(port: u16, args: &[String]) -> Server {
    let child = Command::new(BINARY)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let mut server = Server { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            let mut why = String::new();
            if let Some(mut err) = server.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut why);
            }
            panic!("nats-server on port {port} exited ({status}) before listening: {why}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nats-server on port {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its log is only wanted when it fails to start; drained, so a full pipe never stops it.
    if let Some(mut err) = server.child.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }
    server
}

/// A standalone JetStream server on `port`, its store in `dir`.
pub fn standalone(port: u16, dir: &Path) -> Server {
    spawn(
        port,
        &[
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.display().to_string(),
        ],
    )
}
