//! SQLite: a consistent copy of a live database through SQLite's online backup API.
//!
//! Copying the file itself can capture a half-written transaction, and in WAL mode misses the
//! committed transactions still in the `-wal` file. The backup API copies every page inside
//! one read transaction (all pages in one step), so the copy is exactly one committed state,
//! and writers are not blocked in WAL mode. The API writes to a database file, so the copy is
//! made in a private temporary file (in `TMPDIR`; it needs as much room as the database) that
//! is streamed into the repository and deleted.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_core::format::{DatabaseItem, DatabaseItemKind, Name};
use coffer_core::source::{escape_component, item_path, SourceError, StreamSource};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::{now, source_error, DbError};

const ENGINE: &str = "sqlite";
/// How long a copy waits for a writer holding an exclusive lock (rollback-journal mode).
const BUSY_WAIT: Duration = Duration::from_secs(60);

fn sqlite_err(what: &str, e: rusqlite::Error) -> DbError {
    DbError::Failed {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

fn open_read_only(path: &Path, what: &str) -> Result<Connection, DbError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_err(what, e))?;
    c.busy_timeout(BUSY_WAIT).map_err(|e| sqlite_err(what, e))?;
    // reading the schema fails on a file that is not a database
    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
        .map_err(|e| sqlite_err(what, e))?;
    Ok(c)
}

/// The sources for `--sqlite FILE...`: each must be an existing SQLite database, given by a
/// path that is valid UTF-8.
pub fn sqlite_sources(paths: &[PathBuf]) -> Result<Vec<Box<dyn StreamSource>>, DbError> {
    let mut out: Vec<Box<dyn StreamSource>> = Vec::new();
    for p in paths {
        let abs = coffer_core::backup::absolute_clean(p).map_err(|e| DbError::Invalid(e.to_string()))?;
        let Some(name) = abs.to_str().map(String::from) else {
            return Err(DbError::Invalid(format!(
                "{}: SQLite paths must be valid UTF-8",
                abs.display()
            )));
        };
        if !abs.is_file() {
            return Err(DbError::Io {
                path: abs,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such SQLite database file"),
            });
        }
        let what = format!("sqlite database {name}");
        open_read_only(&abs, &what)?;
        out.push(Box::new(SqliteCopy {
            path: abs,
            name,
            copy: None,
            start: None,
        }));
    }
    Ok(out)
}

struct SqliteCopy {
    path: PathBuf,
    name: String,
    copy: Option<tempfile::NamedTempFile>,
    start: Option<chrono::DateTime<chrono::FixedOffset>>,
}

impl SqliteCopy {
    fn copy(&mut self) -> Result<File, DbError> {
        let what = self.describe();
        self.start = Some(now());
        let src = open_read_only(&self.path, &what)?;
        let tmp = tempfile::Builder::new()
            .prefix("coffer-sqlite-")
            .tempfile()
            .map_err(|e| DbError::Io {
                path: std::env::temp_dir(),
                source: e,
            })?;
        {
            let mut dst = Connection::open(tmp.path()).map_err(|e| sqlite_err(&what, e))?;
            let backup = Backup::new(&src, &mut dst).map_err(|e| sqlite_err(&what, e))?;
            let deadline = Instant::now() + BUSY_WAIT;
            loop {
                // -1: every page in one step, under one read transaction: one consistent state
                match backup.step(-1).map_err(|e| sqlite_err(&what, e))? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    StepResult::Busy | StepResult::Locked => {
                        if Instant::now() > deadline {
                            return Err(DbError::Failed {
                                what,
                                detail: format!("the database stayed locked for {} s", BUSY_WAIT.as_secs()),
                            });
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {}
                }
            }
        }
        let f = tmp.reopen().map_err(|e| DbError::Io {
            path: tmp.path().to_path_buf(),
            source: e,
        })?;
        self.copy = Some(tmp);
        Ok(f)
    }
}

impl StreamSource for SqliteCopy {
    fn describe(&self) -> String {
        format!("sqlite database {}", self.name)
    }

    fn location(&self) -> Vec<Name> {
        let mut l = vec![Name::from(ENGINE)];
        l.extend(
            self.name
                .split('/')
                .filter(|c| !c.is_empty())
                .map(escape_component),
        );
        l
    }

    fn open(&mut self) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(Box::new(self.copy().map_err(source_error)?))
    }

    fn finish(&mut self, complete: bool, size: u64) -> Result<DatabaseItem, SourceError> {
        let what = self.describe();
        // deleting the temporary copy
        drop(self.copy.take());
        if !complete {
            return Err(SourceError(format!("{what}: the copy was not read to its end")));
        }
        Ok(DatabaseItem {
            engine: ENGINE.into(),
            kind: DatabaseItemKind::Database,
            name: self.name.clone(),
            path: item_path(&self.location()),
            format: "sqlite".into(),
            server_version: format!("SQLite {}", rusqlite::version()),
            tool: format!("SQLite {} online backup API", rusqlite::version()),
            options: Vec::new(),
            start: self.start.unwrap_or_else(now),
            end: now(),
            size,
            properties: Default::default(),
            warnings: Vec::new(),
        })
    }
}

/// Write a SQLite database from a dump to `target` (which must not exist), then check it with
/// `PRAGMA integrity_check`. A failed restore removes the file it wrote.
pub fn restore_sqlite(target: &Path, input: &mut dyn Read) -> Result<u64, DbError> {
    let io = |e| DbError::Io {
        path: target.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                DbError::Invalid(format!(
                    "{}: exists; restore to another file with --to-file FILE",
                    target.display()
                ))
            } else {
                io(e)
            }
        })?;
    let result = (|| {
        let n = std::io::copy(input, &mut f).map_err(io)?;
        f.sync_all().map_err(io)?;
        let what = format!("checking restored {}", target.display());
        // read-write: a database in WAL mode needs its -shm file, which a read-only open
        // cannot create
        let c = Connection::open(target).map_err(|e| sqlite_err(&what, e))?;
        let verdict: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| sqlite_err(&what, e))?;
        if verdict != "ok" {
            return Err(DbError::Failed {
                what,
                detail: format!("integrity_check says: {verdict}"),
            });
        }
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(target);
    }
    result
}
