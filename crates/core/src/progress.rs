//! Progress reporting: the library reports, the binary draws (a bar, log lines or JSON).

use std::path::Path;

/// Receives progress and per-item warnings of a long operation. Called from several threads.
pub trait Progress: Sync {
    /// Work on `path` started (a file being read or restored).
    fn item(&self, _path: &Path) {}
    /// `n` more bytes processed.
    fn bytes(&self, _n: u64) {}
    /// `n` more files processed.
    fn files(&self, _n: u64) {}
    /// Something went wrong with one item, and the operation goes on without it.
    fn warn(&self, _msg: &str) {}
}

/// Discards everything.
pub struct NoProgress;
impl Progress for NoProgress {}
