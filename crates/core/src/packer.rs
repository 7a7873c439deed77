//! The write side of the blob pipeline: compress on worker threads, then seal, pack and store.
//!
//! ```text
//! caller ──Job──▶ [workers: compress, verify] ──Encoded──▶ [packer: seal into the pack]
//!    ▲                                                          │           │
//!    └──────────────── chunk buffers ◀──────────────────────────┘        pack
//!                                          pack buffers ◀── [writers: store] ◀┘
//! ```
//! Workers bundle data blobs: they wait in the worker's bundle buffer, across batches, until
//! [`BUNDLE_TARGET`] bytes have come (or the input ends), and are compressed and sealed
//! together as one envelope (docs/FORMAT.md, "Bundles"); trees, and data blobs larger than
//! that, are compressed on their own.
//! Channels are bounded, so a slow disk or network slows the caller down instead of letting
//! memory grow. Blobs travel in batches (up to [`BATCH_BYTES`] or [`BATCH_BLOBS`]): a tree of
//! small files costs one hand-off, and one thread wake-up, per batch rather than per file.
//! A blob's bytes stay in the chunk buffer it came in until the packer seals them straight
//! into its pack buffer; both kinds of buffer go round instead of being freed, so the
//! allocator sees the same few large buffers for the whole run (freed on another thread than
//! allocated them, they would fragment glibc's per-thread arenas, and peak RSS with them).
//! Sealing there is cheap next to the workers' zstd (AES-256-GCM runs at ~8 GiB/s per core).
//! Packs are written before the index files that list them, and index files are written every
//! [`INDEX_EVERY`] packs (or [`INDEX_ENTRIES`] entries), so an interrupted run leaves its finished packs indexed and a rerun
//! does not upload them again.

use std::cell::RefCell;
use std::ops::Range;
use std::thread::{Scope, ScopedJoinHandle};

use coffer_format::{
    bundle_id_input, encode_header, BlobId, BlobKind, IndexFile, IndexId, IndexPack, ObjectKind, PackEntry,
    PackId, Place,
};
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::backend::FileKind;
use crate::compress::{BlobEncoder, CompressionSpec};
use crate::crypto::{random_bytes, storage_id_parts, MasterKey, MAX_SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::repo::{IndexedRepository, Repository};

/// Write an index file after this many new packs,
const INDEX_EVERY: usize = 32;
/// or once the packs not yet listed hold this many entries: a pack of small files' bundles
/// holds ~100k, and an index file is decoded whole when read (~80 bytes per entry), so a file
/// of 32 such packs would cost every later run ~250 MB while it is read.
pub(crate) const INDEX_ENTRIES: usize = 65_536;

/// A batch closes when the buffers it holds reach this many bytes (their capacity, which is
/// what they cost in memory)...
const BATCH_BYTES: usize = 256 << 10;
/// ...or when it holds this many blobs.
const BATCH_BLOBS: usize = 128;
/// Chunk buffers up to this capacity are recycled through the small pool, larger ones through
/// the large pool, so a small file's copy never holds a buffer sized for a 4 MiB chunk.
const SMALL_BUF: usize = 64 << 10;
/// Data blobs are bundled: compressed together with their neighbours in one envelope, up to
/// this many bytes, zstd level 3's window. Compressed alone, a small file gets little from zstd,
/// which has no history to match against (on the benchmark's system files under 64 KiB, 562
/// MiB in 109k files: one frame per file stored 231 MiB, bundles of 256 KiB 140 MiB, of 1 MiB
/// 129 MiB), and a 512 KiB chunk of text less than a 2 MiB run does (its 1 GiB log file: 36.5 %
/// against 35.0 %). Deduplication stays per blob; a read decodes the whole bundle.
const BUNDLE_TARGET: usize = 2 << 20;

struct Job {
    kind: BlobKind,
    id: BlobId,
    data: Vec<u8>,
}

/// Blobs submitted but not yet handed to a worker.
#[derive(Default)]
struct Pending {
    jobs: Vec<Job>,
    bytes: usize,
}

/// Emptied chunk buffers on their way back to the caller, bundle buffers to the workers.
#[derive(Clone)]
struct Recycle {
    small: Sender<Vec<u8>>,
    large: Sender<Vec<u8>>,
    bundles: Sender<Vec<u8>>,
}

impl Recycle {
    /// The buffer of a blob now sealed in its pack.
    fn give_back(&self, b: Encoded) {
        if b.members.is_empty() {
            self.give(b.data);
        } else {
            let _ = self.bundles.try_send(b.data); // a full pool frees the buffer
        }
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let pool = if buf.capacity() <= SMALL_BUF {
            &self.small
        } else {
            &self.large
        };
        let _ = pool.try_send(buf); // a full pool frees the buffer
    }
}

/// A blob compressed by a worker, on its way to the packer, which seals it into its pack.
struct Encoded {
    kind: BlobKind,
    id: BlobId,
    raw_len: u32,
    code: u8,
    /// The payload, in the chunk buffer the blob came in (goes back to the caller once
    /// packed), or for a bundle in one of the bundle buffers (back to the workers).
    data: Vec<u8>,
    /// A bundle's members (id, length) in order, their bytes together `raw_len` long; empty
    /// for a blob in its own envelope. The packer gives the bundle its id.
    members: Vec<(BlobId, u32)>,
}

/// A blob or bundle in a pack being filled; its envelope follows the previous one's in the
/// buffer.
struct Sealed {
    kind: BlobKind,
    id: BlobId,
    raw_len: u32,
    len: u32,
    members: Vec<(BlobId, u32)>,
}

/// An envelope sealed in another pack, to be copied into a new one (prune's repacking).
pub(crate) struct SealedCopy {
    pub kind: BlobKind,
    /// The blob's id, or a bundle's.
    pub id: BlobId,
    pub raw_len: u32,
    /// A bundle's members (id, length), in order; empty for a blob in its own envelope.
    pub members: Vec<(BlobId, u32)>,
    pub bytes: Vec<u8>,
}

/// What the pipeline wrote.
#[derive(Debug, Default)]
pub struct PackerStats {
    /// Every pack written, in order.
    pub pack_ids: Vec<PackId>,
    /// Their entries, unless the pipeline was started without keeping them
    /// ([`BlobPipeline::start_with`]).
    pub packs: Vec<IndexPack>,
    pub index_files: Vec<IndexId>,
    pub blobs: u64,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
}

/// A running pipeline, bound to a thread scope.
pub struct BlobPipeline<'scope> {
    jobs: Option<Sender<Vec<Job>>>,
    pending: RefCell<Pending>,
    /// Chunk buffers coming back from the workers, for [`BlobPipeline::buffer`]: small, large.
    spare: (Receiver<Vec<u8>>, Receiver<Vec<u8>>),
    workers: Vec<ScopedJoinHandle<'scope, ()>>,
    packer: ScopedJoinHandle<'scope, Result<PackerStats>>,
}

impl<'scope> BlobPipeline<'scope> {
    /// Start `threads` workers and a packer in scope `s`.
    pub fn start<'env>(
        s: &'scope Scope<'scope, 'env>,
        repo: &'env Repository,
        threads: usize,
        spec: CompressionSpec,
    ) -> Self {
        Self::start_with(s, repo, threads, spec, true)
    }

    /// [`BlobPipeline::start`]; with `keep_entries` false, [`PackerStats::packs`] stays empty
    /// (each pack's entries are dropped once its index file is written): a caller that does
    /// not add the packs to its in-memory index saves ~50 bytes per blob written.
    pub fn start_with<'env>(
        s: &'scope Scope<'scope, 'env>,
        repo: &'env Repository,
        threads: usize,
        spec: CompressionSpec,
        keep_entries: bool,
    ) -> Self {
        let threads = threads.max(1);
        let (jtx, jrx) = bounded::<Vec<Job>>(threads);
        // Twice as deep as the workers' queue: it covers the packer's pause while a full pack's
        // buffer is written, so that the workers do not stop.
        let (stx, srx) = bounded::<Vec<Encoded>>(2 * threads);
        // Chunk buffers go round instead of being freed and allocated again for every chunk:
        // the packer hands them back once their blob is in a pack.
        let (small_back, small) = bounded::<Vec<u8>>(BATCH_BLOBS / 2);
        let (large_back, large) = bounded::<Vec<u8>>(threads);
        // Bundle buffers go round between the workers, which fill them, and the packer.
        let (bundle_back, bundle_free) = bounded::<Vec<u8>>(2 * threads);
        let recycle = Recycle {
            small: small_back,
            large: large_back,
            bundles: bundle_back,
        };
        let workers = (0..threads)
            .map(|_| {
                let (jrx, stx) = (jrx.clone(), stx.clone());
                let (recycle, free) = (recycle.clone(), bundle_free.clone());
                s.spawn(move || worker(spec, jrx, stx, recycle, free))
            })
            .collect();
        drop(stx);
        let packer = s.spawn(move || packer(repo, srx, recycle, keep_entries));
        BlobPipeline {
            jobs: Some(jtx),
            pending: RefCell::default(),
            spare: (small, large),
            workers,
            packer,
        }
    }

    /// An empty buffer for [`BlobPipeline::submit`]'s data of `len` bytes, recycled when one
    /// is free.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let pool = if len <= SMALL_BUF {
            &self.spare.0
        } else {
            &self.spare.1
        };
        let mut b = pool.try_recv().unwrap_or_default();
        // exact: a recycled buffer a little short would otherwise double
        b.reserve_exact(len);
        b
    }

    /// Queue a new blob. Blocks while the pipeline is full. An error means the pipeline
    /// stopped; [`BlobPipeline::finish`] returns the reason.
    pub fn submit(&self, kind: BlobKind, id: BlobId, data: Vec<u8>) -> Result<()> {
        let batch = {
            let mut p = self.pending.borrow_mut();
            p.bytes += data.capacity();
            p.jobs.push(Job { kind, id, data });
            if p.bytes < BATCH_BYTES && p.jobs.len() < BATCH_BLOBS {
                return Ok(());
            }
            std::mem::take(&mut *p).jobs
        };
        self.send(batch)
    }

    fn send(&self, batch: Vec<Job>) -> Result<()> {
        match &self.jobs {
            Some(tx) => tx.send(batch).map_err(|_| Error::Interrupted),
            None => Err(Error::Interrupted),
        }
    }

    /// Flush everything and wait: all packs and index files are durable when this returns Ok.
    pub fn finish(mut self) -> Result<PackerStats> {
        let last = std::mem::take(self.pending.get_mut()).jobs;
        if !last.is_empty() {
            // a failed send means the pipeline stopped: the packer's result says why
            let _ = self.send(last);
        }
        self.jobs = None;
        for w in self.workers {
            if w.join().is_err() {
                return Err(Error::Invalid("a compression worker panicked".into()));
            }
        }
        self.packer
            .join()
            .map_err(|_| Error::Invalid("the packer thread panicked".into()))?
    }
}

/// Store `blobs` outside a backup run (tools, repair, test fixtures): seal, pack, write the
/// packs and an index file, and add them to the in-memory index. Blobs already in the index
/// are skipped. Returns the ids in input order.
pub fn store_blobs(repo: &mut IndexedRepository, blobs: Vec<(BlobKind, Vec<u8>)>) -> Result<Vec<BlobId>> {
    let mut ids = Vec::with_capacity(blobs.len());
    let r: &IndexedRepository = repo;
    let stats = std::thread::scope(|s| -> Result<PackerStats> {
        let pipe = BlobPipeline::start(s, r, 1, r.compression());
        let mut seen = std::collections::HashSet::new();
        for (kind, data) in blobs {
            let id = r.key().blob_id(&data);
            ids.push(id);
            if !r.index().vouched(&id) && seen.insert(id) && pipe.submit(kind, id, data).is_err() {
                break;
            }
        }
        pipe.finish()
    })?;
    for p in &stats.packs {
        repo.index_mut().add_pack(p, true);
    }
    Ok(ids)
}

/// Writes already-sealed blobs and bundles (copied from other packs) into new packs, as they
/// are pushed: one pack's bytes of each kind in memory, whatever prune copies. Used by prune
/// to repack without decrypting or recompressing.
pub(crate) struct SealedPacker<'r> {
    repo: &'r Repository,
    target: usize,
    /// Data, trees.
    open: [OpenPack; 2],
    /// One pack is written at a time: its buffer is the next pack's.
    spare: RefCell<Vec<u8>>,
    /// Called with each pack written, with its entries.
    written: &'r mut dyn FnMut(IndexPack) -> Result<()>,
    bytes_stored: u64,
}

impl<'r> SealedPacker<'r> {
    pub fn new(repo: &'r Repository, written: &'r mut dyn FnMut(IndexPack) -> Result<()>) -> Self {
        SealedPacker {
            repo,
            target: repo.config().pack_size as usize,
            open: [OpenPack::default(), OpenPack::default()],
            spare: RefCell::new(Vec::new()),
            written,
            bytes_stored: 0,
        }
    }

    fn store(&mut self, p: OpenPack) -> Result<()> {
        let spare = &self.spare;
        let (ip, n) = write_pack(self.repo, p, &|b| *spare.borrow_mut() = b)?;
        self.bytes_stored += n;
        (self.written)(ip)
    }

    pub fn push(&mut self, b: SealedCopy) -> Result<()> {
        let slot = &mut self.open[(b.kind == BlobKind::Tree) as usize];
        if slot.buf.capacity() == 0 {
            slot.buf = std::mem::take(&mut *self.spare.borrow_mut());
            slot.buf.clear();
        }
        slot.reserve(b.bytes.len(), self.target);
        slot.buf.extend_from_slice(&b.bytes);
        slot.blobs.push(Sealed {
            kind: b.kind,
            id: b.id,
            raw_len: b.raw_len,
            len: b.bytes.len() as u32,
            members: b.members,
        });
        if slot.buf.len() >= self.target {
            let full = std::mem::take(slot);
            self.store(full)?;
        }
        Ok(())
    }

    /// Write what is left; the bytes stored in all.
    pub fn finish(mut self) -> Result<u64> {
        for i in 0..self.open.len() {
            if !self.open[i].blobs.is_empty() {
                let last = std::mem::take(&mut self.open[i]);
                self.store(last)?;
            }
        }
        Ok(self.bytes_stored)
    }
}

/// Data blobs a worker is collecting into a bundle: their bytes back to back.
#[derive(Default)]
struct OpenBundle {
    raw: Vec<u8>,
    members: Vec<(BlobId, u32)>,
}

impl OpenBundle {
    /// Compress the collected blobs: a bundle, or the blob alone when there is only one.
    fn close(&mut self, encoder: &mut BlobEncoder, free: &Receiver<Vec<u8>>) -> Option<Encoded> {
        if self.members.is_empty() {
            return None;
        }
        let members = std::mem::take(&mut self.members);
        let raw_len = self.raw.len() as u32;
        let mut data = free.try_recv().unwrap_or_default();
        data.clear();
        let (code, payload) = encoder.encode(&self.raw);
        // exact: these buffers go round, a doubled one would stay doubled
        data.reserve_exact(payload.len());
        data.extend_from_slice(payload);
        self.raw.clear();
        let (id, members) = match members.len() {
            1 => (members[0].0, Vec::new()),
            _ => (BlobId::default(), members),
        };
        Some(Encoded {
            kind: BlobKind::Data,
            id,
            raw_len,
            code,
            data,
            members,
        })
    }
}

fn worker(
    spec: CompressionSpec,
    jobs: Receiver<Vec<Job>>,
    out: Sender<Vec<Encoded>>,
    recycle: Recycle,
    bundle_buffers: Receiver<Vec<u8>>,
) {
    let mut encoder = BlobEncoder::new(spec);
    // data blobs wait here across batches until a bundle's worth has come
    let mut bundle = OpenBundle::default();
    for batch in jobs {
        let mut encoded = Vec::with_capacity(batch.len());
        for mut job in batch {
            let len = job.data.len();
            if job.kind == BlobKind::Data && (1..=BUNDLE_TARGET).contains(&len) {
                if bundle.raw.len() + len > BUNDLE_TARGET {
                    encoded.extend(bundle.close(&mut encoder, &bundle_buffers));
                }
                bundle.raw.extend_from_slice(&job.data);
                bundle.members.push((job.id, len as u32));
                recycle.give(job.data);
                continue;
            }
            let code = encoder.encode_in_place(&mut job.data);
            encoded.push(Encoded {
                kind: job.kind,
                id: job.id,
                raw_len: len as u32,
                code,
                data: job.data,
                members: Vec::new(),
            });
        }
        if !encoded.is_empty() && out.send(encoded).is_err() {
            return; // packer failed; it reports why
        }
    }
    if let Some(last) = bundle.close(&mut encoder, &bundle_buffers) {
        let _ = out.send(vec![last]);
    }
}

/// Blobs collected for one pack: their envelopes back to back in `buf`, in arrival order.
#[derive(Default)]
struct OpenPack {
    buf: Vec<u8>,
    blobs: Vec<Sealed>,
    /// The buffer is one of the packer's pack buffers (data packs; a tree pack's grows on its
    /// own), to be handed back once written.
    pooled: bool,
}

impl OpenPack {
    /// Make room for `n` more bytes: in steps of an eighth of a pack, not by doubling, or a
    /// full pack would hold twice its size.
    fn reserve(&mut self, n: usize, target: usize) {
        if self.buf.len() + n > self.buf.capacity() {
            self.buf.reserve_exact(n.max(target / 8));
        }
    }

    /// Seal a compressed blob, or a bundle, into the pack. A bundle's plaintext carries its
    /// uncompressed length, and its id is the keyed hash of its members' ids.
    fn seal(&mut self, key: &MasterKey, b: &mut Encoded, target: usize) {
        self.reserve(5 + b.data.len() + MAX_SEAL_OVERHEAD, target);
        let (len, id) = if b.members.is_empty() {
            let len = key.seal_parts_into(
                b.kind.object_kind(),
                b.id.as_bytes(),
                &[&[b.code], &b.data],
                &mut self.buf,
            );
            (len, b.id)
        } else {
            let len = key.seal_parts_into(
                ObjectKind::Bundle,
                b"",
                &[&[b.code], &b.raw_len.to_le_bytes(), &b.data],
                &mut self.buf,
            );
            let id = key.blob_id(&bundle_id_input(b.members.iter().map(|(id, _)| id)));
            (len, id)
        };
        self.blobs.push(Sealed {
            kind: b.kind,
            id,
            raw_len: b.raw_len,
            len: len as u32,
            members: std::mem::take(&mut b.members),
        });
    }
}

/// Packs written at once: a write is mostly waiting for fsync, so a few in flight keep the
/// storage busy while the packer goes on filling the next pack.
const PACK_WRITERS: usize = 2;
/// Data packs are filled in buffers allocated once and reused. A local disk takes one: its
/// writer hands the buffer back as soon as the pack is in the page cache (a few ms), before
/// the wait for fsync, and the queue in front of the packer covers that pause (the benchmark's
/// initial backup, median of 6 alternating runs: 11.26 -> 11.52 s, peak RSS 115 -> 98 MiB).
/// A remote backend keeps the buffer for the whole upload, so it gets one per writer, and the
/// packer fills the next pack while both upload. With parity on, a local writer holds the
/// buffer while it hashes the pack and encodes its parity too (milliseconds per pack, not a
/// page-cache copy), so it gets a second buffer: the packer fills the next pack meanwhile.
fn pack_buffers(repo: &Repository) -> usize {
    if repo.backend().latency_bound() || repo.config().parity > 0 {
        PACK_WRITERS
    } else {
        1
    }
}

fn packer(
    repo: &Repository,
    input: Receiver<Vec<Encoded>>,
    recycle: Recycle,
    keep_entries: bool,
) -> Result<PackerStats> {
    let target = repo.config().pack_size as usize;
    let mut open = [OpenPack::default(), OpenPack::default()];
    let mut stats = PackerStats::default();
    let mut unindexed: Vec<IndexPack> = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let (ptx, prx) = bounded::<OpenPack>(0);
        let (rtx, rrx) = crossbeam_channel::unbounded::<Result<(IndexPack, u64)>>();
        // Every pooled pack sent to a writer comes back as one token: its buffer, or an empty
        // one when the backend kept it (a failed write, a file already there) and the packer
        // must allocate again. So the tokens are never more than `buffers`, and a full pool
        // means every buffer is free.
        let buffers = pack_buffers(repo);
        let (back, free) = bounded::<Vec<u8>>(buffers);
        let writers: Vec<_> = (0..PACK_WRITERS)
            .map(|_| {
                let (prx, rtx, back) = (prx.clone(), rtx.clone(), back.clone());
                s.spawn(move || {
                    for p in prx {
                        let pooled = p.pooled;
                        let returned = std::cell::Cell::new(false);
                        let reuse = |b: Vec<u8>| {
                            if pooled {
                                returned.set(true);
                                let _ = back.send(b);
                            }
                        };
                        let r = write_pack(repo, p, &reuse);
                        if pooled && !returned.get() {
                            let _ = back.send(Vec::new());
                        }
                        if rtx.send(r).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop((prx, rtx, back));
        let mut made = 0;
        // The next data pack's buffer: a free one, a new one while fewer than `buffers` exist,
        // else the first a writer hands back (None: every writer stopped).
        let mut next_buffer = || -> Option<Vec<u8>> {
            let b = match free.try_recv() {
                Ok(b) => b,
                Err(_) if made < buffers => {
                    made += 1;
                    Vec::new()
                }
                Err(_) => free.recv().ok()?,
            };
            Some(if b.capacity() == 0 {
                // room for the sealed header of a pack of a few thousand blobs, too
                Vec::with_capacity(target + target / 64)
            } else {
                b
            })
        };
        // A pack is listed in an index file only after its write returned (it is durable).
        let take_done = |stats: &mut PackerStats,
                         unindexed: &mut Vec<IndexPack>,
                         r: Result<(IndexPack, u64)>|
         -> Result<()> {
            let (ip, n) = r?;
            stats.bytes_stored += n;
            stats.pack_ids.push(ip.id);
            if keep_entries {
                stats.packs.push(ip.clone());
            }
            unindexed.push(ip);
            if unindexed.len() >= INDEX_EVERY
                || unindexed.iter().map(|p| p.entries.len()).sum::<usize>() >= INDEX_ENTRIES
            {
                flush_index(repo, unindexed, stats)?;
            }
            Ok(())
        };
        let mut result = Ok(());
        'input: for batch in input {
            for mut blob in batch {
                stats.blobs += blob.members.len().max(1) as u64;
                stats.bytes_raw += blob.raw_len as u64;
                let is_tree = blob.kind == BlobKind::Tree;
                let slot = &mut open[is_tree as usize];
                // a pack is closed before a blob would take it past the target (unless that
                // blob is alone in it), so a pack buffer never grows beyond its first capacity
                let need = 5 + blob.data.len() + MAX_SEAL_OVERHEAD;
                if !slot.blobs.is_empty()
                    && slot.buf.len() + need > target
                    && ptx.send(std::mem::take(slot)).is_err()
                {
                    break 'input; // every writer stopped: their results say why
                }
                if !is_tree && !slot.pooled {
                    let Some(mut b) = next_buffer() else {
                        break 'input; // every writer stopped: their results say why
                    };
                    b.clear();
                    slot.buf = b;
                    slot.pooled = true;
                }
                slot.seal(repo.key(), &mut blob, target);
                recycle.give_back(blob);
            }
            while let Ok(r) = rrx.try_recv() {
                if let Err(e) = take_done(&mut stats, &mut unindexed, r) {
                    result = Err(e);
                    break;
                }
            }
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            for slot in open.iter_mut() {
                if !slot.blobs.is_empty() && ptx.send(std::mem::take(slot)).is_err() {
                    break;
                }
            }
        }
        drop(ptx);
        for w in writers {
            if w.join().is_err() {
                result = result.and(Err(Error::Invalid("a pack writer panicked".into())));
            }
        }
        for r in rrx.try_iter() {
            if result.is_ok() {
                result = take_done(&mut stats, &mut unindexed, r);
            }
        }
        result?;
        flush_index(repo, &mut unindexed, &mut stats)
    })?;
    Ok(stats)
}

/// Seal and store one pack. Blobs are written in random order, so that the sizes seen in
/// storage do not follow the file order (a chunker-parameter leak, CCS 2025): the pack is the
/// buffer's blob ranges in a shuffled order, then the sealed header and its length, written
/// straight from the buffer (no second 16 MiB buffer, no copy). The buffer goes back through
/// `reuse` once written. The pack's name is the hash of its bytes, over the same ranges.
fn write_pack(repo: &Repository, p: OpenPack, reuse: &dyn Fn(Vec<u8>)) -> Result<(IndexPack, u64)> {
    let OpenPack { mut buf, blobs, .. } = p;
    let mut placed: Vec<(Range<usize>, &Sealed)> = Vec::with_capacity(blobs.len());
    let mut at = 0;
    for b in &blobs {
        placed.push((at..at + b.len as usize, b));
        at += b.len as usize;
    }
    shuffle(&mut placed);
    let mut entries = Vec::with_capacity(blobs.len());
    let mut offset = 0u32;
    for (_, b) in &placed {
        if b.members.is_empty() {
            entries.push(PackEntry::own(b.kind, b.id, offset, b.len, b.raw_len));
        } else {
            entries.push(PackEntry {
                place: Place::Bundle,
                ..PackEntry::own(b.kind, b.id, offset, b.len, b.raw_len)
            });
            let mut at = 0;
            for (id, len) in &b.members {
                entries.push(PackEntry {
                    place: Place::Member,
                    ..PackEntry::own(BlobKind::Data, *id, at, *len, *len)
                });
                at += len;
            }
        }
        offset += b.len;
    }
    let mut ranges: Vec<Range<usize>> = placed.into_iter().map(|(r, _)| r).collect();
    let header = repo
        .key()
        .seal(ObjectKind::PackHeader, b"", &encode_header(&entries));
    let start = buf.len();
    buf.reserve_exact(header.len() + 4);
    buf.extend_from_slice(&header);
    buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
    ranges.push(start..buf.len());
    let refs: Vec<&[u8]> = ranges.iter().map(|r| &buf[r.clone()]).collect();
    let rate = repo.config().parity;
    let (id, parity) = if rate > 0 {
        let (id, parity) = crate::parity::encode_naming(&refs, rate);
        (id, Some(parity))
    } else {
        (PackId(storage_id_parts(&refs)), None)
    };
    drop(refs);
    // what the storage holds: the pack and its parity
    let len = buf.len() as u64 + parity.as_ref().map_or(0, |p| p.len() as u64);
    repo.backend()
        .write_ranges(FileKind::Pack, &id.to_hex(), buf, &ranges, reuse)?;
    // after the pack: a parity file always has its pack (a crash in between leaves a pack
    // without parity, which `check` reports and `repair packs` completes)
    if let Some(p) = parity {
        repo.backend().write(FileKind::Parity, &id.to_hex(), &p)?;
    }
    Ok((IndexPack { id, entries }, len))
}

fn flush_index(repo: &Repository, packs: &mut Vec<IndexPack>, stats: &mut PackerStats) -> Result<()> {
    if packs.is_empty() {
        return Ok(());
    }
    let file = IndexFile {
        supersedes: Vec::new(),
        packs: std::mem::take(packs),
    };
    let (id, n) = repo.save_index(&file)?;
    stats.index_files.push(id);
    stats.bytes_stored += n;
    Ok(())
}

fn shuffle<T>(v: &mut [T]) {
    // one system call for the whole pack, not one per blob
    let mut r = vec![0u8; 8 * v.len()];
    random_bytes(&mut r);
    for i in (1..v.len()).rev() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&r[8 * i..8 * i + 8]);
        let j = (u64::from_le_bytes(w) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}
