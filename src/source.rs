//! Capture files: pcap (both byte orders, µs and ns) and pcapng (any number of sections
//! and interfaces), optionally gzip-compressed, read in pure Rust. Several files are
//! merged into one stream in timestamp order, so a replay of a rotated capture set sees
//! packets as the sensor did.

use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{PcapBlockOwned, PcapError};

use crate::timestamp::Timestamp;

/// Link-layer header types (tcpdump.org/linktypes.html) that the decoder understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkType(pub u32);

impl LinkType {
    pub const NULL: LinkType = LinkType(0);
    pub const ETHERNET: LinkType = LinkType(1);
    pub const RAW: LinkType = LinkType(101);
    pub const LOOP: LinkType = LinkType(108);
    pub const LINUX_SLL: LinkType = LinkType(113);
    pub const IPV4: LinkType = LinkType(228);
    pub const IPV6: LinkType = LinkType(229);
    pub const LINUX_SLL2: LinkType = LinkType(276);
}

/// One captured frame, borrowed from the reader's buffer: replay hands every packet on
/// without copying it. `data` may be shorter than `orig_len` when the capture's snaplen
/// cut it.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    pub ts: Timestamp,
    pub link: LinkType,
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// A frame that owns its bytes, for queues between threads (live capture) and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnedPacket {
    pub ts: Timestamp,
    pub link: LinkType,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl OwnedPacket {
    pub fn view(&self) -> Packet<'_> {
        Packet {
            ts: self.ts,
            link: self.link,
            orig_len: self.orig_len,
            data: &self.data,
        }
    }
}

impl From<Packet<'_>> for OwnedPacket {
    fn from(p: Packet<'_>) -> OwnedPacket {
        OwnedPacket {
            ts: p.ts,
            link: p.link,
            orig_len: p.orig_len,
            data: p.data.to_vec(),
        }
    }
}

impl Default for LinkType {
    fn default() -> LinkType {
        LinkType::ETHERNET
    }
}

/// A problem that stops reading a file. Truncation at the end of a file is not one of
/// them: it is counted (see [`FileReader::truncated`]) and the file ends there.
#[derive(Debug)]
pub enum SourceError {
    Open(PathBuf, io::Error),
    NotACapture(PathBuf),
    Corrupt(PathBuf, String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Open(p, e) => write!(f, "{}: cannot read: {e}", p.display()),
            SourceError::NotACapture(p) => {
                write!(f, "{}: not a pcap or pcapng capture", p.display())
            }
            SourceError::Corrupt(p, why) => write!(f, "{}: corrupt capture: {why}", p.display()),
        }
    }
}

impl std::error::Error for SourceError {}

/// Per pcapng interface: what its packets' link type and clock are.
#[derive(Clone, Copy, Debug)]
struct Interface {
    link: LinkType,
    /// Timestamp units per second (if_tsresol).
    units_per_sec: u64,
    /// Seconds added to every timestamp (if_tsoffset).
    offset_secs: i64,
}

/// What the pcap file header says about every record that follows.
#[derive(Clone, Copy, Debug)]
struct LegacyInfo {
    link: LinkType,
    nanos: bool,
}

/// Reads one capture file, record by record. The current packet stays in the reader's
/// buffer until the next [`FileReader::advance`], so it is never copied.
pub struct FileReader {
    path: PathBuf,
    reader: Box<dyn PcapReaderIterator + Send>,
    legacy: Option<LegacyInfo>,
    interfaces: Vec<Interface>,
    /// The packet at the front of the buffer, if any, and the record length to consume
    /// before the next one is read.
    current: Option<Current>,
    pending_consume: usize,
    /// Time of the last timestamped packet (simple packet blocks carry none).
    last_ts: Timestamp,
    /// Records cut off by the end of the file (at most one per file, in practice).
    pub truncated: u64,
    /// Packets whose link type or interface is unknown, skipped.
    pub skipped: u64,
    /// Bytes of the file consumed so far (compressed files: uncompressed bytes).
    pub consumed: u64,
    done: bool,
}

/// Where the current packet is: its metadata and its bytes' place in the reader's buffer.
#[derive(Clone, Copy, Debug)]
struct Current {
    ts: Timestamp,
    link: LinkType,
    orig_len: u32,
    start: usize,
    len: usize,
}
const BUFFER: usize = 1 << 20;
const MAX_BUFFER: usize = 1 << 26;

impl FileReader {
    pub fn open(path: &Path) -> Result<FileReader, SourceError> {
        let open = || File::open(path).map_err(|e| SourceError::Open(path.to_path_buf(), e));
        let file = open()?;
        let mut magic = [0u8; 2];
        let gz = match (&file).read(&mut magic) {
            Ok(2) => magic == [0x1f, 0x8b],
            Ok(_) => false,
            Err(e) => return Err(SourceError::Open(path.to_path_buf(), e)),
        };
        // Re-open rather than seek: the reader must start at byte 0 in both cases.
        let file = open()?;
        let input: Box<dyn Read + Send> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(file)
        };
        FileReader::from_reader(path, input)
    }

    pub fn from_reader(
        path: &Path,
        input: Box<dyn Read + Send>,
    ) -> Result<FileReader, SourceError> {
        let reader = match pcap_parser::create_reader(BUFFER, input) {
            Ok(r) => r,
            Err(PcapError::ReadError) => {
                return Err(SourceError::Open(
                    path.to_path_buf(),
                    io::Error::other("read failed (a damaged .gz file?)"),
                ));
            }
            Err(_) => return Err(SourceError::NotACapture(path.to_path_buf())),
        };
        Ok(FileReader::with(path, reader))
    }

    fn with(path: &Path, reader: Box<dyn PcapReaderIterator + Send>) -> FileReader {
        FileReader {
            path: path.to_path_buf(),
            reader,
            legacy: None,
            interfaces: Vec::new(),
            current: None,
            pending_consume: 0,
            last_ts: Timestamp::ZERO,
            truncated: 0,
            skipped: 0,
            consumed: 0,
            done: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves to the next packet. Ok(false) at the end of the file.
    ///
    /// Records are consumed without shifting the buffer: the rest of it moves to the front
    /// only when a refill needs the room, and then it is at most one partial record.
    pub fn advance(&mut self) -> Result<bool, SourceError> {
        self.current = None;
        if self.pending_consume > 0 {
            self.reader.consume_noshift(self.pending_consume);
            self.consumed += self.pending_consume as u64;
            self.pending_consume = 0;
        }
        while !self.done {
            // The buffer does not move between here and the end of `next`.
            let base = self.reader.data().as_ptr() as usize;
            let step = match self.reader.next() {
                Ok((len, block)) => Step::Record(
                    len,
                    match record(&mut self.legacy, &mut self.interfaces, block) {
                        Record::Packet(f) => Record::Packet(Current {
                            ts: f.ts.unwrap_or(self.last_ts),
                            link: f.link,
                            orig_len: f.orig_len,
                            // The frame's bytes lie inside the buffer the block came from.
                            start: (f.data.as_ptr() as usize).saturating_sub(base),
                            len: f.data.len(),
                        }),
                        Record::Meta => Record::Meta,
                        Record::Skipped => Record::Skipped,
                    },
                ),
                Err(PcapError::Eof) => Step::Eof,
                Err(PcapError::Incomplete(_)) => Step::Refill,
                Err(PcapError::UnexpectedEof) => Step::Truncated,
                Err(PcapError::BufferTooSmall) => Step::Grow,
                Err(PcapError::ReadError) => Step::Corrupt("read error".to_string()),
                Err(e) => Step::Corrupt(format!("{e:?}")),
            };
            match step {
                Step::Record(len, Record::Packet(current)) => {
                    self.last_ts = current.ts;
                    self.current = Some(current);
                    self.pending_consume = len;
                    return Ok(true);
                }
                Step::Record(len, other) => {
                    if matches!(other, Record::Skipped) {
                        self.skipped += 1;
                    }
                    self.reader.consume_noshift(len);
                    self.consumed += len as u64;
                }
                Step::Eof => self.done = true,
                Step::Truncated => {
                    self.truncated += 1;
                    self.done = true;
                }
                Step::Refill => self.refill(),
                Step::Grow => {
                    let size = (self.reader.position() + BUFFER).max(BUFFER * 2);
                    if size > MAX_BUFFER || !self.reader.grow(size) {
                        return Err(self.corrupt("a record larger than 64 MiB"));
                    }
                    self.refill();
                }
                Step::Corrupt(why) => return Err(self.corrupt(&why)),
            }
        }
        Ok(false)
    }

    /// The packet [`FileReader::advance`] moved to, borrowed from the buffer.
    pub fn packet(&self) -> Option<Packet<'_>> {
        let c = self.current?;
        let data = self
            .reader
            .data()
            .get(c.start..c.start.checked_add(c.len)?)?;
        Some(Packet {
            ts: c.ts,
            link: c.link,
            orig_len: c.orig_len,
            data,
        })
    }

    /// Reads more of the file; a failed read ends it as truncated.
    fn refill(&mut self) {
        if self.reader.refill().is_err() {
            self.truncated += 1;
            self.done = true;
        }
    }

    fn corrupt(&mut self, why: &str) -> SourceError {
        self.done = true;
        SourceError::Corrupt(
            self.path.clone(),
            format!("{why} after {} bytes", self.consumed),
        )
    }
}

enum Step {
    Record(usize, Record<Current>),
    Eof,
    Truncated,
    Refill,
    Grow,
    Corrupt(String),
}

enum Record<T> {
    Packet(T),
    Meta,
    Skipped,
}

/// A packet record as the block gave it; `ts` is None for blocks that carry no time.
struct Frame<'a> {
    ts: Option<Timestamp>,
    link: LinkType,
    orig_len: u32,
    data: &'a [u8],
}

fn record<'a>(
    legacy: &mut Option<LegacyInfo>,
    interfaces: &mut Vec<Interface>,
    block: PcapBlockOwned<'a>,
) -> Record<Frame<'a>> {
    match block {
        PcapBlockOwned::LegacyHeader(h) => {
            *legacy = Some(LegacyInfo {
                link: LinkType(h.network.0 as u32),
                nanos: h.is_nanosecond_precision(),
            });
            Record::Meta
        }
        PcapBlockOwned::Legacy(b) => {
            let Some(info) = legacy else {
                return Record::Skipped;
            };
            let frac = if info.nanos {
                b.ts_usec as u64
            } else {
                b.ts_usec as u64 * 1_000
            };
            Record::Packet(Frame {
                ts: Some(Timestamp(
                    (b.ts_sec as u64) * 1_000_000_000 + frac.min(999_999_999),
                )),
                link: info.link,
                orig_len: b.origlen,
                data: captured(b.data, b.caplen),
            })
        }
        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
            // Interface ids are numbered per section.
            interfaces.clear();
            Record::Meta
        }
        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
            interfaces.push(Interface {
                link: LinkType(idb.linktype.0 as u32),
                units_per_sec: idb.ts_resolution().unwrap_or(1_000_000),
                offset_secs: idb.ts_offset(),
            });
            Record::Meta
        }
        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
            let Some(iface) = interfaces.get(epb.if_id as usize) else {
                return Record::Skipped;
            };
            let raw = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
            Record::Packet(Frame {
                ts: Some(ng_time(raw, iface)),
                link: iface.link,
                orig_len: epb.origlen,
                data: captured(epb.data, epb.caplen),
            })
        }
        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
            // SPBs carry no timestamp; they belong to interface 0 (pcapng §4.4).
            let Some(iface) = interfaces.first() else {
                return Record::Skipped;
            };
            Record::Packet(Frame {
                ts: None,
                link: iface.link,
                orig_len: spb.origlen,
                data: captured(spb.data, spb.origlen),
            })
        }
        PcapBlockOwned::NG(_) => Record::Meta,
    }
}

/// The captured part of a record's data (the rest is padding).
fn captured(data: &[u8], caplen: u32) -> &[u8] {
    data.get(..caplen as usize).unwrap_or(data)
}

fn ng_time(raw: u64, iface: &Interface) -> Timestamp {
    let units = iface.units_per_sec.max(1);
    // Hostile interface options and timestamps saturate instead of overflowing.
    let secs = i64::try_from(raw / units)
        .unwrap_or(i64::MAX)
        .saturating_add(iface.offset_secs);
    let frac = raw % units;
    let nanos = (frac as u128 * 1_000_000_000 / units as u128) as u64;
    Timestamp(
        (secs.max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(nanos),
    )
}

/// Several capture files merged into one stream in timestamp order (ties keep file order).
pub struct Replay {
    readers: Vec<FileReader>,
    heap: BinaryHeap<std::cmp::Reverse<(Timestamp, usize)>>,
    /// Index of the file whose packet was handed out last, advanced on the next call.
    pending: Option<usize>,
    /// Files that stopped early on a corrupt record; the others go on.
    pub errors: Vec<SourceError>,
}

impl Replay {
    /// Opens every file first, so that an unreadable one is reported before any work.
    pub fn open(paths: &[PathBuf]) -> Result<Replay, SourceError> {
        let readers = paths
            .iter()
            .map(|p| FileReader::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut replay = Replay {
            readers,
            heap: BinaryHeap::new(),
            pending: None,
            errors: Vec::new(),
        };
        for i in 0..replay.readers.len() {
            replay.advance(i);
        }
        Ok(replay)
    }

    fn advance(&mut self, i: usize) {
        let Some(reader) = self.readers.get_mut(i) else {
            return;
        };
        match reader.advance() {
            Ok(true) => {
                if let Some(p) = reader.packet() {
                    self.heap.push(std::cmp::Reverse((p.ts, i)));
                }
            }
            Ok(false) => {}
            Err(e) => self.errors.push(e),
        }
    }

    /// The next packet in time order, or None when every file is done.
    pub fn next_packet(&mut self) -> Option<Packet<'_>> {
        if let Some(i) = self.pending.take() {
            if self.readers.len() == 1 {
                // One file: its next packet is the next one, nothing to merge.
                let reader = self.readers.get_mut(i)?;
                return match reader.advance() {
                    Ok(true) => {
                        self.pending = Some(i);
                        reader.packet()
                    }
                    Ok(false) => None,
                    Err(e) => {
                        self.errors.push(e);
                        None
                    }
                };
            }
            self.advance(i);
        }
        let std::cmp::Reverse((_, i)) = self.heap.pop()?;
        self.pending = Some(i);
        self.readers.get(i)?.packet()
    }

    pub fn readers(&self) -> &[FileReader] {
        &self.readers
    }

    /// Bytes consumed across all files, for the progress bar.
    pub fn consumed(&self) -> u64 {
        self.readers.iter().map(|r| r.consumed).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap file (LE, µs) with one 4-byte Ethernet-less record, built from the layout in
    /// draft-ietf-opsawg-pcap §4–5.
    fn tiny_pcap(magic: u32, ts_frac: u32, cut: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&magic.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&0i32.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&101u32.to_le_bytes());
        f.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        f.extend_from_slice(&ts_frac.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&60u32.to_le_bytes());
        f.extend_from_slice(&[0x45, 0, 0, 60]);
        f.truncate(f.len() - cut);
        f
    }

    fn read_all(bytes: Vec<u8>) -> Result<(Vec<OwnedPacket>, u64), SourceError> {
        let mut r = FileReader::from_reader(Path::new("t.pcap"), Box::new(io::Cursor::new(bytes)))?;
        let mut out = Vec::new();
        while r.advance()? {
            out.extend(r.packet().map(OwnedPacket::from));
        }
        Ok((out, r.truncated))
    }

    #[test]
    fn reads_microsecond_and_nanosecond_pcap() {
        let (us, _) = read_all(tiny_pcap(0xa1b2c3d4, 250_000, 0)).unwrap();
        assert_eq!(us.len(), 1);
        assert_eq!(us[0].ts.0, 1_700_000_000_250_000_000);
        assert_eq!(us[0].link, LinkType::RAW);
        assert_eq!(us[0].orig_len, 60);
        assert_eq!(us[0].data, [0x45, 0, 0, 60]);
        let (ns, _) = read_all(tiny_pcap(0xa1b23c4d, 250_000, 0)).unwrap();
        assert_eq!(ns[0].ts.0, 1_700_000_000_000_250_000);
    }

    #[test]
    fn counts_a_record_cut_off_by_the_end_of_file() {
        let (pkts, truncated) = read_all(tiny_pcap(0xa1b2c3d4, 0, 2)).unwrap();
        assert!(pkts.is_empty());
        assert_eq!(truncated, 1);
    }

    #[test]
    fn rejects_a_file_that_is_not_a_capture() {
        let err = read_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec()).unwrap_err();
        assert!(matches!(err, SourceError::NotACapture(_)), "{err}");
        let err = read_all(Vec::new()).unwrap_err();
        assert!(matches!(err, SourceError::NotACapture(_)), "{err}");
    }

    /// Regression (tests/fuzz_smoke_pipeline.rs): hostile timestamps and interface
    /// offsets saturate instead of overflowing.
    #[test]
    fn hostile_pcapng_times_saturate() {
        let iface = Interface {
            link: LinkType::ETHERNET,
            units_per_sec: 1,
            offset_secs: i64::MAX,
        };
        assert_eq!(ng_time(u64::MAX, &iface).0, u64::MAX);
    }

    #[test]
    fn pcapng_time_follows_interface_resolution() {
        let iface = Interface {
            link: LinkType::ETHERNET,
            units_per_sec: 1_000_000_000,
            offset_secs: 10,
        };
        assert_eq!(ng_time(1_500_000_000, &iface).0, 11_500_000_000);
        let binary = Interface {
            units_per_sec: 1 << 10,
            offset_secs: 0,
            ..iface
        };
        assert_eq!(ng_time(1024 + 512, &binary).0, 1_500_000_000);
    }
}
