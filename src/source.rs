//! Capture files: pcap (both byte orders, µs and ns) and pcapng (any number of sections
//! and interfaces), optionally gzip-compressed, read in pure Rust. Several files are
//! merged into one stream in timestamp order, so a replay of a rotated capture set sees
//! packets as the sensor did. Each input, `-` (stdin) and pipes included, is read once
//! from front to back: a regular file mapped into memory ([`crate::mapped`]), everything
//! else a buffer at a time.
//!
//! Nothing is lost silently (README, "Replay limits"): a length that cannot be right
//! stops its file with the byte offset, checked before the record is waited for; only a
//! record the end of the file really cuts is "cut off at the end"; pcapng blocks of types
//! not read are skipped by their length and counted.

use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pcap_parser::pcap::parse_pcap_header;
use pcap_parser::pcapng::{
    parse_enhancedpacketblock_be, parse_enhancedpacketblock_le, parse_interfacedescriptionblock_be,
    parse_interfacedescriptionblock_le, parse_sectionheaderblock, parse_simplepacketblock_be,
    parse_simplepacketblock_le,
};

use crate::mapped::{Mapping, Shared};
use crate::metrics::Stats;
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

/// One captured frame, borrowed from the reader's buffer or mapping: replay hands every
/// packet on without copying it. `data` may be shorter than `orig_len` when the capture's
/// snaplen cut it.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    pub ts: Timestamp,
    pub link: LinkType,
    pub orig_len: u32,
    pub data: &'a [u8],
    /// The mapped file `data` lies in, which other threads may share instead of copying
    /// the bytes; None for bytes read into a buffer, live capture and tests.
    pub shared: Option<&'a Shared>,
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
            shared: None,
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

/// Whether `path` is a file on disk that can be read again (not stdin, a pipe or a FIFO).
pub fn is_regular_file(path: &Path) -> bool {
    path != Path::new(STDIN) && std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// The path that names standard input on the command line.
pub const STDIN: &str = "-";

/// How a path is named in messages: `-` is standard input.
pub fn display_name(path: &Path) -> String {
    if path == Path::new(STDIN) {
        "stdin".to_string()
    } else {
        path.display().to_string()
    }
}

/// A problem that stops reading a file. Truncation at the end of a file is not one of
/// them: it is counted (see [`FileReader::truncated`]) and the file ends there.
#[derive(Debug)]
pub enum SourceError {
    /// The file cannot be opened or its first bytes read: refused before any work.
    Open(PathBuf, io::Error),
    /// The file is empty: refused before any work.
    Empty(PathBuf),
    /// The first bytes are no pcap or pcapng header: refused before any work.
    NotACapture(PathBuf),
    /// A record that cannot be right, or a failed read, `offset` bytes into the file (into
    /// the decompressed data of a .gz file). The file stops there: farmwatch does not guess
    /// where the next record starts, since a guess can invent packets.
    Corrupt {
        path: PathBuf,
        offset: u64,
        gz: bool,
        what: String,
    },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Open(p, e) => write!(f, "{}: cannot read: {e}", display_name(p)),
            SourceError::Empty(p) => write!(f, "{}: empty file, not a capture", display_name(p)),
            SourceError::NotACapture(p) => {
                write!(f, "{}: not a pcap or pcapng capture", display_name(p))
            }
            SourceError::Corrupt {
                path,
                offset,
                gz,
                what,
            } => {
                let of = if *gz { " of the decompressed data" } else { "" };
                write!(
                    f,
                    "{}: corrupt capture at byte {offset}{of}: {what}",
                    display_name(path)
                )
            }
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

/// How a file's records are parsed, as its first bytes say.
#[derive(Clone, Copy)]
enum Format {
    /// pcap: one file header, then records alike.
    Pcap(PcapFormat),
    /// pcapng: blocks, in the byte order of the section they are in.
    PcapNg { big_endian: bool },
}

/// What a pcap file header says about the records after it.
#[derive(Clone, Copy)]
struct PcapFormat {
    /// Bytes before a record's data: 16, or 24 in the "modified" (Kuznetzov) variant.
    header_len: usize,
    big_endian: bool,
    link: LinkType,
    nanos: bool,
    snaplen: u32,
    /// The longest captured length believed: the snaplen, at least [`MAX_SNAPLEN`], at most
    /// [`MAX_RECORD`].
    max_caplen: u32,
}

/// pcapng Section Header Block type and byte-order magic (pcapng §4.1).
const SHB_TYPE: u32 = 0x0A0D_0D0A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// The pcapng block types farmwatch reads (pcapng §4.2–4.4, and the obsolete Packet
/// Block, appendix A); every other type is skipped by its length, as the spec allows.
const IDB_TYPE: u32 = 1;
const OBSOLETE_PB_TYPE: u32 = 2;
const SPB_TYPE: u32 = 3;
const EPB_TYPE: u32 = 6;

/// libpcap's and Wireshark's largest snaplen for most link types: a pcap record may claim
/// up to this much even when the file header's snaplen is smaller.
const MAX_SNAPLEN: u32 = 256 << 10;
/// The largest pcap record or pcapng block read; a length beyond it is corruption.
const MAX_RECORD: u32 = 32 << 20;
/// Interfaces one pcapng section may define (65,536 × 24 bytes); one more stops the file.
const MAX_INTERFACES: usize = 1 << 16;

impl Format {
    /// What the start of a file says it is, and how many bytes the pcap file header takes
    /// (pcapng's section header is a block like the others). None: not a capture.
    fn of(start: &[u8]) -> Option<(Format, usize)> {
        if u32_at(start, 0, false) == Some(SHB_TYPE) {
            let big_endian = section_byte_order(start)?;
            return Some((Format::PcapNg { big_endian }, 0));
        }
        let (rest, h) = parse_pcap_header(start).ok()?;
        let format = PcapFormat {
            header_len: if h.is_modified_format() { 24 } else { 16 },
            big_endian: h.is_bigendian(),
            link: LinkType(h.network.0 as u32),
            nanos: h.is_nanosecond_precision(),
            snaplen: h.snaplen,
            max_caplen: h.snaplen.clamp(MAX_SNAPLEN, MAX_RECORD),
        };
        Some((Format::Pcap(format), start.len() - rest.len()))
    }
}

/// The byte order of the section whose header block starts `block`, from its byte-order
/// magic. None: not a section header.
fn section_byte_order(block: &[u8]) -> Option<bool> {
    match u32_at(block, 8, true)? {
        BYTE_ORDER_MAGIC => Some(true),
        m if m.swap_bytes() == BYTE_ORDER_MAGIC => Some(false),
        _ => None,
    }
}

fn u32_at(data: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// The part of a file not parsed yet: `bytes()[start..end]`.
struct Buffered {
    bytes: Bytes,
    start: usize,
    end: usize,
    eof: bool,
    /// Mapped files: the pages before this offset were handed back.
    dropped: usize,
    /// The offset at which more are (never, for a reader that leaves it to another).
    drop_at: usize,
}

/// Where a file's bytes are.
enum Bytes {
    /// The whole file, mapped: nothing more to read.
    Mapped(Shared),
    /// Read a buffer at a time (standard input, pipes, .gz files, and files that cannot
    /// be mapped).
    Read {
        input: Box<dyn Read + Send>,
        buf: Vec<u8>,
    },
}

/// Mapped files: the reader hands back the pages this far behind it, this many bytes at
/// a time, and maps as many ahead of it, so that a file read front to back keeps a few
/// MiB resident, not all of it (one worker reads each packet before the next is parsed).
/// Windows of 1 and 2 MiB cost the same CPU; 4 MiB cost more.
const KEEP_BEHIND: usize = 2 << 20;
const DROP_EVERY: usize = 2 << 20;
/// Pages are handed back whole: a page partly before an offset is still needed.
const PAGE: usize = 4096;
/// Several workers read packets behind the reader (their queued batches point into the
/// mapping): a page handed back comes back from the page cache for them, with the same
/// bytes, and is handed back again once the reader is this far past it, beyond what the
/// workers' queues hold (a 2-worker replay of the real mix kept 437 MB of the file
/// resident without it, 91 MB with it).
const DROP_AGAIN: usize = 32 << 20;

impl Buffered {
    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(map) => map.bytes(),
            Bytes::Read { buf, .. } => buf,
        }
    }

    fn data(&self) -> &[u8] {
        &self.bytes()[self.start..self.end]
    }

    fn shared(&self) -> Option<&Shared> {
        match &self.bytes {
            Bytes::Mapped(map) => Some(map),
            Bytes::Read { .. } => None,
        }
    }

    /// Moves past `len` parsed bytes.
    #[inline]
    fn consume(&mut self, len: usize) {
        self.start += len;
        if self.start >= self.drop_at {
            self.hand_back();
        }
    }

    /// Mapped files: hands back the pages [`KEEP_BEHIND`] and
    /// [`DROP_AGAIN`] behind. (A read buffer gets this far only for records of several
    /// MiB; it has nothing to drop.)
    #[cold]
    fn hand_back(&mut self) {
        let to = self.start - KEEP_BEHIND;
        if let Bytes::Mapped(map) = &self.bytes {
            map.drop_range(self.dropped..to);
            let again = |at: usize| at.saturating_sub(DROP_AGAIN - KEEP_BEHIND);
            map.drop_range(again(self.dropped)..again(to));
            // The pages up to the next hand-back, in one call rather than a fault each
            // 64 KiB (real mix, 1 worker: 9,400 page faults -> 950).
            map.populate(self.start..self.start + DROP_EVERY);
        }
        self.dropped = to;
        self.drop_at = self.start + DROP_EVERY;
    }

    /// Mapped files: hands back the pages before offset `to` (no further than what is
    /// parsed), once that is [`DROP_EVERY`] past the last hand-back.
    fn hand_back_before(&mut self, to: usize) {
        let to = to.min(self.start) & !(PAGE - 1);
        if to < self.dropped.saturating_add(DROP_EVERY) {
            return;
        }
        if let Bytes::Mapped(map) = &self.bytes {
            map.drop_range(self.dropped..to);
        }
        self.dropped = to;
    }

    /// Reads more of the file behind what is left; a buffer full of one unfinished record
    /// doubles (up to [`MAX_BUFFER`]). Ok(false) when the record cannot fit.
    fn fill(&mut self) -> io::Result<bool> {
        let Bytes::Read { input, buf } = &mut self.bytes else {
            // A mapping holds the whole file.
            self.eof = true;
            return Ok(true);
        };
        if self.start > 0 {
            buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == buf.len() {
            if buf.len() >= MAX_BUFFER {
                return Ok(false);
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = loop {
            match input.read(&mut buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(true)
    }
}

/// Reads one capture file, record by record: pcap records from their header, pcapng blocks
/// with pcap-parser's block parsers.
/// The current packet stays in the buffer until the next [`FileReader::advance`] (in the
/// mapping for as long as the mapping lives), so it is never copied.
pub struct FileReader {
    path: PathBuf,
    /// Whether the file is gzip-compressed (offsets are then into the decompressed data).
    gz: bool,
    input: Buffered,
    format: Format,
    interfaces: Vec<Interface>,
    /// The packet at the front of the buffer, if any, and the record length to consume
    /// before the next one is read.
    current: Option<Current>,
    pending_consume: usize,
    /// Time of the last timestamped packet (simple packet blocks carry none).
    last_ts: Timestamp,
    /// Records cut off by the end of the file (at most one per file).
    pub truncated: u64,
    /// pcapng packets on an interface their section does not define, skipped.
    pub skipped: u64,
    /// pcapng blocks of types farmwatch does not read (statistics, name resolution,
    /// custom, local-use, ...), skipped by their length as the pcapng spec allows.
    pub unread_blocks: u64,
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
    /// At most [`MAX_RECORD`]: checked once, as the record is read.
    len: u32,
}

/// Read size: small enough that what the kernel copies in is still in the CPU's cache
/// when it is parsed.
const BUFFER: usize = 256 << 10;
/// Room for the largest record ([`MAX_RECORD`]) and its header.
const MAX_BUFFER: usize = 1 << 26;
/// Bytes that say what a file is: a pcap file header, or the start of a pcapng section
/// header up to its byte-order magic.
const HEADER: usize = 24;

impl FileReader {
    /// Opens a capture file, or standard input for `-`. Its first bytes are read once and
    /// handed on in front of the rest: a pipe, FIFO or `<(...)` can be neither re-opened
    /// nor sought, so gzip is told by its magic. A regular file that is not gzip is mapped
    /// (read as a stream when it cannot be).
    pub fn open(path: &Path) -> Result<FileReader, SourceError> {
        let failed = |e| SourceError::Open(path.to_path_buf(), e);
        let file = if path == Path::new(STDIN) {
            None
        } else {
            Some(File::open(path).map_err(failed)?)
        };
        let mut magic = Vec::with_capacity(2);
        match &file {
            Some(f) => f.take(2).read_to_end(&mut magic),
            None => io::stdin().take(2).read_to_end(&mut magic),
        }
        .map_err(failed)?;
        let gz = magic == [0x1f, 0x8b];
        if !gz
            && let Some(map) = file
                .as_ref()
                .and_then(|f| Mapping::new(f, &display_name(path)))
        {
            return FileReader::from_mapping(path, Arc::new(map));
        }
        let input: Box<dyn Read + Send> = match file {
            Some(f) => Box::new(f),
            None => Box::new(io::stdin()),
        };
        let input = io::Cursor::new(magic).chain(input);
        let input: Box<dyn Read + Send> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(input)))
        } else {
            Box::new(input)
        };
        let mut reader = FileReader::from_reader(path, input)?;
        reader.gz = gz;
        Ok(reader)
    }

    /// Reads a capture from `input`, a buffer at a time.
    pub fn from_reader(
        path: &Path,
        input: Box<dyn Read + Send>,
    ) -> Result<FileReader, SourceError> {
        let bytes = Bytes::Read {
            input,
            buf: vec![0; BUFFER],
        };
        FileReader::new(path, bytes, 0)
    }

    /// Reads a capture from its mapping.
    pub fn from_mapping(path: &Path, map: Shared) -> Result<FileReader, SourceError> {
        let len = map.bytes().len();
        FileReader::new(path, Bytes::Mapped(map), len)
    }

    /// A reader of the same mapped file at the same record, with its counters so far, for
    /// another thread to read on. It hands no pages back on its own: whoever follows what
    /// it reads says when ([`Replay::hand_back_before`]). None when the file is not mapped.
    pub fn walker(&self) -> Option<FileReader> {
        let Bytes::Mapped(map) = &self.input.bytes else {
            return None;
        };
        let input = Buffered {
            bytes: Bytes::Mapped(map.clone()),
            drop_at: usize::MAX,
            ..self.input
        };
        Some(FileReader {
            path: self.path.clone(),
            input,
            interfaces: self.interfaces.clone(),
            ..*self
        })
    }

    /// `end`: how many bytes `bytes` holds already.
    fn new(path: &Path, bytes: Bytes, end: usize) -> Result<FileReader, SourceError> {
        let mut input = Buffered {
            eof: matches!(bytes, Bytes::Mapped(_)),
            bytes,
            start: 0,
            end,
            dropped: 0,
            drop_at: KEEP_BEHIND + DROP_EVERY,
        };
        while input.end < HEADER && !input.eof {
            input.fill().map_err(|e| {
                let e = io::Error::other(format!("read failed (a damaged .gz file?): {e}"));
                SourceError::Open(path.to_path_buf(), e)
            })?;
        }
        if input.end == 0 {
            return Err(SourceError::Empty(path.to_path_buf()));
        }
        let Some((format, header)) = Format::of(input.data()) else {
            return Err(SourceError::NotACapture(path.to_path_buf()));
        };
        input.start = header;
        Ok(FileReader {
            path: path.to_path_buf(),
            gz: false,
            input,
            format,
            interfaces: Vec::new(),
            current: None,
            pending_consume: 0,
            last_ts: Timestamp::ZERO,
            truncated: 0,
            skipped: 0,
            unread_blocks: 0,
            consumed: header as u64,
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's mapping, if it is mapped.
    pub fn mapping(&self) -> Option<&Shared> {
        self.input.shared()
    }

    /// One line for the replay summary when records of this file were cut off or skipped.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.truncated > 0 {
            parts.push(format!(
                "{} record(s) cut off at the end of the file",
                self.truncated
            ));
        }
        if self.skipped > 0 {
            parts.push(format!(
                "{} packet(s) skipped (interface not defined in their section)",
                self.skipped
            ));
        }
        if self.unread_blocks > 0 {
            parts.push(format!(
                "{} pcapng block(s) of types not read skipped",
                self.unread_blocks
            ));
        }
        (!parts.is_empty()).then(|| format!("{}: {}", display_name(&self.path), parts.join(", ")))
    }

    /// Moves to the next packet. Ok(false) at the end of the file.
    ///
    /// A whole pcap record in what is buffered (nearly every packet) is read here, in line
    /// in the caller's loop; anything else goes on to [`advance_blocks`](Self::advance_blocks).
    /// Called for every record, the whole reader (pcapng blocks, reads, errors) cost a call
    /// and a result passed through memory per packet.
    #[inline(always)]
    pub fn advance(&mut self) -> Result<bool, SourceError> {
        self.current = None;
        let done = std::mem::take(&mut self.pending_consume);
        self.consume(done);
        if !self.done
            && let Format::Pcap(pcap) = &self.format
            && let Ok(Some((len, packet))) = pcap_record(self.input.data(), pcap)
        {
            return Ok(self.hold(len, packet));
        }
        self.advance_blocks()
    }

    /// [`advance`](Self::advance) past what the in-line case reads: pcapng blocks, more
    /// of the file to read, its end, a corrupt record.
    #[inline(never)]
    fn advance_blocks(&mut self) -> Result<bool, SourceError> {
        while !self.done {
            let data = self.input.data();
            let parsed = match self.format {
                // Every pcap record is a packet: held straight away.
                Format::Pcap(ref pcap) => match pcap_record(data, pcap) {
                    Ok(Some((len, packet))) => return Ok(self.hold(len, packet)),
                    Ok(None) => Ok(None),
                    Err(what) => Err(what),
                },
                Format::PcapNg { big_endian } => ng_block(data, big_endian, &mut self.interfaces),
            };
            let base = data.as_ptr() as usize;
            match parsed {
                Ok(Some((len, Record::Packet(f)))) => {
                    let (link, orig_len, bytes) = (f.link, f.orig_len, f.data.len());
                    // The parsers take no record beyond MAX_RECORD: this never stops a file.
                    let Some(caplen) = u32::try_from(bytes).ok().filter(|&n| n <= MAX_RECORD)
                    else {
                        let what = format!("a packet of {bytes} bytes, above {MAX_RECORD}");
                        return Err(self.corrupt(what));
                    };
                    let packet = Current {
                        ts: f.ts.unwrap_or(self.last_ts),
                        link,
                        orig_len,
                        // The frame's bytes lie inside the data the record came from.
                        start: f.data.as_ptr() as usize - base,
                        len: caplen,
                    };
                    return Ok(self.hold(len, packet));
                }
                Ok(Some((len, other))) => {
                    match other {
                        Record::Section { big_endian } => {
                            self.format = Format::PcapNg { big_endian };
                        }
                        Record::Skipped => self.skipped += 1,
                        Record::Unread => self.unread_blocks += 1,
                        Record::Packet(_) | Record::Meta => {}
                    }
                    self.consume(len);
                }
                Ok(None) => self.read_more()?,
                Err(what) => return Err(self.corrupt(what)),
            }
        }
        Ok(false)
    }

    /// Makes `packet` the current one (its `start` counted from the front of what is
    /// buffered, where its record of `len` bytes starts): true.
    #[inline]
    fn hold(&mut self, len: usize, mut packet: Current) -> bool {
        packet.start += self.input.start;
        // The next record's header, asked for now, is in the cache once this packet was
        // worked on: waiting for its first load was most of the time a mapped file's
        // reading took. Three lines: a tunnelled packet's TCP options lie past the second
        // (the decoder waited there for them). Asking for the record after the next one
        // instead (its start read from the next header) paid nothing: the stall moved to
        // that read (real mix, 1 worker: CPU 0.62 -> 0.64 s; office 0.40 -> 0.40 s).
        let next = self.input.data().get(len..).unwrap_or_default();
        crate::prefetch::bytes(next, 3);
        self.current = Some(packet);
        self.last_ts = packet.ts;
        self.pending_consume = len;
        true
    }

    fn consume(&mut self, len: usize) {
        self.input.consume(len);
        self.consumed += len as u64;
    }

    /// Reads more of the file for a record that does not fit what is buffered. The end of
    /// the file ends it, truncated if a partial record is left (a .gz file cut short is
    /// truncated too); any other failed read is reported where it happened.
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
            Ok(false) => {
                Err(self.corrupt(format!("a record does not fit in {} MiB", MAX_BUFFER >> 20)))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.truncated += 1;
                self.done = true;
                Ok(())
            }
            Err(e) => Err(self.corrupt(format!("read failed: {e}"))),
        }
    }

    /// The packet [`FileReader::advance`] moved to, borrowed from the buffer or mapping.
    #[inline]
    pub fn packet(&self) -> Option<Packet<'_>> {
        let c = self.current?;
        let data = self
            .input
            .bytes()
            .get(c.start..c.start.checked_add(c.len as usize)?)?;
        Some(Packet {
            ts: c.ts,
            link: c.link,
            orig_len: c.orig_len,
            data,
            shared: self.input.shared(),
        })
    }

    /// Stops the file at the record that starts at the current offset.
    fn corrupt(&mut self, what: String) -> SourceError {
        self.done = true;
        SourceError::Corrupt {
            path: self.path.clone(),
            offset: self.consumed,
            gz: self.gz,
            what,
        }
    }
}

/// What a record or block is to the reader.
enum Record<'a> {
    Packet(Frame<'a>),
    /// A section header: interface ids restart, and the byte order may change.
    Section {
        big_endian: bool,
    },
    Meta,
    /// A packet the reader cannot place (its interface is not defined).
    Skipped,
    /// A block of a type the reader does not read.
    Unread,
}

/// A packet record as the block gave it; `ts` is None for blocks that carry no time.
struct Frame<'a> {
    ts: Option<Timestamp>,
    link: LinkType,
    orig_len: u32,
    data: &'a [u8],
}

/// What a parser makes of the bytes at the front of the buffer: Ok(None) when they hold
/// no whole record yet, Err with a short description when the record cannot be right.
type Parsed<'a> = Result<Option<(usize, Record<'a>)>, String>;

/// One pcap record (draft-ietf-opsawg-pcap §5), read straight from its header: seconds,
/// fraction, captured and original length, in the file's byte order (the modified variant,
/// little-endian only, has 8 bytes more after them): the record's length and its packet,
/// placed from the record's start; Ok(None) and Err as for [`Parsed`]. Its captured length
/// is checked before the record is waited for, so a corrupt length mid-file is reported as
/// such instead of swallowing the rest of the file as one record cut off at the end. The
/// byte order is asked of each word (a conditional move each); reading the record by a
/// const generic order, decided once per record, cost more (callgrind office-5000, 1
/// worker: the replay's step 10.02 M -> 11.37 M Ir).
#[inline]
fn pcap_record(data: &[u8], f: &PcapFormat) -> Result<Option<(usize, Current)>, String> {
    let Some(header) = data.first_chunk::<16>() else {
        // Not a whole header yet; its captured length is checked once it is there.
        return match u32_at(data, 8, f.big_endian) {
            Some(caplen) if caplen > f.max_caplen => Err(f.too_long(caplen)),
            _ => Ok(None),
        };
    };
    let word = |at: usize| {
        let bytes = [header[at], header[at + 1], header[at + 2], header[at + 3]];
        if f.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    };
    let caplen = word(8);
    if caplen > f.max_caplen {
        return Err(f.too_long(caplen));
    }
    // No overflow: caplen is at most MAX_RECORD.
    let len = f.header_len + caplen as usize;
    if data.len() < len {
        return Ok(None);
    }
    let frac = u64::from(word(4)) * if f.nanos { 1 } else { 1_000 };
    let ts = u64::from(word(0)) * 1_000_000_000 + frac.min(999_999_999);
    Ok(Some((
        len,
        Current {
            ts: Timestamp(ts),
            link: f.link,
            orig_len: word(12),
            start: f.header_len,
            len: caplen,
        },
    )))
}

impl PcapFormat {
    /// Why a record of `caplen` captured bytes stops the file.
    #[cold]
    fn too_long(&self, caplen: u32) -> String {
        format!(
            "record of {caplen} captured bytes, above the limit of {} (file snaplen {})",
            self.max_caplen, self.snaplen
        )
    }
}

/// One pcapng block (pcapng §3.1): its framing is checked here, whatever its type, and
/// then its body by pcap-parser's parser of that type.
fn ng_block<'a>(data: &'a [u8], big_endian: bool, interfaces: &mut Vec<Interface>) -> Parsed<'a> {
    let Some(kind) = u32_at(data, 0, big_endian) else {
        return Ok(None);
    };
    // A section header carries its own byte order.
    let big_endian = if kind == SHB_TYPE {
        match data.get(..12).map(section_byte_order) {
            None => return Ok(None),
            Some(None) => return Err("section header without its byte-order magic".into()),
            Some(Some(order)) => order,
        }
    } else {
        big_endian
    };
    let Some(len) = u32_at(data, 4, big_endian) else {
        return Ok(None);
    };
    if len < 12 || len % 4 != 0 {
        return Err(format!(
            "block length {len} (a block is a multiple of 4 bytes, at least 12)"
        ));
    }
    if len > MAX_RECORD {
        return Err(format!(
            "block length {len}, above the limit of {MAX_RECORD}"
        ));
    }
    let Some(block) = data.get(..len as usize) else {
        return Ok(None);
    };
    let trailer = u32_at(block, block.len() - 4, big_endian);
    if trailer != Some(len) {
        let trailer = trailer.unwrap_or_default();
        return Err(format!(
            "block length {len} at its start but {trailer} at its end"
        ));
    }
    let bad = |name: &str| format!("malformed {name} block of {len} bytes");
    let record = match kind {
        SHB_TYPE => {
            parse_sectionheaderblock(block).map_err(|_| bad("section header"))?;
            // Interface ids are numbered per section.
            interfaces.clear();
            Record::Section { big_endian }
        }
        IDB_TYPE => {
            let (_, idb) = if big_endian {
                parse_interfacedescriptionblock_be(block)
            } else {
                parse_interfacedescriptionblock_le(block)
            }
            .map_err(|_| bad("interface description"))?;
            if interfaces.len() >= MAX_INTERFACES {
                return Err(format!(
                    "more than {MAX_INTERFACES} interfaces in one section"
                ));
            }
            interfaces.push(Interface {
                link: LinkType(idb.linktype.0 as u32),
                units_per_sec: idb.ts_resolution().unwrap_or(1_000_000),
                offset_secs: idb.ts_offset(),
            });
            Record::Meta
        }
        EPB_TYPE => {
            let (_, epb) = if big_endian {
                parse_enhancedpacketblock_be(block)
            } else {
                parse_enhancedpacketblock_le(block)
            }
            .map_err(|_| bad("enhanced packet"))?;
            let raw = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
            let data = captured(epb.data, epb.caplen);
            timed_packet(interfaces, epb.if_id, raw, epb.origlen, data)
        }
        OBSOLETE_PB_TYPE => {
            let pb = obsolete_packet(block, big_endian).ok_or_else(|| bad("packet"))?;
            timed_packet(interfaces, pb.if_id, pb.raw_ts, pb.orig_len, pb.data)
        }
        SPB_TYPE => {
            let (_, spb) = if big_endian {
                parse_simplepacketblock_be(block)
            } else {
                parse_simplepacketblock_le(block)
            }
            .map_err(|_| bad("simple packet"))?;
            // SPBs carry no timestamp; they belong to interface 0 (pcapng §4.4).
            match interfaces.first() {
                Some(iface) => Record::Packet(Frame {
                    ts: None,
                    link: iface.link,
                    orig_len: spb.origlen,
                    data: captured(spb.data, spb.origlen),
                }),
                None => Record::Skipped,
            }
        }
        _ => Record::Unread,
    };
    Ok(Some((block.len(), record)))
}

/// A packet with a pcapng timestamp, on the interface its block names.
fn timed_packet<'a>(
    interfaces: &[Interface],
    if_id: u32,
    raw_ts: u64,
    orig_len: u32,
    data: &'a [u8],
) -> Record<'a> {
    match interfaces.get(if_id as usize) {
        Some(iface) => Record::Packet(Frame {
            ts: Some(ng_time(raw_ts, iface)),
            link: iface.link,
            orig_len,
            data,
        }),
        None => Record::Skipped,
    }
}

/// The obsolete Packet Block (pcapng appendix A; old Wireshark and libpcap wrote it):
/// interface id u16, drops u16, timestamp high and low, captured and original length,
/// data, options. pcap-parser does not parse it.
struct ObsoletePacket<'a> {
    if_id: u32,
    raw_ts: u64,
    orig_len: u32,
    data: &'a [u8],
}

fn obsolete_packet(block: &[u8], big_endian: bool) -> Option<ObsoletePacket<'_>> {
    let word = |at| u32_at(block, at, big_endian);
    let if_id = if big_endian {
        word(8)? >> 16
    } else {
        word(8)? & 0xffff
    };
    let raw_ts = (u64::from(word(12)?) << 32) | u64::from(word(16)?);
    let caplen = word(20)? as usize;
    let body_end = block.len().checked_sub(4)?;
    let data = block.get(28..body_end)?.get(..caplen)?;
    Some(ObsoletePacket {
        if_id,
        raw_ts,
        orig_len: word(24)?,
        data,
    })
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

/// Where a replay's packet lies: bytes `offset..offset + len` of file `file` (an index
/// into [`Replay::readers`]), of its mapping when the file is mapped. A record is at most
/// [`MAX_RECORD`] bytes, so its length is a u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spot {
    pub file: usize,
    pub offset: usize,
    pub len: u32,
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
    #[inline]
    pub fn next_packet(&mut self) -> Option<Packet<'_>> {
        let i = self.step()?;
        self.readers.get(i)?.packet()
    }

    /// The next packet in time order and where it lies, or None when every file is done.
    #[inline]
    pub fn next_packet_at(&mut self) -> Option<(Packet<'_>, Spot)> {
        let i = self.step()?;
        self.at(i)
    }

    /// Moves on to the next packet in time order: the file it is in, or None when every
    /// file is done.
    #[inline]
    fn step(&mut self) -> Option<usize> {
        if let Some(i) = self.pending.take() {
            if self.readers.len() == 1 {
                // One file: its next packet is the next one, nothing to merge.
                return match self.readers.get_mut(i)?.advance() {
                    Ok(true) => {
                        self.pending = Some(i);
                        Some(i)
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
        Some(i)
    }

    /// The current packet of file `i`, and where it lies.
    #[inline]
    fn at(&self, i: usize) -> Option<(Packet<'_>, Spot)> {
        let reader = self.readers.get(i)?;
        let c = reader.current?;
        let spot = Spot {
            file: i,
            offset: c.start,
            len: c.len,
        };
        Some((reader.packet()?, spot))
    }

    pub fn readers(&self) -> &[FileReader] {
        &self.readers
    }

    /// Adds what the files lost or skipped to the replay's counters.
    pub fn count_into(&self, stats: &mut Stats) {
        for r in &self.readers {
            stats.truncated_records += r.truncated;
            stats.capture_skipped_records += r.skipped;
            stats.capture_unread_blocks += r.unread_blocks;
        }
        stats.capture_corrupt_files += self.errors.len() as u64;
    }

    /// The same replay at the same packet, over the same mapped files, for a thread of its
    /// own to read on (see [`FileReader::walker`]); the errors so far stay here. None unless
    /// every file is mapped.
    pub fn walker(&self) -> Option<Replay> {
        let readers = self
            .readers
            .iter()
            .map(FileReader::walker)
            .collect::<Option<Vec<_>>>()?;
        Some(Replay {
            readers,
            heap: self.heap.clone(),
            pending: self.pending,
            errors: Vec::new(),
        })
    }

    /// How far each file is read: an offset per file before which none of its packets is
    /// still to come (the packet handed out last, and each file's next, lie after it).
    pub fn read_to(&self) -> Vec<usize> {
        self.readers.iter().map(|r| r.input.start).collect()
    }

    /// Mapped files: hands back each file's pages before `to` (as [`Replay::read_to`] gave
    /// it), a few MiB at a time: whoever works on this replay's packets is past them.
    pub fn hand_back_before(&mut self, to: &[usize]) {
        for (reader, &to) in self.readers.iter_mut().zip(to) {
            reader.input.hand_back_before(to);
        }
    }

    /// Takes over where `walker` (made by [`Replay::walker`]) got to: its files, and the
    /// errors it met after this one's.
    pub fn take_over(&mut self, walker: Replay) {
        self.readers = walker.readers;
        self.heap = walker.heap;
        self.pending = walker.pending;
        self.errors.extend(walker.errors);
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

    /// A record header is read in the file's byte order, and the modified variant's 8 bytes
    /// more are skipped.
    #[test]
    fn reads_big_endian_and_modified_pcap() {
        let file = |magic: u32, big_endian: bool, extra: usize| {
            let word = |v: u32| {
                if big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let mut f = word(magic).to_vec();
            f.extend_from_slice(&if big_endian {
                [0, 2, 0, 4]
            } else {
                [2, 0, 4, 0]
            });
            for v in [0, 0, 65535, 101, 1_700_000_000, 999_999, 3, 60] {
                f.extend_from_slice(&word(v));
            }
            f.extend(std::iter::repeat_n(0xee, extra));
            f.extend_from_slice(&[0x45, 0, 0]);
            f
        };
        for (magic, big_endian, extra) in [(0xa1b2c3d4, true, 0), (0xa1b2cd34, false, 8)] {
            let (pkts, truncated) = read_all(file(magic, big_endian, extra)).unwrap();
            assert_eq!(truncated, 0);
            assert_eq!(pkts.len(), 1);
            assert_eq!(
                (pkts[0].ts.0, pkts[0].orig_len),
                (1_700_000_000_999_999_000, 60)
            );
            assert_eq!(&pkts[0].data[..], [0x45, 0, 0]);
        }
    }

    /// A reader that hands out at most `step` bytes a call, like a pipe or a gzip stream.
    struct Trickle(io::Cursor<Vec<u8>>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    /// A pcap file (LE, µs, raw IP, snaplen 1 MiB) of records with the given data lengths.
    fn pcap_of(lens: &[usize]) -> Vec<u8> {
        let mut f = tiny_pcap(0xa1b2c3d4, 0, 20);
        f[16..20].copy_from_slice(&(1u32 << 20).to_le_bytes());
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

    /// A file of this test process's own in the temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> TempFile {
            let path = std::env::temp_dir().join(format!("fw-{}-{name}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Every packet of `r`, whether it was mapped, and what was cut off.
    fn drain(mut r: FileReader) -> (Vec<OwnedPacket>, bool, u64, u64) {
        let mut out = Vec::new();
        let mut mapped = true;
        while r.advance().unwrap() {
            let p = r.packet().unwrap();
            mapped &= p.shared.is_some();
            out.push(OwnedPacket::from(p));
        }
        (out, mapped, r.truncated, r.consumed)
    }

    /// A regular file is mapped, and reads as the same bytes read as a stream do: records
    /// far beyond the pages handed back behind the reader, one larger than the read
    /// buffer, and a last one cut off.
    #[test]
    fn a_mapped_file_reads_as_the_stream_does() {
        let mut lens = vec![1500; 2 * (KEEP_BEHIND + DROP_EVERY) / 1500];
        lens.extend([60, BUFFER * 3 + 7, 0, 40]);
        let bytes = pcap_of(&lens);
        for cut in [0, 30] {
            let bytes = &bytes[..bytes.len() - cut];
            let file = TempFile::new(&format!("mapped-{cut}.pcap"), bytes);
            let (mapped, is_mapped, truncated, consumed) =
                drain(FileReader::open(&file.0).unwrap());
            let input = Box::new(io::Cursor::new(bytes.to_vec()));
            let (read, is_read_mapped, ..) =
                drain(FileReader::from_reader(&file.0, input).unwrap());
            assert!(is_mapped && !is_read_mapped);
            assert_eq!(mapped, read);
            assert_eq!(mapped.len(), lens.len() - usize::from(cut > 0));
            assert_eq!(truncated, u64::from(cut > 0));
            assert_eq!(
                consumed,
                (bytes.len() - if cut > 0 { 40 + 16 - cut } else { 0 }) as u64
            );
        }
    }

    /// A .gz file is read as a stream (its offsets are into the decompressed data).
    #[test]
    fn a_gz_file_is_read_not_mapped() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &pcap_of(&[60, 70])).unwrap();
        let file = TempFile::new("read.pcap.gz", &gz.finish().unwrap());
        let (pkts, mapped, truncated, _) = drain(FileReader::open(&file.0).unwrap());
        assert_eq!((pkts.len(), mapped, truncated), (2, false, 0));
    }

    /// Every packet of `replay` from where it is, and the records cut off.
    fn replay_all(mut replay: Replay) -> (Vec<OwnedPacket>, u64) {
        let mut out = Vec::new();
        while let Some(p) = replay.next_packet() {
            out.push(OwnedPacket::from(p));
        }
        let mut stats = Stats::default();
        replay.count_into(&mut stats);
        (out, stats.truncated_records)
    }

    /// Walkers of a replay of mapped files, handing pages back or not, read what the replay
    /// reads, files merged alike and a cut-off record counted alike; a replay with a file
    /// read as a stream has none.
    #[test]
    fn walkers_of_mapped_files_read_what_the_replay_reads() {
        let mut lens = vec![1500; 2 * (KEEP_BEHIND + DROP_EVERY) / 1500];
        lens.extend([60, 40]);
        let big = pcap_of(&lens);
        let small = pcap_of(&[70, 80, 90]);
        let a = TempFile::new("walk-a.pcap", &big[..big.len() - 10]);
        let b = TempFile::new("walk-b.pcap", &small);
        let replay = Replay::open(&[a.0.clone(), b.0.clone()]).unwrap();
        let lead = replay.walker().unwrap();
        let follower = replay.walker().unwrap();
        let expected = replay_all(replay);
        assert_eq!(expected.0.len(), lens.len() - 1 + 3);
        assert_eq!(expected.1, 1);
        assert_eq!(replay_all(lead), expected);
        assert_eq!(replay_all(follower), expected);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &small).unwrap();
        let c = TempFile::new("walk-c.pcap.gz", &gz.finish().unwrap());
        let mixed = Replay::open(&[a.0.clone(), c.0.clone()]).unwrap();
        assert!(mixed.walker().is_none());
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
        assert!(matches!(err, SourceError::Empty(_)), "{err}");
    }

    /// Regression (issue 18): a corrupt captured length mid-file was waited for until the
    /// end of the file and counted as one record cut off there; the rest was lost.
    #[test]
    fn a_captured_length_beyond_the_limit_stops_the_file_where_it_is() {
        let mut bytes = pcap_of(&[60, 60, 60]);
        let second = 24 + 16 + 60;
        bytes[second + 8..second + 12].copy_from_slice(&(300u32 << 20).to_le_bytes());
        let input = Box::new(io::Cursor::new(bytes.clone()));
        let mut r = FileReader::from_reader(Path::new("t.pcap"), input).unwrap();
        assert!(r.advance().unwrap());
        let err = r.advance().unwrap_err();
        assert!(
            matches!(err, SourceError::Corrupt { offset, .. } if offset == second as u64),
            "{err}"
        );
        assert!(!r.advance().unwrap());
        assert_eq!(r.truncated, 0);
        // A header cut after its captured length is judged by that length too.
        let err = read_all(bytes[..second + 12].to_vec()).unwrap_err();
        assert!(
            matches!(err, SourceError::Corrupt { offset, .. } if offset == second as u64),
            "{err}"
        );
        // Within the limit, a record cut by the end of the file is still a truncation.
        let (_, truncated) = read_all(pcap_of(&[60, 70_000])[..200].to_vec()).unwrap();
        assert_eq!(truncated, 1);
    }

    /// The obsolete Packet Block (type 2) carries packets; it is read, not skipped.
    #[test]
    fn reads_the_obsolete_packet_block() {
        let block = |kind: u32, body: &[u8]| {
            let len = (body.len() + 12) as u32;
            let mut b = kind.to_be_bytes().to_vec();
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(body);
            b.extend_from_slice(&len.to_be_bytes());
            b
        };
        let mut shb = 0x1a2b_3c4d_u32.to_be_bytes().to_vec();
        shb.extend_from_slice(&[0, 1, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut pb = vec![0, 0, 0, 7];
        for v in [0u32, 1_000_000, 3, 60] {
            pb.extend_from_slice(&v.to_be_bytes());
        }
        pb.extend_from_slice(&[0x45, 0, 0, 0]);
        let mut bytes = block(SHB_TYPE, &shb);
        bytes.extend(block(IDB_TYPE, &[0, 101, 0, 0, 0, 0, 0, 0]));
        bytes.extend(block(OBSOLETE_PB_TYPE, &pb));
        let (pkts, truncated) = read_all(bytes).unwrap();
        assert_eq!(truncated, 0);
        assert_eq!(pkts.len(), 1);
        assert_eq!((pkts[0].ts.0, pkts[0].orig_len), (1_000_000_000, 60));
        assert_eq!(
            (pkts[0].link, &pkts[0].data[..]),
            (LinkType::RAW, &[0x45, 0, 0][..])
        );
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
