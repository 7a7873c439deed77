//! Is every client backed up? The server judges each client from the runs it reported and
//! the schedule it is expected to keep, by the server's own clock: a client that died
//! silently is noticed by its absence. The schedule is the one set with `client expect`, or
//! else the one the client's agent announces: each report of a scheduled job says when its
//! next backup is due. Problems become incidents (one alert when one opens,
//! one when it clears), the morning digest sums up the fleet in its subject line, and
//! `/metrics` exposes the same numbers to Prometheus.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::{TimeZone, Utc};
use coffer_core::human_bytes;
use serde::Serialize;

use crate::catalog::{ClientInfo, VerifyRun};
use crate::notify::{self, AlertSettings};
use crate::records::{Incident, Run, RunReport, RunStatus};
use crate::{Result, Server, ServerError};

/// A client's state, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum State {
    /// A backup that looks like files encrypted in place (ransomware): retention of the
    /// client's repository waits until an operator acknowledges it.
    Anomaly,
    Failed,
    Overdue,
    Warning,
    /// Monitored, but no backup has arrived yet (and none is due).
    Waiting,
    Ok,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Anomaly => "ANOMALY",
            State::Failed => "FAILED",
            State::Overdue => "OVERDUE",
            State::Warning => "WARNING",
            State::Waiting => "NO BACKUP YET",
            State::Ok => "OK",
        }
    }
    pub const ALL: [State; 6] = [
        State::Anomaly,
        State::Failed,
        State::Overdue,
        State::Warning,
        State::Waiting,
        State::Ok,
    ];
}

/// One thing wrong, as an incident would record it.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// A client's name, or `repository NAME` for what concerns a whole repository.
    pub subject: String,
    /// `failed` (the last backup), `check` (the last check), `drill` (the last restore drill),
    /// `config` (the agent refused a
    /// managed job), `overdue`, `warnings`,
    /// `damage` (keyless verification), `quota`.
    pub kind: &'static str,
    pub detail: String,
}

impl Problem {
    fn state(&self) -> State {
        match self.kind {
            "anomaly" => State::Anomaly,
            // (a refused managed job does not run: as serious as a failed backup)
            "failed" | "check" | "config" | "drill" => State::Failed,
            "overdue" => State::Overdue,
            _ => State::Warning,
        }
    }
}

/// Everything the console, the digest and the metrics show about one client.
#[derive(Clone, Debug, Serialize)]
pub struct ClientStatus {
    pub client: ClientInfo,
    pub state: State,
    pub problems: Vec<Problem>,
    pub last_backup: Option<Run>,
    pub last_good: Option<Run>,
    /// The next time a backup is expected (with a schedule).
    pub next_expected: Option<i64>,
    pub repo_bytes: u64,
    pub quota_bytes: Option<u64>,
    pub verify: Option<VerifyRun>,
}

/// The ransomware alarm's thresholds: a backup is an anomaly when at least this many files
/// changed, making at least this share of all files and this many times the client's usual
/// share (the median of its last good backups of the same job, at least 2 of them), and its
/// new data (at least 1 MiB) does not compress: stored at least this fraction of its size,
/// where the client's new data usually compresses below it. Encrypted files are all of these
/// at once; a night of ordinary churn, an upgrade of a few packages, or a new video is not.
pub const ANOMALY_MIN_FILES: u64 = 50;
pub const ANOMALY_MIN_SHARE: f64 = 0.3;
pub const ANOMALY_TIMES_USUAL: f64 = 5.0;
pub const ANOMALY_INCOMPRESSIBLE: f64 = 0.9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Judge a received backup report against the client's usual (the ransomware alarm).
/// Returns the anomaly's description when it is one, after recording it.
pub fn judge_backup(
    server: &Server,
    client: &str,
    repo: &str,
    run: i64,
    r: &RunReport,
    now: i64,
) -> Result<Option<String>> {
    if r.kind != "backup" || r.status == RunStatus::Failed || r.files == 0 {
        return Ok(None);
    }
    let share = r.files_changed as f64 / r.files as f64;
    let stored = r.bytes_added as f64 / r.bytes_new_raw.max(1) as f64;
    if r.files_changed < ANOMALY_MIN_FILES
        || share < ANOMALY_MIN_SHARE
        || r.bytes_new_raw < (1 << 20)
        || stored < ANOMALY_INCOMPRESSIBLE
    {
        return Ok(None);
    }
    let before = server.catalog.backups_before(client, &r.job, run, 14)?;
    let usual: Vec<&RunReport> = before
        .iter()
        .map(|b| &b.report)
        .filter(|b| b.files > 0 && b.bytes_new_raw > 0)
        .collect();
    if usual.len() < 2 {
        return Ok(None); // no usual yet (a first backup changes everything)
    }
    let usual_share = median(
        usual
            .iter()
            .map(|b| b.files_changed as f64 / b.files as f64)
            .collect(),
    );
    let usual_stored = median(
        usual
            .iter()
            .map(|b| b.bytes_added as f64 / b.bytes_new_raw as f64)
            .collect(),
    );
    if share < ANOMALY_TIMES_USUAL * usual_share.max(0.01) || usual_stored >= ANOMALY_INCOMPRESSIBLE {
        return Ok(None);
    }
    let detail = format!(
        "{}{} of {} files changed ({:.0}%, usually {:.1}%) and the new data does not compress \
         (stored {:.0}% of its size, usually {:.0}%): files encrypted in place?",
        if r.job.is_empty() {
            String::new()
        } else {
            format!("job {}: ", r.job)
        },
        r.files_changed,
        r.files,
        share * 100.0,
        usual_share * 100.0,
        stored * 100.0,
        usual_stored * 100.0
    );
    let new = server.catalog.add_anomaly(client, repo, run, now, &detail)?;
    Ok(new.then_some(detail))
}

/// How late an announced backup may be before it is OVERDUE, unless the client's grace says.
pub const ANNOUNCED_GRACE_SECS: i64 = 3600;

pub fn parse_schedule(s: &str) -> Result<croner::Cron> {
    croner::Cron::from_str(s).map_err(|e| {
        ServerError::Invalid(format!(
            "schedule {s:?}: {e} (a cron expression in UTC, e.g. \"30 2 * * *\" for 02:30 daily)"
        ))
    })
}

fn utc(t: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(t, 0).single().unwrap_or_default()
}

/// `2028-01-03 07:00 UTC`
pub fn fmt_time(t: i64) -> String {
    utc(t).format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The scheduled time whose backup is missing, if the client is overdue: the newest
/// occurrence at least `grace` ago (and after the client was added), with no backup
/// received since shortly before it (a few minutes of clock skew allowed).
pub fn overdue_since(
    schedule: &croner::Cron,
    grace: i64,
    created: i64,
    last_backup_received: Option<i64>,
    now: i64,
) -> Option<i64> {
    let due = schedule
        .find_previous_occurrence(&utc(now - grace), true)
        .ok()?
        .timestamp();
    if due < created {
        return None;
    }
    let before = schedule
        .find_previous_occurrence(&utc(due), false)
        .map(|t| t.timestamp())
        .unwrap_or(due - 3600);
    let skew = ((due - before) / 2).min(300);
    match last_backup_received {
        Some(t) if t >= due - skew => None,
        _ => Some(due),
    }
}

/// A failed run as a problem (`kind` is `failed` for a backup, `check` for a check).
fn failure(client: &str, kind: &'static str, r: &Run) -> Problem {
    Problem {
        subject: client.to_string(),
        kind,
        detail: format!(
            "{} failed at {}: {}",
            r.report.kind,
            fmt_time(r.received),
            r.report
                .messages
                .first()
                .map(String::as_str)
                .unwrap_or("no message")
        ),
    }
}

impl ClientStatus {
    /// When the last good backup arrived, or `never`.
    pub fn last_good_time(&self) -> String {
        self.last_good
            .as_ref()
            .map(|r| fmt_time(r.received))
            .unwrap_or_else(|| "never".into())
    }

    /// Every problem's detail, on one line.
    pub fn problem_text(&self) -> String {
        self.problems
            .iter()
            .map(|p| p.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The state of every monitored client (one with a schedule or with a reported backup),
/// worst first.
pub fn fleet(server: &Server, now: i64) -> Result<Vec<ClientStatus>> {
    let settings = notify::load(&server.catalog)?;
    let repos: HashMap<String, crate::catalog::RepoInfo> = server
        .catalog
        .repos()?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    let mut repo_problems: HashMap<String, (u64, Option<VerifyRun>, Vec<Problem>)> = HashMap::new();
    let mut out = Vec::new();
    for c in server.catalog.clients()? {
        let last_backup = server.catalog.runs(&c.name, Some("backup"), 1)?.pop();
        // the agent's word on the managed jobs set here: a refusal is a problem until it
        // takes a version without one
        let last_config = server.catalog.runs(&c.name, Some("config"), 1)?.pop();
        if c.schedule.is_none() && last_backup.is_none() && last_config.is_none() {
            continue;
        }
        let mut problems = Vec::new();
        let last_good = server.catalog.last_good_backup(&c.name)?;
        if let Some(r) = &last_backup {
            if r.report.status == RunStatus::Failed {
                problems.push(failure(&c.name, "failed", r));
            } else if r.report.warnings > settings.warnings_above {
                problems.push(Problem {
                    subject: c.name.clone(),
                    kind: "warnings",
                    detail: format!(
                        "last backup had {} warning(s){}",
                        r.report.warnings,
                        r.report
                            .messages
                            .first()
                            .map(|m| format!(", e.g. {m}"))
                            .unwrap_or_default()
                    ),
                });
            }
        }
        if let Some(r) = server.catalog.runs(&c.name, Some("check"), 1)?.pop() {
            if r.report.status == RunStatus::Failed {
                problems.push(failure(&c.name, "check", &r));
            }
        }
        // a restore drill that did not bring the sample back as it was: the backups may
        // not restore, which is as bad as none
        // (the last drill of each job, and of drills by hand: a narrower drill by hand, or
        // another job's, does not clear a job's failed one)
        let mut drills_seen = std::collections::HashSet::new();
        for r in server.catalog.runs(&c.name, Some("drill"), 50)? {
            if drills_seen.insert(r.report.job.clone()) && r.report.status == RunStatus::Failed {
                problems.push(failure(&c.name, "drill", &r));
                break;
            }
        }
        if let Some(r) = &last_config {
            if r.report.status == RunStatus::Failed {
                problems.push(failure(&c.name, "config", r));
            }
        }
        let mut next_expected = None;
        if let Some(s) = &c.schedule {
            match parse_schedule(s) {
                Ok(cron) => {
                    next_expected = cron
                        .find_next_occurrence(&utc(now), false)
                        .ok()
                        .map(|t| t.timestamp());
                    if let Some(due) = overdue_since(
                        &cron,
                        c.grace_secs,
                        c.created.max(c.schedule_set),
                        last_backup.as_ref().map(|r| r.received),
                        now,
                    ) {
                        problems.push(Problem {
                            subject: c.name.clone(),
                            kind: "overdue",
                            detail: format!(
                                "no backup since the one due at {} ({}{})",
                                fmt_time(due),
                                match &last_backup {
                                    Some(r) => format!("last received {}", fmt_time(r.received)),
                                    None => "none received yet".into(),
                                },
                                if c.grace_secs > 0 {
                                    format!(", grace {} min", c.grace_secs / 60)
                                } else {
                                    String::new()
                                }
                            ),
                        });
                    }
                }
                Err(e) => problems.push(Problem {
                    subject: c.name.clone(),
                    kind: "overdue",
                    detail: e.to_string(),
                }),
            }
        }
        for (opened, detail) in server.catalog.open_anomalies(&c.name)? {
            problems.push(Problem {
                subject: c.name.clone(),
                kind: "anomaly",
                detail: format!(
                    "{detail} (backup received {}); retention of repository {} waits until \
                     `coffer server client ack {}`",
                    fmt_time(opened),
                    c.repo,
                    c.name
                ),
            });
        }
        // without a schedule set here, the one its agent announces: each scheduled job's
        // newest report says when its next backup is due
        if c.schedule.is_none() {
            for (job, due, received, took_ms) in server.catalog.announced(&c.name)? {
                // the report comes when the run ends: a run longer than the grace would be
                // late every night
                let grace = if c.grace_secs > 0 {
                    c.grace_secs
                } else {
                    ANNOUNCED_GRACE_SECS
                }
                .max((took_ms as i64 / 1000).saturating_mul(3) / 2);
                next_expected = Some(next_expected.map_or(due, |n: i64| n.min(due)));
                if now > due + grace {
                    problems.push(Problem {
                        subject: c.name.clone(),
                        kind: "overdue",
                        detail: format!(
                            "job {job}: no backup since the one its schedule set for {} (last report received {}, grace {} min)",
                            fmt_time(due),
                            fmt_time(received),
                            grace / 60
                        ),
                    });
                }
            }
        }
        if !repo_problems.contains_key(&c.repo) {
            let bytes = server.usage(&c.repo)?;
            let verify = server.catalog.last_verify_run(&c.repo)?;
            let mut rp = Vec::new();
            let subject = format!("repository {}", c.repo);
            if let Some(v) = verify.as_ref().filter(|v| !v.damaged.is_empty()) {
                rp.push(Problem {
                    subject: subject.clone(),
                    kind: "damage",
                    detail: format!(
                        "verification at {} found {} damaged object(s): {}",
                        fmt_time(v.finished),
                        v.damaged.len(),
                        v.damaged[0]
                    ),
                });
            }
            if let Some(q) = repos.get(&c.repo).and_then(|r| r.quota_bytes) {
                if q > 0 && bytes.saturating_mul(100) >= q.saturating_mul(settings.quota_percent as u64) {
                    rp.push(Problem {
                        subject,
                        kind: "quota",
                        detail: format!(
                            "{} of its {} quota used ({}%)",
                            human_bytes(bytes),
                            human_bytes(q),
                            bytes.saturating_mul(100) / q
                        ),
                    });
                }
            }
            repo_problems.insert(c.repo.clone(), (bytes, verify, rp));
        }
        let (repo_bytes, verify, rp) = &repo_problems[&c.repo];
        problems.extend(rp.iter().cloned());
        let state = problems
            .iter()
            .map(Problem::state)
            .min()
            .unwrap_or(if last_good.is_some() {
                State::Ok
            } else {
                State::Waiting
            });
        out.push(ClientStatus {
            quota_bytes: repos.get(&c.repo).and_then(|r| r.quota_bytes),
            client: c,
            state,
            problems,
            last_backup,
            last_good,
            next_expected,
            repo_bytes: *repo_bytes,
            verify: verify.clone(),
        });
    }
    out.sort_by(|a, b| (a.state, &a.client.name).cmp(&(b.state, &b.client.name)));
    Ok(out)
}

/// Open an incident for each new problem and close those that cleared, queueing one alert
/// for each opening and one recovery notice for each close. Returns the changes.
pub fn evaluate(server: &Server, now: i64) -> Result<Vec<(Incident, bool)>> {
    let fleet = fleet(server, now)?;
    let mut current: BTreeMap<(String, String), String> = BTreeMap::new();
    for c in &fleet {
        for p in &c.problems {
            current
                .entry((p.subject.clone(), p.kind.to_string()))
                .or_insert_with(|| p.detail.clone());
        }
    }
    let settings = notify::load(&server.catalog)?;
    let mut changes = Vec::new();
    for inc in server.catalog.open_incidents()? {
        if !current.contains_key(&(inc.subject.clone(), inc.kind.clone())) {
            if !server.catalog.close_incident(inc.id, now)? {
                continue;
            }
            let mut closed = inc;
            closed.closed = Some(now);
            notify::incident(server, &settings, &closed, now)?;
            changes.push((closed, false));
        }
    }
    for ((subject, kind), detail) in current {
        if let Some(inc) = server.catalog.open_incident(&subject, &kind, now, &detail)? {
            notify::incident(server, &settings, &inc, now)?;
            changes.push((inc, true));
        }
    }
    Ok(changes)
}

/// The digest's subject: `coffer: 24/24 OK`, or `coffer: 2 FAILED, 1 OVERDUE of 24`.
pub fn digest_subject(fleet: &[ClientStatus]) -> String {
    let n = fleet.len();
    let ok = fleet.iter().filter(|c| c.state == State::Ok).count();
    if ok == n {
        return format!("coffer: {ok}/{n} OK");
    }
    let parts: Vec<String> = State::ALL
        .iter()
        .filter(|s| **s != State::Ok)
        .filter_map(|s| {
            let k = fleet.iter().filter(|c| c.state == *s).count();
            (k > 0).then(|| format!("{k} {}", s.label()))
        })
        .collect();
    format!("coffer: {} of {n}", parts.join(", "))
}

/// The digest: subject and a plain-text body listing every client, worst first.
pub fn digest(server: &Server, now: i64) -> Result<(String, String)> {
    let fleet = fleet(server, now)?;
    let subject = digest_subject(&fleet);
    let mut body = format!("{subject}\n{}\n\n", fmt_time(now));
    body.push_str(&format!(
        "{:<24} {:<14} {:<22} {:>10} {:>12}  {}\n",
        "client", "state", "last good backup", "repo size", "added 24h", "problem"
    ));
    for c in &fleet {
        let added = server.catalog.bytes_added_since(&c.client.name, now - 86_400)?;
        body.push_str(&format!(
            "{:<24} {:<14} {:<22} {:>10} {:>12}  {}\n",
            c.client.name,
            c.state.label(),
            c.last_good_time(),
            human_bytes(c.repo_bytes),
            format!("+{}", human_bytes(added)),
            c.problem_text()
        ));
    }
    if fleet.is_empty() {
        body.push_str("(no client has a schedule or has reported a backup yet)\n");
    }
    Ok((subject, body))
}

/// One monitoring round, as the server runs it every `--monitor-every`: judge the fleet, queue
/// the digest if it is due, deliver what is waiting; then count the round (exposed as
/// `coffer_monitor_rounds_total`, so a watcher can tell the judge is alive).
pub fn round(server: &Server, rt: &tokio::runtime::Handle) -> Result<()> {
    let now = server.now();
    evaluate(server, now)?;
    let settings = notify::load(&server.catalog)?;
    digest_if_due(server, &settings, now)?;
    notify::deliver(server, rt)?;
    server
        .monitor_rounds
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// If the daily digest is due (its time of day has come and today's has not gone out),
/// queue it. Returns whether it did.
pub fn digest_if_due(server: &Server, settings: &AlertSettings, now: i64) -> Result<bool> {
    let Some(at) = &settings.digest_at else {
        return Ok(false);
    };
    let Some((h, m)) = notify::parse_time_of_day(at) else {
        return Ok(false);
    };
    let day = now.div_euclid(86_400);
    let due = day * 86_400 + h * 3600 + m * 60;
    let last: i64 = server
        .catalog
        .setting("digest_last_day")?
        .and_then(|s| s.parse().ok())
        .unwrap_or(i64::MIN);
    if now < due || last >= day {
        return Ok(false);
    }
    let (subject, body) = digest(server, now)?;
    notify::digest(server, settings, &subject, &body, now)?;
    server
        .catalog
        .set_setting("digest_last_day", Some(&day.to_string()))?;
    Ok(true)
}

/// Prometheus text format (version 0.0.4).
pub fn metrics(server: &Server, now: i64) -> Result<String> {
    let fleet = fleet(server, now)?;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    };
    let cl = |c: &ClientStatus| {
        format!(
            "client=\"{}\",repo=\"{}\"",
            esc(&c.client.name),
            esc(&c.client.repo)
        )
    };
    family(
        "coffer_client_last_success_timestamp_seconds",
        "When the server received the client's last good backup.",
        fleet
            .iter()
            .filter_map(|c| c.last_good.as_ref().map(|r| (cl(c), r.received as f64)))
            .collect(),
    );
    family(
        "coffer_client_state",
        "1 for the client's current state (FAILED, OVERDUE, WARNING, NO BACKUP YET, OK).",
        fleet
            .iter()
            .flat_map(|c| {
                State::ALL.iter().map(move |s| {
                    (
                        format!("{},state=\"{}\"", cl(c), s.label()),
                        if c.state == *s { 1.0 } else { 0.0 },
                    )
                })
            })
            .collect(),
    );
    family(
        "coffer_client_overdue",
        "1 if a scheduled backup has not arrived within its grace time.",
        fleet
            .iter()
            .map(|c| {
                (
                    cl(c),
                    if c.problems.iter().any(|p| p.kind == "overdue") {
                        1.0
                    } else {
                        0.0
                    },
                )
            })
            .collect(),
    );
    let last = |f: &dyn Fn(&Run) -> f64| -> Vec<(String, f64)> {
        fleet
            .iter()
            .filter_map(|c| c.last_backup.as_ref().map(|r| (cl(c), f(r))))
            .collect()
    };
    family(
        "coffer_backup_duration_seconds",
        "Duration of the client's last backup.",
        last(&|r| r.report.duration_ms as f64 / 1000.0),
    );
    family(
        "coffer_backup_bytes_read",
        "Bytes the client's last backup read.",
        last(&|r| r.report.bytes_read as f64),
    );
    family(
        "coffer_backup_bytes_added",
        "Bytes the client's last backup added to the repository.",
        last(&|r| r.report.bytes_added as f64),
    );
    family(
        "coffer_backup_warnings",
        "Warnings of the client's last backup.",
        last(&|r| r.report.warnings as f64),
    );
    let mut repos: BTreeMap<&str, &ClientStatus> = BTreeMap::new();
    for c in &fleet {
        repos.entry(c.client.repo.as_str()).or_insert(c);
    }
    family(
        "coffer_repository_size_bytes",
        "Bytes stored in the repository (trash excluded).",
        repos
            .iter()
            .map(|(r, c)| (format!("repo=\"{}\"", esc(r)), c.repo_bytes as f64))
            .collect(),
    );
    family(
        "coffer_repository_quota_bytes",
        "The repository's quota.",
        repos
            .iter()
            .filter_map(|(r, c)| c.quota_bytes.map(|q| (format!("repo=\"{}\"", esc(r)), q as f64)))
            .collect(),
    );
    family(
        "coffer_repository_verify_damaged_objects",
        "Damaged objects found by the last keyless verification.",
        repos
            .iter()
            .filter_map(|(r, c)| {
                c.verify
                    .as_ref()
                    .map(|v| (format!("repo=\"{}\"", esc(r)), v.damaged.len() as f64))
            })
            .collect(),
    );
    family(
        "coffer_repository_verify_timestamp_seconds",
        "When the last keyless verification finished.",
        repos
            .iter()
            .filter_map(|(r, c)| {
                c.verify
                    .as_ref()
                    .map(|v| (format!("repo=\"{}\"", esc(r)), v.finished as f64))
            })
            .collect(),
    );
    let open = server.catalog.open_incidents()?.len();
    out.push_str(&format!(
        "# HELP coffer_incidents_open Problems not yet cleared.\n# TYPE coffer_incidents_open gauge\ncoffer_incidents_open {open}\n"
    ));
    let rounds = server.monitor_rounds.load(std::sync::atomic::Ordering::Relaxed);
    out.push_str(&format!(
        "# HELP coffer_monitor_rounds_total Monitoring rounds this server process has finished.\n# TYPE coffer_monitor_rounds_total counter\ncoffer_monitor_rounds_total {rounds}\n"
    ));
    Ok(out)
}

/// Escape a Prometheus label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_by_the_schedule_and_grace() {
        let hourly = parse_schedule("0 * * * *").unwrap();
        let t0 = Utc.with_ymd_and_hms(2028, 1, 3, 10, 0, 0).unwrap().timestamp();
        // a backup at 10:00:30; at 10:59 with 10 min grace the 10:00 one counts
        assert_eq!(overdue_since(&hourly, 600, 0, Some(t0 + 30), t0 + 3540), None);
        // at 11:09 the 11:00 one is still within grace
        assert_eq!(overdue_since(&hourly, 600, 0, Some(t0 + 30), t0 + 4140), None);
        // at 11:10 it is due, and missing
        assert_eq!(
            overdue_since(&hourly, 600, 0, Some(t0 + 30), t0 + 4200),
            Some(t0 + 3600)
        );
        // a client added after the due time is not overdue for it
        assert_eq!(overdue_since(&hourly, 600, t0 + 3700, None, t0 + 4200), None);
        // a backup a minute early (client clock) still counts
        assert_eq!(overdue_since(&hourly, 600, 0, Some(t0 + 3540), t0 + 4200), None);
        assert!(parse_schedule("every day").is_err());
    }

    fn report(warnings: u64) -> crate::records::RunReport {
        crate::records::RunReport {
            kind: "backup".into(),
            status: if warnings > 0 {
                RunStatus::Warning
            } else {
                RunStatus::Ok
            },
            host: "web1".into(),
            started: 0,
            finished: 1,
            duration_ms: 1000,
            files: 1,
            bytes_read: 1,
            bytes_added: 1,
            bytes_total: 1,
            snapshot: None,
            warnings,
            errors: 0,
            messages: vec!["/var/www/locked.db: permission denied".into()],
            job: String::new(),
            next_expected: None,
            jobs: Vec::new(),
            files_changed: 0,
            bytes_new_raw: 0,
            request: None,
        }
    }

    /// Warnings above the threshold, verification damage and a nearly full quota each open
    /// one incident with one alert, however often judged, and close with one notice.
    #[test]
    fn warnings_damage_and_quota_are_incidents() {
        use crate::catalog::Role;
        let d = tempfile::tempdir().unwrap();
        let clock = d.path().join("clock");
        std::fs::write(&clock, "1830000000").unwrap();
        let s = Server::open(
            &d.path().join("data"),
            None,
            crate::Clock::File(clock),
            crate::Settings::default(),
        )
        .unwrap();
        notify::save(
            &s.catalog,
            &AlertSettings {
                webhooks: vec!["http://127.0.0.1:9/hook".into()],
                warnings_above: 2,
                ..Default::default()
            },
        )
        .unwrap();
        s.add_client("web1", "web", Role::Append).unwrap();
        let now = s.now();
        s.catalog.add_run("web1", "web", now, &report(2)).unwrap();
        assert!(
            evaluate(&s, now).unwrap().is_empty(),
            "2 warnings are not above 2"
        );

        s.catalog.add_run("web1", "web", now, &report(3)).unwrap();
        s.catalog
            .add_verify_run(&VerifyRun {
                repo: "web".into(),
                started: now,
                finished: now,
                objects: 10,
                bytes: 100,
                damaged: vec!["data/ab: content hashes to cd, not to its name (damaged)".into()],
                repaired: Vec::new(),
            })
            .unwrap();
        // a repository 95 % full
        let tmp = s.store.incoming("web").join("k");
        std::fs::write(&tmp, vec![0u8; 95]).unwrap();
        s.commit("web", coffer_core::FileKind::Key, &"ab".repeat(32), &tmp, "web1")
            .unwrap();
        s.catalog.set_quota("web", Some(100)).unwrap();
        let opened = evaluate(&s, now).unwrap();
        let mut kinds: Vec<&str> = opened
            .iter()
            .map(|(i, open)| {
                assert!(*open);
                i.kind.as_str()
            })
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["damage", "quota", "warnings"]);
        assert_eq!(s.catalog.messages(100).unwrap().len(), 3);
        // judged again: nothing new
        assert!(evaluate(&s, now + 60).unwrap().is_empty());
        assert_eq!(s.catalog.messages(100).unwrap().len(), 3);
        let state = &fleet(&s, now).unwrap()[0];
        assert_eq!(state.state, State::Warning);

        // everything clears: one recovery notice each
        s.catalog.add_run("web1", "web", now + 120, &report(0)).unwrap();
        s.catalog
            .add_verify_run(&VerifyRun {
                repo: "web".into(),
                started: now + 120,
                finished: now + 120,
                objects: 10,
                bytes: 100,
                damaged: vec![],
                repaired: Vec::new(),
            })
            .unwrap();
        s.catalog.set_quota("web", None).unwrap();
        let closed = evaluate(&s, now + 180).unwrap();
        assert_eq!(closed.len(), 3);
        assert!(closed
            .iter()
            .all(|(i, open)| !open && i.closed == Some(now + 180)));
        let subjects: Vec<String> = s
            .catalog
            .messages(100)
            .unwrap()
            .into_iter()
            .map(|m| m.subject)
            .collect();
        assert!(
            subjects.contains(&"coffer: RECOVERED repository web (damaged cleared)".to_string()),
            "{subjects:?}"
        );
        assert_eq!(fleet(&s, now + 180).unwrap()[0].state, State::Ok);
    }

    #[test]
    fn digest_subjects() {
        assert_eq!(digest_subject(&[]), "coffer: 0/0 OK");
    }
}
