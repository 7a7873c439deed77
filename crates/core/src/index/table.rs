//! The index's sorted table of blobs, in memory or, past a memory budget, in a file.
//!
//! A table is every bulk-loaded blob sorted by id, one row per id (its primary location),
//! found through a directory on the ids' leading bits (blob ids are keyed hashes, evenly
//! spread). It is built by [`Builder`]: rows are gathered in memory up to the budget of a
//! [`Spill`]; past it, each full batch is sorted and written to a run file in the spill
//! directory, and the runs are merged into the table's file (an external merge sort). That
//! file is opened unlinked (`O_TMPFILE`): nothing is left behind, whatever ends the process.
//!
//! A table in a file costs ~4 bytes of directory per 4–8 rows in memory (8 MiB at 11 million
//! rows); a lookup reads one directory run of 4–8 rows (~200–400 bytes) with one `pread`, from
//! the page cache while memory allows. (Runs of ~32 rows made prune's 23 million lookups at
//! 11 million blobs spend a quarter of their time copying rows out of the page cache.)
//! The file is this process's own: a read error there (a failing disk) ends the process with
//! its message, as running out of memory would have.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use coffer_format::{BlobId, BlobKind, Id};

use crate::spill::Records;
use crate::{Error, Result};

/// The memory the table may take before it moves to a file, and where that file goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spill {
    dir: PathBuf,
    /// Rows gathered in memory at most (with the sort's scratch space, ~84 bytes each).
    max_rows: usize,
}

/// Bytes of memory one gathered row costs: the 56-byte entry and half that again while a
/// stable sort runs.
const ROW_COST: u64 = 84;

impl Spill {
    /// A budget of `memory` bytes for the table; past it, files in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, memory: u64) -> Spill {
        Spill {
            dir: dir.into(),
            max_rows: (memory / ROW_COST).max(1024) as usize,
        }
    }

    /// A budget counted in rows (tests: a handful of rows exercises every merge).
    #[cfg(test)]
    pub(crate) fn rows(dir: impl Into<PathBuf>, max_rows: usize) -> Spill {
        Spill {
            dir: dir.into(),
            max_rows: max_rows.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> Result<File> {
        crate::spill::unlinked_file(&self.dir)
    }
}

/// `Slot::in_bundle` of a blob in its own envelope.
pub(super) const OWN: u32 = u32::MAX;

/// Set in `Slot::pack` of a row an unvouched index file gave, until the build knows whether a
/// vouched file lists the same pack (then the row is dropped) or not (then the flag is
/// cleared). No pack has a position this high.
pub(super) const UNVOUCHED: u32 = 1 << 31;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Slot {
    pub pack: u32,
    pub kind: BlobKind,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub in_bundle: u32,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub id: BlobId,
    pub slot: Slot,
}

/// Bytes of a row in a run or table file: id, pack, kind, offset, length, raw length, place
/// in the bundle.
const ROW: usize = 32 + 4 + 1 + 4 * 4;

fn encode(e: &Entry, out: &mut [u8]) {
    out[..32].copy_from_slice(e.id.as_bytes());
    out[32..36].copy_from_slice(&e.slot.pack.to_le_bytes());
    out[36] = match e.slot.kind {
        BlobKind::Data => 0,
        BlobKind::Tree => 1,
    };
    out[37..41].copy_from_slice(&e.slot.offset.to_le_bytes());
    out[41..45].copy_from_slice(&e.slot.length.to_le_bytes());
    out[45..49].copy_from_slice(&e.slot.raw_length.to_le_bytes());
    out[49..53].copy_from_slice(&e.slot.in_bundle.to_le_bytes());
}

fn decode(b: &[u8]) -> Entry {
    let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    Entry {
        id: BlobId(Id(id)),
        slot: Slot {
            pack: u(32),
            kind: if b[36] == 0 {
                BlobKind::Data
            } else {
                BlobKind::Tree
            },
            offset: u(37),
            length: u(41),
            raw_length: u(45),
            in_bundle: u(49),
        },
    }
}

pub(crate) fn prefix(id: &BlobId, bits: u32) -> usize {
    let b = id.as_bytes();
    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) >> (32 - bits)) as usize
}

/// `floor(log2(n / per_slot))` bits, at least 1, at most 24 (a 64 MiB directory).
pub(crate) fn dir_bits(n: usize, per_slot: usize) -> u32 {
    let slots = (n / per_slot).max(2);
    (usize::BITS - 1 - slots.leading_zeros()).clamp(1, 24)
}

/// `dir[p]..dir[p + 1]`: the rows whose first `bits` bits are `p`, from per-prefix counts
/// (`counts[p + 1]`).
pub(crate) fn prefix_sums(counts: &mut [u32]) {
    let mut sum = 0;
    for d in counts.iter_mut() {
        sum += *d;
        *d = sum;
    }
}

/// Blobs sorted by id, one row each.
#[derive(Debug)]
pub(super) enum Table {
    Memory {
        rows: Vec<Entry>,
        dir: Vec<u32>,
        bits: u32,
    },
    File(FileTable),
}

impl Default for Table {
    fn default() -> Self {
        Table::Memory {
            rows: Vec::new(),
            dir: Vec::new(),
            bits: 0,
        }
    }
}

#[derive(Debug)]
pub(super) struct FileTable {
    file: File,
    len: usize,
    dir: Vec<u32>,
    bits: u32,
}

/// Rows per directory slot of a table in a file, at least (at most twice that on average).
const FILE_ROWS_PER_SLOT: usize = 4;

/// Rows read from one lookup's directory run at once; longer runs (only a hostile file's ids
/// crowd one prefix) are searched a row at a time.
const RUN_READ: usize = 128;

/// A run this short is read into a small buffer (a usual one; zeroing the large one for each
/// lookup showed in profiles).
const RUN_SMALL: usize = 24;

impl FileTable {
    fn read(&self, buf: &mut [u8], row: usize) {
        if let Err(e) = self.file.read_exact_at(buf, (row * ROW) as u64) {
            panic!("reading the index's table file failed: {e}");
        }
    }

    /// The row of blob `id`, with its slot.
    fn find(&self, id: &BlobId) -> Option<(usize, Slot)> {
        let p = prefix(id, self.bits);
        let (lo, hi) = (self.dir[p] as usize, self.dir[p + 1] as usize);
        let want = id.as_bytes().as_slice();
        let in_run = |buf: &mut [u8]| {
            self.read(buf, lo);
            let i = crate::spill::search(buf, ROW, want)?;
            Some((lo + i, decode(&buf[i * ROW..(i + 1) * ROW]).slot))
        };
        if hi - lo <= RUN_SMALL {
            return in_run(&mut [0u8; RUN_SMALL * ROW][..(hi - lo) * ROW]);
        }
        if hi - lo <= RUN_READ {
            return in_run(&mut [0u8; RUN_READ * ROW][..(hi - lo) * ROW]);
        }
        let (mut lo, mut hi) = (lo, hi);
        let mut row = [0u8; ROW];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            self.read(&mut row, mid);
            match row[..32].cmp(want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some((mid, decode(&row).slot)),
            }
        }
        None
    }

    /// [`FileTable::find`]'s rows for ids in ascending order: the table is read forward in
    /// chunks of ~64 KiB, each once, instead of one `pread` per id (prune looks up every blob
    /// of the repository twice: a syscall each was most of its time at 11 million blobs).
    fn rows_sorted(&self, ids: &[BlobId], out: &mut Vec<Option<usize>>) {
        let mut buf = vec![0u8; CHUNK_ROWS * ROW];
        let (mut start, mut end) = (0usize, 0usize); // the rows in `buf`
        for (i, id) in ids.iter().enumerate() {
            let p = prefix(id, self.bits);
            let (lo, hi) = (self.dir[p] as usize, self.dir[p + 1] as usize);
            if hi - lo > RUN_READ {
                out.push(self.find(id).map(|(row, _)| row));
                continue;
            }
            if lo < start || hi > end {
                // a chunk when the next id's run is in reach, else just this run (a sparse
                // batch, one pack's blobs, reads no more than single lookups would)
                let reach = (lo + CHUNK_ROWS).min(self.len);
                let dense = ids.get(i + 1).is_some_and(|next| {
                    let q = prefix(next, self.bits);
                    self.dir[q + 1] as usize <= reach
                });
                (start, end) = (lo, if dense { reach } else { hi });
                self.read(&mut buf[..(end - start) * ROW], start);
            }
            let run = &buf[(lo - start) * ROW..(hi - start) * ROW];
            out.push(crate::spill::search(run, ROW, id.as_bytes()).map(|i| lo + i));
        }
    }
}

/// Rows read at once by [`FileTable::rows_sorted`] (~64 KiB; more than [`RUN_READ`]).
const CHUNK_ROWS: usize = (64 << 10) / ROW;

impl Table {
    fn from_sorted(rows: Vec<Entry>) -> Self {
        if rows.is_empty() {
            return Table::default();
        }
        // about one slot per blob
        let bits = dir_bits(rows.len(), 1);
        let mut dir = vec![0u32; (1usize << bits) + 1];
        for e in &rows {
            dir[prefix(&e.id, bits) + 1] += 1;
        }
        prefix_sums(&mut dir);
        Table::Memory { rows, dir, bits }
    }

    pub fn len(&self) -> usize {
        match self {
            Table::Memory { rows, .. } => rows.len(),
            Table::File(t) => t.len,
        }
    }

    pub fn in_file(&self) -> bool {
        matches!(self, Table::File(_))
    }

    pub fn find(&self, id: &BlobId) -> Option<Slot> {
        self.find_row(id).map(|(_, s)| s)
    }

    /// The row of blob `id` (rows are numbered in id order from 0 to [`Table::len`]), with
    /// its slot.
    pub fn find_row(&self, id: &BlobId) -> Option<(usize, Slot)> {
        match self {
            Table::Memory { rows, dir, bits } => {
                if rows.is_empty() {
                    return None;
                }
                let p = prefix(id, *bits);
                let lo = dir[p] as usize;
                let run = &rows[lo..dir[p + 1] as usize];
                run.binary_search_by(|e| e.id.cmp(id))
                    .ok()
                    .map(|i| (lo + i, run[i].slot))
            }
            Table::File(t) => t.find(id),
        }
    }

    /// The rows of `ids`, which must be in ascending order, appended to `out` (one each, as
    /// [`Table::find_row`] gives them): for a table in a file, far fewer reads than a lookup
    /// each when the ids are many.
    pub fn rows_sorted(&self, ids: &[BlobId], out: &mut Vec<Option<usize>>) {
        debug_assert!(ids.windows(2).all(|w| w[0] <= w[1]));
        match self {
            Table::Memory { .. } => out.extend(ids.iter().map(|id| self.find_row(id).map(|(r, _)| r))),
            Table::File(t) => t.rows_sorted(ids, out),
        }
    }

    /// Every row, in id order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Entry> + '_> {
        match self {
            Table::Memory { rows, .. } => Box::new(rows.iter().copied()),
            Table::File(t) => Box::new(run_reader(&t.file, t.len).map(|r| match r {
                Ok(e) => e,
                Err(e) => panic!("reading the index's table file failed: {e}"),
            })),
        }
    }
}

/// Rows of a run or table file, in order.
type RunReader<'f> =
    std::iter::Map<Records<'f, ROW>, fn(std::io::Result<[u8; ROW]>) -> std::io::Result<Entry>>;

fn run_reader(file: &File, len: usize) -> RunReader<'_> {
    fn row(r: std::io::Result<[u8; ROW]>) -> std::io::Result<Entry> {
        r.map(|b| decode(&b))
    }
    Records::new(file, len).map(row as fn(_) -> _)
}

/// A sorted run written out: its file, row count, and how many merges made it (the runs of
/// a level are merged once there are [`FAN_IN`] of them in a row).
struct Run {
    file: File,
    len: usize,
    level: u32,
}

/// Runs merged at once: at most ~`FAN_IN` files open (and 64 KiB of buffer each) per level,
/// whatever the budget, and each row rewritten once per level (log₁₆ of the runs).
const FAN_IN: usize = 16;

/// The level of a finished table taken back in as the first run (never merged early).
const TABLE_LEVEL: u32 = u32::MAX;

/// The rows of `runs` in id order; among equal ids, the earlier run's first (the runs are
/// consecutive stretches of the rows seen, so this keeps the order seen).
struct Merged<'r> {
    readers: Vec<RunReader<'r>>,
    heap: BinaryHeap<Reverse<(BlobId, usize, Keyed)>>,
}

impl<'r> Merged<'r> {
    fn new(runs: &'r [Run]) -> std::io::Result<Self> {
        let mut m = Merged {
            readers: runs.iter().map(|r| run_reader(&r.file, r.len)).collect(),
            heap: BinaryHeap::with_capacity(runs.len()),
        };
        for i in 0..m.readers.len() {
            m.refill(i)?;
        }
        Ok(m)
    }

    fn refill(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(e) = self.readers[i].next() {
            let e = e?;
            self.heap.push(Reverse((e.id, i, Keyed(e))));
        }
        Ok(())
    }
}

impl Iterator for Merged<'_> {
    type Item = std::io::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((_, i, Keyed(e))) = self.heap.pop()?;
        Some(self.refill(i).map(|()| e))
    }
}

/// Gathers rows, in the order they are seen, into a new table.
pub(super) struct Builder {
    spill: Option<Spill>,
    rows: Vec<Entry>,
    runs: Vec<Run>,
    /// Rows taken so far (an upper bound of the table's length).
    taken: usize,
}

impl Builder {
    /// A builder whose first rows are those of `old` (so that they stay primary).
    pub fn new(spill: Option<Spill>, old: Table) -> Result<Builder> {
        let mut b = Builder {
            spill,
            rows: Vec::new(),
            runs: Vec::new(),
            taken: old.len(),
        };
        match old {
            Table::Memory { rows, .. } => b.rows = rows,
            Table::File(t) => b.runs.push(Run {
                file: t.file,
                len: t.len,
                level: TABLE_LEVEL,
            }),
        }
        b.spill_if_full()?;
        Ok(b)
    }

    pub fn push(&mut self, e: Entry) -> Result<()> {
        if self.rows.len() == self.rows.capacity() {
            if let Some(s) = &self.spill {
                // doubling, but never past the budget (plain doubling would overshoot it)
                let cap = s.max_rows.max(self.rows.len() + 1);
                let want = (self.rows.len() * 2).max(1024).min(cap);
                self.rows.reserve_exact(want - self.rows.len());
            }
        }
        self.rows.push(e);
        self.taken += 1;
        self.spill_if_full()
    }

    fn spill_if_full(&mut self) -> Result<()> {
        match &self.spill {
            Some(s) if self.rows.len() >= s.max_rows => self.write_run(),
            _ => Ok(()),
        }
    }

    fn write_run(&mut self) -> Result<()> {
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        if self.rows.is_empty() {
            return Ok(());
        }
        let io = |e| Error::io(spill.dir(), e);
        // stable: among equal ids, the order seen
        self.rows.sort_by_key(|e| e.id);
        let mut row = [0u8; ROW];
        let written = spill.file().and_then(|file| {
            let mut w = BufWriter::with_capacity(1 << 16, &file);
            for e in &self.rows {
                encode(e, &mut row);
                w.write_all(&row).map_err(io)?;
            }
            w.flush().map_err(io)?;
            drop(w);
            Ok(file)
        });
        let file = match written {
            Ok(f) => f,
            // A cache directory that cannot take the first file (not writable, full) costs
            // memory, not the run: until one is written, the table can stay in memory.
            Err(e) if self.runs.is_empty() => {
                tracing::warn!("index: keeping it all in memory, past --index-memory: {e}");
                self.spill = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.runs.push(Run {
            file,
            len: self.rows.len(),
            level: 0,
        });
        self.rows.clear();
        // the last FAN_IN runs of one level become one run of the next
        while self.runs.len() >= FAN_IN {
            let tail = &self.runs[self.runs.len() - FAN_IN..];
            let level = tail[0].level;
            if level == TABLE_LEVEL || tail.iter().any(|r| r.level != level) {
                break;
            }
            let file = spill.file()?;
            let mut w = BufWriter::with_capacity(1 << 16, &file);
            let mut len = 0;
            for e in Merged::new(tail).map_err(io)? {
                encode(&e.map_err(io)?, &mut row);
                w.write_all(&row).map_err(io)?;
                len += 1;
            }
            w.flush().map_err(io)?;
            drop(w);
            self.runs.truncate(self.runs.len() - FAN_IN);
            self.runs.push(Run {
                file,
                len,
                level: level + 1,
            });
        }
        Ok(())
    }

    /// The table: per id, rows of unvouched files dropped where `vouched` says a vouched file
    /// lists their pack (the flag cleared on the others); then the first row seen is primary,
    /// unless `added` holds the id (then every row is an alternative). Other rows go to `more`
    /// (unfiltered: the caller tidies it).
    pub fn finish(
        mut self,
        vouched: &[bool],
        added: &HashMap<BlobId, Slot, foldhash::fast::RandomState>,
        more: &mut HashMap<BlobId, Vec<Slot>, foldhash::fast::RandomState>,
    ) -> Result<Table> {
        let resolve = |mut e: Entry| -> Option<Entry> {
            if e.slot.pack & UNVOUCHED != 0 {
                e.slot.pack &= !UNVOUCHED;
                if vouched[e.slot.pack as usize] {
                    return None;
                }
            }
            Some(e)
        };
        if self.runs.is_empty() {
            let mut rows = std::mem::take(&mut self.rows);
            rows.retain_mut(|e| match resolve(*e) {
                Some(r) => {
                    *e = r;
                    true
                }
                None => false,
            });
            rows.sort_by_key(|e| e.id);
            let mut groups = Groups::new(added, more);
            rows.retain(|e| groups.take(*e).is_some());
            rows.shrink_to_fit();
            return Ok(Table::from_sorted(rows));
        }
        self.write_run()?;
        let Some(spill) = self.spill.take() else {
            unreachable!("runs are written only with a spill directory");
        };
        let io = |e| Error::io(spill.dir(), e);
        let bits = dir_bits(self.taken, FILE_ROWS_PER_SLOT);
        let mut dir = vec![0u32; (1usize << bits) + 1];
        let file = spill.file()?;
        let mut w = BufWriter::with_capacity(1 << 16, &file);
        let mut len = 0usize;
        let mut row = [0u8; ROW];
        let mut groups = Groups::new(added, more);
        for e in Merged::new(&self.runs).map_err(io)? {
            let Some(e) = resolve(e.map_err(io)?) else {
                continue;
            };
            if let Some(r) = groups.take(e) {
                encode(&r, &mut row);
                w.write_all(&row).map_err(io)?;
                dir[prefix(&r.id, bits) + 1] += 1;
                len += 1;
            }
        }
        w.flush().map_err(io)?;
        drop(w);
        prefix_sums(&mut dir);
        tracing::debug!(
            target: "coffer_index",
            "index table of {len} blobs in a file under {} ({} sorted runs merged last)",
            spill.dir().display(),
            self.runs.len()
        );
        Ok(Table::File(FileTable { file, len, dir, bits }))
    }
}

/// An entry carried through the merge heap, ordered by the id and run beside it only.
struct Keyed(Entry);

impl PartialEq for Keyed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Keyed {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Rows in id order, each id's rows in the order seen, turned into table rows: the first of
/// an id is primary unless `added` has the id; every other goes to `more`.
struct Groups<'a> {
    added: &'a HashMap<BlobId, Slot, foldhash::fast::RandomState>,
    more: &'a mut HashMap<BlobId, Vec<Slot>, foldhash::fast::RandomState>,
    /// The current id and its primary location.
    current: Option<(BlobId, Slot)>,
}

impl<'a> Groups<'a> {
    fn new(
        added: &'a HashMap<BlobId, Slot, foldhash::fast::RandomState>,
        more: &'a mut HashMap<BlobId, Vec<Slot>, foldhash::fast::RandomState>,
    ) -> Self {
        Groups {
            added,
            more,
            current: None,
        }
    }

    fn take(&mut self, e: Entry) -> Option<Entry> {
        if let Some((id, primary)) = self.current.filter(|(id, _)| *id == e.id) {
            if primary != e.slot {
                self.more.entry(id).or_default().push(e.slot);
            }
            return None;
        }
        match self.added.get(&e.id) {
            Some(primary) => {
                self.current = Some((e.id, *primary));
                if *primary != e.slot {
                    self.more.entry(e.id).or_default().push(e.slot);
                }
                None
            }
            None => {
                self.current = Some((e.id, e.slot));
                Some(e)
            }
        }
    }
}
