//! The blobs a backup run has queued: its deduplication within the run, of blobs that are not
//! in the index yet.
//!
//! Each blob is kept as 128 bits of a keyed hash of its id under a key drawn at random for
//! this run: half the memory of whole ids. Nobody knows the run's key, not even a holder of
//! the repository's keys, so two blobs cannot be aimed at one value: they share it by chance
//! only, with probability about n²/2¹²⁹ (10⁻²⁵ at n = 11 million). (Truncating the ids
//! themselves would let a stolen write-only key, which holds the id key, search ~2⁶⁴ hashes
//! for two chunks that collide and plant them where a full key's backup reads them.) Had it
//! happened, the second blob would be missing from storage, which `check` reports as a tree
//! referencing an unknown blob. The index, prune and check keep whole ids.
//!
//! The newest values are in a hash set. Given a spill directory, a full set (2¹⁹ values,
//! ~18 MiB) is sorted into an unlinked file there, kept in memory only as a Bloom filter
//! (~10 bits a value, ~1 % false positives) and a directory of ~1 slot per 64 values; files
//! of similar size are merged, so there are at most ~log₂(n / 2¹⁹) of them. A value not in
//! the run costs a probe of each filter; one the filter lets through costs one `pread` of
//! ~1 KiB. A first backup of 11 million small files keeps ~2 bytes a blob in memory instead
//! of ~30.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use coffer_format::BlobId;

use crate::{Error, Result};

/// Values kept in the hash set before it goes to a file.
const RECENT: usize = 1 << 19;

/// Values per directory slot of a file, on average.
const PER_SLOT: usize = 64;

/// Bits of Bloom filter per value.
const BLOOM_BITS: usize = 10;

/// The run's set of queued blobs.
pub(crate) struct RunSet {
    key: [u8; 32],
    recent: HashSet<u128, foldhash::fast::RandomState>,
    max_recent: usize,
    /// Where full sets go (none: the set stays in memory).
    dir: Option<PathBuf>,
    files: Vec<Frozen>,
}

impl RunSet {
    /// A set that spills to unlinked files in `dir`, if given.
    pub fn new(dir: Option<PathBuf>) -> RunSet {
        Self::with_limit(dir, RECENT)
    }

    fn with_limit(dir: Option<PathBuf>, max_recent: usize) -> RunSet {
        let mut key = [0u8; 32];
        crate::crypto::random_bytes(&mut key);
        RunSet {
            key,
            recent: HashSet::default(),
            max_recent,
            dir,
            files: Vec::new(),
        }
    }

    fn key(&self, id: &BlobId) -> u128 {
        let h = blake3::keyed_hash(&self.key, id.as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.as_bytes()[..16]);
        u128::from_le_bytes(b)
    }

    fn holds(&self, k: u128) -> Result<bool> {
        if self.recent.contains(&k) {
            return Ok(true);
        }
        for f in &self.files {
            if f.contains(k)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Add blob `id`; whether it was new to the run.
    pub fn insert(&mut self, id: &BlobId) -> Result<bool> {
        let k = self.key(id);
        // the files first: a filter says no to a new value without touching memory much, and
        // then the set is probed once (a frozen value is never in the set again)
        for f in &self.files {
            if f.contains(k)? {
                return Ok(false);
            }
        }
        if !self.recent.insert(k) {
            return Ok(false);
        }
        if self.recent.len() >= self.max_recent {
            self.freeze()?;
        }
        Ok(true)
    }

    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        self.holds(self.key(id))
    }

    /// The hash set sorted into a file; then files of similar size merged.
    fn freeze(&mut self) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut values: Vec<u128> = self.recent.drain().collect();
        values.sort_unstable();
        let mut new = match Frozen::write(dir, values.len(), values.iter().copied().map(Ok)) {
            Ok(f) => f,
            // A cache directory that cannot take the first file (not writable, full) costs
            // memory, not the run.
            Err(e) if self.files.is_empty() => {
                tracing::warn!("backup: keeping the set of new blobs in memory: {e}");
                self.recent.extend(values);
                self.dir = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        drop(values);
        // (the set's table is kept: the next one fills the same space)
        while let Some(last) = self.files.last() {
            if last.len > new.len * 2 {
                break;
            }
            let Some(older) = self.files.pop() else { break };
            let merged = Merge {
                a: older.values(),
                b: new.values(),
                next_a: None,
                next_b: None,
            };
            new = Frozen::write(dir, older.len + new.len, merged)?;
        }
        self.files.push(new);
        Ok(())
    }

    /// Files the set went to so far.
    #[cfg(test)]
    fn file_count(&self) -> usize {
        self.files.len()
    }
}

/// Sorted values in an unlinked file, with their filter and directory.
struct Frozen {
    file: File,
    dir_path: PathBuf,
    len: usize,
    /// Blocks of 512 bits.
    bloom: Vec<[u64; 8]>,
    /// `slots[p]..slots[p + 1]`: the values whose first `bits` bits are `p`.
    slots: Vec<u32>,
    bits: u32,
}

fn io(dir: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(dir, e)
}

impl Frozen {
    /// `len` values, ascending and distinct, into a new file in `dir`.
    fn write(
        dir: &std::path::Path,
        len: usize,
        values: impl Iterator<Item = Result<u128>>,
    ) -> Result<Frozen> {
        let file = crate::spill::unlinked_file(dir)?;
        let blocks = (len * BLOOM_BITS).div_ceil(512).max(1);
        let slots_n = (len / PER_SLOT).max(2);
        let bits = (usize::BITS - 1 - slots_n.leading_zeros()).clamp(1, 24);
        let mut f = Frozen {
            file,
            dir_path: dir.to_path_buf(),
            len: 0,
            bloom: vec![[0u64; 8]; blocks],
            slots: vec![0u32; (1usize << bits) + 1],
            bits,
        };
        let mut w = BufWriter::with_capacity(1 << 16, &f.file);
        for v in values {
            let v = v?;
            w.write_all(&v.to_be_bytes()).map_err(io(dir))?;
            let (block, probes) = probes(f.bloom.len(), v);
            for (word, bit) in probes {
                f.bloom[block][word] |= 1 << bit;
            }
            let slot = f.slot(v);
            f.slots[slot + 1] += 1;
            f.len += 1;
        }
        w.flush().map_err(io(dir))?;
        drop(w);
        let mut sum = 0;
        for s in f.slots.iter_mut() {
            sum += *s;
            *s = sum;
        }
        Ok(f)
    }

    fn slot(&self, v: u128) -> usize {
        (v >> (128 - self.bits)) as usize
    }

    fn contains(&self, v: u128) -> Result<bool> {
        let (block, mut probes) = probes(self.bloom.len(), v);
        if !probes.all(|(word, bit)| self.bloom[block][word] & (1 << bit) != 0) {
            return Ok(false);
        }
        let p = self.slot(v);
        let (lo, hi) = (self.slots[p] as usize, self.slots[p + 1] as usize);
        // a run longer than planned (values are uniform, so rarely) is read a part at a time
        let mut buf = vec![0u8; 16 * (hi - lo).min(4096)];
        let mut at = lo;
        while at < hi {
            let n = (hi - at).min(4096);
            let buf = &mut buf[..16 * n];
            self.file
                .read_exact_at(buf, (at * 16) as u64)
                .map_err(io(&self.dir_path))?;
            if crate::spill::search(buf, 16, &v.to_be_bytes()).is_some() {
                return Ok(true);
            }
            at += n;
        }
        Ok(false)
    }

    /// The values, in order.
    fn values(&self) -> impl Iterator<Item = Result<u128>> + '_ {
        crate::spill::Records::<16>::new(&self.file, self.len)
            .map(|r| r.map(u128::from_be_bytes).map_err(io(&self.dir_path)))
    }
}

/// The filter block of `v` among `blocks` and its 7 bits there (the values are uniform:
/// their own bits are the hash).
fn probes(blocks: usize, v: u128) -> (usize, impl Iterator<Item = (usize, u32)>) {
    let block = ((v as u64 as u128 * blocks as u128) >> 64) as usize;
    let high = (v >> 64) as u64;
    let bits = (0..7).map(move |i| {
        let b = (high >> (i * 9)) as u32 & 511;
        ((b / 64) as usize, b % 64)
    });
    (block, bits)
}

/// Two ascending runs of distinct values, merged (the runs share none: a value is frozen once).
struct Merge<A, B> {
    a: A,
    b: B,
    next_a: Option<u128>,
    next_b: Option<u128>,
}

impl<A: Iterator<Item = Result<u128>>, B: Iterator<Item = Result<u128>>> Iterator for Merge<A, B> {
    type Item = Result<u128>;

    fn next(&mut self) -> Option<Result<u128>> {
        if self.next_a.is_none() {
            match self.a.next() {
                Some(Ok(v)) => self.next_a = Some(v),
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
        }
        if self.next_b.is_none() {
            match self.b.next() {
                Some(Ok(v)) => self.next_b = Some(v),
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
        }
        match (self.next_a, self.next_b) {
            (Some(a), Some(b)) if a <= b => self.next_a.take().map(Ok),
            (Some(_), Some(_)) => self.next_b.take().map(Ok),
            (Some(_), None) => self.next_a.take().map(Ok),
            (None, Some(_)) => self.next_b.take().map(Ok),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> BlobId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        BlobId(coffer_format::Id(b))
    }

    /// The set answers for whole ids: a blob queued once is not new again, any other id is,
    /// and two runs hash under different keys.
    #[test]
    fn the_dedup_set_knows_what_the_run_queued() {
        let mut s = RunSet::new(None);
        assert!(s.insert(&id(1)).unwrap());
        assert!(!s.insert(&id(1)).unwrap() && s.contains(&id(1)).unwrap());
        assert!(!s.contains(&id(2)).unwrap() && s.insert(&id(2)).unwrap());
        // ids equal in their first 128 bits are still two blobs
        let mut near = [0u8; 32];
        near[0] = 1;
        near[31] = 9;
        assert!(s.insert(&BlobId(coffer_format::Id(near))).unwrap());
        assert_ne!(s.key(&id(1)), RunSet::new(None).key(&id(1)));
    }

    /// Spilled to files of 100 values each and merged as they come, the set still knows every
    /// value it took and no other, and leaves nothing in its directory.
    #[test]
    fn a_set_in_files_answers_as_one_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RunSet::with_limit(Some(dir.path().to_path_buf()), 100);
        for n in 0..5000 {
            assert!(s.insert(&id(n * 2)).unwrap(), "{n}");
        }
        // 50 files of 100 merged by size: a handful left
        assert!(s.file_count() >= 2 && s.file_count() <= 8, "{}", s.file_count());
        assert_eq!(
            s.files.iter().map(|f| f.len).sum::<usize>() + s.recent.len(),
            5000
        );
        for n in 0..10_000 {
            assert_eq!(s.contains(&id(n)).unwrap(), n % 2 == 0, "{n}");
        }
        for n in 0..5000 {
            assert!(!s.insert(&id(n * 2)).unwrap(), "{n}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A directory that cannot take the files keeps the set in memory, whole.
    #[test]
    fn a_set_that_cannot_spill_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let mut s = RunSet::with_limit(Some(file.join("sub")), 100);
        for n in 0..1000 {
            assert!(s.insert(&id(n)).unwrap(), "{n}");
        }
        assert_eq!(s.file_count(), 0);
        assert_eq!(s.recent.len(), 1000);
        assert!((0..1000).all(|n| s.contains(&id(n)).unwrap()));
        assert!(!s.contains(&id(1000)).unwrap());
    }
}
