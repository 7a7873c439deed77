//! One duration grammar for every flag and setting: humantime's. `45s`, `15min` (or `15m`),
//! `36h`, `7d`, `2w`, `6months` (or `6M`), `1y`, combined as `1y 6months` or `1d12h`; `0` is
//! zero. `m` is minutes everywhere. Months count 30.44 days and years 365.25 (calendar-free).
//!
//! Retention periods (`--keep-within`) refuse a bare `m`: restic and earlier coffer builds
//! read `6m` there as six months, and reading it as six minutes would make `forget` delete
//! what the user meant to keep.

use std::time::Duration;

use crate::error::{Error, Result};

/// Parse a duration for `what` (a flag or setting name, for the message).
pub fn parse(s: &str, what: &str) -> Result<Duration> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| {
        Error::Usage(format!(
            "{what} {s:?}: {e}; expected e.g. 45s, 15min, 36h, 7d, 2w, 6months, 1y (m is minutes)"
        ))
    })
}

/// [`parse`] for a retention period, where a bare `m` is refused as ambiguous.
pub fn parse_retention(s: &str, what: &str) -> Result<Duration> {
    if has_bare_m(s) {
        return Err(Error::Usage(format!(
            "{what} {s:?}: `m` is ambiguous in a retention period; write min for minutes or \
             months for months (e.g. 1y6months)"
        )));
    }
    let d = parse(s, what)?;
    // keeping what is newer than the newest snapshot minus nothing would keep nothing
    if d.is_zero() {
        return Err(Error::Usage(format!(
            "{what} {s:?}: a retention period of 0 keeps nothing; give a period (e.g. 7d)"
        )));
    }
    Ok(d)
}

/// How a parsed duration is shown back (`2h 30m`, `7days`).
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    humantime::format_duration(d).to_string()
}

/// Whether some number in `s` carries the unit `m` alone.
fn has_bare_m(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            if &s[start..i] == "m" {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_where_m_is_minutes() {
        let secs = |s: &str| parse(s, "--x").unwrap().as_secs();
        assert_eq!(secs("0"), 0);
        assert_eq!(secs("45s"), 45);
        assert_eq!(secs("1m"), 60);
        assert_eq!(secs("15min"), 900);
        assert_eq!(secs("36h"), 36 * 3600);
        assert_eq!(secs("7d"), 7 * 86_400);
        assert_eq!(secs("2w"), 14 * 86_400);
        assert_eq!(secs("1d12h"), 36 * 3600);
        assert_eq!(secs("1y 6months"), 31_557_600 + 6 * 2_630_016);
        for bad in ["", "7", "d", "7x", "-1d", "1.5.5h"] {
            let e = parse(bad, "--grace").unwrap_err();
            assert_eq!(e.category(), crate::Category::Usage, "{bad}");
            assert!(e.to_string().contains("--grace"), "{e}");
        }
        assert_eq!(format(Duration::from_secs(9000)), "2h 30m");
        assert_eq!(format(Duration::ZERO), "0");
    }

    #[test]
    fn a_bare_m_is_refused_in_retention_periods() {
        for bad in ["6m", "1y6m", "1y 6 m"] {
            let e = parse_retention(bad, "--keep-within").unwrap_err();
            assert!(e.to_string().contains("ambiguous"), "{e}");
        }
        for ok in ["6months", "1y6months", "90min", "14d"] {
            parse_retention(ok, "--keep-within").unwrap();
        }
        // a period of nothing would keep nothing
        for zero in ["0", "0s", "0d"] {
            let e = parse_retention(zero, "--keep-within").unwrap_err();
            assert!(e.to_string().contains("keeps nothing"), "{e}");
        }
    }
}
