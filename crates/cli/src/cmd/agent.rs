//! `coffer agent`: runs the configuration's jobs on their schedules.
//!
//! Each run is a `coffer run JOB` (or `coffer run JOB --check`) process of its own: the agent
//! itself only keeps time, so it stays small while idle and a run that goes wrong cannot take
//! the agent with it. Runs read the configuration the agent accepted (a copy per version in
//! the state directory, made only when a reload succeeds): an edit takes effect at SIGHUP,
//! never half-way through a run, and a broken edit stops nothing.
//!
//! The scheduled time of the last run started is remembered per job in the state directory,
//! before the run starts: a time that passed while the agent was not running (the machine
//! was off, the agent stopped) is caught up once when it starts again, not once per missed
//! time. One job runs at a time, backup or check (they share the job's lock, which `coffer run`
//! by hand respects too): a time that comes while the job runs is caught up when it ends, and
//! a run that finds the lock taken (exit 75) is retried, its time not counted as run.
//!
//! Signals: SIGHUP reloads the configuration (a broken one is refused, and the old one goes
//! on; a job whose schedule changed waits for its next time under the new one); SIGTERM and
//! SIGINT stop the agent: running jobs are told to stop (each step ends cleanly: the
//! repository stays valid, the after hook runs), and the agent waits for them. A killed
//! agent's runs end with it (they are told by the kernel), and the next agent catches up.
//!
//! Managed jobs (`[managed]`): a thread long-polls the coffer server (`GET /REPO/agent`) for
//! the jobs set there and the runs asked for ("back up now"). Each version of the jobs is
//! checked against the local `[managed]` bounds (`coffer_agent::screen`); the accepted ones
//! join the local jobs in a new accepted version, and the agent reports what it took and
//! what it refused (a `config` run report). A run asked for starts at once, outside the
//! schedule (the job's schedule state is not touched).
//!
//! Restores and listings asked for on the server (the console) come with the same poll; each
//! is checked against `[managed] restore` and `browse` and runs as a command of its own
//! (`coffer restore`, `restore-db`, `restore-site`, `coffer agent browse`) on the repository
//! of `[managed] server` (see `requests`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use coffer_agent::{Config, JobState, Schedule, StateDir};
use coffer_wire::AgentPoll;
use tokio::signal::unix::{signal, SignalKind};

use super::job;
use crate::cli::Global;

/// `coffer run`'s exit code when the job is already running.
pub const EXIT_BUSY: u8 = 75;

/// A job's backup or its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Backup,
    Check,
    Drill,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Check => "check",
            Kind::Drill => "drill",
        }
    }
}

/// One log line (through `tracing`: a timestamped line on stderr, see `logging`).
fn log(msg: &str) {
    tracing::info!("{msg}");
}

fn warn(msg: &str) {
    tracing::warn!("{msg}");
}

struct Running {
    /// The configuration version it reads.
    config: PathBuf,
    kind: Kind,
    /// The scheduled time it runs for.
    slot: i64,
    pid: u32,
    started: Instant,
    /// The scheduled time recorded before this run (put back if the run found the job busy).
    previous: Option<i64>,
    /// Asked for from the server, outside the schedule (its state is left alone).
    requested: bool,
}

/// What is due for one schedule, given the scheduled time last started (`last`).
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Run now, for this scheduled time.
    Run(i64),
    /// Nothing to run; remember this scheduled time as the last one (a job seen for the first
    /// time, or a clock set back: its first run is its next time).
    Remember(i64),
    Nothing,
}

fn due(schedule: &Schedule, delay: Duration, last: Option<i64>, now: DateTime<Utc>) -> Due {
    let Some(latest) = schedule.last_at_or_before(now, delay).map(|t| t.timestamp()) else {
        return Due::Nothing;
    };
    match last {
        None => Due::Remember(latest),
        // recorded in the future: the clock went back
        Some(prev) if prev > now.timestamp() => Due::Remember(latest),
        Some(prev) if latest > prev => Due::Run(latest),
        Some(_) => Due::Nothing,
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
        if let Some(d) = &j.drill {
            out.push((j.name.clone(), Kind::Drill, d.schedule.clone()));
        }
    }
    out
}

/// The scheduled time last started, as the state file has it; one that started and never
/// ended (the agent stopped or died during its run) counts as not run, so it is caught up.
fn recorded(st: &JobState, kind: Kind) -> Option<i64> {
    let (started, done) = match kind {
        Kind::Backup => (st.backup_due, st.backup_done),
        Kind::Check => (st.check_due, st.check_done),
        Kind::Drill => (st.drill_due, st.drill_done),
    };
    match (started, done) {
        (Some(s), Some(d)) if d < s => Some(s - 1),
        (s, _) => s,
    }
}

fn set_done(st: &mut JobState, kind: Kind, t: Option<i64>) {
    match kind {
        Kind::Backup => st.backup_done = t,
        Kind::Check => st.check_done = t,
        Kind::Drill => st.drill_done = t,
    }
}

fn set_recorded(st: &mut JobState, kind: Kind, t: Option<i64>) {
    match kind {
        Kind::Backup => st.backup_due = t,
        Kind::Check => st.check_due = t,
        Kind::Drill => st.drill_due = t,
    }
}

/// The executable to start runs from: the one running (on Linux /proc/self/exe, which still
/// names it after a package upgrade replaced the file).
pub fn self_exe() -> Result<PathBuf> {
    let proc = Path::new("/proc/self/exe");
    if proc.exists() {
        return Ok(proc.to_path_buf());
    }
    std::env::current_exe().context("finding the coffer executable")
}

/// The managed jobs the server sent last: their generation and definitions (as sent).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Taken {
    generation: i64,
    jobs: Vec<serde_json::Value>,
    /// The server they came from (its repository's location): jobs kept from another
    /// server are not taken up after a restart.
    #[serde(default)]
    server: String,
}

/// Where the agent keeps the managed jobs it took last, so that they go on running after a
/// restart while the server is unreachable (checked against `[managed]` again when read).
fn taken_file(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("managed-jobs.json")
}

/// The location of the server of `[managed]`, if any.
fn managed_server(cfg: &Config) -> Option<String> {
    let m = cfg.managed.as_ref()?;
    cfg.repositories.get(&m.server).map(|r| r.location.clone())
}

/// The managed jobs kept by the last run of the agent, when they came from the server the
/// configuration names now.
fn load_taken(cfg: &Config) -> Option<Taken> {
    let server = managed_server(cfg)?;
    let bytes = std::fs::read(taken_file(cfg)).ok()?;
    match serde_json::from_slice::<Taken>(&bytes) {
        Ok(t) if t.server == server => Some(t),
        Ok(_) => None,
        Err(e) => {
            warn(&format!(
                "managed jobs kept in {}: unreadable ({e}); waiting for the server's",
                taken_file(cfg).display()
            ));
            None
        }
    }
}

/// Keep the managed jobs taken (written whole or not at all).
fn save_taken(cfg: &Config, t: &Taken) {
    let path = taken_file(cfg);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(t)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        });
    if let Err(e) = written {
        warn(&format!(
            "managed jobs: cannot keep them in {} ({e}); after a restart they wait for the server",
            path.display()
        ));
    }
}

/// An accepted configuration version.
struct Accepted {
    cfg: Config,
    /// The file the runs read.
    copy: PathBuf,
    /// Managed jobs accepted, and one line per managed job refused.
    managed: Vec<String>,
    refused: Vec<String>,
}

/// Read and check the configuration (with the managed jobs `taken`, when `[managed]` asks for
/// them), and keep the accepted text for the runs: each accepted version in a file of its
/// own (`STATE/agent/coffer-PID-N.toml`), so that a run reads one version from its first
/// step to its last, whatever reloads happen meanwhile.
fn accept(g: &Global, n: u32, taken: Option<&Taken>) -> Result<Accepted> {
    let (local, text) = job::load_with_text(g)?;
    let (cfg, text, managed, refused) = match (taken, &local.managed) {
        (Some(t), Some(_)) => {
            let s = coffer_agent::screen(&local, &text, t.generation, &t.jobs)
                .map_err(|e| coffer_core::Error::Usage(e.to_string()))?;
            (s.config, s.text, s.accepted, s.refused)
        }
        _ => (local, text, Vec::new(), Vec::new()),
    };
    let dir = cfg.state_dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let copy = dir.join(format!("coffer-{}-{n}.toml", std::process::id()));
    let tmp = dir.join(format!(".coffer-{}-{n}.toml", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &copy).with_context(|| format!("writing {}", copy.display()))?;
    Ok(Accepted {
        cfg,
        copy,
        managed,
        refused,
    })
}

/// The thread that long-polls the server of `[managed]` and hands each answer to the agent,
/// tagged with `mine`; it ends when `epoch` moves on (a reload started another).
fn start_poller(
    cfg: &Config,
    epoch: &Arc<AtomicU64>,
    tx: &tokio::sync::mpsc::UnboundedSender<(u64, AgentPoll)>,
) {
    let Some(m) = &cfg.managed else { return };
    let Some(repo) = cfg.repositories.get(&m.server).cloned() else {
        return;
    };
    let mine = epoch.fetch_add(1, Ordering::SeqCst) + 1;
    let (epoch, tx) = (epoch.clone(), tx.clone());
    let spawned = std::thread::Builder::new()
        .name("coffer-poll".into())
        .spawn(move || {
            let opts = coffer_backends::RestOptions {
                cacert: repo.cacert.clone(),
                token_file: repo.token_file.clone(),
                token_var: Some("COFFER_AGENT_TOKEN"),
            };
            let backend = match coffer_backends::RestBackend::open(&repo.location, &opts) {
                Ok(b) => b,
                Err(e) => {
                    warn(&format!(
                        "managed jobs: cannot reach the server of repository {}: {e}; the local jobs go on",
                        repo.name
                    ));
                    return;
                }
            };
            let mut since = -1;
            let mut failing = false;
            while epoch.load(Ordering::SeqCst) == mine {
                match backend.agent_poll(since, coffer_wire::POLL_WAIT_MAX_SECS - 10) {
                    Ok(None) => {}
                    Ok(Some(bytes)) => match serde_json::from_slice::<AgentPoll>(&bytes) {
                        Ok(p) => {
                            since = p.generation;
                            if tx.send((mine, p)).is_err() {
                                return;
                            }
                            // (a server answering at once every time must not make this spin)
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        Err(e) => {
                            warn(&format!("managed jobs: the server's answer does not parse: {e}"));
                            std::thread::sleep(Duration::from_secs(30));
                            continue;
                        }
                    },
                    Err(e) => {
                        if !failing {
                            warn(&format!(
                                "managed jobs: {e}; asking again every 30 s, the jobs taken go on"
                            ));
                            failing = true;
                        }
                        std::thread::sleep(Duration::from_secs(30));
                        continue;
                    }
                }
                if failing {
                    log("managed jobs: the server answers again");
                    failing = false;
                }
            }
        });
    if let Err(e) = spawned {
        warn(&format!("managed jobs: cannot start polling: {e}"));
    }
}

/// Tell the server of `[managed]` what was taken of its jobs (a `config` run report: failed
/// when one was refused, which the server shows until a version is taken whole).
async fn report_taken(cfg: &Config, host: &str, generation: i64, taken: &[String], refused: &[String]) {
    let Some(m) = &cfg.managed else { return };
    let Some(repo) = cfg.repositories.get(&m.server).cloned() else {
        return;
    };
    let now = Utc::now().timestamp();
    let mut messages: Vec<String> = refused.iter().map(|r| format!("refused: {r}")).collect();
    messages.push(format!(
        "generation {generation}: {} managed job(s) taken{}",
        taken.len(),
        if taken.is_empty() {
            String::new()
        } else {
            format!(" ({})", taken.join(", "))
        }
    ));
    let report = serde_json::json!({
        "kind": "config",
        "status": if refused.is_empty() { "ok" } else { "failed" },
        "host": host,
        "started": now,
        "finished": now,
        "errors": refused.len(),
        "messages": messages,
    });
    let sent = tokio::task::spawn_blocking(move || {
        let opts = coffer_backends::RestOptions {
            cacert: repo.cacert.clone(),
            token_file: repo.token_file.clone(),
            token_var: Some("COFFER_AGENT_TOKEN"),
        };
        let b = coffer_backends::RestBackend::open(&repo.location, &opts)?;
        b.post_run(report.to_string().as_bytes())
            .map_err(|e| e.to_string())
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn(&format!("managed jobs: the report did not reach the server: {e}")),
        Err(e) => warn(&format!("managed jobs: the report did not reach the server: {e}")),
    }
}

/// Remove the accepted versions no run reads any more (and those of agents before this one).
fn tidy_versions(dir: &Path, keep: &[&Path]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with("coffer-") || name == "coffer.toml")
            && name.ends_with(".toml")
            && !keep.iter().any(|k| *k == e.path())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A restore or a listing the server asked for, running.
struct Asked {
    request: i64,
    restore: bool,
    pid: u32,
    started: Instant,
    config: PathBuf,
}

/// At most this many restores asked for by the server run at once (each may take the disk
/// and the cores: the rest are refused, and said so).
const MAX_RESTORES: usize = 2;

/// Start `coffer --config ACCEPTED --repo-name SERVER ARGS` for request `request` (its report
/// names it); its exit arrives on `done` under `key`.
fn start_asked(
    cfg: &Config,
    accepted: &Path,
    key: &str,
    request: i64,
    in_place: bool,
    args: &[std::ffi::OsString],
    done: &tokio::sync::mpsc::UnboundedSender<(String, Option<i32>, Option<i32>)>,
) -> Result<u32> {
    let server = cfg
        .managed
        .as_ref()
        .map(|m| m.server.clone())
        .context("no [managed] server")?;
    let mut cmd = tokio::process::Command::new(self_exe()?);
    cmd.arg("--config")
        .arg(accepted)
        .arg("--repo-name")
        .arg(server)
        .arg("--quiet")
        .args(args)
        .env(crate::report::REQUEST_VAR, request.to_string())
        // what replaces data here is not taken from a snapshot a write-only key (a stolen one
        // too) sealed
        .env(super::REFUSE_WRITE_ONLY_VAR, if in_place { "1" } else { "" })
        .env(super::run::EXIT_WITH_PARENT, std::process::id().to_string())
        .stdin(std::process::Stdio::null());
    let mut child = cmd.spawn().context("starting coffer")?;
    let pid = child.id().unwrap_or(0);
    let (done, key) = (done.clone(), key.to_string());
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        let status = child.wait().await.ok();
        let _ = done.send((
            key,
            status.and_then(|s| s.code()),
            status.and_then(|s| s.signal()),
        ));
    });
    Ok(pid)
}

/// Post `body` to the server of `[managed]` as a run report (a refused restore), or, with
/// `browse`, as a listing; beside the schedule, a failure only logged.
fn post_to_server(cfg: &Config, body: Vec<u8>, browse: bool) {
    let Some(repo) = cfg
        .managed
        .as_ref()
        .and_then(|m| cfg.repositories.get(&m.server).cloned())
    else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let opts = coffer_backends::RestOptions {
            cacert: repo.cacert.clone(),
            token_file: repo.token_file.clone(),
            token_var: Some("COFFER_AGENT_TOKEN"),
        };
        let sent = coffer_backends::RestBackend::open(&repo.location, &opts).and_then(|b| {
            if browse {
                b.post_browse(&body).map_err(|e| e.to_string())
            } else {
                b.post_run(&body).map_err(|e| e.to_string())
            }
        });
        if let Err(e) = sent {
            warn(&format!(
                "the answer to the server's request did not reach it: {e}"
            ));
        }
    });
}

/// Start `coffer run JOB [--check|--drill]` on the accepted configuration; its exit arrives on `done`.
fn start(
    g: &Global,
    accepted: &Path,
    job: &str,
    kind: Kind,
    done: &tokio::sync::mpsc::UnboundedSender<(String, Option<i32>, Option<i32>)>,
) -> Result<u32> {
    let mut cmd = tokio::process::Command::new(self_exe()?);
    cmd.arg("--config")
        .arg(accepted)
        .env(super::run::EXIT_WITH_PARENT, std::process::id().to_string())
        .stdin(std::process::Stdio::null());
    if g.quiet {
        cmd.arg("--quiet");
    }
    for _ in 0..g.verbose {
        cmd.arg("--verbose");
    }
    cmd.arg("run").arg(job);
    match kind {
        Kind::Check => {
            cmd.arg("--check");
        }
        Kind::Drill => {
            cmd.arg("--drill");
        }
        Kind::Backup => {}
    }
    let mut child = cmd.spawn().context("starting coffer run")?;
    let pid = child.id().unwrap_or(0);
    let (done, job) = (done.clone(), job.to_string());
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        let status = child.wait().await.ok();
        let _ = done.send((
            job,
            status.and_then(|s| s.code()),
            status.and_then(|s| s.signal()),
        ));
    });
    Ok(pid)
}

/// `coffer agent install`: the unit, written and started where systemd runs.
pub fn install(g: &Global, dry_run: bool, unit_dir: &Path) -> Result<u8> {
    // the configuration must be valid before a service is made to read it
    let cfg = job::load(g)?;
    let exe = std::env::current_exe().context("finding the coffer executable")?;
    let config = std::fs::canonicalize(&cfg.path).unwrap_or_else(|_| cfg.path.clone());
    let text = super::generate::agent_unit(&exe, &config);
    super::generate::install_unit(
        "coffer-agent.service",
        &text,
        dry_run,
        unit_dir,
        &format!("{} --config {} agent", exe.display(), config.display()),
    )
}

pub fn run(g: &Global) -> Result<u8> {
    let Accepted {
        cfg, copy: accepted, ..
    } = accept(g, 0, None)?;
    // one agent per state directory: a second one would run every job twice, and tidy away
    // the configuration versions the first one's runs read
    let _one = match StateDir::new(&cfg.state_dir).lock(".agent") {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&accepted);
            return Err(match e {
                coffer_agent::LockError::Busy { pid, .. } => coffer_core::Error::Usage(format!(
                    "another coffer agent runs with the state directory {} (pid {pid}); one agent per machine",
                    cfg.state_dir.display()
                ))
                .into(),
                other => anyhow::Error::new(other).context("taking the agent's lock"),
            });
        }
    };
    tidy_versions(&cfg.state_dir.join("agent"), &[&accepted]);
    StateDir::new(&cfg.state_dir).check_writable().with_context(|| {
        format!(
            "the state directory {} cannot be written (the agent keeps there which scheduled runs it started)",
            cfg.state_dir.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    // the managed jobs taken last time run on while the server is unreachable
    let (cfg, accepted, taken, version) = match load_taken(&cfg) {
        Some(t) => match accept(g, 1, Some(&t)) {
            Ok(a) => {
                log(&format!(
                    "managed jobs (generation {}, kept from the last answer): {} taken, {} refused, until the server answers",
                    t.generation,
                    a.managed.len(),
                    a.refused.len()
                ));
                let _ = std::fs::remove_file(&accepted);
                (a.cfg, a.copy, Some(t), 1)
            }
            Err(e) => {
                warn(&format!(
                    "managed jobs kept from the last answer not taken: {e:#}"
                ));
                (cfg, accepted, None, 0)
            }
        },
        None => (cfg, accepted, None, 0),
    };
    rt.block_on(agent(g, cfg, accepted, taken, version))
}

/// What the agent knows of one schedule: how it was set (a reload that changes it starts it
/// afresh) and the scheduled time last started.
type Memory = BTreeMap<(String, Kind), (String, Option<i64>)>;

fn earliest(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// `version`: the number of the accepted version `accepted` is (the next gets the next one:
/// a run reads one version's file from its first step to its last).
async fn agent(
    g: &Global,
    mut cfg: Config,
    mut accepted: PathBuf,
    mut taken: Option<Taken>,
    mut version: u32,
) -> Result<u8> {
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT")?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // restores and listings asked for on the server, by "request N" / "listing N"
    let mut asked: BTreeMap<String, Asked> = BTreeMap::new();
    let mut memory: Memory = BTreeMap::new();
    let mut retry_at: Option<DateTime<Utc>> = None;
    let mut busy_said: std::collections::BTreeSet<String> = Default::default();
    let mut host = job::host(&cfg);
    // managed jobs: what the server sent last, and the thread that asks it
    let (poll_tx, mut poll_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, AgentPoll)>();
    let epoch = Arc::new(AtomicU64::new(0));
    let mut reported: Option<(i64, Vec<String>)> = None;
    start_poller(&cfg, &epoch, &poll_tx);
    log(&format!(
        "started: {} job(s) from {}, state in {}",
        cfg.jobs.len(),
        cfg.path.display(),
        cfg.state_dir.display()
    ));
    let mut stopping = false;
    loop {
        if stopping && running.is_empty() && asked.is_empty() {
            log("stopped");
            return Ok(0);
        }
        let state = StateDir::new(&cfg.state_dir);
        let now = Utc::now();
        if retry_at.is_some_and(|r| r <= now) {
            retry_at = None;
        }
        let mut wake = retry_at;
        for (name, kind, schedule) in schedules(&cfg).into_iter().filter(|_| !stopping) {
            let delay = schedule.delay_for(&host, &name);
            if let Some(next) = schedule.next_after(now, delay) {
                wake = earliest(wake, next);
            }
            let how = format!("{schedule} on {host}");
            let key = (name.clone(), kind);
            let mut st = state.load(&name).unwrap_or_else(|w| {
                warn(&format!("{w}; the job's schedule state starts afresh"));
                JobState::default()
            });
            let last = match memory.get(&key) {
                Some((h, last)) if *h == how => *last,
                // set anew by a reload: as a job seen for the first time
                Some(_) => None,
                None => recorded(&st, kind),
            };
            // one run of a job at a time, backup or check; what comes due meanwhile waits
            let due_now = if running.contains_key(&name) {
                Due::Nothing
            } else {
                due(&schedule, delay, last, now)
            };
            let remember = match due_now {
                Due::Nothing => {
                    memory.insert(key, (how, last));
                    continue;
                }
                Due::Remember(t) | Due::Run(t) => t,
            };
            memory.insert(key.clone(), (how.clone(), Some(remember)));
            set_recorded(&mut st, kind, Some(remember));
            if matches!(due_now, Due::Remember(_)) {
                set_done(&mut st, kind, Some(remember));
            }
            if let Err(e) = state.save(&name, &st) {
                log(&format!(
                    "warning: job {name}: cannot write its state ({e}): kept in memory, but a restart would forget it"
                ));
            }
            let Due::Run(slot) = due_now else { continue };
            match start(g, &accepted, &name, kind, &done_tx) {
                Ok(pid) => {
                    let late = now.timestamp() - slot;
                    log(&format!(
                        "job {name}: {} started (pid {pid}; scheduled {}{})",
                        kind.name(),
                        coffer_agent::show(coffer_agent::utc(slot), schedule.zone()),
                        if late > 60 { ", caught up" } else { "" }
                    ));
                    busy_said.remove(&name);
                    running.insert(
                        name.clone(),
                        Running {
                            config: accepted.clone(),
                            kind,
                            slot,
                            pid,
                            started: Instant::now(),
                            previous: last,
                            requested: false,
                        },
                    );
                }
                Err(e) => {
                    // not run: its time is not counted as run, and is tried again in a minute
                    log(&format!(
                        "job {name}: {} not started: {e:#}; trying again in a minute",
                        kind.name()
                    ));
                    memory.insert(key, (how, last));
                    set_recorded(&mut st, kind, last);
                    let _ = state.save(&name, &st);
                    retry_at = earliest(retry_at, now + chrono::Duration::seconds(60));
                    wake = earliest(wake, now + chrono::Duration::seconds(60));
                }
            }
        }
        // sleep until the next scheduled time, a finished run or a signal (at most an hour:
        // a clock set forward is noticed)
        let until = wake
            .map(|w| (w - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_secs(3600));
        tokio::select! {
            // (first: a run that ended is taken off the list before any signal is sent to it)
            biased;
            Some((name, code, signal)) = done_rx.recv() => {
                if let Some(a) = asked.remove(&name) {
                    if a.config != accepted
                        && !running.values().any(|o| o.config == a.config)
                        && !asked.values().any(|o| o.config == a.config)
                    {
                        let _ = std::fs::remove_file(&a.config);
                    }
                    let took = a.started.elapsed().as_secs_f64();
                    let how = match (code, signal) {
                        (Some(0), _) => "ok".to_string(),
                        (Some(c), _) => format!("ended with exit code {c}"),
                        (None, s) => format!("stopped by signal {}", s.unwrap_or(0)),
                    };
                    log(&format!("{name} asked for from the server (pid {}): {how} after {took:.1} s", a.pid));
                    // a command killed said nothing: the server hears it from here
                    if a.restore && code.is_none() {
                        let report = super::requests::refusal_report(a.request, &host, &format!("the restore was {how}"));
                        post_to_server(&cfg, report.to_string().into_bytes(), false);
                    }
                    continue;
                }
                let Some(r) = running.remove(&name) else { continue };
                if r.config != accepted
                    && !running.values().any(|o| o.config == r.config)
                    && !asked.values().any(|o| o.config == r.config)
                {
                    let _ = std::fs::remove_file(&r.config);
                }
                let took = r.started.elapsed().as_secs_f64();
                if r.requested {
                    let how = match (code, signal) {
                        (Some(0), _) => "ok".to_string(),
                        (Some(c), _) if c == i32::from(EXIT_BUSY) => "not run: the job was running already".to_string(),
                        (Some(c), _) => format!("ended with exit code {c}"),
                        (None, s) => format!("killed by signal {}", s.unwrap_or(0)),
                    };
                    log(&format!("job {name}: {} asked for from the server: {how} after {took:.1} s", r.kind.name()));
                    continue;
                }
                if code == Some(i32::from(EXIT_BUSY)) {
                    // started by hand meanwhile: this time is not counted as run
                    let key = (name.clone(), r.kind);
                    if let Some((how, _)) = memory.get(&key).cloned() {
                        memory.insert(key, (how, r.previous));
                    }
                    let state = StateDir::new(&cfg.state_dir);
                    let mut st = state.load(&name).unwrap_or_default();
                    set_recorded(&mut st, r.kind, r.previous);
                    let _ = state.save(&name, &st);
                    if busy_said.insert(name.clone()) {
                        log(&format!("job {name}: {} due, but the job is running already (by hand?): waiting for it", r.kind.name()));
                    }
                    // (the hand-started run may last hours: look again in half a minute)
                    retry_at = earliest(retry_at, Utc::now() + chrono::Duration::seconds(30));
                    continue;
                }
                // ended: its time counts as run, unless the agent's own stop cut it short (the
                // next agent then catches it up)
                let cut_by_stop = stopping && (code == Some(130) || signal.is_some());
                if !cut_by_stop {
                    let state = StateDir::new(&cfg.state_dir);
                    let mut st = state.load(&name).unwrap_or_default();
                    set_done(&mut st, r.kind, Some(r.slot));
                    if let Err(e) = state.save(&name, &st) {
                        warn(&format!("job {name}: cannot write its state: {e}"));
                    }
                }
                let how = match (code, signal) {
                    (Some(0), _) => "ok".to_string(),
                    (Some(3), _) => "finished with warnings".to_string(),
                    (Some(130), _) => "interrupted".to_string(),
                    (Some(c), _) => format!("FAILED (exit code {c})"),
                    (None, Some(s)) => format!("killed by signal {s}"),
                    (None, None) => "ended (no exit status)".to_string(),
                };
                let line = format!("job {name}: {} {how} after {took:.1} s", r.kind.name());
                if code == Some(0) {
                    log(&line)
                } else {
                    warn(&line)
                }
            }
            Some((from, poll)) = poll_rx.recv() => {
                if from != epoch.load(Ordering::SeqCst) {
                    continue; // (from a poller a reload replaced)
                }
                // (the jobs too: a server rebuilt from scratch counts its generations afresh;
                // and the server's first answer always, so that it hears what was taken
                // of the jobs kept over a restart)
                if reported.is_none()
                    || taken.as_ref().map(|t| (t.generation, &t.jobs)) != Some((poll.generation, &poll.jobs))
                {
                    let t = Taken {
                        generation: poll.generation,
                        jobs: poll.jobs.clone(),
                        server: managed_server(&cfg).unwrap_or_default(),
                    };
                    version += 1;
                    match accept(g, version, Some(&t)) {
                        Ok(a) => {
                            log(&format!(
                                "managed jobs (generation {}): {} taken{}, {} refused",
                                t.generation,
                                a.managed.len(),
                                if a.managed.is_empty() { String::new() } else { format!(" ({})", a.managed.join(", ")) },
                                a.refused.len()
                            ));
                            for r in &a.refused {
                                warn(&format!("refused {r}"));
                            }
                            let said = (t.generation, a.refused.clone());
                            if reported.as_ref() != Some(&said) {
                                // (sent beside the schedule: a slow server delays nothing)
                                let (c, h, m, r) = (a.cfg.clone(), host.clone(), a.managed.clone(), a.refused.clone());
                                let generation = t.generation;
                                tokio::spawn(async move { report_taken(&c, &h, generation, &m, &r).await });
                                reported = Some(said);
                            }
                            cfg = a.cfg;
                            accepted = a.copy;
                            let mut keep: Vec<&Path> = running.values().map(|r| r.config.as_path()).collect();
                            keep.extend(asked.values().map(|a| a.config.as_path()));
                            keep.push(&accepted);
                            tidy_versions(&cfg.state_dir.join("agent"), &keep);
                            save_taken(&cfg, &t);
                            taken = Some(t);
                        }
                        Err(e) => warn(&format!("managed jobs not taken (the configuration does not load): {e:#}")),
                    }
                }
                for req in poll.run {
                    let kind = if req.check { Kind::Check } else { Kind::Backup };
                    let name = req.job.clone();
                    if stopping {
                        continue;
                    }
                    // only jobs the server set: a local job (its hooks, its destinations, its
                    // retention) is not the server's to start
                    if !cfg.jobs.get(&name).is_some_and(|j| j.managed) {
                        warn(&format!(
                            "asked by the server to run job {:?}, which is not one of its managed jobs: refused",
                            name.escape_debug().to_string()
                        ));
                        continue;
                    }
                    if running.contains_key(&name) {
                        log(&format!("job {name}: asked by the server to run now, but it is running already"));
                        continue;
                    }
                    match start(g, &accepted, &name, kind, &done_tx) {
                        Ok(pid) => {
                            log(&format!("job {name}: {} started, asked for from the server (request {}; pid {pid})", kind.name(), req.id));
                            running.insert(name, Running {
                                config: accepted.clone(),
                                kind,
                                slot: 0,
                                pid,
                                started: Instant::now(),
                                previous: None,
                                requested: true,
                            });
                        }
                        Err(e) => warn(&format!("job {name}: {} asked for from the server not started: {e:#}", kind.name())),
                    }
                }
                for req in poll.restore {
                    let key = format!("restore {}", req.id);
                    let what = req.item.describe().escape_debug().to_string();
                    let restoring = asked.values().filter(|a| a.restore).count();
                    let args = if stopping {
                        Err("the agent is stopping; ask again once it runs".to_string())
                    } else if asked.contains_key(&key) {
                        Err(format!("request {} is running already", req.id))
                    } else if restoring >= MAX_RESTORES {
                        Err(format!("{restoring} restores asked for by the server are running already; ask again when they end"))
                    } else {
                        super::requests::restore_args(&cfg, &host, &req)
                            .and_then(|a| super::requests::make_quarantine(&cfg, &req).map(|()| a))
                    };
                    let started = args.map_err(anyhow::Error::msg).and_then(|a| {
                        start_asked(&cfg, &accepted, &key, req.id, req.in_place, &a, &done_tx)
                    });
                    match started {
                        Ok(pid) => {
                            log(&format!(
                                "{key} asked for from the server: {what} of snapshot {}{} (pid {pid})",
                                req.snapshot,
                                if req.in_place { ", in place" } else { "" }
                            ));
                            asked.insert(key, Asked { request: req.id, restore: true, pid, started: Instant::now(), config: accepted.clone() });
                        }
                        Err(e) => {
                            warn(&format!("{key} asked for from the server ({what}): refused: {e:#}"));
                            let report = super::requests::refusal_report(req.id, &host, &format!("refused by the client: {e:#}"));
                            post_to_server(&cfg, report.to_string().into_bytes(), false);
                        }
                    }
                }
                for req in poll.browse {
                    if stopping {
                        continue;
                    }
                    let key = format!("listing {}", req.id);
                    let allowed = cfg.managed.as_ref().is_some_and(|m| m.browse);
                    let started = if asked.contains_key(&key) {
                        continue;
                    } else if !allowed {
                        Err(anyhow::anyhow!("browsing is off in this client's configuration ([managed] browse = false)"))
                    } else if asked.values().filter(|a| !a.restore).count() >= 4 {
                        Err(anyhow::anyhow!("four listings are being made already; ask again in a moment"))
                    } else {
                        let a: Vec<std::ffi::OsString> = vec![
                            "agent".into(),
                            "browse".into(),
                            "--request".into(),
                            req.id.to_string().into(),
                            req.snapshot.clone().into(),
                            req.path.clone().into(),
                        ];
                        start_asked(&cfg, &accepted, &key, req.id, false, &a, &done_tx)
                    };
                    match started {
                        Ok(pid) => {
                            asked.insert(key, Asked { request: req.id, restore: false, pid, started: Instant::now(), config: accepted.clone() });
                        }
                        Err(e) => {
                            warn(&format!("{key} asked for from the server: refused: {e:#}"));
                            let answer = coffer_wire::BrowseAnswer { id: req.id, error: Some(format!("{e:#}")), ..Default::default() };
                            if let Ok(json) = serde_json::to_vec(&answer) {
                                post_to_server(&cfg, json, true);
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep(until), if !stopping => {}
            _ = hup.recv() => {
                version += 1;
                match accept(g, version, taken.as_ref()) {
                    Ok(a) => {
                        let managed_before = cfg.managed.clone().zip(cfg.managed.as_ref().and_then(|m| cfg.repositories.get(&m.server).cloned()));
                        cfg = a.cfg;
                        accepted = a.copy;
                        let managed_now = cfg.managed.clone().zip(cfg.managed.as_ref().and_then(|m| cfg.repositories.get(&m.server).cloned()));
                        if managed_now != managed_before {
                            // another server, token or bounds: ask afresh (the old thread ends)
                            epoch.fetch_add(1, Ordering::SeqCst);
                            taken = None;
                            start_poller(&cfg, &epoch, &poll_tx);
                        }
                        let mut keep: Vec<&Path> = running.values().map(|r| r.config.as_path()).collect();
                        keep.extend(asked.values().map(|a| a.config.as_path()));
                        keep.push(&accepted);
                        tidy_versions(&cfg.state_dir.join("agent"), &keep);
                        host = job::host(&cfg);
                        log(&format!("configuration reloaded: {} job(s)", cfg.jobs.len()));
                    }
                    Err(e) => warn(&format!("configuration not reloaded, the one loaded before goes on: {e:#}")),
                }
            }
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                if stopping {
                    continue;
                }
                stopping = true;
                if !running.is_empty() {
                    log(&format!("stopping: telling {} running job(s) to stop", running.len()));
                }
                for pid in running.values().map(|r| r.pid).chain(asked.values().map(|a| a.pid)) {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
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
        let t = |x: &str| at(x).timestamp();
        let z = Duration::ZERO;
        // first sight: nothing runs now, the current time is remembered
        assert_eq!(
            due(&s, z, None, at("2026-12-05T10:00:00Z")),
            Due::Remember(t("2026-12-05T03:00:00Z"))
        );
        // the machine was off for three nights: one run, for the newest time
        assert_eq!(
            due(&s, z, Some(t("2026-12-01T03:00:00Z")), at("2026-12-04T10:00:00Z")),
            Due::Run(t("2026-12-04T03:00:00Z"))
        );
        // nothing new since
        let last = t("2026-12-04T03:00:00Z");
        assert_eq!(due(&s, z, Some(last), at("2026-12-04T23:59:59Z")), Due::Nothing);
        assert_eq!(
            due(&s, z, Some(last), at("2026-12-05T03:00:00Z")),
            Due::Run(t("2026-12-05T03:00:00Z"))
        );
        // the clock went back a week: no run until the next time after the new now
        assert_eq!(
            due(&s, z, Some(last), at("2026-11-27T10:00:00Z")),
            Due::Remember(t("2026-11-27T03:00:00Z"))
        );
    }

    #[test]
    fn a_run_cut_short_by_the_agent_is_caught_up() {
        let st = |due, done| JobState {
            backup_due: due,
            backup_done: done,
            ..Default::default()
        };
        // ended: counted as run
        assert_eq!(recorded(&st(Some(100), Some(100)), Kind::Backup), Some(100));
        // started, never ended (the agent was killed or stopped during it): due again
        assert_eq!(recorded(&st(Some(200), Some(100)), Kind::Backup), Some(199));
        // a state file from before runs' ends were kept: as ended
        assert_eq!(recorded(&st(Some(100), None), Kind::Backup), Some(100));
        assert_eq!(recorded(&st(None, None), Kind::Check), None);
    }

    #[test]
    fn times_in_a_zone_survive_the_change_to_summer_time() {
        // 02:30 does not exist in Paris on 2027-03-28 (clocks jump from 02:00 to 03:00): the
        // night still has one run, and the next night is as usual
        let s = Schedule::new("30 2 * * *", "Europe/Paris".parse().unwrap(), Duration::ZERO).unwrap();
        let at = |x: &str| DateTime::parse_from_rfc3339(x).unwrap().with_timezone(&Utc);
        let mut runs = Vec::new();
        let mut now = at("2027-03-26T12:00:00Z");
        while now < at("2027-03-30T12:00:00Z") {
            now = s.next_after(now, Duration::ZERO).unwrap();
            runs.push(now);
        }
        let days: std::collections::BTreeSet<_> = runs.iter().map(|r| r.date_naive()).collect();
        assert_eq!(runs.len(), days.len(), "one run a night: {runs:?}");
        assert!(runs.len() >= 3, "{runs:?}");
    }
}
