//! Retention without the key.
//!
//! The server applies each repository's [`Policy`] by the time it *received* each snapshot
//! (the client's own clock and claims are never consulted), so a compromised client that
//! floods snapshots fills one day's slot, not the history: the daily, weekly, ... snapshots
//! from before the compromise keep their slots.
//!
//! Steps, under the repository's lock (snapshot commits wait):
//! 1. judge the snapshots, each client's apart (the catalog records who uploaded each); a
//!    snapshot whose manifest names no pack takes no slot and goes; move the ones no rule
//!    keeps, with their manifests, to the trash;
//! 2. the packs still needed are the union of the kept snapshots' manifests; if a kept
//!    snapshot has no manifest, nothing more is removed (the server cannot tell what it needs);
//! 3. move packs that no kept snapshot needs and that are older than the grace period (a
//!    backup may be uploading packs for a snapshot not yet written) to the trash;
//! 4. purge trash entries older than the trash period.
//!
//! A snapshot committed later that needs a trashed pack takes it back (see
//! [`crate::Server::commit`]); index files are never removed (the server cannot read them;
//! clients ignore entries for packs the server no longer lists).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{TimeZone, Utc};
use coffer_core::forget::{apply_policy_to_times, KeepPolicy};
use coffer_core::format::{Id, Manifest, SnapshotId};
use coffer_core::FileKind;
use serde::Serialize;

use crate::catalog::Policy;
use crate::store::kind_from_label;
use crate::{Result, Server, ServerError};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub repo: String,
    pub policy: bool,
    pub snapshots_kept: usize,
    pub snapshots_removed: Vec<String>,
    pub packs_removed: Vec<String>,
    pub bytes_removed: u64,
    pub purged: usize,
    pub notes: Vec<String>,
    pub dry_run: bool,
}

fn keep_policy(p: &Policy) -> KeepPolicy {
    KeepPolicy {
        last: p.keep_last as i64,
        hourly: p.keep_hourly as i64,
        daily: p.keep_daily as i64,
        weekly: p.keep_weekly as i64,
        monthly: p.keep_monthly as i64,
        yearly: p.keep_yearly as i64,
        within: (p.keep_within_secs > 0).then(|| chrono::Duration::seconds(p.keep_within_secs as i64)),
        tags: Vec::new(),
    }
}

/// Apply retention to one repository.
pub fn run(server: &Server, repo: &str, dry_run: bool) -> Result<Report> {
    let info = server
        .catalog
        .repo(repo)?
        .ok_or_else(|| ServerError::NotFound(format!("no repository {repo:?}")))?;
    let mut r = Report {
        repo: repo.to_string(),
        dry_run,
        ..Default::default()
    };
    let now = server.now();
    // under the repository's lock from here on: a snapshot commit may be taking a pack back
    // from the trash that the purge would delete
    let _lock = server.repo_lock(repo)?;
    if !dry_run {
        r.purged = purge_trash(server, repo, now)?;
    }
    let Some(policy) = info.policy.filter(|p| !p.is_empty()) else {
        r.notes.push("no retention policy set: nothing removed".into());
        return Ok(r);
    };
    // files encrypted in place make backups that "succeed": until an operator has looked,
    // no older snapshot (the good versions) is pushed out
    if server.catalog.repo_has_open_anomaly(repo)? {
        r.notes.push(
            "paused: a client of this repository has an unacknowledged ANOMALY (coffer server status; \
             coffer server client ack NAME): nothing removed"
                .into(),
        );
        return Ok(r);
    }
    r.policy = true;

    // 1. judge snapshots by the time they were received, each client's apart: one client's
    // uploads (or a thief's, with its token) can take only that client's slots. A snapshot
    // whose manifest names no pack cannot be a backup (every snapshot needs its root tree):
    // it takes no slot and goes to the trash. One with no readable manifest takes no slot
    // and stays, and then no pack is removed (the server cannot tell what it needs).
    let mut groups: BTreeMap<String, Vec<(SnapshotId, i64, i64)>> = BTreeMap::new();
    let mut needed: HashSet<String> = HashSet::new();
    let mut unjudged = Vec::new();
    let mut manifests = HashMap::new();
    for e in server.store.list(repo, FileKind::Snapshot)? {
        let Ok(id) = Id::from_hex(&e.name) else { continue };
        let manifest = server
            .store
            .read(repo, FileKind::Manifest, &e.name)?
            .and_then(|b| Manifest::decode(&b, &e.name).ok());
        match manifest {
            None => {
                unjudged.push(e.name.clone());
                continue;
            }
            Some(m) if m.packs.is_empty() => {
                r.snapshots_removed.push(e.name.clone());
                r.notes.push(format!(
                    "snapshot {}: its manifest names no pack (not a backup): removed",
                    &e.name[..8.min(e.name.len())]
                ));
                continue;
            }
            Some(m) => {
                manifests.insert(e.name.clone(), m);
            }
        }
        let (received, client, order) = server
            .catalog
            .snapshot_arrival(repo, &e.name)?
            .unwrap_or((e.mtime, None, 0));
        groups
            .entry(client.unwrap_or_default())
            .or_default()
            .push((SnapshotId(id), received, order));
    }
    let mut kept = Vec::new();
    for snaps in groups.values() {
        let decisions = apply_policy_to_times(&arrival_times(snaps), &keep_policy(&policy));
        let before = kept.len();
        for d in &decisions {
            if d.keep {
                kept.push(d.id.to_hex());
            } else {
                r.snapshots_removed.push(d.id.to_hex());
            }
        }
        if kept.len() == before && !snaps.is_empty() {
            // a policy always keeps the newest snapshot; this is a guard against a broken one
            return Err(ServerError::Invalid(format!(
                "{repo}: the policy would remove every snapshot of a client; refused"
            )));
        }
    }
    r.snapshots_kept = kept.len() + unjudged.len();
    if !dry_run {
        for id in &r.snapshots_removed {
            server.remove(repo, FileKind::Snapshot, id, "retention")?;
        }
    }

    // 2. what the kept snapshots need
    for id in &unjudged {
        r.notes.push(format!(
            "snapshot {id} has no readable manifest: no pack removed (the server cannot tell what it needs)"
        ));
    }
    if !unjudged.is_empty() {
        return Ok(r);
    }
    for id in &kept {
        if let Some(m) = manifests.get(id) {
            needed.extend(m.packs.iter().map(|p| p.to_hex()));
        }
    }

    // 3. packs nothing needs, past the grace period
    for e in server.store.list(repo, FileKind::Pack)? {
        if needed.contains(&e.name) || now - e.mtime < server.settings.pack_grace_secs {
            continue;
        }
        if !dry_run {
            server.remove(
                repo,
                FileKind::Pack,
                &e.name,
                "retention: no kept snapshot needs it",
            )?;
        }
        r.bytes_removed += e.size;
        r.packs_removed.push(e.name);
    }

    // 4. parity files whose pack is gone (a retention stopped between the two). Listed before
    // the packs: an upload of parity is accepted only while its pack is stored, so a parity
    // file listed first whose pack the later listing lacks has lost its pack for good.
    if !dry_run {
        let parity = server.store.list(repo, FileKind::Parity)?;
        let packs: HashSet<String> = server
            .store
            .list(repo, FileKind::Pack)?
            .into_iter()
            .map(|e| e.name)
            .collect();
        for e in parity.into_iter().filter(|e| !packs.contains(&e.name)) {
            server.remove(repo, FileKind::Parity, &e.name, "retention: its pack is gone")?;
        }
    }
    Ok(r)
}

/// Each snapshot's time for the policy: when the server received it (seconds), and within one
/// second a nanosecond per snapshot received before it, in the order the server recorded them:
/// `keep-last` keeps the ones received last, not the ones whose ids sort last (two backups
/// in one second, a retried one after a restart, are common).
fn arrival_times(
    snaps: &[(SnapshotId, i64, i64)],
) -> Vec<(SnapshotId, chrono::DateTime<chrono::FixedOffset>)> {
    let mut sorted = snaps.to_vec();
    sorted.sort_by_key(|(_, received, order)| (*received, *order));
    let mut out = Vec::with_capacity(sorted.len());
    let mut prev = None;
    let mut within = 0u32;
    for (id, received, _) in sorted {
        within = if prev == Some(received) {
            within.saturating_add(1).min(999_999_999)
        } else {
            0
        };
        prev = Some(received);
        let t = Utc
            .timestamp_opt(received, within)
            .single()
            .unwrap_or_default()
            .fixed_offset();
        out.push((id, t));
    }
    out
}

/// Delete trash entries older than the trash period; returns how many.
fn purge_trash(server: &Server, repo: &str, now: i64) -> Result<usize> {
    let mut n = 0;
    for e in server.catalog.trash(repo)? {
        if now - e.trashed < server.settings.trash_secs {
            continue;
        }
        if let Some(kind) = kind_from_label(&e.kind) {
            server.store.purge(repo, kind, &e.name)?;
            // the catalog forgets a snapshot only when it is not live: a trash record may be
            // left of an object that never moved (a cut between the record and the move) or
            // that a commit took back
            if kind == FileKind::Snapshot && server.store.stat(repo, kind, &e.name)?.is_none() {
                server.catalog.forget_snapshot(repo, &e.name)?;
            }
        }
        server.catalog.remove_trash(repo, &e.kind, &e.name)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three snapshots received within one second, their ids sorting against their arrival:
    /// `keep-last 2` keeps the two received last (the ids decided it before).
    #[test]
    fn keep_last_keeps_the_last_received_within_one_second() {
        let id = |b: u8| SnapshotId(coffer_core::format::Id([b; 32]));
        // (id, received, order recorded)
        let snaps = [
            (id(9), 1_000, 1),
            (id(5), 1_000, 2),
            (id(1), 1_000, 3),
            (id(7), 999, 0),
        ];
        let policy = KeepPolicy {
            last: 2,
            ..Default::default()
        };
        let kept: Vec<SnapshotId> = apply_policy_to_times(&arrival_times(&snaps), &policy)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        let mut kept = kept;
        kept.sort();
        assert_eq!(kept, vec![id(1), id(5)]);
    }
}
