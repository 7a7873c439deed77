//! Pictures for the console, rendered on the server as inline SVG with the `svg` crate (no
//! script, no CDN, nothing fetched by the browser): a strip of each client's last 30 days on
//! the fleet page, and each client's backups over time (data backed up, data added, duration)
//! on its page. Every number drawn is also in a `<title>` (a tooltip, and what a screen
//! reader says).

use svg::node::element::{Rectangle, Text, Title};
use svg::Document;

use crate::records::{Run, RunStatus};

/// What a client's backups came to on one day (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Day {
    /// At least one backup without warnings.
    Good,
    /// Backups, but each with warnings.
    Warning,
    /// Only failed backups.
    Failed,
    /// No backup reported that day.
    None,
}

impl Day {
    fn colour(self) -> &'static str {
        match self {
            Day::Good => "#2e7d32",
            Day::Warning => "#f9a825",
            Day::Failed => "#c62828",
            Day::None => "#cfd8dc",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Day::Good => "backed up",
            Day::Warning => "backed up with warnings",
            Day::Failed => "failed",
            Day::None => "no backup",
        }
    }
}

/// Seconds in a day.
const DAY: i64 = 86_400;

/// The last `n` days up to the day of `now` (UTC; oldest first) from backups received
/// (`(time, status)`): the best outcome of each day.
pub fn days(backups: &[(i64, RunStatus)], now: i64, n: usize) -> Vec<Day> {
    let today = now.div_euclid(DAY);
    let mut out = vec![Day::None; n];
    for (t, st) in backups {
        let back = today - t.div_euclid(DAY);
        if back < 0 || back >= n as i64 {
            continue;
        }
        let slot = &mut out[n - 1 - back as usize];
        let this = match st {
            RunStatus::Ok => Day::Good,
            RunStatus::Warning => Day::Warning,
            RunStatus::Failed => Day::Failed,
        };
        let rank = |d: Day| match d {
            Day::Good => 3,
            Day::Warning => 2,
            Day::Failed => 1,
            Day::None => 0,
        };
        if rank(this) > rank(*slot) {
            *slot = this;
        }
    }
    out
}

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// A strip of days (oldest left), the last one being the day of `now`.
pub fn day_strip(days: &[Day], now: i64) -> String {
    let (w, gap, h) = (6, 2, 16);
    let n = days.len() as i64;
    let mut doc = Document::new()
        .set("class", "strip")
        .set("width", n * (w + gap))
        .set("height", h)
        .set("viewBox", (0, 0, n * (w + gap), h))
        .set("role", "img");
    let good = days.iter().filter(|d| **d == Day::Good).count();
    doc = doc.add(Title::new(format!(
        "last {n} days: {good} with a good backup, {} failed, {} without a backup",
        days.iter().filter(|d| **d == Day::Failed).count(),
        days.iter().filter(|d| **d == Day::None).count()
    )));
    let today = now.div_euclid(DAY);
    for (i, d) in days.iter().enumerate() {
        let day = (today - (n - 1 - i as i64)) * DAY;
        doc = doc.add(
            Rectangle::new()
                .set("x", i as i64 * (w + gap))
                .set("y", 0)
                .set("width", w)
                .set("height", h)
                .set("rx", 1)
                .set("fill", d.colour())
                .set("data-day", d.word())
                .add(Title::new(format!("{}: {}", date(day), d.word()))),
        );
    }
    doc.to_string()
}

/// One bar chart of a value per backup (oldest left), with its largest value written above.
fn bars(title: &str, runs: &[&Run], value: impl Fn(&Run) -> f64, show: impl Fn(f64) -> String) -> String {
    let (w, h, top) = (360.0, 80.0, 14.0);
    let n = runs.len().max(1) as f64;
    let max = runs.iter().map(|r| value(r)).fold(0.0f64, f64::max);
    let bar = (w / n).min(24.0);
    let mut doc = Document::new()
        .set("class", "chart")
        .set("viewBox", (0, 0, w, h + top))
        .set("preserveAspectRatio", "none")
        .set("role", "img")
        .add(Title::new(format!(
            "{title}: {} backups, largest {}",
            runs.len(),
            show(max)
        )))
        .add(
            Text::new(format!("{title} (largest {})", show(max)))
                .set("x", 0)
                .set("y", 10)
                .set("font-size", 10),
        );
    for (i, r) in runs.iter().enumerate() {
        let v = value(r);
        let bh = if max > 0.0 { (v / max * h).max(1.0) } else { 1.0 };
        let colour = match r.report.status {
            RunStatus::Ok => "#546e7a",
            RunStatus::Warning => "#f9a825",
            RunStatus::Failed => "#c62828",
        };
        doc = doc.add(
            Rectangle::new()
                .set("x", i as f64 * bar)
                .set("y", top + h - bh)
                .set("width", (bar - 1.0).max(1.0))
                .set("height", bh)
                .set("fill", colour)
                .add(Title::new(format!(
                    "{}: {}",
                    crate::monitor::fmt_time(r.received),
                    show(v)
                ))),
        );
    }
    doc.to_string()
}

/// A client's backups over time (up to the last 60, oldest left): the data a backup covered,
/// what it added to the repository, and how long it took.
pub fn backups_over_time(runs: &[Run]) -> String {
    let mut list: Vec<&Run> = runs.iter().filter(|r| r.report.kind == "backup").collect();
    list.truncate(60);
    list.reverse();
    if list.is_empty() {
        return String::new();
    }
    let size = |b: f64| coffer_core::human_bytes(b as u64);
    format!(
        "<div class=\"charts\">{}{}{}</div>",
        bars("Data backed up", &list, |r| r.report.bytes_total as f64, size),
        bars(
            "Added to the repository",
            &list,
            |r| r.report.bytes_added as f64,
            size
        ),
        bars(
            "Duration",
            &list,
            |r| r.report.duration_ms as f64 / 1000.0,
            |s| format!("{s:.1} s")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_day_shows_its_best_backup() {
        let now = 10 * DAY + 3600;
        let b = [
            (10 * DAY + 60, RunStatus::Failed),
            (10 * DAY + 120, RunStatus::Ok),
            (9 * DAY + 5, RunStatus::Warning),
            (8 * DAY, RunStatus::Failed),
            (DAY, RunStatus::Ok),          // too old
            (11 * DAY, RunStatus::Failed), // in the future
        ];
        let d = days(&b, now, 4);
        assert_eq!(d, [Day::None, Day::Failed, Day::Warning, Day::Good]);
        let svg = day_strip(&d, now);
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("1970-01-11: backed up"), "{svg}");
        assert!(svg.contains("1970-01-08: no backup"), "{svg}");
        assert!(!svg.contains("<script"));
    }
}
