//! What one direction of a flow did: counts, sizes, gaps, and ON/OFF periods.
//!
//! An ON period starts with the first data packet after at least `idle` of silence (Zhang
//! & Paxson, USENIX Security 2000, use 0.5 s); the stepping-stone detector correlates these
//! resumes across flows, and the remote-desktop detector reads the sizes and active time.

use serde::Serialize;

use crate::timestamp::Timestamp;

/// Running mean and variance (Welford), so statistics cost 16 bytes, not a sample list. The
/// count is the owner's (a direction already counts its data packets and resumes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Moments {
    pub mean: f64,
    m2: f64,
}

impl Moments {
    /// Adds `x` as the `n`th sample.
    pub fn add(&mut self, x: f64, n: u64) {
        let d = x - self.mean;
        self.mean += d / n.max(1) as f64;
        self.m2 += d * (x - self.mean);
    }

    pub fn stddev(&self, n: u64) -> f64 {
        if n < 2 {
            0.0
        } else {
            (self.m2 / (n - 1) as f64).sqrt()
        }
    }
}

/// Payload sizes at or below this are input-sized (keystrokes, mouse moves, acks).
pub const SMALL_PAYLOAD: u32 = 100;
/// Payload sizes at or above this are bulk-sized (screen updates, file data).
pub const LARGE_PAYLOAD: u32 = 1000;

#[derive(Clone, Copy, Debug, Default)]
pub struct Activity {
    pub pkts: u64,
    /// Transport payload bytes (what Zeek calls orig_bytes/resp_bytes).
    pub bytes: u64,
    /// IP-layer bytes.
    pub ip_bytes: u64,
    /// Frame bytes on the wire, link header included (what tshark's conversations count).
    pub wire_bytes: u64,
    pub data_pkts: u64,
    pub small_pkts: u64,
    pub large_pkts: u64,
    /// Largest payload, saturating at 65,535 (an IP datagram's limit; only a jumbogram is
    /// larger): two bytes less per direction of every flow.
    pub max_payload: u16,
    /// Idle→active transitions.
    pub resumes: u32,
    /// First and latest data packet; meaningful once `data_pkts > 0` (see the accessors).
    first_data_ts: Timestamp,
    last_data_ts: Timestamp,
    /// Time spent inside ON periods.
    pub active_ns: u64,
    pub sizes: Moments,
    /// Gaps between data packets inside ON periods, in seconds.
    pub gaps: Moments,
    pub min_ttl: u8,
}

impl Activity {
    /// Counts one packet; returns true when it starts an ON period.
    pub fn observe(
        &mut self,
        ts: Timestamp,
        payload_len: u32,
        ip_len: u32,
        wire_len: u32,
        ttl: u8,
        idle_ns: u64,
    ) -> bool {
        self.pkts += 1;
        self.bytes += payload_len as u64;
        self.ip_bytes += ip_len as u64;
        self.wire_bytes += wire_len as u64;
        self.min_ttl = if self.pkts == 1 {
            ttl
        } else {
            self.min_ttl.min(ttl)
        };
        if payload_len == 0 {
            return false;
        }
        self.data_pkts += 1;
        let clamped = u16::try_from(payload_len).unwrap_or(u16::MAX);
        self.max_payload = self.max_payload.max(clamped);
        if payload_len <= SMALL_PAYLOAD {
            self.small_pkts += 1;
        }
        if payload_len >= LARGE_PAYLOAD {
            self.large_pkts += 1;
        }
        self.sizes.add(payload_len as f64, self.data_pkts);
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
                    // This packet is counted, and is no resume: it is gap number `gap_count`.
                    self.gaps.add(gap as f64 / 1e9, self.gap_count());
                    false
                }
            }
        };
        if self.data_pkts == 1 {
            self.first_data_ts = ts;
        }
        self.last_data_ts = ts;
        if resumed {
            self.resumes += 1;
        }
        resumed
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
            mean_payload: round2(self.sizes.mean),
            resumes: self.resumes,
            active_s: round2(self.active_ns as f64 / 1e9),
            mean_gap_ms: round2(self.gaps.mean * 1e3),
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

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
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
        assert!(a.observe(ms(0), 10, 50, 64, 64, IDLE));
        assert!(!a.observe(ms(100), 10, 50, 64, 64, IDLE));
        // A pure ACK neither resumes nor ends an ON period.
        assert!(!a.observe(ms(900), 0, 40, 54, 64, IDLE));
        assert!(a.observe(ms(700), 1400, 1440, 1454, 60, IDLE));
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
        assert!(!a.observe(ms(5), 0, 40, 54, 64, IDLE));
        assert_eq!((a.first_data(), a.last_data()), (None, None));
        assert_eq!(a.gap_count(), 0);
    }

    #[test]
    fn moments_match_textbook_values() {
        let mut m = Moments::default();
        for (i, x) in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
            .into_iter()
            .enumerate()
        {
            m.add(x, i as u64 + 1);
        }
        assert_eq!(m.mean, 5.0);
        assert!((m.stddev(8) - 2.138).abs() < 0.001);
    }
}
