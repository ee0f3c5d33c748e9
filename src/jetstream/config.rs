//! `[publish]`, `[correlate]`, `[stream]` and their `auth` tables in `farmwatch.toml`. Every key
//! is optional; unknown keys are errors. Durations are humantime ("30s", "30days").

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Error;
use crate::flows::humantime_serde;

/// `[publish]`: where a sensor sends its observations (`--publish` overrides `servers`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// NATS server URLs, e.g. `["nats://nats1:4222", "nats://nats2:4222"]`.
    pub servers: Vec<String>,
    /// Messages held while the server is away or slow; past this they are dropped and counted.
    pub buffer_messages: usize,
    /// Payload bytes held, the same way.
    pub buffer_bytes: usize,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for the server's acknowledgement of a message before sending it again.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Messages sent before waiting for their acknowledgements.
    pub max_in_flight: usize,
    pub auth: NatsAuth,
}

impl Default for PublishConfig {
    fn default() -> PublishConfig {
        PublishConfig {
            servers: Vec::new(),
            buffer_messages: 100_000,
            buffer_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            auth: NatsAuth::default(),
        }
    }
}

impl PublishConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.buffer_messages == 0 || self.buffer_bytes == 0 || self.max_in_flight == 0 {
            return Err(Error::new(
                "[publish] buffer_messages, buffer_bytes and max_in_flight must be above 0",
            ));
        }
        self.auth.validate("publish")
    }
}

/// `[correlate]`: the one account stage over every sensor (`--nats` overrides `servers`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelateConfig {
    pub servers: Vec<String>,
    /// The durable consumer's name, also the checkpoint's key in `FARMWATCH_STATE`.
    pub consumer: String,
    /// Sensors to wait for before applying anything, even before their first heartbeat.
    pub sensors: Vec<String>,
    /// Checkpoint after this many observations ...
    pub checkpoint_observations: u64,
    /// ... or this much wall time, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// A producer silent this long (wall time) stops holding the watermark back.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// Messages asked for in one pull.
    pub batch: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub auth: NatsAuth,
}

impl Default for CorrelateConfig {
    fn default() -> CorrelateConfig {
        CorrelateConfig {
            servers: Vec::new(),
            consumer: "farmwatch-correlate".to_string(),
            sensors: Vec::new(),
            checkpoint_observations: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            max_lag: Duration::from_secs(30),
            batch: 1000,
            connect_timeout: Duration::from_secs(5),
            auth: NatsAuth::default(),
        }
    }
}

impl CorrelateConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if !super::valid_token(&self.consumer) {
            return Err(Error::new(format!(
                "[correlate] consumer {:?}: letters, digits, '-' or '_' only",
                self.consumer
            )));
        }
        for sensor in &self.sensors {
            super::check_sensor_name(sensor)
                .map_err(|_| Error::new(format!("[correlate] sensors: bad name {sensor:?}")))?;
        }
        if self.checkpoint_observations == 0 || self.batch == 0 {
            return Err(Error::new(
                "[correlate] checkpoint_observations and batch must be above 0",
            ));
        }
        self.auth.validate("correlate")
    }
}

/// `[stream]`: the settings whoever connects first gives the stream `FARMWATCH`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Messages older than this are removed.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Copies kept in a cluster (1 to 5; 3 survives the loss of one node).
    pub replicas: usize,
    /// How long the server remembers a `Nats-Msg-Id` to drop a repeat.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
}

impl Default for StreamConfig {
    fn default() -> StreamConfig {
        StreamConfig {
            max_age: Duration::from_secs(30 * 86_400),
            replicas: 1,
            duplicate_window: Duration::from_secs(3600),
        }
    }
}

impl StreamConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::new("[stream] replicas must be 1 to 5"));
        }
        if self.duplicate_window > self.max_age || self.max_age < Duration::from_millis(100) {
            return Err(Error::new(
                "[stream] duplicate_window must not exceed max_age (at least 100ms)",
            ));
        }
        Ok(())
    }
}

/// `[publish.auth]` / `[correlate.auth]`: at most one of user+password, token or a creds
/// file; TLS with a private CA, a client certificate, or both.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (JWT and NKey seed) from `nsc`.
    pub creds: Option<PathBuf>,
    /// PEM file of the CA that signed the server certificates.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Refuse a connection without TLS (implied by `tls://` URLs and by `ca`/`cert`).
    pub require_tls: bool,
}

impl NatsAuth {
    fn validate(&self, section: &str) -> Result<(), Error> {
        let methods = [
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
            self.creds.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(Error::new(format!(
                "[{section}.auth]: use one of user+password, token or creds"
            )));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(Error::new(format!(
                "[{section}.auth]: user and password go together"
            )));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::new(format!(
                "[{section}.auth]: cert and key go together"
            )));
        }
        for path in [&self.creds, &self.ca, &self.cert, &self.key]
            .into_iter()
            .flatten()
        {
            std::fs::metadata(path)
                .map_err(|e| Error::new(format!("[{section}.auth] {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Client options carrying these credentials. The creds file is read here, so a missing
    /// or malformed one is an error at start, not a silent reconnect loop.
    pub(super) fn options(&self) -> Result<async_nats::ConnectOptions, Error> {
        let mut opts = match &self.creds {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
                async_nats::ConnectOptions::with_credentials(&text)
                    .map_err(|e| Error::new(format!("{}: {e}", path.display())))?
            }
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let Some(ca) = &self.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        let tls = self.require_tls || self.ca.is_some() || self.cert.is_some();
        Ok(opts.require_tls(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sections {
        #[serde(default)]
        publish: PublishConfig,
        #[serde(default)]
        correlate: CorrelateConfig,
        #[serde(default)]
        stream: StreamConfig,
    }

    fn parse(text: &str) -> Result<Sections, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = parse("").unwrap();
        assert_eq!(s.stream.max_age, Duration::from_secs(30 * 86_400));
        assert_eq!(s.stream.replicas, 1);
        assert_eq!(s.stream.duplicate_window, Duration::from_secs(3600));
        assert_eq!(s.correlate.consumer, "farmwatch-correlate");
        assert_eq!(s.correlate.max_lag, Duration::from_secs(30));
        assert_eq!(s.publish.buffer_messages, 100_000);
        s.publish.validate().unwrap();
        s.correlate.validate().unwrap();
        s.stream.validate().unwrap();
    }

    #[test]
    fn keys_parse_with_humantime_durations() {
        let s = parse(
            r#"
            [publish]
            servers = ["nats://a:4222"]
            buffer_messages = 10
            ack_timeout = "2s"
            [publish.auth]
            user = "sensor"
            password = "pw"
            require_tls = true
            [correlate]
            sensors = ["dc1", "dc2"]
            checkpoint_interval = "1m"
            max_lag = "45s"
            [stream]
            max_age = "7days"
            replicas = 3
            duplicate_window = "2h"
            "#,
        )
        .unwrap();
        assert_eq!(s.publish.ack_timeout, Duration::from_secs(2));
        assert_eq!(s.publish.auth.user.as_deref(), Some("sensor"));
        assert_eq!(s.correlate.sensors, ["dc1", "dc2"]);
        assert_eq!(s.correlate.checkpoint_interval, Duration::from_secs(60));
        assert_eq!(s.stream.replicas, 3);
        assert_eq!(s.stream.max_age, Duration::from_secs(7 * 86_400));
        s.publish.validate().unwrap();
    }

    #[test]
    fn typos_and_contradictions_are_errors() {
        assert!(parse("[publish]\nserver = []").is_err());
        assert!(parse("[stream]\nmax_age = \"soon\"").is_err());
        let s = parse("[publish.auth]\nuser = \"u\"\ntoken = \"t\"").unwrap();
        assert!(s.publish.validate().is_err());
        let s = parse("[publish.auth]\nuser = \"u\"").unwrap();
        assert!(s.publish.validate().is_err());
        let s = parse("[correlate]\nconsumer = \"a.b\"").unwrap();
        assert!(s.correlate.validate().is_err());
        let s = parse("[stream]\nreplicas = 7").unwrap();
        assert!(s.stream.validate().is_err());
        let s = parse("[stream]\nmax_age = \"1m\"").unwrap();
        assert!(s.stream.validate().is_err());
    }
}
