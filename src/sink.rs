//! Output sinks: JSON lines to a file or stdout. Lines leave whole or not at all: a batch
//! that fails part-way is cut back to its last whole line, and every record that did not
//! reach the output is counted, so a full disk is reported exactly, never silent. A reader
//! that goes away (`farmwatch replay … | head -1`) ends the output quietly, as in any Unix
//! tool.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where a sink writes: a file (appended to, so a restart never truncates evidence) or
/// standard output (`-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Target {
        if s == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("standard output"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Bytes of whole lines gathered before they go out in one batch.
const BATCH: usize = 1 << 16;

/// What a sink writes to.
enum Out {
    /// A file or standard output, written by file descriptor so that a batch cut short by a
    /// full disk can be cut back to its last whole line.
    File(File),
    /// A writer of the caller's (live workers share one file this way); it must take each
    /// batch in one `write` call, whole or not at all.
    Writer(Box<dyn Write + Send>),
}

pub struct JsonLines {
    target: Target,
    out: Out,
    /// Whole lines not yet written, and how many.
    batch: Vec<u8>,
    batched: u64,
    /// Records that reached the output.
    pub written: u64,
    /// Records that did not: failed writes and records that could not be serialized.
    pub errors: u64,
    pub first_error: Option<io::Error>,
    /// The reader of a pipe went away: later records are dropped without complaint.
    reader_gone: bool,
}

impl JsonLines {
    pub fn open(target: Target) -> io::Result<JsonLines> {
        let out = Out::File(open_file(&target)?);
        Ok(JsonLines::new(target, out))
    }

    /// A sink over a writer of the caller's; `target` names it in errors. Lines reach `out`
    /// only whole, in `write` calls of whole lines.
    pub fn with_writer(target: Target, out: Box<dyn Write + Send>) -> JsonLines {
        JsonLines::new(target, Out::Writer(out))
    }

    fn new(target: Target, out: Out) -> JsonLines {
        JsonLines {
            target,
            out,
            batch: Vec::with_capacity(BATCH + 1024),
            batched: 0,
            written: 0,
            errors: 0,
            first_error: None,
            reader_gone: false,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn write<T: Serialize>(&mut self, record: &T) {
        self.write_with(|line| serde_json::to_writer(line, record));
    }

    /// Writes the line `fill` appends JSON to (for records that write themselves, like
    /// [`FlowRecord::write_json`](crate::flows::record::FlowRecord::write_json)).
    pub fn write_with(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) {
        if self.reader_gone {
            return;
        }
        let start = self.batch.len();
        if let Err(e) = fill(&mut self.batch) {
            self.batch.truncate(start);
            self.errors += 1;
            self.note(io::Error::other(e));
            return;
        }
        self.batch.push(b'\n');
        self.batched += 1;
        if self.batch.len() >= BATCH {
            let _ = self.flush();
        }
    }

    /// Writes the gathered lines. On failure, the lines that were not written whole are
    /// counted in `errors` (and a torn last line is cut off the file); the error is returned
    /// and the first one kept. A reader that went away is no error.
    pub fn flush(&mut self) -> io::Result<()> {
        let result = self.write_batch();
        self.batch.clear();
        self.batched = 0;
        let flushed = result.and_then(|()| match &mut self.out {
            Out::File(_) => Ok(()),
            Out::Writer(w) => w.flush(),
        });
        match flushed {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.reader_gone = true;
                Ok(())
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.note(e);
                Err(copy)
            }
            Ok(()) => Ok(()),
        }
    }

    /// Sends the batch out; on error, counts what did not arrive whole.
    fn write_batch(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let (sent, result) = match &mut self.out {
            Out::File(f) => write_counting(f, &self.batch),
            Out::Writer(w) => match w.write_all(&self.batch) {
                Ok(()) => (self.batch.len(), Ok(())),
                Err(e) => (0, Err(e)),
            },
        };
        let whole = self.batch[..sent]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if let (Out::File(f), true) = (&mut self.out, whole < sent) {
            cut_torn_line(f, (sent - whole) as u64);
        }
        let lines = if whole == self.batch.len() {
            self.batched
        } else {
            self.batch[..whole].iter().filter(|&&b| b == b'\n').count() as u64
        };
        self.written += lines;
        if let Err(e) = &result
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            self.errors += self.batched - lines;
        }
        result
    }

    /// Flushes and reopens the file (after logrotate moved it away).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.flush()?;
        if let Out::File(f) = &mut self.out {
            *f = open_file(&self.target)?;
        }
        Ok(())
    }

    fn note(&mut self, e: io::Error) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

impl Drop for JsonLines {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Writes `buf` with as few `write(2)` calls as the kernel allows; returns the bytes that
/// went out before an error, if any.
fn write_counting(f: &mut File, buf: &[u8]) -> (usize, io::Result<()>) {
    let mut sent = 0;
    while sent < buf.len() {
        match f.write(&buf[sent..]) {
            Ok(0) => return (sent, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (sent, Err(e)),
        }
    }
    (sent, Ok(()))
}

/// Removes the last `torn` bytes of a regular file (a line cut short by a full disk), so
/// every line of the file is whole. Pipes and devices cannot be cut; nothing is done.
fn cut_torn_line(f: &mut File, torn: u64) {
    let Ok(meta) = f.metadata() else { return };
    if !meta.is_file() {
        return;
    }
    let len = meta.len().saturating_sub(torn);
    // Shrinking needs no space. The offset moves back too, for an fd not in append mode
    // (a shell's `>`), so the next line follows on rather than after a hole.
    if f.set_len(len).is_ok() {
        let _ = f.seek(SeekFrom::Start(len));
    }
}

/// Opens `target` for appending, creating a missing file. Standard output is duplicated,
/// so its writes bypass Rust's line buffer and reach the descriptor in whole batches.
pub fn open_file(target: &Target) -> io::Result<File> {
    match target {
        Target::Stdout => Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?)),
        Target::File(p) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
    }
}

/// [`open_file`] as a writer.
pub fn open_target(target: &Target) -> io::Result<Box<dyn Write + Send>> {
    Ok(Box::new(open_file(target)?))
}

/// A replay's sink: a file is truncated first, as a replay's outputs describe that replay
/// only.
pub fn create(target: &Target) -> io::Result<JsonLines> {
    if let Target::File(path) = target {
        File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    JsonLines::open(target.clone())
}

/// The first bytes of files no output may overwrite: captures, plain or compressed.
const CAPTURE_MAGICS: [(&[u8], &str); 6] = [
    (&[0xd4, 0xc3, 0xb2, 0xa1], "a pcap capture"),
    (&[0xa1, 0xb2, 0xc3, 0xd4], "a pcap capture"),
    (&[0x4d, 0x3c, 0xb2, 0xa1], "a pcap capture"),
    (&[0xa1, 0xb2, 0x3c, 0x4d], "a pcap capture"),
    (&[0x0a, 0x0d, 0x0d, 0x0a], "a pcapng capture"),
    (&[0x1f, 0x8b], "gzip data"),
];

/// Refuses, in one line, outputs that would overwrite a file the run reads, an existing
/// capture, or another output. `outputs` are (flag, target); `inputs` every file read.
/// Files are compared by device and inode (a hard link is the same file) and by canonical
/// path (which also matches two spellings of an output not created yet).
pub fn check_outputs(outputs: &[(&str, &Target)], inputs: &[&Path]) -> Result<(), String> {
    let inputs: Vec<(&Path, Option<Identity>)> =
        inputs.iter().map(|p| (*p, Identity::of_path(p))).collect();
    let mut seen: Vec<(&str, Identity)> = Vec::new();
    for &(flag, target) in outputs {
        let Some(id) = Identity::of(target) else {
            continue;
        };
        if let Some((input, _)) = inputs
            .iter()
            .find(|(_, i)| i.as_ref().is_some_and(|i| i.same(&id)))
        {
            return Err(format!(
                "{flag} {target} is an input ({}); refusing to overwrite it",
                input.display()
            ));
        }
        if let Some((other, _)) = seen.iter().find(|(_, o)| o.same(&id)) {
            return Err(format!("{other} and {flag} both name {target}"));
        }
        if let Target::File(path) = target
            && let Some(kind) = capture_kind(path)
        {
            return Err(format!(
                "{flag} {target} holds {kind}; refusing to overwrite it"
            ));
        }
        seen.push((flag, id));
    }
    Ok(())
}

/// What makes two names one file, for [`check_outputs`]. Devices (`/dev/null`) have none:
/// any number of outputs may go there.
struct Identity {
    inode: Option<(u64, u64)>,
    canonical: Option<PathBuf>,
}

impl Identity {
    fn same(&self, other: &Identity) -> bool {
        fn both<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            a.is_some() && a == b
        }
        both(&self.inode, &other.inode) || both(&self.canonical, &other.canonical)
    }

    fn of(target: &Target) -> Option<Identity> {
        match target {
            Target::File(p) => Identity::of_path(p),
            // Standard output redirected (`>> x.pcap`) onto an input is caught by inode.
            Target::Stdout => {
                let meta = io::stdout().as_fd().try_clone_to_owned().ok()?;
                let meta = File::from(meta).metadata().ok()?;
                meta.is_file().then(|| Identity {
                    inode: Some((meta.dev(), meta.ino())),
                    canonical: None,
                })
            }
        }
    }

    fn of_path(path: &Path) -> Option<Identity> {
        match std::fs::metadata(path) {
            Ok(meta) => meta.is_file().then(|| Identity {
                inode: Some((meta.dev(), meta.ino())),
                canonical: path.canonicalize().ok(),
            }),
            // Not there yet: its directory's canonical path and its name.
            Err(_) => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                Some(Identity {
                    inode: None,
                    canonical: Some(dir.canonicalize().ok()?.join(path.file_name()?)),
                })
            }
        }
    }
}

/// What kind of capture `path` holds, judged by its first bytes.
fn capture_kind(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let n = File::open(path).and_then(|mut f| f.read(&mut head)).ok()?;
    CAPTURE_MAGICS
        .iter()
        .find(|(magic, _)| head[..n].starts_with(magic))
        .map(|(_, kind)| *kind)
}

/// An output of the account stage (DESIGN §7): handed every finding — each alert after the
/// findings behind it, since the scorer runs first — every flow record and every
/// public-address observation, in packet-time order. The events file, the flow records and
/// the report's collector are sinks; a new output is one more.
pub trait Sink: Send {
    /// The output's name in metrics and messages (`events`, `flows`, ...).
    fn name(&self) -> &'static str;

    fn event(&mut self, _event: &crate::event::Event) {}

    fn flow(&mut self, _record: &crate::flows::record::FlowRecord) {}

    fn observation(&mut self, _obs: &crate::identity::PublicIpObservation) {}

    /// Pushes buffered output out (live: every second).
    fn flush(&mut self) {}

    /// Records it could not write, and its first error.
    fn lost(&self) -> (u64, Option<String>) {
        (0, None)
    }
}

/// Findings as JSON lines (`--events`).
pub struct EventLines(pub JsonLines);

impl Sink for EventLines {
    fn name(&self) -> &'static str {
        "events"
    }

    fn event(&mut self, event: &crate::event::Event) {
        self.0.write(event);
    }

    fn flush(&mut self) {
        let _ = self.0.flush();
    }

    fn lost(&self) -> (u64, Option<String>) {
        lost(&self.0)
    }
}

/// Flow records as JSON lines (`--flows`).
pub struct FlowLines(pub JsonLines);

impl Sink for FlowLines {
    fn name(&self) -> &'static str {
        "flows"
    }

    fn flow(&mut self, record: &crate::flows::record::FlowRecord) {
        self.0.write_with(|line| record.write_json(line));
    }

    fn flush(&mut self) {
        let _ = self.0.flush();
    }

    fn lost(&self) -> (u64, Option<String>) {
        lost(&self.0)
    }
}

fn lost(lines: &JsonLines) -> (u64, Option<String>) {
    let first = lines
        .first_error
        .as_ref()
        .map(|e| format!("{}: {e}", lines.target()));
    (lines.errors, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fw-sink-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_one_object_per_line_and_flushes() {
        let dir = temp_dir("lines");
        let path = dir.join("out.jsonl");
        let mut sink = create(&Target::File(path.clone())).unwrap();
        sink.write(&serde_json::json!({"a": 1}));
        sink.write(&serde_json::json!({"b": "x\ny"}));
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":\"x\\ny\"}\n");
        assert_eq!(sink.written, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_every_record_a_full_device_refuses() {
        let mut sink = JsonLines::open(Target::File("/dev/full".into())).unwrap();
        for _ in 0..10_000 {
            sink.write(&serde_json::json!({"pad": "0123456789abcdef"}));
        }
        let _ = sink.flush();
        assert_eq!((sink.written, sink.errors), (0, 10_000));
        assert_eq!(
            sink.first_error.as_ref().map(io::Error::raw_os_error),
            Some(Some(libc::ENOSPC))
        );
    }

    #[test]
    fn outputs_may_not_be_inputs_captures_or_each_other() {
        let dir = temp_dir("check");
        let capture = dir.join("x.pcap");
        std::fs::write(&capture, [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0]).unwrap();
        let link = dir.join("link.jsonl");
        std::fs::hard_link(&capture, &link).unwrap();
        let out = |p: &Path| Target::File(p.to_path_buf());
        let check = |outputs: &[(&str, &Target)]| check_outputs(outputs, &[&capture]);

        let e = check(&[("--flows", &out(&link))]).unwrap_err();
        assert!(e.contains("is") && e.contains("an input"), "{e}");
        let dotted = dir.join(".").join("x.pcap");
        assert!(check(&[("--report", &out(&dotted))]).is_err());

        let other = dir.join("other.pcap");
        std::fs::write(&other, [0x0a, 0x0d, 0x0d, 0x0a]).unwrap();
        let e = check(&[("--events", &out(&other))]).unwrap_err();
        assert!(
            e.ends_with("holds a pcapng capture; refusing to overwrite it"),
            "{e}"
        );

        let new = dir.join("new.jsonl");
        let new_dotted = dir.join(".").join("new.jsonl");
        let e = check(&[("--events", &out(&new)), ("--flows", &out(&new_dotted))]).unwrap_err();
        assert!(e.starts_with("--events and --flows both name"), "{e}");

        let null = out(Path::new("/dev/null"));
        check(&[
            ("--events", &null),
            ("--flows", &null),
            ("--report", &out(&new)),
        ])
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
