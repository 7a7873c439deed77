//! The server's own records, in SQLite (`DATA/server.db`): repositories and their policies,
//! clients and their hashed tokens, when each snapshot was received, the trash, verification
//! runs. Schema changes are numbered migrations applied at open (`PRAGMA user_version`).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::{Result, ServerError};

const MIGRATIONS: &[&str] = &[
    // 1: the first schema
    "CREATE TABLE repos (
        name TEXT PRIMARY KEY,
        created INTEGER NOT NULL,
        quota_bytes INTEGER,
        policy TEXT
     );
     CREATE TABLE clients (
        name TEXT PRIMARY KEY,
        repo TEXT NOT NULL REFERENCES repos(name),
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL
     );
     CREATE TABLE snapshots (
        repo TEXT NOT NULL,
        id TEXT NOT NULL,
        received INTEGER NOT NULL,
        client TEXT,
        PRIMARY KEY (repo, id)
     );
     CREATE TABLE trash (
        repo TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        trashed INTEGER NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (repo, kind, name)
     );
     CREATE TABLE verify_runs (
        id INTEGER PRIMARY KEY,
        repo TEXT NOT NULL,
        started INTEGER NOT NULL,
        finished INTEGER NOT NULL,
        objects INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        damaged TEXT NOT NULL
     );",
    // 2: monitoring: expected schedules, run reports, incidents, the alert outbox, settings,
    //    console operators and their sessions
    "ALTER TABLE clients ADD COLUMN schedule TEXT;
     ALTER TABLE clients ADD COLUMN grace_secs INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE clients ADD COLUMN schedule_set INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        client TEXT NOT NULL,
        repo TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        host TEXT NOT NULL,
        started INTEGER NOT NULL,
        finished INTEGER NOT NULL,
        received INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        files INTEGER NOT NULL,
        bytes_read INTEGER NOT NULL,
        bytes_added INTEGER NOT NULL,
        bytes_total INTEGER NOT NULL,
        snapshot TEXT,
        warnings INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        messages TEXT NOT NULL
     );
     CREATE INDEX runs_by_client ON runs (client, id);
     CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        subject TEXT NOT NULL,
        kind TEXT NOT NULL,
        opened INTEGER NOT NULL,
        closed INTEGER,
        detail TEXT NOT NULL
     );
     CREATE UNIQUE INDEX incidents_open ON incidents (subject, kind) WHERE closed IS NULL;
     CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        created INTEGER NOT NULL,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try INTEGER NOT NULL,
        sent INTEGER,
        failed INTEGER,
        last_error TEXT
     );
     CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );
     CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created INTEGER NOT NULL
     );
     CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        operator TEXT NOT NULL,
        kind TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL
     );",
    // 3: run reports name their job and when its next backup is due (the agent's schedule)
    "ALTER TABLE runs ADD COLUMN job TEXT NOT NULL DEFAULT '';
     ALTER TABLE runs ADD COLUMN next_expected INTEGER;
     ALTER TABLE runs ADD COLUMN jobs TEXT NOT NULL DEFAULT '[]';",
    // 4: the ransomware alarm: changed files and new data before compression per backup, and
    //    anomalies an operator must acknowledge
    "ALTER TABLE runs ADD COLUMN files_changed INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN bytes_new_raw INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE anomalies (
        id INTEGER PRIMARY KEY,
        client TEXT NOT NULL,
        repo TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        opened INTEGER NOT NULL,
        acked INTEGER,
        detail TEXT NOT NULL
     );",
    // 5: managed jobs (set here, taken by the client's agent), runs asked for from here, and
    //    one counter that every such change moves (what waiting agent polls watch)
    "CREATE TABLE jobs (
        client TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (client, name)
     );
     CREATE TABLE job_generations (
        client TEXT PRIMARY KEY,
        generation INTEGER NOT NULL
     );
     CREATE TABLE run_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client TEXT NOT NULL,
        job TEXT NOT NULL,
        is_check INTEGER NOT NULL,
        requested INTEGER NOT NULL,
        by_whom TEXT NOT NULL,
        taken INTEGER
     );
     CREATE INDEX run_requests_client ON run_requests (client, taken);
     CREATE TABLE agent_seq (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq INTEGER NOT NULL
     );
     INSERT INTO agent_seq VALUES (1, 0);",
    // 6: a console login limited to one client (a hosting customer's): NULL is the whole fleet
    "ALTER TABLE operators ADD COLUMN client TEXT;",
    // 7: restores asked for from here (the agent runs them and its run report ends them), and
    //    listings of a snapshot's directory asked of the agent with their answers
    "CREATE TABLE restore_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        item TEXT NOT NULL,
        in_place INTEGER NOT NULL,
        requested INTEGER NOT NULL,
        by_whom TEXT NOT NULL,
        taken INTEGER,
        finished INTEGER,
        status TEXT,
        message TEXT,
        run_id INTEGER
     );
     CREATE INDEX restore_requests_client ON restore_requests (client, taken);
     CREATE TABLE browse_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        path TEXT NOT NULL,
        requested INTEGER NOT NULL,
        taken INTEGER,
        answer TEXT
     );
     CREATE INDEX browse_requests_client ON browse_requests (client, taken);",
];

/// What a client may do with its repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Create objects and read; never delete, overwrite or rename (leases excepted).
    Append,
    /// Read only: restores.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Append => "append",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "append" => Ok(Role::Append),
            "read" => Ok(Role::Read),
            "admin" => Ok(Role::Admin),
            other => Err(ServerError::Invalid(format!(
                "unknown role {other:?} (append, read, admin)"
            ))),
        }
    }
}

/// The retention policy the server applies to a repository, by the time it *received* each
/// snapshot. Counts: 0 = rule off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Keep everything received within this many seconds of now.
    #[serde(default)]
    pub keep_within_secs: u64,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RepoInfo {
    pub name: String,
    pub created: i64,
    pub quota_bytes: Option<u64>,
    pub policy: Option<Policy>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientInfo {
    pub name: String,
    pub repo: String,
    pub role: Role,
    pub created: i64,
    /// When backups are expected (a cron expression, UTC), if the server should raise the
    /// alarm when one does not arrive.
    pub schedule: Option<String>,
    /// How late a backup may be before the client is overdue; seconds.
    pub grace_secs: i64,
    /// When the schedule was set (occurrences before it are not expected).
    pub schedule_set: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrashEntry {
    pub repo: String,
    pub kind: String,
    pub name: String,
    pub trashed: i64,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyRun {
    pub repo: String,
    pub started: i64,
    pub finished: i64,
    pub objects: u64,
    pub bytes: u64,
    pub damaged: Vec<String>,
    /// Objects this run repaired (not kept in the catalog: they are intact now).
    pub repaired: Vec<String>,
}

pub struct Catalog {
    db: Mutex<Connection>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Catalog")
    }
}

/// A transaction that will write: it takes the write lock when it begins (BEGIN IMMEDIATE),
/// waiting out the busy timeout for it. A deferred transaction that reads and then writes
/// cannot wait: in WAL mode its upgrade fails at once with "database is locked" when another
/// process (the running server, while an admin command edits the catalog) wrote meanwhile.
pub(crate) fn write_tx(db: &mut Connection) -> Result<rusqlite::Transaction<'_>> {
    db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)
}

pub(crate) fn db_err(e: rusqlite::Error) -> ServerError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return ServerError::Full(format!("server catalog: {e}"));
    }
    ServerError::Catalog(e.to_string())
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let mut c =
            Connection::open(path).map_err(|e| ServerError::Catalog(format!("{}: {e}", path.display())))?;
        // a catalog made by an earlier build was world-readable: no longer
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        c.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db_err)?;
        // Switching a new catalog to WAL takes an exclusive lock, and SQLite answers a second
        // opener doing the same at once (the server starting while an admin command makes the
        // catalog) with "database is locked" without waiting: try again for a few seconds. The
        // switch is made once per file; afterwards this is a no-op.
        {
            use backon::{BlockingRetryable, ConstantBuilder};
            let busy = |e: &rusqlite::Error| e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
            (|| c.pragma_update(None, "journal_mode", "WAL"))
                .retry(
                    ConstantBuilder::default()
                        .with_delay(std::time::Duration::from_millis(20))
                        .with_max_times(250),
                )
                .when(busy)
                .call()
                .map_err(db_err)?;
        }
        c.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
        c.pragma_update(None, "foreign_keys", "ON").map_err(db_err)?;
        let version: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        if version as usize > MIGRATIONS.len() {
            return Err(ServerError::Catalog(format!(
                "{}: schema version {version} is newer than this coffer knows ({}); upgrade coffer",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        // each step reads the version again under the write lock: the server and an admin
        // command opening the catalog together must not both run a migration
        let mut at = version;
        while (at as usize) < MIGRATIONS.len() {
            let tx = write_tx(&mut c)?;
            at = tx
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(db_err)?;
            if let Some(m) = MIGRATIONS.get(at as usize) {
                tx.execute_batch(m).map_err(db_err)?;
                at += 1;
                tx.pragma_update(None, "user_version", at).map_err(db_err)?;
                tx.commit().map_err(db_err)?;
            }
        }
        // SQLite syncs its WAL on every commit (synchronous FULL) and the WAL's directory
        // entry, but not the entry of a database file it creates: until the directory is
        // synced, a power cut can take the whole catalog (every token) with it
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(|e| ServerError::Catalog(format!("{}: {e}", path.display())))?;
        Ok(Catalog { db: Mutex::new(c) })
    }

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // a panic while holding the lock cannot leave SQLite inconsistent (transactions)
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- repositories

    pub fn add_repo(&self, name: &str, now: i64) -> Result<bool> {
        let n = self
            .db()
            .execute(
                "INSERT OR IGNORE INTO repos (name, created) VALUES (?1, ?2)",
                params![name, now],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    pub fn repo(&self, name: &str) -> Result<Option<RepoInfo>> {
        self.db()
            .query_row(
                "SELECT name, created, quota_bytes, policy FROM repos WHERE name = ?1",
                params![name],
                repo_row,
            )
            .optional()
            .map_err(db_err)
    }

    pub fn repos(&self) -> Result<Vec<RepoInfo>> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT name, created, quota_bytes, policy FROM repos ORDER BY name")
            .map_err(db_err)?;
        let rows = st.query_map([], repo_row).map_err(db_err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(db_err)
    }

    pub fn set_policy(&self, repo: &str, policy: Option<&Policy>) -> Result<()> {
        let json = policy.map(|p| serde_json::to_string(p).unwrap_or_default());
        self.update_repo(repo, "UPDATE repos SET policy = ?2 WHERE name = ?1", json)
    }

    pub fn set_quota(&self, repo: &str, quota: Option<u64>) -> Result<()> {
        self.update_repo(
            repo,
            "UPDATE repos SET quota_bytes = ?2 WHERE name = ?1",
            quota.map(|q| q as i64),
        )
    }

    fn update_repo<T: rusqlite::ToSql>(&self, repo: &str, sql: &str, v: T) -> Result<()> {
        let n = self.db().execute(sql, params![repo, v]).map_err(db_err)?;
        if n == 0 {
            return Err(ServerError::NotFound(format!("no repository {repo:?}")));
        }
        Ok(())
    }

    // ---- clients

    pub fn add_client(&self, name: &str, repo: &str, role: Role, token_hash: &str, now: i64) -> Result<()> {
        let db = self.db();
        let exists: bool = db
            .query_row("SELECT 1 FROM clients WHERE name = ?1", params![name], |_| {
                Ok(true)
            })
            .optional()
            .map_err(db_err)?
            .unwrap_or(false);
        if exists {
            return Err(ServerError::Invalid(format!(
                "a client named {name:?} exists already (remove it first, or choose another name)"
            )));
        }
        db.execute(
            "INSERT INTO clients (name, repo, role, token_hash, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, repo, role.as_str(), token_hash, now],
        )
        .map_err(db_err)?;
        Ok(())
    }

    pub fn remove_client(&self, name: &str) -> Result<()> {
        let n = self
            .db()
            .execute("DELETE FROM clients WHERE name = ?1", params![name])
            .map_err(db_err)?;
        if n == 0 {
            return Err(ServerError::NotFound(format!("no client {name:?}")));
        }
        Ok(())
    }

    pub fn clients(&self) -> Result<Vec<ClientInfo>> {
        let db = self.db();
        let mut st = db
            .prepare(&format!("SELECT {CLIENT_COLS} FROM clients ORDER BY name"))
            .map_err(db_err)?;
        let rows = st.query_map([], client_row).map_err(db_err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(db_err)
    }

    pub fn client(&self, name: &str) -> Result<Option<ClientInfo>> {
        self.db()
            .query_row(
                &format!("SELECT {CLIENT_COLS} FROM clients WHERE name = ?1"),
                params![name],
                client_row,
            )
            .optional()
            .map_err(db_err)
    }

    /// Set (or with `None` clear) when a client's backups are expected.
    pub fn set_schedule(&self, name: &str, schedule: Option<&str>, grace_secs: i64, now: i64) -> Result<()> {
        let n = self
            .db()
            .execute(
                "UPDATE clients SET schedule = ?2, grace_secs = ?3, schedule_set = ?4 WHERE name = ?1",
                params![name, schedule, grace_secs, now],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Err(ServerError::NotFound(format!("no client {name:?}")));
        }
        Ok(())
    }

    pub fn client_by_token_hash(&self, hash: &str) -> Result<Option<ClientInfo>> {
        self.db()
            .query_row(
                &format!("SELECT {CLIENT_COLS} FROM clients WHERE token_hash = ?1"),
                params![hash],
                client_row,
            )
            .optional()
            .map_err(db_err)
    }

    // ---- snapshots

    pub fn record_snapshot(&self, repo: &str, id: &str, received: i64, client: &str) -> Result<()> {
        self.db()
            .execute(
                "INSERT OR IGNORE INTO snapshots (repo, id, received, client) VALUES (?1, ?2, ?3, ?4)",
                params![repo, id, received, client],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// When the server received a snapshot, and from which client (`None` for snapshots
    /// recorded before clients were).
    pub fn snapshot_origin(&self, repo: &str, id: &str) -> Result<Option<(i64, Option<String>)>> {
        Ok(self.snapshot_arrival(repo, id)?.map(|(t, c, _)| (t, c)))
    }

    /// [`Self::snapshot_origin`] and the order the server recorded it in (greater is later:
    /// snapshots received within one second are told apart by it).
    pub fn snapshot_arrival(&self, repo: &str, id: &str) -> Result<Option<(i64, Option<String>, i64)>> {
        self.db()
            .query_row(
                "SELECT received, client, rowid FROM snapshots WHERE repo = ?1 AND id = ?2",
                params![repo, id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db_err)
    }

    pub fn snapshot_received(&self, repo: &str, id: &str) -> Result<Option<i64>> {
        self.db()
            .query_row(
                "SELECT received FROM snapshots WHERE repo = ?1 AND id = ?2",
                params![repo, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    /// A repository's snapshots as the server received them, newest first: id, time, client.
    pub fn snapshots(&self, repo: &str, limit: usize) -> Result<Vec<(String, i64, Option<String>)>> {
        let db = self.db();
        let mut st = db
            .prepare(
                "SELECT id, received, client FROM snapshots WHERE repo = ?1 ORDER BY received DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![repo, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(db_err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(db_err)
    }

    /// The size of everything a repository's present snapshots hold, as their backups
    /// reported it (over the repository's size: the deduplication ratio).
    pub fn logical_bytes(&self, repo: &str) -> Result<u64> {
        self.db()
            .query_row(
                "SELECT COALESCE(SUM(r.bytes_total), 0) FROM runs r
                 JOIN snapshots s ON s.repo = r.repo AND s.id = r.snapshot
                 WHERE r.repo = ?1 AND r.kind = 'backup'",
                params![repo],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(db_err)
    }

    /// How many snapshots of a repository the server has received (and not purged).
    pub fn snapshot_count(&self, repo: &str) -> Result<u64> {
        self.db()
            .query_row(
                "SELECT COUNT(*) FROM snapshots WHERE repo = ?1",
                params![repo],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db_err)
    }

    pub fn forget_snapshot(&self, repo: &str, id: &str) -> Result<()> {
        self.db()
            .execute(
                "DELETE FROM snapshots WHERE repo = ?1 AND id = ?2",
                params![repo, id],
            )
            .map_err(db_err)?;
        Ok(())
    }

    // ---- trash

    pub fn add_trash(&self, e: &TrashEntry) -> Result<()> {
        self.db()
            .execute(
                "INSERT OR REPLACE INTO trash (repo, kind, name, trashed, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.repo, e.kind, e.name, e.trashed, e.reason],
            )
            .map_err(db_err)?;
        Ok(())
    }

    pub fn remove_trash(&self, repo: &str, kind: &str, name: &str) -> Result<()> {
        self.db()
            .execute(
                "DELETE FROM trash WHERE repo = ?1 AND kind = ?2 AND name = ?3",
                params![repo, kind, name],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Whether the trash holds a record of `kind/name`.
    pub fn in_trash(&self, repo: &str, kind: &str, name: &str) -> Result<bool> {
        self.db()
            .query_row(
                "SELECT 1 FROM trash WHERE repo = ?1 AND kind = ?2 AND name = ?3",
                params![repo, kind, name],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(db_err)
    }

    pub fn trash(&self, repo: &str) -> Result<Vec<TrashEntry>> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT repo, kind, name, trashed, reason FROM trash WHERE repo = ?1 ORDER BY trashed, kind, name")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![repo], |r| {
                Ok(TrashEntry {
                    repo: r.get(0)?,
                    kind: r.get(1)?,
                    name: r.get(2)?,
                    trashed: r.get(3)?,
                    reason: r.get(4)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<std::result::Result<_, _>>().map_err(db_err)
    }

    // ---- verification

    pub fn add_verify_run(&self, v: &VerifyRun) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO verify_runs (repo, started, finished, objects, bytes, damaged) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    v.repo,
                    v.started,
                    v.finished,
                    v.objects as i64,
                    v.bytes as i64,
                    serde_json::to_string(&v.damaged).unwrap_or_default()
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    pub fn last_verify_run(&self, repo: &str) -> Result<Option<VerifyRun>> {
        self.db()
            .query_row(
                "SELECT repo, started, finished, objects, bytes, damaged FROM verify_runs
                 WHERE repo = ?1 ORDER BY id DESC LIMIT 1",
                params![repo],
                |r| {
                    let damaged: String = r.get(5)?;
                    Ok(VerifyRun {
                        repo: r.get(0)?,
                        started: r.get(1)?,
                        finished: r.get(2)?,
                        objects: r.get::<_, i64>(3)? as u64,
                        bytes: r.get::<_, i64>(4)? as u64,
                        damaged: serde_json::from_str(&damaged).unwrap_or_default(),
                        repaired: Vec::new(),
                    })
                },
            )
            .optional()
            .map_err(db_err)
    }
}

fn repo_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RepoInfo> {
    let policy: Option<String> = r.get(3)?;
    Ok(RepoInfo {
        name: r.get(0)?,
        created: r.get(1)?,
        quota_bytes: r.get::<_, Option<i64>>(2)?.map(|q| q as u64),
        policy: policy.and_then(|p| serde_json::from_str(&p).ok()),
    })
}

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientInfo> {
    let role: String = r.get(2)?;
    Ok(ClientInfo {
        name: r.get(0)?,
        repo: r.get(1)?,
        // only valid roles are ever written
        role: role.parse().unwrap_or(Role::Read),
        created: r.get(3)?,
        schedule: r.get(4)?,
        grace_secs: r.get(5)?,
        schedule_set: r.get(6)?,
    })
}

const CLIENT_COLS: &str = "name, repo, role, created, schedule, grace_secs, schedule_set";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("server.db");
        {
            let c = Catalog::open(&p).unwrap();
            assert!(c.add_repo("web", 1).unwrap());
            assert!(!c.add_repo("web", 2).unwrap());
            c.add_client("host1", "web", Role::Append, "h1", 3).unwrap();
            assert!(c.add_client("host1", "web", Role::Read, "h2", 3).is_err());
            c.set_policy(
                "web",
                Some(&Policy {
                    keep_daily: 7,
                    ..Default::default()
                }),
            )
            .unwrap();
        }
        let c = Catalog::open(&p).unwrap();
        let r = c.repo("web").unwrap().unwrap();
        assert_eq!(r.policy.unwrap().keep_daily, 7);
        let cl = c.client_by_token_hash("h1").unwrap().unwrap();
        assert_eq!((cl.name.as_str(), cl.role), ("host1", Role::Append));
        assert!(c.client_by_token_hash("h2").unwrap().is_none());
        assert!(c.set_quota("nope", Some(1)).is_err());
    }
}
