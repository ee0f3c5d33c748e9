//! `farmwatch.toml`: every key optional, every default documented in the README, unknown
//! keys are errors (a typo must not silently fall back to a default).

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use crate::detect::DetectConfig;
use crate::flows::FlowConfig;
use crate::geo::GeoConfig;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sensor: SensorConfig,
    pub network: NetworkConfig,
    pub geoip: GeoConfig,
    pub detect: DetectConfig,
    pub flows: FlowConfig,
}

/// `[sensor]`: who and where the sensor is (its position anchors RTT-vs-distance checks).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    pub name: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub country: Option<String>,
}

impl Default for SensorConfig {
    fn default() -> SensorConfig {
        SensorConfig {
            name: "farmwatch".to_string(),
            latitude: None,
            longitude: None,
            country: None,
        }
    }
}

/// `[network]`: which addresses are ours. Inside/outside decides which end of a flow is
/// the account's host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Account hosts and corporate servers.
    pub inside: Vec<IpNet>,
    /// Addresses the VPN assigns to accounts.
    pub vpn_pool: Vec<IpNet>,
    /// The VPN's public endpoints (outer side).
    pub concentrators: Vec<IpAddr>,
}

impl Default for NetworkConfig {
    /// With no configuration, private (RFC 1918, RFC 4193) and carrier-grade NAT space is
    /// inside, which is what a sensor behind a VPN concentrator usually sees.
    fn default() -> NetworkConfig {
        let nets = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
        ];
        NetworkConfig {
            inside: nets.iter().filter_map(|n| n.parse().ok()).collect(),
            vpn_pool: Vec::new(),
            concentrators: Vec::new(),
        }
    }
}

impl NetworkConfig {
    pub fn is_inside(&self, ip: IpAddr) -> bool {
        self.inside.iter().any(|n| n.contains(&ip))
    }
}

/// One line saying what is wrong with a config file, with the line number.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Reads a TOML file into `T`, turning any problem into one line: `path:line: message`.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    parse_toml(path, &text)
}

pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().replace('\n', " ");
        match line {
            Some(l) => ConfigError(format!("{}:{l}: {msg}", path.display())),
            None => ConfigError(format!("{}: {msg}", path.display())),
        }
    })
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = match path {
            Some(p) => load_toml(p)?,
            None => Config::default(),
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: Option<&Path>) -> Result<(), ConfigError> {
        let name = path.map(|p| p.display().to_string()).unwrap_or_default();
        let bad = |what: &str| Err(ConfigError(format!("{name}: {what}")));
        if let Some(lat) = self.sensor.latitude
            && !(-90.0..=90.0).contains(&lat)
        {
            return bad("sensor.latitude must be within -90..90");
        }
        if let Some(lon) = self.sensor.longitude
            && !(-180.0..=180.0).contains(&lon)
        {
            return bad("sensor.longitude must be within -180..180");
        }
        if self.sensor.latitude.is_some() != self.sensor.longitude.is_some() {
            return bad("sensor.latitude and sensor.longitude go together");
        }
        if self.flows.max_flows == 0 {
            return bad("flows.max_flows must be at least 1");
        }
        if self.flows.interim_interval.is_zero() {
            return bad("flows.interim_interval must be longer than zero");
        }
        let f = &self.flows;
        for (key, timeout) in [
            ("tcp_half_open_timeout", f.tcp_half_open_timeout),
            ("tcp_established_timeout", f.tcp_established_timeout),
            ("udp_timeout", f.udp_timeout),
            ("icmp_timeout", f.icmp_timeout),
            ("idle_threshold", f.idle_threshold),
        ] {
            if timeout.is_zero() {
                return bad(&format!("flows.{key} must be longer than zero"));
            }
        }
        self.detect
            .validate()
            .map_err(|e| ConfigError(format!("{name}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let text = r#"
[sensor]
name = "vpn-east-1"
latitude = 39.04
longitude = -77.49
country = "US"

[network]
inside = ["10.8.0.0/16", "10.20.0.0/16"]
vpn_pool = ["10.8.0.0/16"]
concentrators = ["198.51.100.10"]

[flows]
max_flows = 1000000
interim_interval = "15m"
"#;
        let c: Config = parse_toml(Path::new("f.toml"), text).unwrap();
        assert_eq!(c.sensor.name, "vpn-east-1");
        assert!(c.network.is_inside("10.8.0.12".parse().unwrap()));
        assert!(!c.network.is_inside("73.14.2.9".parse().unwrap()));
        assert_eq!(c.flows.interim_interval.as_secs(), 900);
        assert_eq!(c.flows.reassembly_bytes, 8192);
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_one_line_errors_with_a_line_number() {
        let e = parse_toml::<Config>(
            Path::new("f.toml"),
            "[sensor]\nname = \"x\"\nnmae = \"y\"\n",
        )
        .unwrap_err();
        assert!(e.0.starts_with("f.toml:3: unknown field `nmae`"), "{e}");
        assert!(!e.0.contains('\n'));
        let e = parse_toml::<Config>(Path::new("f.toml"), "[flows]\nudp_timeout = \"soon\"\n")
            .unwrap_err();
        assert!(e.0.starts_with("f.toml:2:"), "{e}");
    }
}
