//! Retention policies against an independent statement of restic's documented semantics:
//! "for the last n days which have one or more snapshots, keep only the most recent one for
//! each day" (and likewise for hours, ISO weeks, months, years), "keep the n last snapshots",
//! "keep all snapshots within the duration of the latest", "keep snapshots with these tags".

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, FixedOffset, TimeZone};
use coffer_core::forget::{apply_grouped, apply_policy, parse_duration, GroupBy, KeepPolicy};
use coffer_core::format::{BlobId, Id, Snapshot, SnapshotId, Summary, FORMAT_VERSION};

fn snap(i: usize, time: DateTime<FixedOffset>, host: &str, tags: &[&str]) -> (SnapshotId, Snapshot) {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    (
        SnapshotId(Id(id)),
        Snapshot {
            version: FORMAT_VERSION,
            time,
            hostname: host.into(),
            username: "root".into(),
            paths: vec!["/srv".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            excludes: vec![],
            tree: BlobId::default(),
            parent: None,
            program_version: "test".into(),
            summary: Summary::default(),
            databases: vec![],
            images: vec![],
            original: None,
            key: None,
            sealed_by_write_only: false,
        },
    )
}

/// About 400 snapshots over two years at irregular intervals (1 to 90 hours apart),
/// every 37th tagged `special`.
fn two_years() -> Vec<(SnapshotId, Snapshot)> {
    let gaps = [7i64, 30, 47, 2, 90, 23, 48, 61, 80, 52, 1, 87];
    let tz = FixedOffset::east_opt(0).unwrap();
    let mut t = tz.with_ymd_and_hms(2024, 1, 1, 0, 30, 0).unwrap();
    (0..400)
        .map(|i| {
            t += Duration::hours(gaps[i % gaps.len()]);
            snap(i, t, "web1", if i % 37 == 0 { &["special"] } else { &[] })
        })
        .collect()
}

/// The oracle: newest snapshot per bucket, for the n newest buckets (n < 0: all).
fn newest_per_bucket(
    snaps: &[(SnapshotId, Snapshot)],
    n: i64,
    key: impl Fn(&DateTime<FixedOffset>) -> String,
) -> BTreeSet<SnapshotId> {
    let mut by: BTreeMap<String, (DateTime<FixedOffset>, SnapshotId)> = BTreeMap::new();
    for (id, s) in snaps {
        let e = by.entry(key(&s.time)).or_insert((s.time, *id));
        if s.time > e.0 {
            *e = (s.time, *id);
        }
    }
    let mut buckets: Vec<_> = by.into_values().collect();
    buckets.sort_by_key(|b| std::cmp::Reverse(b.0));
    let take = if n < 0 { buckets.len() } else { n as usize };
    buckets.into_iter().take(take).map(|(_, id)| id).collect()
}

fn expected(snaps: &[(SnapshotId, Snapshot)], p: &KeepPolicy) -> BTreeSet<SnapshotId> {
    let mut keep = BTreeSet::new();
    let mut by_time: Vec<_> = snaps.iter().collect();
    by_time.sort_by_key(|s| std::cmp::Reverse(s.1.time));
    let n = if p.last < 0 {
        by_time.len()
    } else {
        p.last as usize
    };
    keep.extend(by_time.iter().take(n).map(|s| s.0));
    keep.extend(newest_per_bucket(snaps, p.hourly, |t| {
        t.format("%Y-%m-%d %H").to_string()
    }));
    keep.extend(newest_per_bucket(snaps, p.daily, |t| {
        t.format("%Y-%m-%d").to_string()
    }));
    keep.extend(newest_per_bucket(snaps, p.weekly, |t| {
        format!("{:?}", t.iso_week())
    }));
    keep.extend(newest_per_bucket(snaps, p.monthly, |t| {
        t.format("%Y-%m").to_string()
    }));
    keep.extend(newest_per_bucket(snaps, p.yearly, |t| t.year().to_string()));
    if let Some(d) = p.within {
        let newest = by_time[0].1.time;
        keep.extend(snaps.iter().filter(|s| s.1.time >= newest - d).map(|s| s.0));
    }
    for tags in &p.tags {
        keep.extend(
            snaps
                .iter()
                .filter(|s| tags.iter().all(|t| s.1.tags.contains(t)))
                .map(|s| s.0),
        );
    }
    keep
}

fn pol(f: impl FnOnce(&mut KeepPolicy)) -> KeepPolicy {
    let mut p = KeepPolicy::default();
    f(&mut p);
    p
}

#[test]
fn policies_keep_what_the_documentation_says() {
    let snaps = two_years();
    let span = snaps.last().unwrap().1.time - snaps[0].1.time;
    assert!(
        span > Duration::days(700),
        "the fixture spans {} days",
        span.num_days()
    );
    let table: Vec<(&str, KeepPolicy, Option<usize>)> = vec![
        ("last 5", pol(|p| p.last = 5), Some(5)),
        ("last 1", pol(|p| p.last = 1), Some(1)),
        ("last all", pol(|p| p.last = -1), Some(400)),
        ("hourly 10", pol(|p| p.hourly = 10), Some(10)),
        ("daily 7", pol(|p| p.daily = 7), Some(7)),
        ("daily 30", pol(|p| p.daily = 30), None),
        ("daily all", pol(|p| p.daily = -1), None),
        ("weekly 4", pol(|p| p.weekly = 4), Some(4)),
        ("weekly 52", pol(|p| p.weekly = 52), None),
        ("monthly 12", pol(|p| p.monthly = 12), Some(12)),
        ("monthly 24", pol(|p| p.monthly = 24), Some(24)),
        ("yearly 2", pol(|p| p.yearly = 2), Some(2)),
        ("yearly all", pol(|p| p.yearly = -1), Some(2)),
        ("within 30d", pol(|p| p.within = Some(Duration::days(30))), None),
        (
            "within 1y6m",
            pol(|p| p.within = Some(parse_duration("1y6months").unwrap())),
            None,
        ),
        (
            "tag special",
            pol(|p| p.tags = vec![vec!["special".into()]]),
            Some(11),
        ),
        (
            "daily 7 weekly 4 monthly 12 yearly 3",
            pol(|p| {
                p.daily = 7;
                p.weekly = 4;
                p.monthly = 12;
                p.yearly = 3;
            }),
            None,
        ),
        (
            "last 3 hourly 48 tag special",
            pol(|p| {
                p.last = 3;
                p.hourly = 48;
                p.tags = vec![vec!["special".into()]];
            }),
            None,
        ),
        (
            "within 14d monthly -1",
            pol(|p| {
                p.within = Some(Duration::days(14));
                p.monthly = -1;
            }),
            None,
        ),
    ];
    for (name, p, count) in table {
        let decisions = apply_policy(&snaps, &p);
        assert_eq!(decisions.len(), 400, "{name}");
        let kept: BTreeSet<_> = decisions.iter().filter(|d| d.keep).map(|d| d.id).collect();
        assert_eq!(kept, expected(&snaps, &p), "{name}");
        if let Some(c) = count {
            assert_eq!(kept.len(), c, "{name}");
        }
        for d in &decisions {
            assert_eq!(d.keep, !d.reasons.is_empty(), "{name}: {d:?}");
        }
        // newest first
        assert!(decisions.windows(2).all(|w| w[0].time >= w[1].time), "{name}");
    }
}

#[test]
fn groups_are_independent() {
    let tz = FixedOffset::east_opt(3600).unwrap();
    let mut snaps = Vec::new();
    for i in 0..10 {
        let t = tz.with_ymd_and_hms(2025, 3, 1 + i, 12, 0, 0).unwrap();
        snaps.push(snap(i as usize, t, "a", &[]));
        snaps.push(snap(100 + i as usize, t, "b", &[]));
    }
    let groups = apply_grouped(&snaps, &pol(|p| p.last = 2), GroupBy::default());
    assert_eq!(groups.len(), 2);
    for g in &groups {
        assert_eq!(g.snapshots.iter().filter(|d| d.keep).count(), 2);
    }
    let all = apply_grouped(&snaps, &pol(|p| p.last = 2), "paths".parse().unwrap());
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].snapshots.iter().filter(|d| d.keep).count(), 2);
    assert!("hosts".parse::<GroupBy>().is_err());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("7d").unwrap(), Duration::days(7));
    // humantime's grammar: a year is 365.25 days, a month 30.44
    assert_eq!(
        parse_duration("1y2months3w4d5h").unwrap(),
        Duration::seconds(31_557_600 + 2 * 2_630_016) + Duration::days(21 + 4) + Duration::hours(5)
    );
    // `m` would be minutes: refused here, where restic reads months
    assert!(parse_duration("1y6m")
        .unwrap_err()
        .to_string()
        .contains("ambiguous"));
    for bad in ["", "7", "d", "7x", "-1d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}
