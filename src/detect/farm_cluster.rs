//! `farm_cluster` / `shared_public_ip`: several contractor accounts connecting from one
//! public address, or one residential prefix (/24 IPv4, /56 IPv6 by default), within a
//! window — one house or one NAT running many people's laptops: the farm itself.
//!
//! Only contractor accounts count: employees sharing a flat, or an office, are normal.
//! Each account in a cluster gets its own finding (scores are per account), once per
//! prefix per window. Carrier-grade NAT and big VPN exits also put strangers behind one
//! address; evidence says whether the address or only the prefix is shared.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::accounts::AccountKind;
use crate::detect::Scope;
use crate::detect::geo_anomaly::with_geo;
use crate::detect::{Detector, Moment, Reason, Registered, Stage};
use crate::event::{Event, Kind, Severity};
use crate::flows::humantime_serde;
use crate::identity::PublicIpObservation;
use crate::timestamp::Timestamp;

/// `[detect.farm_cluster]` in farmwatch.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FarmClusterConfig {
    /// How long a contractor's address counts towards a cluster.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Distinct contractor accounts that make a cluster.
    #[serde(deserialize_with = "at_least_two")]
    pub min_accounts: usize,
    /// Prefix lengths taken as one residential line.
    #[serde(deserialize_with = "ipv4_len")]
    pub ipv4_prefix: u8,
    #[serde(deserialize_with = "ipv6_len")]
    pub ipv6_prefix: u8,
}

impl Default for FarmClusterConfig {
    fn default() -> FarmClusterConfig {
        FarmClusterConfig {
            window: Duration::from_secs(7 * 24 * 3600),
            min_accounts: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        }
    }
}

impl FarmClusterConfig {
    /// See [`super::check`].
    pub fn validate(&self) -> Result<(), String> {
        use super::check::not_zero;
        not_zero("window", self.window)?;
        not_zero("ipv4_prefix", self.ipv4_prefix)?;
        not_zero("ipv6_prefix", self.ipv6_prefix)
    }
}

fn at_least_two<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    if v >= 2 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom("min_accounts must be at least 2"))
    }
}

fn prefix_len<'de, D: Deserializer<'de>>(d: D, max: u8) -> Result<u8, D::Error> {
    let v = u8::deserialize(d)?;
    if v <= max {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "prefix length {v} is longer than {max}"
        )))
    }
}

fn ipv4_len<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_len(d, 32)
}

fn ipv6_len<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_len(d, 128)
}

/// A contractor's latest session from a prefix.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Member {
    ts: Timestamp,
    ip: IpAddr,
    host: Option<IpAddr>,
}

/// Public prefixes followed, and (prefix, account) reports remembered, inside one window.
/// Only inventory contractors join, but one of them can be named from many addresses on
/// the wire: past either limit the entries seen longest ago go, and are counted.
pub const MAX_PREFIXES: usize = 100_000;
pub const MAX_REPORTED: usize = 100_000;

/// Saved in checkpoints without its config.
#[derive(Serialize, Deserialize)]
pub struct FarmCluster {
    #[serde(skip)]
    config: FarmClusterConfig,
    prefixes: BTreeMap<IpNet, BTreeMap<Arc<str>, Member>>,
    /// When each (prefix, account) was last reported.
    reported: BTreeMap<(IpNet, Arc<str>), Timestamp>,
    /// Entries dropped at [`MAX_PREFIXES`] and [`MAX_REPORTED`].
    evicted_prefixes: u64,
    evicted_reported: u64,
}

impl FarmCluster {
    pub fn new(config: &FarmClusterConfig) -> FarmCluster {
        FarmCluster {
            config: config.clone(),
            prefixes: BTreeMap::new(),
            reported: BTreeMap::new(),
            evicted_prefixes: 0,
            evicted_reported: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> [(&'static str, u64); 2] {
        [
            ("farm_cluster_prefixes", self.evicted_prefixes),
            ("farm_cluster_reported", self.evicted_reported),
        ]
    }

    pub fn on_public_ip(
        &mut self,
        scope: &Scope<'_>,
        obs: &PublicIpObservation,
        out: &mut Vec<Event>,
    ) {
        if obs.account.kind != Some(AccountKind::Contractor) {
            return;
        }
        let Some(prefix) = self.prefix(obs.public_ip) else {
            return;
        };
        let window = self.config.window;
        if !self.prefixes.contains_key(&prefix) {
            self.evicted_prefixes +=
                crate::bounded::make_room(&mut self.prefixes, MAX_PREFIXES, |m| {
                    m.values().map(|s| s.ts).max().unwrap_or_default()
                });
        }
        let members = self.prefixes.entry(prefix).or_default();
        members.insert(
            obs.account.id.clone(),
            Member {
                ts: obs.ts,
                ip: obs.public_ip,
                host: obs.assigned_ip,
            },
        );
        members.retain(|_, m| obs.ts.since(m.ts) <= window);
        if members.len() < self.config.min_accounts {
            return;
        }
        let ids: Vec<String> = members.keys().map(|a| a.to_string()).collect();
        let info = scope.geo.lookup(obs.public_ip);
        for (account, m) in members.iter() {
            let k = (prefix, account.clone());
            if self
                .reported
                .get(&k)
                .is_some_and(|at| obs.ts.since(*at) <= window)
            {
                continue;
            }
            if !self.reported.contains_key(&k) {
                self.evicted_reported +=
                    crate::bounded::make_room(&mut self.reported, MAX_REPORTED, |at| *at);
            }
            self.reported.insert(k, obs.ts);
            let sharing: Vec<&str> = members
                .iter()
                .filter(|(a, o)| *a != account && o.ip == m.ip)
                .map(|(a, _)| &**a)
                .collect();
            let scope_name = if sharing.is_empty() {
                "prefix"
            } else {
                "address"
            };
            let mut e = with_geo(
                Event::new(
                    obs.ts,
                    Kind::FarmCluster,
                    "shared_public_ip",
                    Severity::High,
                    &format!("{prefix}|{}", obs.ts.as_nanos()),
                ),
                &info,
            )
            .evidence("public_ip", m.ip.to_string())
            .evidence("prefix", prefix.to_string())
            .evidence("shared", scope_name)
            .evidence("accounts", ids.clone())
            .evidence("window_s", window.as_secs());
            e.account = Some(account.to_string());
            e.host = m.host;
            e.summary = format!(
                "Contractor accounts {} connect from one {} ({}) within {}",
                ids.join(", "),
                if sharing.is_empty() {
                    "network"
                } else {
                    "address"
                },
                if sharing.is_empty() {
                    prefix.to_string()
                } else {
                    m.ip.to_string()
                },
                humantime::format_duration(window)
            );
            out.push(e);
        }
    }

    /// The residential line of `ip`.
    fn prefix(&self, ip: IpAddr) -> Option<IpNet> {
        let len = match ip {
            IpAddr::V4(_) => self.config.ipv4_prefix,
            IpAddr::V6(_) => self.config.ipv6_prefix,
        };
        IpNet::new(ip, len).ok().map(|n| n.trunc())
    }

    /// Forgets sessions and reports older than the window.
    pub fn expire(&mut self, now: Timestamp) {
        let window = self.config.window;
        self.prefixes.retain(|_, m| {
            m.retain(|_, s| now.since(s.ts) <= window);
            !m.is_empty()
        });
        self.reported.retain(|_, at| now.since(*at) <= window);
    }
}

/// Several contractors behind one line: the farm itself.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Account,
    reasons: &[Reason {
        name: "shared_public_ip",
        weight: 35.0,
    }],
    new: |c| Box::new(FarmCluster::new(&c.detect.farm_cluster)),
};

impl Detector for FarmCluster {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::PublicIp(obs) => self.on_public_ip(scope, obs, out),
            Moment::Hour(now) => self.expire(now),
            _ => {}
        }
    }

    fn evictions(&self) -> Vec<(&'static str, u64)> {
        FarmCluster::evictions(self).to_vec()
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        crate::state::encode(self)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: FarmCluster = crate::state::decode(state)?;
        crate::state::within("prefixes", saved.prefixes.len(), MAX_PREFIXES)?;
        crate::state::within("reported", saved.reported.len(), MAX_REPORTED)?;
        let config = std::mem::take(&mut self.config);
        *self = FarmCluster { config, ..saved };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{AccountRef, Inventory};
    use crate::config::NetworkConfig;
    use crate::geo::Geo;
    use crate::identity::{Identity, ObservationSource};

    fn obs(secs: u64, account: &str, kind: AccountKind, ip: &str) -> PublicIpObservation {
        PublicIpObservation {
            ts: Timestamp::from_secs(secs),
            account: AccountRef {
                id: Arc::from(account),
                kind: Some(kind),
            },
            public_ip: ip.parse().unwrap(),
            assigned_ip: None,
            source: ObservationSource::SessionFeed,
        }
    }

    fn run(list: &[PublicIpObservation]) -> Vec<(String, String)> {
        let identity = Identity::new(Arc::new(Inventory::default()));
        let (network, geo) = (NetworkConfig::default(), Geo::embedded().unwrap());
        let scope = Scope {
            network: &network,
            identity: &identity,
            geo: &geo,
            sessions: None,
        };
        let mut d = FarmCluster::new(&FarmClusterConfig::default());
        let mut out = Vec::new();
        for o in list {
            d.on_public_ip(&scope, o, &mut out);
        }
        out.into_iter()
            .map(|e| {
                (
                    e.account.unwrap_or_default(),
                    e.evidence["shared"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    const C: AccountKind = AccountKind::Contractor;
    const E: AccountKind = AccountKind::Employee;

    #[test]
    fn two_contractors_one_address() {
        let got = run(&[
            obs(0, "a", C, "192.0.2.5"),
            obs(3600, "b", C, "192.0.2.5"),
            obs(7200, "a", C, "192.0.2.5"),
        ]);
        let want = [("a", "address"), ("b", "address")];
        assert_eq!(got, want.map(|(a, s)| (a.to_string(), s.to_string())));
    }

    #[test]
    fn one_prefix_counts_and_the_window_ends() {
        let day = 24 * 3600;
        let got = run(&[
            obs(0, "a", C, "2001:db8:1:10::1"),
            obs(day, "b", C, "2001:db8:1:20::1"),
        ]);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|g| g.1 == "prefix"));
        assert!(
            run(&[
                obs(0, "a", C, "192.0.2.5"),
                obs(8 * day, "b", C, "192.0.2.6")
            ])
            .is_empty()
        );
        // A different /24 is a different line.
        assert!(run(&[obs(0, "a", C, "192.0.2.5"), obs(10, "b", C, "198.51.100.5")]).is_empty());
    }

    #[test]
    fn employees_sharing_a_flat_are_not_a_farm() {
        assert!(run(&[obs(0, "a", E, "192.0.2.5"), obs(10, "b", E, "192.0.2.5")]).is_empty());
        assert!(run(&[obs(0, "a", C, "192.0.2.5"), obs(10, "b", E, "192.0.2.5")]).is_empty());
    }
}
