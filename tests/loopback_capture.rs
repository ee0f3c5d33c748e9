//! Real traffic from real software: tcpdump records curl fetching from a local server on
//! loopback, and the replayed flows must carry exactly the bytes the server saw and sent.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const FETCHES: usize = 3;

/// Serves `FETCHES` requests; reports each request's length in bytes.
fn serve(listener: TcpListener, body: Vec<u8>, lens: mpsc::Sender<(u16, usize, usize)>) {
    for _ in 0..FETCHES {
        let Ok((mut conn, peer)) = listener.accept() else {
            return;
        };
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        resp.extend_from_slice(&body);
        let _ = conn.write_all(&resp);
        let _ = conn.flush();
        drop(conn);
        let _ = lens.send((peer.port(), req.len(), resp.len()));
    }
}

#[test]
fn curl_on_loopback_is_accounted_byte_for_byte() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !support::require(
        root && support::has_tool("tcpdump") && support::has_tool("curl"),
        "root, tcpdump and curl",
    ) {
        return;
    }
    let dir = support::scratch("loopback");
    let pcap = dir.join("lo.pcap");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut tcpdump = Command::new("tcpdump")
        .args(["-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg(format!("tcp port {port}"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump starts");
    // tcpdump says "listening on" once the capture is open.
    let mut err = tcpdump.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    let mut b = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        let n = err.read(&mut b).expect("tcpdump stderr");
        assert!(n > 0, "tcpdump exited: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&b[..n]);
    }
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || serve(listener, body, tx));
    for _ in 0..FETCHES {
        let ok = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}/x"),
            ])
            .status()
            .expect("curl runs");
        assert!(ok.success());
    }
    server.join().expect("server");
    std::thread::sleep(Duration::from_millis(1000));
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let _ = tcpdump.wait();

    let sent: Vec<(u16, usize, usize)> = rx.try_iter().collect();
    assert_eq!(sent.len(), FETCHES);
    let (_, flows) = support::replay(&[&pcap], &[], "loopback-replay");
    assert_eq!(flows.len(), FETCHES, "{flows:?}");
    for (client_port, req_len, resp_len) in sent {
        let f = flows
            .iter()
            .find(|f| f["src_port"] == client_port)
            .unwrap_or_else(|| panic!("no flow from port {client_port}"));
        assert_eq!(f["dst_port"], port);
        assert_eq!(f["bytes_orig"], req_len as u64);
        assert_eq!(f["bytes_resp"], resp_len as u64);
        assert_eq!(f["conn_state"], "SF");
        assert!(
            f["history"].as_str().unwrap_or("").starts_with("ShAD"),
            "{f}"
        );
        assert!(f["tcp_rtt_ms"].as_f64().is_some());
    }
}
