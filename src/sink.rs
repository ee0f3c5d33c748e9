//! Output sinks: JSON lines to a file or stdout. A write that fails is counted and the
//! first error kept, so a full disk is reported, never silent.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

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

pub struct JsonLines {
    target: Target,
    out: BufWriter<Box<dyn Write + Send>>,
    line: Vec<u8>,
    pub written: u64,
    pub errors: u64,
    pub first_error: Option<io::Error>,
}

impl JsonLines {
    pub fn open(target: Target) -> io::Result<JsonLines> {
        let out = open_target(&target)?;
        Ok(JsonLines::with_writer(target, out))
    }

    /// A sink over a writer of the caller's (live workers share one file this way); `target`
    /// names it in errors. Lines reach `out` only whole, in `write` calls of whole lines.
    pub fn with_writer(target: Target, out: Box<dyn Write + Send>) -> JsonLines {
        JsonLines {
            target,
            out: BufWriter::with_capacity(1 << 16, out),
            line: Vec::with_capacity(1024),
            written: 0,
            errors: 0,
            first_error: None,
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
        self.line.clear();
        if let Err(e) = fill(&mut self.line) {
            self.fail(io::Error::other(e));
            return;
        }
        self.line.push(b'\n');
        match self.out.write_all(&self.line) {
            Ok(()) => self.written += 1,
            Err(e) => self.fail(e),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush().inspect_err(|e| {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }

    /// Flushes and reopens the file (after logrotate moved it away).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.flush()?;
        let out = open_target(&self.target)?;
        self.out = BufWriter::with_capacity(1 << 16, out);
        Ok(())
    }

    fn fail(&mut self, e: io::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// Opens `target` for appending, creating a missing file.
pub fn open_target(target: &Target) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(io::stdout()),
        Target::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
        ),
    })
}

/// A file sink, truncated first: a replay's outputs describe that replay only.
pub fn create_file(path: &std::path::Path) -> io::Result<JsonLines> {
    File::create(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    JsonLines::open(Target::File(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_object_per_line_and_flushes() {
        let dir = std::env::temp_dir().join(format!("fw-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let mut sink = create_file(&path).unwrap();
        sink.write(&serde_json::json!({"a": 1}));
        sink.write(&serde_json::json!({"b": "x\ny"}));
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":\"x\\ny\"}\n");
        assert_eq!(sink.written, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_write_failures() {
        let mut sink = JsonLines::open(Target::File("/dev/full".into())).unwrap();
        for _ in 0..10_000 {
            sink.write(&serde_json::json!({"pad": "0123456789abcdef"}));
        }
        let _ = sink.flush();
        assert!(sink.errors > 0);
        assert!(sink.first_error.is_some());
    }
}
