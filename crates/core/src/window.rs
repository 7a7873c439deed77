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
}

impl<'a> WindowReader<'a> {
    /// Coalescing is on when the repository's backend is latency-bound.
    pub fn new(repo: &'a IndexedRepository) -> WindowReader<'a> {
        WindowReader {
            enabled: repo.backend().latency_bound(),
            repo,
            state: Mutex::new(State::default()),
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
            || loc.length as u64 > WINDOW / 4
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
