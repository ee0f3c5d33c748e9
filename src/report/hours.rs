//! Activity by hour of the week, and the time zone whose working week explains it: the
//! heat map of an account's flow starts in its declared zone, with a foreign zone marked —
//! the one an `off_hours` finding names, or else the UTC offset that fits best.

use chrono::{Datelike, FixedOffset, Offset, TimeZone, Timelike};
use serde::Serialize;

use super::Collector;
use crate::event::OffHoursEvidence;

/// Working hours for the time-zone fit: Monday to Friday, 09:00 to 18:00 local.
const WORK_HOURS: std::ops::Range<u32> = 9..18;
/// Flows an account needs before a foreign zone is named from its own activity.
const MIN_ACTIVITY_FOR_FIT: u32 = 20;

/// Flows started by hour of day × weekday (Monday first) in the declared zone.
#[derive(Serialize)]
pub struct Heat {
    pub zone: String,
    pub grid: [[u32; 24]; 7],
    pub total: u32,
    pub declared_fit: f64,
    pub foreign: Option<Foreign>,
}

/// The zone whose working week best explains the activity, and the cells (in declared
/// time) that are its working hours.
#[derive(Serialize)]
pub struct Foreign {
    pub zone: String,
    pub fit: f64,
    pub source: String,
    pub mark: [[bool; 24]; 7],
}

/// (weekday from Monday, hour) of a UTC hour in `tz`.
fn local_slot<Z: TimeZone>(hour: i64, tz: &Z) -> Option<(usize, usize)> {
    let t = chrono::DateTime::from_timestamp(hour.checked_mul(3600)?, 0)?.with_timezone(tz);
    Some((
        t.weekday().num_days_from_monday() as usize,
        t.hour() as usize,
    ))
}

/// Share of the activity that falls in working hours in `tz`.
fn work_fit<Z: TimeZone>(hours: &[(i64, u32)], tz: &Z) -> f64 {
    let total: u32 = hours.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return 0.0;
    }
    let work: u32 = hours
        .iter()
        .filter(|(h, _)| {
            local_slot(*h, tz).is_some_and(|(d, hr)| d < 5 && WORK_HOURS.contains(&(hr as u32)))
        })
        .map(|(_, n)| n)
        .sum();
    f64::from(work) / f64::from(total)
}

fn offset_name(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let m = secs.unsigned_abs() / 60;
    format!("UTC{sign}{:02}:{:02}", m / 60, m % 60)
}

/// The account's activity in its declared zone (UTC when none is declared), with the
/// foreign zone an `off_hours` finding names, or else the UTC offset whose working week
/// fits the activity best when it fits clearly better than the declared zone.
pub fn heat(c: &Collector, id: &str, declared: Option<chrono_tz::Tz>, events: &[usize]) -> Heat {
    let hours: Vec<(i64, u32)> = c
        .activity
        .range((id.to_string(), i64::MIN)..=(id.to_string(), i64::MAX))
        .map(|((_, h), n)| (*h, *n))
        .collect();
    let tz = declared.unwrap_or(chrono_tz::UTC);
    let mut grid = [[0u32; 24]; 7];
    for (h, n) in &hours {
        if let Some((d, hr)) = local_slot(*h, &tz)
            && let Some(cell) = grid.get_mut(d).and_then(|row| row.get_mut(hr))
        {
            *cell = cell.saturating_add(*n);
        }
    }
    let total: u32 = hours.iter().map(|(_, n)| n).sum();
    let declared_fit = work_fit(&hours, &tz);
    // The middle of the activity, where the two zones' offsets are compared.
    let mid = hours
        .get(hours.len() / 2)
        .map_or(0, |(h, _)| h.saturating_mul(3600));
    let declared_offset = offset_at(&tz, mid);

    // The UTC offset an off_hours finding names.
    let named = events
        .iter()
        .filter_map(|&i| c.events.get(i))
        .find_map(|e| {
            let z = parse_offset(&e.read::<OffHoursEvidence>()?.best_utc_offset)?;
            let secs = z.local_minus_utc();
            Some((
                offset_name(secs),
                secs,
                work_fit(&hours, &z),
                format!("finding {}", e.id),
            ))
        });
    let foreign = match named {
        Some(found) => Some(found),
        // Whole-hour offsets first: with hourly bins a half-hour neighbour often fits as
        // well, and the first best is kept.
        None if total >= MIN_ACTIVITY_FOR_FIT => (-12..=14)
            .map(|h: i32| h * 3600)
            .chain((-12..=13).map(|h: i32| h * 3600 + 1800))
            .filter_map(FixedOffset::east_opt)
            .map(|z| (z, work_fit(&hours, &z)))
            .fold(
                None,
                |best: Option<(FixedOffset, f64)>, (z, fit)| match best {
                    Some((_, b)) if b >= fit => best,
                    _ => Some((z, fit)),
                },
            )
            .filter(|(z, fit)| *fit >= declared_fit + 0.2 && z.local_minus_utc() != declared_offset)
            .map(|(z, fit)| {
                (
                    offset_name(z.local_minus_utc()),
                    z.local_minus_utc(),
                    fit,
                    "best-fitting working week among UTC offsets".to_string(),
                )
            }),
        None => None,
    };
    Heat {
        zone: declared.map_or("UTC (no declared zone)".to_string(), |z| {
            z.name().to_string()
        }),
        grid,
        total,
        declared_fit: (declared_fit * 1000.0).round() / 1000.0,
        foreign: foreign.map(|(zone, offset, fit, source)| Foreign {
            zone,
            fit: (fit * 1000.0).round() / 1000.0,
            source,
            mark: work_mask(offset - declared_offset),
        }),
    }
}

/// `+09:00`, `-05:30`, optionally after `UTC`.
fn parse_offset(s: &str) -> Option<FixedOffset> {
    let s = s.strip_prefix("UTC").unwrap_or(s);
    let sign = match s.get(..1)? {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let (h, m) = s.get(1..)?.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

fn offset_at<Z: TimeZone>(tz: &Z, unix: i64) -> i32 {
    chrono::DateTime::from_timestamp(unix, 0)
        .map_or(0, |t| t.with_timezone(tz).offset().fix().local_minus_utc())
}

/// The declared-zone cells that are working hours in a zone `shift` seconds ahead.
fn work_mask(shift: i32) -> [[bool; 24]; 7] {
    const WEEK_MIN: i32 = 7 * 24 * 60;
    let mut mark = [[false; 24]; 7];
    for (d, row) in mark.iter_mut().enumerate() {
        for (h, cell) in row.iter_mut().enumerate() {
            let m = (d as i32 * 1440 + h as i32 * 60 + shift / 60).rem_euclid(WEEK_MIN);
            let (fd, fh) = (m / 1440, (m % 1440) / 60);
            *cell = fd < 5 && WORK_HOURS.contains(&(fh as u32));
        }
    }
    mark
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Kind, Severity};
    use crate::timestamp::Timestamp;

    #[test]
    fn work_mask_shifts_the_foreign_working_week_into_declared_time() {
        let same = work_mask(0);
        assert!(same[0][9] && same[4][17] && !same[4][18] && !same[5][12] && !same[0][8]);
        // Six hours ahead: declared Monday 03:00 is 09:00 there.
        let ahead = work_mask(6 * 3600);
        assert!(ahead[0][3] && ahead[0][11] && !ahead[0][12]);
        // Declared Sunday 03:00 is a Sunday there too; Sunday 23:00 is Monday 05:00.
        assert!(!ahead[6][3] && !ahead[6][23]);
        // Behind: declared Saturday 01:00 is Friday 17:00 eight hours behind.
        assert!(work_mask(-8 * 3600)[5][1]);
    }

    /// Four weeks of flows started 01:00-08:59 UTC on weekdays: 09-17 in UTC+8.
    fn shifted_worker() -> Collector {
        let mut c = Collector::new(true);
        let monday = 1_793_577_600 / 3600; // 2026-11-02T00:00:00Z, a Monday, in hours
        for day in 0..28i64 {
            if day % 7 >= 5 {
                continue;
            }
            for h in 1..9 {
                c.activity
                    .insert(("w".to_string(), monday + day * 24 + h), 3);
            }
        }
        c
    }

    #[test]
    fn heat_names_the_offset_whose_working_week_fits() {
        let c = shifted_worker();
        let h = heat(&c, "w", Some(chrono_tz::America::Chicago), &[]);
        assert_eq!(h.zone, "America/Chicago");
        assert_eq!(h.total, 20 * 8 * 3);
        // 01:00 UTC is 19:00 the day before in Chicago (CST, UTC-6): Monday's work
        // starts on Sunday evening; 08:00 UTC is 02:00 the same day.
        assert_eq!(h.grid[6][19], 12);
        assert_eq!(h.grid[0][19], 12);
        assert_eq!(h.grid[4][2], 12);
        assert_eq!(h.grid[5].iter().sum::<u32>(), 0);
        assert_eq!(h.declared_fit, 0.0);
        let f = h.foreign.expect("a foreign zone");
        assert_eq!(f.zone, "UTC+08:00");
        assert_eq!(f.fit, 1.0);
        // Chicago Sunday 19:00 is Monday 09:00 in UTC+8.
        assert!(f.mark[6][19] && !f.mark[0][9]);
    }

    #[test]
    fn heat_takes_the_offset_an_off_hours_finding_names() {
        let mut c = shifted_worker();
        let mut e = Event::new(
            Timestamp::from_secs(1_793_700_000),
            Kind::OffHours,
            "foreign_working_hours",
            Severity::Medium,
            "",
        )
        .with(&OffHoursEvidence {
            declared_timezone: "America/Chicago".to_string(),
            best_utc_offset: "+09:00".to_string(),
            best_fit: 1.0,
            declared_fit: 0.0,
            active_days: 20,
            hours_local: vec![0; 24],
            working_day: "09:00-17:00".to_string(),
        });
        e.account = Some("w".to_string());
        e.seal();
        c.event(&e);
        let f = heat(&c, "w", Some(chrono_tz::America::Chicago), &[0])
            .foreign
            .expect("a foreign zone");
        // Named by the finding, although UTC+08:00 fits the activity as well.
        assert_eq!(f.zone, "UTC+09:00");
        assert_eq!(f.source, format!("finding {}", e.id));
        // 01:00-08:59 UTC is 10:00-17:59 there, all inside 09-18.
        assert_eq!(f.fit, 1.0);
        // Chicago Sunday 18:00 is Monday 09:00 at UTC+9.
        assert!(f.mark[6][18] && !f.mark[6][17]);
    }

    #[test]
    fn offsets_parse_strictly() {
        assert_eq!(parse_offset("+09:00").unwrap().local_minus_utc(), 9 * 3600);
        assert_eq!(
            parse_offset("UTC-05:30").unwrap().local_minus_utc(),
            -(5 * 3600 + 1800)
        );
        for bad in ["09:00", "09:00-17:00", "+9", "+15:00", "+09:60", "", "+"] {
            assert!(parse_offset(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn too_little_activity_names_no_zone() {
        let mut c = Collector::new(true);
        c.activity.insert(("w".to_string(), 498_240), 5);
        assert!(heat(&c, "w", None, &[]).foreign.is_none());
    }
}
