//! `off_hours` / `foreign_working_hours`: an account whose working day sits in another
//! time zone than the one it declares.
//!
//! Activity is counted in hour slots of packet time: an hour is active when one of the
//! account's inside addresses started sending again on a flow after a pause (an ON
//! period: someone typed, clicked or moved the screen). Background traffic at all hours
//! (updates, telemetry) spreads activity over the day, which lowers every fit: it can
//! hide a foreign working day, not invent one. Over the last `window`, once activity falls on at
//! least `min_days` local days of the declared zone:
//! - the *fit* of a UTC offset is the share of active hours that fall inside the working
//!   day (`work_start`..`work_end`, local) at that offset; the declared zone's fit uses its
//!   real offset at each hour, daylight saving included;
//! - the *best-fitting offset* puts the circular mean of the active hours (each at its
//!   middle, :30) on the middle of the working day, rounded to a whole hour and reported
//!   within −11..+12 (offsets a day apart, like +13 and −11, are the same hours);
//! - the account is reported when the best offset fits at least `min_fit` and beats the
//!   declared zone by at least `min_gain`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Offset, TimeZone};
use serde::{Deserialize, Deserializer, Serialize};

use crate::accounts::AccountKind;
use crate::detect::Scope;
use crate::detect::geo_anomaly::round1;
use crate::detect::{Detector, Moment, Reason, Registered, Stage};
use crate::event::{Event, Kind, OffHoursEvidence, Severity};
use crate::flows::humantime_serde;
use crate::observation::Observation;
use crate::timestamp::Timestamp;

/// `[detect.off_hours]` in farmwatch.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffHoursConfig {
    /// The working day, local hours: from `work_start`:00 to `work_end`:00.
    #[serde(deserialize_with = "hour")]
    pub work_start: u8,
    #[serde(deserialize_with = "hour")]
    pub work_end: u8,
    /// Local days with activity before a judgement.
    pub min_days: usize,
    /// Activity older than this is forgotten.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Share of active hours the best offset must put inside the working day.
    #[serde(deserialize_with = "share")]
    pub min_fit: f64,
    /// How much better than the declared zone the best offset must fit.
    #[serde(deserialize_with = "share")]
    pub min_gain: f64,
}

impl Default for OffHoursConfig {
    fn default() -> OffHoursConfig {
        OffHoursConfig {
            work_start: 9,
            work_end: 17,
            min_days: 5,
            window: Duration::from_secs(14 * 24 * 3600),
            min_fit: 0.6,
            min_gain: 0.4,
        }
    }
}

impl OffHoursConfig {
    /// See [`super::check`]; a working day of no hours would fit nothing.
    pub fn validate(&self) -> Result<(), String> {
        use super::check::{differ, not_zero};
        differ(("work_start", self.work_start), ("work_end", self.work_end))?;
        not_zero("min_days", self.min_days)?;
        not_zero("window", self.window)
    }
}

fn hour<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = u8::deserialize(d)?;
    if v <= 24 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "{v} is not an hour 0..24"
        )))
    }
}

fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("{v} is not a share 0..1")))
    }
}

/// One account's active hours (hours since the epoch) and what was reported.
#[derive(Default, Serialize, Deserialize)]
struct Activity {
    slots: BTreeSet<u64>,
    reported: Option<i32>,
}

/// Saved in checkpoints without its config.
#[derive(Serialize, Deserialize)]
pub struct OffHours {
    #[serde(skip)]
    config: OffHoursConfig,
    accounts: BTreeMap<Arc<str>, Activity>,
}

/// How the active hours of an account fit working days.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// Whole hours east of UTC.
    pub best_offset: i32,
    pub best_fit: f64,
    pub declared_fit: f64,
    pub active_days: usize,
    /// Active hours per declared local hour of day.
    pub hours_local: [u32; 24],
}

impl OffHours {
    pub fn new(config: &OffHoursConfig) -> OffHours {
        OffHours {
            config: config.clone(),
            accounts: BTreeMap::new(),
        }
    }

    /// An inside host started sending at `ts` (a direction of one of its flows resumed):
    /// an active hour for the account behind it. Only the sender counts: a server pushing
    /// to a laptop at night is not the person at it.
    pub fn on_activity(
        &mut self,
        scope: &Scope<'_>,
        sender: std::net::IpAddr,
        ts: Timestamp,
        out: &mut Vec<Event>,
    ) {
        let Some(account) = scope.identity.account_at(sender, ts) else {
            return;
        };
        if account.kind.is_none_or(|k| k == AccountKind::Service) {
            return;
        }
        let Some(tz) = scope
            .identity
            .inventory()
            .get(&account.id)
            .and_then(|a| a.timezone)
        else {
            return;
        };
        let slot = ts.secs() / 3600;
        let a = self.accounts.entry(account.id.clone()).or_default();
        if !a.slots.insert(slot) {
            return;
        }
        let keep = self.config.window.as_secs() / 3600;
        a.slots.retain(|s| s.saturating_add(keep) > slot);
        let Some(fit) = fit(&a.slots, tz, &self.config) else {
            return;
        };
        if fit.best_fit < self.config.min_fit
            || fit.best_fit - fit.declared_fit < self.config.min_gain
            || a.reported == Some(fit.best_offset)
        {
            return;
        }
        a.reported = Some(fit.best_offset);
        out.push(self.event(account.id.as_ref(), tz, &fit, sender, ts));
    }

    fn event(
        &self,
        account: &str,
        tz: chrono_tz::Tz,
        fit: &Fit,
        host: std::net::IpAddr,
        ts: Timestamp,
    ) -> Event {
        let offset = utc_offset(fit.best_offset);
        let mut e = Event::new(
            ts,
            Kind::OffHours,
            "foreign_working_hours",
            Severity::Medium,
            &offset,
        )
        .with(&OffHoursEvidence {
            declared_timezone: tz.name().to_string(),
            best_utc_offset: offset.clone(),
            best_fit: round1(fit.best_fit * 100.0) / 100.0,
            declared_fit: round1(fit.declared_fit * 100.0) / 100.0,
            active_days: fit.active_days as u64,
            hours_local: fit.hours_local.to_vec(),
            working_day: format!(
                "{:02}:00-{:02}:00",
                self.config.work_start, self.config.work_end
            ),
        });
        e.account = Some(account.to_string());
        e.host = Some(host);
        e.summary = format!(
            "Account {account} works {:.0}% of its active hours inside a working day at UTC{offset}, {:.0}% in its declared {} over {} days",
            fit.best_fit * 100.0,
            fit.declared_fit * 100.0,
            tz.name(),
            fit.active_days
        );
        e
    }

    /// Forgets accounts with no activity in the window.
    pub fn expire(&mut self, now: Timestamp) {
        let keep = self.config.window.as_secs() / 3600;
        let slot = now.secs() / 3600;
        self.accounts.retain(|_, a| {
            a.slots.retain(|s| s.saturating_add(keep) > slot);
            !a.slots.is_empty()
        });
    }
}

/// `+09:00`, `-06:00`.
fn utc_offset(hours: i32) -> String {
    format!("{}{:02}:00", if hours < 0 { '-' } else { '+' }, hours.abs())
}

/// Whether local `hour` (0..24, may carry a fraction) is inside the working day; a day
/// that wraps midnight (`work_start > work_end`) is allowed.
fn working(hour: f64, cfg: &OffHoursConfig) -> bool {
    let (s, e) = (f64::from(cfg.work_start), f64::from(cfg.work_end));
    if s <= e {
        (s..e).contains(&hour)
    } else {
        hour >= s || hour < e
    }
}

/// The fit of `slots` (hours since the epoch) to a working day, declared zone against the
/// best whole-hour offset. None before `min_days` local days have activity.
pub fn fit(slots: &BTreeSet<u64>, tz: chrono_tz::Tz, cfg: &OffHoursConfig) -> Option<Fit> {
    let n = slots.len();
    if n == 0 {
        return None;
    }
    let mut days = BTreeSet::new();
    let mut hours_local = [0u32; 24];
    let mut declared_in = 0usize;
    let (mut sin, mut cos) = (0.0f64, 0.0f64);
    for &slot in slots {
        // The middle of the hour, so that a zone with a :30 offset falls on one side.
        let mid = i64::try_from(slot)
            .ok()?
            .checked_mul(3600)?
            .checked_add(1800)?;
        let utc = chrono::DateTime::from_timestamp(mid, 0)?;
        let offset = i64::from(
            tz.offset_from_utc_datetime(&utc.naive_utc())
                .fix()
                .local_minus_utc(),
        );
        let local = mid + offset;
        days.insert(local.div_euclid(86_400));
        let local_hour = local.rem_euclid(86_400) as f64 / 3600.0;
        if let Some(h) = hours_local.get_mut(local_hour as usize) {
            *h += 1;
        }
        if working(local_hour, cfg) {
            declared_in += 1;
        }
        let angle = (mid.rem_euclid(86_400) as f64 / 86_400.0) * std::f64::consts::TAU;
        sin += angle.sin();
        cos += angle.cos();
    }
    if days.len() < cfg.min_days {
        return None;
    }
    let mean_utc = sin.atan2(cos).rem_euclid(std::f64::consts::TAU) / std::f64::consts::TAU * 24.0;
    let (s, e) = (f64::from(cfg.work_start), f64::from(cfg.work_end));
    let span = if s <= e { e - s } else { e + 24.0 - s };
    let middle = s + span / 2.0;
    // Into −11..+12, whole hours.
    let best_offset = (middle - mean_utc).round() as i32;
    let best_offset = (best_offset + 11).rem_euclid(24) - 11;
    let best_in = slots
        .iter()
        .filter(|&&slot| {
            let utc_hour = (slot % 24) as f64 + 0.5;
            working((utc_hour + f64::from(best_offset)).rem_euclid(24.0), cfg)
        })
        .count();
    Some(Fit {
        best_offset,
        best_fit: best_in as f64 / n as f64,
        declared_fit: declared_in as f64 / n as f64,
        active_days: days.len(),
        hours_local,
    })
}

/// A working day in another time zone.
pub const REGISTERED: Registered = Registered {
    stage: Stage::Account,
    reasons: &[Reason {
        name: "foreign_working_hours",
        weight: 30.0,
    }],
    new: |c| Box::new(OffHours::new(&c.detect.off_hours)),
};

impl Detector for OffHours {
    fn on(&mut self, moment: &Moment<'_>, scope: &Scope<'_>, out: &mut Vec<Event>) {
        match *moment {
            Moment::Observed(Observation::Activity { ts, host }) => {
                self.on_activity(scope, *host, *ts, out)
            }
            Moment::Hour(now) => self.expire(now),
            _ => {}
        }
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        crate::state::encode(self)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: OffHours = crate::state::decode(state)?;
        let config = std::mem::take(&mut self.config);
        *self = OffHours { config, ..saved };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hour slots for `days` consecutive days from 2026-11-02 at UTC hours `from..to`.
    fn slots(days: u64, from: u64, to: u64) -> BTreeSet<u64> {
        let day0 = 1_793_577_600 / 3600; // 2026-11-02T00:00:00Z
        (0..days)
            .flat_map(|d| (from..to).map(move |h| day0 + d * 24 + h))
            .collect()
    }

    #[test]
    fn a_pyongyang_day_under_a_chicago_declaration() {
        // 09-17 at UTC+9 is 00-08 UTC, 18:00-02:00 in Chicago (CST, UTC-6).
        let f = fit(
            &slots(6, 0, 8),
            chrono_tz::America::Chicago,
            &OffHoursConfig::default(),
        )
        .unwrap();
        assert_eq!(f.best_offset, 9);
        assert_eq!(f.best_fit, 1.0);
        assert_eq!(f.declared_fit, 0.0);
        // 6 UTC days straddle 7 Chicago dates.
        assert_eq!(f.active_days, 7);
        assert_eq!(f.hours_local[18], 6);
        assert_eq!(f.hours_local[1], 6);
        assert_eq!(f.hours_local[12], 0);
    }

    #[test]
    fn a_chicago_day_fits_chicago() {
        let f = fit(
            &slots(6, 15, 23),
            chrono_tz::America::Chicago,
            &OffHoursConfig::default(),
        )
        .unwrap();
        assert_eq!(f.best_offset, -6);
        assert_eq!((f.best_fit, f.declared_fit), (1.0, 1.0));
    }

    #[test]
    fn daylight_saving_moves_the_declared_fit() {
        // 13-21 UTC is 09-17 in New York in summer (EDT, UTC-4), 08-16 in winter.
        let cfg = OffHoursConfig::default();
        let summer: BTreeSet<u64> = slots(6, 13, 21).iter().map(|s| s - 24 * 120).collect();
        let f = fit(&summer, chrono_tz::America::New_York, &cfg).unwrap();
        assert_eq!(f.declared_fit, 1.0);
        let f = fit(&slots(6, 13, 21), chrono_tz::America::New_York, &cfg).unwrap();
        assert_eq!(f.declared_fit, 7.0 / 8.0);
    }

    #[test]
    fn too_few_days_and_offsets_wrap() {
        let cfg = OffHoursConfig::default();
        assert!(fit(&slots(3, 0, 8), chrono_tz::UTC, &cfg).is_none());
        // Activity 22-06 UTC: the middle (02:00) is 13:00 at UTC+11.
        let f = fit(&slots(6, 22, 30), chrono_tz::UTC, &cfg).unwrap();
        assert_eq!(f.best_offset, 11);
        // Activity 23-07 UTC: the middle (03:00) is 13:00 at UTC+10.
        let f = fit(&slots(6, 23, 31), chrono_tz::UTC, &cfg).unwrap();
        assert_eq!(f.best_offset, 10);
        assert_eq!(utc_offset(-6), "-06:00");
        assert_eq!(utc_offset(9), "+09:00");
    }
}
