//! The live sensor's control plane, on a small tokio runtime of its own thread: HTTP
//! `GET /metrics` (Prometheus text format) and `GET /healthz`, the signals (SIGTERM/SIGINT
//! stop, SIGHUP reopens outputs and re-reads the config and inventory on a thread of its
//! own), and publishing the workers' counters into the metrics every second. The packet
//! path never waits on any of it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;

use crate::health::Status;
use crate::live::Sensor;

/// The Prometheus text exposition format, version 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// How often the workers' counters are summed into the metrics.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// A running control plane; [`Control::shutdown`] ends it.
pub struct Control {
    /// Where HTTP is served (the port is known even when `--listen` asked for port 0).
    pub local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

/// Serves on `listener` and handles signals from now on: the handlers are installed before
/// this returns, so a SIGTERM right after start is a clean stop, not the default kill.
pub fn start(listener: std::net::TcpListener, sensor: Arc<Sensor>) -> io::Result<Control> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (listener, signals) = {
        let _context = runtime.enter();
        let signals = Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        };
        (tokio::net::TcpListener::from_std(listener)?, signals)
    };
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("farmwatch-control".to_string())
        .spawn(move || runtime.block_on(serve(listener, signals, sensor, stopped)))?;
    Ok(Control {
        local_addr,
        stop,
        thread,
    })
}

impl Control {
    /// Stops serving and waits for the runtime's thread.
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    mut signals: Signals,
    sensor: Arc<Sensor>,
    mut stopped: oneshot::Receiver<()>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(Arc::clone(&sensor));
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
        if let Err(e) = served {
            eprintln!("farmwatch: error: the HTTP endpoint failed: {e}");
        }
    });

    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => sensor.publish(),
            _ = signals.term.recv() => stop(&sensor, "SIGTERM"),
            _ = signals.int.recv() => stop(&sensor, "SIGINT"),
            _ = signals.hup.recv() => sensor.reload(),
            _ = &mut stopped => break,
        }
    }
    let _ = http_stop.send(());
    // Open keep-alive connections would hold a graceful shutdown forever; the process is
    // ending, so give them a moment and go.
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
}

fn stop(sensor: &Sensor, signal: &str) {
    eprintln!("farmwatch: stopping on {signal}: draining workers and flushing outputs");
    sensor.request_stop();
}

async fn metrics(
    State(sensor): State<Arc<Sensor>>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        sensor.metrics.render(),
    )
}

/// 200 `ok` while the capture runs; 200 `degraded: ...` while packets are being dropped
/// before capture; 503 before capture starts, while shutting down, and while output writes
/// fail ([`crate::health`]).
async fn healthz(State(sensor): State<Arc<Sensor>>) -> (StatusCode, String) {
    match sensor.health() {
        Status::Ok => (StatusCode::OK, "ok\n".to_string()),
        Status::Degraded(why) => (StatusCode::OK, format!("degraded: {why}\n")),
        Status::Failing(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// `GET path` over HTTP/1.1: the status line's code, the header block and the body.
    fn get(port: u16, path: &str) -> (u16, String, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_ascii_lowercase(), body.to_string())
    }

    #[test]
    fn serves_metrics_and_health_by_capture_state() {
        let sensor = Arc::new(Sensor::new(Default::default(), Vec::new(), None, None));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let control = start(listener, Arc::clone(&sensor)).unwrap();
        let port = control.local_addr.port();

        let (code, _, body) = get(port, "/healthz");
        assert_eq!((code, body.as_str()), (503, "not capturing\n"));
        sensor.set_capturing(true);
        let (code, _, body) = get(port, "/healthz");
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        // Records being lost: the sensor is failing, whatever its capture does.
        let mut stats = crate::metrics::Stats::default();
        stats.sink_errors.insert("events", 3);
        sensor.publish_stats(stats);
        let (code, _, body) = get(port, "/healthz");
        assert_eq!(code, 503, "{body}");
        assert!(
            body.starts_with("output writes failing: 3 failed"),
            "{body}"
        );

        let (code, head, body) = get(port, "/metrics");
        assert_eq!(code, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("farmwatch_build_info{version="), "{body}");
        assert!(body.contains("farmwatch_packets_total 0"), "{body}");

        assert_eq!(get(port, "/").0, 404);
        control.shutdown();
    }
}
