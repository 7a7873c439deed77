//! Every pack's listing, as prune reads it from the index files (and from the headers of
//! condemned packs no index file lists any more), kept in a file: a pack's entries are read
//! back when prune weighs it, builds the index, or writes the new index files. At 11 million
//! blobs the listings are ~500 MB of entries; memory keeps ~60 bytes a pack. `repair index`
//! keeps the listings it verified here too.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use coffer_format::{envelopes, BlobId, BlobKind, IndexPack, PackEntry, PackId, Place};

use crate::error::{Error, Result};
use crate::spill::Log;

/// Bytes of one entry in the file: kind, place, id, offset, length, raw length.
const ENTRY: usize = 1 + 1 + 32 + 4 + 4 + 4;

fn encode(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        out.push(match e.kind {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        });
        out.push(match e.place {
            Place::Own => 0,
            Place::Bundle => 1,
            Place::Member => 2,
        });
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.raw_length.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Vec<PackEntry>> {
    let u = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    bytes
        .chunks_exact(ENTRY)
        .map(|b| {
            let kind = match b[0] {
                0 => BlobKind::Data,
                1 => BlobKind::Tree,
                _ => return Err(Error::Invalid("prune's listing file: a bad entry (a bug)".into())),
            };
            let place = match b[1] {
                0 => Place::Own,
                1 => Place::Bundle,
                2 => Place::Member,
                _ => return Err(Error::Invalid("prune's listing file: a bad entry (a bug)".into())),
            };
            let mut id = [0u8; 32];
            id.copy_from_slice(&b[2..34]);
            Ok(PackEntry {
                kind,
                id: BlobId(coffer_format::Id(id)),
                offset: u(b, 34),
                length: u(b, 38),
                raw_length: u(b, 42),
                place,
            })
        })
        .collect()
}

/// Where one pack's entries are in the file.
#[derive(Clone, Debug)]
struct Listed {
    at: u64,
    entries: u32,
    vouched: bool,
    /// For a pack listed with different entries (only a damaged or forged index file does
    /// that): the entries the other listings added, each envelope once.
    union: Option<Box<Union>>,
}

/// What other listings of a pack added to its first, appended to the file as they come: each
/// listing costs the file only the envelopes it adds, and the lookup set keeps taking one in
/// linear time, however many listings one file repeats.
#[derive(Clone, Debug, Default)]
struct Union {
    /// Further runs of entries in the file.
    more: Vec<(u64, u32)>,
    /// Every envelope listed so far: place, id, offset.
    known: HashSet<(u8, BlobId, u32)>,
}

fn envelope_key(e: &PackEntry) -> (u8, BlobId, u32) {
    (e.place as u8, e.id, e.offset)
}

/// Every pack's entries, by pack id.
pub(crate) struct Listings {
    log: Log,
    /// Packs the index files list.
    packs: BTreeMap<PackId, Listed>,
    /// Condemned packs no index file lists, from their headers (unvouched).
    headers: BTreeMap<PackId, Listed>,
    /// Packs this prune wrote, in the order written.
    new: Vec<(PackId, Listed)>,
    /// Every index file is in ([`Listings::done_reading`]).
    read: bool,
}

impl Listings {
    pub fn new(dir: Option<PathBuf>) -> Listings {
        Listings {
            log: Log::new(dir, "prune's listing of the packs"),
            packs: BTreeMap::new(),
            headers: BTreeMap::new(),
            new: Vec::new(),
            read: false,
        }
    }

    /// Append entries; where they start, and how many.
    fn append(&mut self, entries: &[PackEntry]) -> Result<(u64, u32)> {
        let n = u32::try_from(entries.len())
            .map_err(|_| Error::Invalid("a pack listed with more than 2³² entries".into()))?;
        Ok((self.log.append(&encode(entries))?, n))
    }

    fn write(&mut self, entries: &[PackEntry], vouched: bool) -> Result<Listed> {
        let (at, entries) = self.append(entries)?;
        Ok(Listed {
            at,
            entries,
            vouched,
            union: None,
        })
    }

    fn read_run(&self, at: u64, n: u32) -> Result<Vec<PackEntry>> {
        decode(&self.log.read(at, n as usize * ENTRY)?)
    }

    fn read(&self, l: &Listed) -> Result<Vec<PackEntry>> {
        let mut entries = self.read_run(l.at, l.entries)?;
        for (at, n) in l.union.iter().flat_map(|u| &u.more) {
            entries.extend(self.read_run(*at, *n)?);
        }
        Ok(entries)
    }

    /// Take in a pack as an index file lists it (`vouched`: whether a full key signed the
    /// file). A pack a vouched file lists takes its entries from vouched files only; the
    /// listings of one kind are united (every entry any of them lists, each envelope once: a
    /// file that lists a pack with fewer entries, written by a stolen write-only key to hide
    /// a real copy, hides nothing).
    pub fn add_listed(&mut self, p: &IndexPack, vouched: bool) -> Result<()> {
        if self.read {
            return Err(Error::Invalid(
                "prune: a listing taken after every index file was read (a bug)".into(),
            ));
        }
        let mut union = match self.packs.get_mut(&p.id) {
            Some(l) if l.vouched && !vouched => return Ok(()),
            Some(l) if vouched == l.vouched => l.union.take(),
            // none yet, or a vouched listing replacing unvouched ones
            _ => {
                let l = self.write(&p.entries, vouched)?;
                self.packs.insert(p.id, l);
                return Ok(());
            }
        };
        if union.is_none() {
            // the second listing of a pack: the same entries again (a file superseded but not
            // yet deleted) cost one comparison
            let first = self.pack(&p.id)?.entries;
            if first == p.entries {
                return Ok(());
            }
            union = Some(Box::new(Union {
                more: Vec::new(),
                known: first.iter().map(envelope_key).collect(),
            }));
        }
        let mut u = union.unwrap_or_default();
        let mut added = Vec::new();
        for (e, members) in envelopes(&p.entries) {
            if u.known.insert(envelope_key(e)) {
                added.push(*e);
                added.extend(members.iter().copied());
            }
        }
        if !added.is_empty() {
            u.more.push(self.append(&added)?);
        }
        if let Some(l) = self.packs.get_mut(&p.id) {
            l.union = Some(u);
        }
        Ok(())
    }

    /// Once every index file is in: let go of the sets that united a pack's listings (only a
    /// damaged or forged file makes them, and they grow with what it lists).
    pub fn done_reading(&mut self) {
        self.read = true;
        for l in self.packs.values_mut() {
            if let Some(u) = &mut l.union {
                u.known = HashSet::new();
            }
        }
    }

    /// Replace a pack's listing by the entries prune read from the pack itself and verified.
    pub fn set_verified(&mut self, p: &PackId, entries: &[PackEntry]) -> Result<()> {
        let l = self.write(entries, true)?;
        self.packs.insert(*p, l);
        Ok(())
    }

    /// Take in a condemned pack no index file lists, from its header.
    pub fn add_header(&mut self, p: &PackId, entries: &[PackEntry]) -> Result<()> {
        let l = self.write(entries, false)?;
        self.headers.insert(*p, l);
        Ok(())
    }

    /// Whether an index file lists pack `p`.
    pub fn is_listed(&self, p: &PackId) -> bool {
        self.packs.contains_key(p)
    }

    /// Take in a pack this prune wrote.
    pub fn add_new(&mut self, p: &IndexPack) -> Result<()> {
        let l = self.write(&p.entries, true)?;
        self.new.push((p.id, l));
        Ok(())
    }

    /// The packs this prune wrote, in the order written, read one at a time.
    pub fn new_packs(&self) -> impl Iterator<Item = Result<IndexPack>> + '_ {
        self.new.iter().map(|(p, l)| {
            Ok(IndexPack {
                id: *p,
                entries: self.read(l)?,
            })
        })
    }

    /// Whether pack `p` is listed or taken from its header.
    pub fn knows(&self, p: &PackId) -> bool {
        self.packs.contains_key(p) || self.headers.contains_key(p)
    }

    /// The packs the index files list, in id order, with whether a vouched file lists them.
    pub fn packs(&self) -> impl Iterator<Item = (PackId, bool)> + '_ {
        self.packs.iter().map(|(p, l)| (*p, l.vouched))
    }

    pub fn len(&self) -> usize {
        self.packs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// The entries of a pack the index files list, or of a condemned pack from its header.
    pub fn entries(&self, p: &PackId) -> Result<Option<Vec<PackEntry>>> {
        match self.packs.get(p).or_else(|| self.headers.get(p)) {
            Some(l) => self.read(l).map(Some),
            None => Ok(None),
        }
    }

    /// A pack the index files list, with its entries.
    pub fn pack(&self, p: &PackId) -> Result<IndexPack> {
        match self.entries(p)? {
            Some(entries) => Ok(IndexPack { id: *p, entries }),
            None => Err(Error::Invalid(format!(
                "prune: pack {} is not in its listing (a bug)",
                p.short()
            ))),
        }
    }

    /// Every pack the index files list (in id order), then every condemned pack taken from
    /// its header, each with whether it is vouched for, read one at a time.
    pub fn all(&self) -> impl Iterator<Item = Result<(IndexPack, bool)>> + '_ {
        self.packs.iter().chain(&self.headers).map(|(p, l)| {
            Ok((
                IndexPack {
                    id: *p,
                    entries: self.read(l)?,
                },
                l.vouched,
            ))
        })
    }

    /// Whether the entries are in a file (not in memory).
    pub fn in_file(&self) -> bool {
        self.log.in_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_format::Id;

    fn entry(n: u8, place: Place, offset: u32) -> PackEntry {
        PackEntry {
            kind: if n.is_multiple_of(2) {
                BlobKind::Data
            } else {
                BlobKind::Tree
            },
            id: BlobId(Id([n; 32])),
            offset,
            length: 1000 + n as u32,
            raw_length: 2000 + n as u32,
            place,
        }
    }

    fn pack(tag: u8, entries: Vec<PackEntry>) -> IndexPack {
        IndexPack {
            id: PackId(Id([tag; 32])),
            entries,
        }
    }

    #[test]
    fn entries_read_back_as_written() {
        let all = vec![
            entry(1, Place::Own, 0),
            entry(2, Place::Bundle, 1000),
            entry(3, Place::Member, 0),
            entry(4, Place::Member, 77),
        ];
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        let mut bad = encode(&all);
        bad[ENTRY + 1] = 9;
        assert!(decode(&bad).is_err());
    }

    /// Per pack: vouched listings overrule unvouched ones whatever the order, listings of one
    /// kind are united, a verified listing replaces them, and headers stand apart.
    fn listings_keep_what_the_index_files_say_with(dir: Option<PathBuf>) {
        let mut l = Listings::new(dir);
        let (a, b, c) = (
            entry(1, Place::Own, 0),
            entry(2, Place::Own, 1001),
            entry(4, Place::Own, 2003),
        );
        // pack 1: unvouched first, then vouched: the vouched listing only
        l.add_listed(&pack(1, vec![a, c]), false).unwrap();
        l.add_listed(&pack(1, vec![a]), true).unwrap();
        l.add_listed(&pack(1, vec![b]), false).unwrap();
        // pack 2: two vouched listings that differ: united, each envelope once
        l.add_listed(&pack(2, vec![a]), true).unwrap();
        l.add_listed(&pack(2, vec![a, b]), true).unwrap();
        l.add_listed(&pack(2, vec![a]), true).unwrap();
        // pack 3: unvouched only, united
        l.add_listed(&pack(3, vec![c]), false).unwrap();
        l.add_listed(&pack(3, vec![a]), false).unwrap();
        l.add_header(&PackId(Id([9; 32])), &[b]).unwrap();
        assert_eq!(l.pack(&PackId(Id([1; 32]))).unwrap().entries, vec![a]);
        assert_eq!(l.pack(&PackId(Id([2; 32]))).unwrap().entries, vec![a, b]);
        assert_eq!(l.pack(&PackId(Id([3; 32]))).unwrap().entries, vec![c, a]);
        let vouched: Vec<(PackId, bool)> = l.packs().collect();
        assert_eq!(
            vouched,
            vec![
                (PackId(Id([1; 32])), true),
                (PackId(Id([2; 32])), true),
                (PackId(Id([3; 32])), false)
            ]
        );
        assert!(!l.is_listed(&PackId(Id([9; 32]))));
        assert_eq!(l.entries(&PackId(Id([9; 32]))).unwrap(), Some(vec![b]));
        l.set_verified(&PackId(Id([3; 32])), &[b]).unwrap();
        let all: Vec<(PackId, Vec<PackEntry>, bool)> = l
            .all()
            .map(|r| r.unwrap())
            .map(|(p, v)| (p.id, p.entries, v))
            .collect();
        assert_eq!(
            all,
            vec![
                (PackId(Id([1; 32])), vec![a], true),
                (PackId(Id([2; 32])), vec![a, b], true),
                (PackId(Id([3; 32])), vec![b], true),
                (PackId(Id([9; 32])), vec![b], false),
            ]
        );
        assert!(l.pack(&PackId(Id([5; 32]))).is_err());
    }

    /// One forged file that lists a pack 20,000 times, each time with one more envelope, costs
    /// the file each envelope once (not the whole union again each time), and the pack reads
    /// back with every envelope once.
    #[test]
    fn a_pack_listed_over_and_over_costs_each_envelope_once() {
        let mut l = Listings::new(None);
        let n = 20_000u32;
        for i in 1..=n {
            let mut e = entry(1, Place::Own, 0);
            e.offset = i;
            l.add_listed(&pack(1, vec![entry(1, Place::Own, 0), e]), false)
                .unwrap();
        }
        assert_eq!(l.log.len(), (n as u64 + 1) * ENTRY as u64);
        // the lookup set goes once every file is in; the listing stays whole
        l.done_reading();
        assert!(l
            .packs
            .values()
            .all(|p| p.union.as_ref().is_none_or(|u| u.known.is_empty())));
        assert!(l
            .add_listed(&pack(1, vec![entry(1, Place::Own, 0)]), false)
            .is_err());
        let got = l.pack(&PackId(Id([1; 32]))).unwrap().entries;
        assert_eq!(got.len(), n as usize + 1);
        assert!(got.iter().enumerate().all(|(i, e)| e.offset == i as u32));
    }

    #[test]
    fn listings_keep_what_the_index_files_say() {
        let dir = tempfile::tempdir().unwrap();
        listings_keep_what_the_index_files_say_with(Some(dir.path().to_path_buf()));
        listings_keep_what_the_index_files_say_with(None);
    }
}
