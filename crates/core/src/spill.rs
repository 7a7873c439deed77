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

/// Bytes an appending [`Log`] gathers before writing them to its file.
const LOG_BUFFER: usize = 1 << 20;

/// Records appended one after another and read back by where they start: in an unlinked file
/// under a spill directory, or in memory without one (or where no file can be made or first
/// written there: a warning says so). What one [`Log::append`] gave is read back whole by
/// [`Log::read`] at any time, from the file or from the bytes not yet written to it.
pub(crate) struct Log {
    what: &'static str,
    file: Option<(File, std::path::PathBuf)>,
    /// Bytes in the file (none without one).
    written: u64,
    /// Bytes after `written`: everything, without a file.
    pending: Vec<u8>,
}

impl Log {
    /// `what`: whose records these are, for the warning and errors.
    pub fn new(dir: Option<std::path::PathBuf>, what: &'static str) -> Log {
        let file = dir.and_then(|d| match unlinked_file(&d) {
            Ok(f) => Some((f, d)),
            Err(e) => {
                tracing::warn!("{what}: kept in memory ({e})");
                None
            }
        });
        Log {
            what,
            file,
            written: 0,
            pending: Vec::new(),
        }
    }

    /// Append `bytes`; where they start.
    pub fn append(&mut self, bytes: &[u8]) -> Result<u64> {
        let at = self.written + self.pending.len() as u64;
        if self.file.is_some() && self.pending.len() + bytes.len() > LOG_BUFFER {
            self.flush()?;
        }
        self.pending.extend_from_slice(bytes);
        Ok(at)
    }

    fn flush(&mut self) -> Result<()> {
        let Some((f, dir)) = &self.file else {
            return Ok(());
        };
        match f.write_all_at(&self.pending, self.written) {
            Ok(()) => {
                self.written += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            // a file that takes nothing (a full disk, a quota): memory, as without a file
            Err(e) if self.written == 0 => {
                tracing::warn!("{}: kept in memory ({})", self.what, Error::io(dir, e));
                self.file = None;
                Ok(())
            }
            Err(e) => Err(Error::io(dir, e)),
        }
    }

    /// The `len` bytes an append gave at `at`.
    pub fn read(&self, at: u64, len: usize) -> Result<Vec<u8>> {
        if at >= self.written {
            let from = (at - self.written) as usize;
            return match self.pending.get(from..from + len) {
                Some(b) => Ok(b.to_vec()),
                None => Err(Error::Invalid(format!(
                    "{}: no record at {at} (a bug)",
                    self.what
                ))),
            };
        }
        let Some((f, dir)) = &self.file else {
            return Err(Error::Invalid(format!(
                "{}: no record at {at} (a bug)",
                self.what
            )));
        };
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, at).map_err(|e| Error::io(dir, e))?;
        Ok(buf)
    }

    /// Bytes appended so far.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Whether the records are in a file.
    pub fn in_file(&self) -> bool {
        self.file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_reads_back_every_append_from_its_file_or_its_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::new(Some(dir.path().to_path_buf()), "test log");
        assert!(log.in_file());
        let mut at = Vec::new();
        // appends of 1 KiB to 700 KiB: some straddle a flush, some are larger than the buffer
        for i in 0..40usize {
            let len = 1024 + (i * 97_331) % (700 << 10);
            let bytes: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            at.push((log.append(&bytes).unwrap(), bytes));
            let (a, b) = &at[i / 2];
            assert_eq!(
                &log.read(*a, b.len()).unwrap(),
                b,
                "append {} read after {i}",
                i / 2
            );
        }
        assert!(log.written > 0 && !log.pending.is_empty());
        for (a, b) in &at {
            assert_eq!(&log.read(*a, b.len()).unwrap(), b);
        }
        assert!(log.read(log.written + log.pending.len() as u64, 1).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the file is unlinked"
        );
    }

    #[test]
    fn a_log_without_a_usable_directory_keeps_its_records_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not a directory");
        std::fs::write(&file, b"x").unwrap();
        let mut log = Log::new(Some(file), "test log");
        assert!(!log.in_file());
        let a = log.append(&[7u8; 3 << 20]).unwrap();
        let b = log.append(b"abc").unwrap();
        assert_eq!(log.read(b, 3).unwrap(), b"abc");
        assert_eq!(log.read(a, 3 << 20).unwrap(), vec![7u8; 3 << 20]);
    }
}
