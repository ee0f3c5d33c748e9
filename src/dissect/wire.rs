//! Reading untrusted wire bytes: a bounds-checked big-endian reader and a bounded string
//! conversion, shared by the dissectors.

use super::{Error, Result};

/// Longest string taken from the wire (SNI, ALPN, header values, certificate names).
pub(crate) const MAX_STRING: usize = 256;

/// A string from the wire: lossily decoded UTF-8, cut to `MAX_STRING` bytes on a character
/// boundary, so a hostile peer cannot make records huge or invalid.
pub(crate) fn wire_string(bytes: &[u8]) -> String {
    let bytes = bytes.get(..MAX_STRING * 3).unwrap_or(bytes);
    // ASCII (nearly every name) is checked a word at a time and copied once; the lossy
    // decoder, which walks chunk by chunk, only replaces what is not valid UTF-8.
    let mut s = match ascii_str(bytes) {
        Some(ascii) => ascii.to_owned(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    };
    if s.len() > MAX_STRING {
        let mut cut = MAX_STRING;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `bytes` as text when they are all ASCII. The check goes a word at a time, where
/// `std::str::from_utf8` went byte by byte over a short string (~100 instructions for 10
/// to 30 bytes): the dissectors' strings (SNI, DNS names, JA4) are nearly always ASCII.
pub(crate) fn ascii_str(bytes: &[u8]) -> Option<&str> {
    // SAFETY: ASCII is valid UTF-8.
    bytes
        .is_ascii()
        .then(|| unsafe { std::str::from_utf8_unchecked(bytes) })
}

/// [`ascii_str`] of a buffer of its own, made a `String` in place.
pub(crate) fn ascii_string(bytes: Vec<u8>) -> Option<String> {
    // SAFETY: ASCII is valid UTF-8.
    bytes
        .is_ascii()
        .then(|| unsafe { String::from_utf8_unchecked(bytes) })
}

/// A bounds-checked cursor over big-endian wire data. Running out of bytes is
/// `Error::Incomplete`; callers that hold a whole message turn that into `Invalid`.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::Incomplete);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.uint(1)? as u8)
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(self.uint(2)? as u16)
    }

    pub(crate) fn u24(&mut self) -> Result<usize> {
        Ok(self.uint(3)? as usize)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(self.uint(4)? as u32)
    }

    /// A variable-length integer (RFC 9000 §16): the top two bits give its length.
    pub(crate) fn varint(&mut self) -> Result<u64> {
        let first = *self.buf.first().ok_or(Error::Incomplete)?;
        let len = 1 << (first >> 6);
        Ok(self.uint(len)? & (u64::MAX >> (64 - 8 * len + 2)))
    }

    /// A vector with a one-byte length prefix (RFC 8446 §3.4).
    pub(crate) fn vec8(&mut self) -> Result<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    pub(crate) fn vec16(&mut self) -> Result<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A vector with a variable-length integer length (RFC 9000 §16).
    pub(crate) fn vec_varint(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| Error::Invalid("length too large"))?;
        self.take(n)
    }

    pub(crate) fn vec24(&mut self) -> Result<&'a [u8]> {
        let n = self.u24()?;
        self.take(n)
    }
}
