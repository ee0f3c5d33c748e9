//! Capture files mapped into memory: replay parses records straight from the file's pages
//! and the flow workers read packets from them, so no packet is copied by the kernel's
//! `read` or into the workers' batches.
//!
//! A mapped file that shrinks under the sensor (truncated or rewritten by another program)
//! does not read short: touching a page beyond its new end raises SIGBUS, which would kill
//! the sensor without a word. So every mapping is registered, and a SIGBUS handler (made
//! when the first file is mapped) names the file and the offset and exits 1, as any file
//! stopped early does (README, "Replay limits"). A SIGBUS anywhere else is left to the
//! default action.

use std::fs::File;
use std::ptr;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use memmap2::{Advice, Mmap, UncheckedAdvice};

/// Mapped at once when a file is mapped: the reader's first window, up to its first
/// hand-back (which maps the next).
const FIRST: usize = 4 << 20;

/// A mapping shared by the reader and the batches that point into it.
pub type Shared = Arc<Mapping>;

/// A whole capture file mapped for reading, registered for the SIGBUS handler while it
/// lives.
pub struct Mapping {
    map: Mmap,
    /// Its place in [`SLOTS`].
    slot: usize,
    /// The handler's line up to the offset, owned here so that it outlives the slot.
    _line: Box<[u8]>,
}

impl Mapping {
    /// Maps `file` whole, `name` being how messages name it. None when it cannot be (not a
    /// regular file, empty, a failed map, every slot taken): the caller reads it instead.
    pub fn new(file: &File, name: &str) -> Option<Mapping> {
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() == 0 {
            return None;
        }
        // Before the first map, so that no mapping is ever without its handler.
        HANDLER.call_once(install_handler);
        // SAFETY: memmap2 asks that the file not change while it is mapped, since the
        // mapping is read through `&[u8]`. Any byte value is valid for the parsers, which
        // check every length against the slice they are given; the one change that is not
        // just other bytes, the file shrinking, faults (SIGBUS) on the pages past its new
        // end, and the handler registered below stops the process there.
        let map = unsafe { Mmap::map(file) }.ok()?;
        // Read front to back: the kernel reads ahead further and drops pages read sooner.
        let _ = map.advise(Advice::Sequential);
        // Boxed before it is registered: making a box of a Vec may move its bytes, and the
        // handler must find them where the slot says.
        let line = format!("farmwatch: {name}: stopped at byte offset ")
            .into_bytes()
            .into_boxed_slice();
        let slot = register(map.as_ptr() as usize, map.len(), &line)?;
        let mapping = Mapping {
            map,
            slot,
            _line: line,
        };
        mapping.populate(0..FIRST);
        Some(mapping)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Maps the pages of `range` (clamped to the file) in one call, ahead of the reader:
    /// touched one by one, each 64 KiB would stall on a page fault (software prefetches
    /// are dropped on unmapped pages). A kernel without MADV_POPULATE_READ (before 5.14)
    /// refuses it and the pages fault in as they are touched; a file that shrank fails
    /// here without a signal and faults (SIGBUS) where it is read.
    pub fn populate(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.map.len());
        if let Some(len) = end.checked_sub(range.start).filter(|&len| len > 0) {
            let _ = self
                .map
                .advise_range(Advice::PopulateRead, range.start, len);
        }
    }

    /// Hands the pages of `range` back (file pages stay in the page cache; a later read of
    /// them faults them in again, with the same bytes): a file read front to back keeps a
    /// few pages resident, not the whole file.
    pub fn drop_range(&self, range: std::ops::Range<usize>) {
        let Some(len) = range.end.checked_sub(range.start).filter(|&len| len > 0) else {
            return;
        };
        // SAFETY: MADV_DONTNEED on a shared read-only file mapping only unmaps the pages:
        // the next access maps the same file bytes again (it never sees zeros, which it
        // would for private or anonymous memory), so every slice borrowed from the
        // mapping keeps its contents. madvise checks the range (memmap2 aligns its start).
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, len)
        };
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.map.len())
            .finish()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Before the pages are unmapped (the fields drop after this).
        unregister(self.slot);
    }
}

/// Mappings registered at once; a file mapped beyond them is read instead.
const SLOTS_MAX: usize = 256;

/// One registered mapping: its address range and the line naming its file. Atomics only,
/// so that the handler can read them at any moment without a lock.
struct Slot {
    taken: AtomicBool,
    /// 0 while the slot is free or being filled.
    start: AtomicUsize,
    len: AtomicUsize,
    line: AtomicPtr<u8>,
    line_len: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            taken: AtomicBool::new(false),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            line: AtomicPtr::new(ptr::null_mut()),
            line_len: AtomicUsize::new(0),
        }
    }
}

static SLOTS: [Slot; SLOTS_MAX] = [const { Slot::new() }; SLOTS_MAX];
static HANDLER: Once = Once::new();
/// Set by the first thread to fault in a mapping: several threads read the same pages
/// (workers that walk a replay), and the line is said once.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Registers `len` bytes at `start` with the line naming their file. None when every
/// slot is taken.
fn register(start: usize, len: usize, line: &[u8]) -> Option<usize> {
    let (index, slot) = SLOTS.iter().enumerate().find(|(_, s)| {
        s.taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    })?;
    slot.line.store(line.as_ptr().cast_mut(), Ordering::Relaxed);
    slot.line_len.store(line.len(), Ordering::Relaxed);
    slot.len.store(len, Ordering::Relaxed);
    // Published last: a handler that sees the start sees the rest.
    slot.start.store(start, Ordering::Release);
    Some(index)
}

fn unregister(index: usize) {
    let slot = &SLOTS[index];
    slot.start.store(0, Ordering::Release);
    slot.taken.store(false, Ordering::Release);
}

/// The registered mapping `addr` lies in: its line and the offset of `addr` in its file.
fn owner_of(addr: usize) -> Option<(*const u8, usize, usize)> {
    SLOTS.iter().find_map(|s| {
        let start = s.start.load(Ordering::Acquire);
        let offset = addr.wrapping_sub(start);
        (start != 0 && offset < s.len.load(Ordering::Relaxed)).then(|| {
            let line = s.line.load(Ordering::Relaxed).cast_const();
            (line, s.line_len.load(Ordering::Relaxed), offset)
        })
    })
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid value (no flags, empty mask) that is then
    // filled in; `on_sigbus` has the signature SA_SIGINFO asks for and is async-signal-
    // safe. Should sigaction fail, SIGBUS keeps its default action (the process dies
    // without the line, as it would have without mapping).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, ptr::null_mut());
    }
}

/// After the offset in the handler's line.
const SHRANK: &[u8] = b": the file shrank while it was being read\n";

/// SIGBUS: in a registered mapping, one line and exit 1 (once, whichever threads fault);
/// elsewhere the default action. Async-signal-safe only: atomics, write(2), _exit(2),
/// pause(2), sigaction(2), raise(3); no allocation, no lock.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo. A fault has a
    // positive si_code (BUS_ADRERR for a page past the end of a file) and si_addr is the
    // address touched; a signal sent by a process (si_code <= 0) carries no address.
    let fault = unsafe { ((*info).si_code > 0).then(|| (*info).si_addr() as usize) };
    if let Some((line, line_len, offset)) = fault.and_then(owner_of) {
        if STOPPING.swap(true, Ordering::AcqRel) {
            // Another thread is saying it and ending the process: wait for that.
            loop {
                // SAFETY: pause(2) is async-signal-safe.
                unsafe { libc::pause() };
            }
        }
        let mut digits = [0u8; 20];
        let decimal = decimal(offset as u64, &mut digits);
        // SAFETY: `line` points to `line_len` bytes owned by the mapping, which lives:
        // the fault is an access to it. write(2) and _exit(2) are async-signal-safe.
        unsafe {
            write_all(std::slice::from_raw_parts(line, line_len));
            write_all(decimal);
            write_all(SHRANK);
            libc::_exit(1);
        }
    }
    // SAFETY: sigaction(2) and raise(3) are async-signal-safe; the zeroed action with
    // SIG_DFL (0) is the default one. The raised signal is blocked until this handler
    // returns, then the default action ends the process.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, ptr::null_mut());
        libc::raise(signal);
    }
}

/// Writes `bytes` to stderr with write(2) alone.
///
/// # Safety
/// Async-signal-safe; the caller passes bytes it may read.
unsafe fn write_all(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid slice; write(2) reads at most its length.
        let n = unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// `n` in decimal, written at the end of `buf` without allocating.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_every_digit() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 10, 4096, 1_000_000_007, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    #[test]
    fn a_mapping_is_found_by_its_addresses_while_it_lives() {
        let path = std::env::temp_dir().join(format!("farmwatch-mapped-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let file = File::open(&path).unwrap();
        let map = Mapping::new(&file, "x.pcap").unwrap();
        let start = map.bytes().as_ptr() as usize;
        assert_eq!(map.bytes(), &[7u8; 10_000][..]);
        let (line, len, offset) = owner_of(start + 9_999).unwrap();
        // SAFETY: the line is the mapping's, alive here.
        let line = unsafe { std::slice::from_raw_parts(line, len) };
        assert_eq!(line, b"farmwatch: x.pcap: stopped at byte offset ");
        assert_eq!(offset, 9_999);
        // Past its end, on its last page.
        assert!(owner_of(start + 10_000).is_none());
        // Dropped pages read the same bytes again.
        map.drop_range(0..8192);
        assert_eq!(map.bytes(), &[7u8; 10_000][..]);
        // Populating is clamped to the file, past its end included.
        map.populate(4096..usize::MAX);
        map.populate(20_000..30_000);
        assert_eq!(map.bytes(), &[7u8; 10_000][..]);
        let slot = map.slot;
        drop(map);
        assert_ne!(SLOTS[slot].start.load(Ordering::Relaxed), start);
        // An empty file is not mapped (the reader says it is empty).
        std::fs::write(&path, b"").unwrap();
        assert!(Mapping::new(&File::open(&path).unwrap(), "x.pcap").is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
