//! The storage backend trait.
//!
//! A backend stores opaque, immutable files in five namespaces ([`FileKind`]). It knows nothing
//! about encryption or the format; features such as caching or retries wrap a backend.
//! Every method documents what it guarantees; implementations must keep those guarantees,
//! and the repository's crash-safety argument (docs/FORMAT.md) rests on them.

use std::fmt;
use std::ops::Range;

use thiserror::Error;

/// The namespaces of a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileKind {
    /// The single `config` file (name `"config"`).
    Config,
    Key,
    Snapshot,
    Index,
    Pack,
    /// Leases of running backups and prunes (see docs/FORMAT.md "Prune").
    Lock,
    /// Prune's lists of condemned packs.
    Mark,
    /// The packs each snapshot needs, in plaintext, for a server's retention
    /// (written only where [`Backend::wants_manifests`] says so).
    Manifest,
    /// Reed–Solomon parity of a pack, named as the pack (see docs/FORMAT.md "Parity"). Not
    /// named by its own hash: it is checked against the pack it repairs.
    Parity,
}

impl FileKind {
    /// Every kind, in declaration order.
    pub const ALL: [FileKind; 9] = [
        FileKind::Config,
        FileKind::Key,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Pack,
        FileKind::Lock,
        FileKind::Mark,
        FileKind::Manifest,
        FileKind::Parity,
    ];

    /// The directories a new repository gets on a file system (besides `data/00`..`data/ff`;
    /// `manifests/` is made by the first write that needs it).
    pub const INIT_DIRS: [FileKind; 5] = [
        FileKind::Key,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Lock,
        FileKind::Mark,
    ];

    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Snapshot => "snapshots",
            FileKind::Index => "index",
            FileKind::Pack => "data",
            FileKind::Lock => "locks",
            FileKind::Mark => "marks",
            FileKind::Manifest => "manifests",
            FileKind::Parity => "parity",
        }
    }

    /// Whether files of this kind are spread over 256 subdirectories by the first two hex
    /// digits of their name (`data/ab/ab…`, `parity/ab/ab…`).
    pub fn fanned_out(self) -> bool {
        matches!(self, FileKind::Pack | FileKind::Parity)
    }

    /// Whether this namespace may be missing from a repository made before it existed (it
    /// is made by the first write that needs it, and lists as empty until then).
    pub fn made_on_demand(self) -> bool {
        matches!(
            self,
            FileKind::Lock | FileKind::Mark | FileKind::Manifest | FileKind::Parity
        )
    }
}

/// A stored file's name and size, as listed, and when the storage says it was last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    /// Seconds since the epoch by the *storage's* clock (file system mtime, SFTP mtime, S3
    /// Last-Modified, the coffer server's upload time); `None` where a backend cannot say.
    /// Every client of a repository shares this one clock, whatever its own says: leases
    /// and marks are aged by it (docs/FORMAT.md "Leases and clocks").
    pub modified: Option<i64>,
}

impl FileInfo {
    /// A listed file whose time the backend does not know.
    pub fn new(name: impl Into<String>, size: u64) -> FileInfo {
        FileInfo {
            name: name.into(),
            size,
            modified: None,
        }
    }
}

/// What [`Backend::write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    /// A file of that name existed already; it was left untouched.
    Existed,
}

/// A backend operation failed.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("{location}: {what} not found")]
    NotFound { location: String, what: String },
    /// Retention (S3 Object Lock) forbids deleting the file before `until` (RFC 3339).
    #[error("{location}: {what} is locked until {until} (S3 Object Lock)")]
    Locked {
        location: String,
        what: String,
        until: String,
    },
    #[error("{location}: {what}: {detail}")]
    Io {
        location: String,
        what: String,
        detail: String,
        transient: bool,
    },
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Io { transient: true, .. })
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
    /// Refused because of a retention lock; `until` says when the refusal ends.
    pub fn locked_until(&self) -> Option<&str> {
        match self {
            BackendError::Locked { until, .. } => Some(until),
            _ => None,
        }
    }
}

pub type BResult<T> = Result<T, BackendError>;

/// Storage for a repository. All methods may be called from several threads at once.
pub trait Backend: Send + Sync + fmt::Debug {
    /// A human-readable location (path or URL) for messages; never contains credentials.
    fn location(&self) -> String;

    /// Create the empty layout. Fails if a `config` file exists already.
    fn create(&self) -> BResult<()>;

    /// Whether `config` exists, i.e. whether this location holds a repository.
    fn exists(&self) -> BResult<bool>;

    /// Every file of a kind. A listing that cannot be completed is an error, never a partial
    /// or empty success: prune and check rely on this.
    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>>;

    /// A whole file. Returns `NotFound` if it does not exist.
    fn read(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>>;

    /// `len` bytes at `offset`. Returns an error (not a short read) if the file is shorter.
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u32) -> BResult<Vec<u8>>;

    /// Size of a file.
    fn size(&self, kind: FileKind, name: &str) -> BResult<u64>;

    /// Store a new file. Guarantees:
    /// - **never overwrites**: if `name` exists, it is left untouched and `Existed` is returned
    ///   (names are hashes of content, so an existing file is the same file, or damaged, which
    ///   `check` finds — a retry must never replace a good copy, restic rest-server #142);
    /// - **atomic**: a reader sees either no file or the complete file, never a prefix;
    /// - **durable**: when this returns `Created`, the file survives a crash or power loss.
    ///   This is the write barrier the write order (packs, index, snapshot) relies on.
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<WriteOutcome>;

    /// [`Backend::write`] of the concatenation of `parts`, with the same guarantees; lets a
    /// caller store a pack without assembling it in one buffer. The default concatenates.
    fn write_parts(&self, kind: FileKind, name: &str, parts: &[&[u8]]) -> BResult<WriteOutcome> {
        self.write(kind, name, &parts.concat())
    }

    /// [`Backend::write`] of `buf`'s `ranges`, concatenated in the order given, with the same
    /// guarantees. The buffer is handed over and comes back through `reuse` as soon as its
    /// bytes are on their way (a local file written, its `fsync` still to come), so that a pack
    /// writer refills it instead of holding 16 MiB while it waits for the disk, and the
    /// allocator sees the same few large buffers for the whole run. A backend may drop the
    /// buffer instead (a write that found the file already there, or that failed). The
    /// default writes the ranges with [`Backend::write_parts`], then hands the buffer back.
    fn write_ranges(
        &self,
        kind: FileKind,
        name: &str,
        buf: Vec<u8>,
        ranges: &[Range<usize>],
        reuse: &dyn Fn(Vec<u8>),
    ) -> BResult<WriteOutcome> {
        let parts: Vec<&[u8]> = ranges.iter().map(|r| &buf[r.clone()]).collect();
        let outcome = self.write_parts(kind, name, &parts)?;
        drop(parts);
        reuse(buf);
        Ok(outcome)
    }

    /// A range of a pack that holds trees (directory listings). Every backup, listing and
    /// restore reads trees again, so a caching backend may keep such packs whole on local
    /// disk; the default reads the range.
    fn read_tree_range(&self, pack: &str, offset: u64, len: u32) -> BResult<Vec<u8>> {
        self.read_range(FileKind::Pack, pack, offset, len)
    }

    /// Whether each request waits for a network round trip (S3, a coffer server): readers
    /// then keep more requests in flight.
    fn latency_bound(&self) -> bool {
        false
    }

    /// Whether this storage wants a manifest (`manifests/<snapshot id>`, the packs a snapshot
    /// needs) written before each snapshot: a coffer server does, to apply retention without
    /// the key.
    fn wants_manifests(&self) -> bool {
        false
    }

    /// Make an existing file durable where it is (its content and its name): for a file that
    /// someone else wrote and may not have finished making durable (a killed backup's pack
    /// that prune adopts). Backends whose writes are durable on return have nothing to do.
    fn make_durable(&self, _kind: FileKind, _name: &str) -> BResult<()> {
        Ok(())
    }

    /// Put `data` in place of file `name`, for a repair only: the caller has checked that
    /// `data` is what the name stands for (a pack's bytes that hash to its name, a pack's
    /// parity recomputed from the intact pack). Guarantees: **atomic** (a reader sees the old
    /// file or the new one, never a mix and never no file: the damaged copy is not removed
    /// before the new one is durable) and **durable** when it returns. A storage that cannot
    /// replace a file in one step refuses; the default refuses.
    fn replace(&self, kind: FileKind, name: &str, data: &[u8]) -> BResult<()> {
        let _ = data;
        Err(BackendError::Io {
            location: self.location(),
            what: format!("{}/{name}", kind.dir()),
            detail: "this storage cannot replace a damaged file in one step".into(),
            transient: false,
        })
    }

    /// Delete a file. Deleting a missing file is `NotFound`; a file under a retention lock
    /// (S3 Object Lock) that must not be deleted yet is `Locked` and stays.
    fn remove(&self, kind: FileKind, name: &str) -> BResult<()>;

    /// The retention (seconds) this storage puts on each new file that cannot be rebuilt
    /// (config, keys, snapshots, packs), if any: S3 Object Lock.
    fn retention_secs(&self) -> Option<i64> {
        None
    }

    /// Extend the retention of the stored files of `kind` that are still in use (`in_use`
    /// says which, by name) and whose lock ends within half the retention period, to a full
    /// period from now; files stored without a lock get one. Returns how many were extended.
    /// Without retention, nothing.
    fn extend_retention(&self, kind: FileKind, in_use: &dyn Fn(&str) -> bool) -> BResult<usize> {
        let _ = (kind, in_use);
        Ok(0)
    }
}
