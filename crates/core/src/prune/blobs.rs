//! What prune notes per blob (used or not, the pack it is kept in, available elsewhere),
//! kept in arrays over the rows of the index's table instead of maps keyed by 32-byte ids: at
//! 11 million blobs a bit or 4 bytes a blob instead of 40–80. A blob the table does not hold
//! (one a snapshot names but no index lists, or one added a pack at a time) goes to a map.
//! The rows are those of the index the set was made for: it must not be used after that
//! index's table is rebuilt.
//!
//! Rows are best looked up many at a time ([`Rows`], [`BlobSet::note`]): sorted, they are
//! read from a table in a file a chunk at a time instead of with a `pread` each.

use std::collections::{HashMap, HashSet};

use coffer_format::BlobId;

use crate::index::{dir_bits, prefix, prefix_sums, Index};

/// A blob's row in the table, found once and used for several lookups.
#[derive(Clone, Copy, Debug)]
pub(super) struct Row<'a> {
    id: &'a BlobId,
    row: Option<usize>,
}

pub(super) fn row<'a>(index: &Index, id: &'a BlobId) -> Row<'a> {
    Row {
        id,
        row: index.table_row(id),
    }
}

/// Blobs whose rows are looked up together, at most this many at once (~16 MiB of ids).
pub(super) const BATCH: usize = 1 << 19;

/// The rows of a batch of blobs, looked up together.
pub(super) struct Rows<'i> {
    index: &'i Index,
    /// Ascending, each once.
    ids: Vec<BlobId>,
    rows: Vec<Option<usize>>,
    /// `dir[p]..dir[p + 1]`: where the ids whose first `bits` bits are `p` are in `ids`
    /// (about one each: a binary search over the whole batch was a quarter of prune's time).
    dir: Vec<u32>,
    bits: u32,
}

impl<'i> Rows<'i> {
    pub fn of(index: &'i Index, ids: impl IntoIterator<Item = BlobId>) -> Rows<'i> {
        let mut ids: Vec<BlobId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = Vec::with_capacity(ids.len());
        index.table_rows_sorted(&ids, &mut rows);
        // (as the index's own table: about one slot per id)
        let bits = dir_bits(ids.len(), 1);
        let mut dir = vec![0u32; (1usize << bits) + 1];
        for id in &ids {
            dir[prefix(id, bits) + 1] += 1;
        }
        prefix_sums(&mut dir);
        Rows {
            index,
            ids,
            rows,
            dir,
            bits,
        }
    }

    /// The row of a blob of the batch (one outside it is looked up on its own).
    pub fn row<'a>(&self, id: &'a BlobId) -> Row<'a> {
        let p = prefix(id, self.bits);
        let lo = self.dir[p] as usize;
        match self.ids[lo..self.dir[p + 1] as usize].binary_search(id) {
            Ok(i) => Row {
                id,
                row: self.rows[lo + i],
            },
            Err(_) => row(self.index, id),
        }
    }
}

/// A set of blobs.
pub(super) struct BlobSet {
    bits: Vec<u64>,
    other: HashSet<BlobId>,
    /// Blobs noted but not added yet (see [`BlobSet::note`]).
    pending: Vec<BlobId>,
}

impl BlobSet {
    pub fn new(index: &Index) -> BlobSet {
        BlobSet {
            bits: vec![0; index.table_rows().div_ceil(64)],
            other: HashSet::new(),
            pending: Vec::new(),
        }
    }

    /// Add a blob later, with others: its row is looked up with a batch of them, by the time
    /// [`BlobSet::settle`] returns.
    pub fn note(&mut self, index: &Index, id: BlobId) {
        self.pending.push(id);
        if self.pending.len() >= BATCH {
            self.settle(index);
        }
    }

    /// Add every blob noted.
    pub fn settle(&mut self, index: &Index) {
        let rows = Rows::of(index, self.pending.drain(..));
        for (id, r) in rows.ids.iter().zip(&rows.rows) {
            self.insert(Row { id, row: *r });
        }
    }

    /// Add a blob; whether it was new.
    pub fn insert(&mut self, r: Row<'_>) -> bool {
        match r.row {
            Some(n) => {
                let (w, b) = (n / 64, 1u64 << (n % 64));
                let new = self.bits[w] & b == 0;
                self.bits[w] |= b;
                new
            }
            None => self.other.insert(*r.id),
        }
    }

    pub fn contains(&self, r: Row<'_>) -> bool {
        debug_assert!(
            self.pending.is_empty(),
            "a blob set asked with blobs noted but not added"
        );
        match r.row {
            Some(n) => self.bits[n / 64] & (1u64 << (n % 64)) != 0,
            None => self.other.contains(r.id),
        }
    }
}

/// A number (under `u32::MAX`) per blob.
pub(super) struct BlobNumbers {
    values: Vec<u32>,
    other: HashMap<BlobId, u32>,
}

const NONE: u32 = u32::MAX;

impl BlobNumbers {
    pub fn new(index: &Index) -> BlobNumbers {
        BlobNumbers {
            values: vec![NONE; index.table_rows()],
            other: HashMap::new(),
        }
    }

    pub fn get(&self, r: Row<'_>) -> Option<u32> {
        match r.row {
            Some(n) => Some(self.values[n]).filter(|v| *v != NONE),
            None => self.other.get(r.id).copied(),
        }
    }

    /// Set a blob's number unless it has one.
    pub fn set_if_none(&mut self, r: Row<'_>, v: u32) {
        debug_assert!(v != NONE);
        match r.row {
            Some(n) if self.values[n] == NONE => self.values[n] = v,
            Some(_) => {}
            None => {
                self.other.entry(*r.id).or_insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_format::{BlobKind, Id, IndexPack, PackEntry, PackId};

    fn id(n: u16) -> BlobId {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&n.to_be_bytes());
        b[31] = 7;
        BlobId(Id(b))
    }

    /// Blobs in the table and blobs outside it (unknown, or added a pack at a time) answer
    /// alike.
    #[test]
    fn sets_and_numbers_hold_blobs_inside_and_outside_the_table() {
        let mut index = Index::default();
        let pack = |tag: u8, ids: std::ops::Range<u16>| IndexPack {
            id: PackId(Id([tag; 32])),
            entries: ids
                .map(|n| PackEntry::own(BlobKind::Data, id(n), n as u32 * 10, 10, 10))
                .collect(),
        };
        index.add_packs([(pack(1, 0..300), true)]).unwrap();
        index.add_pack(&pack(2, 300..310), true);
        let mut set = BlobSet::new(&index);
        let mut numbers = BlobNumbers::new(&index);
        let ids: Vec<BlobId> = (0..400).map(id).collect();
        for (n, i) in ids.iter().enumerate().filter(|(n, _)| n % 3 == 0) {
            assert!(set.insert(row(&index, i)));
            assert!(!set.insert(row(&index, i)));
            numbers.set_if_none(row(&index, i), n as u32);
            numbers.set_if_none(row(&index, i), 1);
        }
        // the same through a batch, and noted blobs once settled
        let batch = Rows::of(&index, ids.iter().rev().copied());
        let mut noted = BlobSet::new(&index);
        for i in ids.iter().step_by(3).chain(ids.iter().step_by(3)) {
            noted.note(&index, *i);
        }
        noted.settle(&index);
        for (n, i) in ids.iter().enumerate() {
            let r = row(&index, i);
            assert_eq!(r.row.is_some(), n < 300, "blob {n}");
            assert_eq!(batch.row(i).row, r.row, "blob {n}");
            assert_eq!(set.contains(r), n % 3 == 0, "blob {n}");
            assert_eq!(noted.contains(r), n % 3 == 0, "blob {n}");
            assert_eq!(numbers.get(r), (n % 3 == 0).then_some(n as u32), "blob {n}");
        }
    }
}
