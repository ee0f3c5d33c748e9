//! Hostile capture inputs (issue 18, "no silent loss"). Each file is written at test time
//! by [`corpus`], the real binary replays it, and the test checks the outcome the README's
//! replay limits promise: processed fully; refused before any work (exit 2, one line);
//! stopped (exit 1, a short line naming the file and byte offset); or counted in the
//! summary and the metrics.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{has_tool, require, scratch};

/// Writers of the hostile files, from real UDP/IPv4 packets on the raw-IP link type.
mod corpus {
    pub use fixturegen::capture::gzip;
    use fixturegen::capture::{ByteOrder, EPOCH, MS, PcapWriter, Pcapng, TsUnit, linktype};

    /// `n` UDP datagrams with distinct payloads, each 60 bytes long.
    pub fn frames(n: usize) -> Vec<Vec<u8>> {
        let client = "10.8.0.12:50000".parse().unwrap();
        let server = "192.0.2.53:53".parse().unwrap();
        (0..n)
            .map(|i| fixturegen::packet::udp(client, server, &(i as u32).to_be_bytes().repeat(8)))
            .collect()
    }

    /// A pcap file (LE, µs, snaplen 65535) of `n` packets.
    pub fn pcap(n: usize) -> Vec<u8> {
        let mut w = PcapWriter::new(
            Vec::new(),
            linktype::RAW,
            65535,
            ByteOrder::Little,
            TsUnit::Micro,
        )
        .unwrap();
        for (i, f) in frames(n).iter().enumerate() {
            w.record(EPOCH + i as u64 * MS, f).unwrap();
        }
        w.into_inner()
    }

    /// Offset of record `i` in [`pcap`]'s file: the 24-byte header, then records of a
    /// 16-byte header and a 60-byte datagram.
    pub fn pcap_record_at(i: usize) -> usize {
        24 + i * (16 + frames(1)[0].len())
    }

    /// Sets the captured length of record `i`.
    pub fn set_caplen(file: &mut [u8], i: usize, caplen: u32) {
        let at = pcap_record_at(i) + 8;
        file[at..at + 4].copy_from_slice(&caplen.to_le_bytes());
    }

    /// A pcapng file: section header, one raw-IP interface, `before` packets, the raw
    /// bytes `middle`, then `after` packets. Returns the file and the offset of `middle`.
    pub fn pcapng(before: usize, middle: &[u8], after: usize) -> (Vec<u8>, usize) {
        let frames = frames(before + after);
        let first = |n: usize| {
            let mut ng = Pcapng::new();
            let iface = ng.interface(linktype::RAW as u16, 0, None);
            for (i, f) in frames[..n].iter().enumerate() {
                ng.packet(iface, EPOCH + i as u64 * MS, f);
            }
            ng.into_bytes()
        };
        let mut file = first(before + after);
        let at = first(before).len();
        file.splice(at..at, middle.iter().copied());
        (file, at)
    }

    /// A little-endian pcapng block with the given lengths at its start and end.
    pub fn raw_block(kind: u32, len: u32, body: &[u8], trailer: u32) -> Vec<u8> {
        let mut b = kind.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(&trailer.to_le_bytes());
        b
    }

    /// A well-framed block.
    pub fn block(kind: u32, body: &[u8]) -> Vec<u8> {
        let len = (body.len() + 12) as u32;
        raw_block(kind, len, body, len)
    }

    /// A gzipped pcapng file whose one section defines `interfaces` raw-IP interfaces,
    /// with one packet on interface 0 before them, and one on the last after them.
    pub fn many_interfaces(interfaces: u32) -> Vec<u8> {
        let mut ng = Pcapng::new();
        ng.interface(linktype::RAW as u16, 0, None);
        ng.packet(0, EPOCH, &frames(1)[0]);
        for _ in 1..interfaces {
            ng.interface(linktype::RAW as u16, 0, None);
        }
        ng.packet(interfaces - 1, EPOCH + MS, &frames(1)[0]);
        gzip(&ng.into_bytes())
    }
}

/// What one replay did.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    metrics: String,
}

impl Outcome {
    /// Packets the summary line reports.
    fn packets(&self) -> u64 {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains(" file(s), "))
            .unwrap_or_else(|| panic!("no summary line in:\n{}", self.stderr));
        let after = line.split(" file(s), ").nth(1).unwrap_or_default();
        after
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {line}"))
    }

    /// The value of a counter in `--metrics-out`.
    fn counter(&self, name: &str) -> u64 {
        self.metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from the metrics:\n{}", self.metrics))
    }

    /// The last stderr line: the one that says why the replay failed.
    fn last_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }

    /// Asserts a refusal before any work: exit 2 and exactly one line, which contains `what`.
    fn refused(&self, what: &str) {
        assert_eq!(self.code, Some(2), "{}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got:\n{}", self.stderr);
        assert!(lines[0].contains(what), "{}", lines[0]);
    }

    /// Asserts a stop: exit 1 and a short last line naming `file` and byte `offset`.
    fn stopped(&self, file: &str, offset: usize) {
        assert_eq!(self.code, Some(1), "{}", self.stderr);
        let line = self.last_line();
        assert!(
            line.len() < 200,
            "a {}-byte error line: {line:.300}",
            line.len()
        );
        let want = format!("farmwatch: {file}: corrupt capture at byte {offset}");
        assert!(line.starts_with(&want), "want {want}, got {line}");
        assert_eq!(self.counter("farmwatch_capture_corrupt_files_total"), 1);
    }
}

/// Replays `inputs` (with `stdin` as standard input), writing events and metrics to `dir`.
fn replay_with(dir: &Path, inputs: &[&str], stdin: Stdio, wrap: Option<&[&str]>) -> Outcome {
    let metrics = dir.join("metrics.prom");
    let _ = std::fs::remove_file(&metrics);
    let events = dir.join("events.jsonl");
    let mut args: Vec<String> = wrap
        .unwrap_or_default()
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(support::bin().to_string());
    args.push("replay".into());
    args.extend(inputs.iter().map(|s| s.to_string()));
    for (flag, path) in [("--events", &events), ("--metrics-out", &metrics)] {
        args.push(flag.into());
        args.push(path.display().to_string());
    }
    let out = Command::new(&args[0])
        .args(&args[1..])
        .stdin(stdin)
        .output()
        .expect("run farmwatch");
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        metrics: std::fs::read_to_string(&metrics).unwrap_or_default(),
    }
}

fn replay(dir: &Path, file: &Path) -> Outcome {
    replay_with(dir, &[file.to_str().unwrap()], Stdio::null(), None)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Packets tshark reads from `file` (frames with an IP header: tshark lists a custom
/// block as a frame too), or None when it is not installed (outside CI).
fn tshark_count(file: &Path) -> Option<u64> {
    if !require(has_tool("tshark"), "tshark") {
        return None;
    }
    let out = Command::new("tshark")
        .args([
            "-r",
            file.to_str().unwrap(),
            "-Y",
            "ip",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .output()
        .expect("run tshark");
    Some(String::from_utf8_lossy(&out.stdout).lines().count() as u64)
}

/// Issue 18 row 1: a captured length of 300 MiB at record 40 of 10,000 was taken for a
/// record cut off at the end; the other 9,960 packets were dropped and the exit was 0.
#[test]
fn a_giant_captured_length_mid_file_stops_it_with_the_offset() {
    let dir = scratch("hostile-giant-caplen");
    let mut bytes = corpus::pcap(10_000);
    corpus::set_caplen(&mut bytes, 39, 300 << 20);
    let file = write(&dir, "giant-caplen.pcap", &bytes);
    let out = replay(&dir, &file);
    out.stopped(&file.display().to_string(), corpus::pcap_record_at(39));
    assert!(out.last_line().contains("314572800"), "{}", out.last_line());
    assert_eq!(out.packets(), 39);
    assert_eq!(out.counter("farmwatch_capture_truncated_records_total"), 0);
}

/// A record the end of the file really cuts is the one "cut off at the end": counted,
/// reported, exit 0.
#[test]
fn a_last_record_cut_by_the_end_of_the_file_is_counted() {
    let dir = scratch("hostile-cut-last");
    let bytes = corpus::pcap(100);
    let file = write(&dir, "cut.pcap", &bytes[..bytes.len() - 7]);
    let out = replay(&dir, &file);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.packets(), 99);
    assert_eq!(out.counter("farmwatch_capture_truncated_records_total"), 1);
    assert!(
        out.stderr
            .contains("cut.pcap: 1 record(s) cut off at the end of the file"),
        "{}",
        out.stderr
    );
    // The same file gzipped, and a .gz file cut short, lose the same record.
    let gz = corpus::gzip(&bytes[..bytes.len() - 7]);
    let file = write(&dir, "cut.pcap.gz", &gz);
    assert_eq!(replay(&dir, &file).packets(), 99);
    let gz = corpus::gzip(&bytes);
    let file = write(&dir, "cut-gz.pcap.gz", &gz[..gz.len() / 2]);
    let out = replay(&dir, &file);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.packets() > 0 && out.packets() < 100, "{}", out.stderr);
    assert_eq!(out.counter("farmwatch_capture_truncated_records_total"), 1);
}

/// A .gz file whose data fails its checksum was counted as cut off at the end, exit 0.
#[test]
fn a_damaged_gz_stream_stops_the_file() {
    let dir = scratch("hostile-damaged-gz");
    let plain = corpus::pcap(100);
    let mut gz = corpus::gzip(&plain);
    let crc = gz.len() - 8;
    gz[crc] ^= 1;
    let file = write(&dir, "crc.pcap.gz", &gz);
    let out = replay(&dir, &file);
    out.stopped(&file.display().to_string(), plain.len());
    assert!(
        out.last_line()
            .contains("of the decompressed data: read failed"),
        "{}",
        out.last_line()
    );
    assert_eq!(out.packets(), 100);
    assert_eq!(out.counter("farmwatch_capture_truncated_records_total"), 0);
}

/// Issue 18 row 2: a legal 12-byte block of local-use type 0x80000001 dropped the whole
/// file; tshark reads all 400 packets. Other block types a reader may skip are skipped too.
#[test]
fn legal_blocks_of_unread_types_are_skipped_and_counted() {
    let dir = scratch("hostile-unread-blocks");
    let mut custom = 32473u32.to_le_bytes().to_vec(); // a Private Enterprise Number
    custom.extend_from_slice(b"note");
    let cases: [(&str, Vec<u8>); 4] = [
        ("empty-local-use", corpus::block(0x8000_0001, &[])),
        ("custom", corpus::block(0x0000_0BAD, &custom)),
        ("custom-no-copy", corpus::block(0x4000_0BAD, &custom)),
        ("local-use-body", corpus::block(0xC0FF_EE00, &[7; 40])),
    ];
    for (name, middle) in cases {
        let (bytes, _) = corpus::pcapng(200, &middle, 200);
        let file = write(&dir, &format!("{name}.pcapng"), &bytes);
        let out = replay(&dir, &file);
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        assert_eq!(out.packets(), 400, "{name}: {}", out.stderr);
        assert_eq!(out.counter("farmwatch_capture_unread_blocks_total"), 1);
        assert!(
            out.stderr
                .contains("1 pcapng block(s) of types not read skipped"),
            "{name}: {}",
            out.stderr
        );
        if let Some(n) = tshark_count(&file) {
            assert_eq!(n, 400, "{name}: tshark disagrees");
        }
    }
}

/// Issue 18 row 8: 100,000 interface blocks in a small .gz took 1.99 GB. The interface
/// table holds 65,536 per section; one more stops the file (exit 1), within 256 MiB.
#[test]
fn interfaces_beyond_the_table_stop_the_file_within_a_memory_bound() {
    let time = Path::new("/usr/bin/time");
    if !require(time.exists(), "GNU time (/usr/bin/time)") {
        return;
    }
    let dir = scratch("hostile-many-interfaces");
    let file = write(
        &dir,
        "interfaces.pcapng.gz",
        &corpus::many_interfaces(100_000),
    );
    let rss = dir.join("rss");
    let wrap = ["/usr/bin/time", "-f", "%M", "-o", rss.to_str().unwrap()];
    let out = replay_with(&dir, &[file.to_str().unwrap()], Stdio::null(), Some(&wrap));
    // Section header 28 bytes, interface 0 20, its packet 92 bytes, then interfaces.
    let offset = 28 + 20 + 92 + 65_535 * 20;
    out.stopped(&file.display().to_string(), offset);
    assert!(
        out.last_line()
            .ends_with("more than 65536 interfaces in one section"),
        "{}",
        out.last_line()
    );
    assert_eq!(out.packets(), 1);
    // GNU time writes "Command exited with non-zero status 1" first.
    let rss = std::fs::read_to_string(&rss).unwrap();
    let kib: u64 = rss
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no max RSS in {rss:?}"));
    assert!(kib < 256 << 10, "max RSS {kib} KiB");
    // Within the limit, every interface is usable.
    let file = write(&dir, "ok.pcapng.gz", &corpus::many_interfaces(65_536));
    let out = replay(&dir, &file);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.packets(), 2);
}

/// Issue 18 row 9: a corrupt pcapng block printed the parser's buffer as numbers (one
/// stderr line of 100–790 KB). Every kind of bad block stops the file with a short line
/// naming the file and the block's offset; the packets before it are replayed.
#[test]
fn corrupt_pcapng_blocks_stop_the_file_with_a_short_line() {
    let dir = scratch("hostile-corrupt-blocks");
    let mut short_epb = 0u32.to_le_bytes().repeat(3);
    short_epb.extend_from_slice(&5000u32.to_le_bytes()); // captured length
    short_epb.extend_from_slice(&5000u32.to_le_bytes());
    short_epb.extend_from_slice(&[0x45; 40]);
    let cases: [(&str, Vec<u8>, &str); 7] = [
        (
            "below-12",
            corpus::raw_block(0x8000_0001, 8, &[], 8),
            "block length 8",
        ),
        (
            "not-4-aligned",
            corpus::raw_block(6, 22, &[0; 10], 22),
            "block length 22",
        ),
        (
            "trailer-differs",
            corpus::raw_block(6, 16, &[0; 4], 20),
            "20 at its end",
        ),
        (
            "beyond-limit",
            corpus::raw_block(6, 1 << 30, &[0; 64], 0),
            "above the limit",
        ),
        (
            "epb-caplen",
            corpus::block(6, &short_epb),
            "malformed enhanced packet",
        ),
        (
            "epb-too-short",
            corpus::block(6, &[0; 8]),
            "malformed enhanced packet",
        ),
        (
            "shb-no-magic",
            corpus::block(0x0A0D_0D0A, &[0; 16]),
            "byte-order magic",
        ),
    ];
    for (name, middle, what) in cases {
        let (mut bytes, at) = corpus::pcapng(30, &middle, 30);
        // Enough data behind the bad block for a "record cut off at the end" to be a lie.
        bytes.extend(std::iter::repeat_n(0x45, 100_000));
        let file = write(&dir, &format!("{name}.pcapng"), &bytes);
        let out = replay(&dir, &file);
        out.stopped(&file.display().to_string(), at);
        assert!(
            out.last_line().contains(what),
            "{name}: {}",
            out.last_line()
        );
        assert_eq!(out.packets(), 30, "{name}: {}", out.stderr);
    }
}

/// Issue 18 row 10: `-`, `/dev/stdin`, a FIFO and `<(...)` hung or were "not a capture"
/// (the file was opened twice to sniff gzip). Plain and gzip input work from each.
#[test]
fn stdin_fifos_and_pipes_are_read_once_gzip_too() {
    let dir = scratch("hostile-stdin");
    let plain = corpus::pcap(500);
    let file = write(&dir, "plain.pcap", &plain);
    let gz = write(&dir, "plain.pcap.gz", &corpus::gzip(&plain));
    for input in [&file, &gz] {
        let stdin = std::fs::File::open(input).unwrap();
        let out = replay_with(&dir, &["-"], stdin.into(), None);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.packets(), 500, "- < {}", input.display());

        // A pipe, read through /dev/stdin.
        let out = piped(&dir, "/dev/stdin", input, true);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.packets(), 500, "/dev/stdin from a pipe");

        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
        let out = piped(&dir, fifo.to_str().unwrap(), input, false);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.packets(), 500, "a FIFO");
    }
    // The reproduction in the issue: bash process substitution of a decompressed file.
    let script = r#"exec "$0" replay <(zcat "$1") --events /dev/null"#;
    let out = Command::new("bash")
        .args(["-c", script, support::bin()])
        .arg(&gz)
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("1 file(s), 500 packets"), "{stderr}");
    // A corrupt capture from stdin is named as such.
    let mut bytes = plain.clone();
    corpus::set_caplen(&mut bytes, 10, u32::MAX);
    let bad = write(&dir, "bad.pcap", &bytes);
    let out = replay_with(
        &dir,
        &["-"],
        std::fs::File::open(&bad).unwrap().into(),
        None,
    );
    out.stopped("stdin", corpus::pcap_record_at(10));
}

/// Replays `input` written by a thread into `target`: the replay's own stdin pipe when
/// `stdin`, else the FIFO at `target`. A replay that hangs is killed after a minute.
fn piped(dir: &Path, target: &str, input: &Path, stdin: bool) -> Outcome {
    let bytes = std::fs::read(input).unwrap();
    let metrics = dir.join("metrics.prom");
    let _ = std::fs::remove_file(&metrics);
    let events = dir.join("events.jsonl");
    let mut child = Command::new(support::bin())
        .args(["replay", target, "--events"])
        .arg(&events)
        .arg("--metrics-out")
        .arg(&metrics)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .spawn()
        .expect("run farmwatch");
    let writer = match child.stdin.take() {
        Some(mut pipe) => std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        }),
        None => {
            let fifo = PathBuf::from(target);
            std::thread::spawn(move || {
                let mut w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
                let _ = w.write_all(&bytes);
            })
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("replay of {target} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !writer.is_finished() && !stdin {
        // The replay ended without opening the FIFO: open it here to free the writer.
        let _ = std::fs::read(target);
    }
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        metrics: std::fs::read_to_string(&metrics).unwrap_or_default(),
    }
}

/// Files that are no capture are refused before any work, with one line.
#[test]
fn empty_unknown_and_missing_files_are_refused_with_one_line() {
    let dir = scratch("hostile-refused");
    let empty = write(&dir, "empty.pcap", &[]);
    replay(&dir, &empty).refused("empty.pcap: empty file, not a capture");
    let http = write(
        &dir,
        "http.pcap",
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    );
    replay(&dir, &http).refused("http.pcap: not a pcap or pcapng capture");
    let short = write(&dir, "short.pcap", &corpus::pcap(0)[..10]);
    replay(&dir, &short).refused("short.pcap: not a pcap or pcapng capture");
    replay(&dir, &dir.join("missing.pcap")).refused("missing.pcap: cannot read");
    // The report hashes its inputs again at the end, which stdin cannot give.
    let ok = write(&dir, "ok.pcap", &corpus::pcap(3));
    let report = dir.join("report.html");
    let out = Command::new(support::bin())
        .args(["replay", "-", "--report"])
        .arg(&report)
        .stdin(std::fs::File::open(&ok).unwrap())
        .output()
        .unwrap();
    let out = Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        metrics: String::new(),
    };
    out.refused("stdin: --report hashes its inputs at the end");
}
