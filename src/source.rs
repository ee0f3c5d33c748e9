//! Capture files: pcap (both byte orders, µs and ns) and pcapng (any number of sections
//! and interfaces), optionally gzip-compressed, read in pure Rust. Several files are
//! merged into one stream in timestamp order, so a replay of a rotated capture set sees
//! packets as the sensor did.

use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_parser::PcapError;
use pcap_parser::nom::{self, IResult};
use pcap_parser::pcap::{
    LegacyPcapBlock, parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified,
    parse_pcap_header,
};
use pcap_parser::pcapng::{Block, parse_block_be, parse_block_le, parse_sectionheaderblock};

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

/// One of pcap-parser's pcap record parsers.
type RecordParser = fn(&[u8]) -> IResult<&[u8], LegacyPcapBlock<'_>, PcapError<&[u8]>>;

/// How a file's records are parsed, as its first bytes say.
#[derive(Clone, Copy)]
enum Format {
    /// pcap: one file header, then records alike (the parser fits the header's byte order
    /// and variant).
    Pcap {
        parse: RecordParser,
        link: LinkType,
        nanos: bool,
    },
    /// pcapng: blocks, in the byte order of the section they are in.
    PcapNg { big_endian: bool },
}

impl Format {
    /// What the start of a file says it is, and how many bytes the pcap file header takes
    /// (pcapng's section header is a block like the others). None: not a capture.
    fn of(start: &[u8]) -> Option<(Format, usize)> {
        if let Ok((_, shb)) = parse_sectionheaderblock(start) {
            let big_endian = shb.big_endian();
            return Some((Format::PcapNg { big_endian }, 0));
        }
        let (rest, h) = parse_pcap_header(start).ok()?;
        let parse = if h.is_modified_format() {
            parse_pcap_frame_modified
        } else if h.is_bigendian() {
            parse_pcap_frame_be
        } else {
            parse_pcap_frame
        };
        let format = Format::Pcap {
            parse,
            link: LinkType(h.network.0 as u32),
            nanos: h.is_nanosecond_precision(),
        };
        Some((format, start.len() - rest.len()))
    }
}

/// The part of a file read but not parsed yet.
struct Buffered {
    input: Box<dyn Read + Send>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Buffered {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more of the file behind what is left; a buffer full of one unfinished record
    /// doubles (up to [`MAX_BUFFER`]). Ok(false) when the record cannot fit.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_BUFFER {
                return Ok(false);
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(true)
    }
}

/// Reads one capture file, record by record, with pcap-parser's record and block parsers.
/// The current packet stays in the buffer until the next [`FileReader::advance`], so it
/// is never copied.
pub struct FileReader {
    path: PathBuf,
    input: Buffered,
    format: Format,
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

/// Where the current packet is: its metadata and its bytes' place in the buffer.
#[derive(Clone, Copy, Debug)]
struct Current {
    ts: Timestamp,
    link: LinkType,
    orig_len: u32,
    start: usize,
    len: usize,
}

/// Read size: small enough that what the kernel copies in is still in the CPU's cache
/// when it is parsed.
const BUFFER: usize = 256 << 10;
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
        let mut input = Buffered {
            input,
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
            eof: false,
        };
        // Enough of the file to see what it is: a pcap header, or a section header block
        // (whose options may be long).
        while input.end < 4096 && !input.eof {
            input.fill().map_err(|e| {
                let e = io::Error::other(format!("read failed (a damaged .gz file?): {e}"));
                SourceError::Open(path.to_path_buf(), e)
            })?;
        }
        let Some((format, header)) = Format::of(input.data()) else {
            return Err(SourceError::NotACapture(path.to_path_buf()));
        };
        input.start = header;
        Ok(FileReader {
            path: path.to_path_buf(),
            input,
            format,
            interfaces: Vec::new(),
            current: None,
            pending_consume: 0,
            last_ts: Timestamp::ZERO,
            truncated: 0,
            skipped: 0,
            consumed: header as u64,
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves to the next packet. Ok(false) at the end of the file.
    pub fn advance(&mut self) -> Result<bool, SourceError> {
        self.current = None;
        let done = std::mem::take(&mut self.pending_consume);
        self.consume(done);
        while !self.done {
            let data = self.input.data();
            let parsed = match self.format {
                Format::Pcap { parse, link, nanos } => parse(data).map(|(rest, b)| {
                    (
                        data.len() - rest.len(),
                        Record::Packet(legacy_frame(b, link, nanos)),
                    )
                }),
                Format::PcapNg { big_endian } => {
                    let parse = if big_endian {
                        parse_block_be
                    } else {
                        parse_block_le
                    };
                    parse(data).map(|(rest, block)| {
                        if let Block::SectionHeader(shb) = &block {
                            self.format = Format::PcapNg {
                                big_endian: shb.big_endian(),
                            };
                        }
                        let len = data.len() - rest.len();
                        (len, ng_record(&mut self.interfaces, block))
                    })
                }
            };
            let base = data.as_ptr() as usize;
            match parsed {
                Ok((len, Record::Packet(f))) => {
                    let ts = f.ts.unwrap_or(self.last_ts);
                    self.current = Some(Current {
                        ts,
                        link: f.link,
                        orig_len: f.orig_len,
                        // The frame's bytes lie inside the data the record came from.
                        start: self.input.start + (f.data.as_ptr() as usize - base),
                        len: f.data.len(),
                    });
                    self.last_ts = ts;
                    self.pending_consume = len;
                    return Ok(true);
                }
                Ok((len, other)) => {
                    if matches!(other, Record::Skipped) {
                        self.skipped += 1;
                    }
                    self.consume(len);
                }
                Err(nom::Err::Incomplete(_)) => self.read_more()?,
                Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
                    let why = format!("{e:?}");
                    return Err(self.corrupt(&why));
                }
            }
        }
        Ok(false)
    }

    fn consume(&mut self, len: usize) {
        self.input.start += len;
        self.consumed += len as u64;
    }

    /// Reads more of the file for a record that does not fit what is buffered. The end of
    /// the file ends it, truncated if a partial record is left; so does a failed read.
    fn read_more(&mut self) -> Result<(), SourceError> {
        if self.input.eof {
            self.done = true;
            if !self.input.data().is_empty() {
                self.truncated += 1;
            }
            return Ok(());
        }
        match self.input.fill() {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.corrupt("a record larger than 64 MiB")),
            Err(_) => {
                self.truncated += 1;
                self.done = true;
                Ok(())
            }
        }
    }

    /// The packet [`FileReader::advance`] moved to, borrowed from the buffer.
    pub fn packet(&self) -> Option<Packet<'_>> {
        let c = self.current?;
        let data = self.input.buf.get(c.start..c.start.checked_add(c.len)?)?;
        Some(Packet {
            ts: c.ts,
            link: c.link,
            orig_len: c.orig_len,
            data,
        })
    }

    fn corrupt(&mut self, why: &str) -> SourceError {
        self.done = true;
        SourceError::Corrupt(
            self.path.clone(),
            format!("{why} after {} bytes", self.consumed),
        )
    }
}

/// What a record or block is to the reader.
enum Record<'a> {
    Packet(Frame<'a>),
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

fn legacy_frame(b: LegacyPcapBlock<'_>, link: LinkType, nanos: bool) -> Frame<'_> {
    let frac = if nanos {
        b.ts_usec as u64
    } else {
        b.ts_usec as u64 * 1_000
    };
    Frame {
        ts: Some(Timestamp(
            (b.ts_sec as u64) * 1_000_000_000 + frac.min(999_999_999),
        )),
        link,
        orig_len: b.origlen,
        data: captured(b.data, b.caplen),
    }
}

fn ng_record<'a>(interfaces: &mut Vec<Interface>, block: Block<'a>) -> Record<'a> {
    match block {
        Block::SectionHeader(_) => {
            // Interface ids are numbered per section.
            interfaces.clear();
            Record::Meta
        }
        Block::InterfaceDescription(idb) => {
            interfaces.push(Interface {
                link: LinkType(idb.linktype.0 as u32),
                units_per_sec: idb.ts_resolution().unwrap_or(1_000_000),
                offset_secs: idb.ts_offset(),
            });
            Record::Meta
        }
        Block::EnhancedPacket(epb) => {
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
        Block::SimplePacket(spb) => {
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
        _ => Record::Meta,
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

    /// A reader that hands out at most `step` bytes a call, like a pipe or a gzip stream.
    struct Trickle(io::Cursor<Vec<u8>>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    /// A pcap file (LE, µs, raw IP) of records with the given data lengths.
    fn pcap_of(lens: &[usize]) -> Vec<u8> {
        let mut f = tiny_pcap(0xa1b2c3d4, 0, 20);
        for (i, &len) in lens.iter().enumerate() {
            for v in [i as u32, 0, len as u32, len as u32] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend((0..len).map(|b| (b + i) as u8));
        }
        f
    }

    #[test]
    fn records_larger_than_the_buffer_and_reads_of_any_size() {
        let lens = [60, BUFFER * 3 + 7, 1500, 0, 40];
        let bytes = pcap_of(&lens);
        for step in [1, 1000, BUFFER - 1, usize::MAX] {
            let input = Box::new(Trickle(io::Cursor::new(bytes.clone()), step));
            let mut r = FileReader::from_reader(Path::new("t.pcap"), input).unwrap();
            let mut seen = Vec::new();
            while r.advance().unwrap() {
                let p = r.packet().unwrap();
                let i = seen.len();
                assert!(p.data.iter().enumerate().all(|(b, &v)| v == (b + i) as u8));
                assert_eq!(p.ts.secs(), i as u64);
                seen.push(p.data.len());
            }
            assert_eq!(seen, lens, "read {step} bytes at a time");
            assert_eq!((r.truncated, r.consumed), (0, bytes.len() as u64));
        }
        // Cut inside the big record: what came before is read, the cut is counted.
        let cut = bytes[..24 + 16 + 60 + 16 + BUFFER].to_vec();
        let input = Box::new(Trickle(io::Cursor::new(cut), 4096));
        let mut r = FileReader::from_reader(Path::new("t.pcap"), input).unwrap();
        assert!(r.advance().unwrap());
        assert!(!r.advance().unwrap());
        assert!(!r.advance().unwrap());
        assert_eq!(r.truncated, 1);
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
