//! The in-memory index: blob id → where it is stored.
//!
//! Built from all index files at open. Memory per blob: one hash-map slot of a 32-byte id plus
//! a 20-byte location (about 80 bytes with the map's overhead); issue #8 tracks a denser form.
//!
//! The blob map hashes with foldhash (randomly seeded per process) rather than std's SipHash:
//! every file of a re-backup looks up its chunks here, and SipHash over 32-byte ids was most
//! of the cost of a lookup.

use std::collections::HashMap;

use coffer_format::{BlobId, BlobKind, IndexFile, IndexId, IndexPack, PackId};

/// Where one blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub kind: BlobKind,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    pack: u32,
    kind: BlobKind,
    offset: u32,
    length: u32,
    raw_length: u32,
}

/// All known blobs of a repository.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, Slot, foldhash::fast::RandomState>,
    files: Vec<IndexId>,
    /// Index files that could not be read (damaged, or garbage a compromised client wrote),
    /// one message each; their packs are unknown to this index.
    skipped: Vec<String>,
}

impl Index {
    /// Make room for `blobs` more blobs at once: growing the map step by step while 100k+
    /// blobs are added rehashed it again and again and faulted in every size in between.
    pub fn reserve(&mut self, blobs: usize) {
        self.blobs.reserve(blobs);
    }

    /// Add the content of one index file.
    pub fn add_file(&mut self, id: IndexId, file: &IndexFile) {
        self.files.push(id);
        for p in &file.packs {
            self.add_pack(p);
        }
    }

    /// [`Index::add_file`] of only the packs `keep` accepts.
    pub fn add_file_where(&mut self, id: IndexId, file: &IndexFile, keep: impl Fn(&PackId) -> bool) {
        self.files.push(id);
        for p in file.packs.iter().filter(|p| keep(&p.id)) {
            self.add_pack(p);
        }
    }

    /// Add one pack's entries (first location seen for a blob wins).
    pub fn add_pack(&mut self, p: &IndexPack) {
        let next = self.packs.len() as u32;
        let pos = *self.pack_pos.entry(p.id).or_insert(next);
        if pos == next {
            self.packs.push(p.id);
        }
        for e in &p.entries {
            self.blobs.entry(e.id).or_insert(Slot {
                pack: pos,
                kind: e.kind,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
            });
        }
    }

    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.blobs.get(id).map(|s| BlobLocation {
            pack: self.packs[s.pack as usize],
            kind: s.kind,
            offset: s.offset,
            length: s.length,
            raw_length: s.raw_length,
        })
    }

    /// The position of the pack holding blob `id` (see [`Index::pack_at`]): lets a caller
    /// note packs in a bitmap instead of hashing their ids.
    pub fn pack_position(&self, id: &BlobId) -> Option<u32> {
        self.blobs.get(id).map(|s| s.pack)
    }

    /// The pack at a position [`Index::pack_position`] returned.
    pub fn pack_at(&self, pos: u32) -> PackId {
        self.packs[pos as usize]
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
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
        self.blobs.iter().map(|(id, s)| {
            (
                *id,
                BlobLocation {
                    pack: self.packs[s.pack as usize],
                    kind: s.kind,
                    offset: s.offset,
                    length: s.length,
                    raw_length: s.raw_length,
                },
            )
        })
    }
}
