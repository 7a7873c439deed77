//! When a job runs: a cron expression in a time zone, shifted by a delay that is fixed for
//! each host and job (so a fleet with one schedule spreads its runs over the delay, while each
//! machine runs at the same time every day: a late run is then a signal, not noise).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};

/// A time zone: the machine's (`local`, the default), `UTC`, or a tz database name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Local,
    Named(chrono_tz::Tz),
}

impl FromStr for Zone {
    type Err = String;
    fn from_str(s: &str) -> Result<Zone, String> {
        if s == "local" {
            return Ok(Zone::Local);
        }
        s.parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
            format!("time zone {s:?} is not one of the tz database's (e.g. UTC, Europe/Paris, America/New_York) or `local`")
        })
    }
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Zone::Local => write!(f, "local"),
            Zone::Named(tz) => write!(f, "{}", tz.name()),
        }
    }
}

/// A parsed schedule.
#[derive(Clone)]
pub struct Schedule {
    expr: String,
    cron: croner::Cron,
    zone: Zone,
    random_delay: Duration,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({})", self.expr, self.zone)?;
        if !self.random_delay.is_zero() {
            write!(f, " + up to {}", coffer_core::duration::format(self.random_delay))?;
        }
        Ok(())
    }
}

impl Schedule {
    /// `expr`: five fields (minute hour day-of-month month day-of-week), or six with seconds
    /// first; `@daily` and the other nicknames too.
    pub fn new(expr: &str, zone: Zone, random_delay: Duration) -> Result<Schedule, String> {
        let cron = croner::Cron::from_str(expr).map_err(|e| {
            format!("bad cron expression {expr:?}: {e} (e.g. \"30 2 * * *\" for 02:30 every day)")
        })?;
        // an expression that never fires (30 February) is a mistake, not a schedule
        let s = Schedule {
            expr: expr.to_string(),
            cron,
            zone,
            random_delay,
        };
        if s.slot_after(Utc::now()).is_none() {
            return Err(format!("cron expression {expr:?} never fires"));
        }
        Ok(s)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn zone(&self) -> Zone {
        self.zone
    }

    pub fn random_delay(&self) -> Duration {
        self.random_delay
    }

    /// This host's and job's share of the random delay (the same at every run).
    pub fn delay_for(&self, host: &str, job: &str) -> Duration {
        let secs = self.random_delay.as_secs();
        if secs == 0 {
            return Duration::ZERO;
        }
        let mut h = blake3::Hasher::new_derive_key("coffer/v1 schedule delay");
        h.update(host.as_bytes());
        h.update(&[0]);
        h.update(job.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize().as_bytes()[..8]);
        Duration::from_secs(u64::from_le_bytes(first) % (secs + 1))
    }

    /// The first slot (the cron time, without delay) strictly after `t`.
    fn slot_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone {
            Zone::Local => self
                .cron
                .find_next_occurrence(&t.with_timezone(&Local), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            Zone::Named(tz) => self
                .cron
                .find_next_occurrence(&t.with_timezone(&tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The last slot at or before `t`.
    fn slot_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone {
            Zone::Local => self
                .cron
                .find_previous_occurrence(&t.with_timezone(&Local), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            Zone::Named(tz) => self
                .cron
                .find_previous_occurrence(&t.with_timezone(&tz), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The first run time (slot plus `delay`) strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>, delay: Duration) -> Option<DateTime<Utc>> {
        let d = chrono::Duration::from_std(delay).ok()?;
        self.slot_after(t - d).map(|s| s + d)
    }

    /// The last run time (slot plus `delay`) at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>, delay: Duration) -> Option<DateTime<Utc>> {
        let d = chrono::Duration::from_std(delay).ok()?;
        self.slot_at_or_before(t - d).map(|s| s + d)
    }
}

/// `t` as the schedule's zone shows it (`2026-12-05 02:30 CET`).
pub fn show(t: DateTime<Utc>, zone: Zone) -> String {
    match zone {
        Zone::Local => t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z").to_string(),
        Zone::Named(tz) => t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string(),
    }
}

/// Unix seconds as a UTC time.
pub fn utc(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn slots_follow_the_zone_and_the_delay() {
        let paris = Schedule::new("30 2 * * *", "Europe/Paris".parse().unwrap(), Duration::ZERO).unwrap();
        // 02:30 in Paris is 01:30 UTC in winter
        assert_eq!(
            paris.next_after(at("2026-12-05T00:00:00Z"), Duration::ZERO),
            Some(at("2026-12-05T01:30:00Z"))
        );
        // strictly after: a run at the slot itself looks to the next day
        assert_eq!(
            paris.next_after(at("2026-12-05T01:30:00Z"), Duration::ZERO),
            Some(at("2026-12-06T01:30:00Z"))
        );
        assert_eq!(
            paris.last_at_or_before(at("2026-12-05T01:30:00Z"), Duration::ZERO),
            Some(at("2026-12-05T01:30:00Z"))
        );
        // with this host's delay of 10 minutes
        let d = Duration::from_secs(600);
        assert_eq!(
            paris.next_after(at("2026-12-05T01:35:00Z"), d),
            Some(at("2026-12-05T01:40:00Z"))
        );
        assert_eq!(
            paris.last_at_or_before(at("2026-12-05T01:35:00Z"), d),
            Some(at("2026-12-04T01:40:00Z"))
        );
        // seconds
        let fast = Schedule::new("*/5 * * * * *", Zone::Named(chrono_tz::UTC), Duration::ZERO).unwrap();
        assert_eq!(
            fast.next_after(at("2026-12-05T00:00:01Z"), Duration::ZERO),
            Some(at("2026-12-05T00:00:05Z"))
        );
    }

    #[test]
    fn each_host_has_its_own_fixed_delay() {
        let s = Schedule::new("0 3 * * *", Zone::Local, Duration::from_secs(3600)).unwrap();
        let a = s.delay_for("web1", "nightly");
        assert_eq!(a, s.delay_for("web1", "nightly"));
        assert!(a <= Duration::from_secs(3600));
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|i| s.delay_for(&format!("web{i}"), "nightly"))
            .collect();
        assert!(spread.len() > 15, "{spread:?}");
        assert_eq!(
            Schedule::new("0 3 * * *", Zone::Local, Duration::ZERO)
                .unwrap()
                .delay_for("web1", "n"),
            Duration::ZERO
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::new("61 2 * * *", Zone::Local, Duration::ZERO)
            .unwrap_err()
            .contains("bad cron expression"));
        assert!(Schedule::new("0 0 30 2 *", Zone::Local, Duration::ZERO).is_err());
        assert!("Mars/Olympus"
            .parse::<Zone>()
            .unwrap_err()
            .contains("tz database"));
    }
}
