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
    /// Something worth knowing that is not a problem (not counted as a warning).
    fn note(&self, _msg: &str) {}
    /// What a restore did, or in a dry run would do, to one path of its target.
    fn restore_action(&self, _action: RestoreAction, _path: &Path) {}
    /// What a backup found a file to be (new, changed, unchanged), once it is decided.
    fn file_status(&self, _status: FileStatus, _path: &Path) {}
}

/// What a backup found a regular file to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Not in the parent snapshot.
    New,
    /// In the parent, with other metadata: read again.
    Changed,
    /// As in the parent (or a hard link already read): its chunks are reused.
    Unchanged,
}

/// What a restore does to one path of its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreAction {
    /// Nothing was there: created.
    Create,
    /// Something was there and is replaced by the snapshot's version.
    Replace,
    /// Something was there and stays (`--overwrite never|if-newer`, or the same content with
    /// `if-changed`, whose metadata is brought in line).
    Keep,
    /// Not in the snapshot: removed (`--delete`).
    Delete,
}

impl RestoreAction {
    /// The word a listing shows.
    pub fn verb(self) -> &'static str {
        match self {
            RestoreAction::Create => "create",
            RestoreAction::Replace => "replace",
            RestoreAction::Keep => "keep",
            RestoreAction::Delete => "delete",
        }
    }
}

/// Discards everything.
pub struct NoProgress;
impl Progress for NoProgress {}
