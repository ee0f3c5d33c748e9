//! In-order reassembly of the first bytes of each TCP direction, for the dissectors.
//!
//! Only a prefix of each stream is kept (`limit` bytes); segments that arrive ahead of a
//! hole wait in a small bounded buffer. Once the prefix is complete, or a hole cannot be
//! filled, the stream is closed and its memory can be released.
//!
//! Most flows are identified by the first segment of each direction (a ClientHello, a
//! request, a banner), so that segment is not copied: while nothing is buffered, an
//! in-order segment is lent ([`Segment::Lent`]) and read where it lies in the packet
//! ([`Stream::view`]); only if more bytes are wanted is it kept ([`Stream::keep`]).

/// Segments held ahead of a hole, at most.
const MAX_PENDING: usize = 16;

#[derive(Debug, Default)]
pub struct Stream {
    /// Sequence number of the next expected byte; None until the stream's start is known.
    next_seq: Option<u32>,
    data: Vec<u8>,
    pending: Vec<(u32, Vec<u8>)>,
    limit: usize,
    /// No more bytes will be added: the prefix is full or a hole was given up on.
    closed: bool,
    pub gap: bool,
    /// The stream's bytes are the start of the current packet's payload, not in `data`.
    lent: bool,
}

/// What a segment did to the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// New in-order bytes were appended.
    Appended,
    /// New in-order bytes, the stream's first: left in the packet, not copied. Until the
    /// packet is done, [`Stream::view`] reads them there; then [`Stream::keep`] copies them
    /// (or [`Stream::release`] drops the stream) before the next segment is added.
    Lent,
    /// All of it was seen before: a retransmission.
    Duplicate,
    /// Held until the hole before it fills.
    Held,
    /// The stream is closed; the bytes were not looked at.
    Ignored,
}

impl Stream {
    pub fn new(limit: usize) -> Stream {
        Stream {
            limit,
            ..Stream::default()
        }
    }

    /// The stream starts at `isn + 1` (after a SYN).
    pub fn start(&mut self, isn: u32) {
        if self.next_seq.is_none() {
            self.next_seq = Some(isn.wrapping_add(1));
        }
    }

    /// The buffered bytes; a lent segment is not among them (see [`Stream::view`]).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The stream's bytes: the buffer, or the lent segment read in place from `payload`,
    /// the payload of the packet that lent it (any slice will do when none is lent).
    pub fn view<'a>(&'a self, payload: &'a [u8]) -> &'a [u8] {
        if self.lent {
            self.view_lent(payload)
        } else {
            &self.data
        }
    }

    /// Copies a lent segment into the buffer: the stream wants more bytes than this packet's.
    /// `payload` is the payload of the packet that lent it; nothing happens if none is lent.
    pub fn keep(&mut self, payload: &[u8]) {
        if std::mem::take(&mut self.lent) {
            self.data.extend_from_slice(self.view_lent(payload));
        }
    }

    fn view_lent<'a>(&self, payload: &'a [u8]) -> &'a [u8] {
        &payload[..payload.len().min(self.limit)]
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn close(&mut self) {
        self.closed = true;
        self.pending = Vec::new();
    }

    /// Frees the buffers; the stream is closed for good.
    pub fn release(&mut self) {
        self.close();
        self.data = Vec::new();
        self.lent = false;
    }

    /// Adds a segment that starts at `seq`. `payload` may be shorter than the segment was
    /// on the wire (snaplen): then only the captured part is used and the stream closes.
    pub fn add(&mut self, seq: u32, payload: &[u8], wire_len: u32) -> Segment {
        if self.lent {
            // A segment lent by an earlier packet was neither kept nor released: its bytes
            // are gone, a hole the stream cannot fill.
            debug_assert!(false, "a lent segment was not kept");
            self.lent = false;
            self.gap = true;
            self.close();
        }
        if self.closed {
            return Segment::Ignored;
        }
        let next = *self.next_seq.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next) as i32;
        if ahead > 0 {
            if self.pending.len() >= MAX_PENDING || ahead as usize > self.limit {
                self.gap = true;
                self.close();
                return Segment::Ignored;
            }
            self.pending.push((seq, payload.to_vec()));
            return Segment::Held;
        }
        let skip = next.wrapping_sub(seq) as usize;
        if skip >= payload.len() {
            return Segment::Duplicate;
        }
        // Nothing buffered nor held, and the segment starts the stream: read in place.
        let lend = skip == 0 && self.data.is_empty() && self.pending.is_empty();
        if lend {
            self.lent = true;
            self.advance(payload.len(), payload.len());
        } else {
            self.append(&payload[skip..]);
        }
        if (payload.len() as u32) < wire_len {
            // The capture cut this segment: what follows in the stream is unknown.
            self.gap = true;
            self.close();
        } else {
            self.drain_pending();
        }
        if lend {
            Segment::Lent
        } else {
            Segment::Appended
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.data.len());
        let take = bytes.len().min(room);
        self.data.extend_from_slice(&bytes[..take]);
        self.advance(bytes.len(), self.data.len());
    }

    /// `len` more bytes of the stream went by; the prefix read so far is `held` bytes long.
    fn advance(&mut self, len: usize, held: usize) {
        if let Some(n) = self.next_seq.as_mut() {
            *n = n.wrapping_add(len as u32);
        }
        if held >= self.limit {
            self.close();
        }
    }

    fn drain_pending(&mut self) {
        while !self.closed {
            let Some(next) = self.next_seq else { return };
            let Some(i) = self
                .pending
                .iter()
                .position(|(s, _)| (s.wrapping_sub(next) as i32) <= 0)
            else {
                return;
            };
            let (seq, bytes) = self.pending.swap_remove(i);
            let skip = next.wrapping_sub(seq) as usize;
            if skip < bytes.len() {
                self.append(&bytes[skip..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds a segment as the flow stage does when the packet does not settle the flow:
    /// whatever it lent is kept before the next.
    fn add_kept(s: &mut Stream, seq: u32, payload: &[u8], wire_len: u32) -> Segment {
        let added = s.add(seq, payload, wire_len);
        s.keep(payload);
        added
    }

    #[test]
    fn appends_in_order_and_fills_holes() {
        let mut s = Stream::new(64);
        s.start(999);
        assert_eq!(add_kept(&mut s, 1005, b"world", 5), Segment::Held);
        assert_eq!(add_kept(&mut s, 1000, b"hello", 5), Segment::Appended);
        assert_eq!(s.bytes(), b"helloworld");
        assert_eq!(add_kept(&mut s, 1000, b"hello", 5), Segment::Duplicate);
        // Overlapping retransmission with new bytes at the end.
        assert_eq!(add_kept(&mut s, 1008, b"ld!", 3), Segment::Appended);
        assert_eq!(s.bytes(), b"helloworld!");
    }

    #[test]
    fn the_first_segment_is_read_in_place_until_kept() {
        let mut s = Stream::new(64);
        s.start(999);
        assert_eq!(s.add(1000, b"hello", 5), Segment::Lent);
        assert_eq!(s.bytes(), b"");
        assert_eq!(s.view(b"hello"), b"hello");
        assert!(!s.is_closed());
        s.keep(b"hello");
        assert_eq!(s.bytes(), b"hello");
        assert_eq!(s.view(b"other packet"), b"hello");
        // Keeping twice copies nothing more.
        s.keep(b"hello");
        assert_eq!(s.bytes(), b"hello");
        assert_eq!(s.add(1000, b"hello", 5), Segment::Duplicate);
        assert_eq!(s.add(1005, b"!", 1), Segment::Appended);
        assert_eq!(s.view(b"!"), b"hello!");
    }

    #[test]
    fn a_held_segment_is_never_read_in_place() {
        let mut s = Stream::new(64);
        s.start(999);
        assert_eq!(s.add(1005, b"world", 5), Segment::Held);
        // In order, but what it fills joins it in the buffer.
        assert_eq!(s.add(1000, b"hello", 5), Segment::Appended);
        assert_eq!(s.view(b"hello"), b"helloworld");
    }

    #[test]
    fn a_duplicate_of_nothing_kept_lends_nothing() {
        let mut s = Stream::new(64);
        s.start(999);
        // Before the stream's start: the SYN's sequence number and earlier.
        assert_eq!(s.add(990, b"0123456789", 10), Segment::Duplicate);
        assert_eq!(s.view(b"0123456789"), b"");
        // Partly before it: its new part is copied, not lent.
        assert_eq!(s.add(995, b"0123456789", 10), Segment::Appended);
        assert_eq!(s.bytes(), b"56789");
    }

    #[test]
    fn a_segment_cut_by_the_capture_is_read_in_place_and_closes() {
        let mut s = Stream::new(64);
        assert_eq!(s.add(7, b"GET / HT", 100), Segment::Lent);
        assert!(s.is_closed());
        assert!(s.gap);
        assert_eq!(s.view(b"GET / HT"), b"GET / HT");
        s.keep(b"GET / HT");
        assert_eq!(s.bytes(), b"GET / HT");
        assert_eq!(s.add(107, b"more", 4), Segment::Ignored);
    }

    #[test]
    fn closes_at_the_limit_inside_the_first_segment() {
        let mut s = Stream::new(4);
        assert_eq!(s.add(7, b"abcdef", 6), Segment::Lent);
        assert_eq!(s.view(b"abcdef"), b"abcd");
        assert!(s.is_closed());
        assert!(!s.gap);
        s.keep(b"abcdef");
        assert_eq!(s.bytes(), b"abcd");
        assert_eq!(s.add(13, b"x", 1), Segment::Ignored);
    }

    #[test]
    fn closes_at_the_limit() {
        let mut s = Stream::new(4);
        assert_eq!(add_kept(&mut s, 7, b"ab", 2), Segment::Lent);
        assert_eq!(add_kept(&mut s, 9, b"cdef", 4), Segment::Appended);
        assert_eq!(s.bytes(), b"abcd");
        assert!(s.is_closed());
        assert_eq!(s.add(13, b"x", 1), Segment::Ignored);
    }

    #[test]
    fn release_drops_a_lent_segment() {
        let mut s = Stream::new(64);
        assert_eq!(s.add(1, b"hello", 5), Segment::Lent);
        s.release();
        assert_eq!(s.view(b"hello"), b"");
        assert_eq!(s.add(6, b"world", 5), Segment::Ignored);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a lent segment was not kept")]
    fn a_lent_segment_must_be_kept_before_the_next() {
        let mut s = Stream::new(64);
        assert_eq!(s.add(1, b"hello", 5), Segment::Lent);
        s.add(6, b"world", 5);
    }

    #[test]
    fn gives_up_on_a_hole_that_never_fills() {
        let mut s = Stream::new(1 << 20);
        s.start(0);
        for i in 0..=MAX_PENDING as u32 {
            s.add(100 + i * 10, b"0123456789", 10);
        }
        assert!(s.is_closed());
        assert!(s.gap);
    }

    /// Regression (tests/fuzz_smoke_pipeline.rs): a segment exactly 2^31 behind the
    /// expected sequence number used to overflow when negating the distance.
    #[test]
    fn a_segment_half_the_sequence_space_away_is_a_duplicate() {
        let mut s = Stream::new(64);
        s.start(0);
        assert_eq!(add_kept(&mut s, 1, b"ab", 2), Segment::Lent);
        assert_eq!(
            s.add(3u32.wrapping_add(1 << 31), b"cd", 2),
            Segment::Duplicate
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Stream::new(64);
        s.start(u32::MAX - 1);
        assert_eq!(add_kept(&mut s, u32::MAX, b"ab", 2), Segment::Lent);
        assert_eq!(add_kept(&mut s, 1, b"cd", 2), Segment::Appended);
        assert_eq!(s.bytes(), b"abcd");
    }
}
