//! In-order reassembly of the first bytes of each TCP direction, for the dissectors.
//!
//! Only a prefix of each stream is kept (`limit` bytes); segments that arrive ahead of a
//! hole wait in a small bounded buffer. Once the prefix is complete, or a hole cannot be
//! filled, the stream is closed and its memory can be released.

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
}

/// What a segment did to the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// New in-order bytes were appended.
    Appended,
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

    pub fn bytes(&self) -> &[u8] {
        &self.data
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
    }

    /// Adds a segment that starts at `seq`. `payload` may be shorter than the segment was
    /// on the wire (snaplen): then only the captured part is used and the stream closes.
    pub fn add(&mut self, seq: u32, payload: &[u8], wire_len: u32) -> Segment {
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
        self.append(&payload[skip..]);
        if (payload.len() as u32) < wire_len {
            // The capture cut this segment: what follows in the stream is unknown.
            self.gap = true;
            self.close();
            return Segment::Appended;
        }
        self.drain_pending();
        Segment::Appended
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.data.len());
        let take = bytes.len().min(room);
        self.data.extend_from_slice(&bytes[..take]);
        if let Some(n) = self.next_seq.as_mut() {
            *n = n.wrapping_add(bytes.len() as u32);
        }
        if self.data.len() >= self.limit {
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

    #[test]
    fn appends_in_order_and_fills_holes() {
        let mut s = Stream::new(64);
        s.start(999);
        assert_eq!(s.add(1005, b"world", 5), Segment::Held);
        assert_eq!(s.add(1000, b"hello", 5), Segment::Appended);
        assert_eq!(s.bytes(), b"helloworld");
        assert_eq!(s.add(1000, b"hello", 5), Segment::Duplicate);
        // Overlapping retransmission with new bytes at the end.
        assert_eq!(s.add(1008, b"ld!", 3), Segment::Appended);
        assert_eq!(s.bytes(), b"helloworld!");
    }

    #[test]
    fn closes_at_the_limit() {
        let mut s = Stream::new(4);
        assert_eq!(s.add(7, b"abcdef", 6), Segment::Appended);
        assert_eq!(s.bytes(), b"abcd");
        assert!(s.is_closed());
        assert_eq!(s.add(13, b"x", 1), Segment::Ignored);
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
        assert_eq!(s.add(1, b"ab", 2), Segment::Appended);
        assert_eq!(
            s.add(3u32.wrapping_add(1 << 31), b"cd", 2),
            Segment::Duplicate
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Stream::new(64);
        s.start(u32::MAX - 1);
        assert_eq!(s.add(u32::MAX, b"ab", 2), Segment::Appended);
        assert_eq!(s.add(1, b"cd", 2), Segment::Appended);
        assert_eq!(s.bytes(), b"abcd");
    }
}
