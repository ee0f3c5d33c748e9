//! Real nats-server processes on loopback ports for the JetStream tests: started with
//! JetStream on, waited for until they accept connections, killed when dropped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts nats-server with `args` and waits until it accepts connections on `port`.
pub fn spawn(port: u16, args: &[String]) -> Server {
    let child = Command::new(BINARY)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let server = Server { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nats-server on port {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
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
