//! `coffer run JOB`: one run of a configured job, exactly as the agent starts it. The job's
//! lock is taken (one run of a job at a time), the `before` hook runs, then one `coffer
//! backup --job JOB` per destination, each its own process with its own run report, then
//! `coffer forget --job JOB` where the job prunes and the backup was clean, then the `after`
//! hook, told the outcome (it runs whenever `before` did, interrupted runs included). With
//! `--check`, the job's verification instead: `coffer check --job JOB` per repository.
//!
//! A destination that fails does not stop the others (the off-site copy is made even when
//! the company server is down). Retention runs only where the backup succeeded without
//! warnings: nights of failed database dumps must not push the complete snapshots out.
//! Exit code: 0 when every step succeeded, 3 when a backup missed files, 1 when a step
//! failed, 75 when the job was running already, 130 when interrupted (SIGINT or SIGTERM go to
//! the running step, which stops cleanly).

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use coffer_agent::{Config, Job, LastRun, LockError, StateDir};
use serde::Serialize;

use super::job;
use crate::cli::{Global, RunArgs};

/// The environment variable that tells a child coffer to end when its parent does.
pub const EXIT_WITH_PARENT: &str = "COFFER_EXIT_WITH_PARENT";

static CHILD: AtomicI32 = AtomicI32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Secrets of this process that hooks must not inherit.
const SECRET_VARS: &[&str] = &[
    "COFFER_PASSWORD",
    "COFFER_NEW_PASSWORD",
    "COFFER_FROM_PASSWORD",
    "COFFER_TOKEN",
    "COFFER_FROM_TOKEN",
    "COFFER_REPORT_TOKEN",
];

/// One step of the run, as `--json` prints it.
#[derive(Serialize)]
struct Step {
    /// backup, forget or check
    command: &'static str,
    repository: String,
    exit_code: i32,
    /// ok, warning, failed, skipped or interrupted
    status: &'static str,
    /// The step's own JSON output (with --json), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize)]
struct RunOutput {
    job: String,
    kind: &'static str,
    started: i64,
    finished: i64,
    status: &'static str,
    exit_code: u8,
    steps: Vec<Step>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn status_of(code: i32) -> &'static str {
    match code {
        0 => "ok",
        3 => "warning",
        130 => "interrupted",
        _ => "failed",
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn stop_child() {
    let pid = CHILD.load(Ordering::SeqCst);
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// SIGINT/SIGTERM: passed on to the running step, and no step starts after it.
fn on_interrupt() {
    let _ = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        stop_child();
    });
}

/// Run `coffer --config FILE --repo-name REPO ARGS...` and wait for it: its exit code (130
/// when stopped by SIGINT/SIGTERM, 1 with a note when killed by another signal) and its JSON.
fn step(
    g: &Global,
    cfg: &Config,
    repo: &str,
    args: &[&str],
) -> Result<(i32, Option<serde_json::Value>, Option<String>)> {
    let mut cmd = Command::new(super::agent::self_exe()?);
    cmd.arg("--config")
        .arg(&cfg.path)
        .arg("--repo-name")
        .arg(repo)
        .env(EXIT_WITH_PARENT, std::process::id().to_string());
    if g.json {
        cmd.arg("--json").stdout(Stdio::piped());
    }
    if g.quiet {
        cmd.arg("--quiet");
    }
    for _ in 0..g.verbose {
        cmd.arg("--verbose");
    }
    if g.no_cache {
        cmd.arg("--no-cache");
    }
    // rates given to `run` itself hold for each step (a job's own apply where none is given)
    if let Some(r) = g.limit_upload {
        cmd.arg(format!("--limit-upload={r}B"));
    }
    if let Some(r) = g.limit_download {
        cmd.arg(format!("--limit-download={r}B"));
    }
    if let Some(m) = g.index_memory {
        cmd.arg(format!("--index-memory={m}B"));
    }
    cmd.args(args);
    let child = cmd.spawn().context("starting a coffer step")?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    // a signal that came between the spawn and the line above
    if interrupted() {
        stop_child();
    }
    let out = child.wait_with_output().context("waiting for a coffer step");
    CHILD.store(0, Ordering::SeqCst);
    let out = out?;
    let (code, note) = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) if s == libc_sig::TERM || s == libc_sig::INT => (130, None),
        (None, s) => (1, Some(format!("killed by signal {}", s.unwrap_or(0)))),
    };
    let json = g
        .json
        .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .flatten();
    Ok((code, json, note))
}

/// Signal numbers (Linux), without a libc dependency here.
mod libc_sig {
    pub const INT: i32 = 2;
    pub const TERM: i32 = 15;
}

/// Run a hook with `sh -c`; its exit code. It inherits no secret of this process.
fn hook(job: &Job, which: &str, cmd: &str, result: Option<&str>) -> Result<i32> {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .env("COFFER_JOB", &job.name)
        .env("COFFER_HOOK", which)
        .env_remove(EXIT_WITH_PARENT);
    for v in SECRET_VARS {
        c.env_remove(v);
    }
    if let Some(r) = result {
        c.env("COFFER_RESULT", r);
    }
    // a hook's output is part of the log, not of the run's output (which may be JSON)
    if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
        c.stdout(Stdio::from(err));
    }
    let status = c
        .status()
        .with_context(|| format!("job {}: starting the {which} hook", job.name))?;
    Ok(status.code().unwrap_or(130))
}

/// The step for an error that kept a step from running at all.
fn not_run(command: &'static str, repo: &str, e: &anyhow::Error) -> Step {
    Step {
        command,
        repository: repo.to_string(),
        exit_code: 1,
        status: "failed",
        output: None,
        note: Some(format!("{e:#}")),
    }
}

pub fn run(g: &Global, a: RunArgs) -> Result<u8> {
    let cfg = job::load(g)?;
    let job = cfg
        .job(&a.job)
        .map_err(|e| coffer_core::Error::Usage(e.to_string()))?
        .clone();
    let kind = if a.check {
        "check"
    } else if a.drill {
        "drill"
    } else {
        "backup"
    };
    // hooks, retention: a backup's only
    let backup = kind == "backup";
    if (a.check && job.check.is_none()) || (a.drill && job.drill.is_none()) {
        return Err(coffer_core::Error::Usage(format!(
            "job {}: no [job.{}.{kind}] in {}",
            job.name,
            job.name,
            cfg.path.display()
        ))
        .into());
    }
    let state = StateDir::new(&cfg.state_dir);
    let _lock = match state.lock(&job.name) {
        Ok(l) => l,
        Err(e @ LockError::Busy { .. }) => {
            eprintln!("coffer: {e}: not started");
            return Ok(super::agent::EXIT_BUSY);
        }
        Err(e) => return Err(e.into()),
    };
    on_interrupt();
    let (started, clock) = (now(), Instant::now());
    let mut last = LastRun {
        kind: kind.to_string(),
        started: Some(started),
        finished: None,
        result: Some("running".into()),
    };
    let _ = state.save_last(&job.name, &last);

    let mut steps: Vec<Step> = Vec::new();
    let say = |s: &Step| {
        if !g.json && !g.quiet {
            println!(
                "job {}: {} {} {}: {}{}",
                job.name,
                s.command,
                match s.command {
                    "forget" => "on",
                    "check" | "drill" => "of",
                    _ => "to",
                },
                s.repository,
                s.status,
                s.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
            );
        }
    };
    let mut failed_before = None;
    if let (true, Some(cmd)) = (backup, &job.before) {
        match hook(&job, "before", cmd, None) {
            Ok(0) => {}
            Ok(code) => failed_before = Some(format!("the before hook exited with code {code}")),
            Err(e) => failed_before = Some(format!("{e:#}")),
        }
    }
    let targets = match (&job.check, &job.drill) {
        (Some(c), _) if a.check => c.on.clone(),
        (_, Some(d)) if a.drill => d.on.clone(),
        _ => job.to.clone(),
    };
    for repo in &targets {
        if let Some(why) = &failed_before {
            // reported as failed to each destination's server: a backup that did not happen
            // must not look like one that was never due
            let mut gd = g.clone();
            job::announce(&cfg, &job);
            if job::apply_repo(&mut gd, &cfg, repo, false).is_ok() {
                crate::report::send(
                    &gd,
                    "backup",
                    SystemTime::now(),
                    clock.elapsed(),
                    &Err(why.clone()),
                );
            }
            let s = Step {
                command: "backup",
                repository: repo.clone(),
                exit_code: 1,
                status: "failed",
                output: None,
                note: Some(why.clone()),
            };
            say(&s);
            steps.push(s);
            continue;
        }
        if interrupted() {
            break;
        }
        let command = kind;
        let s = match step(g, &cfg, repo, &[kind, "--job", &job.name]) {
            Ok((code, output, note)) => Step {
                command,
                repository: repo.clone(),
                exit_code: code,
                status: status_of(code),
                output,
                note,
            },
            Err(e) => not_run(command, repo, &e),
        };
        say(&s);
        steps.push(s);
    }
    if let (true, Some(r)) = (backup, &job.retention) {
        for repo in &r.on {
            if interrupted() {
                break;
            }
            let clean = steps.iter().any(|s| s.repository == *repo && s.exit_code == 0);
            let s = if clean {
                match step(g, &cfg, repo, &["forget", "--job", &job.name]) {
                    Ok((code, output, note)) => Step {
                        command: "forget",
                        repository: repo.clone(),
                        exit_code: code,
                        status: status_of(code),
                        output,
                        note,
                    },
                    Err(e) => not_run("forget", repo, &e),
                }
            } else {
                Step {
                    command: "forget",
                    repository: repo.clone(),
                    exit_code: 0,
                    status: "skipped",
                    output: None,
                    note: Some(
                        "its backup had warnings or failed: nothing is removed while something is wrong"
                            .into(),
                    ),
                }
            };
            say(&s);
            steps.push(s);
        }
    }
    let was_interrupted = interrupted() || steps.iter().any(|s| s.exit_code == 130);
    let code: u8 = if was_interrupted {
        130
    } else if steps.iter().any(|s| !matches!(s.exit_code, 0 | 3)) || failed_before.is_some() {
        1
    } else if steps.iter().any(|s| s.exit_code == 3) {
        3
    } else {
        0
    };
    let result = status_of(i32::from(code));
    // the after hook undoes what the before hook did (a stopped service): it runs after every
    // backup run, interrupted ones included
    if let (true, Some(cmd)) = (backup, &job.after) {
        match hook(&job, "after", cmd, Some(result)) {
            Ok(0) => {}
            Ok(hc) => eprintln!(
                "coffer: warning: job {}: the after hook exited with code {hc}",
                job.name
            ),
            Err(e) => eprintln!("coffer: warning: {e:#}"),
        }
    }
    last.finished = Some(now());
    last.result = Some(result.to_string());
    if let Err(e) = state.save_last(&job.name, &last) {
        eprintln!(
            "coffer: warning: job {}: cannot record the run in {}: {e}",
            job.name,
            state.root().display()
        );
    }
    if g.json {
        super::print_json(&RunOutput {
            job: job.name.clone(),
            kind,
            started,
            finished: now(),
            status: result,
            exit_code: code,
            steps,
        })?;
    } else if !g.quiet {
        println!(
            "job {}: {kind} {result} in {:.1} s",
            job.name,
            clock.elapsed().as_secs_f64()
        );
    }
    Ok(code)
}
