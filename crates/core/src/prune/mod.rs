//! Prune: delete data no snapshot needs, safely while other clients back up.
//!
//! The protocol (docs/FORMAT.md "Prune" argues why no committed snapshot loses data):
//!
//! **Mark.** Under its own lease, prune computes the blobs every snapshot uses, picks the packs
//! to drop (no used blob) and to repack (mostly unused; their used blobs are copied, still
//! sealed, into new packs, except the used members of a bundle that also holds unused ones,
//! which are bundled again), and writes a *mark* listing those condemned packs. It then writes
//! the index without them (files of at most 65,536 entries, superseding every index file it
//! read), deletes those, and
//! completes the mark with the sessions of all live leases at that moment ("blockers").
//!
//! **Sweep.** A completed mark is acted on once it is older than the grace period and none of
//! its blockers is live any more (they finished, or crashed and expired): every backup that
//! may have deduplicated against a condemned pack has then either committed its snapshot or
//! given up. The used blobs are computed again from the snapshots of that moment; a condemned
//! pack holding a used blob not available elsewhere is rescued (listed in a new index file),
//! every other condemned pack is deleted, then the mark.
//!
//! Any listing or read error, anywhere, aborts the run before anything is deleted.
//!
//! Memory: every pack's listing is kept in a file ([`listing`]), and what prune notes per
//! blob is kept in arrays over the index table's rows ([`blobs`]); with the index's table past
//! its budget in a file too, prune's memory does not grow with the number of blobs beyond a
//! few bytes each.

mod blobs;
pub(crate) mod listing;

use std::collections::{HashMap, HashSet};

use coffer_format::{
    envelopes, BlobId, BlobKind, Id, IndexFile, IndexId, IndexPack, NodeKind, PackEntry, PackId, Place,
    SnapshotId,
};

use blobs::{row, BlobNumbers, BlobSet, Rows};
use listing::Listings;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::crypto::storage_id;
use crate::error::{Error, Result};
use crate::lease::{live_leases, now, Lease};
use crate::packer::{BlobPipeline, PackerStats, SealedCopy, SealedPacker};
use crate::progress::Progress;
use crate::repo::{IndexedRepository, Repository};

/// A mark file (`marks/<hash>`, JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mark {
    /// Unix time the packs were condemned.
    pub created: i64,
    pub packs: Vec<PackId>,
    /// Lease sessions live when the index was rewritten; `None` until the mark is complete.
    pub blockers: Option<Vec<String>>,
}

/// All marks with their file names.
pub fn list_marks(backend: &dyn Backend) -> Result<Vec<(String, Mark)>> {
    Ok(list_marks_timed(backend)?
        .into_iter()
        .map(|(name, m, _)| (name, m))
        .collect())
}

/// All marks with their file names and the storage's time of each file (when it was
/// completed: completing writes a new file).
fn list_marks_timed(backend: &dyn Backend) -> Result<Vec<(String, Mark, Option<i64>)>> {
    let files = crate::lease::read_all_consistent(backend, FileKind::Mark)?;
    let mut out = Vec::new();
    for (name, bytes, written) in files {
        if storage_id(&bytes).to_hex() != name {
            return Err(Error::integrity(
                format!("marks/{}", name),
                "content does not match its name",
            ));
        }
        let m: Mark = serde_json::from_slice(&bytes)
            .map_err(|e| Error::integrity(format!("marks/{}", name), format!("does not decode: {e}")))?;
        out.push((name, m, written));
    }
    Ok(out)
}

fn write_mark(backend: &dyn Backend, m: &Mark) -> Result<String> {
    let bytes = serde_json::to_vec(m).map_err(|e| Error::Invalid(e.to_string()))?;
    let name = storage_id(&bytes).to_hex();
    backend.write(FileKind::Mark, &name, &bytes)?;
    Ok(name)
}

/// Packs condemned by any mark.
pub fn condemned_packs(backend: &dyn Backend) -> Result<HashSet<PackId>> {
    Ok(list_marks(backend)?
        .into_iter()
        .flat_map(|(_, m)| m.packs)
        .collect())
}

/// What the snapshots use, and the index that was read to find out.
struct Usage {
    /// Every blob (data and tree) some snapshot references, over the rows of the repository's
    /// index as [`usage`] left it.
    used: BlobSet,
    snapshots: Vec<SnapshotId>,
    /// The index files read, and every pack they list (each pack once, with whether a vouched
    /// file lists it or it was verified here), and the condemned packs no file lists.
    index_files: Vec<IndexId>,
    listings: Listings,
    /// Packs verified whole here because only unvouched files listed them.
    vouched_now: Vec<PackId>,
}

/// List the snapshots, then read the index (once) and walk every snapshot's trees. Fails on
/// any unreadable snapshot or tree: prune must not decide from a partial picture. The
/// repository's in-memory index is replaced by the one read here. With `verify`, each pack
/// only unvouched index files list is read whole and verified first (its verified entries
/// replace what those files said): prune vouches for what it writes.
fn usage(
    repo: &mut IndexedRepository,
    verify: Option<(&dyn Progress, &HashMap<PackId, u64>)>,
) -> Result<Usage> {
    let snaps = repo.list_snapshots()?;
    // Snapshots are written after the index files that list their data: reading the index
    // after listing the snapshots finds everything they reference. A snapshot committed in a
    // race with a prune may still point into condemned packs that are listed nowhere yet, so
    // those packs' headers are added too (they exist until a sweep deletes them).
    let (index_files, mut listings) = read_index_files(repo)?;
    let mut vouched_now = Vec::new();
    // (`sizes`: the caller's listing of the packs in storage, not listed again here)
    if let Some((progress, sizes)) = verify {
        let unverified = |p: &PackId, why: String| {
            progress.warn(&format!(
                "pack {}: only index files no full key vouched for list it, and it does not verify; \
                 kept as it was, unvouched: {why}",
                p.short()
            ))
        };
        let unvouched: Vec<PackId> = listings.packs().filter(|(_, v)| !v).map(|(p, _)| p).collect();
        for p in unvouched {
            // (as for orphans: no backup writes a larger pack, and a header that does not open
            // spares reading the rest)
            match sizes.get(&p) {
                Some(&n) if n > coffer_format::MAX_PACK_SIZE => {
                    unverified(&p, format!("{n} bytes, larger than any pack"));
                    continue;
                }
                None => continue, // missing from storage: reported below, as for any pack
                Some(_) => {}
            }
            match repo.read_pack_header(&p) {
                Err(e) if e.category() == crate::Category::Integrity => {
                    unverified(&p, e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            match repo.verify_pack(&p) {
                Ok(entries) => {
                    listings.set_verified(&p, &entries)?;
                    vouched_now.push(p);
                }
                Err(e) if e.category() == crate::Category::Integrity => unverified(&p, e.to_string()),
                // a listed pack missing from storage is reported below, as for any pack
                Err(Error::Backend(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    for (_, m) in list_marks(&**repo.backend())? {
        for p in m.packs {
            if !listings.knows(&p) {
                match header_unless_garbage(repo, &p) {
                    Ok(Some(entries)) => listings.add_header(&p, &entries)?,
                    // (the sweep leaves garbage in place and says so)
                    Ok(None) => {}
                    Err(Error::Backend(e)) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // one bulk load: the listed packs in id order, then the condemned ones from their
    // headers (unvouched), whose blobs stay primary where a listed pack holds them too
    let mut index = repo.new_index();
    let mut unreadable = None;
    index.add_packs(listings.all().map_while(|r| match r {
        Ok(p) => Some(p),
        Err(e) => {
            unreadable = Some(e);
            None
        }
    }))?;
    if let Some(e) = unreadable {
        return Err(e);
    }
    *repo.index_mut() = index;
    let mut used = BlobSet::new(repo.index());
    for (id, s) in &snaps {
        collect_tree(repo, s.tree, &mut used)
            .map_err(|e| Error::Invalid(format!("snapshot {}: {e}", id.short())))?;
    }
    used.settle(repo.index());
    Ok(Usage {
        used,
        snapshots: snaps.into_iter().map(|(id, _)| id).collect(),
        index_files,
        listings,
        vouched_now,
    })
}

/// Read every index file: the files' ids and every pack's entries (see
/// [`Listings::add_listed`]: a pack a vouched file lists takes its entries from vouched files
/// only, and the listings of a pack are united), one file at a time.
fn read_index_files(repo: &Repository) -> Result<(Vec<IndexId>, Listings)> {
    let mut files = Vec::new();
    let mut listings = Listings::new(repo.spill_dir());
    for f in repo.backend().list(FileKind::Index)? {
        let (file, vouched) = repo.load_index_file_vouched(&f.name)?;
        files.push(IndexId(
            Id::from_hex(&f.name).map_err(|e| Error::format("index/", e))?,
        ));
        for p in &file.packs {
            listings.add_listed(p, vouched)?;
        }
    }
    listings.done_reading();
    tracing::debug!(
        target: "coffer_index",
        "prune: the listings of {} packs kept in {}",
        listings.len(),
        if listings.in_file() { "a file" } else { "memory" }
    );
    Ok((files, listings))
}

/// A pack's header, or `None` when what is stored under the pack's name does not open as one
/// (forged, or damaged past its header): garbage in the shape of a pack, which serves no
/// snapshot. Any other error (storage unreachable, the pack gone) is the caller's.
fn header_unless_garbage(repo: &IndexedRepository, p: &PackId) -> Result<Option<Vec<PackEntry>>> {
    match repo.read_pack_header(p) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if e.category() == crate::Category::Integrity => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where a used blob the index lists in several packs is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// In this pack, whose copy verified.
    In(PackId),
    /// In every pack that lists it: no copy verified, and prune does not guess.
    Everywhere,
}

/// For each used blob the index lists in more than one pack (not condemned): the first of
/// those packs whose copy opens and hashes to the blob's id, or [`Keep::Everywhere`] when none
/// does. A read that fails for another reason than the content (storage unreachable, an
/// object withheld) aborts prune, as every other read error does.
fn verified_copies(
    repo: &IndexedRepository,
    used: &BlobSet,
    condemned: &HashSet<PackId>,
    progress: &dyn Progress,
) -> Result<HashMap<BlobId, Keep>> {
    let index = repo.index();
    let mut out = HashMap::new();
    for id in index
        .with_alternatives()
        .filter(|id| used.contains(row(index, id)))
    {
        let mut candidates: Vec<_> = index
            .locations(id)
            .into_iter()
            .filter(|l| !condemned.contains(&l.pack))
            .collect();
        // pack order, as for every other blob: an honest duplicate keeps its usual place
        candidates.sort_by_key(|l| l.pack);
        if candidates.len() < 2 {
            continue;
        }
        let mut bad = Vec::new();
        let mut keep = Keep::Everywhere;
        for l in &candidates {
            match repo.read_blob_at(id, l.kind, l) {
                Ok(_) => {
                    keep = Keep::In(l.pack);
                    break;
                }
                Err(e) if e.category() == crate::Category::Integrity => {
                    bad.push(format!("pack {}: {e}", l.pack.short()))
                }
                Err(e) => return Err(e),
            }
        }
        out.insert(*id, keep);
        for b in bad {
            progress.warn(&format!(
                "blob {}: a listed copy does not verify and is not kept for it ({b})",
                id.short()
            ));
        }
    }
    Ok(out)
}

/// Take stock of the packs in storage before deduplicating against the index. A pack the
/// index lists but storage lacks serves no deduplication (its listing may be a replayed old
/// index file, vouched when it was written, whose packs prune has deleted since). Packs that
/// exist but are in no index (left by an interrupted backup) are added to the index, so their
/// data is not uploaded again, after reading each whole and verifying every blob in it (full
/// keys only). Condemned packs are never adopted. Returns how many packs were adopted.
pub fn adopt_orphans(repo: &mut IndexedRepository, progress: &dyn Progress) -> Result<usize> {
    let listed: HashSet<PackId> = repo.index().packs().collect();
    let mut orphans = Vec::new();
    let mut present = HashSet::new();
    for f in repo.backend().list(FileKind::Pack)? {
        let Ok(id) = Id::from_hex(&f.name) else { continue };
        present.insert(PackId(id));
        if !listed.contains(&PackId(id)) {
            orphans.push((PackId(id), f.size));
        }
    }
    repo.index_mut().unvouch_unless(|p| present.contains(p));
    if orphans.is_empty() {
        return Ok(0);
    }
    if !repo.key().can_read() {
        // Whoever can write one object can store a pack under its hash whose header was copied
        // from a real pack; only opening every blob tells it apart, and a write-only key
        // cannot. Its run uploads that data again instead.
        return Ok(0);
    }
    let condemned = condemned_packs(&**repo.backend())?;
    let mut adopted = Vec::new();
    for (p, size) in orphans.into_iter().filter(|(p, _)| !condemned.contains(p)) {
        // no backup writes a pack this large: never read into memory
        if size > coffer_format::MAX_PACK_SIZE {
            progress.warn(&format!(
                "pack {} is in no index and larger than any pack ({size} bytes), not adopted",
                p.short()
            ));
            continue;
        }
        // its header first (two small reads): garbage is passed over without reading it all
        if let Err(e) = repo.read_pack_header(&p) {
            progress.warn(&format!(
                "pack {} is in no index and its header does not open, not adopted: {e}",
                p.short()
            ));
            continue;
        }
        // then read whole and verified: a header proves nothing about the blobs next to it
        match repo.verify_pack(&p) {
            Ok(entries) => {
                // its writer may have died before making its name durable
                repo.backend().make_durable(FileKind::Pack, &p.to_hex())?;
                adopted.push(IndexPack { id: p, entries })
            }
            Err(e) => progress.warn(&format!(
                "pack {} is in no index and does not verify, not adopted: {e}",
                p.short()
            )),
        }
    }
    if adopted.is_empty() {
        return Ok(0);
    }
    repo.save_index_split(vec![], adopted.clone())?;
    for p in &adopted {
        repo.index_mut().add_pack(p, true);
    }
    Ok(adopted.len())
}

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack until at most this fraction of stored bytes is unused (restic's --max-unused).
    pub max_unused: f64,
    /// Condemned packs are deleted no sooner than this many seconds after being marked.
    pub grace_secs: i64,
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: 0.05,
            grace_secs: 0,
            dry_run: false,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// The clocks leases and marks were aged by: "storage" (the backend's file times, and
    /// the writers' claims against this machine's clock: dead only by both) or "local" (only
    /// the claims, for a backend that reports no file times).
    pub lease_clock: &'static str,
    pub snapshots: usize,
    pub packs: usize,
    pub blobs_used: usize,
    pub blobs_unused: usize,
    pub bytes_unused: u64,
    pub packs_condemned: usize,
    pub packs_repacked: usize,
    pub bytes_repacked: u64,
    /// Bytes of used blobs taken out of bundles that also held unused ones and bundled again.
    pub bytes_rebundled: u64,
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    /// Parity files removed with their packs, or left behind by packs deleted earlier.
    pub parity_deleted: usize,
    pub packs_rescued: usize,
    /// Marks left for a later prune, with the reason.
    pub deferred: Vec<String>,
    /// Packs in storage that no index lists (a backup in progress, or an interrupted one).
    pub packs_unindexed: usize,
    /// Condemned packs left in place because their retention lock (S3 Object Lock) is in
    /// force; a new mark keeps them for a prune after `locked_until`.
    pub packs_locked: usize,
    pub bytes_locked: u64,
    /// When the last of those locks ends (RFC 3339).
    pub locked_until: Option<String>,
    /// Files still in use whose retention lock was extended.
    pub locks_extended: usize,
    /// Lease files of leases dead for over a day (crashed clients'), removed.
    pub locks_removed: usize,
    /// Packs only unvouched index files listed (written by write-only keys) that prune read
    /// whole, verified, and now vouches for, so that every client may deduplicate against them.
    pub packs_vouched: usize,
    /// Such packs that did not verify: kept as they were, unvouched, each with a warning.
    pub packs_unverified: usize,
}

/// Run one prune: mark what is unused now, then sweep every mark that is safe to act on.
pub fn prune(repo: Repository, opts: &PruneOptions, progress: &dyn Progress) -> Result<PruneReport> {
    if repo.backend().wants_manifests() {
        // packs rewritten here would leave the server's manifests naming packs that are gone
        return Err(Error::Invalid(format!(
            "{}: a coffer server repository is pruned by the server (its retention policy); \
             run `coffer server retention` there",
            repo.backend().location()
        )));
    }
    let backend = repo.backend().clone();
    // the lease comes first; the index is read by each phase, after it lists the snapshots
    let mut repo = repo.leased_without_index("prune")?;
    let ours = repo.lease().map(|l| l.info().session).unwrap_or_default();
    let (live, clock) = live_leases(&*backend, repo.lease())?;
    if let Some(other) = live
        .into_iter()
        .find(|l| l.info.purpose == "prune" && l.info.session != ours)
    {
        return Err(Error::Invalid(format!(
            "another prune is running (lease {} refreshed {} s ago); try again later",
            other.info.session.get(..8).unwrap_or(&other.info.session),
            clock.age(other.written, other.claimed)
        )));
    }
    let mut report = PruneReport {
        lease_clock: if clock.storage_now.is_some() {
            "storage"
        } else {
            "local"
        },
        ..PruneReport::default()
    };
    mark(&mut repo, opts, progress, &mut report)?;
    if !opts.dry_run {
        sweep(&mut repo, opts, &ours, progress, &mut report)?;
        remove_orphan_parity(&*backend, progress, &mut report)?;
        report.locks_removed = crate::lease::remove_stale(&*backend, repo.lease())?;
        if backend.retention_secs().is_some() {
            report.locks_extended = extend_locks(&repo)?;
        }
    }
    Ok(report)
}

/// Remove parity files whose packs are gone (a prune or server retention stopped between
/// deleting a pack and its parity). Parity is listed before packs: a pack is written before its
/// parity, so a parity file listed first whose pack the later listing lacks has lost its pack
/// for good, never one a backup is writing now.
fn remove_orphan_parity(
    backend: &dyn Backend,
    progress: &dyn Progress,
    report: &mut PruneReport,
) -> Result<()> {
    let parity = backend.list(FileKind::Parity)?;
    if parity.is_empty() {
        return Ok(());
    }
    let packs: HashSet<String> = backend
        .list(FileKind::Pack)?
        .into_iter()
        .map(|f| f.name)
        .collect();
    for f in parity {
        if packs.contains(&f.name) {
            continue;
        }
        match backend.remove(FileKind::Parity, &f.name) {
            Ok(()) => report.parity_deleted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => progress.warn(&format!(
                "parity file without its pack {}: {e}",
                &f.name[..8.min(f.name.len())]
            )),
        }
    }
    Ok(())
}

/// Extend the retention lock of everything still in use: config, keys, snapshots and the
/// packs of the index this prune read (what backups added since is freshly locked) that no
/// mark condemns.
fn extend_locks(repo: &IndexedRepository) -> Result<usize> {
    let backend = repo.backend();
    let condemned = condemned_packs(&**backend)?;
    let packs: HashSet<String> = repo
        .index()
        .packs()
        .filter(|p| !condemned.contains(p))
        .map(|p| p.to_hex())
        .collect();
    let mut n = 0;
    for kind in [FileKind::Config, FileKind::Key, FileKind::Snapshot] {
        n += backend.extend_retention(kind, &|_| true)?;
    }
    n += backend.extend_retention(FileKind::Pack, &|name| packs.contains(name))?;
    Ok(n)
}

fn mark(
    repo: &mut IndexedRepository,
    opts: &PruneOptions,
    progress: &dyn Progress,
    report: &mut PruneReport,
) -> Result<()> {
    let backend = repo.backend().clone();
    let already = condemned_packs(&*backend)?;
    let list_packs = || -> Result<HashMap<PackId, u64>> {
        Ok(backend
            .list(FileKind::Pack)?
            .into_iter()
            .filter_map(|f| Id::from_hex(&f.name).ok().map(|id| (PackId(id), f.size)))
            .collect())
    };
    let mut stored = list_packs()?;
    let usage_now = usage(repo, Some((progress, &stored)))?;
    // A backup running beside this prune may have written packs, and an index file listing
    // them, between the listing above and the index read: list again before calling a listed
    // pack missing. A pack is durable before any index file lists it, so the second listing,
    // made after the index was read, holds every pack the index lists unless one is really
    // gone. Only packs the index lists are taken in: one written since and listed nowhere yet
    // is the running backup's, not an orphan. (Such a pack's blobs were not verified above
    // when only unvouched index files list it: it stays unvouched.)
    if usage_now
        .listings
        .packs()
        .any(|(p, _)| !stored.contains_key(&p) && !already.contains(&p))
    {
        for (id, size) in list_packs()? {
            if usage_now.listings.is_listed(&id) {
                stored.entry(id).or_insert(size);
            }
        }
    }
    let Usage {
        used,
        snapshots: snap_ids,
        index_files,
        mut listings,
        vouched_now,
    } = usage_now;
    // the packs no vouched index file lists and that did not verify here
    let unvouched: HashSet<PackId> = listings.packs().filter(|(_, v)| !v).map(|(p, _)| p).collect();
    report.packs_vouched = vouched_now.len();
    report.packs_unverified = unvouched.len();
    if snap_ids.is_empty() && !listings.is_empty() {
        return Err(Error::Invalid(
            "the snapshot listing is empty but the index lists data; refusing to condemn everything \
             (if every snapshot was really forgotten, delete the repository instead; prune deleted nothing)"
                .into(),
        ));
    }
    report.snapshots = snap_ids.len();
    let snap_ids: HashSet<SnapshotId> = snap_ids.into_iter().collect();
    report.packs = stored.len();
    report.packs_unindexed = stored
        .keys()
        .filter(|p| !listings.is_listed(p) && !already.contains(p))
        .count();

    // A blob counts as used in one pack only; other copies are unused. The pack each used
    // blob is kept in: the first one (in pack order) that holds it, except for a blob listed
    // in several packs, which is kept where a copy verifies (an index file or pack header is
    // no proof: a forged pack or a lying index file must never make prune drop the real one).
    let verified = verified_copies(repo, &used, &already, progress)?;
    // (by the pack's place in `order`, not its 32-byte id, in an array over the index's rows)
    let order: Vec<PackId> = listings.packs().map(|(p, _)| p).collect();
    let index = repo.index();
    let mut canonical = BlobNumbers::new(index);
    let mut drop = Vec::new();
    let mut partial: Vec<(PackId, u64, u64)> = Vec::new(); // pack, used bytes, unused bytes
    let (mut total, mut dropped) = (0u64, 0u64);
    // the packs in order, a batch of blobs' worth at a time, their blobs' rows looked up
    // together
    let mut next = 0;
    let mut group: Vec<(u32, IndexPack)> = Vec::new();
    while next < order.len() {
        group.clear();
        let mut blobs = 0;
        while next < order.len() && blobs < blobs::BATCH {
            let (at, id) = (next as u32, order[next]);
            next += 1;
            if already.contains(&id) {
                continue;
            }
            if !stored.contains_key(&id) {
                return Err(Error::integrity(
                    format!("pack {}", id.short()),
                    "listed in the index but missing from storage; run `coffer repair index` (prune deleted nothing)",
                ));
            }
            let p = listings.pack(&id)?;
            blobs += p.entries.len();
            group.push((at, p));
        }
        let rows = Rows::of(
            index,
            group.iter().flat_map(|(_, p)| p.entries.iter().map(|e| e.id)),
        );
        for (at, p) in &group {
            let (at, id) = (*at, &p.id);
            let (mut u, mut x) = (0u64, 0u64);
            // a bundle's envelope counts as used in the share of its bytes its used members hold
            for (e, members) in envelopes(&p.entries) {
                let (mut any, mut raw) = (false, 0u64);
                for b in blobs_of(e, members) {
                    let r = rows.row(&b.id);
                    let everywhere = verified.get(&b.id) == Some(&Keep::Everywhere);
                    if everywhere && used.contains(r) {
                        // no copy verified: every pack that lists it keeps it
                        canonical.set_if_none(r, at);
                        (any, raw) = (true, raw + b.raw_length as u64);
                        report.blobs_used += 1;
                    } else if used.contains(r)
                        && canonical.get(r).is_none()
                        && verified.get(&b.id).is_none_or(|v| *v == Keep::In(*id))
                    {
                        canonical.set_if_none(r, at);
                        (any, raw) = (true, raw + b.raw_length as u64);
                        report.blobs_used += 1;
                    } else {
                        report.blobs_unused += 1;
                    }
                }
                // (at least a byte: a used member's share of a bundle that compresses to almost
                // nothing rounds to 0, and a pack with nothing used would be dropped)
                let kept = match (any, members.is_empty()) {
                    (false, _) => 0,
                    (true, true) => e.length as u64,
                    (true, false) => (e.length as u64 * raw / (e.raw_length as u64).max(1))
                        .max(1)
                        .min(e.length as u64),
                };
                u += kept;
                x += e.length as u64 - kept;
            }
            total += u + x;
            report.bytes_unused += x;
            if u == 0 {
                drop.push(*id);
                dropped += x;
            } else if x > 0 && !unvouched.contains(id) {
                // (a pack that did not verify is kept whole: copying its envelopes into a new pack
                // would vouch for what nobody verified)
                partial.push((*id, u, x));
            }
        }
    }
    // Repack the emptiest packs until the unused share is at most max_unused.
    let mut unused_left: u64 = partial.iter().map(|p| p.2).sum();
    let kept_total = total - dropped;
    partial.sort_by(|a, b| (b.2 * a.1.max(1)).cmp(&(a.2 * b.1.max(1))).then(a.0.cmp(&b.0)));
    let mut repack = Vec::new();
    for (id, _, x) in partial {
        if unused_left as f64 <= opts.max_unused * kept_total as f64 {
            break;
        }
        unused_left -= x;
        repack.push(id);
    }
    report.packs_condemned = drop.len() + repack.len();
    report.packs_repacked = repack.len();
    if opts.dry_run {
        return Ok(());
    }
    if drop.is_empty() && repack.is_empty() {
        // nothing to condemn, but what was verified is written down, vouched
        let vouched: Vec<IndexPack> = vouched_now
            .iter()
            .map(|p| listings.pack(p))
            .collect::<Result<_>>()?;
        if !vouched.is_empty() {
            repo.save_index_split(vec![], vouched)?;
        }
        return Ok(());
    }

    // Copy the used blobs of packs being repacked into new packs.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // (the new packs' listings go to the listing file as they are written: a large repack
    // holds one pack of each kind in memory, not every copied envelope)
    let rebundled = {
        let r: &IndexedRepository = repo;
        let keep = |pack: &PackId, b: &PackEntry, b_row: blobs::Row<'_>| {
            used.contains(b_row)
                && (canonical.get(b_row).map(|at| &order[at as usize]) == Some(pack)
                    || verified.get(&b.id) == Some(&Keep::Everywhere))
        };
        let mut written = |p: IndexPack| listings.add_new(&p);
        std::thread::scope(|s| -> Result<PackerStats> {
            let pipe = BlobPipeline::start(s, r, threads, r.compression());
            let mut sealed = SealedPacker::new(r, &mut written);
            let copied = used_of_repacked(r, &repack, &keep, &pipe, &mut sealed, report, progress)
                .and_then(|()| sealed.finish());
            // a stopped pipeline fails the copying too: its own error says why
            let stats = pipe.finish()?;
            copied?;
            Ok(stats)
        })?
    };
    for p in &rebundled.packs {
        listings.add_new(p)?;
    }
    // the rebundling pipeline wrote index files for its packs; the new index supersedes them
    let index_files: Vec<IndexId> = index_files.into_iter().chain(rebundled.index_files).collect();

    let condemned: Vec<PackId> = drop.iter().chain(repack.iter()).copied().collect();
    let m = Mark {
        created: now(),
        packs: condemned.clone(),
        blockers: None,
    };
    let first = write_mark(&*backend, &m)?;
    let gone: HashSet<PackId> = condemned.into_iter().collect();
    // what did not verify is passed on as it was listed, unvouched, before the vouched file
    // that supersedes every file read (a crash between the two loses no listing)
    let unverified: Vec<IndexPack> = order
        .iter()
        .filter(|p| !gone.contains(p) && unvouched.contains(p))
        .map(|p| listings.pack(p))
        .collect::<Result<_>>()?;
    if !unverified.is_empty() {
        repo.save_index_unvouched(&IndexFile {
            supersedes: vec![],
            packs: unverified,
        })?;
    }
    // the rest, and the new packs, read back one pack at a time
    let keep = order
        .iter()
        .filter(|p| !gone.contains(p) && !unvouched.contains(p))
        .map(|p| listings.pack(p))
        .chain(listings.new_packs());
    repo.save_index_streamed(index_files.clone(), keep)?;
    for f in &index_files {
        match backend.remove(FileKind::Index, &f.to_hex()) {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
    }
    complete_mark(&*backend, repo.lease(), &first, m)?;

    // Snapshots committed since the used blobs were computed may use condemned packs:
    // list those packs again right away, so the snapshots stay restorable.
    let late: Vec<SnapshotId> = repo
        .list_snapshots()?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !snap_ids.contains(id))
        .collect();
    if !late.is_empty() {
        // read what was added meanwhile, keeping the condemned packs' entries readable
        for f in backend.list(FileKind::Index)? {
            if let Ok(file) = repo.load_index_file(&f.name) {
                for p in &file.packs {
                    repo.index_mut().add_pack(p, false);
                }
            }
        }
        let mut late_used = BlobSet::new(repo.index());
        for id in &late {
            let s = repo.load_snapshot(id)?;
            collect_tree(repo, s.tree, &mut late_used)?;
        }
        late_used.settle(repo.index());
        let mut relist = Vec::new();
        for p in &gone {
            let Some(entries) = header_unless_garbage(repo, p)? else {
                continue;
            };
            if entries
                .iter()
                .any(|e| late_used.contains(row(repo.index(), &e.id)))
            {
                relist.push(IndexPack { id: *p, entries });
            }
        }
        if !relist.is_empty() {
            // from headers, unverified: listed again, not vouched for
            repo.save_index_unvouched(&IndexFile {
                supersedes: vec![],
                packs: relist,
            })?;
        }
    }
    Ok(())
}

/// The used blobs of the packs being repacked (`keep`: used, and kept in that pack; given
/// each blob's row). An
/// envelope whose blobs are all used goes to `sealed` to be copied still sealed; the used members
/// of a bundle that also holds unused ones go to `pipe`, to be bundled again (decoded,
/// compressed and sealed anew), so that the unused ones are freed.
fn used_of_repacked(
    repo: &IndexedRepository,
    repack: &[PackId],
    keep: &dyn Fn(&PackId, &PackEntry, blobs::Row<'_>) -> bool,
    pipe: &BlobPipeline<'_>,
    sealed: &mut SealedPacker<'_>,
    report: &mut PruneReport,
    progress: &dyn Progress,
) -> Result<()> {
    for id in repack {
        let bytes = repo.backend().read(FileKind::Pack, &id.to_hex())?;
        let entries = repo.verify_pack_bytes(id, &bytes)?; // a damaged pack aborts: repair first
        let rows = Rows::of(repo.index(), entries.iter().map(|e| e.id));
        for (e, members) in envelopes(&entries) {
            let blobs = blobs_of(e, members);
            let used: Vec<&PackEntry> = blobs.iter().filter(|b| keep(id, b, rows.row(&b.id))).collect();
            let envelope = &bytes[e.offset as usize..e.end() as usize];
            if used.len() == blobs.len() {
                report.bytes_repacked += e.length as u64;
                sealed.push(SealedCopy {
                    kind: e.kind,
                    id: e.id,
                    raw_len: e.raw_length,
                    members: members.iter().map(|m| (m.id, m.length)).collect(),
                    bytes: envelope.to_vec(),
                })?;
            } else if !used.is_empty() {
                let what = format!("bundle {} in pack {}", e.id.short(), id.short());
                let bundle = repo.open_bundle(envelope, &what)?;
                for m in used {
                    let data = repo.member(&bundle, &m.id, m.offset, m.length, &what)?;
                    report.bytes_rebundled += data.len() as u64;
                    pipe.submit(BlobKind::Data, m.id, data)?;
                }
            }
        }
        progress.files(1);
    }
    Ok(())
}

/// The blobs an envelope holds (from [`envelopes`]): a bundle's members, or the blob itself.
fn blobs_of<'a>(envelope: &'a PackEntry, members: &'a [PackEntry]) -> &'a [PackEntry] {
    if members.is_empty() {
        std::slice::from_ref(envelope)
    } else {
        members
    }
}

/// Note every blob of the tree `root` in `used` (made for the repository's index as it is):
/// the trees at once (each is walked once), their files' blobs for [`BlobSet::settle`].
fn collect_tree(repo: &IndexedRepository, root: BlobId, used: &mut BlobSet) -> Result<()> {
    let index = repo.index();
    let mut stack = vec![root];
    while let Some(t) = stack.pop() {
        if !used.insert(row(index, &t)) {
            continue;
        }
        for n in repo.load_tree(&t)?.nodes {
            for c in &n.content {
                used.note(index, *c);
            }
            if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
                stack.push(sub);
            }
        }
    }
    Ok(())
}

/// Record the live leases as the mark's blockers (replacing the incomplete mark file), judged
/// by the storage's clock where it tells file times (`ours`: this prune's lease).
fn complete_mark(backend: &dyn Backend, ours: Option<&Lease>, name: &str, mut m: Mark) -> Result<()> {
    m.blockers = Some(
        live_leases(backend, ours)?
            .0
            .into_iter()
            .filter(|l| l.info.purpose != "prune")
            .map(|l| l.info.session)
            .collect(),
    );
    write_mark(backend, &m)?;
    backend.remove(FileKind::Mark, name)?;
    Ok(())
}

fn sweep(
    repo: &mut IndexedRepository,
    opts: &PruneOptions,
    ours: &str,
    progress: &dyn Progress,
    report: &mut PruneReport,
) -> Result<()> {
    let backend = repo.backend().clone();
    let marks = list_marks_timed(&*backend)?;
    if marks.is_empty() {
        return Ok(());
    }
    let (live, clock) = live_leases(&*backend, repo.lease())?;
    let live: HashSet<String> = live
        .into_iter()
        .map(|l| l.info.session)
        .filter(|s| s != ours)
        .collect();
    let mut ready = Vec::new();
    for (name, m, written) in marks {
        match &m.blockers {
            None => {
                // left incomplete by an interrupted prune: complete it now, act on it later
                complete_mark(&*backend, repo.lease(), &name, m.clone())?;
                report.deferred.push(format!(
                    "mark {}: completed now, swept by a later prune",
                    &name[..8]
                ));
            }
            Some(_) if clock.age(written, Some(m.created)) < opts.grace_secs => {
                report
                    .deferred
                    .push(format!("mark {}: within the grace period", &name[..8]));
            }
            Some(b) if b.iter().any(|s| live.contains(s)) => {
                report.deferred.push(format!(
                    "mark {}: a backup that started before it is still running",
                    &name[..8]
                ));
            }
            Some(_) => ready.push((name, m)),
        }
    }
    if ready.is_empty() {
        return Ok(());
    }
    // What is used and where it is available now, from a fresh reading of the repository.
    let Usage {
        used,
        snapshots: snaps,
        listings,
        ..
    } = usage(repo, None)?;
    if snaps.is_empty() {
        return Err(Error::Invalid(
            "the snapshot listing came back empty; prune deleted nothing".into(),
        ));
    }
    let condemned: HashSet<PackId> = ready.iter().flat_map(|(_, m)| m.packs.iter().copied()).collect();
    let index = repo.index();
    let mut available = BlobSet::new(index);
    for (p, _) in listings.packs().filter(|(p, _)| !condemned.contains(p)) {
        for e in listings.pack(&p)?.entries {
            if e.place != Place::Bundle {
                available.note(index, e.id);
            }
        }
    }
    available.settle(index);
    let stored: HashMap<PackId, u64> = backend
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).ok().map(|id| (PackId(id), f.size)))
        .collect();
    let mut rescue = Vec::new();
    let mut delete = Vec::new();
    for p in &condemned {
        let Some(size) = stored.get(p) else { continue };
        if listings.is_listed(p) {
            rescue.push(None); // listed again (adopted or re-indexed): keep
            continue;
        }
        // Garbage no index lists: not ours to delete on a guess. It stays, unindexed, for
        // `check` to report, and the mark lets go of it (it is not counted as rescued).
        // (the header [`usage`] read, or read now if that found none)
        let entries = match listings.entries(p)? {
            Some(entries) => Some(entries),
            None => header_unless_garbage(repo, p)?,
        };
        let Some(entries) = entries else {
            progress.warn(&format!(
                "condemned pack {} left in place: its header does not open",
                p.short()
            ));
            continue;
        };
        let rows = Rows::of(index, entries.iter().map(|e| e.id));
        if entries.iter().any(|e| {
            let r = rows.row(&e.id);
            used.contains(r) && !available.contains(r)
        }) {
            rescue.push(Some(IndexPack { id: *p, entries }));
        } else {
            delete.push((*p, *size));
        }
    }
    report.packs_rescued = rescue.len();
    let rescued: Vec<IndexPack> = rescue.into_iter().flatten().collect();
    if !rescued.is_empty() {
        // from headers, unverified: listed again, not vouched for (the next prune verifies)
        repo.save_index_unvouched(&IndexFile {
            supersedes: vec![],
            packs: rescued,
        })?;
    }
    let mut locked = Vec::new();
    for (p, size) in delete {
        match backend.remove(FileKind::Pack, &p.to_hex()) {
            Err(e) if e.locked_until().is_some() => {
                // still under its retention lock: left alone, kept condemned for later
                let until = e.locked_until().unwrap_or_default().to_string();
                if report.locked_until.as_ref().is_none_or(|u| *u < until) {
                    report.locked_until = Some(until);
                }
                report.packs_locked += 1;
                report.bytes_locked += size;
                locked.push(p);
                continue;
            }
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
        report.packs_deleted += 1;
        report.bytes_deleted += size;
        // its parity after it (a crash in between leaves an orphan the next prune removes)
        match backend.remove(FileKind::Parity, &p.to_hex()) {
            Ok(()) => report.parity_deleted += 1,
            Err(e) if e.is_not_found() => {}
            // an orphan the next prune removes: not worth stopping this one
            Err(e) => progress.warn(&format!("parity of deleted pack {}: {e}", p.short())),
        }
        progress.files(1);
    }
    let mut kept_mark = None;
    locked.sort();
    if !locked.is_empty() {
        // a complete mark without blockers, as old as the oldest swept: the next prune after
        // the locks end deletes these packs (or rescues them if a snapshot uses them again)
        // (it may be one of the ready marks itself, when nothing in it could go yet)
        kept_mark = Some(write_mark(
            &*backend,
            &Mark {
                created: ready.iter().map(|(_, m)| m.created).min().unwrap_or_else(now),
                packs: locked,
                blockers: Some(Vec::new()),
            },
        )?);
    }
    for (name, _) in ready {
        if kept_mark.as_ref() != Some(&name) {
            backend.remove(FileKind::Mark, &name)?;
        }
    }
    Ok(())
}

/// Before a backup commits: if a prune condemned packs this run deduplicated against (it read
/// the index before the prune rewrote it), list those packs in a new index file so the
/// snapshot never points at unindexed data. The run's lease keeps the sweep from deleting
/// them until the snapshot is written; the sweep then sees them listed and keeps them.
pub fn relist_condemned(repo: &IndexedRepository, referenced: &HashSet<PackId>) -> Result<usize> {
    let condemned = condemned_packs(&**repo.backend())?;
    let mut packs = Vec::new();
    for p in referenced.intersection(&condemned) {
        // a location that was never a real pack (forged, condemned since) holds no copy this
        // snapshot can use, and must not stop the backup
        let Some(entries) = header_unless_garbage(repo, p)? else {
            continue;
        };
        packs.push(IndexPack { id: *p, entries });
    }
    if !packs.is_empty() {
        // from headers, unverified: listed again, not vouched for
        repo.save_index_unvouched(&IndexFile {
            supersedes: vec![],
            packs: packs.clone(),
        })?;
    }
    Ok(packs.len())
}
