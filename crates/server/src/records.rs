//! The monitoring records in the catalog: run reports, incidents, the alert outbox and
//! server settings.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::catalog::{db_err, Catalog};
use crate::{Result, ServerError};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    /// Finished, but with warnings (files that could not be read, ...).
    Warning,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Warning => "warning",
            RunStatus::Failed => "failed",
        }
    }
    pub(crate) fn parse(s: &str) -> RunStatus {
        match s {
            "ok" => RunStatus::Ok,
            "warning" => RunStatus::Warning,
            _ => RunStatus::Failed,
        }
    }
}

pub use coffer_wire::RUN_KINDS;

/// What a client sends after each run (`POST /REPO/runs`, JSON). Times are the client's
/// claims, kept for display; the server judges by the time it received the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub kind: String,
    pub status: RunStatus,
    #[serde(default)]
    pub host: String,
    pub started: i64,
    pub finished: i64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes_read: u64,
    #[serde(default)]
    pub bytes_added: u64,
    /// Size of everything the snapshot holds (for the deduplication ratio).
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub warnings: u64,
    #[serde(default)]
    pub errors: u64,
    /// The first warnings and errors, one line each.
    #[serde(default)]
    pub messages: Vec<String>,
    /// The configured job the run belongs to (`coffer run`, the agent), if any.
    #[serde(default)]
    pub job: String,
    /// When the job's next backup is due by its schedule (unix seconds): the server raises
    /// OVERDUE when none has arrived by then (plus the client's grace). Ignored unless after
    /// the run and within 35 days of it.
    #[serde(default)]
    pub next_expected: Option<i64>,
    /// Every scheduled job of the client's configuration when it ran: a job no longer there
    /// is no longer expected.
    #[serde(default)]
    pub jobs: Vec<String>,
    /// A backup's new and changed files, and its new data before compression (with
    /// `bytes_added`, after it): what the ransomware alarm compares with the client's usual.
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub bytes_new_raw: u64,
    /// The restore asked for on the server that this run carried out (the agent says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<i64>,
}

/// How far ahead a report may announce the next backup (a monthly job, plus its delay).
const MAX_ANNOUNCED_SECS: i64 = 35 * 86_400;

/// Reports larger than this are refused.
pub const MAX_REPORT: usize = 64 << 10;
const MAX_MESSAGES: usize = 20;
const MAX_MESSAGE_LEN: usize = 500;

impl RunReport {
    /// Check a received report and trim what is only for display.
    pub fn validated(mut self) -> Result<RunReport> {
        if !RUN_KINDS.contains(&self.kind.as_str()) {
            return Err(ServerError::Invalid(format!(
                "run kind {:?}: one of {}",
                self.kind,
                RUN_KINDS.join(", ")
            )));
        }
        if let Some(s) = &self.snapshot {
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ServerError::Invalid("snapshot: 64 hex digits".into()));
            }
        }
        self.host = clip(&self.host, 255);
        if !valid_job(&self.job) {
            return Err(ServerError::Invalid(
                "job: at most 64 letters, digits, '-', '_' and '.'".into(),
            ));
        }
        self.jobs.truncate(100);
        if self.jobs.iter().any(|j| !valid_job(j)) {
            return Err(ServerError::Invalid(
                "jobs: names of at most 64 letters, digits, '-', '_' and '.'".into(),
            ));
        }
        self.next_expected = self
            .next_expected
            .filter(|t| *t > self.finished && *t <= self.finished.saturating_add(MAX_ANNOUNCED_SECS));
        self.messages.truncate(MAX_MESSAGES);
        for m in &mut self.messages {
            *m = clip(m, MAX_MESSAGE_LEN);
        }
        Ok(self)
    }
}

fn valid_job(j: &str) -> bool {
    j.len() <= 64
        && j.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn clip(s: &str, max: usize) -> String {
    let one: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one.len() <= max {
        one
    } else {
        format!("{}…", &one[..one.floor_char_boundary(max)])
    }
}

/// A stored run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub id: i64,
    pub client: String,
    pub repo: String,
    /// Server time the report arrived.
    pub received: i64,
    #[serde(flatten)]
    pub report: RunReport,
}

/// A problem from when it was first seen until it cleared.
#[derive(Clone, Debug, Serialize)]
pub struct Incident {
    pub id: i64,
    /// A client's name, or `repository NAME`.
    pub subject: String,
    /// `failed`, `overdue`, `warnings`, `damage`, `quota`.
    pub kind: String,
    pub opened: i64,
    pub closed: Option<i64>,
    pub detail: String,
}

/// A message waiting to be delivered (or delivered: kept as the alert log).
#[derive(Clone, Debug, Serialize)]
pub struct OutboxItem {
    pub id: i64,
    pub created: i64,
    /// `email` or `webhook`.
    pub channel: String,
    pub target: String,
    pub subject: String,
    pub body: String,
    pub attempts: i64,
    pub sent: Option<i64>,
    pub failed: Option<i64>,
    pub last_error: Option<String>,
}

const RUN_COLS: &str =
    "id, client, repo, received, kind, status, host, started, finished, duration_ms, files, \
                        bytes_read, bytes_added, snapshot, warnings, errors, messages, bytes_total, job, \
                        next_expected, jobs, files_changed, bytes_new_raw";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let status: String = r.get(5)?;
    let messages: String = r.get(16)?;
    Ok(Run {
        id: r.get(0)?,
        client: r.get(1)?,
        repo: r.get(2)?,
        received: r.get(3)?,
        report: RunReport {
            kind: r.get(4)?,
            status: RunStatus::parse(&status),
            host: r.get(6)?,
            started: r.get(7)?,
            finished: r.get(8)?,
            duration_ms: r.get::<_, i64>(9)? as u64,
            files: r.get::<_, i64>(10)? as u64,
            bytes_read: r.get::<_, i64>(11)? as u64,
            bytes_added: r.get::<_, i64>(12)? as u64,
            snapshot: r.get(13)?,
            warnings: r.get::<_, i64>(14)? as u64,
            errors: r.get::<_, i64>(15)? as u64,
            messages: serde_json::from_str(&messages).unwrap_or_default(),
            bytes_total: r.get::<_, i64>(17)? as u64,
            job: r.get(18)?,
            next_expected: r.get(19)?,
            jobs: serde_json::from_str(&r.get::<_, String>(20)?).unwrap_or_default(),
            files_changed: r.get::<_, i64>(21)? as u64,
            bytes_new_raw: r.get::<_, i64>(22)? as u64,
            request: None,
        },
    })
}

const INCIDENT_COLS: &str = "id, subject, kind, opened, closed, detail";

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    Ok(Incident {
        id: r.get(0)?,
        subject: r.get(1)?,
        kind: r.get(2)?,
        opened: r.get(3)?,
        closed: r.get(4)?,
        detail: r.get(5)?,
    })
}

const OUTBOX_COLS: &str = "id, created, channel, target, subject, body, attempts, sent, failed, last_error";

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxItem> {
    Ok(OutboxItem {
        id: r.get(0)?,
        created: r.get(1)?,
        channel: r.get(2)?,
        target: r.get(3)?,
        subject: r.get(4)?,
        body: r.get(5)?,
        attempts: r.get(6)?,
        sent: r.get(7)?,
        failed: r.get(8)?,
        last_error: r.get(9)?,
    })
}

fn collect<T>(
    rows: rusqlite::MappedRows<'_, impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>>,
) -> Result<Vec<T>> {
    rows.collect::<std::result::Result<_, _>>().map_err(db_err)
}

impl Catalog {
    // ---- runs

    /// The earlier backup report that was not a failure and named this snapshot, if any: its
    /// run id, client, start and end. One snapshot backs one successful run, so an old one
    /// cannot be reported again (the same report sent again, a retry, is that run).
    pub fn snapshot_report(&self, repo: &str, snapshot: &str) -> Result<Option<(i64, String, i64, i64)>> {
        self.db()
            .query_row(
                "SELECT id, client, started, finished FROM runs WHERE repo = ?1 AND snapshot = ?2
                   AND kind = 'backup' AND status != 'failed' ORDER BY id LIMIT 1",
                params![repo, snapshot],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db_err)
    }

    pub fn add_run(&self, client: &str, repo: &str, received: i64, r: &RunReport) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO runs (client, repo, received, kind, status, host, started, finished, duration_ms,
                               files, bytes_read, bytes_added, snapshot, warnings, errors, messages, bytes_total,
                               job, next_expected, jobs, files_changed, bytes_new_raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
                     ?21, ?22)",
            params![
                client,
                repo,
                received,
                r.kind,
                r.status.as_str(),
                r.host,
                r.started,
                r.finished,
                r.duration_ms as i64,
                r.files as i64,
                r.bytes_read as i64,
                r.bytes_added as i64,
                r.snapshot,
                r.warnings as i64,
                r.errors as i64,
                serde_json::to_string(&r.messages).unwrap_or_default(),
                r.bytes_total as i64,
                r.job,
                r.next_expected,
                serde_json::to_string(&r.jobs).unwrap_or_default(),
                r.files_changed as i64,
                r.bytes_new_raw as i64,
            ],
        )
        .map_err(db_err)?;
        Ok(db.last_insert_rowid())
    }

    /// A client's newest runs first (of one kind if given).
    pub fn runs(&self, client: &str, kind: Option<&str>, limit: usize) -> Result<Vec<Run>> {
        let db = self.db();
        let mut st = db
            .prepare(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE client = ?1 AND (?2 IS NULL OR kind = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![client, kind, limit as i64], run_row)
            .map_err(db_err)?;
        collect(rows)
    }

    /// Every client's backups since `since`: when each was received and how it ended, by
    /// client (one query for the fleet page).
    pub fn backups_since(&self, since: i64) -> Result<HashMap<String, Vec<(i64, RunStatus)>>> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT client, received, status FROM runs WHERE kind = 'backup' AND received >= ?1")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![since], |r| {
                let status: String = r.get(2)?;
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    RunStatus::parse(&status),
                ))
            })
            .map_err(db_err)?;
        let mut out: HashMap<String, Vec<(i64, RunStatus)>> = HashMap::new();
        for (client, t, st) in collect(rows)? {
            out.entry(client).or_default().push((t, st));
        }
        Ok(out)
    }

    /// The client's good backups of `job` before run `before` (newest first, at most `n`).
    pub fn backups_before(&self, client: &str, job: &str, before: i64, n: usize) -> Result<Vec<Run>> {
        let db = self.db();
        let mut st = db
            .prepare(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE client = ?1 AND job = ?2 AND kind = 'backup'
                 AND status != 'failed' AND id < ?3 ORDER BY id DESC LIMIT ?4"
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![client, job, before, n as i64], run_row)
            .map_err(db_err)?;
        collect(rows)
    }

    /// Record an anomaly (one open per client: a second while one is open is not recorded).
    pub fn add_anomaly(&self, client: &str, repo: &str, run: i64, now: i64, detail: &str) -> Result<bool> {
        let db = self.db();
        let open: i64 = db
            .query_row(
                "SELECT count(*) FROM anomalies WHERE client = ?1 AND acked IS NULL",
                params![client],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if open > 0 {
            return Ok(false);
        }
        db.execute(
            "INSERT INTO anomalies (client, repo, run_id, opened, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![client, repo, run, now, detail],
        )
        .map_err(db_err)?;
        Ok(true)
    }

    /// The client's anomalies no operator has acknowledged: (opened, detail).
    pub fn open_anomalies(&self, client: &str) -> Result<Vec<(i64, String)>> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT opened, detail FROM anomalies WHERE client = ?1 AND acked IS NULL ORDER BY id")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![client], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        collect(rows)
    }

    /// Whether a client of `repo` has an anomaly no operator acknowledged (retention waits).
    pub fn repo_has_open_anomaly(&self, repo: &str) -> Result<bool> {
        self.db()
            .query_row(
                "SELECT count(*) FROM anomalies WHERE repo = ?1 AND acked IS NULL",
                params![repo],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(db_err)
    }

    /// An operator has looked: the client's open anomalies are closed. Returns how many.
    pub fn ack_anomalies(&self, client: &str, now: i64) -> Result<usize> {
        self.db()
            .execute(
                "UPDATE anomalies SET acked = ?2 WHERE client = ?1 AND acked IS NULL",
                params![client, now],
            )
            .map_err(db_err)
    }

    /// What the client's agent announced: for each scheduled job of its newest report of a
    /// configured job, the newest report of that job that said when the next is due:
    /// (job, next_expected, received, duration_ms).
    pub fn announced(&self, client: &str) -> Result<Vec<(String, i64, i64, u64)>> {
        let db = self.db();
        let current: Option<String> = db
            .query_row(
                "SELECT jobs FROM runs WHERE client = ?1 AND kind = 'backup' AND job != ''
                 ORDER BY id DESC LIMIT 1",
                params![client],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let Some(current) = current.and_then(|j| serde_json::from_str::<Vec<String>>(&j).ok()) else {
            return Ok(Vec::new());
        };
        let mut st = db
            .prepare(
                "SELECT job, next_expected, received, duration_ms FROM runs WHERE id IN
                   (SELECT max(id) FROM runs WHERE client = ?1 AND kind = 'backup' AND job != ''
                    AND next_expected IS NOT NULL GROUP BY job)
                 ORDER BY job",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![client], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
            })
            .map_err(db_err)?;
        let all: Vec<(String, i64, i64, u64)> = collect(rows)?;
        Ok(all.into_iter().filter(|(j, ..)| current.contains(j)).collect())
    }

    /// A client's newest backup that stored a snapshot (ok or with warnings).
    pub fn last_good_backup(&self, client: &str) -> Result<Option<Run>> {
        self.db()
            .query_row(
                &format!(
                    "SELECT {RUN_COLS} FROM runs WHERE client = ?1 AND kind = 'backup' AND status != 'failed'
                     ORDER BY id DESC LIMIT 1"
                ),
                params![client],
                run_row,
            )
            .optional()
            .map_err(db_err)
    }

    /// Bytes a client's good backups received after `since` added to its repository.
    pub fn bytes_added_since(&self, client: &str, since: i64) -> Result<u64> {
        self.db()
            .query_row(
                "SELECT COALESCE(SUM(bytes_added), 0) FROM runs
                 WHERE client = ?1 AND kind = 'backup' AND status != 'failed' AND received > ?2",
                params![client, since],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(db_err)
    }

    // ---- incidents

    /// Open an incident unless one of this subject and kind is open; returns it if new.
    pub fn open_incident(
        &self,
        subject: &str,
        kind: &str,
        now: i64,
        detail: &str,
    ) -> Result<Option<Incident>> {
        let db = self.db();
        let n = db
            .execute(
                "INSERT OR IGNORE INTO incidents (subject, kind, opened, detail) VALUES (?1, ?2, ?3, ?4)",
                params![subject, kind, now, detail],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Ok(None);
        }
        let id = db.last_insert_rowid();
        Ok(Some(Incident {
            id,
            subject: subject.to_string(),
            kind: kind.to_string(),
            opened: now,
            closed: None,
            detail: detail.to_string(),
        }))
    }

    /// Close an open incident; false if it was closed already (by a concurrent judgement,
    /// which then sends the recovery notice).
    pub fn close_incident(&self, id: i64, now: i64) -> Result<bool> {
        let n = self
            .db()
            .execute(
                "UPDATE incidents SET closed = ?2 WHERE id = ?1 AND closed IS NULL",
                params![id, now],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    pub fn open_incidents(&self) -> Result<Vec<Incident>> {
        let db = self.db();
        let mut st = db
            .prepare(&format!(
                "SELECT {INCIDENT_COLS} FROM incidents WHERE closed IS NULL ORDER BY id"
            ))
            .map_err(db_err)?;
        let rows = st.query_map([], incident_row).map_err(db_err)?;
        collect(rows)
    }

    /// Newest first; of one subject if given.
    pub fn incidents(&self, subject: Option<&str>, limit: usize) -> Result<Vec<Incident>> {
        let db = self.db();
        let mut st = db
            .prepare(&format!(
                "SELECT {INCIDENT_COLS} FROM incidents WHERE (?1 IS NULL OR subject = ?1)
                 ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![subject, limit as i64], incident_row)
            .map_err(db_err)?;
        collect(rows)
    }

    // ---- outbox

    pub fn enqueue(&self, now: i64, channel: &str, target: &str, subject: &str, body: &str) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO outbox (created, channel, target, subject, body, next_try) VALUES (?1, ?2, ?3, ?4, ?5, ?1)",
                params![now, channel, target, subject, body],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Messages due for a (new) delivery attempt.
    pub fn due_messages(&self, now: i64) -> Result<Vec<OutboxItem>> {
        let db = self.db();
        let mut st = db
            .prepare(&format!(
                "SELECT {OUTBOX_COLS} FROM outbox WHERE sent IS NULL AND failed IS NULL AND next_try <= ?1
                 ORDER BY id LIMIT 100"
            ))
            .map_err(db_err)?;
        let rows = st.query_map(params![now], outbox_row).map_err(db_err)?;
        collect(rows)
    }

    /// Take a due message for one delivery attempt (`until` is when another process may try
    /// again if this one dies); false if someone else has it.
    pub fn claim_message(&self, id: i64, now: i64, until: i64) -> Result<bool> {
        let n = self
            .db()
            .execute(
                "UPDATE outbox SET next_try = ?3 WHERE id = ?1 AND next_try <= ?2 AND sent IS NULL AND failed IS NULL",
                params![id, now, until],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    pub fn message_sent(&self, id: i64, now: i64) -> Result<()> {
        self.db()
            .execute(
                "UPDATE outbox SET sent = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
                params![id, now],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Record a failed attempt: try again at `retry`, or give up (`None`).
    pub fn message_failed(&self, id: i64, now: i64, retry: Option<i64>, error: &str) -> Result<()> {
        self.db()
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?3,
                        next_try = COALESCE(?4, next_try), failed = CASE WHEN ?4 IS NULL THEN ?2 END
                 WHERE id = ?1",
                params![id, now, error, retry],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Newest first.
    pub fn messages(&self, limit: usize) -> Result<Vec<OutboxItem>> {
        let db = self.db();
        let mut st = db
            .prepare(&format!(
                "SELECT {OUTBOX_COLS} FROM outbox ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(db_err)?;
        let rows = st.query_map(params![limit as i64], outbox_row).map_err(db_err)?;
        collect(rows)
    }

    // ---- console operators

    /// Add an operator; `client`: the one client it may see (a customer's login), or none for
    /// the whole fleet.
    pub fn add_operator(
        &self,
        name: &str,
        password_hash: &str,
        now: i64,
        client: Option<&str>,
    ) -> Result<()> {
        let n = self
            .db()
            .execute(
                "INSERT OR IGNORE INTO operators (name, password_hash, created, client) VALUES (?1, ?2, ?3, ?4)",
                params![name, password_hash, now, client],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Err(ServerError::Invalid(format!(
                "an operator named {name:?} exists already (remove it first)"
            )));
        }
        Ok(())
    }

    pub fn operator_hash(&self, name: &str) -> Result<Option<String>> {
        self.db()
            .query_row(
                "SELECT password_hash FROM operators WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    pub fn remove_operator(&self, name: &str) -> Result<()> {
        let db = self.db();
        db.execute("DELETE FROM sessions WHERE operator = ?1", params![name])
            .map_err(db_err)?;
        let n = db
            .execute("DELETE FROM operators WHERE name = ?1", params![name])
            .map_err(db_err)?;
        if n == 0 {
            return Err(ServerError::NotFound(format!("no operator {name:?}")));
        }
        Ok(())
    }

    /// Operators: name, when added, and the one client a limited login may see.
    pub fn operators(&self) -> Result<Vec<(String, i64, Option<String>)>> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT name, created, client FROM operators ORDER BY name")
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db_err)?;
        collect(rows)
    }

    /// The one client an operator may see (`Some(None)`: the whole fleet; `None`: no such
    /// operator).
    pub fn operator_client(&self, name: &str) -> Result<Option<Option<String>>> {
        self.db()
            .query_row(
                "SELECT client FROM operators WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    // ---- console sessions and one-time login links

    pub fn add_session(
        &self,
        token_hash: &str,
        operator: &str,
        csrf: &str,
        kind: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        let db = self.db();
        db.execute("DELETE FROM sessions WHERE expires <= ?1", params![now])
            .map_err(db_err)?;
        db.execute(
            "INSERT INTO sessions (token_hash, operator, kind, csrf, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![token_hash, operator, kind, csrf, now, expires],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// A live session (or link) of this kind: operator, CSRF token, and the one client the
    /// operator may see (none: the whole fleet).
    pub fn session(
        &self,
        token_hash: &str,
        kind: &str,
        now: i64,
    ) -> Result<Option<(String, String, Option<String>)>> {
        self.db()
            .query_row(
                "SELECT s.operator, s.csrf, o.client FROM sessions s JOIN operators o ON o.name = s.operator
                 WHERE s.token_hash = ?1 AND s.kind = ?2 AND s.expires > ?3",
                params![token_hash, kind, now],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db_err)
    }

    pub fn delete_session(&self, token_hash: &str) -> Result<()> {
        self.db()
            .execute("DELETE FROM sessions WHERE token_hash = ?1", params![token_hash])
            .map_err(db_err)?;
        Ok(())
    }

    // ---- settings

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.db()
            .query_row("SELECT value FROM settings WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)
    }

    /// Set (or with `None` remove) a setting.
    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        let db = self.db();
        match value {
            Some(v) => db.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            ),
            None => db.execute("DELETE FROM settings WHERE key = ?1", params![key]),
        }
        .map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: RunStatus) -> RunReport {
        RunReport {
            kind: "backup".into(),
            status,
            host: "web1\nforged line".into(),
            started: 10,
            finished: 20,
            duration_ms: 10_000,
            files: 3,
            bytes_read: 100,
            bytes_added: 10,
            bytes_total: 1000,
            snapshot: Some("ab".repeat(32)),
            warnings: 0,
            errors: 0,
            messages: vec!["x".repeat(2000)],
            job: String::new(),
            next_expected: None,
            jobs: Vec::new(),
            files_changed: 0,
            bytes_new_raw: 0,
            request: None,
        }
    }

    #[test]
    fn runs_incidents_outbox_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("s.db")).unwrap();
        let r = report(RunStatus::Ok).validated().unwrap();
        assert!(!r.host.contains('\n'));
        assert!(r.messages[0].len() < 600);
        c.add_run("web1", "web", 100, &r).unwrap();
        c.add_run("web1", "web", 200, &report(RunStatus::Failed)).unwrap();
        assert_eq!(
            c.runs("web1", None, 10).unwrap()[0].report.status,
            RunStatus::Failed
        );
        assert_eq!(c.last_good_backup("web1").unwrap().unwrap().received, 100);
        assert_eq!(c.bytes_added_since("web1", 99).unwrap(), 10);
        assert_eq!(
            c.bytes_added_since("web1", 100).unwrap(),
            0,
            "failed runs add nothing"
        );
        let mut bad = report(RunStatus::Ok);
        bad.kind = "rm -rf".into();
        assert!(bad.validated().is_err());

        // one open incident per subject and kind
        let i = c.open_incident("web1", "failed", 5, "boom").unwrap().unwrap();
        assert!(c.open_incident("web1", "failed", 6, "boom").unwrap().is_none());
        assert!(c.close_incident(i.id, 7).unwrap());
        assert!(!c.close_incident(i.id, 8).unwrap(), "closed once");
        assert!(c.open_incident("web1", "failed", 8, "again").unwrap().is_some());
        assert_eq!(c.open_incidents().unwrap().len(), 1);

        c.enqueue(1, "email", "a@b", "s", "b").unwrap();
        let m = &c.due_messages(1).unwrap()[0];
        c.message_failed(m.id, 1, Some(60), "refused").unwrap();
        assert!(c.due_messages(59).unwrap().is_empty());
        assert_eq!(c.due_messages(60).unwrap().len(), 1);
        c.message_sent(m.id, 61).unwrap();
        assert!(c.due_messages(100).unwrap().is_empty());
        assert_eq!(c.messages(5).unwrap()[0].attempts, 2);

        c.set_setting("k", Some("v")).unwrap();
        c.set_setting("k", Some("w")).unwrap();
        assert_eq!(c.setting("k").unwrap().as_deref(), Some("w"));
        c.set_setting("k", None).unwrap();
        assert!(c.setting("k").unwrap().is_none());
    }
}
