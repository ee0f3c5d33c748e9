//! Scale-out on NATS JetStream (DESIGN §7): sensors publish observations, events and their
//! packet clock into the stream `FARMWATCH`; one correlator reads them back through a durable
//! pull consumer and checkpoints its account stage into the key-value bucket `FARMWATCH_STATE`.
//!
//! The packet path never runs async code: [`Publisher`] owns a tokio runtime on its own
//! thread and takes messages through a bounded queue, and [`CorrelateSource`] wraps its
//! runtime behind blocking calls. Both speak to the server with the `async-nats` client,
//! built without the `server_2_10` features so that nats-server 2.9 (Debian's) is enough.
//!
//! Subjects and message ids (the server deduplicates `Nats-Msg-Id` across the whole stream,
//! so each id names what it carries):
//!
//! | subject                       | `Nats-Msg-Id`              | payload                        |
//! |-------------------------------|----------------------------|--------------------------------|
//! | `farmwatch.obs.<sensor>`      | `obs.<id>`                 | the observation's JSON         |
//! | `farmwatch.events.<sensor>`   | `ev.<sensor>.<id>`         | the sensor's event JSON        |
//! | `farmwatch.clock.<sensor>`    | `clock.<sensor>.<ts_ns>[.end]` | [`Clock`] as JSON          |
//! | `farmwatch.alerts`            | `alert.<id>`               | the correlator's event JSON    |
//!
//! Observations also carry their packet time in the header [`TS_HEADER`] (nanoseconds since
//! the epoch), so the correlator can merge them without parsing the payload.

mod checkpoint;
mod config;
mod correlate;
mod publish;

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::{Config as ServerStreamConfig, StorageType};
use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

pub use config::{CorrelateConfig, NatsAuth, PublishConfig, StreamConfig};
pub use correlate::{CorrelateSource, CorrelateStats, Delivery, Producer, Record};
pub use publish::{PublishReport, PublishStats, Publisher};

/// The one stream every sensor and the correlator share.
pub const STREAM: &str = "FARMWATCH";
/// The key-value bucket holding the correlator's checkpoints.
pub const STATE_BUCKET: &str = "FARMWATCH_STATE";
/// The stream's only subject filter.
pub const SUBJECTS: &str = "farmwatch.>";
/// Where the correlator publishes its account-stage events.
pub const ALERTS_SUBJECT: &str = "farmwatch.alerts";
/// Packet time of an observation in nanoseconds since the Unix epoch.
pub const TS_HEADER: &str = "Farmwatch-Ts";

/// A JetStream problem as one line (connect, stream setup, checkpoint, consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    /// A client or server error that may pass (timeout, leader election, server away), as
    /// opposed to a refusal of farmwatch's own (bad config, foreign stream, corrupt checkpoint).
    transient: bool,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            transient: false,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Prefixes a client error with what was being done.
fn err<E: fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error {
        message: format!("{what}: {e}"),
        transient: true,
    }
}

/// What a message on the stream carries, read from its subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Obs,
    Event,
    Clock,
    Alert,
}

impl Kind {
    fn token(self) -> &'static str {
        match self {
            Kind::Obs => "obs",
            Kind::Event => "events",
            Kind::Clock => "clock",
            Kind::Alert => "alerts",
        }
    }
}

/// `farmwatch.<kind>.<sensor>`.
pub fn subject(kind: Kind, sensor: &str) -> String {
    format!("farmwatch.{}.{sensor}", kind.token())
}

/// The kind and sensor of a stream subject; None for subjects farmwatch does not write.
pub fn parse_subject(subject: &str) -> Option<(Kind, &str)> {
    let rest = subject.strip_prefix("farmwatch.")?;
    if rest == "alerts" {
        return Some((Kind::Alert, ""));
    }
    let (kind, sensor) = rest.split_once('.')?;
    let kind = match kind {
        "obs" => Kind::Obs,
        "events" => Kind::Event,
        "clock" => Kind::Clock,
        _ => return None,
    };
    valid_token(sensor).then_some((kind, sensor))
}

/// A sensor name becomes one subject token: no dots, wildcards or white space.
fn valid_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a sensor name before it is put into subjects.
pub fn check_sensor_name(name: &str) -> Result<(), Error> {
    if valid_token(name) {
        Ok(())
    } else {
        Err(Error::new(format!(
            "[sensor] name {name:?}: to publish it must be letters, digits, '-' or '_'"
        )))
    }
}

/// A producer's packet clock: a heartbeat, or the end marker of a finished replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clock {
    /// Packet time in nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// True on the last message of a replay: nothing more will come from this producer.
    #[serde(default)]
    pub end: bool,
}

impl Clock {
    pub fn ts(self) -> Timestamp {
        Timestamp(self.ts_ns)
    }

    /// The dedup id: the same clock published twice is stored once.
    fn msg_id(self, sensor: &str) -> String {
        let end = if self.end { ".end" } else { "" };
        format!("clock.{sensor}.{}{end}", self.ts_ns)
    }
}

/// What `ensure_stream` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamSetup {
    /// This connection created the stream.
    Created,
    /// The stream existed; each line says which setting differs from the config (empty: none).
    Existing(Vec<String>),
}

/// Creates the stream `FARMWATCH` if nobody has, or compares an existing one with `want`.
/// Differences in age, replicas, duplicate window or storage are reported, not fatal; a stream
/// that does not take `farmwatch.>` is an error, because nothing published would land in it.
pub async fn ensure_stream(
    js: &jetstream::Context,
    want: &StreamConfig,
) -> Result<StreamSetup, Error> {
    let wanted = server_stream_config(want);
    // Two sensors starting together may both miss the stream; the loser of the create
    // race reads what the winner made.
    for _ in 0..3 {
        match js.get_stream(STREAM).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(err("stream FARMWATCH info"))?;
                return differences(&info.config, &wanted).map(StreamSetup::Existing);
            }
            Err(e) if is_code(&e, jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
            Err(e) => return Err(err("stream FARMWATCH")(&e)),
        }
        match js.create_stream(wanted.clone()).await {
            Ok(_) => return Ok(StreamSetup::Created),
            Err(e) if is_create_conflict(&e) => continue,
            Err(e) => return Err(err("creating stream FARMWATCH")(&e)),
        }
    }
    Err(Error::new(
        "stream FARMWATCH: neither found nor created after three tries",
    ))
}

fn is_code(e: &jetstream::context::GetStreamError, code: jetstream::ErrorCode) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == code)
}

fn is_create_conflict(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
}

fn server_stream_config(want: &StreamConfig) -> ServerStreamConfig {
    ServerStreamConfig {
        name: STREAM.to_string(),
        subjects: vec![SUBJECTS.to_string()],
        storage: StorageType::File,
        max_age: want.max_age,
        num_replicas: want.replicas,
        duplicate_window: want.duplicate_window,
        // The correlator reads the last clock of each sensor by subject.
        allow_direct: true,
        ..Default::default()
    }
}

/// One line per setting of `have` that differs from `want`.
fn differences(have: &ServerStreamConfig, want: &ServerStreamConfig) -> Result<Vec<String>, Error> {
    if !have.subjects.iter().any(|s| s == SUBJECTS) {
        return Err(Error::new(format!(
            "stream FARMWATCH exists with subjects {:?}, not {SUBJECTS:?}: fix or delete it",
            have.subjects
        )));
    }
    let mut out = Vec::new();
    let mut differ = |key: &str, have: String, want: String| {
        if have != want {
            out.push(format!(
                "stream FARMWATCH {key} is {have}, config says {want}"
            ));
        }
    };
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    differ("max_age", dur(have.max_age), dur(want.max_age));
    differ(
        "replicas",
        have.num_replicas.to_string(),
        want.num_replicas.to_string(),
    );
    differ(
        "duplicate_window",
        dur(have.duplicate_window),
        dur(want.duplicate_window),
    );
    differ(
        "storage",
        format!("{:?}", have.storage),
        format!("{:?}", want.storage),
    );
    if have.subjects.len() > 1 {
        out.push(format!(
            "stream FARMWATCH also takes subjects {:?}",
            have.subjects
        ));
    }
    Ok(out)
}

/// Connects with `auth`, to `servers`, retrying in the background when none answers yet.
async fn connect(
    servers: &[String],
    auth: &NatsAuth,
    name: &str,
    connect_timeout: Duration,
) -> Result<async_nats::Client, Error> {
    let addrs = server_addrs(servers)?;
    auth.options()?
        .name(name)
        .connection_timeout(connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(addrs)
        .await
        .map_err(err("connecting to NATS"))
}

fn server_addrs(servers: &[String]) -> Result<Vec<async_nats::ServerAddr>, Error> {
    if servers.is_empty() {
        return Err(Error::new("no NATS server given"));
    }
    servers
        .iter()
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::new(format!("NATS server {s:?}: {e}")))
        })
        .collect()
}

/// A comma-separated `--publish`/`--nats` argument as a list of server URLs.
pub fn split_servers(arg: &str) -> Vec<String> {
    arg.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        for kind in [Kind::Obs, Kind::Event, Kind::Clock] {
            let s = subject(kind, "site-a");
            assert_eq!(parse_subject(&s), Some((kind, "site-a")));
        }
        assert_eq!(parse_subject("farmwatch.alerts"), Some((Kind::Alert, "")));
        assert_eq!(parse_subject("farmwatch.obs.a.b"), None);
        assert_eq!(parse_subject("farmwatch.other.a"), None);
        assert_eq!(parse_subject("elsewhere.obs.a"), None);
    }

    #[test]
    fn sensor_names_are_one_token() {
        assert!(check_sensor_name("dc1_span-2").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b"] {
            assert!(check_sensor_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clock_ids_are_stable_and_mark_the_end() {
        let c = Clock {
            ts_ns: 1_700_000_000_000_000_000,
            end: false,
        };
        assert_eq!(c.msg_id("s1"), "clock.s1.1700000000000000000");
        let end = Clock { end: true, ..c };
        assert_eq!(end.msg_id("s1"), "clock.s1.1700000000000000000.end");
    }

    #[test]
    fn stream_differences_are_listed_and_foreign_subjects_refused() {
        let want = server_stream_config(&StreamConfig::default());
        assert_eq!(differences(&want, &want), Ok(vec![]));
        let mut have = want.clone();
        have.num_replicas = 3;
        have.max_age = Duration::from_secs(3600);
        let diffs = differences(&have, &want).unwrap();
        assert_eq!(
            diffs,
            vec![
                "stream FARMWATCH max_age is 1h, config says 30days",
                "stream FARMWATCH replicas is 3, config says 1",
            ]
        );
        have.subjects = vec!["other.>".into()];
        assert!(differences(&have, &want).is_err());
    }

    #[test]
    fn server_lists_split_on_commas() {
        assert_eq!(
            split_servers("nats://a:4222, b:4222,,"),
            vec!["nats://a:4222", "b:4222"]
        );
    }
}
