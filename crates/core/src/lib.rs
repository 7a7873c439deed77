//! # coffer-core
//!
//! The engine behind the `coffer` binary: keys and sealing ([`crypto`]), chunking, the
//! repository ([`Repository`] → [`IndexedRepository`]), backup, restore and tree walking.
//! All CPU work runs on plain threads; the [`Backend`] trait is the only way to storage.
//! See docs/ARCHITECTURE.md for how the parts fit, docs/FORMAT.md for what they write.

pub mod backend;
pub mod backup;
pub mod check;
pub mod chunker;
pub mod compress;
pub mod copy;
pub mod crypto;
pub mod diff;
pub mod duration;
mod error;
pub mod filter;
pub mod forget;
mod fsmeta;
pub mod image;
pub mod index;
pub mod lease;
pub mod limit;
pub mod memory;
mod packer;
pub mod parity;
pub mod progress;
pub mod prune;
mod readahead;
pub mod repair;
mod repo;
pub mod restore;
mod runset;
pub mod seen;
pub mod sendlog;
pub mod source;
mod spill;
pub mod stats;
pub mod walk;
pub mod window;

pub use backend::{Backend, BackendError, FileInfo, FileKind, WriteOutcome};
pub use backup::{
    backup, backup_prescanned, backup_with_sources, BackupOptions, BackupOutcome, ParentChoice, Prescan,
};
pub use compress::CompressionSpec;
pub use error::{Category, Error, Result};
pub use packer::store_blobs;
pub use progress::{FileStatus, NoProgress, Progress, RestoreAction};
pub use repo::{IndexedRepository, InitOptions, Repository, DEFAULT_PARITY};
pub use restore::{restore, RestoreOptions, RestoreStats};
pub use stats::human_bytes;

/// The on-disk format crate, re-exported for callers that inspect objects.
pub use coffer_format as format;
