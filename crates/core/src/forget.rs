//! Retention policies (`coffer forget`), with restic's semantics:
//!
//! - `keep_last n`: the n newest snapshots;
//! - `keep_hourly/daily/weekly/monthly/yearly n`: for the n newest hours/days/ISO weeks/
//!   months/years that have snapshots, the newest snapshot of each;
//! - `keep_within d`: every snapshot newer than the newest snapshot minus d;
//! - `keep_tags`: every snapshot carrying all tags of one of the lists.
//!
//! A count of -1 means unlimited. Policies apply per group (by default host and paths), and a
//! snapshot is kept when any rule keeps it; the reasons are reported. Calendar buckets use the
//! snapshot's own recorded time zone.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, FixedOffset, Timelike};
use coffer_format::{Snapshot, SnapshotId};
use serde::Serialize;

use crate::error::{Error, Result};

/// What to keep. Counts: 0 = rule off, -1 = unlimited.
#[derive(Clone, Debug, Default)]
pub struct KeepPolicy {
    pub last: i64,
    pub hourly: i64,
    pub daily: i64,
    pub weekly: i64,
    pub monthly: i64,
    pub yearly: i64,
    pub within: Option<Duration>,
    /// Each entry is a list of tags that must all be present.
    pub tags: Vec<Vec<String>>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// How snapshots are grouped before the policy applies.
#[derive(Clone, Copy, Debug)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "--group-by: unknown field {other:?} (host, paths, tags)"
                    )))
                }
            }
        }
        Ok(g)
    }
}

/// The key a snapshot is grouped under.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// The verdict on one snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub id: SnapshotId,
    pub time: DateTime<FixedOffset>,
    pub keep: bool,
    /// Why it is kept ("last snapshot", "daily snapshot", ...); empty when removed.
    pub reasons: Vec<String>,
}

/// One group's decisions, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct GroupDecision {
    pub group: GroupKey,
    pub snapshots: Vec<Decision>,
}

fn bucket(kind: usize, t: &DateTime<FixedOffset>) -> i64 {
    let (y, m, d, h) = (t.year() as i64, t.month() as i64, t.day() as i64, t.hour() as i64);
    match kind {
        0 => ((y * 100 + m) * 100 + d) * 100 + h,
        1 => (y * 100 + m) * 100 + d,
        2 => {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }
        3 => y * 100 + m,
        _ => y,
    }
}

/// Apply `policy` to one group of snapshots (any order); returns decisions newest first.
pub fn apply_policy(snaps: &[(SnapshotId, Snapshot)], policy: &KeepPolicy) -> Vec<Decision> {
    let items: Vec<Item<'_>> = snaps
        .iter()
        .map(|(id, s)| Item {
            id: *id,
            time: s.time,
            tags: &s.tags,
        })
        .collect();
    decide(items, policy)
}

/// Apply `policy` to snapshots known only by id and time (a server judging by the time it
/// received each snapshot); returns decisions newest first.
pub fn apply_policy_to_times(
    snaps: &[(SnapshotId, DateTime<FixedOffset>)],
    policy: &KeepPolicy,
) -> Vec<Decision> {
    let items = snaps
        .iter()
        .map(|(id, t)| Item {
            id: *id,
            time: *t,
            tags: &[],
        })
        .collect();
    decide(items, policy)
}

struct Item<'a> {
    id: SnapshotId,
    time: DateTime<FixedOffset>,
    tags: &'a [String],
}

fn decide(mut sorted: Vec<Item<'_>>, policy: &KeepPolicy) -> Vec<Decision> {
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    let newest = sorted.first().map(|s| s.time);
    const NAMES: [&str; 5] = ["hourly", "daily", "weekly", "monthly", "yearly"];
    let mut counts = [
        policy.hourly,
        policy.daily,
        policy.weekly,
        policy.monthly,
        policy.yearly,
    ];
    let mut last_bucket: [Option<i64>; 5] = [None; 5];
    let mut last_left = policy.last;
    let mut out = Vec::with_capacity(sorted.len());
    for s in sorted {
        let id = s.id;
        let mut reasons = Vec::new();
        if last_left != 0 {
            reasons.push("last snapshot".to_string());
            if last_left > 0 {
                last_left -= 1;
            }
        }
        for k in 0..5 {
            if counts[k] == 0 {
                continue;
            }
            let b = bucket(k, &s.time);
            if last_bucket[k] != Some(b) {
                last_bucket[k] = Some(b);
                reasons.push(format!("{} snapshot", NAMES[k]));
                if counts[k] > 0 {
                    counts[k] -= 1;
                }
            }
        }
        if let (Some(d), Some(n)) = (policy.within, newest) {
            // (the newest snapshot is within any period of itself)
            if s.time >= n - d {
                reasons.push(format!("within {}", format_duration(d)));
            }
        }
        for tags in &policy.tags {
            if !tags.is_empty() && tags.iter().all(|t| s.tags.contains(t)) {
                reasons.push(format!("tagged {}", tags.join(",")));
            }
        }
        out.push(Decision {
            id,
            time: s.time,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// Group snapshots and apply the policy to each group.
pub fn apply_grouped(
    snaps: &[(SnapshotId, Snapshot)],
    policy: &KeepPolicy,
    by: GroupBy,
) -> Vec<GroupDecision> {
    let mut groups: BTreeMap<GroupKey, Vec<(SnapshotId, Snapshot)>> = BTreeMap::new();
    for (id, s) in snaps {
        let mut tags = s.tags.clone();
        tags.sort();
        let key = GroupKey {
            host: by.host.then(|| s.hostname.clone()),
            paths: by.paths.then(|| s.paths.clone()),
            tags: by.tags.then_some(tags),
        };
        groups.entry(key).or_default().push((*id, s.clone()));
    }
    groups
        .into_iter()
        .map(|(group, list)| GroupDecision {
            snapshots: apply_policy(&list, policy),
            group,
        })
        .collect()
}

/// A retention period (`--keep-within`), in the one duration grammar ([`crate::duration`]),
/// where a bare `m` is refused as ambiguous.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let d = crate::duration::parse_retention(s, "--keep-within")?;
    Duration::from_std(d).map_err(|_| Error::Usage(format!("--keep-within {s:?}: too long")))
}

fn format_duration(d: Duration) -> String {
    let h = d.num_hours();
    if h % 24 == 0 {
        format!("{}d", h / 24)
    } else {
        format!("{h}h")
    }
}
