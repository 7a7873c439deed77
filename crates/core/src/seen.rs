//! Rollback detection (docs/FORMAT.md "Threat model"): a client remembers, per host, the newest
//! snapshot it has seen in the repository (`<cache>/<repository id>/seen.json`), and says so
//! when a later listing lacks it while older snapshots of that host are still there — storage
//! (or a server) that went back to an earlier state, or hides the newest snapshots. The
//! client's own `forget` updates the record, so removing snapshots on purpose is not reported;
//! another client's forget of a host's newest snapshot is (the warning says both causes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use coffer_format::{Snapshot, SnapshotId};
use serde::{Deserialize, Serialize};

/// What was seen of one host: its newest snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Newest {
    id: String,
    /// Milliseconds since the epoch.
    time: i64,
}

/// The record of one repository, kept in a file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Seen {
    hosts: BTreeMap<String, Newest>,
}

/// Where a repository's record is kept.
pub fn record_path(cache_dir: &Path, repo_id: &coffer_format::Id) -> PathBuf {
    cache_dir.join(repo_id.to_hex()).join("seen.json")
}

impl Seen {
    /// The record at `path` (empty if there is none or it does not decode: a lost record
    /// only means nothing to compare with).
    pub fn load(path: &Path) -> Seen {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
        std::fs::rename(&tmp, path)
    }

    /// Compare a complete listing with the record: one warning per host whose remembered
    /// newest snapshot is missing while the listing still holds an older one of that host (or
    /// none at all). Then remember the listing's newest per host (snapshots dated in the future
    /// are not taken as newest: a forged date must not hide a real snapshot's disappearance).
    pub fn observe(&mut self, listing: &[(SnapshotId, Snapshot)], now: i64) -> Vec<String> {
        let mut newest: BTreeMap<&str, (&SnapshotId, i64)> = BTreeMap::new();
        let mut ids = std::collections::HashSet::new();
        for (id, s) in listing {
            ids.insert(id.to_hex());
            let t = s.time.timestamp_millis();
            if t > now * 1000 + 300_000 {
                continue;
            }
            let e = newest.entry(s.hostname.as_str()).or_insert((id, t));
            if t > e.1 {
                *e = (id, t);
            }
        }
        let mut warnings = Vec::new();
        for (host, seen) in &self.hosts {
            if ids.contains(&seen.id) {
                continue;
            }
            let when = chrono::DateTime::from_timestamp_millis(seen.time)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default();
            match newest.get(host.as_str()) {
                Some((_, t)) if *t <= seen.time => warnings.push(format!(
                    "snapshot {} of host {host} ({when}), which this client saw before, is gone while older ones of {host} are still there: \
                     the storage may have been rolled back or be hiding the newest snapshots (or another client forgot it)",
                    &seen.id[..8]
                )),
                None => warnings.push(format!(
                    "every snapshot of host {host} is gone, the newest of which this client saw ({} of {when}): \
                     the storage may have been rolled back or emptied (or another client forgot them)",
                    &seen.id[..8]
                )),
                _ => {} // a newer one replaced it (retention, a later backup)
            }
        }
        for (host, (id, t)) in newest {
            self.hosts.insert(
                host.to_string(),
                Newest {
                    id: id.to_hex(),
                    time: t,
                },
            );
        }
        // hosts that vanished were reported once; forget them so the warning is not repeated
        self.hosts
            .retain(|h, _| listing.iter().any(|(_, s)| s.hostname == *h));
        warnings
    }

    /// After this client removed `removed` on purpose (`forget`): hosts whose remembered newest
    /// snapshot it removed take the listing as the truth; every other host is compared as by
    /// [`Seen::observe`] (a rollback of another host is still said).
    pub fn forgotten(
        &mut self,
        after: &[(SnapshotId, Snapshot)],
        removed: &[SnapshotId],
        now: i64,
    ) -> Vec<String> {
        let removed: std::collections::HashSet<String> = removed.iter().map(|r| r.to_hex()).collect();
        self.hosts.retain(|_, n| !removed.contains(&n.id));
        self.observe(after, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_format::{BlobId, Id, Summary, FORMAT_VERSION};

    fn snap(host: &str, time: i64) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            time: chrono::DateTime::from_timestamp(time, 0).unwrap().fixed_offset(),
            hostname: host.into(),
            username: String::new(),
            paths: vec!["/".into()],
            tags: vec![],
            excludes: vec![],
            tree: BlobId(Id([0; 32])),
            parent: None,
            program_version: "test".into(),
            summary: Summary::default(),
            databases: vec![],
            images: vec![],
            original: None,
            key: None,
            sealed_by_write_only: false,
        }
    }

    fn id(n: u8) -> SnapshotId {
        SnapshotId(Id([n; 32]))
    }

    #[test]
    fn a_hidden_newest_snapshot_is_said_once_and_retention_is_not() {
        let now = 1_000_000;
        let mut seen = Seen::default();
        let all = vec![
            (id(1), snap("web1", now - 300)),
            (id(2), snap("web1", now - 200)),
            (id(3), snap("web1", now - 100)),
            (id(9), snap("db1", now - 100)),
        ];
        assert!(seen.observe(&all, now).is_empty());
        // retention removed the oldest, a new backup came: nothing to say
        let later = vec![
            (id(2), snap("web1", now - 200)),
            (id(3), snap("web1", now - 100)),
            (id(4), snap("web1", now - 50)),
            (id(9), snap("db1", now - 100)),
        ];
        assert!(seen.observe(&later, now).is_empty());
        // the storage went back: the newest of web1 is gone, older ones remain
        let rolled = vec![
            (id(2), snap("web1", now - 200)),
            (id(3), snap("web1", now - 100)),
            (id(9), snap("db1", now - 100)),
        ];
        let w = seen.observe(&rolled, now);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("host web1") && w[0].contains("rolled back"),
            "{w:?}"
        );
        // said once: the record follows what is there now
        assert!(seen.observe(&rolled, now).is_empty());
        // a whole host gone
        let w = seen.observe(&rolled[..2], now);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("every snapshot of host db1"), "{w:?}");
        // a forget of the newest by this client is no rollback
        let mut seen = Seen::default();
        seen.observe(&later, now);
        assert!(seen.forgotten(&rolled, &[id(4)], now).is_empty());
        assert!(seen.observe(&rolled, now).is_empty());
        // ...but a forget does not hide another host's rollback
        let mut seen = Seen::default();
        seen.observe(&later, now);
        let w = seen.forgotten(&rolled[..2], &[id(4)], now);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("host db1"), "{w:?}");
        // a snapshot dated in the future does not stand in for the newest
        let mut seen = Seen::default();
        seen.observe(&later, now);
        let forged = vec![
            (id(2), snap("web1", now - 200)),
            (id(7), snap("web1", now + 86_400)),
            (id(9), snap("db1", now - 100)),
        ];
        let w = seen.observe(&forged, now);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("host web1"), "{w:?}");
    }
}
