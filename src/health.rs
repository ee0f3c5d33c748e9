//! What `/healthz` says about a live sensor: not only "the capture loop runs", but whether
//! it is doing its job. Output writes failing means findings are being lost: the sensor is
//! failing (503), and an orchestrator should act. Packets dropped (by the kernel's ring, the
//! interface, or the sensor's own queue) mean it sees less than the link carries: it is
//! degraded (still 200, since a restart would lose its state and not add capacity), and
//! the body says so; the drop counters and their alert rules carry the detail.
//!
//! Health is about now, so it runs on wall time, over a window: a fault seen in the last
//! [`WINDOW`] counts, an old one does not.

use std::time::{Duration, Instant};

/// How long a fault keeps the sensor unhealthy after it was last seen growing.
pub const WINDOW: Duration = Duration::from_secs(30);

/// The counters health follows, as last published, and when each last grew.
#[derive(Debug, Default)]
pub struct Health {
    failed_writes: Growth,
    drops: Growth,
}

#[derive(Debug, Default)]
struct Growth {
    total: u64,
    /// The total when the current window of growth began.
    since: u64,
    last_grew: Option<Instant>,
}

impl Growth {
    fn update(&mut self, now: Instant, total: u64) {
        if total > self.total {
            if self
                .last_grew
                .is_none_or(|t| now.duration_since(t) > WINDOW)
            {
                self.since = self.total;
            }
            self.last_grew = Some(now);
        }
        self.total = total;
    }

    /// How much it grew in the window that is still open at `now`.
    fn recent(&self, now: Instant) -> Option<u64> {
        let t = self.last_grew?;
        (now.duration_since(t) <= WINDOW).then_some(self.total - self.since)
    }
}

/// The answer of `/healthz`.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Capturing, but packets are being lost: how many in the window.
    Degraded(String),
    /// Findings or records are being lost, or the capture does not run.
    Failing(String),
}

impl Health {
    /// The newest published counters: failed output writes, and drops (kernel, interface, queue).
    pub fn update(&mut self, now: Instant, failed_writes: u64, drops: u64) {
        self.failed_writes.update(now, failed_writes);
        self.drops.update(now, drops);
    }

    pub fn status(&self, now: Instant, capturing: bool) -> Status {
        if !capturing {
            return Status::Failing("not capturing".to_string());
        }
        if let Some(n) = self.failed_writes.recent(now) {
            return Status::Failing(format!(
                "output writes failing: {n} failed in the last {} s, records are being lost",
                WINDOW.as_secs()
            ));
        }
        match self.drops.recent(now) {
            Some(n) => Status::Degraded(format!(
                "dropping packets: {n} lost in the last {} s",
                WINDOW.as_secs()
            )),
            None => Status::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_count_while_recent_and_are_forgotten_after_the_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = Health::default();
        h.update(at(0), 0, 0);
        assert_eq!(
            h.status(at(0), false),
            Status::Failing("not capturing".into())
        );
        assert_eq!(h.status(at(0), true), Status::Ok);

        h.update(at(1), 0, 40);
        h.update(at(2), 0, 100);
        let Status::Degraded(why) = h.status(at(2), true) else {
            panic!("drops should degrade");
        };
        assert!(why.contains("100 lost"), "{why}");

        h.update(at(3), 5, 100);
        let Status::Failing(why) = h.status(at(3), true) else {
            panic!("failed writes should fail");
        };
        assert!(why.contains("5 failed"), "{why}");

        // Nothing grows any more: once the window has passed, the sensor is healthy again.
        h.update(at(20), 5, 100);
        assert!(matches!(h.status(at(20), true), Status::Failing(_)));
        h.update(at(34), 5, 100);
        assert_eq!(h.status(at(34), true), Status::Ok);

        // A new burst counts from where it began, not from the start.
        h.update(at(40), 5, 130);
        let Status::Degraded(why) = h.status(at(40), true) else {
            panic!("new drops should degrade");
        };
        assert!(why.contains("30 lost"), "{why}");
    }
}
