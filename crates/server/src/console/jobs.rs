//! The client page's jobs: the table of a client's jobs with "Back up now", and the forms
//! that add, edit and remove the jobs set here for its agent (managed jobs). Every form
//! carries the session's CSRF token; what a form sets is checked as `coffer server client
//! job set` checks it, and the agent checks it again against its own `[managed]` bounds.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use coffer_wire::{CheckSpec, JobSpec, RetentionSpec};
use serde::Deserialize;

use super::{
    age, blocking, error_page, esc, form_refused, html_response, internal, page, redirect, seg, St, Table,
    Who,
};
use crate::jobs::Put;
use crate::monitor::fmt_time;
use crate::records::RunStatus;
use crate::{Server, ServerError};

#[derive(Deserialize)]
pub(super) struct RunForm {
    csrf: String,
    job: String,
}

/// What the client page shows of a client's jobs.
pub(super) struct JobsView {
    pub(super) managed: Vec<crate::jobs::StoredJob>,
    /// (job, next due, report received, took ms) from the agent's reports.
    pub(super) announced: Vec<(String, i64, i64, u64)>,
    pub(super) requests: Vec<crate::jobs::Requested>,
    /// Runs in progress, as their commands last said.
    pub(super) live: Vec<crate::live::Live>,
}

/// The client's jobs (set here, or announced by its agent), each with its schedule, next
/// expected backup, last result and a "Back up now" button; then the runs asked for.
pub(super) fn jobs_section(
    client: &str,
    w: &Who,
    v: &JobsView,
    runs: &[crate::records::Run],
    now: i64,
) -> String {
    let mut names: Vec<String> = v.managed.iter().map(|j| j.spec.name.clone()).collect();
    for (job, ..) in &v.announced {
        if !names.contains(job) {
            names.push(job.clone());
        }
    }
    for r in runs {
        if !r.report.job.is_empty() && !names.contains(&r.report.job) {
            names.push(r.report.job.clone());
        }
    }
    let mut t = Table::new(
        "jobs",
        &[
            ("Job", "lead"),
            ("Set", ""),
            ("Schedule", ""),
            ("Next expected", ""),
            ("Last backup", ""),
            ("", "lead"),
        ],
    );
    for name in &names {
        let managed = v.managed.iter().find(|j| &j.spec.name == name);
        let schedule = match managed {
            Some(j) => j
                .spec
                .schedule
                .as_deref()
                .map(|s| format!("<code>{}</code>", esc(s)))
                .unwrap_or_else(|| "on request".into()),
            None => "(the client's file)".into(),
        };
        let next = v
            .announced
            .iter()
            .find(|(j, ..)| j == name)
            .map(|(_, due, ..)| fmt_time(*due))
            .unwrap_or_else(|| "–".into());
        let last = runs
            .iter()
            .find(|r| &r.report.job == name && r.report.kind == "backup")
            .map(|r| {
                format!(
                    "<span class=\"badge {}\">{}</span> {}",
                    match r.report.status {
                        RunStatus::Ok => "ok",
                        RunStatus::Warning => "warning",
                        RunStatus::Failed => "failed",
                    },
                    r.report.status.as_str(),
                    age(now, r.received)
                )
            })
            .unwrap_or_else(|| "–".into());
        // only the jobs set here: the client's own are not the server's to start
        // (a limited login changes nothing: no buttons)
        let button = if managed.is_none() || w.only.is_some() {
            String::new()
        } else {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/console/client/{c}/run\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"job\" value=\"{}\">\
                 <button type=\"submit\">Back up now</button></form> <a href=\"/console/client/{c}/jobs/{}\">Edit</a>",
                esc(&w.csrf),
                esc(name),
                seg(name),
                c = seg(client),
            )
        };
        t.row(
            &format!(" data-job=\"{}\"", esc(name)),
            &[
                esc(name),
                if managed.is_some() { "here" } else { "client" }.to_string(),
                schedule,
                next,
                last,
                button,
            ],
        );
    }
    let mut b = running_section(&v.live, now);
    b.push_str("<h2 id=\"jobs-heading\">Jobs</h2>");
    b.push_str(&t.finish(
        names.len(),
        "No job known: add one here or with `coffer server client job set`, or run the client's agent.",
    ));
    if w.only.is_none() {
        b.push_str(&format!(
            "<p><a href=\"/console/client/{}/new-job\">Add a job</a> \
             <span class=\"muted\">(its agent takes it with its next poll if its [managed] section allows it)</span></p>",
            seg(client)
        ));
    }
    if !v.requests.is_empty() {
        let mut t = Table::new(
            "requests",
            &[("Asked", ""), ("Job", ""), ("By", ""), ("Taken by the agent", "")],
        );
        for r in &v.requests {
            t.row(
                &format!(" data-request=\"{}\"", r.id),
                &[
                    fmt_time(r.requested),
                    format!("{}{}", esc(&r.job), if r.check { " (check)" } else { "" }),
                    esc(&r.by),
                    match r.taken {
                        Some(0) => "expired (not taken within an hour)".into(),
                        Some(t) => fmt_time(t),
                        None => "waiting for the agent".into(),
                    },
                ],
            );
        }
        b.push_str("<h2>Runs asked for</h2>");
        b.push_str(&t.finish(v.requests.len(), ""));
    }
    b
}

/// A run whose counts have not moved for this long is shown as making no progress.
const STALLED_SECS: i64 = 120;

/// The runs in progress: what each has done so far, and when it was last heard from.
fn running_section(live: &[crate::live::Live], now: i64) -> String {
    if live.is_empty() {
        return String::new();
    }
    let mut t = Table::new(
        "running",
        &[
            ("Job", "lead"),
            ("Run", ""),
            ("Running since", ""),
            ("Files", "num"),
            ("Bytes", "num"),
            ("Heard", ""),
        ],
    );
    for l in live {
        let p = &l.progress;
        let silent = now - l.heard;
        let heard = if silent >= crate::live::SILENT_SECS {
            format!(
                "<span class=\"badge overdue\">silent {silent} s</span> (no word since; the process may have died)"
            )
        } else if now - l.moved >= STALLED_SECS {
            format!(
                "{silent} s ago <span class=\"badge warning\">no progress for {}</span>",
                elapsed(now - l.moved)
            )
        } else {
            format!("{silent} s ago")
        };
        t.row(
            &format!(" data-running=\"{}\"", esc(&p.job)),
            &[
                if p.job.is_empty() {
                    "(by hand)".into()
                } else {
                    esc(&p.job)
                },
                esc(&p.kind),
                format!("{} ({})", fmt_time(l.first_heard), elapsed(now - l.first_heard)),
                p.files.to_string(),
                coffer_core::human_bytes(p.bytes),
                heard,
            ],
        );
    }
    let mut b = String::from("<h2 id=\"running-heading\">Running now</h2>");
    b.push_str(&t.finish(live.len(), ""));
    b
}

/// `75 s`, `12 min`, `3 h 05 min`
fn elapsed(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    }
}

/// "Back up now": a run request for the client's agent (CSRF-checked form).
pub(super) async fn run_now(
    State(s): St,
    w: Who,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Form(f): Form<RunForm>,
) -> Response {
    if let Some(refused) = form_refused(&w, &f.csrf, &headers).or_else(|| w.fleet_only()) {
        return refused;
    }
    let server = s.clone();
    let (n2, job, by) = (name.clone(), f.job.clone(), format!("{} (console)", w.operator));
    let r = blocking(move || {
        if server.catalog.client(&n2)?.is_none() {
            return Ok(None);
        }
        server
            .catalog
            .request_run(&n2, &job, false, &by, server.now())
            .map(Some)
    })
    .await;
    match r {
        Ok(Some(_)) => redirect(&format!("/console/client/{}#requests", seg(&name))),
        Ok(None) => error_page(StatusCode::NOT_FOUND, &format!("no client {name:?}")),
        Err(ServerError::Invalid(m)) => error_page(StatusCode::BAD_REQUEST, &m),
        Err(e) => internal(e),
    }
}

/// The job form as sent: text as typed, parsed by [`JobForm::spec`].
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct JobForm {
    csrf: String,
    /// The job being edited ("" for a new one): an edit cannot rename, and a new job cannot
    /// silently replace one of the same name.
    editing: String,
    /// The stored version the edit started from (see `jobs::Put::Replace`).
    version: String,
    name: String,
    /// One path per line.
    paths: String,
    /// One pattern per line.
    exclude: String,
    exclude_caches: Option<String>,
    one_file_system: Option<String>,
    /// Words (spaces or commas).
    tags: String,
    /// "all" or database names; empty: none.
    mysql: String,
    postgres: String,
    /// Repository names of the client's configuration.
    to: String,
    schedule: String,
    timezone: String,
    random_delay: String,
    keep_last: String,
    keep_hourly: String,
    keep_daily: String,
    keep_weekly: String,
    keep_monthly: String,
    keep_yearly: String,
    keep_within: String,
    check_schedule: String,
    read_data_subset: String,
    limit_upload: String,
    limit_download: String,
    nice: String,
    ionice: String,
    threads: String,
    #[serde(default)]
    index_memory: String,
}

/// The lines of a text area as typed (a path may hold spaces); blank lines dropped.
fn lines(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn text(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl JobForm {
    /// The job the form describes, or what is wrong with it (one line, naming the field).
    fn spec(&self) -> std::result::Result<JobSpec, String> {
        let keep = |what: &str, v: &str| -> std::result::Result<Option<u32>, String> {
            match text(v) {
                None => Ok(None),
                Some(t) => t
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| format!("{what}: {t:?} is not a whole number")),
            }
        };
        let retention = RetentionSpec {
            keep_last: keep("keep last", &self.keep_last)?,
            keep_hourly: keep("keep hourly", &self.keep_hourly)?,
            keep_daily: keep("keep daily", &self.keep_daily)?,
            keep_weekly: keep("keep weekly", &self.keep_weekly)?,
            keep_monthly: keep("keep monthly", &self.keep_monthly)?,
            keep_yearly: keep("keep yearly", &self.keep_yearly)?,
            keep_within: text(&self.keep_within),
        };
        let check = match (text(&self.check_schedule), text(&self.read_data_subset)) {
            (None, None) => None,
            (None, Some(_)) => return Err("read data subset: give the check a schedule too".into()),
            (Some(schedule), read_data_subset) => Some(CheckSpec {
                schedule,
                read_data_subset,
            }),
        };
        let schedule = text(&self.schedule);
        if schedule.is_none() && (text(&self.timezone).is_some() || text(&self.random_delay).is_some()) {
            return Err("time zone and random delay belong to a schedule: give one, or clear them".into());
        }
        let number = |what: &str, v: &str| -> std::result::Result<Option<i64>, String> {
            match text(v) {
                None => Ok(None),
                Some(t) => t
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| format!("{what}: {t:?} is not a whole number")),
            }
        };
        let nice = number("nice", &self.nice)?
            .map(|n| i32::try_from(n).map_err(|_| format!("nice {n}: 0 to 19")))
            .transpose()?;
        let threads = number("threads", &self.threads)?
            .map(|n| u32::try_from(n).map_err(|_| format!("threads {n}: 1 to 256")))
            .transpose()?;
        let dbs = |s: &str| {
            let w = words(s);
            (!w.is_empty()).then_some(w)
        };
        Ok(JobSpec {
            name: self.name.trim().to_string(),
            paths: lines(&self.paths),
            exclude: lines(&self.exclude),
            exclude_caches: self.exclude_caches.is_some(),
            one_file_system: self.one_file_system.is_some(),
            tags: words(&self.tags),
            mysql: dbs(&self.mysql),
            postgres: dbs(&self.postgres),
            to: words(&self.to),
            schedule,
            timezone: text(&self.timezone),
            random_delay: text(&self.random_delay),
            retention: (retention != RetentionSpec::default()).then_some(retention),
            check,
            limit_upload: text(&self.limit_upload),
            limit_download: text(&self.limit_download),
            nice,
            ionice: text(&self.ionice),
            threads,
            index_memory: text(&self.index_memory),
        })
    }

    /// The form filled in with a stored job, to edit it.
    fn of(stored: &crate::jobs::StoredJob) -> JobForm {
        let spec = &stored.spec;
        let n = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
        let r = spec.retention.clone().unwrap_or_default();
        let c = spec.check.clone();
        JobForm {
            csrf: String::new(),
            editing: spec.name.clone(),
            version: stored.version.clone(),
            name: spec.name.clone(),
            paths: spec.paths.join("\n"),
            exclude: spec.exclude.join("\n"),
            exclude_caches: spec.exclude_caches.then(|| "on".into()),
            one_file_system: spec.one_file_system.then(|| "on".into()),
            tags: spec.tags.join(", "),
            mysql: spec.mysql.as_deref().unwrap_or_default().join(", "),
            postgres: spec.postgres.as_deref().unwrap_or_default().join(", "),
            to: spec.to.join(", "),
            schedule: spec.schedule.clone().unwrap_or_default(),
            timezone: spec.timezone.clone().unwrap_or_default(),
            random_delay: spec.random_delay.clone().unwrap_or_default(),
            keep_last: n(r.keep_last),
            keep_hourly: n(r.keep_hourly),
            keep_daily: n(r.keep_daily),
            keep_weekly: n(r.keep_weekly),
            keep_monthly: n(r.keep_monthly),
            keep_yearly: n(r.keep_yearly),
            keep_within: r.keep_within.unwrap_or_default(),
            check_schedule: c.as_ref().map(|c| c.schedule.clone()).unwrap_or_default(),
            read_data_subset: c.and_then(|c| c.read_data_subset).unwrap_or_default(),
            limit_upload: spec.limit_upload.clone().unwrap_or_default(),
            limit_download: spec.limit_download.clone().unwrap_or_default(),
            nice: spec.nice.map(|n| n.to_string()).unwrap_or_default(),
            ionice: spec.ionice.clone().unwrap_or_default(),
            threads: spec.threads.map(|n| n.to_string()).unwrap_or_default(),
            index_memory: spec.index_memory.clone().unwrap_or_default(),
        }
    }
}

/// The add/edit page: the form (with `error` above it when a sent form was refused) and, for
/// a stored job, the form that removes it.
fn job_page(client: &str, w: &Who, f: &JobForm, error: Option<&str>) -> String {
    let editing = !f.editing.is_empty();
    let input = |name: &str, label: &str, value: &str, hint: &str| {
        format!(
            "<label>{label} <input name=\"{name}\" value=\"{}\">{}</label>",
            esc(value),
            if hint.is_empty() {
                String::new()
            } else {
                format!("<small>{hint}</small>")
            }
        )
    };
    let area = |name: &str, label: &str, value: &str, hint: &str| {
        format!(
            "<label>{label} <textarea name=\"{name}\" rows=\"3\">{}</textarea><small>{hint}</small></label>",
            esc(value)
        )
    };
    let tick = |name: &str, label: &str, on: bool| {
        format!(
            "<label class=\"tick\"><input type=\"checkbox\" name=\"{name}\"{}> {label}</label>",
            if on { " checked" } else { "" }
        )
    };
    let title = if editing {
        format!("Job {} of {}", f.editing, client)
    } else {
        format!("A new job for {client}")
    };
    let mut b = format!("<h1>{}</h1>", esc(&title));
    if let Some(e) = error {
        b.push_str(&format!("<p class=\"error\" id=\"form-error\">{}</p>", esc(e)));
    }
    b.push_str(&format!(
        "<form class=\"job\" method=\"post\" action=\"/console/client/{}/jobs\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"editing\" value=\"{}\">\
         <input type=\"hidden\" name=\"version\" value=\"{}\">",
        seg(client),
        esc(&w.csrf),
        esc(&f.editing),
        esc(&f.version)
    ));
    b.push_str("<fieldset><legend>What</legend>");
    b.push_str(&if editing {
        format!(
            "<label>Name <input name=\"name\" value=\"{}\" readonly><small>a job keeps its name; add a new one to rename</small></label>",
            esc(&f.name)
        )
    } else {
        input("name", "Name", &f.name, "letters, digits, - _ . (the agent's name for it)")
    });
    b.push_str(&area(
        "paths",
        "Paths",
        &f.paths,
        "absolute, one per line; each must lie under the client's [managed] paths",
    ));
    b.push_str(&area("exclude", "Exclude", &f.exclude, "patterns, one per line"));
    b.push_str(&tick(
        "exclude_caches",
        "Skip cache directories (CACHEDIR.TAG)",
        f.exclude_caches.is_some(),
    ));
    b.push_str(&tick(
        "one_file_system",
        "Stay on each path's file system",
        f.one_file_system.is_some(),
    ));
    b.push_str(&input(
        "mysql",
        "MariaDB/MySQL databases",
        &f.mysql,
        "all, or names; empty: none",
    ));
    b.push_str(&input(
        "postgres",
        "PostgreSQL databases",
        &f.postgres,
        "all, or names; empty: none",
    ));
    b.push_str(&input("tags", "Tags", &f.tags, ""));
    b.push_str("</fieldset><fieldset><legend>Where and when</legend>");
    b.push_str(&input(
        "to",
        "Back up to",
        &f.to,
        "repository names of the client's configuration, e.g. company, offsite",
    ));
    b.push_str(&input(
        "schedule",
        "Schedule",
        &f.schedule,
        "cron, e.g. 30 2 * * * (02:30 daily); empty: only when asked (Back up now)",
    ));
    b.push_str(&input(
        "timezone",
        "Time zone",
        &f.timezone,
        "e.g. Europe/Paris; empty: the client's",
    ));
    b.push_str(&input(
        "random_delay",
        "Random delay",
        &f.random_delay,
        "spread the fleet, e.g. 30m",
    ));
    b.push_str("</fieldset><fieldset><legend>Retention (where the client may prune)</legend>");
    for (name, label, v) in [
        ("keep_last", "Keep last", &f.keep_last),
        ("keep_hourly", "Hourly", &f.keep_hourly),
        ("keep_daily", "Daily", &f.keep_daily),
        ("keep_weekly", "Weekly", &f.keep_weekly),
        ("keep_monthly", "Monthly", &f.keep_monthly),
        ("keep_yearly", "Yearly", &f.keep_yearly),
    ] {
        b.push_str(&format!(
            "<label class=\"num\">{label} <input name=\"{name}\" value=\"{}\" inputmode=\"numeric\" size=\"4\"></label>",
            esc(v)
        ));
    }
    b.push_str(&input(
        "keep_within",
        "Keep everything within",
        &f.keep_within,
        "e.g. 7d",
    ));
    b.push_str("<small>Empty: the agent prunes nothing (and it prunes only with [managed] retention = true).</small>");
    b.push_str("</fieldset><fieldset><legend>Verification</legend>");
    b.push_str(&input(
        "check_schedule",
        "Check schedule",
        &f.check_schedule,
        "cron; empty: no scheduled check",
    ));
    b.push_str(&input(
        "read_data_subset",
        "Read data subset",
        &f.read_data_subset,
        "N/M or P%, e.g. 5%; empty: structure only",
    ));
    b.push_str("</fieldset><fieldset><legend>Limits</legend>");
    b.push_str(&input(
        "limit_upload",
        "Upload limit",
        &f.limit_upload,
        "e.g. 10M (MiB/s) or 800K; empty: none",
    ));
    b.push_str(&input(
        "limit_download",
        "Download limit",
        &f.limit_download,
        "reads of checks and drills; e.g. 20M; empty: none",
    ));
    b.push_str(&input(
        "nice",
        "CPU niceness",
        &f.nice,
        "0 to 19 (19: lowest priority)",
    ));
    b.push_str(&input(
        "ionice",
        "I/O class",
        &f.ionice,
        "idle, or best-effort:4 to 7 (lower only)",
    ));
    b.push_str(&input(
        "threads",
        "Compression threads",
        &f.threads,
        "empty: one per core",
    ));
    b.push_str(&input(
        "index_memory",
        "Index memory",
        &f.index_memory,
        "past it the index goes to a file; e.g. 64M; empty: 256M",
    ));
    b.push_str(&format!(
        "</fieldset><p><button type=\"submit\">{}</button> <a href=\"/console/client/{}#jobs-heading\">Cancel</a></p></form>",
        if editing { "Save the job" } else { "Add the job" },
        seg(client)
    ));
    if editing {
        b.push_str(&format!(
            "<h2>Remove</h2><form class=\"job\" method=\"post\" action=\"/console/client/{}/jobs/{}/remove\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label class=\"tick\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\"> The agent stops running job {} \
             (its snapshots stay where they are)</label><p><button type=\"submit\">Remove the job</button></p></form>",
            seg(client),
            seg(&f.editing),
            esc(&w.csrf),
            esc(&f.editing)
        ));
    }
    page(&format!("coffer: {title}"), Some(w), &b)
}

pub(super) async fn known_client(server: &Arc<Server>, name: &str) -> Option<Response> {
    let (s, n) = (server.clone(), name.to_string());
    match blocking(move || s.catalog.client(&n)).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(error_page(StatusCode::NOT_FOUND, &format!("no client {name:?}"))),
        Err(e) => Some(internal(e)),
    }
}

/// `GET /console/client/NAME/new-job`: an empty form.
pub(super) async fn new_job(State(s): St, w: Who, UrlPath(name): UrlPath<String>) -> Response {
    if let Some(refused) = w.fleet_only() {
        return refused;
    }
    if let Some(r) = known_client(&s, &name).await {
        return r;
    }
    html_response(StatusCode::OK, job_page(&name, &w, &JobForm::default(), None))
}

/// `GET /console/client/NAME/jobs/JOB`: the stored job in the form.
pub(super) async fn edit_job(
    State(s): St,
    w: Who,
    UrlPath((name, job)): UrlPath<(String, String)>,
) -> Response {
    if let Some(refused) = w.fleet_only() {
        return refused;
    }
    if let Some(r) = known_client(&s, &name).await {
        return r;
    }
    let (server, n2) = (s.clone(), name.clone());
    let stored = match blocking(move || server.catalog.jobs(&n2)).await {
        Ok((_, jobs)) => jobs.into_iter().find(|j| j.spec.name == job),
        Err(e) => return internal(e),
    };
    match stored {
        Some(j) => html_response(StatusCode::OK, job_page(&name, &w, &JobForm::of(&j), None)),
        None => error_page(
            StatusCode::NOT_FOUND,
            &format!("client {name:?} has no job {job:?} set here"),
        ),
    }
}

/// `POST /console/client/NAME/jobs`: add or replace a job; a refused form comes back with
/// what was typed and one line saying what is wrong.
pub(super) async fn save_job(
    State(s): St,
    w: Who,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Form(f): Form<JobForm>,
) -> Response {
    if let Some(refused) = form_refused(&w, &f.csrf, &headers).or_else(|| w.fleet_only()) {
        return refused;
    }
    if let Some(r) = known_client(&s, &name).await {
        return r;
    }
    let spec = match f.spec() {
        Ok(spec) => spec,
        Err(m) => return html_response(StatusCode::BAD_REQUEST, job_page(&name, &w, &f, Some(&m))),
    };
    let put = if f.editing.is_empty() {
        Put::New
    } else if f.editing != spec.name {
        let m = "a job keeps its name: add a new job and remove this one to rename it";
        return html_response(StatusCode::BAD_REQUEST, job_page(&name, &w, &f, Some(m)));
    } else {
        Put::Replace(f.version.clone())
    };
    let (server, n2) = (s.clone(), name.clone());
    let r = blocking(move || server.catalog.put_job(&n2, &spec, server.now(), put)).await;
    match r {
        Ok(()) => {
            tracing::info!(operator = %w.operator, client = %name.escape_debug(), job = %f.name.escape_debug(), "managed job set in the console");
            redirect(&format!("/console/client/{}#jobs-heading", seg(&name)))
        }
        Err(ServerError::Invalid(m)) => {
            html_response(StatusCode::BAD_REQUEST, job_page(&name, &w, &f, Some(&m)))
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
pub(super) struct RemoveForm {
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /console/client/NAME/jobs/JOB/remove`, with the box ticked.
pub(super) async fn remove_job(
    State(s): St,
    w: Who,
    headers: HeaderMap,
    UrlPath((name, job)): UrlPath<(String, String)>,
    Form(f): Form<RemoveForm>,
) -> Response {
    if let Some(refused) = form_refused(&w, &f.csrf, &headers).or_else(|| w.fleet_only()) {
        return refused;
    }
    if f.confirm != "yes" {
        return error_page(
            StatusCode::BAD_REQUEST,
            "nothing removed: tick the box that confirms the removal, then send the form again",
        );
    }
    let (server, n2, j2) = (s.clone(), name.clone(), job.clone());
    match blocking(move || server.catalog.remove_job(&n2, &j2)).await {
        Ok(true) => {
            tracing::info!(operator = %w.operator, client = %name.escape_debug(), job = %job.escape_debug(), "managed job removed in the console");
            redirect(&format!("/console/client/{}#jobs-heading", seg(&name)))
        }
        Ok(false) => error_page(
            StatusCode::NOT_FOUND,
            &format!("client {name:?} has no job {job:?} set here"),
        ),
        Err(e) => internal(e),
    }
}
