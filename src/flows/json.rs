//! A JSON object writer for flow records: the bytes serde_json writes, without its
//! per-value machinery. Every finished flow is written once, so writing a record was a
//! fifth of a replay; most of it went to escaping names and values that never need it
//! and to formatting addresses through `fmt`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::flows::community_id::CommunityId;
use crate::geo::Country;
use crate::timestamp::Timestamp;

/// A value that writes itself as serde_json would serialize it.
pub trait Json {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()>;

    /// Whether the value is `null`, which [`Object::field`] copies with its key.
    fn is_null(&self) -> bool {
        false
    }
}

/// A field's key `,"name":` and a `null` after it, built at compile time by [`key!`]: the
/// comma that goes before every field, a name JSON never escapes (a Rust identifier), and
/// the value of an absent field, so that one copy writes it whole.
#[derive(Clone, Copy)]
pub struct Key(pub(crate) &'static str);

impl Key {
    /// `,"name":`
    #[inline(always)]
    fn name(self) -> &'static [u8] {
        let key = self.0.as_bytes();
        key.get(..key.len().saturating_sub(4)).unwrap_or_default()
    }

    /// `,"name":null`
    #[inline(always)]
    fn with_null(self) -> &'static [u8] {
        self.0.as_bytes()
    }
}

/// The [`Key`] of the field `name`.
macro_rules! key {
    ($name:ident) => {
        $crate::flows::json::Key(concat!(",\"", stringify!($name), "\":null"))
    };
}
pub(crate) use key;

/// One JSON object written field by field, each with its key (a [`Key`]). Every key
/// starts with a comma; [`Object::end`] turns the first one into the opening brace, so
/// fields need no test for being the first.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// Where the object starts: the first key's comma.
    start: usize,
}

impl<'a> Object<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Object<'a> {
        let start = out.len();
        Object { out, start }
    }

    // Inlined: the null test of a value that is never null goes away.
    #[inline(always)]
    pub fn field<T: Json + ?Sized>(&mut self, key: Key, value: &T) -> serde_json::Result<()> {
        if value.is_null() {
            self.out.extend_from_slice(key.with_null());
            return Ok(());
        }
        self.out.extend_from_slice(key.name());
        value.write_json(self.out)
    }

    /// A field written by serde_json itself, for values without a [`Json`] writer.
    pub fn serde<T: Serialize + ?Sized>(&mut self, key: Key, value: &T) -> serde_json::Result<()> {
        self.out.extend_from_slice(key.name());
        serde_json::to_writer(&mut *self.out, value)
    }

    /// A field whose value is an object written by `fill`.
    pub fn object(
        &mut self,
        key: Key,
        fill: impl FnOnce(&mut Object<'_>) -> serde_json::Result<()>,
    ) -> serde_json::Result<()> {
        self.out.extend_from_slice(key.name());
        let mut inner = Object::new(self.out);
        fill(&mut inner)?;
        inner.end();
        Ok(())
    }

    /// Closes the object: the first key's comma becomes `{` (an empty object gets one).
    pub fn end(self) {
        match self.out.get_mut(self.start) {
            Some(comma) => *comma = b'{',
            None => self.out.push(b'{'),
        }
        self.out.push(b'}');
    }
}

/// Appends a number's few digits byte by byte: a memcpy call costs more than the copy.
fn digits(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        out.push(b);
    }
}

/// `bytes` between quotes, for values that hold nothing JSON escapes.
fn quoted(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

/// Whether serde_json would escape something in `s`: control characters, quote and
/// backslash, nothing else. Sixteen bytes at a time, the last sixteen overlapping those
/// before them: a string of sixteen bytes or more has no tail to test byte by byte.
fn needs_escape(s: &str) -> bool {
    // Without early exit, so it vectorises: most strings are short and clean.
    fn any(bytes: &[u8]) -> bool {
        bytes.iter().fold(false, |esc, &b| {
            esc | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    }
    let bytes = s.as_bytes();
    match bytes.len().checked_sub(16) {
        None => any(bytes),
        Some(last) => {
            let (blocks, _) = bytes.as_chunks::<16>();
            blocks.iter().fold(false, |esc, block| esc | any(block)) | any(&bytes[last..])
        }
    }
}

// Tried: serde_json's escaping apart in a cold function, as the rare paths of numbers are:
// the same instructions to the last (the compiler had set it apart already).
impl Json for str {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        if needs_escape(self) {
            serde_json::to_writer(out, self)
        } else {
            quoted(out, self.as_bytes());
            Ok(())
        }
    }
}

impl Json for String {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        self.as_str().write_json(out)
    }
}

/// The names the program itself writes (protocol, app, state and reason names) are
/// `&'static str` constants of plain ASCII: copied without the escape test.
impl Json for &'static str {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        debug_assert!(!needs_escape(self), "{self:?}");
        quoted(out, self.as_bytes());
        Ok(())
    }
}

/// Text the program puts together from its own letters (a flow's history), which holds
/// nothing JSON escapes: copied without the escape test, as the `&'static str` names are.
pub struct Plain<'a>(pub &'a str);

impl Json for Plain<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        debug_assert!(!needs_escape(self.0), "{:?}", self.0);
        quoted(out, self.0.as_bytes());
        Ok(())
    }
}

impl<T: Json> Json for Option<T> {
    fn is_null(&self) -> bool {
        self.is_none()
    }

    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Some(v) => v.write_json(out),
            None => {
                out.extend_from_slice(b"null");
                Ok(())
            }
        }
    }
}

impl<T: Json> Json for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.push(b'[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            v.write_json(out)?;
        }
        out.push(b']');
        Ok(())
    }
}

impl Json for bool {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
        Ok(())
    }
}

/// Appends `n` in decimal, as serde_json writes integers. Most numbers in a record
/// (counts, TTLs, codes) have one or two digits: those inline, the rest through
/// [`long_uint`].
#[inline]
fn uint(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
    } else if n < 100 {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    } else {
        long_uint(out, n);
    }
}

/// `n` below 10^8 as eight decimal digits, leading zeros included, one digit value (0 to
/// 9) a byte, the first digit lowest (as it goes to memory). SWAR: two halves of four
/// digits, split in pairs, then in digits, each step one multiply for every lane at once
/// (`* 10486 >> 20` is `/ 100` below 43,699; `* 103 >> 10` is `/ 10` below 179).
#[inline(always)]
fn digit_values(n: u32) -> u64 {
    debug_assert!(n < 100_000_000);
    let x = u64::from(n / 10_000) | u64::from(n % 10_000) << 32;
    let hundreds = ((x * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let x = hundreds | (x - hundreds * 100) << 16;
    let tens = ((x * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | (x - tens * 10) << 8
}

/// The ASCII `0` in every byte: digit values to their text.
const ZEROS: u64 = u64::from_le_bytes(*b"00000000");

/// Appends the eight bytes of `text` (the first byte lowest) and keeps `len` of them: one
/// store of a known size and a shorter length, instead of a copy of a length not known.
#[inline(always)]
fn put8(out: &mut Vec<u8>, text: u64, len: usize) {
    let at = out.len();
    out.extend_from_slice(&text.to_le_bytes());
    out.truncate(at + len);
}

/// Whether `out` has no room for `n` more bytes. A writer that asks first and leaves the
/// rare case to [`grown`] appends its `n` with a test that the compiler knows to pass: it
/// calls nothing, and saves no registers for a call (a tenth of its instructions).
#[inline(always)]
fn no_room(out: &Vec<u8>, n: usize) -> bool {
    out.capacity() - out.len() < n
}

/// `write` of `value` once `out` has room for `n` more bytes: the rare path of the
/// writers that ask [`no_room`] first.
#[cold]
#[inline(never)]
fn grown<T>(out: &mut Vec<u8>, n: usize, value: T, write: fn(&mut Vec<u8>, T)) {
    out.reserve(n);
    write(out, value);
}

/// Out of line, so that the short numbers' path stays small. Eight digits at a time
/// ([`digit_values`]) without their leading zeros: the pairs of digits from a table, two
/// at a time from the last, took half as many instructions more. `n` is not zero.
#[inline(never)]
fn long_uint(out: &mut Vec<u8>, n: u64) {
    if n >= 100_000_000 {
        return huge_uint(out, n);
    }
    if no_room(out, 8) {
        return grown(out, 8, n, long_uint);
    }
    let digits = digit_values(n as u32);
    let zeros = digits.trailing_zeros() as usize / 8;
    put8(out, (digits | ZEROS) >> (8 * zeros), 8 - zeros);
}

/// Nine digits and more, rare (a flow's bytes past 100 MB): the leading part, then eight
/// digits. Apart, so that [`long_uint`] calls nothing and saves no registers.
#[cold]
#[inline(never)]
fn huge_uint(out: &mut Vec<u8>, n: u64) {
    long_uint(out, n / 100_000_000);
    put8(out, digit_values((n % 100_000_000) as u32) | ZEROS, 8);
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl Json for $t {
            // Inlined: a call cost as much as writing a short number.
            #[inline]
            fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
                uint(out, u64::from(*self));
                Ok(())
            }
        }
    )*};
}

integers!(u8, u16, u32, u64);

/// `x` as a whole number of millionths, when it is the double closest to that decimal
/// between 1e-5 (below, zmij writes an exponent) and 1e9. Such a decimal has at most 15
/// significant digits, so no other decimal as short reads back as `x`: its digits are the
/// shortest that round-trip, which zmij writes. The records' figures (durations in
/// microseconds, means and times rounded to two places, whole numbers) are all such.
fn millionths(x: f64) -> Option<u64> {
    if !(1e-5..1e9).contains(&x) {
        return None;
    }
    // Below 1e15: in i64, whose conversions from and to f64 are cheaper than u64's.
    let n = (x * 1e6 + 0.5) as i64;
    (n as f64 / 1e6 == x).then_some(n as u64)
}

/// `x` as a whole number of hundredths, below 10^7 (`x` below 100,000), when it is the
/// double closest to that decimal: as with [`millionths`], its digits are then the
/// shortest that round-trip. Most of a record's figures are rounded to two places (means,
/// active times, round trips). The candidate is `x * 100` rounded by adding 2^52, which
/// leaves the sum no fraction bits: its bits less those of 2^52 are the whole number.
#[inline(always)]
fn hundredths(x: f64) -> Option<u32> {
    use crate::flows::activity::TWO_52;
    if !(0.01..1e5).contains(&x) {
        return None;
    }
    let sum = x * 100.0 + TWO_52;
    ((sum - TWO_52) / 100.0 == x).then_some((sum.to_bits() - TWO_52.to_bits()) as u32)
}

/// `h` hundredths (below 10^7) as zmij writes their number: the whole part without
/// leading zeros, the point, and one or two decimals, at most eight bytes. The eight
/// digits of `h` are six of the whole part (the first a zero) and two of the fraction:
/// the point goes in between in a register, and the last decimal after them when it is
/// not zero.
#[inline(always)]
fn put_hundredths(out: &mut Vec<u8>, h: u32) {
    let digits = digit_values(h);
    // Leading zeros of the whole part, all but its last digit: one at least.
    let zeros = (digits.trailing_zeros() as usize / 8).clamp(1, 5);
    let text = digits | ZEROS;
    let point = text & 0x0000_ffff_ffff_ffff | u64::from(b'.') << 48 | (text >> 48 & 0xff) << 56;
    let last = digits >> 56;
    let len = 8 - zeros;
    let text = point >> (8 * zeros) | (last | u64::from(b'0')) << (8 * len);
    put8(out, text, len + usize::from(last != 0));
}

impl Json for f64 {
    /// Finite numbers as `zmij` writes them for serde_json, NaN and infinities as null.
    /// A third of a record's numbers are zero (the idle times of short flows): written
    /// where they are, without a call; -0.0 is left to zmij for its sign.
    #[inline(always)]
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        if self.to_bits() == 0 {
            out.extend_from_slice(b"0.0");
        } else {
            decimal(out, *self);
        }
        Ok(())
    }
}

/// Two in three of a record's numbers are whole (29.0, 80.0), most others have a few
/// decimals (0.065, 1406.33): `zmij` writes those as their digits around a point, which
/// integer arithmetic does in a fraction of the time.
#[inline(never)]
fn decimal(out: &mut Vec<u8>, x: f64) {
    if let Some(h) = hundredths(x) {
        if no_room(out, 8) {
            return grown(out, 8, x, decimal);
        }
        return put_hundredths(out, h);
    }
    other_decimal(out, x);
}

/// Numbers not of hundredths: the records' durations (of microseconds), and the rest.
#[inline(never)]
fn other_decimal(out: &mut Vec<u8>, x: f64) {
    let Some(n) = millionths(x) else {
        return unusual(out, x);
    };
    uint(out, n / 1_000_000);
    let fraction = (n % 1_000_000) as u32;
    if fraction == 0 {
        return out.extend_from_slice(b".0");
    }
    // The point and six digits, put together in a register (the first byte lowest, as it
    // goes to memory): built in memory, they were read back at once, and the read stalled
    // on the stores. The six are the eight digits but their two leading zeros, whose bytes
    // are now the highest two; kept up to the last that is not zero (there is one: the
    // fraction is not zero): the point and six digits, less the zero bytes above the last
    // that is not zero, but the two.
    let digits = digit_values(fraction) >> 16;
    let len = 9 - digits.leading_zeros() as usize / 8;
    put8(out, u64::from(b'.') | (digits | ZEROS) << 8, len);
}

/// Numbers of other shapes (exponents, many digits), NaN and infinities: rare, apart so
/// that [`other_decimal`] saves none of the registers zmij needs.
#[cold]
#[inline(never)]
fn unusual(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        digits(out, zmij::Buffer::new().format_finite(x));
    } else {
        out.extend_from_slice(b"null");
    }
}

impl Json for IpAddr {
    /// The `Display` form, as serde writes addresses, without `fmt`.
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            IpAddr::V4(v4) => quoted_ipv4(out, *v4),
            IpAddr::V6(v6) => {
                out.push(b'"');
                ipv6(out, *v6);
                out.push(b'"');
            }
        }
        Ok(())
    }
}

/// An IPv4 address between quotes, at most 17 bytes.
#[inline(never)]
fn quoted_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    if no_room(out, 17) {
        return grown(out, 17, ip, quoted_ipv4);
    }
    ipv4(out, ip, true);
}

/// Each octet's decimal digits and a dot, padded to four bytes, and how many of the four
/// are text: an address is four of them, put together in a register.
const OCTETS: [([u8; 4], u8); 256] = {
    let mut table = [([0; 4], 0); 256];
    let mut n = 0;
    while n < 256 {
        let [h, t, u] = [
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ];
        table[n] = match n {
            0..10 => ([u, b'.', 0, 0], 2),
            10..100 => ([t, u, b'.', 0], 3),
            _ => ([h, t, u, b'.'], 4),
        };
        n += 1;
    }
    table
};

/// Dotted decimal, between quotes if `quoted`, written where it goes: room for the
/// longest appended (quotes first), each octet's four bytes of [`OCTETS`] stored at its
/// place (the next octet's overwrite its padding), then the text cut to its length. Put
/// together in a `u128` and appended in one copy, it took twice the instructions (the
/// shifts of two-word integers); put together in a buffer and then copied, the copy
/// stalled on the stores it read back at once, which this never reads.
#[inline(always)]
fn ipv4(out: &mut Vec<u8>, ip: Ipv4Addr, quoted: bool) {
    let at = out.len();
    out.extend_from_slice(&[b'"'; 17]);
    let text = &mut out[at..];
    // After the opening quote; at most 1 + 4 + 4 + 4 before the last octet's four bytes:
    // within the seventeen.
    let mut end = usize::from(quoted);
    for n in ip.octets() {
        let (digits, len) = OCTETS[usize::from(n)];
        text[end..end + 4].copy_from_slice(&digits);
        end += usize::from(len);
    }
    // The dot after the last octet: the closing quote, or cut.
    if quoted {
        text[end - 1] = b'"';
    }
    out.truncate(at + end - usize::from(!quoted));
}

/// RFC 5952 text as `Ipv6Addr`'s `Display` writes it: lower-case hex groups without
/// leading zeros, the first longest run of two or more zero groups as `::`, and an
/// IPv4-mapped address as `::ffff:` and dotted decimal.
fn ipv6(out: &mut Vec<u8>, ip: Ipv6Addr) {
    if let Some(v4) = ip.to_ipv4_mapped() {
        out.extend_from_slice(b"::ffff:");
        return ipv4(out, v4, false);
    }
    let groups = ip.segments();
    // (start, length) of the first longest zero run.
    let (mut zeros, mut run) = ((0, 0), (0, 0));
    for (i, &g) in groups.iter().enumerate() {
        if g != 0 {
            run = (i + 1, 0);
            continue;
        }
        run.1 += 1;
        if run.1 > zeros.1 {
            zeros = run;
        }
    }
    let hex = |out: &mut Vec<u8>, groups: &[u16]| {
        for (i, &g) in groups.iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            let digits = (16 - g.leading_zeros()).div_ceil(4).max(1);
            for d in (0..digits).rev() {
                out.push(b"0123456789abcdef"[usize::from((g >> (4 * d)) & 0xf)]);
            }
        }
    };
    if zeros.1 > 1 {
        hex(out, &groups[..zeros.0]);
        out.extend_from_slice(b"::");
        hex(out, &groups[zeros.0 + zeros.1..]);
    } else {
        hex(out, &groups);
    }
}

impl Json for Timestamp {
    /// RFC 3339 as [`Timestamp`]'s `Display` writes it: the text to the second (from the
    /// cache of the last second), then `.ffffffZ`, eight bytes put together in a register,
    /// and the quotes, all in one copy of a known size.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let micros = (self.0 % 1_000_000_000 / 1_000) as u32;
        let fraction = u64::from(b'.') | ((digit_values(micros) | ZEROS) >> 16) << 8;
        let mut text = [b'"'; 29];
        text[1..20].copy_from_slice(&self.to_the_second());
        text[20..28].copy_from_slice(&(fraction | u64::from(b'Z') << 56).to_le_bytes());
        out.extend_from_slice(&text);
        Ok(())
    }
}

/// Base64 and a prefix, nothing JSON escapes: the bytes are copied whole, without the
/// UTF-8 check of `as_str`, which cost six times the copy.
impl Json for CommunityId {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut text = [b'"'; 32];
        text[1..31].copy_from_slice(self.as_bytes());
        out.extend_from_slice(&text);
        Ok(())
    }
}

impl Json for Country {
    /// Two ASCII letters (as `Country::new` made them) between quotes, in one copy.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match *self.as_str().as_bytes() {
            [a, b] => out.extend_from_slice(&[b'"', a, b, b'"']),
            _ => return self.as_str().write_json(out),
        }
        Ok(())
    }
}

/// The far ends of f64 (and not numbers at all), for the tests of what writes them.
#[cfg(test)]
pub(crate) const EXTREME_F64: [f64; 6] = [
    1e300,
    f64::MIN_POSITIVE,
    f64::MAX,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ours<T: Json + ?Sized>(v: &T) -> String {
        let mut out = Vec::new();
        v.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn theirs<T: Serialize + ?Sized>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}",
            "é ü 漢字 🦀",
        ] {
            assert_eq!(ours(s), theirs(s), "{s:?}");
        }
        // Each byte that is escaped, and some that are not, at every place of strings of
        // many lengths.
        for len in 1..40 {
            for at in 0..len {
                for b in [0x00, 0x1f, b'"', b'\\', b' ', 0x7f, b'a'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let s = String::from_utf8(bytes).unwrap();
                    assert_eq!(ours(s.as_str()), theirs(&s), "{s:?}");
                }
            }
        }
        assert_eq!(ours(&Some("x\ny".to_string())), theirs(&Some("x\ny")));
        assert_eq!(ours(&None::<String>), "null");
        let list = vec!["a".to_string(), "\"b\"".to_string()];
        assert_eq!(ours(&list), theirs(&list));
        assert_eq!(ours(&Vec::<String>::new()), "[]");
        assert_eq!(ours(&"udp"), "\"udp\"");
    }

    #[test]
    fn numbers_as_serde_json_writes_them() {
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            29.0,
            80.0,
            123_456_789.0,
            999_999_999_999_999.0,
            1e15,
            1e16,
            9_007_199_254_740_993.0,
            0.5,
            -1e15,
            0.1,
            29.0,
            1406.33,
            1e-7,
            1e21,
        ]
        .into_iter()
        .chain(EXTREME_F64)
        {
            assert_eq!(ours(&f), theirs(&f), "{f}");
        }
        assert_eq!(ours(&u64::MAX), theirs(&u64::MAX));
        let edges = [
            9_999,
            10_000,
            99_999,
            100_000,
            123_456_789,
            1 << 32,
            u64::MAX,
        ];
        // Each count of digits, at its ends.
        let powers = (0..20).map(|k| 10u64.pow(k));
        let around = powers.flat_map(|p| [p - 1, p, p + 1, p.saturating_mul(10) - 1]);
        for n in (0..1000u64).chain(edges).chain(around) {
            assert_eq!(ours(&n), theirs(&n));
        }
        assert_eq!(ours(&0u8), "0");
        assert_eq!(ours(&65535u16), "65535");
        assert_eq!(ours(&true), "true");
        assert_eq!(ours(&false), "false");
    }

    /// Each half of four digits at every value, with the other half at its edges (the
    /// halves' lanes do not touch), and every number below two million.
    #[test]
    fn digit_values_are_the_eight_digits() {
        let halves = (0..10_000u32).flat_map(|a| {
            [0, 1, 5_000, 9_999]
                .into_iter()
                .flat_map(move |b| [a * 10_000 + b, b * 10_000 + a])
        });
        for n in halves.chain(0..2_000_000).chain([99_999_999]) {
            let text = (digit_values(n) | ZEROS).to_le_bytes();
            assert_eq!(text, *format!("{n:08}").as_bytes(), "{n}");
        }
    }

    /// The shapes of the records' rounded figures, at every scale, and their neighbours.
    #[test]
    fn decimals_as_serde_json_writes_them() {
        let next = |x: f64, by: u64| f64::from_bits(x.to_bits().wrapping_add(by));
        let mut checked = 0;
        for n in (0..2_000_000u64).step_by(7).chain(999_990..1_000_010) {
            for scale in [1e2, 1e3, 1e6] {
                for x in [n as f64 / scale, (n as f64 * 1e3 + 1.0) / scale] {
                    for x in [x, next(x, 1), next(x, u64::MAX)] {
                        assert_eq!(ours(&x), theirs(&x), "{x}");
                        checked += 1;
                    }
                }
            }
        }
        // Randomish values, rounded as records round them, up to past the fast path's limit.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let x = (seed >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((seed % 24) as i32 - 8);
            for x in [x, (x * 100.0).round() / 100.0, (x * 1e6).round() / 1e6] {
                assert_eq!(ours(&x), theirs(&x), "{x}");
            }
        }
        assert!(checked > 1_000_000);
    }

    /// Every number of hundredths below a million, those around the fast path's limit of
    /// 10^7 and around 10^8, and their neighbours.
    #[test]
    fn hundredths_as_serde_json_writes_them() {
        let next = |x: f64, by: u64| f64::from_bits(x.to_bits().wrapping_add(by));
        let limits = (9_999_000..10_001_000).chain(99_999_000..100_001_000);
        for h in (0..1_000_000u64).chain(limits) {
            let x = h as f64 / 100.0;
            for x in [x, next(x, 1), next(x, u64::MAX)] {
                assert_eq!(ours(&x), theirs(&x), "{x}");
            }
        }
    }

    #[test]
    fn addresses_as_serde_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "255.255.255.255",
            "192.0.2.80",
            "::",
            "::1",
            "2001:db8::1",
            "2001:db8:8::93ec:4a57",
            "::ffff:192.0.2.1",
            "fe80::1:0:0:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ours(&ip), theirs(&ip), "{ip}");
        }
        // Every octet at every place, plain and IPv4-mapped.
        for n in 0..=255u8 {
            for place in 0..4 {
                let mut octets = [1, 22, 255, 3];
                octets[place] = n;
                let v4 = Ipv4Addr::from(octets);
                for ip in [IpAddr::V4(v4), IpAddr::V6(v4.to_ipv6_mapped())] {
                    assert_eq!(ours(&ip), theirs(&ip), "{ip}");
                }
            }
        }
        // Every pattern of zero and non-zero groups, non-zero groups of every width.
        for zeros in 0u32..256 {
            let mut groups = [0u16; 8];
            for (i, g) in groups.iter_mut().enumerate() {
                if zeros & (1 << i) == 0 {
                    *g = [0x1, 0xab, 0xf00, 0xffff][i % 4];
                }
            }
            let ip = IpAddr::V6(groups.into());
            assert_eq!(ours(&ip), theirs(&ip), "{ip}");
        }
    }

    #[test]
    fn timestamps_and_countries_as_serde_writes_them() {
        for t in [
            Timestamp(0),
            Timestamp(1_762_092_191_123_456_789),
            Timestamp(u64::MAX),
        ] {
            assert_eq!(ours(&t), theirs(&t));
        }
        let de = Country::new("de").unwrap();
        assert_eq!(ours(&de), theirs(&de));
        let id = crate::flows::community_id::community_id(
            crate::decode::Proto::Udp,
            "192.0.2.1".parse().unwrap(),
            5353,
            "2001:db8::1".parse().unwrap(),
            53,
        );
        assert_eq!(ours(&id), theirs(&id));
    }

    #[test]
    fn objects_nest_and_may_be_empty() {
        let mut out = Vec::new();
        let mut o = Object::new(&mut out);
        o.field(key!(a), &1u8).unwrap();
        o.object(key!(b), |_| Ok(())).unwrap();
        o.serde(key!(c), &[1, 2]).unwrap();
        o.field(key!(d), &None::<u8>).unwrap();
        o.field(key!(e), &Some(2u8)).unwrap();
        o.end();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":1,"b":{},"c":[1,2],"d":null,"e":2}"#
        );
    }
}
