//! Restores and snapshot listings asked for from here (the console), which the client's agent
//! takes with its poll (`GET /REPO/agent`) and carries out with its own key.
//!
//! The server holds no key: it can neither restore nor list a snapshot itself. It stores what
//! was asked, hands it to the agent, and shows what came back: a restore ends with the run
//! report of the command the agent started for it (the report names the request), a listing
//! with the agent's answer (`POST /REPO/browse`). What a request may ask is what
//! [`coffer_wire::RestoreRequest`] can say; the agent checks it against its own configuration
//! (`[managed] restore`, `browse`) and refuses the rest, with a report that says why.

use coffer_wire::{valid_snapshot, BrowseAnswer, BrowseRequest, RestoreItem, RestoreRequest};
use rusqlite::{params, OptionalExtension};

use crate::catalog::{db_err, write_tx, Catalog};
use crate::records::RunStatus;
use crate::{Result, ServerError};

/// A restore asked for and not taken within this long is dropped (as runs asked for are).
pub const RESTORE_EXPIRES_SECS: i64 = crate::jobs::REQUEST_EXPIRES_SECS;

/// A restore taken by the agent and not reported within this long is given up on (the agent
/// stopped or was killed before the command could report).
pub const RESTORE_SILENT_SECS: i64 = 6 * 3600;

/// A listing not taken within this long is not sent any more: the page that asked has given up.
pub const BROWSE_EXPIRES_SECS: i64 = 60;

/// A snapshot as a request may name it (`latest`, or an id of 8 to 64 hex digits).
fn check_snapshot(snapshot: &str) -> Result<()> {
    if valid_snapshot(snapshot) {
        Ok(())
    } else {
        Err(ServerError::Invalid(format!(
            "snapshot {:?}: `latest` or an id (at least 8 hex digits)",
            snapshot.escape_debug().to_string()
        )))
    }
}

/// A restore asked for, and what became of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreRequested {
    pub id: i64,
    pub snapshot: String,
    pub item: RestoreItem,
    pub in_place: bool,
    pub requested: i64,
    pub by: String,
    /// When the agent took it (0: expired before any agent took it).
    pub taken: Option<i64>,
    pub finished: Option<i64>,
    pub status: Option<RunStatus>,
    pub message: Option<String>,
    /// The run report that ended it.
    pub run_id: Option<i64>,
}

impl Catalog {
    /// Ask the client's agent to restore `item` of `snapshot`.
    pub fn request_restore(
        &self,
        client: &str,
        snapshot: &str,
        item: &RestoreItem,
        in_place: bool,
        by: &str,
        now: i64,
    ) -> Result<i64> {
        check_snapshot(snapshot)?;
        item.valid().map_err(ServerError::Invalid)?;
        let json = serde_json::to_string(item).map_err(|e| ServerError::Invalid(e.to_string()))?;
        let mut db = self.db();
        let tx = write_tx(&mut db)?;
        tx.execute(
            "INSERT INTO restore_requests (client, snapshot, item, in_place, requested, by_whom)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![client, snapshot, json, in_place, now, by],
        )
        .map_err(db_err)?;
        let id = tx.last_insert_rowid();
        crate::jobs::wake_agents(&tx).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// The newest restores asked for a client, newest first.
    pub fn restore_requests(&self, client: &str, limit: usize) -> Result<Vec<RestoreRequested>> {
        let db = self.db();
        let mut st = db
            .prepare(
                "SELECT id, snapshot, item, in_place, requested, by_whom, taken, finished, status, message, run_id
                 FROM restore_requests WHERE client = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![client, limit as i64], |r| {
                let item: String = r.get(2)?;
                let status: Option<String> = r.get(8)?;
                Ok(RestoreRequested {
                    id: r.get(0)?,
                    snapshot: r.get(1)?,
                    item: serde_json::from_str(&item).unwrap_or(RestoreItem::Path(String::new())),
                    in_place: r.get(3)?,
                    requested: r.get(4)?,
                    by: r.get(5)?,
                    taken: r.get(6)?,
                    finished: r.get(7)?,
                    status: status.as_deref().map(RunStatus::parse),
                    message: r.get(9)?,
                    run_id: r.get(10)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// A run report that names request `id` ends it, if the request is the reporting client's
    /// and not ended yet (a report cannot end another client's restore, or change an ended one).
    pub fn restore_finished(
        &self,
        client: &str,
        id: i64,
        status: RunStatus,
        message: &str,
        run_id: i64,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .db()
            .execute(
                "UPDATE restore_requests SET finished = ?3, status = ?4, message = ?5, run_id = ?6,
                 taken = COALESCE(taken, ?3)
                 WHERE id = ?1 AND client = ?2 AND finished IS NULL AND taken IS NOT NULL AND taken > 0",
                params![id, client, now, status.as_str(), message, run_id],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    /// Ask the client's agent for the listing of `path` in `snapshot`.
    pub fn request_browse(&self, client: &str, snapshot: &str, path: &str, now: i64) -> Result<i64> {
        check_snapshot(snapshot)?;
        if !coffer_wire::valid_path(path) {
            return Err(ServerError::Invalid(format!(
                "path {:?}: an absolute path without . or ..",
                path.escape_debug().to_string()
            )));
        }
        let mut db = self.db();
        let tx = write_tx(&mut db)?;
        // listings are worth nothing once shown: the old ones go
        tx.execute(
            "DELETE FROM browse_requests WHERE requested < ?1",
            params![now - 600],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO browse_requests (client, snapshot, path, requested) VALUES (?1, ?2, ?3, ?4)",
            params![client, snapshot, path, now],
        )
        .map_err(db_err)?;
        let id = tx.last_insert_rowid();
        crate::jobs::wake_agents(&tx).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// Keep an agent's listing, if it answers a request of its own client that has no answer
    /// yet; false otherwise.
    pub fn browse_answered(&self, client: &str, answer: &BrowseAnswer) -> Result<bool> {
        let json = serde_json::to_string(answer).map_err(|e| ServerError::Invalid(e.to_string()))?;
        let n = self
            .db()
            .execute(
                "UPDATE browse_requests SET answer = ?3 WHERE id = ?1 AND client = ?2 AND answer IS NULL",
                params![answer.id, client, json],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    /// The agent's answer to listing `id` of `client`, once there is one; read once (the
    /// file names it holds are not kept past the page that shows them).
    pub fn browse_answer(&self, client: &str, id: i64) -> Result<Option<BrowseAnswer>> {
        let db = self.db();
        let json: Option<Option<String>> = db
            .query_row(
                "SELECT answer FROM browse_requests WHERE id = ?1 AND client = ?2",
                params![id, client],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let answer = json.flatten();
        if answer.is_some() {
            db.execute(
                "DELETE FROM browse_requests WHERE id = ?1 AND client = ?2",
                params![id, client],
            )
            .map_err(db_err)?;
        }
        Ok(answer.and_then(|j| serde_json::from_str::<BrowseAnswer>(&j).ok()))
    }

    /// The restores and listings a polling agent is to be given now (taken by this call).
    pub(crate) fn take_restores(
        tx: &rusqlite::Transaction<'_>,
        client: &str,
        now: i64,
    ) -> rusqlite::Result<(Vec<RestoreRequest>, Vec<BrowseRequest>)> {
        tx.execute(
            "UPDATE restore_requests SET taken = 0, finished = ?2, status = 'failed',
             message = 'not taken by the agent within an hour (is it running, with [managed]?)'
             WHERE client = ?1 AND taken IS NULL AND requested < ?3",
            params![client, now, now - RESTORE_EXPIRES_SECS],
        )?;
        tx.execute(
            "UPDATE restore_requests SET finished = ?2, status = 'failed',
             message = 'no word from the agent within 6 hours of taking it (stopped or killed?)'
             WHERE client = ?1 AND taken > 0 AND finished IS NULL AND taken < ?3",
            params![client, now, now - RESTORE_SILENT_SECS],
        )?;
        let restores: Vec<RestoreRequest> = {
            let mut st = tx.prepare(
                "SELECT id, snapshot, item, in_place FROM restore_requests
                 WHERE client = ?1 AND taken IS NULL ORDER BY id",
            )?;
            let rows = st.query_map(params![client], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter_map(|(id, snapshot, item, in_place)| {
                    Some(RestoreRequest {
                        id,
                        snapshot,
                        item: serde_json::from_str(&item).ok()?,
                        in_place,
                    })
                })
                .collect()
        };
        tx.execute(
            "UPDATE restore_requests SET taken = ?2 WHERE client = ?1 AND taken IS NULL",
            params![client, now],
        )?;
        let browse: Vec<BrowseRequest> = {
            let mut st = tx.prepare(
                "SELECT id, snapshot, path FROM browse_requests
                 WHERE client = ?1 AND taken IS NULL AND requested >= ?2 ORDER BY id",
            )?;
            let rows = st.query_map(params![client, now - BROWSE_EXPIRES_SECS], |r| {
                Ok(BrowseRequest {
                    id: r.get(0)?,
                    snapshot: r.get(1)?,
                    path: r.get(2)?,
                })
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.execute(
            "UPDATE browse_requests SET taken = ?2 WHERE client = ?1 AND taken IS NULL",
            params![client, now],
        )?;
        // (an answer no page read: its file names go after ten minutes)
        tx.execute(
            "DELETE FROM browse_requests WHERE client = ?1 AND requested < ?2",
            params![client, now - 600],
        )?;
        Ok((restores, browse))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn restores_are_taken_once_and_ended_by_their_own_client_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("server.db")).unwrap();
        let item = RestoreItem::Path("/var/www/shop".into());
        let id = c
            .request_restore("web1", "latest", &item, false, "alice", 10)
            .unwrap();
        assert!(c
            .request_restore("web1", "latest~1", &item, false, "alice", 10)
            .is_err());
        assert!(c
            .request_restore(
                "web1",
                "latest",
                &RestoreItem::Path("/a/../etc".into()),
                false,
                "alice",
                10
            )
            .is_err());
        // not ended before the agent took it
        assert!(!c.restore_finished("web1", id, RunStatus::Ok, "", 1, 11).unwrap());
        let p = c.agent_poll("web1", 0, 12).unwrap().unwrap();
        assert_eq!(p.restore.len(), 1);
        assert_eq!((p.restore[0].id, &p.restore[0].item), (id, &item));
        assert!(c.agent_poll("web1", 0, 13).unwrap().is_none(), "taken once");
        // another client's report does not end it
        assert!(!c.restore_finished("db1", id, RunStatus::Ok, "", 1, 14).unwrap());
        assert!(c
            .restore_finished("web1", id, RunStatus::Ok, "done", 7, 15)
            .unwrap());
        assert!(!c
            .restore_finished("web1", id, RunStatus::Failed, "forged", 8, 16)
            .unwrap());
        let r = &c.restore_requests("web1", 5).unwrap()[0];
        assert_eq!(
            (r.status, r.run_id, r.finished),
            (Some(RunStatus::Ok), Some(7), Some(15))
        );
        // one not taken within the hour expires, as failed
        let old = c
            .request_restore("web1", "latest", &item, true, "alice", 20)
            .unwrap();
        let p = c.agent_poll("web1", 0, 20 + RESTORE_EXPIRES_SECS + 1);
        assert!(p.unwrap().is_none());
        let r = &c.restore_requests("web1", 5).unwrap()[0];
        assert_eq!((r.id, r.taken, r.status), (old, Some(0), Some(RunStatus::Failed)));
        // one taken and never reported is given up on after a while
        let t = 10_000;
        let silent = c
            .request_restore("web1", "latest", &item, false, "alice", t)
            .unwrap();
        c.agent_poll("web1", 0, t).unwrap().unwrap();
        assert!(c
            .agent_poll("web1", 0, t + RESTORE_SILENT_SECS - 1)
            .unwrap()
            .is_none());
        assert_eq!(c.restore_requests("web1", 1).unwrap()[0].finished, None);
        c.agent_poll("web1", 0, t + RESTORE_SILENT_SECS + 1).unwrap();
        let r = &c.restore_requests("web1", 1).unwrap()[0];
        assert_eq!((r.id, r.status), (silent, Some(RunStatus::Failed)));
        assert!(r
            .message
            .as_deref()
            .unwrap_or("")
            .contains("no word from the agent"));
    }

    #[test]
    fn listings_are_answered_by_their_own_client() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("server.db")).unwrap();
        let id = c.request_browse("web1", "latest", "/var", 100).unwrap();
        let p = c.agent_poll("web1", 0, 101).unwrap().unwrap();
        assert_eq!(p.browse[0].path, "/var");
        let answer = BrowseAnswer {
            id,
            ..Default::default()
        };
        assert!(!c.browse_answered("db1", &answer).unwrap(), "not db1's");
        assert!(c.browse_answer("web1", id).unwrap().is_none());
        assert!(c.browse_answered("web1", &answer).unwrap());
        assert!(!c.browse_answered("web1", &answer).unwrap(), "answered once");
        assert!(c.browse_answer("db1", id).unwrap().is_none());
        assert_eq!(c.browse_answer("web1", id).unwrap().unwrap().id, id);
        assert!(
            c.browse_answer("web1", id).unwrap().is_none(),
            "read once: the names are not kept"
        );
        // a listing nobody took within a minute is not sent
        c.request_browse("web1", "latest", "/", 200).unwrap();
        assert!(c
            .agent_poll("web1", 0, 200 + BROWSE_EXPIRES_SECS + 1)
            .unwrap()
            .is_none());
    }
}
