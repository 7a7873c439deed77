//! Files of fixed-size records that go to disk past a memory budget: the index's table and
//! its sorted runs, a backup's set of new blobs, check's pack listings. Each is opened
//! unlinked (`O_TMPFILE`), so nothing is left behind whatever ends the process.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{Error, Result};

/// A new unlinked file in `dir` (made if missing).
pub(crate) fn unlinked_file(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::tempfile_in(dir))
        .map_err(|e| Error::io(dir, e))
}

/// Bytes read at once by [`Records`].
const READ: usize = 1 << 16;

/// The first `len` records of `N` bytes of a file, in order, read ~64 KiB at a time.
pub(crate) struct Records<'f, const N: usize> {
    file: &'f File,
    next: usize,
    len: usize,
    buf: Vec<u8>,
    at: usize,
}

impl<'f, const N: usize> Records<'f, N> {
    pub fn new(file: &'f File, len: usize) -> Self {
        Records {
            file,
            next: 0,
            len,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl<const N: usize> Iterator for Records<'_, N> {
    type Item = std::io::Result<[u8; N]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at == self.buf.len() {
            if self.next == self.len {
                return None;
            }
            let n = (READ / N).max(1).min(self.len - self.next);
            self.buf.resize(n * N, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf, (self.next * N) as u64) {
                return Some(Err(e));
            }
            self.next += n;
            self.at = 0;
        }
        let mut r = [0u8; N];
        r.copy_from_slice(&self.buf[self.at..self.at + N]);
        self.at += N;
        Some(Ok(r))
    }
}

/// Where in `rows` (records of `n` bytes, ascending by their first `key.len()` bytes) the
/// record whose key is `key` is.
pub(crate) fn search(rows: &[u8], n: usize, key: &[u8]) -> Option<usize> {
    let (mut lo, mut hi) = (0, rows.len() / n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match rows[mid * n..mid * n + key.len()].cmp(key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}
