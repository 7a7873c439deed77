//! `coffer agent`: runs the configuration's jobs on their schedules.
//!
//! Each run is a `coffer run JOB` (or `coffer run JOB --check`) process of its own: the agent
//! itself only keeps time, so it stays small while idle and a run that goes wrong cannot take
//! the agent with it. The scheduled time of the last run started is remembered per job in the
//! state directory, before the run starts: a time that passed while the agent was not running
//! (the machine was off, the agent stopped) is caught up once when it starts again, not once
//! per missed time. A job never runs twice at once (the job's lock, which `coffer run` by hand
//! respects too): a time that comes while the job still runs is caught up when it ends.
//!
//! Signals: SIGHUP reloads the configuration (a broken one is refused, and the old one goes
//! on); SIGTERM and SIGINT stop the agent: running jobs are told to stop (each step ends
//! cleanly: the repository stays valid), and the agent waits for them. A killed agent's runs
//! end with it (they are told by the kernel), and the next agent catches up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use coffer_agent::{Config, JobState, LockError, Schedule, StateDir};
use tokio::signal::unix::{signal, SignalKind};

use super::job;
use crate::cli::Global;

/// A job's backup or its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Backup,
    Check,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Check => "check",
        }
    }
}

/// One log line on stderr (the journal adds the time when run by systemd).
fn log(msg: &str) {
    let t = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
    eprintln!("{t} coffer agent: {msg}");
}

struct Running {
    pid: u32,
    started: Instant,
}

/// The scheduled time that is due for (job, kind), if one is: the newest time at or before
/// now that is later than the one last started. The first time a job is seen, nothing is
/// due: its first run is its next scheduled time (the state remembers the current one).
fn due(
    schedule: &Schedule,
    delay: Duration,
    last: Option<i64>,
    now: DateTime<Utc>,
) -> (Option<i64>, Option<i64>) {
    let latest = schedule.last_at_or_before(now, delay).map(|t| t.timestamp());
    match (latest, last) {
        (Some(l), Some(prev)) if l > prev => (Some(l), None),
        (Some(l), None) => (None, Some(l)),
        _ => (None, None),
    }
}

fn schedules(cfg: &Config) -> Vec<(String, Kind, Schedule)> {
    let mut out = Vec::new();
    for j in cfg.jobs.values() {
        if let Some(s) = &j.schedule {
            out.push((j.name.clone(), Kind::Backup, s.clone()));
        }
        if let Some(c) = &j.check {
            out.push((j.name.clone(), Kind::Check, c.schedule.clone()));
        }
    }
    out
}

fn recorded(st: &JobState, kind: Kind) -> Option<i64> {
    match kind {
        Kind::Backup => st.backup_due,
        Kind::Check => st.check_due,
    }
}

fn record(st: &mut JobState, kind: Kind, t: i64) {
    match kind {
        Kind::Backup => st.backup_due = Some(t),
        Kind::Check => st.check_due = Some(t),
    }
}

/// Start `coffer run JOB [--check]`; its exit arrives on `done`.
fn start(
    g: &Global,
    cfg: &Config,
    job: &str,
    kind: Kind,
    done: &tokio::sync::mpsc::UnboundedSender<(String, Kind, Option<i32>)>,
) -> Result<u32> {
    let exe = std::env::current_exe().context("finding the coffer executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--config")
        .arg(&cfg.path)
        .env(super::run::EXIT_WITH_PARENT, std::process::id().to_string())
        .stdin(std::process::Stdio::null());
    if g.quiet {
        cmd.arg("--quiet");
    }
    for _ in 0..g.verbose {
        cmd.arg("--verbose");
    }
    cmd.arg("run").arg(job);
    if kind == Kind::Check {
        cmd.arg("--check");
    }
    let mut child = cmd.spawn().context("starting coffer run")?;
    let pid = child.id().unwrap_or(0);
    let (done, job) = (done.clone(), job.to_string());
    tokio::spawn(async move {
        let code = child.wait().await.ok().and_then(|s| s.code());
        let _ = done.send((job, kind, code));
    });
    Ok(pid)
}

pub fn run(g: &Global) -> Result<u8> {
    let cfg = job::load(g)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    rt.block_on(agent(g, cfg))
}

async fn agent(g: &Global, mut cfg: Config) -> Result<u8> {
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT")?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut running: BTreeMap<(String, Kind), Running> = BTreeMap::new();
    let mut host = job::host(&cfg);
    log(&format!(
        "started: {} job(s) from {}, state in {}",
        cfg.jobs.len(),
        cfg.path.display(),
        cfg.state_dir.display()
    ));
    let mut stopping = false;
    loop {
        let state = StateDir::new(&cfg.state_dir);
        let now = Utc::now();
        let mut wake: Option<DateTime<Utc>> = None;
        if !stopping {
            for (name, kind, schedule) in schedules(&cfg) {
                let delay = schedule.delay_for(&host, &name);
                if let Some(next) = schedule.next_after(now, delay) {
                    wake = Some(wake.map_or(next, |w| w.min(next)));
                }
                if running.contains_key(&(name.clone(), kind)) {
                    continue;
                }
                let mut st = match state.load(&name) {
                    Ok(s) => s,
                    Err(w) => {
                        log(&format!("warning: {w}; the job's state starts afresh"));
                        JobState::default()
                    }
                };
                let (run_now, first_seen) = due(&schedule, delay, recorded(&st, kind), now);
                if let Some(t) = first_seen {
                    // a job seen for the first time waits for its next scheduled time
                    record(&mut st, kind, t);
                    if let Err(e) = state.save(&name, &st) {
                        log(&format!("warning: job {name}: cannot write its state: {e}"));
                    }
                    continue;
                }
                let Some(slot) = run_now else { continue };
                // a run started by hand holds the lock: look again shortly
                match state.lock(&name) {
                    Ok(lock) => drop(lock),
                    Err(LockError::Busy { pid, .. }) => {
                        let again = now + chrono::Duration::seconds(5);
                        wake = Some(wake.map_or(again, |w| w.min(again)));
                        log(&format!(
                            "job {name}: {} due, but the job is running (pid {pid}): waiting",
                            kind.name()
                        ));
                        continue;
                    }
                    Err(e) => {
                        log(&format!("job {name}: cannot take its lock: {e}"));
                        continue;
                    }
                }
                // remembered before the run starts: a crash during it does not run it twice
                record(&mut st, kind, slot);
                if let Err(e) = state.save(&name, &st) {
                    log(&format!("job {name}: not started: cannot write its state: {e}"));
                    continue;
                }
                let late = now.timestamp() - slot;
                match start(g, &cfg, &name, kind, &done_tx) {
                    Ok(pid) => {
                        log(&format!(
                            "job {name}: {} started (pid {pid}; scheduled {}{})",
                            kind.name(),
                            coffer_agent::show(coffer_agent::utc(slot), schedule.zone()),
                            if late > 60 { ", caught up" } else { "" }
                        ));
                        running.insert(
                            (name.clone(), kind),
                            Running {
                                pid,
                                started: Instant::now(),
                            },
                        );
                    }
                    Err(e) => log(&format!("job {name}: {} not started: {e:#}", kind.name())),
                }
            }
        } else if running.is_empty() {
            log("stopped");
            return Ok(0);
        }
        // sleep until the next scheduled time, a finished run or a signal (at most an hour:
        // a clock set forward is noticed)
        let until = wake
            .map(|w| (w - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(until), if !stopping => {}
            Some((name, kind, code)) = done_rx.recv() => {
                if let Some(r) = running.remove(&(name.clone(), kind)) {
                    let took = r.started.elapsed().as_secs_f64();
                    let how = match code {
                        Some(0) => "ok".to_string(),
                        Some(3) => "finished with warnings".to_string(),
                        Some(130) => "interrupted".to_string(),
                        Some(c) => format!("FAILED (exit code {c})"),
                        None => "killed".to_string(),
                    };
                    log(&format!("job {name}: {} {how} after {took:.1} s", kind.name()));
                }
            }
            _ = hup.recv() => {
                match job::load(g) {
                    Ok(new) => {
                        cfg = new;
                        host = job::host(&cfg);
                        log(&format!("configuration reloaded: {} job(s)", cfg.jobs.len()));
                    }
                    Err(e) => log(&format!("configuration not reloaded, the old one goes on: {e:#}")),
                }
            }
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                if stopping {
                    continue;
                }
                stopping = true;
                if running.is_empty() {
                    log("stopped");
                    return Ok(0);
                }
                log(&format!("stopping: telling {} running job(s) to stop", running.len()));
                for r in running.values() {
                    if let Some(pid) = rustix::process::Pid::from_raw(r.pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn missed_times_are_caught_up_once_and_new_jobs_wait() {
        let s = Schedule::new("0 3 * * *", "UTC".parse().unwrap(), Duration::ZERO).unwrap();
        let at = |x: &str| DateTime::parse_from_rfc3339(x).unwrap().with_timezone(&Utc);
        let day1 = at("2026-12-01T03:00:00Z").timestamp();
        // first sight: nothing runs now, the current time is remembered
        assert_eq!(
            due(&s, Duration::ZERO, None, at("2026-12-05T10:00:00Z")),
            (None, Some(at("2026-12-05T03:00:00Z").timestamp()))
        );
        // the machine was off for three nights: one run, for the newest time
        assert_eq!(
            due(&s, Duration::ZERO, Some(day1), at("2026-12-04T10:00:00Z")),
            (Some(at("2026-12-04T03:00:00Z").timestamp()), None)
        );
        // nothing new since
        let last = at("2026-12-04T03:00:00Z").timestamp();
        assert_eq!(
            due(&s, Duration::ZERO, Some(last), at("2026-12-04T23:59:59Z")),
            (None, None)
        );
        assert_eq!(
            due(&s, Duration::ZERO, Some(last), at("2026-12-05T03:00:00Z")),
            (Some(at("2026-12-05T03:00:00Z").timestamp()), None)
        );
    }
}
