//! # coffer-db
//!
//! Database sources for `coffer backup` and single-database restores for `coffer restore-db`.
//!
//! - **MySQL/MariaDB**: `mariadb-dump` (or `mysqldump`) per database with
//!   `--single-transaction`, routines, triggers and events, one row per INSERT for
//!   deduplication (joined again on restore); optionally users and grants.
//! - **PostgreSQL**: `pg_dump --format=custom --compress=0` per database, plus
//!   `pg_dumpall --globals-only` for roles and tablespaces.
//! - **SQLite**: SQLite's online backup API, which copies a consistent state of a live
//!   database (never a raw copy of the file, which can be torn or miss the WAL).
//!
//! Dumps stream from the tool's stdout into the backup's chunker (nothing staged on disk,
//! except SQLite's copy, which the backup API must write to a database file). Each source is
//! checked before the backup starts (tool present, server reachable, database exists), so a
//! misconfiguration fails the run before anything is written; a dump that fails during the run
//! leaves its database out of the snapshot (see [`coffer_core::source`]).

mod batch;
pub mod drill;
mod dump;
mod mysql;
mod postgres;
mod process;
mod sqlite;

use std::path::PathBuf;

pub use mysql::{
    apply_mysql_globals, mysql_drop, mysql_exists, mysql_sources, restore_mysql, MysqlConnection,
};
pub use postgres::{
    apply_postgres_globals, postgres_drop, postgres_exists, postgres_rename, postgres_sources,
    restore_postgres, PgConnection,
};
pub use sqlite::{restore_sqlite, sqlite_sources};

/// The dump reader that joins a table's INSERT lines into batches (for the fuzzer).
#[doc(hidden)]
pub use batch::InsertBatcher;

/// Which databases of a server to back up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every database a user created (system schemas excluded).
    All,
    Names(Vec<String>),
}

impl Selection {
    /// `all`, or a comma-separated list of names.
    pub fn parse(s: &str) -> Selection {
        if s == "all" {
            Selection::All
        } else {
            Selection::Names(
                s.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect(),
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{tool} not found in PATH; {hint}")]
    ToolMissing { tool: String, hint: String },
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("{engine} database {name:?} does not exist on the server (list them with {hint})")]
    NoSuchDatabase {
        engine: &'static str,
        name: String,
        hint: &'static str,
    },
    #[error(
        "{engine} database {name:?} already exists; restore under another name with --as NAME, \
         or drop it first"
    )]
    TargetExists { engine: &'static str, name: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What applying a server-wide dump (users and grants, roles) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalsApplied {
    /// Bytes of the dump fed to the client.
    pub bytes: u64,
    /// Users or roles the server had already (their creation failed; their grants apply).
    pub existed: usize,
    /// Every other error the client reported, one line each (the last 16 KiB of them).
    pub errors: Vec<String>,
}

/// Sort a client's error lines into "already exists" (matching `existed`) and the others.
pub(crate) fn sort_errors(
    stderr: &[u8],
    is_error: impl Fn(&str) -> bool,
    existed: impl Fn(&str) -> bool,
) -> (usize, Vec<String>) {
    let text = String::from_utf8_lossy(stderr);
    let mut n = 0;
    let mut other = Vec::new();
    for l in text.lines().filter(|l| is_error(l)) {
        if existed(l) {
            n += 1;
        } else {
            other.push(l.trim().to_string());
        }
    }
    (n, other)
}

fn now() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::Local::now().fixed_offset()
}

fn source_error(e: DbError) -> coffer_core::source::SourceError {
    coffer_core::source::SourceError(e.to_string())
}
