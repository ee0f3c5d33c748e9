//! Packet time. Every detector reads the clock from packets, never from the wall, so a
//! replay of a capture produces the same output as the live sensor did.

use std::cell::Cell;
use std::fmt;

/// Nanoseconds since the Unix epoch, taken from a capture record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn from_secs(secs: u64) -> Timestamp {
        Timestamp(secs.saturating_mul(1_000_000_000))
    }

    pub fn from_micros(micros: u64) -> Timestamp {
        Timestamp(micros.saturating_mul(1_000))
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// Whole seconds since the epoch.
    pub fn secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    pub fn plus(self, d: std::time::Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_nanos() as u64))
    }

    /// Time from `earlier` to `self`; zero when `earlier` is later (captures are not
    /// always in order).
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 in UTC with microseconds, the `ts` format of every output record.
    pub fn rfc3339(self) -> String {
        Rfc3339::of(self).as_str().to_string()
    }

    /// `YYYY-MM-DDTHH:MM:SS`, the text to the second: flow records write two timestamps
    /// per line, the fraction by their own means.
    #[inline]
    pub fn to_the_second(self) -> [u8; 19] {
        to_the_second(self.0 / 1_000_000_000)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` in a fixed buffer: every flow record carries two
/// timestamps, so writing one must not allocate. A u64 of nanoseconds ends in 2554, so the
/// year always has four digits.
struct Rfc3339([u8; 27]);

impl Rfc3339 {
    fn of(t: Timestamp) -> Rfc3339 {
        let micros = (t.0 % 1_000_000_000 / 1_000) as u32;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        b[..19].copy_from_slice(&to_the_second(t.0 / 1_000_000_000));
        two_digits(&mut b[20..], micros / 10_000);
        two_digits(&mut b[22..], micros / 100 % 100);
        two_digits(&mut b[24..], micros % 100);
        Rfc3339(b)
    }

    fn as_str(&self) -> &str {
        // ASCII digits and separators by construction, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

thread_local! {
    /// The day last written and its `YYYY-MM-DDT` in sixteen bytes: nearly all records of
    /// a run are on one day, whose date (the dearer part, calendar arithmetic) this keeps.
    /// In eleven bytes, the date was copied byte by byte.
    static LAST_DAY: Cell<(u64, u128)> = const { Cell::new((u64::MAX, 0)) };
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` after the epoch: the date kept from the last day, the
/// time put together anew. A cache of the last second's whole text missed three times in
/// four: a flow record's start and end are seldom in one second.
#[inline]
fn to_the_second(secs: u64) -> [u8; 19] {
    let day = secs / 86_400;
    let date = LAST_DAY.with(|last| match last.get() {
        (cached, date) if cached == day => date,
        _ => new_day(last, day),
    });
    let mut text = [0; 19];
    text[..16].copy_from_slice(&date.to_le_bytes());
    text[11..].copy_from_slice(&clock((secs % 86_400) as u32).to_le_bytes());
    text
}

/// The date of `day`, kept as the last day's: once a day, apart so that the common path
/// is short enough to inline.
#[cold]
#[inline(never)]
fn new_day(last: &Cell<(u64, u128)>, day: u64) -> u128 {
    let mut text = *b"0000-00-00T\0\0\0\0\0";
    let (y, m, d) = civil_from_days(day as i64);
    let year = y as u32;
    two_digits(&mut text[0..], year / 100);
    two_digits(&mut text[2..], year % 100);
    two_digits(&mut text[5..], m);
    two_digits(&mut text[8..], d);
    let date = u128::from_le_bytes(text);
    last.set((day, date));
    date
}

/// `HH:MM:SS` of a second of the day, in a register (the first byte lowest, as it goes to
/// memory): the hours, minutes and seconds each in its lanes, their tens and ones split for
/// all three at once (`* 103 >> 10` is `/ 10` below 179), the colons between them.
fn clock(second_of_day: u32) -> u64 {
    let (h, rest) = (second_of_day / 3600, second_of_day % 3600);
    let x = u64::from(h) | u64::from(rest / 60) << 24 | u64::from(rest % 60) << 48;
    let tens = ((x * 103) >> 10) & 0x000f_0000_0f00_000f;
    tens | (x - tens * 10) << 8 | u64::from_le_bytes(*b"00:00:00")
}

/// `value`, below 100, as the first two digits of `text`: every field of a timestamp is
/// two digits or a few pairs, which take half the divisions of one digit at a time.
fn two_digits(text: &mut [u8], value: u32) {
    if let [tens, ones, ..] = text {
        *tens = b'0' + (value / 10) as u8;
        *ones = b'0' + (value % 10) as u8;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Rfc3339::of(*self).as_str())
    }
}

/// RFC 3339 with microseconds in JSON; nanoseconds in binary formats (the correlator's
/// checkpoints, [`crate::state`]), which must give back the exact time.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_u64(self.0);
        }
        s.serialize_str(Rfc3339::of(*self).as_str())
    }
}

/// Reads what `Serialize` writes (RFC 3339, microseconds), for the scale-out stream.
impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        if !d.is_human_readable() {
            return u64::deserialize(d).map(Timestamp);
        }
        let text = String::deserialize(d)?;
        let at = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let since = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?;
        Ok(Timestamp(since.as_nanos() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_micros() {
        let t = Timestamp(1_762_092_191_123_456_789);
        assert_eq!(t.rfc3339(), "2025-11-02T14:03:11.123456Z");
    }

    #[test]
    fn formats_like_chrono_across_centuries() {
        for secs in [
            0u64,
            951_782_400,
            4_107_542_399,
            1_709_164_800,
            16_725_225_599,
        ] {
            let ns = secs * 1_000_000_000 + 987_654_321;
            let ours = Timestamp(ns).rfc3339();
            assert_eq!(ours, chrono_rfc3339(secs, 987_654_321));
        }
    }

    /// What chrono writes for the time: the reference the writer is held to.
    fn chrono_rfc3339(secs: u64, nanos: u32) -> String {
        chrono::DateTime::from_timestamp(secs as i64, nanos)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    }

    /// Every second of a day, and the seconds around midnight of days far apart, as
    /// chrono writes them; the micros of each too.
    #[test]
    fn every_second_of_the_day_like_chrono() {
        let day = 1_762_041_600u64;
        let far = [0u64, 951_782_400, 4_107_542_400, 16_725_225_600];
        let edges = far
            .into_iter()
            .flat_map(|d| [d, d + 1, d + 86_399, d + 86_400]);
        for (n, secs) in (day..day + 86_400).chain(edges).enumerate() {
            let nanos = (n as u64 * 7_919_993 % 1_000_000_000) as u32;
            let ours = Timestamp(secs * 1_000_000_000 + u64::from(nanos)).rfc3339();
            assert_eq!(ours, chrono_rfc3339(secs, nanos));
        }
    }

    /// The date of the day before is not the date of the day after.
    #[test]
    fn days_change_back_and_forth() {
        let day = 86_400;
        for secs in [day - 1, day, day - 1, 0, 20_394 * day, 20_395 * day, 0] {
            let ours = Timestamp::from_secs(secs).rfc3339();
            assert_eq!(ours, chrono_rfc3339(secs, 0));
        }
    }

    /// Times in one second, the next, the one before, the same second of another day.
    #[test]
    fn seconds_change_back_and_forth() {
        let day = 86_400;
        let one_day = [100, 100, 101, 100, 59, 60, 3_599, 3_600, 3_599];
        let midnight = 20_395 * day;
        let two_days = [100 + day, 100, midnight - 1, midnight, midnight - 1];
        for (i, secs) in one_day.into_iter().chain(two_days).enumerate() {
            let nanos = (i as u32 * 123_456_789) % 1_000_000_000;
            let ours = Timestamp(secs * 1_000_000_000 + u64::from(nanos)).rfc3339();
            assert_eq!(ours, chrono_rfc3339(secs, nanos));
        }
    }

    #[test]
    fn the_last_timestamp_has_a_four_digit_year() {
        assert_eq!(Timestamp(u64::MAX).rfc3339(), "2554-07-21T23:34:33.709551Z");
    }

    #[test]
    fn since_saturates() {
        assert_eq!(Timestamp(5).since(Timestamp(9)).as_nanos(), 0);
    }
}
