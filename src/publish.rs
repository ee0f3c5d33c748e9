//! `--publish` (DESIGN §7): the account stage hands this sensor's observations, its events and
//! its packet clock to NATS JetStream, for `farmwatch correlate`. Sending happens on the
//! [`Publisher`]'s own thread; nothing here waits on the network.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, load_toml};
use crate::event::Event;
use crate::jetstream::{PublishReport, PublishStats, Publisher, StreamSetup, check_sensor_name};
use crate::observation::Observation;
use crate::timestamp::Timestamp;

/// How long a finishing replay keeps sending what is still buffered.
pub const FINISH_WAIT: Duration = Duration::from_secs(30);

/// One sensor's publishing, as the account stage drives it.
pub struct Publish {
    publisher: Publisher,
    /// The newest packet time seen: the end marker's time.
    last: Timestamp,
    /// The packet second of the last heartbeat.
    clocked: u64,
}

impl Publish {
    /// Starts publishing to `servers` (from `--publish`, replacing `[publish] servers`) as the
    /// sensor `[sensor] name`, which the config file must set: two sensors publishing under
    /// the default name would be taken for one. Every problem is one line, for exit code 2.
    pub fn start(
        config: &Config,
        config_path: Option<&Path>,
        servers: &[String],
    ) -> Result<Publish, String> {
        let named = match config_path {
            Some(p) => load_toml::<toml::Table>(p)
                .map_err(|e| e.to_string())?
                .get("sensor")
                .and_then(|s| s.get("name"))
                .is_some(),
            None => false,
        };
        if !named {
            return Err("--publish needs [sensor] name in the --config file".to_string());
        }
        let sensor = &config.sensor.name;
        check_sensor_name(sensor).map_err(|e| e.to_string())?;
        let publisher = Publisher::start(sensor, servers, &config.publish, &config.stream)
            .map_err(|e| e.to_string())?;
        Ok(Publish {
            publisher,
            last: Timestamp::ZERO,
            clocked: 0,
        })
    }

    /// An observation the account stage is about to apply, stamped `at` (packet time).
    pub fn observation(&mut self, at: Timestamp, obs: &Observation) {
        self.last = self.last.max(at);
        if let Ok(json) = serde_json::to_vec(obs) {
            self.publisher.publish_obs(&obs.id(), at, json);
        }
    }

    /// One of this sensor's own events.
    pub fn event(&mut self, event: &Event) {
        if let Ok(json) = serde_json::to_vec(event) {
            self.publisher.publish_event(&event.id, json);
        }
    }

    /// The packet clock reached `at`: a heartbeat once per packet second.
    pub fn clock(&mut self, at: Timestamp) {
        self.last = self.last.max(at);
        if at.secs() > self.clocked {
            self.clocked = at.secs();
            self.publisher.clock(at);
        }
    }

    /// The input is over: the end marker.
    pub fn end(&mut self) {
        self.publisher.end(self.last);
    }

    pub fn stats(&self) -> PublishStats {
        self.publisher.stats()
    }

    /// Sends what is buffered for at most `wait`; the lines to print (the stream's
    /// differences from `[stream]`, then the report line) and the report.
    pub fn finish(self, wait: Duration) -> (Vec<String>, PublishReport) {
        let mut lines = Vec::new();
        if let Some(Ok(StreamSetup::Existing(diffs))) = self.publisher.stream_setup(Duration::ZERO)
        {
            lines.extend(diffs);
        }
        let report = self.publisher.finish(wait);
        lines.push(report_line(&report));
        (lines, report)
    }
}

/// Whether everything offered was stored: nothing dropped, nothing left unsent.
pub fn complete(r: &PublishReport) -> bool {
    r.stats.dropped == 0 && r.buffered_unsent == 0
}

/// `published N messages: A acknowledged, D duplicate, X dropped, U unsent, R retries`.
pub fn report_line(r: &PublishReport) -> String {
    let s = &r.stats;
    let mut line = format!(
        "published {} messages: {} acknowledged, {} duplicate, {} dropped, {} unsent, {} retries",
        s.offered, s.acked, s.duplicates, s.dropped, r.buffered_unsent, s.retries
    );
    if let Some(e) = &r.last_error
        && (s.dropped > 0 || r.buffered_unsent > 0)
    {
        line.push_str(&format!(" (last problem: {e})"));
    }
    line
}
