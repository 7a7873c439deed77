//! `--limit-download`: reads from any backend kept under a rate.
//!
//! A range read reserves its length before it is sent, so reads never run ahead of the rate
//! by more than the ones in flight. A long range (a 4 MiB window, a 2 MiB bundle) is read as
//! pieces of [`DownloadLimited::piece`] bytes, each waiting for its share: a single read of
//! the whole would go at the link's speed and then leave it idle, so that over 30 s at a low
//! rate a handful of reads would overshoot the rate by the share of one read. Pieces are a
//! quarter second of the rate (at least 256 KiB), the burst the pacer allows anyway, so a
//! high limit does not cost more requests. A whole pack or parity file is read the same way
//! after a request for its size; a whole small file (key, index and snapshot files) is
//! charged once it has come, and the next read waits for it. Everything else is passed through unchanged (listing, writes, removal: uploads
//! have their own limit).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use coffer_core::backend::BResult;
use coffer_core::limit::RateLimit;
use coffer_core::{Backend, FileInfo, FileKind, WriteOutcome};

pub struct DownloadLimited {
    inner: Arc<dyn Backend>,
    limit: Arc<RateLimit>,
}

impl DownloadLimited {
    pub fn new(inner: Arc<dyn Backend>, limit: Arc<RateLimit>) -> Self {
        tracing::debug!(target: "coffer_limits", "downloads kept under {} bytes/s", limit.bytes_per_sec());
        DownloadLimited { inner, limit }
    }

    /// The longest read made at once: a quarter second of the rate, at least 256 KiB.
    pub fn piece(&self) -> u32 {
        (self.limit.bytes_per_sec() / 4).clamp(256 << 10, u32::MAX as u64) as u32
    }

    /// `len` bytes at `offset` through `read`, in paced pieces.
    fn paced(&self, offset: u64, len: u32, read: impl Fn(u64, u32) -> BResult<Vec<u8>>) -> BResult<Vec<u8>> {
        let piece = self.piece();
        if len <= piece {
            self.limit.wait_blocking(len as usize);
            return read(offset, len);
        }
        let mut out = Vec::with_capacity(len as usize);
        let mut at = 0u32;
        while at < len {
            let n = piece.min(len - at);
            self.limit.wait_blocking(n as usize);
            out.extend_from_slice(&read(offset + at as u64, n)?);
            at += n;
        }
        Ok(out)
    }
}

impl fmt::Debug for DownloadLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadLimited")
            .field("inner", &self.inner)
            .field("bytes_per_sec", &self.limit.bytes_per_sec())
            .finish()
    }
}

impl Backend for DownloadLimited {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> BResult<()> {
        self.inner.create()
    }
    fn exists(&self) -> BResult<bool> {
        self.inner.exists()
    }
    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        self.inner.list(kind)
    }
    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        // a whole pack (check --read-data, a repair, a tree pack for the cache) is read in
        // paced pieces too, after asking its size: one read of 16 MiB would cross at the
        // link's speed and leave it idle after
        if kind.fanned_out() {
            let size = self.inner.size(kind, name)?;
            if let Ok(len) = u32::try_from(size) {
                return self.paced(0, len, |o, n| self.inner.read_range(kind, name, o, n));
            }
        }
        let data = self.inner.read(kind, name)?;
        // charged after the fact: the next read waits for it
        let _ = self.limit.reserve(data.len());
        Ok(data)
    }
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        self.paced(offset, len, |o, n| self.inner.read_range(kind, name, o, n))
    }
    fn read_tree_range(&self, pack: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        self.paced(offset, len, |o, n| self.inner.read_tree_range(pack, o, n))
    }
    fn size(&self, kind: FileKind, name: &str) -> BResult<u64> {
        self.inner.size(kind, name)
    }
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome> {
        self.inner.write(kind, name, data)
    }
    fn write_parts(&self, kind: FileKind, name: &str, parts: &[&[u8]]) -> BResult<WriteOutcome> {
        self.inner.write_parts(kind, name, parts)
    }
    fn write_ranges(
        &self,
        kind: FileKind,
        name: &str,
        buf: Vec<u8>,
        ranges: &[Range<usize>],
        reuse: &dyn Fn(Vec<u8>),
    ) -> BResult<WriteOutcome> {
        self.inner.write_ranges(kind, name, buf, ranges, reuse)
    }
    fn latency_bound(&self) -> bool {
        self.inner.latency_bound()
    }
    fn wants_manifests(&self) -> bool {
        self.inner.wants_manifests()
    }
    fn make_durable(&self, kind: FileKind, name: &str) -> BResult<()> {
        self.inner.make_durable(kind, name)
    }
    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        self.inner.replace(kind, name, data)
    }
    fn remove(&self, kind: FileKind, name: &str) -> BResult<()> {
        self.inner.remove(kind, name)
    }
    fn retention_secs(&self) -> Option<i64> {
        self.inner.retention_secs()
    }
    fn extend_retention(&self, kind: FileKind, in_use: &dyn Fn(&str) -> bool) -> BResult<usize> {
        self.inner.extend_retention(kind, in_use)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_core::memory::MemoryBackend;

    #[test]
    fn long_reads_come_in_pieces_and_whole() {
        let data: Vec<u8> = (0..(1 << 20) + 12345)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mem = Arc::new(MemoryBackend::new());
        mem.write(FileKind::Pack, "ab", &data).unwrap();
        // 1 MiB/s: pieces of 256 KiB
        let l = DownloadLimited::new(mem, Arc::new(RateLimit::new(1 << 20)));
        assert_eq!(l.piece(), 256 << 10);
        let all = l.read_range(FileKind::Pack, "ab", 0, data.len() as u32).unwrap();
        assert!(all == data, "a read in pieces differs");
        let mid = l.read_range(FileKind::Pack, "ab", 1000, 700 << 10).unwrap();
        assert!(mid[..] == data[1000..1000 + (700 << 10)]);
        let whole = l.read(FileKind::Pack, "ab").unwrap();
        assert!(whole == data, "a whole pack read in pieces differs");
        // a read past the end is an error, not a short read, in pieces too
        assert!(l.read_range(FileKind::Pack, "ab", 1 << 19, 1 << 20).is_err());
        // a high rate reads in one piece
        let fast = DownloadLimited::new(Arc::new(MemoryBackend::new()), Arc::new(RateLimit::new(1 << 30)));
        assert_eq!(fast.piece(), 256 << 20);
    }
}
