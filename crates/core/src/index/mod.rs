//! The in-memory index: blob id → where it is stored.
//!
//! Two parts. The blobs of the index files read at open ([`Index::add_files`]) form one array
//! sorted by id, found through a directory on the ids' leading bits: blob ids are keyed BLAKE3
//! hashes, evenly spread, so a directory of about one slot per blob leaves one or two ids to
//! compare. Memory per blob: the 56-byte entry plus 2–4 bytes of directory, and loading sorts
//! once instead of inserting into a hash map that rehashes as it grows (a map costs 60–120
//! bytes per blob, depending on where its power-of-two size falls). Blobs added one pack at a
//! time afterwards (a run's new packs, prune, check, repair) go to a hash map (foldhash,
//! randomly seeded per process; std's SipHash over 32-byte ids was most of a lookup). A blob
//! is in at most one of the two; the first location seen for a blob is its *primary* one.
//!
//! Every other location of a blob is kept too, in a third map (usually empty: two concurrent
//! backups of the same new data are the honest way to get one). An index file or pack header
//! is no proof that a blob is where it says: storage can be forged, and a stolen write-only key
//! can write index files. So no location shadows another: readers try the next one when one
//! fails to verify, prune keeps a copy it has verified, and a server manifest names them all.
//!
//! Each pack is *vouched* or not. A pack is vouched when an index file a full key signed lists
//! it (docs/FORMAT.md "Vouched index files"), when this process wrote or verified it, or when a
//! write-only client wrote the listing itself (its own index files, from its change cache).
//! Only vouched packs serve deduplication ([`Index::vouched`]): a blob another client merely
//! claims to have stored is uploaded again rather than referenced. A vouched listing of a pack
//! is authoritative: what unvouched files say about the same pack is ignored.

mod table;

use std::collections::HashMap;

use coffer_format::{BlobId, BlobKind, IndexFile, IndexId, IndexPack, PackEntry, PackId, Place};

use crate::Result;
pub use table::Spill;
/// The directory on ids' leading bits the table uses, for other sorted lists of ids (prune's
/// batches of lookups).
pub(crate) use table::{dir_bits, prefix, prefix_sums};
use table::{Builder, Entry, Slot, Table, OWN, UNVOUCHED};

/// Where one blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub kind: BlobKind,
    /// Where the envelope holding the blob starts in the pack: its own, or its bundle's.
    pub offset: u32,
    /// The envelope's length.
    pub length: u32,
    /// The blob's length.
    pub raw_length: u32,
    /// For a blob in a bundle: where its bytes start in the bundle's uncompressed bytes.
    pub in_bundle: Option<u32>,
}

/// All known blobs of a repository.
#[derive(Debug, Default)]
pub struct Index {
    /// Where the table goes past its memory budget (none: it stays in memory).
    spill: Option<Spill>,
    packs: Vec<PackId>,
    /// By pack position: whether the pack is vouched for (see the module docs).
    vouched: Vec<bool>,
    pack_pos: HashMap<PackId, u32>,
    /// Blobs of the index files loaded in bulk.
    table: Table,
    /// Blobs added a pack at a time since; never an id `table` holds.
    added: HashMap<BlobId, Slot, foldhash::fast::RandomState>,
    /// Further locations of blobs whose primary one is in `table` or `added`, each distinct
    /// one once, never the primary one.
    more: HashMap<BlobId, Vec<Slot>, foldhash::fast::RandomState>,
    files: Vec<IndexId>,
    /// Index files that could not be read (damaged, or garbage a compromised client wrote),
    /// one message each; their packs are unknown to this index.
    skipped: Vec<String>,
}

impl Index {
    /// Add many index files at once, the packs of each that `keep` accepts, into the sorted
    /// table (rebuilt once for all of them). Each file comes with whether it is vouched for;
    /// a pack a vouched file lists takes its entries from vouched files only (call this once
    /// with every file: a later vouched listing does not remove entries added before). Blobs
    /// the index holds already keep their primary location; among the new ones, the first
    /// listed is primary. Every other distinct location is kept as an alternative.
    ///
    /// The files are taken one at a time: given by value (a lazy iterator that reads each
    /// as it is asked for), each is dropped once its entries are in the table, so that
    /// loading never holds every decoded file and the table together.
    pub fn add_files<F: std::borrow::Borrow<IndexFile>>(
        &mut self,
        files: impl IntoIterator<Item = (IndexId, F, bool)>,
        keep: impl Fn(&PackId) -> bool,
    ) -> Result<()> {
        // the table's own rows first, so that they stay primary over new duplicates
        let mut rows = Builder::new(self.spill.clone(), std::mem::take(&mut self.table))?;
        for (id, file, vouched) in files {
            self.files.push(id);
            for p in file.borrow().packs.iter().filter(|p| keep(&p.id)) {
                let pos = self.bulk_position_of(&p.id)?;
                if vouched {
                    self.vouched[pos as usize] = true;
                }
                // rows of unvouched files are flagged: those of a pack that a vouched file
                // lists (this call's or an earlier one) are dropped once every file is in
                let flag = if vouched { 0 } else { UNVOUCHED };
                for (id, mut slot) in slots(pos, &p.entries) {
                    slot.pack |= flag;
                    rows.push(Entry { id, slot })?;
                }
            }
        }
        self.finish_table(rows)
    }

    /// Add packs in bulk, as [`Index::add_pack`] would one after the other (the first
    /// location seen for a blob stays primary, each pack vouched for as given), but into the
    /// sorted table: ~60 bytes per blob instead of a hash map's 60–120, or a file past the
    /// memory budget (prune adds every pack of the repository this way).
    ///
    /// The packs are taken one at a time, as [`Index::add_files`] takes files.
    pub fn add_packs<P: std::borrow::Borrow<IndexPack>>(
        &mut self,
        packs: impl IntoIterator<Item = (P, bool)>,
    ) -> Result<()> {
        let mut rows = Builder::new(self.spill.clone(), std::mem::take(&mut self.table))?;
        for (p, vouched) in packs {
            let p = p.borrow();
            let pos = self.bulk_position_of(&p.id)?;
            self.vouched[pos as usize] |= vouched;
            for (id, slot) in slots(pos, &p.entries) {
                rows.push(Entry { id, slot })?;
            }
        }
        self.finish_table(rows)
    }

    /// The table built from `rows`: the first location of a blob (in `added`, or in the
    /// order the rows were seen) is primary; every other distinct one is kept as an
    /// alternative.
    fn finish_table(&mut self, rows: Builder) -> Result<()> {
        // (alternatives are gathered first and tidied once: one hostile file can list a blob a
        // million times, and checking each against the list so far would be quadratic)
        let mut more = std::mem::take(&mut self.more);
        self.table = rows.finish(&self.vouched, &self.added, &mut more)?;
        for (id, list) in more.iter_mut() {
            // each distinct location once, first seen kept, never the primary one (a lying entry
            // may name the real pack at a wrong offset: every place stays a candidate)
            let primary = self.added.get(id).copied().or_else(|| self.table.find(id));
            let mut seen = std::collections::HashSet::with_capacity(list.len());
            list.retain(|s| Some(*s) != primary && seen.insert(*s));
        }
        more.retain(|_, list| !list.is_empty());
        self.more = more;
        Ok(())
    }

    /// [`Self::pack_position_of`] for a row of the table, whose positions stay under the
    /// flag bit (2³¹ packs would be 32 PiB of 16 MiB packs, or index files listing made-up
    /// pack ids).
    fn bulk_position_of(&mut self, id: &PackId) -> Result<u32> {
        let pos = self.pack_position_of(id);
        if pos >= UNVOUCHED {
            return Err(crate::Error::Invalid(format!(
                "the index files list more than {UNVOUCHED} packs"
            )));
        }
        Ok(pos)
    }

    fn pack_position_of(&mut self, id: &PackId) -> u32 {
        let next = self.packs.len() as u32;
        let pos = *self.pack_pos.entry(*id).or_insert(next);
        if pos == next {
            self.packs.push(*id);
            self.vouched.push(false);
        }
        pos
    }

    /// Add one pack's entries (the first location seen for a blob stays primary; others are
    /// kept as alternatives). `vouched`: a pack this process wrote or verified, or one a
    /// vouched listing names; never one read from a header or an unvouched listing. A pack
    /// once vouched for stays so.
    pub fn add_pack(&mut self, p: &IndexPack, vouched: bool) {
        let pos = self.pack_position_of(&p.id);
        self.vouched[pos as usize] |= vouched;
        for (id, slot) in slots(pos, &p.entries) {
            let primary = match self.table.find(&id) {
                Some(s) => s,
                None => *self.added.entry(id).or_insert(slot),
            };
            if primary != slot {
                note_more(&mut self.more, id, slot);
            }
        }
    }

    fn slot(&self, id: &BlobId) -> Option<Slot> {
        self.table.find(id).or_else(|| self.added.get(id).copied())
    }

    fn location(&self, s: &Slot) -> BlobLocation {
        BlobLocation {
            pack: self.packs[s.pack as usize],
            kind: s.kind,
            offset: s.offset,
            length: s.length,
            raw_length: s.raw_length,
            in_bundle: (s.in_bundle != OWN).then_some(s.in_bundle),
        }
    }

    /// The primary location of a blob.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.slot(id).map(|s| self.location(&s))
    }

    /// Every known location of a blob, the primary one first.
    pub fn locations(&self, id: &BlobId) -> Vec<BlobLocation> {
        let Some(primary) = self.slot(id) else {
            return Vec::new();
        };
        let more = self.more.get(id).map(Vec::as_slice).unwrap_or_default();
        std::iter::once(&primary)
            .chain(more)
            .map(|s| self.location(s))
            .collect()
    }

    /// Whether some blob has more than one location (then [`Index::locations`] is worth asking).
    pub fn has_alternatives(&self) -> bool {
        !self.more.is_empty()
    }

    /// Blobs with more than one location (each once).
    pub fn with_alternatives(&self) -> impl Iterator<Item = &BlobId> + '_ {
        self.more.keys()
    }

    /// The positions of the packs of a blob's locations other than its primary one.
    pub fn alternative_positions(&self, id: &BlobId) -> impl Iterator<Item = u32> + '_ {
        let more = self.more.get(id).map(Vec::as_slice).unwrap_or_default();
        more.iter().map(|s| s.pack)
    }

    /// The position of the pack holding blob `id` (see [`Index::pack_at`]): lets a caller
    /// note packs in a bitmap instead of hashing their ids.
    pub fn pack_position(&self, id: &BlobId) -> Option<u32> {
        self.slot(id).map(|s| s.pack)
    }

    /// The pack at a position [`Index::pack_position`] returned.
    pub fn pack_at(&self, pos: u32) -> PackId {
        self.packs[pos as usize]
    }

    /// The row of blob `id` in the table of bulk-loaded blobs: a number under
    /// [`Index::table_rows`], the same for the same blob until the next bulk load
    /// ([`Index::add_files`], [`Index::add_packs`]) rebuilds the table. Lets a caller keep
    /// a bit or a number per blob in an array instead of a map keyed by 32-byte ids. `None`
    /// for a blob the table does not hold (unknown, or added a pack at a time).
    pub fn table_row(&self, id: &BlobId) -> Option<usize> {
        self.table.find_row(id).map(|(row, _)| row)
    }

    /// [`Index::table_row`] of each of `ids`, which must be in ascending order, appended to
    /// `out`: with the table in a file, a read per ~1,200 rows instead of one per id when the
    /// ids are dense.
    pub fn table_rows_sorted(&self, ids: &[BlobId], out: &mut Vec<Option<usize>>) {
        self.table.rows_sorted(ids, out)
    }

    /// How many rows the table of bulk-loaded blobs has.
    pub fn table_rows(&self) -> usize {
        self.table.len()
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.slot(id).is_some()
    }

    /// Whether some location of blob `id` is in a vouched pack: what deduplication may reuse.
    pub fn vouched(&self, id: &BlobId) -> bool {
        let Some(primary) = self.slot(id) else {
            return false;
        };
        self.vouched[primary.pack as usize]
            || self.alternative_positions(id).any(|p| self.vouched[p as usize])
    }

    /// Stop vouching for every pack `keep` rejects (packs storage no longer holds).
    pub fn unvouch_unless(&mut self, keep: impl Fn(&PackId) -> bool) {
        for (pos, p) in self.packs.iter().enumerate() {
            if self.vouched[pos] && !keep(p) {
                self.vouched[pos] = false;
            }
        }
    }

    /// Whether the pack at position `pos` is vouched for.
    pub fn pack_vouched(&self, pos: u32) -> bool {
        self.vouched[pos as usize]
    }

    /// How many packs the index knows only from unvouched listings.
    pub fn unvouched_pack_count(&self) -> usize {
        self.vouched.iter().filter(|v| !**v).count()
    }

    pub fn blob_count(&self) -> usize {
        self.table.len() + self.added.len()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    pub fn contains_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// Every pack the index knows.
    pub fn packs(&self) -> impl Iterator<Item = PackId> + '_ {
        self.packs.iter().copied()
    }

    /// Note an index file that was left out.
    pub fn skip_file(&mut self, message: String) {
        self.skipped.push(message);
    }

    /// Messages about index files that were left out.
    pub fn skipped_files(&self) -> &[String] {
        &self.skipped
    }

    pub fn index_files(&self) -> &[IndexId] {
        &self.files
    }

    /// Every blob with its location.
    pub fn iter(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        let table = self.table.iter().map(|e| (e.id, e.slot));
        table
            .chain(self.added.iter().map(|(id, s)| (*id, *s)))
            .map(|(id, s)| (id, self.location(&s)))
    }

    /// An empty index whose table moves to a file past `spill`'s memory budget.
    pub fn with_spill(spill: Option<Spill>) -> Index {
        Index {
            spill,
            ..Index::default()
        }
    }

    /// Whether the table of bulk-loaded blobs is in a file (it outgrew its memory budget).
    pub fn table_in_file(&self) -> bool {
        self.table.in_file()
    }
}

/// Note a further location of `id` unless it is listed already (one pack at a time: the
/// packs a run, prune or repair wrote, few locations per blob).
fn note_more(more: &mut HashMap<BlobId, Vec<Slot>, foldhash::fast::RandomState>, id: BlobId, slot: Slot) {
    let list = more.entry(id).or_default();
    if !list.contains(&slot) {
        list.push(slot);
    }
}

/// The blobs of one pack's entries with their slots: a bundle entry is not a blob, and its
/// members are found at the bundle's envelope. Entries come from a decoded pack header or
/// index file, where every member follows its bundle.
fn slots(pack: u32, entries: &[PackEntry]) -> impl Iterator<Item = (BlobId, Slot)> + '_ {
    let mut bundle: Option<&PackEntry> = None;
    entries.iter().filter_map(move |e| {
        let (envelope, in_bundle) = match e.place {
            Place::Own => (e, OWN),
            Place::Bundle => {
                bundle = Some(e);
                return None;
            }
            Place::Member => (bundle?, e.offset),
        };
        Some((
            e.id,
            Slot {
                pack,
                kind: e.kind,
                offset: envelope.offset,
                length: envelope.length,
                raw_length: e.raw_length,
                in_bundle,
            },
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use coffer_format::{Id, PackEntry};
    use proptest::prelude::*;

    use super::*;

    /// An id from a small pool: `n`'s bytes lead, so ids share leading bits (directory runs of
    /// several ids) and the same `n` repeats (duplicates across packs and files).
    fn id(n: u16) -> BlobId {
        let mut b = [0u8; 32];
        b[0] = (n >> 8) as u8 & 0x03;
        b[1] = n as u8;
        b[31] = (n % 7) as u8;
        BlobId(Id(b))
    }

    fn pack(tag: u8, blobs: &[(u16, u32)]) -> IndexPack {
        IndexPack {
            id: PackId(Id([tag; 32])),
            entries: blobs
                .iter()
                .map(|&(n, off)| PackEntry::own(BlobKind::Data, id(n), off, 1, 1))
                .collect(),
        }
    }

    /// packs of one index file: a tag for the pack id, then (blob, offset) pairs
    type Packs = Vec<(u8, Vec<(u16, u32)>)>;

    #[derive(Debug, Clone)]
    enum Op {
        /// index files loaded in bulk
        Files(Vec<Packs>),
        /// one pack added on its own
        Pack(u8, Vec<(u16, u32)>),
        /// packs added in bulk (prune)
        Packs(Packs),
    }

    fn blobs() -> impl Strategy<Value = Vec<(u16, u32)>> {
        prop::collection::vec((0u16..600, any::<u32>()), 0..40)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(prop::collection::vec((any::<u8>(), blobs()), 0..4), 0..4)
                .prop_map(Op::Files),
            (any::<u8>(), blobs()).prop_map(|(t, b)| Op::Pack(t, b)),
            prop::collection::vec((any::<u8>(), blobs()), 0..4).prop_map(Op::Packs),
        ]
    }

    proptest! {
        /// Whatever mix of bulk loads and single packs, the index answers as a map that keeps
        /// the first location seen for each id as its primary one, and every other distinct
        /// location as an alternative.
        #[test]
        fn the_index_keeps_the_first_location_seen_and_every_other(
            ops in prop::collection::vec(op(), 1..6),
            rows in 1usize..20,
        ) {
            // in memory, and in files past a budget of a few rows (every merge path)
            let dir = tempfile::tempdir().unwrap();
            for spill in [None, Some(Spill::rows(dir.path(), rows))] {
                let in_file = spill.is_some();
                the_index_keeps_the_first_location_seen_and_every_other_with(&ops, spill, in_file)?;
            }
        }
    }

    fn the_index_keeps_the_first_location_seen_and_every_other_with(
        ops: &[Op],
        spill: Option<Spill>,
        may_spill: bool,
    ) -> Result<(), TestCaseError> {
        {
            let mut index = Index::with_spill(spill);
            let mut model: BTreeMap<BlobId, Vec<(PackId, u32)>> = BTreeMap::new();
            let mut note = |id: BlobId, at: (PackId, u32)| {
                let l = model.entry(id).or_default();
                if !l.contains(&at) {
                    l.push(at);
                }
            };
            let mut files = 0u8;
            for op in ops.iter().cloned() {
                match op {
                    Op::Files(list) => {
                        let decoded: Vec<(IndexId, IndexFile)> = list
                            .iter()
                            .map(|packs| {
                                files = files.wrapping_add(1);
                                let file = IndexFile {
                                    supersedes: Vec::new(),
                                    packs: packs.iter().map(|(t, b)| pack(*t, b)).collect(),
                                };
                                (IndexId(Id([files; 32])), file)
                            })
                            .collect();
                        for (_, f) in &decoded {
                            for p in &f.packs {
                                for e in &p.entries {
                                    note(e.id, (p.id, e.offset));
                                }
                            }
                        }
                        index
                            .add_files(decoded.iter().map(|(i, f)| (*i, f, true)), |_| true)
                            .unwrap();
                    }
                    Op::Packs(list) => {
                        let packs: Vec<IndexPack> = list.iter().map(|(t, b)| pack(*t, b)).collect();
                        for p in &packs {
                            for e in &p.entries {
                                note(e.id, (p.id, e.offset));
                            }
                        }
                        index.add_packs(packs.iter().map(|p| (p, true))).unwrap();
                    }
                    Op::Pack(t, b) => {
                        let p = pack(t, &b);
                        for e in &p.entries {
                            note(e.id, (p.id, e.offset));
                        }
                        index.add_pack(&p, true);
                    }
                }
            }
            prop_assert_eq!(index.blob_count(), model.len());
            for n in 0..1024u16 {
                let want = model.get(&id(n));
                let got = index.get(&id(n)).map(|l| (l.pack, l.offset));
                prop_assert_eq!(got, want.map(|l| l[0]), "id {}", n);
                let mut all: Vec<(PackId, u32)> = index
                    .locations(&id(n))
                    .iter()
                    .map(|l| (l.pack, l.offset))
                    .collect();
                prop_assert_eq!(all.first().copied(), got);
                all.sort();
                let mut want = want.cloned().unwrap_or_default();
                want.sort();
                prop_assert_eq!(all, want, "id {}", n);
                let positions: Vec<PackId> = index
                    .pack_position(&id(n))
                    .into_iter()
                    .chain(index.alternative_positions(&id(n)))
                    .map(|p| index.pack_at(p))
                    .collect();
                prop_assert_eq!(positions.len(), index.locations(&id(n)).len());
            }
            // table rows: one distinct number under table_rows per blob the table holds, in
            // id order (the blobs added a pack at a time have none)
            let rows: Vec<(BlobId, usize)> = model
                .keys()
                .filter_map(|i| index.table_row(i).map(|r| (*i, r)))
                .collect();
            prop_assert_eq!(rows.len(), index.table_rows());
            let sorted: Vec<BlobId> = (0..1024u16)
                .map(id)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut batch = Vec::new();
            index.table_rows_sorted(&sorted, &mut batch);
            let single: Vec<Option<usize>> = sorted.iter().map(|i| index.table_row(i)).collect();
            prop_assert_eq!(batch, single);
            prop_assert!(rows.iter().enumerate().all(|(n, (_, r))| *r == n));
            prop_assert_eq!(rows.len() + index.added.len(), model.len());
            let listed: BTreeMap<BlobId, (PackId, u32)> =
                index.iter().map(|(i, l)| (i, (l.pack, l.offset))).collect();
            let primaries: BTreeMap<BlobId, (PackId, u32)> = model.iter().map(|(i, l)| (*i, l[0])).collect();
            prop_assert_eq!(listed, primaries);
            prop_assert!(may_spill || !index.table_in_file());
        }
        Ok(())
    }

    #[test]
    fn only_vouched_listings_serve_deduplication_and_they_overrule_unvouched_ones() {
        let honest = pack(1, &[(1, 0), (2, 10)]);
        // a lying file: blob 3 "in" the honest pack, blob 4 in a pack only it lists
        let lie = IndexFile {
            supersedes: Vec::new(),
            packs: vec![pack(1, &[(3, 0)]), pack(2, &[(4, 0), (1, 5)])],
        };
        let good = IndexFile {
            supersedes: Vec::new(),
            packs: vec![honest.clone()],
        };
        // in memory, and through run files of one row each (the unvouched flag on disk)
        let dir = tempfile::tempdir().unwrap();
        for spill in [None, Some(Spill::rows(dir.path(), 1))] {
            let in_file = spill.is_some();
            let mut index = Index::with_spill(spill);
            index
                .add_files(
                    [
                        (IndexId(Id([8; 32])), &lie, false),
                        (IndexId(Id([9; 32])), &good, true),
                    ],
                    |_| true,
                )
                .unwrap();
            assert_eq!(index.table_in_file(), in_file);
            only_vouched_listings_serve_deduplication_in(index);
        }
    }

    fn only_vouched_listings_serve_deduplication_in(mut index: Index) {
        assert!(index.vouched(&id(1)) && index.vouched(&id(2)));
        // the lie about the vouched pack is not even a location
        assert!(!index.contains(&id(3)));
        // a blob only an unvouched file claims is known (restore may try it) but not reused
        assert!(index.contains(&id(4)) && !index.vouched(&id(4)));
        assert_eq!(index.unvouched_pack_count(), 1);
        // a pack this process verified or wrote is vouched
        index.add_pack(&pack(2, &[(4, 0)]), true);
        assert!(index.vouched(&id(4)));
        assert_eq!(index.unvouched_pack_count(), 0);
    }

    #[test]
    fn packs_a_filter_rejects_are_left_out() {
        let kept = pack(1, &[(1, 0), (2, 10)]);
        let dropped = pack(2, &[(3, 0), (1, 99)]);
        let file = IndexFile {
            supersedes: Vec::new(),
            packs: vec![dropped.clone(), kept.clone()],
        };
        let dir = tempfile::tempdir().unwrap();
        for spill in [None, Some(Spill::rows(dir.path(), 1))] {
            let mut index = Index::with_spill(spill);
            index
                .add_files([(IndexId(Id([9; 32])), &file, true)], |p| *p == kept.id)
                .unwrap();
            assert_eq!(index.blob_count(), 2);
            assert!(!index.contains(&id(3)));
            assert_eq!(index.get(&id(1)).map(|l| (l.pack, l.offset)), Some((kept.id, 0)));
            assert!(!index.contains_pack(&dropped.id));
            assert_eq!(index.index_files(), &[IndexId(Id([9; 32]))]);
        }
    }

    /// A spill directory that cannot be made (here: under a plain file) keeps the table in
    /// memory: the index still answers.
    #[test]
    fn a_spill_directory_that_cannot_be_written_keeps_the_table_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let mut index = Index::with_spill(Some(Spill::rows(file.join("index"), 3)));
        let blobs: Vec<(u16, u32)> = (0..100).map(|i| (i, u32::from(i))).collect();
        index.add_packs([(&pack(1, &blobs), true)]).unwrap();
        assert!(!index.table_in_file());
        assert_eq!(index.blob_count(), 100);
        assert_eq!(index.get(&id(42)).map(|l| l.offset), Some(42));
    }

    /// A table file leaves nothing in its directory, and a budget of 1024 rows keeps 1000
    /// blobs in memory but not 2000.
    #[test]
    fn a_table_past_its_budget_goes_to_an_unlinked_file() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = |n: u16| -> Vec<(u16, u32)> { (0..n).map(|i| (i, u32::from(i))).collect() };
        let mut small = Index::with_spill(Some(Spill::new(dir.path(), 1024 * 84)));
        small.add_packs([(&pack(1, &blobs(1000)), true)]).unwrap();
        assert!(!small.table_in_file());
        let mut big = Index::with_spill(Some(Spill::new(dir.path(), 1024 * 84)));
        big.add_packs([(&pack(1, &blobs(2000)), true)]).unwrap();
        assert!(big.table_in_file());
        assert_eq!(big.blob_count(), 2000);
        for n in [0u16, 999, 1500, 1999] {
            assert_eq!(big.get(&id(n)).map(|l| l.offset), Some(u32::from(n)));
        }
        assert!(big.get(&id(2047)).is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Rows looked up in a batch of ascending ids, through a table file of several read
    /// chunks, dense and sparse, known and unknown ids alike: the same as one by one.
    #[test]
    fn batch_lookups_in_a_table_file_give_the_rows_of_single_ones() {
        let dir = tempfile::tempdir().unwrap();
        // evenly spread ids (keyed hashes are), 6,000 rows: five of prune's read chunks
        let spread = |n: u32| BlobId(Id(*blake3::hash(&n.to_le_bytes()).as_bytes()));
        let p = IndexPack {
            id: PackId(Id([1; 32])),
            entries: (0..6000u32)
                .map(|n| PackEntry::own(BlobKind::Data, spread(n), n, 1, 1))
                .collect(),
        };
        let mut index = Index::with_spill(Some(Spill::rows(dir.path(), 500)));
        index.add_packs([(&p, true)]).unwrap();
        assert!(index.table_in_file());
        for step in [1u32, 3, 1000, 2999] {
            // every step-th id, and as many that are not in the table
            let mut ids: Vec<BlobId> = (0..8000u32).step_by(step as usize).map(spread).collect();
            ids.sort();
            let mut batch = Vec::new();
            index.table_rows_sorted(&ids, &mut batch);
            let single: Vec<Option<usize>> = ids.iter().map(|i| index.table_row(i)).collect();
            assert_eq!(batch, single, "every {step}th id");
            assert!(batch.iter().flatten().count() > 0);
        }
    }
}
