//! Managed jobs: job definitions an operator sets here for a client, which the client's agent
//! takes with its poll (`GET /REPO/agent`), and runs asked for from here ("back up now").
//!
//! The server only stores and relays: the agent checks every job against what its own
//! configuration allows (`[managed]`) and runs it with its own keys, hooks and database
//! settings; nothing here can name a command to run (`coffer_wire::JobSpec` has no field
//! for one). The server checks what it can without the client's configuration (names,
//! absolute paths, a destination) so that an operator's typo is caught at once.

use std::str::FromStr;

use coffer_wire::{valid_job_name, AgentPoll, JobSpec, RunRequest};
use rusqlite::{params, OptionalExtension};

use crate::catalog::{db_err, write_tx, Catalog};
use crate::{Result, ServerError};

/// A run asked for and not taken within this long is dropped (an agent back after days must
/// not start last week's "back up now").
pub const REQUEST_EXPIRES_SECS: i64 = 3600;

/// A job as stored, with when it was last set.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoredJob {
    pub spec: JobSpec,
    pub updated: i64,
    /// What the stored definition is (a hash of it): an edit made from this one replaces it
    /// only if nobody changed it meanwhile.
    pub version: String,
}

fn version_of(json: &str) -> String {
    blake3::hash(json.as_bytes()).to_hex()[..16].to_string()
}

/// A run asked for, and whether the agent took it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Requested {
    pub id: i64,
    pub job: String,
    pub check: bool,
    pub requested: i64,
    pub by: String,
    pub taken: Option<i64>,
}

/// Check what the server can check of a job (the agent checks the rest).
pub fn check_spec(spec: &JobSpec) -> Result<()> {
    let bad = |m: String| Err(ServerError::Invalid(format!("job {:?}: {m}", spec.name)));
    if !valid_job_name(&spec.name) {
        return bad("a job name is letters, digits, '-', '_' and '.' (at most 64)".into());
    }
    if spec.paths.is_empty() && spec.mysql.is_none() && spec.postgres.is_none() {
        return bad("it backs up nothing: give --path, --mysql or --postgres".into());
    }
    for p in &spec.paths {
        let path = std::path::Path::new(p);
        if !path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)))
        {
            return bad(format!("path {p:?}: an absolute path without . or .."));
        }
    }
    if spec.to.is_empty() {
        return bad("--to names no repository of the client's configuration".into());
    }
    for t in &spec.to {
        if !valid_job_name(t) {
            return bad(format!("--to {t:?} is not a repository name"));
        }
    }
    if spec.schedule.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return bad("an empty schedule".into());
    }
    // what the agent parses with the same grammar is checked here, so that a typo is
    // answered at once and not by the agent's refusal a poll later
    let cron = |what: &str, expr: &str| {
        croner::Cron::from_str(expr).map(|_| ()).map_err(|e| {
            format!("{what} {expr:?}: {e} (a cron expression, e.g. \"30 2 * * *\" for 02:30 daily)")
        })
    };
    if let Some(s) = &spec.schedule {
        cron("schedule", s).or_else(bad)?;
    }
    if let Some(c) = &spec.check {
        cron("check schedule", &c.schedule).or_else(bad)?;
        if let Some(r) = &c.read_data_subset {
            r.parse::<coffer_core::check::ReadData>()
                .map(|_| ())
                .map_err(|e| e.to_string())
                .or_else(bad)?;
        }
    }
    if let Some(d) = &spec.random_delay {
        coffer_core::duration::parse(d, "random delay")
            .map(|_| ())
            .map_err(|e| e.to_string())
            .or_else(bad)?;
    }
    for (r, what) in [
        (&spec.limit_upload, "upload limit"),
        (&spec.limit_download, "download limit"),
    ] {
        if let Some(r) = r {
            coffer_core::limit::parse_rate(r, what)
                .map(|_| ())
                .map_err(|e| e.to_string())
                .or_else(bad)?;
        }
    }
    if let Some(n) = spec.nice.filter(|n| !(0..=19).contains(n)) {
        return bad(format!(
            "nice {n}: 0 to 19 (a client's priority can be lowered from here, not raised)"
        ));
    }
    match spec.ionice.as_deref().map(str::parse::<coffer_wire::IoClass>) {
        Some(Err(e)) => return bad(format!("ionice: {e}")),
        Some(Ok(coffer_wire::IoClass::BestEffort(n))) if n < 4 => {
            return bad(format!(
                "ionice best-effort:{n}: idle or best-effort:4 to 7 (a client's priority can be lowered from here, not raised)"
            ))
        }
        _ => {}
    }
    if let Some(m) = &spec.index_memory {
        coffer_core::limit::parse_memory(m, "index memory")
            .map(|_| ())
            .map_err(|e| e.to_string())
            .or_else(bad)?;
    }
    if spec.threads.is_some_and(|n| !(1..=256).contains(&n)) {
        return bad("threads: 1 to 256".into());
    }
    for t in &spec.tags {
        if t.is_empty() || t.contains(|c: char| c == ',' || c.is_whitespace()) || t.starts_with("job:") {
            return bad(format!(
                "tag {t:?}: no spaces or commas, and job:... tags are coffer's"
            ));
        }
    }
    if let Some(d) = spec.retention.as_ref().and_then(|r| r.keep_within.as_ref()) {
        coffer_core::duration::parse_retention(d, "keep within")
            .map(|_| ())
            .map_err(|e| e.to_string())
            .or_else(bad)?;
    }
    Ok(())
}

/// What setting a job may do to a stored job of the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    /// Add it or replace it (`coffer server client job set`).
    Any,
    /// Only add it: a job of that name is not silently replaced (the console's new-job form).
    New,
    /// Only replace the version the edit started from ([`StoredJob::version`]): a job removed
    /// or changed meanwhile (another operator, another tab) is not overwritten.
    Replace(String),
}

fn bump(tx: &rusqlite::Transaction<'_>, client: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO job_generations (client, generation) VALUES (?1, 1)
         ON CONFLICT (client) DO UPDATE SET generation = generation + 1",
        params![client],
    )?;
    wake_agents(tx)
}

/// Move the counter the waiting agent polls watch (with a change they are to be told of).
pub(crate) fn wake_agents(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("UPDATE agent_seq SET seq = seq + 1 WHERE one = 1", [])
        .map(|_| ())
}

impl Catalog {
    /// Set (add or replace) a client's job.
    pub fn set_job(&self, client: &str, spec: &JobSpec, now: i64) -> Result<()> {
        self.put_job(client, spec, now, Put::Any)
    }

    /// Set a client's job, as `put` allows.
    pub fn put_job(&self, client: &str, spec: &JobSpec, now: i64, put: Put) -> Result<()> {
        check_spec(spec)?;
        let json = serde_json::to_string(spec).map_err(|e| ServerError::Invalid(e.to_string()))?;
        let mut db = self.db();
        let tx = write_tx(&mut db)?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT spec FROM jobs WHERE client = ?1 AND name = ?2",
                params![client, spec.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        match (put, stored) {
            (Put::New, Some(_)) => {
                return Err(ServerError::Invalid(format!(
                    "client {client:?} has a job {:?} already: edit that one, or choose another name",
                    spec.name
                )))
            }
            (Put::Replace(_), None) => {
                return Err(ServerError::Invalid(format!(
                    "client {client:?} has no job {:?} any more (removed meanwhile?): add it as a new job",
                    spec.name
                )))
            }
            (Put::Replace(was), Some(stored)) if version_of(&stored) != was => {
                return Err(ServerError::Invalid(format!(
                    "job {:?} was changed by someone else since this form was opened: nothing saved; \
                     open it again to see the change",
                    spec.name
                )))
            }
            _ => {}
        }
        tx.execute(
            "INSERT INTO jobs (client, name, spec, updated) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (client, name) DO UPDATE SET spec = ?3, updated = ?4",
            params![client, spec.name, json, now],
        )
        .map_err(db_err)?;
        bump(&tx, client).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Remove a client's job; false if it had none of that name.
    pub fn remove_job(&self, client: &str, name: &str) -> Result<bool> {
        let mut db = self.db();
        let tx = write_tx(&mut db)?;
        let n = tx
            .execute(
                "DELETE FROM jobs WHERE client = ?1 AND name = ?2",
                params![client, name],
            )
            .map_err(db_err)?;
        if n > 0 {
            bump(&tx, client).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(n > 0)
    }

    /// A client's jobs by name, with the generation they make up (0: never set). A stored
    /// definition this build cannot read is left out (and logged).
    pub fn jobs(&self, client: &str) -> Result<(i64, Vec<StoredJob>)> {
        let (generation, raw) = self.raw_jobs(client)?;
        let mut out = Vec::new();
        for (json, updated) in raw {
            match serde_json::from_str::<JobSpec>(&json) {
                Ok(spec) => out.push(StoredJob {
                    spec,
                    updated,
                    version: version_of(&json),
                }),
                Err(e) => tracing::warn!("a managed job of {client:?} does not read: {e}"),
            }
        }
        Ok((generation, out))
    }

    /// The stored definitions as stored (what the agent is sent: it checks them itself).
    fn raw_jobs(&self, client: &str) -> Result<(i64, Vec<(String, i64)>)> {
        let db = self.db();
        let generation: i64 = db
            .query_row(
                "SELECT generation FROM job_generations WHERE client = ?1",
                params![client],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .unwrap_or(0);
        let mut st = db
            .prepare("SELECT spec, updated FROM jobs WHERE client = ?1 ORDER BY name")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![client], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(db_err)?;
        let out = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?;
        Ok((generation, out))
    }

    /// Ask the client's agent to run `job` (its backup, or its check) now.
    pub fn request_run(&self, client: &str, job: &str, check: bool, by: &str, now: i64) -> Result<i64> {
        if !valid_job_name(job) {
            return Err(ServerError::Invalid(format!("{job:?} is not a job name")));
        }
        let mut db = self.db();
        let tx = write_tx(&mut db)?;
        tx.execute(
            "INSERT INTO run_requests (client, job, is_check, requested, by_whom) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![client, job, check, now, by],
        )
        .map_err(db_err)?;
        let id = tx.last_insert_rowid();
        wake_agents(&tx).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// The newest runs asked for a client, newest first.
    pub fn run_requests(&self, client: &str, limit: usize) -> Result<Vec<Requested>> {
        let db = self.db();
        let mut st = db
            .prepare(
                "SELECT id, job, is_check, requested, by_whom, taken FROM run_requests
                 WHERE client = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![client, limit as i64], |r| {
                Ok(Requested {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    check: r.get(2)?,
                    requested: r.get(3)?,
                    by: r.get(4)?,
                    taken: r.get(5)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// The counter every job change and run request moves.
    pub fn agent_seq(&self) -> Result<i64> {
        self.db()
            .query_row("SELECT seq FROM agent_seq WHERE one = 1", [], |r| r.get(0))
            .map_err(db_err)
    }

    /// What a client's agent polling with generation `since` is to be told, if anything:
    /// its jobs when they changed, and the runs asked for (taken by this answer).
    pub fn agent_poll(&self, client: &str, since: i64, now: i64) -> Result<Option<AgentPoll>> {
        let (generation, jobs) = self.raw_jobs(client)?;
        let mut db = self.db();
        let tx = write_tx(&mut db)?;
        // a run asked for more than an hour ago is not started any more (taken = 0: expired)
        tx.execute(
            "UPDATE run_requests SET taken = 0 WHERE client = ?1 AND taken IS NULL AND requested < ?2",
            params![client, now - REQUEST_EXPIRES_SECS],
        )
        .map_err(db_err)?;
        let run: Vec<RunRequest> = {
            let mut st = tx
                .prepare("SELECT id, job, is_check FROM run_requests WHERE client = ?1 AND taken IS NULL ORDER BY id")
                .map_err(db_err)?;
            let rows = st
                .query_map(params![client], |r| {
                    Ok(RunRequest {
                        id: r.get(0)?,
                        job: r.get(1)?,
                        check: r.get(2)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
        };
        tx.execute(
            "UPDATE run_requests SET taken = ?2 WHERE client = ?1 AND taken IS NULL",
            params![client, now],
        )
        .map_err(db_err)?;
        let (restore, browse) = Catalog::take_restores(&tx, client, now).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        if generation == since && run.is_empty() && restore.is_empty() && browse.is_empty() {
            return Ok(None);
        }
        let jobs = jobs
            .into_iter()
            .map(|(json, _)| serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json)))
            .collect();
        Ok(Some(AgentPoll {
            generation,
            jobs,
            run,
            restore,
            browse,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(name: &str, path: &str) -> JobSpec {
        JobSpec {
            name: name.into(),
            paths: vec![path.into()],
            to: vec!["company".into()],
            ..Default::default()
        }
    }

    #[test]
    fn jobs_generations_and_run_requests() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("server.db")).unwrap();
        assert!(c.agent_poll("web1", 0, 1).unwrap().is_none(), "nothing yet");
        let first = c.agent_poll("web1", -1, 1).unwrap().unwrap();
        assert_eq!((first.generation, first.jobs.len()), (0, 0));
        let seq = c.agent_seq().unwrap();
        c.set_job("web1", &spec("www", "/var/www"), 10).unwrap();
        assert!(c.agent_seq().unwrap() > seq);
        let p = c.agent_poll("web1", 0, 11).unwrap().unwrap();
        assert_eq!(p.generation, 1);
        assert_eq!(p.jobs[0]["paths"][0], "/var/www");
        assert!(c.agent_poll("web1", 1, 12).unwrap().is_none());
        // another client's jobs are its own
        assert_eq!(c.jobs("db1").unwrap().1.len(), 0);
        let id = c.request_run("web1", "www", false, "alice", 13).unwrap();
        let p = c.agent_poll("web1", 1, 14).unwrap().unwrap();
        assert_eq!(
            p.run,
            vec![RunRequest {
                id,
                job: "www".into(),
                check: false
            }]
        );
        assert!(c.agent_poll("web1", 1, 15).unwrap().is_none(), "taken once");
        assert_eq!(c.run_requests("web1", 5).unwrap()[0].taken, Some(14));
        assert!(c.remove_job("web1", "www").unwrap());
        assert!(!c.remove_job("web1", "www").unwrap());
        assert_eq!(c.agent_poll("web1", 1, 16).unwrap().unwrap().generation, 2);
        for bad in [spec("a b", "/x"), spec("w", "relative"), spec("w", "/a/../b")] {
            assert!(c.set_job("web1", &bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn two_processes_edit_one_catalog_without_database_is_locked() {
        // the running server and an admin command are two connections to one file; CI once
        // saw `client job set` fail with "database is locked" while the server answered an
        // agent: a deferred transaction that read first could not take the write lock
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        // eight openers of a new catalog at once: the switch to WAL waits, the migrations run
        // once, none fails (one in six runs failed at the WAL switch before it was retried)
        let opened: Vec<Catalog> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| Catalog::open(&path))).collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        std::thread::scope(|s| {
            for (i, c) in opened.iter().take(2).enumerate() {
                s.spawn(move || {
                    let client = format!("web{i}");
                    for n in 0..150 {
                        c.put_job(&client, &spec(&format!("j{}", n % 7), "/srv"), n, Put::Any)
                            .unwrap();
                        c.request_run(&client, &format!("j{}", n % 7), false, "t", n)
                            .unwrap();
                        c.agent_poll(&client, -1, n).unwrap();
                    }
                });
            }
        });
        for (i, c) in opened.iter().take(2).enumerate() {
            assert_eq!(c.jobs(&format!("web{i}")).unwrap().1.len(), 7);
        }
    }

    #[test]
    fn typos_are_refused_before_the_agent_sees_them() {
        let good = spec("www", "/var/www");
        check_spec(&good).unwrap();
        let with = |f: &dyn Fn(&mut JobSpec)| {
            let mut s = good.clone();
            f(&mut s);
            check_spec(&s).unwrap_err().to_string()
        };
        let e = with(&|s| s.schedule = Some("30 25 * * *".into()));
        assert!(e.contains("schedule \"30 25 * * *\""), "{e}");
        let e = with(&|s| {
            s.check = Some(coffer_wire::CheckSpec {
                schedule: "@daily".into(),
                read_data_subset: Some("150%".into()),
            })
        });
        assert!(e.contains("read-data-subset \"150%\""), "{e}");
        let e = with(&|s| s.random_delay = Some("soon".into()));
        assert!(e.contains("random delay"), "{e}");
        let e = with(&|s| {
            s.retention = Some(coffer_wire::RetentionSpec {
                keep_within: Some("7".into()),
                ..Default::default()
            })
        });
        assert!(e.contains("keep within"), "{e}");
        let e = with(&|s| s.threads = Some(0));
        assert!(e.contains("threads"), "{e}");
        let e = with(&|s| s.index_memory = Some("100K".into()));
        assert!(e.contains("index memory \"100K\": under 1 MiB"), "{e}");
        let e = with(&|s| s.tags = vec!["nightly db".into()]);
        assert!(e.contains("tag"), "{e}");
    }

    #[test]
    fn new_does_not_replace_and_replace_does_not_add() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("server.db")).unwrap();
        let e = c
            .put_job("web1", &spec("www", "/a"), 1, Put::Replace("0".into()))
            .unwrap_err();
        assert!(e.to_string().contains("no job \"www\" any more"), "{e}");
        assert_eq!(c.jobs("web1").unwrap().1.len(), 0);
        c.put_job("web1", &spec("www", "/a"), 2, Put::New).unwrap();
        let e = c.put_job("web1", &spec("www", "/b"), 3, Put::New).unwrap_err();
        assert!(e.to_string().contains("has a job \"www\" already"), "{e}");
        let was = c.jobs("web1").unwrap().1[0].version.clone();
        c.put_job("web1", &spec("www", "/c"), 4, Put::Replace(was.clone()))
            .unwrap();
        let (generation, jobs) = c.jobs("web1").unwrap();
        assert_eq!(
            (generation, jobs[0].spec.paths.clone()),
            (2, vec!["/c".to_string()])
        );
        // a second edit from the same form: someone else's change is not undone
        let e = c
            .put_job("web1", &spec("www", "/d"), 5, Put::Replace(was))
            .unwrap_err();
        assert!(e.to_string().contains("changed by someone else"), "{e}");
        assert_eq!(c.jobs("web1").unwrap().1[0].spec.paths, ["/c"]);
    }
}
