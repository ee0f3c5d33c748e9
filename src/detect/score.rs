//! Per-account risk: every finding about an account adds its reason's weight; weights
//! decay by half every `half_life` of packet time; the score is the sum, capped at 100.
//! Only the newest finding of each reason counts (all of one reason decay alike, so the
//! newest is worth the most), so a score of 100 needs several kinds of evidence, not one
//! kind repeated. Findings of severity `info` and alerts themselves never count.
//!
//! When the score reaches a tier (`tiers`, default 40, 70, 90) above the highest already
//! alerted, one `alert` / `laptop_farm_suspected` names the score, the tier and the ids
//! of the findings behind it. After the score decays below a tier, reaching it again
//! alerts again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{Event, Kind, Severity};
use crate::flows::humantime_serde;
use crate::timestamp::Timestamp;

/// The reason of the scorer's alerts.
pub const ALERT_REASON: &str = "laptop_farm_suspected";

/// `[detect.score]` in farmwatch.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// A finding's weight halves every this long.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Scores that raise an alert, ascending, within 0..=100.
    #[serde(deserialize_with = "tiers")]
    pub tiers: Vec<f64>,
    /// Weights by reason; a reason not listed keeps its default, 0 turns it off.
    #[serde(deserialize_with = "weights")]
    pub weights: BTreeMap<String, f64>,
}

impl Default for ScoreConfig {
    fn default() -> ScoreConfig {
        ScoreConfig {
            half_life: Duration::from_secs(7 * 24 * 3600),
            tiers: vec![40.0, 70.0, 90.0],
            weights: BTreeMap::new(),
        }
    }
}

impl ScoreConfig {
    /// See [`super::check`].
    pub fn validate(&self) -> Result<(), String> {
        super::check::not_zero("half_life", self.half_life)
    }
}

fn tiers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<f64>::deserialize(d)?;
    let ascending = v.windows(2).all(|w| w[0] < w[1]);
    if v.is_empty() || !ascending || v.iter().any(|t| !(*t > 0.0 && *t <= 100.0)) {
        return Err(serde::de::Error::custom(
            "tiers must be ascending scores above 0 and at most 100",
        ));
    }
    Ok(v)
}

fn weights<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let v = BTreeMap::<String, f64>::deserialize(d)?;
    for (reason, w) in &v {
        if !crate::detect::reasons().any(|r| r.name == reason) {
            return Err(serde::de::Error::custom(format!(
                "unknown reason {reason:?} in weights"
            )));
        }
        if !(w.is_finite() && *w >= 0.0) {
            return Err(serde::de::Error::custom(format!(
                "weight of {reason} must be 0 or more"
            )));
        }
    }
    Ok(v)
}

/// The newest finding of one reason on one account.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Evidence {
    ts: Timestamp,
    id: String,
    weight: f64,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Account {
    #[serde(with = "latest")]
    latest: BTreeMap<&'static str, Evidence>,
    /// Tiers alerted and not decayed below since.
    alerted: usize,
}

/// Accounts with a score. Findings name accounts from the wire too (RADIUS, the session
/// feed); past the limit those with the oldest evidence go, and are counted.
pub const MAX_ACCOUNTS: usize = 100_000;

/// Saved in checkpoints without its config.
#[derive(Clone, Serialize, Deserialize)]
pub struct Scorer {
    #[serde(skip)]
    config: ScoreConfig,
    accounts: BTreeMap<String, Account>,
    /// Accounts dropped at [`MAX_ACCOUNTS`].
    evicted: u64,
}

/// What one weight is worth `age` later.
pub fn decayed(weight: f64, age: Duration, half_life: Duration) -> f64 {
    if half_life.is_zero() {
        return if age.is_zero() { weight } else { 0.0 };
    }
    weight * 0.5f64.powf(age.as_secs_f64() / half_life.as_secs_f64())
}

impl Scorer {
    pub fn new(config: &ScoreConfig) -> Scorer {
        Scorer {
            config: config.clone(),
            accounts: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Entries dropped at a limit (`farmwatch_state_evicted_total`).
    pub fn evictions(&self) -> (&'static str, u64) {
        ("score_accounts", self.evicted)
    }

    pub fn weight(&self, reason: &str) -> f64 {
        self.config.weights.get(reason).copied().unwrap_or_else(|| {
            let declared = crate::detect::reasons().find(|r| r.name == reason);
            debug_assert!(
                declared.is_some(),
                "reason {reason} raised but not declared"
            );
            declared.map_or(0.0, |r| r.weight)
        })
    }

    /// A written (sealed) finding: its weight joins the account's score; returns the
    /// alert when the score reached a new tier.
    pub fn observe(&mut self, event: &Event) -> Option<Event> {
        if event.kind == Kind::Alert || event.severity == Severity::Info {
            return None;
        }
        let account = event.account.as_deref()?;
        let weight = self.weight(event.reason);
        if weight <= 0.0 {
            return None;
        }
        let half_life = self.config.half_life;
        if !self.accounts.contains_key(account) {
            self.evicted += crate::bounded::make_room(&mut self.accounts, MAX_ACCOUNTS, |a| {
                a.latest.values().map(|e| e.ts).max().unwrap_or_default()
            });
        }
        let a = self.accounts.entry(account.to_string()).or_default();
        let newer = a
            .latest
            .get(event.reason)
            .is_none_or(|old| old.ts <= event.ts);
        if newer {
            a.latest.insert(
                event.reason,
                Evidence {
                    ts: event.ts,
                    id: event.id.clone(),
                    weight,
                },
            );
        }
        let now = event.ts;
        let mut parts: Vec<(&'static str, &Evidence, f64)> = a
            .latest
            .iter()
            .map(|(r, e)| (*r, e, decayed(e.weight, now.since(e.ts), half_life)))
            .collect();
        let score = parts.iter().map(|p| p.2).sum::<f64>().min(100.0);
        let tier = self.config.tiers.iter().filter(|t| score >= **t).count();
        if tier <= a.alerted {
            a.alerted = tier;
            return None;
        }
        a.alerted = tier;
        parts.sort_by(|x, y| y.2.total_cmp(&x.2).then(x.0.cmp(y.0)));
        let threshold = self.config.tiers.get(tier - 1).copied().unwrap_or(100.0);
        let severity = match tier {
            1 => Severity::Medium,
            2 => Severity::High,
            _ => Severity::Critical,
        };
        let reasons: Vec<&str> = parts.iter().map(|p| p.0).collect();
        let mut alert = Event::new(
            now,
            Kind::Alert,
            ALERT_REASON,
            severity,
            &format!("{tier}|{}", now.as_nanos()),
        )
        .evidence("score", round1(score))
        .evidence("tier", tier)
        .evidence("threshold", threshold)
        .evidence(
            "events",
            parts.iter().map(|p| p.1.id.clone()).collect::<Vec<_>>(),
        )
        .evidence(
            "contributions",
            parts
                .iter()
                .map(|(r, e, points)| {
                    serde_json::json!({
                        "reason": r,
                        "event": e.id,
                        "ts": e.ts.rfc3339(),
                        "weight": e.weight,
                        "points": round1(*points),
                    })
                })
                .collect::<Vec<_>>(),
        );
        alert.account = Some(account.to_string());
        alert.summary = format!(
            "Account {account}: laptop-farm risk {score:.0} reached tier {tier} ({threshold}) from {}",
            reasons.join(", ")
        );
        Some(alert)
    }

    /// Takes the accounts of `saved` (a checkpoint's), keeping its own config.
    pub fn restore(&mut self, saved: Scorer) -> Result<(), String> {
        crate::state::within("score accounts", saved.accounts.len(), MAX_ACCOUNTS)?;
        self.accounts = saved.accounts;
        self.evicted = saved.evicted;
        Ok(())
    }

    /// Every scored account's score at `now`.
    pub fn scores(&self, now: Timestamp) -> BTreeMap<String, f64> {
        self.accounts
            .iter()
            .map(|(id, a)| {
                let s: f64 = a
                    .latest
                    .values()
                    .map(|e| decayed(e.weight, now.since(e.ts), self.config.half_life))
                    .sum();
                (id.clone(), round1(s.min(100.0)))
            })
            .collect()
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `latest` in a checkpoint: (reason, evidence), the reason read back as the registry's.
mod latest {
    use super::*;

    type Map = BTreeMap<&'static str, Evidence>;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let list = Vec::<(String, Evidence)>::deserialize(d)?;
        list.into_iter()
            .map(|(r, e)| {
                crate::state::reason::known(&r)
                    .map(|r| (r, e))
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown reason {r:?}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;

    fn finding(secs: u64, account: &str, reason: &'static str, severity: Severity) -> Event {
        let mut e = Event::new(
            Timestamp::from_secs(secs),
            Kind::GeoAnomaly,
            reason,
            severity,
            &secs.to_string(),
        );
        e.account = Some(account.to_string());
        e.seal();
        e
    }

    #[test]
    fn decay_halves_every_half_life() {
        let h = Duration::from_secs(7 * DAY);
        assert_eq!(decayed(40.0, Duration::ZERO, h), 40.0);
        assert!((decayed(40.0, h, h) - 20.0).abs() < 1e-12);
        assert!((decayed(40.0, 3 * h, h) - 5.0).abs() < 1e-12);
        assert_eq!(decayed(40.0, Duration::from_secs(1), Duration::ZERO), 0.0);
    }

    #[test]
    fn tiers_alert_once_each_and_again_after_decay() {
        let mut s = Scorer::new(&ScoreConfig::default());
        let m = Severity::Medium;
        // 25: below the first tier.
        assert!(
            s.observe(&finding(0, "a", "disallowed_country", m))
                .is_none()
        );
        // The same reason again replaces, not adds.
        assert!(
            s.observe(&finding(10, "a", "disallowed_country", m))
                .is_none()
        );
        // 25 + 40 = 65: tier 1.
        let high = finding(20, "a", "high_risk_country", Severity::High);
        let alert = s.observe(&high).unwrap();
        assert_eq!(alert.severity, Severity::Medium);
        assert_eq!(alert.evidence["score"], 65.0);
        assert_eq!(alert.evidence["events"][0], serde_json::json!(high.id));
        assert_eq!(alert.account.as_deref(), Some("a"));
        // Info findings and other accounts do not count.
        assert!(
            s.observe(&finding(30, "a", "rtt_distance", Severity::Info))
                .is_none()
        );
        assert!(
            s.observe(&finding(30, "b", "shared_public_ip", m))
                .is_none()
        );
        // + 35 → 100: tiers 2 and 3 at once, one alert naming tier 3.
        let alert = s.observe(&finding(40, "a", "shared_public_ip", m)).unwrap();
        assert_eq!(alert.evidence["tier"], 3);
        assert_eq!(alert.severity, Severity::Critical);
        assert_eq!(alert.evidence["score"], 100.0);
        // Three half-lives later everything is worth an eighth: 12.5 + one fresh 25.
        let later = 40 + 21 * DAY;
        assert!(
            s.observe(&finding(later, "a", "impossible_travel", m))
                .is_none()
        );
        assert!((s.scores(Timestamp::from_secs(later))["a"] - 37.5).abs() < 0.1);
        // Rising again through tier 1 alerts again.
        let alert = s
            .observe(&finding(later, "a", "foreign_working_hours", m))
            .unwrap();
        assert_eq!(alert.evidence["tier"], 1);
    }

    #[test]
    fn weights_are_configurable_and_checked() {
        let c: ScoreConfig = toml::from_str("[weights]\nhosting_asn = 50\n").unwrap();
        let s = Scorer::new(&c);
        assert_eq!(s.weight("hosting_asn"), 50.0);
        assert_eq!(s.weight("high_risk_country"), 40.0);
        // Every reason is declared once, with a weight beside its detector.
        let mut names: Vec<&str> = crate::detect::reasons().map(|r| r.name).collect();
        let declared = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), declared, "a reason declared twice");
        assert!(names.contains(&"rtt_split") && names.contains(&"phone_format"));
        assert!(toml::from_str::<ScoreConfig>("[weights]\nhosting = 5\n").is_err());
        assert!(toml::from_str::<ScoreConfig>("tiers = [70, 40]\n").is_err());
        assert!(toml::from_str::<ScoreConfig>("half_life = \"3d\"\n").is_ok());
    }
}
