//! `coffer copy`: snapshots from one repository into another, whose keys may differ — the
//! "second copy at another provider".
//!
//! Every tree of a copied snapshot is read from the source and written again with the
//! destination's blob ids (keyed by the destination's id key), so that the copy is an
//! ordinary snapshot of the destination. Data blobs the destination has already are not
//! stored again; when both repositories share their keys (ids are equal), such blobs are not
//! even read from the source. Trees are always walked to the leaves, so a blob that an
//! interrupted run left in the destination never stands in for data that is missing.
//!
//! The copy records `original` (the first snapshot's id) in the new snapshot; a snapshot whose
//! original is in the destination already is skipped, so running copy again moves nothing.
//! An interrupted copy leaves complete, indexed packs that the next run deduplicates against.

use std::collections::{HashMap, HashSet};

use coffer_format::{BlobId, BlobKind, PackId, Snapshot, SnapshotId, Tree};
use serde::Serialize;

use crate::error::Result;
use crate::packer::BlobPipeline;
use crate::progress::Progress;
use crate::repo::IndexedRepository;

/// What a copy did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    /// (source id, new id in the destination)
    pub copied: Vec<(SnapshotId, SnapshotId)>,
    /// Source snapshots the destination holds already.
    pub skipped: Vec<SnapshotId>,
    pub blobs_read: u64,
    pub blobs_new: u64,
    pub bytes_new_raw: u64,
    pub bytes_stored: u64,
}

/// Copy `wanted` (source snapshots) from `src` into `dst`.
pub fn copy_snapshots(
    src: &IndexedRepository,
    dst: &mut IndexedRepository,
    wanted: &[(SnapshotId, Snapshot)],
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    // small blobs of a remote source come through shared pack windows
    let reader = crate::window::WindowReader::new(src);
    // as a backup does: a lease before the index is read again, then adopt the complete
    // packs an interrupted run left unindexed (that is what makes copy resumable)
    dst.ensure_lease("backup")?;
    let adopted = crate::prune::adopt_orphans(dst, progress)?;
    if adopted > 0 {
        progress.note(&format!(
            "{adopted} packs in no index (an interrupted or concurrent run's) were verified and added to the index"
        ));
    }
    let (existing, unreadable) = dst.list_snapshots_readable()?;
    for w in unreadable {
        progress.warn(&w);
    }
    let have: HashSet<SnapshotId> = existing.iter().map(|(id, s)| s.original.unwrap_or(*id)).collect();
    let probe = b"coffer copy: do both repositories id blobs alike?";
    let same_ids = src.key().blob_id(probe) == dst.key().blob_id(probe);
    // source blob id -> destination blob id, across all snapshots of this run
    let mut memo: HashMap<BlobId, BlobId> = HashMap::new();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (sid, snap) in wanted {
        let original = snap.original.unwrap_or(*sid);
        if have.contains(&original) {
            report.skipped.push(*sid);
            continue;
        }
        let mut referenced: HashSet<PackId> = HashSet::new();
        let d: &IndexedRepository = dst;
        let (root, stats) = std::thread::scope(|s| -> Result<_> {
            let pipe = BlobPipeline::start(s, d, workers, d.compression());
            let mut c = Copier {
                src,
                reader: &reader,
                dst: d,
                pipe: &pipe,
                memo: &mut memo,
                session: HashSet::new(),
                referenced: &mut referenced,
                same_ids,
                report: &mut report,
                progress,
            };
            let root = c.tree(snap.tree);
            let stats = pipe.finish();
            Ok((root?, stats?))
        })?;
        report.bytes_stored += stats.bytes_stored;
        for p in &stats.packs {
            dst.index_mut().add_pack(p, true);
            referenced.insert(p.id);
        }
        let mut copy = snap.clone();
        copy.tree = root;
        copy.original = Some(original);
        copy.parent = None;
        // written into the destination by the destination's key
        copy.key = Some(dst.key_id());
        copy.sealed_by_write_only = false;
        if let Some(lease) = dst.lease() {
            lease.ensure_held()?;
        }
        crate::prune::relist_condemned(dst, &referenced)?;
        let (new_id, _) = dst.save_snapshot_needing(&copy, referenced)?;
        report.copied.push((*sid, new_id));
    }
    Ok(report)
}

struct Copier<'a, 'p> {
    src: &'a IndexedRepository,
    reader: &'a crate::window::WindowReader<'a>,
    dst: &'a IndexedRepository,
    pipe: &'a BlobPipeline<'p>,
    memo: &'a mut HashMap<BlobId, BlobId>,
    /// Destination ids submitted in this snapshot's pipeline (not in the index yet).
    session: HashSet<BlobId>,
    referenced: &'a mut HashSet<PackId>,
    same_ids: bool,
    report: &'a mut CopyReport,
    progress: &'a dyn Progress,
}

impl Copier<'_, '_> {
    /// Record the destination pack of a blob the destination holds.
    fn uses(&mut self, id: &BlobId) -> bool {
        let index = self.dst.index();
        // only a vouched copy is reused (see `Index::vouched`)
        match index.get(id).filter(|_| index.vouched(id)) {
            Some(loc) => {
                self.referenced.insert(loc.pack);
                // every copy: the primary one may not verify (a server keeps only named packs)
                if index.has_alternatives() {
                    self.referenced.extend(index.locations(id).iter().map(|l| l.pack));
                }
                true
            }
            None => self.session.contains(id),
        }
    }

    /// Store `plain` in the destination unless it is there; returns its destination id.
    fn put(&mut self, kind: BlobKind, plain: Vec<u8>) -> Result<BlobId> {
        let id = self.dst.key().blob_id(&plain);
        if !self.uses(&id) {
            self.session.insert(id);
            self.report.blobs_new += 1;
            self.report.bytes_new_raw += plain.len() as u64;
            self.pipe.submit(kind, id, plain)?;
        }
        Ok(id)
    }

    fn data(&mut self, src_id: BlobId) -> Result<BlobId> {
        if let Some(d) = self.memo.get(&src_id).copied() {
            if self.uses(&d) {
                return Ok(d);
            }
        }
        if self.same_ids && self.uses(&src_id) {
            self.memo.insert(src_id, src_id);
            return Ok(src_id);
        }
        let plain = self.reader.read_data(&src_id)?;
        self.report.blobs_read += 1;
        self.progress.bytes(plain.len() as u64);
        let d = self.put(BlobKind::Data, plain)?;
        self.memo.insert(src_id, d);
        Ok(d)
    }

    fn tree(&mut self, src_id: BlobId) -> Result<BlobId> {
        if let Some(d) = self.memo.get(&src_id).copied() {
            // mapped in this run, children included
            if self.uses(&d) {
                return Ok(d);
            }
        }
        let mut t: Tree = self.src.load_tree(&src_id)?;
        self.report.blobs_read += 1;
        for node in &mut t.nodes {
            let content = std::mem::take(&mut node.content);
            node.content = content
                .into_iter()
                .map(|id| self.data(id))
                .collect::<Result<_>>()?;
            if let Some(sub) = node.subtree {
                node.subtree = Some(self.tree(sub)?);
            }
        }
        let d = self.put(BlobKind::Tree, t.encode())?;
        self.memo.insert(src_id, d);
        Ok(d)
    }
}
