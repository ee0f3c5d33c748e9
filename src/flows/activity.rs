//! What one direction of a flow did: counts, sizes, gaps, and ON/OFF periods.
//!
//! An ON period starts with the first data packet after at least `idle` of silence (Zhang
//! & Paxson, USENIX Security 2000, use 0.5 s); the stepping-stone detector correlates these
//! resumes across flows, and the remote-desktop detector reads the sizes and active time.

use serde::Serialize;

use crate::timestamp::Timestamp;

/// Payload sizes at or below this are input-sized (keystrokes, mouse moves, acks).
pub const SMALL_PAYLOAD: u32 = 100;
/// Payload sizes at or above this are bulk-sized (screen updates, file data).
pub const LARGE_PAYLOAD: u32 = 1000;

/// `repr(C)`, in the order a packet touches the fields, 8-byte slots: a packet's own
/// counters first (slots 0–3: what a pure ACK writes), then a data packet's (4–7), then
/// the sometimes and once (8–11). [`crate::flows::Flow`] starts the originator's at a cache
/// line and the responder's half-way through the next, so either side's ACKs touch one
/// line and its data segments one or two.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Activity {
    pub pkts: u64,
    /// IP-layer bytes.
    pub ip_bytes: u64,
    /// Frame bytes on the wire, link header included (what tshark's conversations count).
    pub wire_bytes: u64,
    /// Largest payload, saturating at 65,535 (an IP datagram's limit; only a jumbogram is
    /// larger): two bytes less per direction of every flow.
    pub max_payload: u16,
    pub min_ttl: u8,
    /// Idle→active transitions.
    pub resumes: u32,
    /// Transport payload bytes (what Zeek calls orig_bytes/resp_bytes).
    pub bytes: u64,
    pub data_pkts: u64,
    /// Latest data packet (like `first_data_ts` and `on_since`, meaningful once
    /// `data_pkts > 0`: see the accessors).
    last_data_ts: Timestamp,
    /// Time spent inside ON periods: the sum of the gaps between data packets inside them,
    /// so the mean gap is `active_ns / gap_count()` and needs no running statistic.
    pub active_ns: u64,
    pub small_pkts: u64,
    pub large_pkts: u64,
    /// First data packet.
    first_data_ts: Timestamp,
    /// Start of the current ON period.
    on_since: Timestamp,
}

/// A data packet after at least `idle` of silence: an ON period starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// When the previous ON period of this direction started; `None` for the first.
    pub prev: Option<Timestamp>,
}

impl Activity {
    /// Counts one packet; says so when it starts an ON period.
    pub fn observe(
        &mut self,
        ts: Timestamp,
        payload_len: u32,
        ip_len: u32,
        wire_len: u32,
        ttl: u8,
        idle_ns: u64,
    ) -> Option<Resume> {
        self.pkts += 1;
        self.ip_bytes += ip_len as u64;
        self.wire_bytes += wire_len as u64;
        self.min_ttl = if self.pkts == 1 {
            ttl
        } else {
            self.min_ttl.min(ttl)
        };
        if payload_len == 0 {
            return None;
        }
        // Payload bytes after the early return: an ACK adds none, and leaves the data
        // packet's slots alone.
        self.bytes += payload_len as u64;
        self.data_pkts += 1;
        let clamped = u16::try_from(payload_len).unwrap_or(u16::MAX);
        self.max_payload = self.max_payload.max(clamped);
        if payload_len <= SMALL_PAYLOAD {
            self.small_pkts += 1;
        }
        if payload_len >= LARGE_PAYLOAD {
            self.large_pkts += 1;
        }
        // Counted already: the previous data packet exists when this is not the first.
        let previous = (self.data_pkts > 1).then_some(self.last_data_ts);
        let resumed = match previous {
            None => true,
            Some(last) => {
                let gap = ts.0.saturating_sub(last.0);
                if gap >= idle_ns {
                    true
                } else {
                    self.active_ns += gap;
                    false
                }
            }
        };
        if self.data_pkts == 1 {
            self.first_data_ts = ts;
        }
        self.last_data_ts = ts;
        if !resumed {
            return None;
        }
        let prev = previous.map(|_| self.on_since);
        self.on_since = ts;
        self.resumes += 1;
        Some(Resume { prev })
    }

    /// The first data packet's time.
    pub fn first_data(&self) -> Option<Timestamp> {
        (self.data_pkts > 0).then_some(self.first_data_ts)
    }

    /// The latest data packet's time.
    pub fn last_data(&self) -> Option<Timestamp> {
        (self.data_pkts > 0).then_some(self.last_data_ts)
    }

    /// Gaps measured so far: every data packet but those that started an ON period.
    pub fn gap_count(&self) -> u64 {
        self.data_pkts.saturating_sub(u64::from(self.resumes))
    }

    pub fn summary(&self) -> ActivitySummary {
        ActivitySummary {
            data_pkts: self.data_pkts,
            small_pkts: self.small_pkts,
            large_pkts: self.large_pkts,
            max_payload: u32::from(self.max_payload),
            mean_payload: round2(mean(self.bytes as f64, self.data_pkts)),
            resumes: self.resumes,
            active_s: round2(self.active_ns as f64 / 1e9),
            mean_gap_ms: round2(mean(self.active_ns as f64 / 1e6, self.gap_count())),
        }
    }
}

/// The activity figures written into flow records.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ActivitySummary {
    pub data_pkts: u64,
    pub small_pkts: u64,
    pub large_pkts: u64,
    pub max_payload: u32,
    pub mean_payload: f64,
    pub resumes: u32,
    pub active_s: f64,
    pub mean_gap_ms: f64,
}

/// `sum / n`, or 0 with nothing to average.
fn mean(sum: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// `x` to two decimals, as records and evidence print their figures.
pub fn round2(x: f64) -> f64 {
    round(x * 100.0) / 100.0
}

/// 2^52: a non-negative double below it plus this has no fraction bits left, so the sum
/// is the double rounded to a whole number (ties to even) with no conversion to an integer.
pub(crate) const TWO_52: f64 = 4_503_599_627_370_496.0;

/// `y.round()` (half away from zero), without a call: the target has no rounding
/// instruction (x86-64 before SSE4.1), so `f64::round` called libm's, eight times a flow
/// record. For `y` from +0 to 2^52 (bits below 2^52's: no sign, no NaN), `y + 2^52` has
/// no fraction bits left and is `y` rounded to the nearest whole number, ties to even:
/// less 2^52 again, that is `y.round()` but for a tie rounded down, which `y - nearest`
/// (exact) tells. Other values go to `f64::round`. The conversion to an integer and back
/// (the whole part, then the fraction against one half) took twice the instructions.
#[inline]
pub fn round(y: f64) -> f64 {
    if y.to_bits() >= TWO_52.to_bits() {
        return y.round();
    }
    let nearest = (y + TWO_52) - TWO_52;
    if y - nearest == 0.5 {
        nearest + 1.0
    } else {
        nearest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 500_000_000;

    fn ms(m: u64) -> Timestamp {
        Timestamp(m * 1_000_000)
    }

    #[test]
    fn resumes_after_idle_only() {
        let mut a = Activity::default();
        assert_eq!(
            a.observe(ms(0), 10, 50, 64, 64, IDLE),
            Some(Resume { prev: None })
        );
        assert_eq!(a.observe(ms(100), 10, 50, 64, 64, IDLE), None);
        // A pure ACK neither resumes nor ends an ON period.
        assert_eq!(a.observe(ms(900), 0, 40, 54, 64, IDLE), None);
        assert_eq!(
            a.observe(ms(700), 1400, 1440, 1454, 60, IDLE),
            Some(Resume { prev: Some(ms(0)) })
        );
        assert_eq!(a.resumes, 2);
        assert_eq!(a.active_ns, 100_000_000);
        assert_eq!(a.small_pkts, 2);
        assert_eq!(a.large_pkts, 1);
        assert_eq!(a.min_ttl, 60);
        assert_eq!(a.wire_bytes, 64 + 64 + 54 + 1454);
        assert_eq!(
            (a.first_data(), a.last_data()),
            (Some(ms(0)), Some(ms(700)))
        );
        assert_eq!(a.gap_count(), 1);
        let s = a.summary();
        assert_eq!((s.mean_payload, s.mean_gap_ms), (473.33, 100.0));
    }

    /// The same result as `f64::round`, bit for bit, at the edges and around every half.
    #[test]
    fn round_is_f64_round() {
        let two_52 = TWO_52;
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            0.49999999999999994,
            1.5,
            2.5,
            -0.5,
            -2.5,
            two_52 - 0.5,
            two_52 - 1.0,
            two_52,
            two_52 + 1.0,
            two_52 * 2.0 + 2.0,
        ];
        values.extend(crate::flows::json::EXTREME_F64);
        for n in (0..2_000_000u64).step_by(3) {
            let half = n as f64 + 0.5;
            for x in [n as f64, half, n as f64 / 100.0, n as f64 * 1e6 + 0.5] {
                let next = |by: u64| f64::from_bits(x.to_bits().wrapping_add(by));
                values.extend([x, next(1), next(u64::MAX)]);
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            values.push(f64::from_bits(seed));
            values.push(
                (seed >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((seed % 40) as i32 - 10),
            );
        }
        for y in values {
            assert_eq!(round(y).to_bits(), y.round().to_bits(), "{y:e}");
        }
    }

    #[test]
    fn the_largest_payload_saturates_at_the_ip_limit() {
        let mut a = Activity::default();
        a.observe(ms(0), 70_000, 70_040, 70_054, 64, IDLE);
        a.observe(ms(1), 1_000, 1_040, 1_054, 64, IDLE);
        assert_eq!(a.summary().max_payload, 65_535);
    }

    #[test]
    fn a_direction_without_data_has_no_data_times() {
        let mut a = Activity::default();
        assert_eq!(a.observe(ms(5), 0, 40, 54, 64, IDLE), None);
        assert_eq!((a.first_data(), a.last_data()), (None, None));
        assert_eq!(a.gap_count(), 0);
        assert_eq!(
            (a.summary().mean_payload, a.summary().mean_gap_ms),
            (0.0, 0.0)
        );
    }
}
