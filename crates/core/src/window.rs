//! Coalesced blob reads for backends where every request costs a round trip (S3, SFTP, a
//! coffer server). A restore reads files in tree order, and a backup stored their blobs in
//! that order, so neighbouring small files sit next to each other in a pack: one read of an
//! aligned window of the pack serves many of them. Windows are kept in a small bounded
//! cache (at most `CAP` × `WINDOW` bytes), fetched once however many threads want one, and
//! every blob taken from a window is verified as a direct read would be. Large blobs and
//! blobs that straddle a window edge are read directly.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use coffer_format::{BlobId, BlobKind, PackId};

use crate::backend::FileKind;
use crate::error::Result;
use crate::repo::IndexedRepository;

/// Bytes per window.
pub const WINDOW: u64 = 4 << 20;
/// Windows kept at most (so at most 64 MiB).
const CAP: usize = 16;
/// Blobs up to this long come through a window. A longer one is read alone: one request
/// is cheap next to its transfer, and a window would also fetch neighbours that are read
/// on their own (bundles, other large blobs). With every blob of up to 1 MiB through a
/// window, a restore of the benchmark's 821 MiB set from a coffer server read 499 MB for
/// 437 MB of packs, 9 windows of 4 MiB overlapping bundles read directly.
const SMALL: u64 = 256 << 10;

type Cell = Arc<OnceLock<Option<Arc<Vec<u8>>>>>;

#[derive(Default)]
struct State {
    windows: HashMap<(PackId, u64), Cell>,
    order: VecDeque<(PackId, u64)>,
    sizes: HashMap<PackId, Option<u64>>,
}

pub struct WindowReader<'a> {
    repo: &'a IndexedRepository,
    enabled: bool,
    state: Mutex<State>,
    /// Bytes asked for ahead by every file's [`Blobs`] together (see [`AHEAD_TOTAL`]).
    ahead: std::sync::atomic::AtomicU64,
}

impl<'a> WindowReader<'a> {
    /// Coalescing is on when the repository's backend is latency-bound.
    pub fn new(repo: &'a IndexedRepository) -> WindowReader<'a> {
        WindowReader {
            enabled: repo.backend().latency_bound(),
            repo,
            state: Mutex::new(State::default()),
            ahead: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pack_size(&self, pack: &PackId) -> Option<u64> {
        if let Some(s) = self.state().sizes.get(pack) {
            return *s;
        }
        let s = self.repo.backend().size(FileKind::Pack, &pack.to_hex()).ok();
        self.state().sizes.insert(*pack, s);
        s
    }

    /// The window `idx` of `pack`, fetched once.
    fn window(&self, pack: &PackId, idx: u64) -> Option<Arc<Vec<u8>>> {
        let cell: Cell = {
            let mut st = self.state();
            let key = (*pack, idx);
            match st.windows.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c: Cell = Arc::new(OnceLock::new());
                    st.windows.insert(key, c.clone());
                    st.order.push_back(key);
                    while st.order.len() > CAP {
                        if let Some(old) = st.order.pop_front() {
                            st.windows.remove(&old);
                        }
                    }
                    c
                }
            }
        };
        cell.get_or_init(|| {
            let size = self.pack_size(pack)?;
            let start = idx * WINDOW;
            let end = (start + WINDOW).min(size);
            if end <= start {
                return None;
            }
            self.repo
                .backend()
                .read_range(FileKind::Pack, &pack.to_hex(), start, (end - start) as u32)
                .ok()
                .map(Arc::new)
        })
        .clone()
    }

    /// A data blob, verified, through a window when that saves a request.
    pub fn read_data(&self, id: &BlobId) -> Result<Vec<u8>> {
        if !self.enabled {
            return self.repo.read_blob(id, BlobKind::Data);
        }
        let loc = self.repo.locate(id)?;
        let (start, end) = (loc.offset as u64, loc.offset as u64 + loc.length as u64);
        let idx = start / WINDOW;
        // a blob in a bundle: one read of the bundle serves its neighbours (the repository
        // keeps the last bundles decoded)
        if loc.kind != BlobKind::Data
            || loc.in_bundle.is_some()
            || loc.length as u64 > SMALL
            || end > (idx + 1) * WINDOW
        {
            return self.repo.read_blob(id, BlobKind::Data);
        }
        match self.window(&loc.pack, idx) {
            Some(w) if (end - idx * WINDOW) as usize <= w.len() => {
                let at = (start - idx * WINDOW) as usize;
                let sealed = w[at..at + loc.length as usize].to_vec();
                let what = format!("data blob {} in pack {}", id.short(), loc.pack.short());
                // one that does not verify: through the index's other locations, if any
                self.repo.decode_blob_bytes(id, &loc, sealed, &what).or_else(|e| {
                    match self.repo.index().locations(id).len() {
                        1 => Err(e),
                        _ => self.repo.read_blob(id, BlobKind::Data),
                    }
                })
            }
            // a window that could not be read: the blob on its own (and its error, if any)
            _ => self.repo.read_blob(id, BlobKind::Data),
        }
    }
}

/// Bytes a file's writer may have read ahead of what it has written (its blobs' lengths).
const AHEAD_BYTES: u64 = 16 << 20;
/// Blobs a file's writer may have read ahead.
const AHEAD_BLOBS: usize = 8;
/// Bytes every file's writer together may have read ahead: there are 4 writers per core, so
/// [`AHEAD_BYTES`] each would be 1 GiB on a 16-core machine restoring large files to a slow
/// disk. The blob a writer needs next is always asked for, whatever this says.
const AHEAD_TOTAL: u64 = 64 << 20;

/// One blob read asked of the read-ahead threads.
pub struct Fetch {
    id: BlobId,
    reply: crossbeam_channel::Sender<Result<Vec<u8>>>,
}

impl WindowReader<'_> {
    /// Serve [`Fetch`]es until every sender is gone (run on a few threads of the caller's
    /// scope, see [`Blobs`]).
    pub fn serve(&self, fetches: crossbeam_channel::Receiver<Fetch>) {
        for f in fetches {
            // (a writer that gave up no longer listens)
            let _ = f.reply.send(self.read_data(&f.id));
        }
    }
}

/// A file's blobs in order. On a latency-bound backend the next ones are read by the
/// read-ahead threads while the caller writes the current one, so a large file costs its
/// transfer time, not one round trip per blob: a restore of one 256 MiB file from a remote
/// repository otherwise waited for each of its ~2 MiB reads in turn. Reads ahead are bounded
/// by [`AHEAD_BLOBS`] and [`AHEAD_BYTES`] per file and by [`AHEAD_TOTAL`] for all files.
pub struct Blobs<'r, 'a> {
    reader: &'r WindowReader<'a>,
    ids: &'r [BlobId],
    fetch: Option<&'r crossbeam_channel::Sender<Fetch>>,
    /// The next blob to hand out, and the next to ask for.
    next: usize,
    asked: usize,
    pending: VecDeque<(crossbeam_channel::Receiver<Result<Vec<u8>>>, u64)>,
    pending_bytes: u64,
}

impl<'r, 'a> Blobs<'r, 'a> {
    /// `fetch`: the read-ahead threads' queue (None: each blob is read when it is wanted).
    pub fn new(
        reader: &'r WindowReader<'a>,
        ids: &'r [BlobId],
        fetch: Option<&'r crossbeam_channel::Sender<Fetch>>,
    ) -> Self {
        // a file of one blob gains nothing from another thread
        let fetch = fetch.filter(|_| reader.enabled && ids.len() > 1);
        Blobs {
            reader,
            ids,
            fetch,
            next: 0,
            asked: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
        }
    }

    /// Ask for blobs ahead while the bounds allow (always at least the next one).
    fn ask(&mut self, fetch: &crossbeam_channel::Sender<Fetch>) {
        use std::sync::atomic::Ordering::Relaxed;
        while self.asked < self.ids.len()
            && (self.pending.is_empty()
                || (self.pending.len() < AHEAD_BLOBS && self.pending_bytes < AHEAD_BYTES))
        {
            let id = self.ids[self.asked];
            let len = self
                .reader
                .repo
                .locate(&id)
                .map_or(WINDOW, |l| l.raw_length as u64);
            let before = self.reader.ahead.fetch_add(len, Relaxed);
            if !self.pending.is_empty() && before + len > AHEAD_TOTAL {
                self.reader.ahead.fetch_sub(len, Relaxed);
                return; // the others have read far enough ahead for now
            }
            let (reply, answer) = crossbeam_channel::bounded(1);
            if fetch.send(Fetch { id, reply }).is_err() {
                self.reader.ahead.fetch_sub(len, Relaxed);
                return; // the threads are gone: the rest is read here
            }
            self.pending.push_back((answer, len));
            self.pending_bytes += len;
            self.asked += 1;
        }
    }
}

impl Drop for Blobs<'_, '_> {
    /// A file given up part-way (a read or write error) gives back what it asked ahead.
    fn drop(&mut self) {
        self.reader
            .ahead
            .fetch_sub(self.pending_bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Iterator for Blobs<'_, '_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if self.next >= self.ids.len() {
            return None;
        }
        if let Some(fetch) = self.fetch {
            self.ask(fetch);
            if let Some((answer, len)) = self.pending.pop_front() {
                self.pending_bytes -= len;
                self.reader
                    .ahead
                    .fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
                let id = self.ids[self.next];
                self.next += 1;
                // a read-ahead thread that went away without answering: read it here
                return Some(answer.recv().unwrap_or_else(|_| self.reader.read_data(&id)));
            }
        }
        let id = self.ids[self.next];
        self.next += 1;
        self.asked = self.asked.max(self.next);
        Some(self.reader.read_data(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBackend;
    use crate::repo::{InitOptions, Repository};
    use std::sync::atomic::Ordering::Relaxed;

    /// A file's blobs come back complete and in order through the read-ahead threads, and
    /// what was asked ahead is given back, whether the file is read to its end or dropped
    /// part-way.
    #[test]
    fn blobs_read_ahead_in_order_and_give_back_their_budget() {
        let repo = Repository::init(Arc::new(MemoryBackend::remote()), b"pw", &InitOptions::default())
            .unwrap()
            .load_index()
            .unwrap();
        let mut repo = repo;
        // 24 distinct blobs of 1.5 to 3 MiB (some alone, some in bundles), one repeated
        let mut blobs: Vec<Vec<u8>> = (0..24)
            .map(|i| {
                let mut b = vec![0u8; (3 << 19) + i * 70_000];
                crate::crypto::random_bytes(&mut b);
                b
            })
            .collect();
        blobs.push(blobs[3].clone());
        let ids = crate::packer::store_blobs(
            &mut repo,
            blobs.iter().map(|b| (BlobKind::Data, b.clone())).collect(),
        )
        .unwrap();
        let reader = WindowReader::new(&repo);
        assert!(reader.enabled);
        std::thread::scope(|s| {
            let (ftx, frx) = crossbeam_channel::bounded::<Fetch>(4);
            for _ in 0..4 {
                let frx = frx.clone();
                let reader = &reader;
                s.spawn(move || reader.serve(frx));
            }
            let got: Vec<Vec<u8>> = Blobs::new(&reader, &ids, Some(&ftx))
                .map(|b| b.unwrap())
                .collect();
            assert!(got == blobs, "blobs differ or come out of order");
            assert_eq!(reader.ahead.load(Relaxed), 0, "budget kept after a whole file");
            let mut part = Blobs::new(&reader, &ids, Some(&ftx));
            for want in blobs.iter().take(3) {
                assert!(&part.next().unwrap().unwrap() == want);
            }
            assert!(reader.ahead.load(Relaxed) > 0, "nothing read ahead");
            assert!(reader.ahead.load(Relaxed) <= AHEAD_BYTES + (4 << 20));
            drop(part);
            assert_eq!(reader.ahead.load(Relaxed), 0, "budget kept after a file given up");
            drop(ftx);
        });
    }
}
