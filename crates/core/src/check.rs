//! `check`: is every snapshot restorable, and is the stored data intact?
//!
//! Structure (always): every index file decodes; every pack the index lists exists and is
//! large enough for its entries; every snapshot decodes; every tree of every snapshot is
//! indexed and decodes; every chunk a file uses is indexed. Data (`--read-data`, or a subset):
//! each selected pack is read whole and verified (hash = name, header, every blob opens and
//! hashes to its id). Damage is traced to the snapshots and files it affects.
//!
//! Coverage: the time each pack was last verified is kept in a local cache, and a percentage
//! subset picks the packs verified longest ago first, so successive runs cover everything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use coffer_format::{BlobId, Id, NodeKind, PackId, SnapshotId};
use serde::Serialize;

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::lease::now;
use crate::progress::Progress;
use crate::prune::condemned_packs;
use crate::repo::Repository;
use crate::walk::join;

/// Which packs to read in full.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// Group n (1-based) of m, by pack id (restic's `n/m`).
    Group(u32, u32),
    /// This fraction of packs, least recently verified first.
    Fraction(f64),
}

impl std::str::FromStr for ReadData {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "--read-data-subset {s:?}: use N/M (e.g. 1/7) or P% (e.g. 10%)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&v) || v == 0.0 {
                return Err(bad());
            }
            return Ok(ReadData::Fraction(v / 100.0));
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if m == 0 || n == 0 || n > m {
            return Err(bad());
        }
        Ok(ReadData::Group(n, m))
    }
}

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub read_data: Option<ReadData>,
    /// Where to remember verification times (per repository); None: nothing remembered.
    pub cache_dir: Option<PathBuf>,
}

/// A snapshot hit by damage, with the affected paths.
#[derive(Clone, Debug, Serialize)]
pub struct Affected {
    pub snapshot: String,
    pub paths: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub snapshots: usize,
    pub trees: usize,
    pub packs: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    /// Damaged or missing objects by name.
    pub damaged: Vec<String>,
    /// Damaged packs whose parity rebuilds them (their blobs still read): `repair packs`
    /// writes them back.
    pub repairable: Vec<String>,
    /// Packs without a parity file, and packs whose parity file is damaged or stale.
    pub parity_missing: usize,
    pub parity_damaged: Vec<String>,
    pub affected: Vec<Affected>,
    /// Share of current packs ever verified (with a cache), and the oldest verification age.
    pub coverage: Option<f64>,
    pub oldest_verification_secs: Option<i64>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

fn cache_file(dir: &std::path::Path, repo: &Repository) -> PathBuf {
    dir.join(repo.config().id.to_hex()).join("verified.json")
}

fn load_verified(path: &Option<PathBuf>) -> BTreeMap<String, i64> {
    path.as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_verified(path: &Option<PathBuf>, v: &BTreeMap<String, i64>) -> Result<()> {
    let Some(p) = path else { return Ok(()) };
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let tmp = p.with_extension("tmp");
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| Error::io(p, e))
}

pub fn check(repo: Repository, opts: &CheckOptions, progress: &dyn Progress) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let backend = repo.backend().clone();
    // ---- snapshots first: each is written after the index files listing its data, so the
    // index read below covers every snapshot listed here, even with backups running
    let mut snaps = Vec::new();
    for f in backend.list(FileKind::Snapshot)? {
        let Ok(id) = Id::from_hex(&f.name) else { continue };
        let id = SnapshotId(id);
        match repo.load_snapshot(&id) {
            Ok(s) => snaps.push((id, s)),
            Err(e) => {
                r.errors.push(format!("snapshot {}: {e}", id.short()));
                r.damaged.push(format!("snapshots/{}", f.name));
            }
        }
    }
    r.snapshots = snaps.len();
    // ---- storage listing and index
    let stored: HashMap<PackId, u64> = backend
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).ok().map(|id| (PackId(id), f.size)))
        .collect();
    r.packs = stored.len();
    let stored_parity: HashMap<PackId, u64> = backend
        .list(FileKind::Parity)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).ok().map(|id| (PackId(id), f.size)))
        .collect();
    if repo.config().parity > 0 {
        r.parity_missing = stored.keys().filter(|p| !stored_parity.contains_key(p)).count();
        if r.parity_missing > 0 {
            r.warnings.push(format!(
                "{} packs have no parity file (written before parity was on, or a backup stopped between a pack and its parity): `coffer repair packs` writes them",
                r.parity_missing
            ));
        }
    }
    let orphans = stored_parity.keys().filter(|p| !stored.contains_key(p)).count();
    if orphans > 0 {
        r.warnings.push(format!(
            "{orphans} parity files belong to no pack (their packs were deleted; the next prune removes them)"
        ));
    }
    // key files and config: names must match content, and each must decode
    for f in backend.list(FileKind::Key)? {
        let bytes = backend.read(FileKind::Key, &f.name)?;
        let ok = crate::crypto::storage_id(&bytes).to_hex() == f.name
            && coffer_format::KeyFile::decode(&bytes).is_ok();
        if !ok {
            r.errors.push(format!(
                "key {}: damaged (content does not match its name, or does not decode)",
                f.name
            ));
            r.damaged.push(format!("keys/{}", f.name));
        }
    }
    let condemned = condemned_packs(&*backend)?;
    // Read each index file once, one at a time: the index is built from them (damaged ones
    // reported and left out, so the rest of the check still runs), and each pack's first
    // listing is summed up here (where its envelopes end, how many entries) with its ids
    // written to a file (`spill::Log`), read back for the packs that need them (missing ones,
    // packs read whole): nothing here keeps every entry in memory.
    let mut listed: HashMap<PackId, Listed> = HashMap::new();
    let mut index = repo.new_index();
    // A coffer server removes packs by its own retention and cannot edit the encrypted index
    // files that list them: there an absent pack is expected, and only a snapshot that needs
    // one of its blobs is damaged (the tree walk below finds those).
    let server_retention = backend.wants_manifests();
    let mut removed_by_server: HashSet<PackId> = HashSet::new();
    let index_files = backend.list(FileKind::Index)?;
    let mut unreadable = Vec::new();
    let mut listings = crate::spill::Log::new(repo.spill_dir(), "check's listing of the packs");
    let reads_data = !matches!(opts.read_data, None | Some(ReadData::None));
    let mut listing_failed: Option<Error> = None;
    let files = index_files.iter().filter_map(|f| {
        let (file, vouched) = match repo.load_index_file_vouched(&f.name) {
            Ok(v) => v,
            Err(Error::Backend(e)) if e.is_not_found() => return None, // superseded meanwhile
            Err(e) => {
                unreadable.push((f.name.clone(), e));
                return None;
            }
        };
        for p in &file.packs {
            if server_retention && !stored.contains_key(&p.id) {
                removed_by_server.insert(p.id);
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = listed.entry(p.id) {
                let end = coffer_format::envelopes(&p.entries)
                    .map(|(e, _)| e.end())
                    .max()
                    .unwrap_or(0);
                // ids are kept only where they may be needed: packs read whole, and packs
                // missing from storage or shorter than their entries need (reported below)
                let needed = reads_data || stored.get(&p.id).is_none_or(|size| end + 4 > *size);
                let ids = || -> Vec<u8> { p.entries.iter().flat_map(|e| *e.id.as_bytes()).collect() };
                let at = match needed.then(|| listings.append(&ids())) {
                    Some(Ok(at)) => Some(at),
                    Some(Err(e)) => {
                        listing_failed.get_or_insert(e);
                        None
                    }
                    None => None,
                };
                v.insert(Listed {
                    end,
                    at,
                    entries: p.entries.len() as u64,
                });
            }
        }
        Some((
            Id::from_hex(&f.name).ok().map(coffer_format::IndexId)?,
            file,
            vouched,
        ))
    });
    // one bulk load into the sorted table, as a normal open does
    index.add_files(files, |p| !server_retention || stored.contains_key(p))?;
    if let Some(e) = listing_failed {
        return Err(e);
    }
    for (name, e) in unreadable {
        r.errors.push(format!("index/{name}: {e}"));
        r.damaged.push(format!("index/{name}"));
    }
    let repo = repo.with_index(index);
    if !removed_by_server.is_empty() {
        r.warnings.push(format!(
            "{} packs the index lists were removed by the server's retention (a snapshot that needed one is reported as damaged)",
            removed_by_server.len()
        ));
    }
    let mut missing_packs = HashSet::new();
    for (p, l) in &listed {
        match stored.get(p) {
            None => {
                r.errors.push(format!(
                    "pack {} is listed in the index but missing from storage",
                    p.short()
                ));
                r.damaged.push(format!("data/{}", p.to_hex()));
                missing_packs.insert(*p);
            }
            Some(size) => {
                let end = l.end;
                if end + 4 > *size {
                    r.errors.push(format!(
                        "pack {} is {size} bytes, shorter than its index entries need ({end})",
                        p.short()
                    ));
                    r.damaged.push(format!("data/{}", p.to_hex()));
                    missing_packs.insert(*p);
                }
            }
        }
    }
    let unindexed = stored
        .keys()
        .filter(|p| !listed.contains_key(p) && !condemned.contains(p))
        .count();
    if unindexed > 0 {
        r.warnings.push(format!(
            "{unindexed} packs are in no index (a backup in progress or an interrupted one; the next backup or `repair index` adopts them)"
        ));
    }

    // ---- read data
    let cache = opts.cache_dir.as_ref().map(|d| cache_file(d, &repo));
    let mut verified = load_verified(&cache);
    let mut bad_blobs: HashSet<BlobId> = HashSet::new();
    for p in &missing_packs {
        bad_blobs.extend(listed_ids(&listings, &listed[p])?);
    }
    let mut candidates: Vec<PackId> = listed
        .keys()
        .filter(|p| !missing_packs.contains(p))
        .copied()
        .collect();
    candidates.sort();
    let selected: Vec<PackId> = match &opts.read_data {
        None | Some(ReadData::None) => Vec::new(),
        Some(ReadData::All) => candidates.clone(),
        Some(ReadData::Group(n, m)) => candidates
            .iter()
            .filter(|p| (p.as_bytes()[0] as u32) % m == n - 1)
            .copied()
            .collect(),
        Some(ReadData::Fraction(f)) => {
            let want = ((candidates.len() as f64 * f).ceil() as usize).min(candidates.len());
            let mut c = candidates.clone();
            c.sort_by_key(|p| (verified.get(&p.to_hex()).copied().unwrap_or(i64::MIN), *p));
            c.truncate(want);
            c
        }
    };
    let parity_on = repo.config().parity > 0;
    for p in &selected {
        let listed_here = listed_ids(&listings, &listed[p])?;
        progress.item(std::path::Path::new(&p.to_hex()));
        let mut outcome = backend
            .read(FileKind::Pack, &p.to_hex())
            .map_err(Error::from)
            .and_then(|bytes| repo.verify_pack_bytes(p, &bytes).map(|h| (h, bytes)));
        let mut repaired = false;
        if let Err(e) = &outcome {
            // damage: does the pack's parity rebuild it?
            let e = e.to_string();
            match repo.repair_pack(p) {
                Ok(fixed) if fixed.changed => match repo.verify_pack_bytes(p, &fixed.bytes) {
                    Ok(h) => {
                        r.errors.push(format!(
                            "{e}; its parity rebuilds it ({} damaged {} KiB stretches): run `coffer repair packs`",
                            fixed.damaged_shards,
                            coffer_format::shard_layout(fixed.bytes.len() as u64).0.div_ceil(1024)
                        ));
                        r.repairable.push(format!("data/{}", p.to_hex()));
                        r.damaged.push(format!("data/{}", p.to_hex()));
                        // its blobs read through the parity: nothing in the snapshots is lost
                        outcome = Ok((h, fixed.bytes));
                        repaired = true;
                    }
                    Err(e2) => {
                        outcome = Err(Error::Invalid(format!(
                            "{e}; rebuilt from parity, still damaged: {e2}"
                        )))
                    }
                },
                Ok(_) => {}
                Err(pe) => outcome = Err(Error::Invalid(format!("{e}; not repairable: {pe}"))),
            }
        }
        if let (Ok((_, bytes)), false) = (&outcome, repaired) {
            if parity_on || stored_parity.contains_key(p) {
                match backend.read(FileKind::Parity, &p.to_hex()) {
                    Ok(pb) => {
                        if let Err(e) = crate::parity::matches(p, bytes, &pb) {
                            r.parity_damaged.push(format!("parity/{}: {e}", p.to_hex()));
                        }
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => r.parity_damaged.push(format!("parity/{}: {e}", p.to_hex())),
                }
            }
        }
        match outcome.map(|(h, _)| h) {
            Ok(header) => {
                r.packs_read += 1;
                r.bytes_read += stored.get(p).copied().unwrap_or(0);
                let in_header: HashSet<BlobId> = header.iter().map(|e| e.id).collect();
                let lost: Vec<BlobId> = listed_here
                    .into_iter()
                    .filter(|id| !in_header.contains(id))
                    .collect();
                if !lost.is_empty() {
                    r.errors.push(format!(
                        "pack {}: {} blobs of the index are not in the pack's header",
                        p.short(),
                        lost.len()
                    ));
                    r.damaged.push(format!("data/{}", p.to_hex()));
                    bad_blobs.extend(lost);
                } else if !repaired {
                    verified.insert(p.to_hex(), now());
                }
            }
            Err(e) => {
                r.errors.push(e.to_string());
                r.damaged.push(format!("data/{}", p.to_hex()));
                bad_blobs.extend(listed_here);
            }
        }
        progress.files(1);
    }
    if !r.parity_damaged.is_empty() {
        let mut names: Vec<&str> = r
            .parity_damaged
            .iter()
            .take(5)
            .map(|d| d.split(':').next().unwrap_or(d))
            .collect();
        if r.parity_damaged.len() > 5 {
            names.push("…");
        }
        r.warnings.push(format!(
            "{} parity files are damaged or do not match their packs (the packs are intact): `coffer repair packs` writes them again: {}",
            r.parity_damaged.len(),
            names.join(", ")
        ));
    }
    if cache.is_some() {
        verified.retain(|k, _| Id::from_hex(k).is_ok_and(|id| stored.contains_key(&PackId(id))));
        save_verified(&cache, &verified)?;
        let total = candidates.len().max(1);
        let covered = candidates
            .iter()
            .filter(|p| verified.contains_key(&p.to_hex()))
            .count();
        r.coverage = Some(covered as f64 / total as f64);
        r.oldest_verification_secs = candidates
            .iter()
            .filter_map(|p| verified.get(&p.to_hex()))
            .min()
            .map(|t| now() - t);
    }

    // ---- trees: walk each distinct tree once; remember which trees hold damage so paths can be named.
    let mut tree_ok: HashMap<BlobId, bool> = HashMap::new();
    for (_, s) in &snaps {
        walk_check(&repo, s.tree, &bad_blobs, &mut tree_ok, &mut r)?;
    }
    r.trees = tree_ok.len();
    // ---- affected snapshots and files
    let damaged_trees: HashSet<BlobId> = tree_ok
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(id, _)| *id)
        .collect();
    if !damaged_trees.is_empty() {
        for (id, s) in &snaps {
            if !damaged_trees.contains(&s.tree) {
                continue;
            }
            let mut paths = BTreeSet::new();
            affected_paths(&repo, s.tree, b"", &bad_blobs, &damaged_trees, &mut paths);
            r.affected.push(Affected {
                snapshot: id.to_hex(),
                paths: paths.into_iter().collect(),
            });
        }
    }
    r.damaged.sort();
    r.damaged.dedup();
    Ok(r)
}

/// What check keeps of a pack's first listing in the index files.
struct Listed {
    /// Where its envelopes end (a member's end is a place in its bundle's bytes).
    end: u64,
    /// Where its ids start in check's log of listings, if they were kept, and how many there
    /// are.
    at: Option<u64>,
    entries: u64,
}

/// The ids of a pack's first listing, as [`Listed::at`] says where (appended to `log`).
fn listed_ids(log: &crate::spill::Log, l: &Listed) -> Result<Vec<BlobId>> {
    let Some(at) = l.at else {
        return Err(Error::Invalid(
            "check: a pack's listing was needed but not kept (a bug)".into(),
        ));
    };
    Ok(log
        .read(at, l.entries as usize * 32)?
        .chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            BlobId(Id(b))
        })
        .collect())
}

/// Check one tree and everything below it; returns whether it is intact.
fn walk_check(
    repo: &crate::repo::IndexedRepository,
    id: BlobId,
    bad: &HashSet<BlobId>,
    seen: &mut HashMap<BlobId, bool>,
    r: &mut CheckReport,
) -> Result<bool> {
    if let Some(ok) = seen.get(&id) {
        return Ok(*ok);
    }
    seen.insert(id, true); // cycles cannot exist (ids are hashes), but be safe
    let tree = match repo.index().get(&id).map(|_| repo.load_tree(&id)) {
        None => {
            r.errors.push(format!("tree {} is not in the index", id.short()));
            seen.insert(id, false);
            return Ok(false);
        }
        Some(Err(e)) => {
            if !bad.contains(&id) {
                r.errors.push(format!("tree {}: {e}", id.short()));
            }
            seen.insert(id, false);
            return Ok(false);
        }
        Some(Ok(t)) => t,
    };
    let mut ok = !bad.contains(&id);
    for n in &tree.nodes {
        for c in &n.content {
            if bad.contains(c) {
                ok = false;
            } else if !repo.index().contains(c) {
                r.errors.push(format!(
                    "tree {}: {}: chunk {} is not in the index",
                    id.short(),
                    n.name,
                    c.short()
                ));
                ok = false;
            }
        }
        if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
            ok &= walk_check(repo, sub, bad, seen, r)?;
        }
    }
    seen.insert(id, ok);
    Ok(ok)
}

fn affected_paths(
    repo: &crate::repo::IndexedRepository,
    id: BlobId,
    prefix: &[u8],
    bad: &HashSet<BlobId>,
    damaged_trees: &HashSet<BlobId>,
    out: &mut BTreeSet<String>,
) {
    let Ok(tree) = repo.load_tree(&id) else {
        out.insert(format!(
            "{}/ (directory unreadable)",
            String::from_utf8_lossy(prefix)
        ));
        return;
    };
    for n in &tree.nodes {
        let path = join(prefix, &n.name);
        if n.content
            .iter()
            .any(|c| bad.contains(c) || !repo.index().contains(c))
        {
            out.insert(String::from_utf8_lossy(&path).into_owned());
        }
        if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
            if damaged_trees.contains(&sub) {
                affected_paths(repo, sub, &path, bad, damaged_trees, out);
            }
        }
    }
}
