//! Repository statistics.

use std::collections::HashMap;

use coffer_format::{BlobId, BlobKind, NodeKind};
use serde::Serialize;

use crate::backend::FileKind;
use crate::error::Result;
use crate::repo::IndexedRepository;

/// Sizes of a repository.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepoStats {
    pub snapshots: u64,
    pub packs: u64,
    pub index_files: u64,
    /// Bytes in packs as stored (compressed, encrypted).
    pub stored_bytes: u64,
    /// Bytes of the packs' parity files (docs/FORMAT.md "Parity"), beside `stored_bytes`.
    pub parity_bytes: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    /// Plaintext bytes of all unique data blobs (after dedup, before compression).
    pub unique_bytes: u64,
    /// Bytes of all files in all snapshots, counted once per snapshot (before dedup).
    pub snapshot_bytes: u64,
    /// Files in all snapshots, counted once per snapshot.
    pub snapshot_files: u64,
}

impl RepoStats {
    /// Logical bytes per unique byte.
    pub fn dedup_ratio(&self) -> f64 {
        if self.unique_bytes == 0 {
            0.0
        } else {
            self.snapshot_bytes as f64 / self.unique_bytes as f64
        }
    }
    /// Unique plaintext bytes per stored byte.
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            0.0
        } else {
            self.unique_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// Gather statistics. Reads every distinct tree of every snapshot once.
pub fn repo_stats(repo: &IndexedRepository) -> Result<RepoStats> {
    let mut s = RepoStats::default();
    for p in repo.backend().list(FileKind::Pack)? {
        s.packs += 1;
        s.stored_bytes += p.size;
    }
    for p in repo.backend().list(FileKind::Parity)? {
        s.parity_bytes += p.size;
    }
    s.index_files = repo.index().index_files().len() as u64;
    for (_, loc) in repo.index().iter() {
        match loc.kind {
            BlobKind::Data => {
                s.data_blobs += 1;
                s.unique_bytes += loc.raw_length as u64;
            }
            BlobKind::Tree => s.tree_blobs += 1,
        }
    }
    let snaps = repo.list_snapshots()?;
    s.snapshots = snaps.len() as u64;
    let mut memo = HashMap::new();
    for (_, snap) in &snaps {
        let (files, bytes) = tree_totals(repo, snap.tree, &mut memo)?;
        s.snapshot_files += files;
        s.snapshot_bytes += bytes;
    }
    Ok(s)
}

/// Files and bytes below a tree; each distinct tree is read once (equal ids, equal content).
fn tree_totals(
    repo: &IndexedRepository,
    id: BlobId,
    memo: &mut HashMap<BlobId, (u64, u64)>,
) -> Result<(u64, u64)> {
    if let Some(t) = memo.get(&id) {
        return Ok(*t);
    }
    let mut t = (0, 0);
    for n in repo.load_tree(&id)?.nodes {
        match (n.kind, n.subtree) {
            (NodeKind::File, _) => {
                t.0 += 1;
                t.1 += n.size;
            }
            (NodeKind::Dir, Some(sub)) => {
                let (f, b) = tree_totals(repo, sub, memo)?;
                t.0 += f;
                t.1 += b;
            }
            _ => {}
        }
    }
    memo.insert(id, t);
    Ok(t)
}

/// 1536 → "1.5 KiB" (powers of 1024, one decimal).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
