//! Runs in progress. A running command posts what it has done so far every few seconds
//! (`POST /REPO/progress`, [`coffer_wire::RunProgress`]); the server keeps the last word of
//! each run in memory for the console, and forgets it when the run's report arrives. Not in
//! the catalog: it is worth nothing once the report is in, and a restart loses seconds of it.
//!
//! Bounded: at most [`PER_CLIENT`] runs per client (a client runs its jobs one at a time per
//! job), and a run not heard from for [`FORGET_SECS`] is dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use coffer_wire::RunProgress;

use crate::http::{authorize, err, read_role_may_report, ApiError, Need, St};

/// A run not heard from for this long is shown as silent.
pub const SILENT_SECS: i64 = 3 * coffer_wire::PROGRESS_EVERY_SECS as i64;
/// ... and after this long it is forgotten (the process died without a report).
pub const FORGET_SECS: i64 = 15 * 60;
/// Runs in progress kept per client.
pub const PER_CLIENT: usize = 8;
/// The largest progress body.
const MAX_BODY: usize = 4096;

/// One run in progress as the server last heard of it.
#[derive(Clone, Debug)]
pub struct Live {
    pub progress: RunProgress,
    /// When the server first and last heard of it (server clock).
    pub first_heard: i64,
    pub heard: i64,
    /// When its counts last moved (a run stuck on a dead mount still posts).
    pub moved: i64,
    /// Its report arrived: kept a while so that a progress post that crossed the report on
    /// the way does not bring the run back.
    ended: bool,
}

/// A client's runs, by kind and job.
type ClientRuns = HashMap<(String, String), Live>;

/// The runs in progress, by client, then kind and job: a post touches its own client's few
/// entries, not the fleet's.
#[derive(Default, Debug)]
pub struct LiveRuns {
    runs: Mutex<HashMap<String, ClientRuns>>,
}

impl LiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClientRuns>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run's progress arrived; false when the client has [`PER_CLIENT`] other runs going.
    pub fn heard(&self, client: &str, p: RunProgress, now: i64) -> bool {
        let mut all = self.lock();
        let runs = all.entry(client.to_string()).or_default();
        runs.retain(|_, l| now - l.heard < FORGET_SECS);
        let key = (p.kind.clone(), p.job.clone());
        let going = runs.values().filter(|l| !l.ended).count();
        if let Some(l) = runs.get_mut(&key) {
            // a post that crossed the report: its run's start, within one interval of the
            // end (a next run started in the same second posts first a whole interval after
            // it started, so after the end)
            if l.ended
                && l.progress.started == p.started
                && now - l.heard < coffer_wire::PROGRESS_EVERY_SECS as i64
            {
                return true;
            }
            if l.ended {
                // a new run of an ended job: counted like a new one
                if going >= PER_CLIENT {
                    return false;
                }
                l.ended = false;
                l.first_heard = now;
                l.moved = now;
            } else if l.progress.started != p.started {
                // a new run of the job (the last one died without a report)
                l.first_heard = now;
                l.moved = now;
            }
            if (l.progress.files, l.progress.bytes) != (p.files, p.bytes) {
                l.moved = now;
            }
            l.progress = p;
            l.heard = now;
            return true;
        }
        if going >= PER_CLIENT {
            return false;
        }
        runs.insert(
            key,
            Live {
                progress: p,
                first_heard: now,
                heard: now,
                moved: now,
                ended: false,
            },
        );
        true
    }

    /// A run's report arrived: it is no longer in progress (`started`: the run's start, as
    /// its report and its progress say it). The report of another run of the job (one that
    /// found it running and stopped, a hook that failed) leaves the running one alone.
    pub fn ended(&self, client: &str, kind: &str, job: &str, started: i64, now: i64) {
        let key = (kind.to_string(), job.to_string());
        let mut all = self.lock();
        let runs = all.entry(client.to_string()).or_default();
        runs.retain(|_, l| now - l.heard < FORGET_SECS);
        if runs
            .get(&key)
            .is_some_and(|l| !l.ended && l.progress.started != started)
        {
            return;
        }
        let l = runs.entry(key).or_insert_with(|| Live {
            progress: RunProgress {
                kind: kind.to_string(),
                job: job.to_string(),
                ..Default::default()
            },
            first_heard: now,
            heard: now,
            moved: now,
            ended: true,
        });
        l.progress.started = started;
        l.heard = now;
        l.ended = true;
    }

    /// A client's runs in progress, oldest first.
    pub fn of(&self, client: &str, now: i64) -> Vec<Live> {
        let mut v: Vec<Live> = self
            .lock()
            .get(client)
            .map(|runs| {
                runs.values()
                    .filter(|l| !l.ended && now - l.heard < FORGET_SECS)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|l| (l.first_heard, l.progress.kind.clone(), l.progress.job.clone()));
        v
    }

    /// How many runs each client has in progress (heard from lately); what is past
    /// forgetting goes meanwhile (a client that stopped posting is not visited otherwise).
    pub fn counts(&self, now: i64) -> HashMap<String, usize> {
        let mut all = self.lock();
        all.retain(|_, runs| {
            runs.retain(|_, l| now - l.heard < FORGET_SECS);
            !runs.is_empty()
        });
        all.iter()
            .map(|(c, runs)| {
                let n = runs
                    .values()
                    .filter(|l| !l.ended && now - l.heard < SILENT_SECS)
                    .count();
                (c.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// `POST /REPO/progress`: any role (a read token for restores and checks only, as its run
/// reports).
pub(crate) async fn post_progress(
    State(st): St,
    UrlPath(repo): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = format!("/{repo}/{}", coffer_wire::PROGRESS_PATH);
    let client = authorize(&st, &headers, &repo, Need::Read, &Method::POST, &path).await?;
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| err(StatusCode::PAYLOAD_TOO_LARGE, "progress is at most 4 KiB"))?;
    let p: RunProgress =
        serde_json::from_slice(&bytes).map_err(|e| err(StatusCode::BAD_REQUEST, format!("progress: {e}")))?;
    p.valid().map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    read_role_may_report(&Method::POST, &path, &client, &p.kind, false)?;
    if !st.server.live.heard(&client.name, p, st.server.now()) {
        return Err(err(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "client {:?} has {PER_CLIENT} runs in progress already",
                client.name
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: &str, job: &str, started: i64, files: u64) -> RunProgress {
        RunProgress {
            kind: kind.into(),
            job: job.into(),
            started,
            files,
            bytes: files * 10,
        }
    }

    #[test]
    fn runs_are_kept_until_reported_bounded_and_forgotten() {
        let l = LiveRuns::default();
        assert!(l.heard("web1", p("backup", "www", 100, 1), 1000));
        assert!(l.heard("web1", p("backup", "www", 100, 5), 1005));
        assert!(l.heard("db1", p("backup", "", 100, 5), 1005));
        let now = l.of("web1", 1006);
        assert_eq!(now.len(), 1);
        assert_eq!(
            (now[0].progress.files, now[0].first_heard, now[0].heard),
            (5, 1000, 1005)
        );
        assert_eq!(l.counts(1006).get("web1"), Some(&1));
        assert_eq!(l.counts(1005 + SILENT_SECS).get("web1"), None, "silent");
        // a new run of the job starts afresh
        assert!(l.heard("web1", p("backup", "www", 200, 1), 1010));
        assert_eq!(l.of("web1", 1010)[0].first_heard, 1010);
        // the report of another run of the job (it found this one running) leaves it be
        l.ended("web1", "backup", "www", 150, 1011);
        assert_eq!(l.of("web1", 1011).len(), 1);
        l.ended("web1", "backup", "www", 200, 1011);
        assert!(l.of("web1", 1011).is_empty());
        // a post that crossed the report does not bring the run back; the next run shows
        assert!(l.heard("web1", p("backup", "www", 200, 2), 1012));
        assert!(l.of("web1", 1012).is_empty());
        // a next run that started in the same second as the ended one: its first post comes
        // an interval later, and shows
        l.ended("web1", "backup", "hand", 500, 1012);
        assert!(l.heard("web1", p("backup", "hand", 500, 1), 1017));
        assert_eq!(l.of("web1", 1017).len(), 1);
        l.ended("web1", "backup", "hand", 500, 1018);
        assert!(l.heard("web1", p("backup", "www", 300, 1), 1013));
        assert_eq!(l.of("web1", 1013)[0].first_heard, 1013);
        l.ended("web1", "backup", "www", 300, 1014);
        assert_eq!(l.of("db1", 1011).len(), 1, "another client's run stays");
        for i in 0..PER_CLIENT {
            assert!(l.heard("web1", p("check", &format!("j{i}"), 1, 1), 1020));
        }
        assert!(!l.heard("web1", p("check", "one-more", 1, 1), 1020));
        // an ended run brought back by a new one counts as new
        assert!(!l.heard("web1", p("backup", "www", 400, 1), 1021));
        assert!(l.of("db1", 1005 + FORGET_SECS).is_empty(), "forgotten");
    }

    #[test]
    fn progress_names_a_known_kind_and_a_job() {
        assert!(p("backup", "www", 1, 1).valid().is_ok());
        assert!(p("rm -rf", "", 1, 1).valid().is_err());
        assert!(p("backup", "a b", 1, 1).valid().is_err());
    }
}
