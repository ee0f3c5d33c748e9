//! A capture file that shrinks while `farmwatch replay` has it mapped: the pages past its
//! new end fault (a real SIGBUS), and the replay stops with one line naming the file and
//! the offset, exit 1 — not killed without a word.
//!
//! Deterministic without a hook in the binary: `--flows` is a FIFO, whose opening blocks
//! the replay after its inputs are mapped (/proc/PID/maps shows it) and before the first
//! packet is handed on; the file is cut then, and the FIFO opened to let it go on.

mod support;

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fixturegen::capture::{ByteOrder, EPOCH, MS, PcapWriter, TsUnit, linktype};

/// Where the file is cut: page-aligned, so that no page holds bytes past the new end.
const CUT: u64 = 1 << 20;

/// A pcap of 4,000 UDP datagrams of 1,000 bytes between a few hosts (about 4 MiB).
fn capture(dir: &Path) -> PathBuf {
    let path = dir.join("big.pcap");
    let file = std::io::BufWriter::new(File::create(&path).expect("create pcap"));
    let mut w = PcapWriter::new(
        file,
        linktype::RAW,
        65_535,
        ByteOrder::Little,
        TsUnit::Micro,
    )
    .expect("pcap header");
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 5000);
    for i in 0..4_000u32 {
        let host = Ipv4Addr::new(10, 8, 0, (i % 50) as u8 + 1);
        let client = SocketAddr::new(IpAddr::V4(host), 20_000 + (i % 50) as u16);
        let datagram = fixturegen::packet::udp(client, server, &[i as u8; 1000]);
        w.record(EPOCH + u64::from(i) * MS, &datagram)
            .expect("pcap record");
    }
    w.into_inner().into_inner().expect("flush pcap");
    path
}

/// Starts a replay of `pcap` whose flow records go to a new FIFO, and waits until it has
/// mapped `pcap` (it then waits for the FIFO's reader).
fn start_mapped(dir: &Path, pcap: &Path, workers: &str) -> (Child, PathBuf) {
    let fifo = dir.join(format!("flows-{workers}.fifo"));
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // No core file when a test ends it with a signal.
    let child = Command::new("sh")
        .args([
            "-c",
            "ulimit -c 0; exec \"$@\"",
            "sh",
            support::bin(),
            "replay",
        ])
        .arg(pcap)
        .arg("--flows")
        .arg(&fifo)
        .args(["--events", "/dev/null", "--workers", workers])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start farmwatch");
    let maps = PathBuf::from(format!("/proc/{}/maps", child.id()));
    let real = pcap.canonicalize().expect("the capture's path");
    let name = real.to_str().expect("a UTF-8 path");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&maps).is_ok_and(|m| m.contains(name)) {
        assert!(Instant::now() < deadline, "the replay never mapped {name}");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, fifo)
}

/// Lets the replay go on and waits for it to end: the FIFO is opened for reading without
/// waiting for a writer (the replay opens its outputs twice), and kept open meanwhile.
/// The few flow records fit in the FIFO's buffer unread.
fn go_on(mut child: Child, fifo: &Path) -> (std::process::ExitStatus, String) {
    let _reader = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .expect("open the FIFO");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (child.wait().expect("wait"), stderr)
}

#[test]
fn a_file_that_shrinks_while_it_is_replayed_stops_with_its_name_and_offset() {
    let dir = support::scratch("replay-shrink");
    for workers in ["1", "2"] {
        let pcap = capture(&dir);
        let (child, fifo) = start_mapped(&dir, &pcap, workers);
        File::options()
            .write(true)
            .open(&pcap)
            .and_then(|f| f.set_len(CUT))
            .expect("cut the capture");
        let (status, stderr) = go_on(child, &fifo);
        assert_eq!(status.code(), Some(1), "workers {workers}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        let prefix = format!("farmwatch: {}: stopped at byte offset ", pcap.display());
        let offset: u64 = lines[0]
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(": the file shrank while it was being read"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("workers {workers}: {stderr}"));
        // The first byte touched past the new end: in the record that crossed it.
        assert!((CUT..CUT + 1100).contains(&offset), "{offset}");
    }
}

/// A SIGBUS that is no fault in a mapped file (here one sent by another process) keeps its
/// default action: the process ends by that signal.
#[test]
fn another_sigbus_keeps_its_default_action() {
    let dir = support::scratch("replay-sigbus");
    let pcap = capture(&dir);
    let (child, fifo) = start_mapped(&dir, &pcap, "1");
    // SAFETY: kill(2) with the pid of our own child, which has not been waited for.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGBUS) };
    assert_eq!(sent, 0);
    // Should the signal be swallowed, the replay goes on to its end: the test fails, it
    // does not hang.
    let (status, stderr) = go_on(child, &fifo);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{stderr}");
    assert!(!stderr.contains("shrank"), "{stderr}");
}
