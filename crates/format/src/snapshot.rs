//! Snapshots: one backup run's root tree and what is known about the run.
//!
//! A snapshot file is the CBOR of [`Snapshot`], compressed and sealed (kind Snapshot), stored
//! under `snapshots/` with its unkeyed hash as name; that name is the snapshot id.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::id::{BlobId, SnapshotId};
use crate::FormatError;

/// Figures of one backup run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    pub other_nodes: u64,
    /// Files or directories that could not be read (the run's exit code is 3 when non-zero).
    pub errors: u64,
    /// Bytes of file content read from disk.
    pub bytes_read: u64,
    /// Total size of all files in the snapshot.
    pub bytes_total: u64,
    /// New blobs and their plaintext size.
    pub blobs_new: u64,
    pub bytes_new_raw: u64,
    /// Bytes written to the repository (packs, index, snapshot).
    pub bytes_stored: u64,
    pub start: Option<DateTime<FixedOffset>>,
    pub end: Option<DateTime<FixedOffset>>,
}

/// What a database item in a snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseItemKind {
    /// One database (MySQL/PostgreSQL) or one SQLite file.
    Database,
    /// Server-wide definitions: PostgreSQL roles and tablespaces, MySQL users and grants.
    Globals,
}

/// One database dump stored in a snapshot. Its content is the file at `path` in the
/// snapshot's tree (below `/.databases`); a dump that failed has no entry, so every entry here
/// is a complete dump that its tool reported as successful.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseItem {
    /// `mysql`, `postgres` or `sqlite`.
    pub engine: String,
    pub kind: DatabaseItemKind,
    /// The database name; for SQLite the database file's absolute path; empty for globals.
    pub name: String,
    /// Where the dump is in the snapshot's tree, e.g. `/.databases/mysql/shop.sql`.
    pub path: String,
    /// How the content is encoded: `mysql-sql` (mariadb-dump/mysqldump text),
    /// `pg-custom` (pg_dump's custom archive, uncompressed), `pg-sql` (pg_dumpall text) or
    /// `sqlite` (a database file).
    pub format: String,
    /// The server's version string (for SQLite: the library's).
    pub server_version: String,
    /// The dump tool and its version, as it reports itself.
    pub tool: String,
    /// The options the tool ran with (never a password).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
    /// Size of the dump in bytes.
    pub size: u64,
    /// Facts needed to recreate the database (character set, collation, encoding, locale).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Things the operator should know (e.g. tables a transaction cannot make consistent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A disk image or a stream stored as one file below `/.images`: a block device read whole
/// (`backup --device`) or what coffer read on its standard input (`backup --stdin NAME`).
/// Like a database item, an entry exists only when the whole source was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageItem {
    /// The name it is stored and restored under (`vdb`, or the `--stdin` name).
    pub name: String,
    /// Where the content is in the snapshot's tree, e.g. `/.images/vdb`.
    pub path: String,
    /// `device` or `stdin`.
    pub kind: String,
    /// The device's path as given (`/dev/vdb`), or `stdin`.
    pub source: String,
    /// Size in bytes (of a device: its size when it was read).
    pub size: u64,
    /// Bytes that were in all-zero chunks (stored once, restored as holes or discards).
    #[serde(default)]
    pub zero_bytes: u64,
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
    /// Things the operator should know (e.g. the device was mounted read-write).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl DatabaseItem {
    /// The name `coffer restore-db` and `ls --databases` use: `engine/name` for a database,
    /// `engine-globals` for server-wide definitions.
    pub fn id(&self) -> String {
        match self.kind {
            DatabaseItemKind::Database => {
                format!("{}/{}", self.engine, self.name.trim_start_matches('/'))
            }
            DatabaseItemKind::Globals => format!("{}-globals", self.engine),
        }
    }
}

/// A snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// When the backup started, as the client's clock says.
    pub time: DateTime<FixedOffset>,
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    /// The absolute paths that were backed up.
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Root tree: holds the backed-up paths under their full path (`/srv/www` is `srv`/`www`).
    pub tree: BlobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    pub program_version: String,
    #[serde(default)]
    pub summary: Summary,
    /// Database dumps in this snapshot (below `/.databases` in the tree).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseItem>,
    /// Disk images and streams in this snapshot (below `/.images` in the tree).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageItem>,
    /// For a snapshot made by `coffer copy`: the id of the snapshot it was first copied from
    /// (in its own repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<SnapshotId>,
    /// The key file (`keys/<id>`) of the key that wrote this snapshot, as that key says (absent
    /// in snapshots of builds before it was recorded). A full key's word is trusted as the
    /// key is; a write-only key could name another write-only key, which is why readers also
    /// show whether a write-only key sealed the snapshot ([`Snapshot::sealed_by_write_only`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::id::KeyId>,
    /// Not stored: set when the snapshot is read, from its envelope's scheme (2: sealed by a
    /// write-only key, whatever `key` claims).
    #[serde(skip)]
    pub sealed_by_write_only: bool,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        #[allow(clippy::expect_used)]
        ciborium::into_writer(self, &mut out).expect("snapshot serializes to a Vec");
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let s: Snapshot = ciborium::from_reader(b).map_err(|e| FormatError::Decode {
            what: "snapshot",
            detail: e.to_string(),
        })?;
        if s.version != crate::FORMAT_VERSION {
            return Err(FormatError::Unsupported {
                what: "snapshot",
                found: s.version.to_string(),
                supported: "1".into(),
            });
        }
        Ok(s)
    }
}
