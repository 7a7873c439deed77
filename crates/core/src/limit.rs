//! Sizes and transfer rates: one grammar for `--pack-size`-like sizes (`500G`, `10MiB`,
//! `123`) and for `--limit-upload`/`--limit-download` rates (`800K`, `10MiB/s`), and the pacer
//! that keeps uploads, or downloads, under a rate.
//!
//! The pacer is a GCRA (generic cell rate algorithm, a token bucket written as one
//! timestamp): each send of `n` bytes moves a theoretical arrival time forward by
//! `n / rate`, and a send may start when that time is no further ahead than the burst
//! allowance. It holds no thread and no timer: [`RateLimit::reserve`] says how long the
//! caller waits, and the caller sleeps as suits it (a thread or an async task).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// `500G`, `1.5T`, `10GiB`, `64K`, `123` (bytes); powers of 1024, `B`/`iB` optional.
pub fn parse_size(s: &str, what: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = |why: String| Error::Usage(format!("{what} {s:?}: {why}"));
    let n: f64 = num
        .parse()
        .map_err(|_| bad("expected a number and a unit, e.g. 500G, 2T, 10MiB".into()))?;
    let upper = unit.trim().to_ascii_uppercase();
    let mult: u64 = match upper.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        "P" => 1 << 50,
        _ => return Err(bad(format!("unknown unit {unit:?} (K, M, G, T, P)"))),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(bad("too large".into()));
    }
    Ok(v as u64)
}

/// A memory budget (`--index-memory`, a job's `index_memory`): a size of at least 1 MiB.
pub fn parse_memory(s: &str, what: &str) -> Result<u64> {
    let n = parse_size(s, what)?;
    if n < 1 << 20 {
        return Err(Error::Usage(format!("{what} {s:?}: under 1 MiB; give e.g. 64M")));
    }
    Ok(n)
}

/// An upload rate in bytes per second: `800K`, `10M`, `1.5MiB/s`, `2G/s`. A bare number is
/// refused (restic and rclone read it as KiB/s, a reader might take bytes or bits); so is
/// anything under 1 KiB/s, which would take a day per 100 MiB pack.
pub fn parse_rate(s: &str, what: &str) -> Result<u64> {
    let t = s.trim();
    let size = t.strip_suffix("/s").unwrap_or(t);
    if size.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(Error::Usage(format!(
            "{what} {s:?}: give a unit, e.g. 800K (KiB/s) or 10M (MiB/s)"
        )));
    }
    let n = parse_size(size, what)?;
    if n < 1024 {
        return Err(Error::Usage(format!(
            "{what} {s:?}: under 1 KiB/s; give e.g. 800K"
        )));
    }
    Ok(n)
}

/// Keeps the bytes sent (or received) through it under a rate, shared by every upload (or
/// download) of a run.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    /// How far ahead of now the theoretical arrival time may be when a send starts.
    burst: Duration,
    tat: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec`, allowing a burst of a quarter second's worth (at least
    /// 64 KiB): a send of at most that much starts at once on an idle link.
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        let rate = bytes_per_sec.max(1);
        let burst = Duration::from_secs_f64((64 * 1024) as f64 / rate as f64).max(Duration::from_millis(250));
        RateLimit {
            bytes_per_sec: rate,
            burst,
            tat: Mutex::new(None),
        }
    }

    /// The rate, bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Reserve `n` bytes: how long to wait before sending them. Reservations are taken in
    /// order, so concurrent senders share the rate.
    pub fn reserve(&self, n: usize) -> Duration {
        self.reserve_at(n, Instant::now())
    }

    fn reserve_at(&self, n: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let start = tat.map_or(now, |t| t.max(now));
        let end = start + cost;
        *tat = Some(end);
        // the send may start once `end` is within `burst + cost` of the clock: a send never
        // waits for its own length, only for what was sent before it beyond the burst
        let allowed = start.checked_sub(self.burst).unwrap_or(now);
        allowed.saturating_duration_since(now)
    }

    /// [`RateLimit::reserve`] and sleep the thread for it.
    pub fn wait_blocking(&self, n: usize) {
        let d = self.reserve(n);
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_size("10MiB", "x").unwrap(), 10 << 20);
        assert_eq!(parse_size("1.5K", "x").unwrap(), 1536);
        assert_eq!(parse_size("123", "x").unwrap(), 123);
        assert_eq!(parse_size("10GiB", "x").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5T", "x").unwrap(), 3 << 39);
        assert!(parse_size("5 parsecs", "x").is_err());
        assert!(parse_size("5X", "x").is_err());
        assert!(parse_size("G", "x").is_err());
        assert_eq!(parse_rate("800K", "x").unwrap(), 800 << 10);
        assert_eq!(parse_rate("10MiB/s", "x").unwrap(), 10 << 20);
        assert_eq!(parse_rate("2M/s", "x").unwrap(), 2 << 20);
        for bad in ["800", "1.5", "0K", "100B/s", "fast", "", "10Mbit"] {
            let e = parse_rate(bad, "--limit-upload").unwrap_err();
            assert_eq!(e.category(), crate::Category::Usage, "{bad}: {e}");
        }
    }

    #[test]
    fn the_rate_holds_over_many_sends_and_bursts_are_bounded() {
        let l = RateLimit::new(1 << 20); // 1 MiB/s, burst 250 ms
        let t0 = Instant::now();
        // a quarter second's worth goes at once
        assert_eq!(l.reserve_at(256 << 10, t0), Duration::ZERO);
        // 10 MiB more asked for at the same instant: each piece waits for the ones before it
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = l.reserve_at(256 << 10, t0);
        }
        // the 41st piece starts when the 10 MiB before it, less the burst's 0.25, have drained
        let expect = 9.75;
        assert!((last.as_secs_f64() - expect).abs() < 0.01, "{last:?}");
        // after a long idle, no credit is saved beyond the burst
        let later = t0 + Duration::from_secs(100);
        assert_eq!(l.reserve_at(256 << 10, later), Duration::ZERO);
        let next = l.reserve_at(256 << 10, later);
        assert!((next.as_secs_f64() - 0.0).abs() < 0.01, "{next:?}");
        let third = l.reserve_at(256 << 10, later);
        assert!((third.as_secs_f64() - 0.25).abs() < 0.01, "{third:?}");
    }
}
