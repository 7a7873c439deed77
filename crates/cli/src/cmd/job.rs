//! What the configuration file (`--config`, `/etc/coffer/coffer.toml`) stands for on the
//! command line: `--repo-name NAME` opens a declared repository as `-r` and the password and
//! token options would, and `--job NAME` gives `backup`, `forget` and `check` the job's
//! sources, retention and verification. `coffer run` is made of these: each of its steps is
//! the command a user could type.

use std::path::PathBuf;

use anyhow::{bail, Result};
use coffer_agent::{Config, IoClass, Job};

use crate::cli::{BackupArgs, CheckArgs, ForgetArgs, Global};

/// The configuration file to read: `--config`, `COFFER_CONFIG`, else /etc/coffer/coffer.toml.
pub fn config_path(g: &Global) -> PathBuf {
    g.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(coffer_agent::DEFAULT_PATH))
}

/// Read and check the configuration; a mistake in it is a usage error (exit 2) that names
/// the file, line and column.
pub fn load(g: &Global) -> Result<Config> {
    Ok(load_with_text(g)?.0)
}

/// [`load`], with the text it checked (what the agent keeps as the accepted version).
pub fn load_with_text(g: &Global) -> Result<(Config, String)> {
    let path = config_path(g);
    refuse_unsafe(&path)?;
    let text = std::fs::read_to_string(&path).map_err(|source| {
        coffer_core::Error::Usage(
            coffer_agent::ConfigError::Read {
                path: path.display().to_string(),
                source,
            }
            .to_string(),
        )
    })?;
    let cfg = Config::parse(&path, &text).map_err(|e| coffer_core::Error::Usage(e.to_string()))?;
    Ok((cfg, text))
}

/// As root, the file's hooks and password commands run as root: it must be root's and
/// writable by root only (else `sudo coffer run` with a user's file, or a file another user
/// may edit, would run their commands as root).
fn refuse_unsafe(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let Ok(m) = std::fs::metadata(path) else {
        return Ok(()); // (reading it says what is wrong)
    };
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(usage(format!(
            "{}: refused: its hooks and password commands would run as root, so it must belong to root \
             and be writable by root only (chown root {0}; chmod go-w {0})",
            path.display()
        )));
    }
    Ok(())
}

/// What a run of `job` tells its report: the job, when its next backup is due, and which
/// jobs the configuration schedules.
pub fn announce(cfg: &Config, job: &Job) {
    let host = host(cfg);
    let next = job
        .schedule
        .as_ref()
        .and_then(|s| s.next_after(chrono::Utc::now(), s.delay_for(&host, &job.name)))
        .map(|t| t.timestamp());
    crate::report::job(crate::report::JobFacts {
        name: job.name.clone(),
        next_expected: next,
        jobs: cfg
            .jobs
            .values()
            .filter(|j| j.schedule.is_some())
            .map(|j| j.name.clone())
            .collect(),
    });
}

/// The host name snapshots are recorded under: the configuration's, else the machine's.
/// The host name this machine's snapshots are recorded under: the configuration's `[agent]
/// host` when there is a configuration that reads, else the machine's name.
pub fn this_host(g: &Global) -> String {
    let path = config_path(g);
    if g.config.is_some() || path.exists() {
        if let Ok(cfg) = load(g) {
            return host(&cfg);
        }
    }
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// A job's database connection settings as the command line's flags.
pub fn db_conn_args(a: &mut crate::cli::DbConnArgs, d: &coffer_agent::DbConnection) {
    a.mysql_host = d.mysql_host.clone();
    a.mysql_port = d.mysql_port;
    a.mysql_socket = d.mysql_socket.clone();
    a.mysql_user = d.mysql_user.clone();
    a.mysql_defaults_file = d.mysql_defaults_file.clone();
    a.pg_host = d.pg_host.clone();
    a.pg_port = d.pg_port;
    a.pg_user = d.pg_user.clone();
}

pub fn host(cfg: &Config) -> String {
    cfg.host
        .clone()
        .unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned())
}

/// Open the repository the configuration calls `name`: its location, password, token and CA
/// certificate replace what the environment says, and its S3 and SSH settings become this
/// process's environment (called before any thread starts). A `-r` given as well is an error.
pub fn apply_repo(g: &mut Global, cfg: &Config, name: &str, repo_on_command_line: bool) -> Result<()> {
    if repo_on_command_line {
        bail!(coffer_core::Error::Usage(format!(
            "--repo-name {name} and -r/--repo both name a repository: give one"
        )));
    }
    let r = cfg
        .repository(name)
        .map_err(|e| coffer_core::Error::Usage(e.to_string()))?;
    g.repo = Some(r.location.clone());
    g.password_file = r.password_file.clone();
    g.password_command = r.password_command.clone();
    if r.token_file.is_some() {
        g.token_file = r.token_file.clone();
    }
    if r.cacert.is_some() {
        g.cacert = r.cacert.clone();
    }
    if r.report_to.is_some() {
        g.report_to = r.report_to.clone();
    }
    // a password or token in the environment would win over the configuration's sources
    // (and a token for one server would be sent to another)
    std::env::remove_var("COFFER_PASSWORD");
    if r.token_file.is_some() {
        std::env::remove_var("COFFER_TOKEN");
        std::env::remove_var("COFFER_REPORT_TOKEN");
    }
    let vars = [
        ("AWS_PROFILE", r.aws_profile.as_ref().map(Into::into)),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            r.aws_credentials_file.as_ref().map(|p| p.as_os_str().to_owned()),
        ),
        ("AWS_REGION", r.aws_region.as_ref().map(Into::into)),
        ("COFFER_SSH_COMMAND", r.ssh_command.as_ref().map(Into::into)),
    ];
    for (var, value) in vars {
        if let Some(v) = value {
            let v: std::ffi::OsString = v;
            std::env::set_var(var, v);
        }
    }
    Ok(())
}

fn usage(msg: String) -> anyhow::Error {
    coffer_core::Error::Usage(msg).into()
}

/// `backup --job NAME`: the job's sources, tags and settings. The job says what is backed
/// up; paths or source flags given as well are refused rather than mixed in.
pub fn backup_args(cfg: &Config, g: &mut Global, a: &mut BackupArgs) -> Result<()> {
    let Some(name) = a.job.clone() else { return Ok(()) };
    let job = cfg.job(&name).map_err(|e| usage(e.to_string()))?;
    let given = !a.paths.is_empty()
        || a.mysql.is_some()
        || a.postgres.is_some()
        || !a.sqlite.is_empty()
        || !a.device.is_empty()
        || a.stdin.is_some()
        || !a.exclude.is_empty()
        || !a.exclude_file.is_empty()
        || a.host.is_some();
    if given {
        return Err(usage(format!(
            "backup --job {name}: the job names the paths, databases, images, excludes and host; give no others"
        )));
    }
    if let Some(t) = a.tag.iter().find(|t| t.starts_with("job:")) {
        return Err(usage(format!(
            "backup --job {name}: tag {t:?}: job:... tags are coffer's (it adds job:{name} itself)"
        )));
    }
    // a managed job's paths are checked again now (a symlink made since it was taken)
    if job.managed {
        for p in &job.paths {
            if let Some(why) = coffer_agent::through_symlink(p) {
                return Err(usage(format!("managed job {name}: {why}")));
            }
        }
    }
    announce(cfg, job);
    a.paths = job.paths.clone();
    a.exclude = job.exclude.clone();
    a.exclude_file = job.exclude_file.clone();
    a.exclude_caches |= job.exclude_caches;
    a.one_file_system |= job.one_file_system;
    a.tag.extend(job.tags.iter().cloned());
    a.tag.push(job.tag());
    a.host = Some(host(cfg));
    a.mysql = job.mysql.as_ref().map(|d| d.as_arg());
    a.mysql_users = job.mysql_users;
    a.postgres = job.postgres.as_ref().map(|d| d.as_arg());
    a.sqlite = job.sqlite.clone();
    db_conn_args(&mut a.db, &job.db);
    if a.compression.is_none() {
        a.compression = job.compression.clone();
    }
    if a.threads == 0 {
        a.threads = job.limits.threads;
    }
    job_rates(g, job);
    apply_limits(job)?;
    Ok(())
}

/// `forget --job NAME`: the job's retention, applied only to the job's snapshots of this host
/// (tag `job:NAME`), grouped as usual; `--prune` when the job says so.
pub fn forget_args(cfg: &Config, repo_name: Option<&str>, a: &mut ForgetArgs) -> Result<()> {
    let Some(name) = a.job.clone() else { return Ok(()) };
    let job = cfg.job(&name).map_err(|e| usage(e.to_string()))?;
    let Some(r) = &job.retention else {
        return Err(usage(format!(
            "forget --job {name}: the job has no [job.{name}.retention]"
        )));
    };
    // only where the job's retention applies: not an archive filled by `copy`, not a server
    match repo_name {
        Some(repo) if r.on.iter().any(|o| o == repo) => {}
        Some(repo) => {
            return Err(usage(format!(
                "forget --job {name}: the job's retention applies to {} only, not to {repo}",
                if r.on.is_empty() {
                    "no repository".to_string()
                } else {
                    r.on.join(", ")
                }
            )))
        }
        None => {
            return Err(usage(format!(
                "forget --job {name}: name the repository with --repo-name (one of: {})",
                r.on.join(", ")
            )))
        }
    }
    let given = !a.snapshots.is_empty()
        || [
            a.keep_last,
            a.keep_hourly,
            a.keep_daily,
            a.keep_weekly,
            a.keep_monthly,
            a.keep_yearly,
        ]
        .iter()
        .any(|k| *k != 0)
        || a.keep_within.is_some()
        || !a.keep_tag.is_empty()
        || !a.filter.is_empty();
    if given {
        return Err(usage(format!(
            "forget --job {name}: the job's retention decides; give no snapshots, --keep-* or filters"
        )));
    }
    let n = |k: Option<u32>| k.map_or(0, i64::from);
    a.keep_last = n(r.keep_last);
    a.keep_hourly = n(r.keep_hourly);
    a.keep_daily = n(r.keep_daily);
    a.keep_weekly = n(r.keep_weekly);
    a.keep_monthly = n(r.keep_monthly);
    a.keep_yearly = n(r.keep_yearly);
    a.keep_within = r.keep_within.clone();
    a.filter.host = vec![host(cfg)];
    a.filter.tag = vec![job.tag()];
    a.prune |= r.prune;
    apply_limits(job)?;
    Ok(())
}

/// `check --job NAME`: the job's share of data to read.
pub fn check_args(cfg: &Config, g: &mut Global, a: &mut CheckArgs) -> Result<()> {
    let Some(name) = a.job.clone() else { return Ok(()) };
    let job = cfg.job(&name).map_err(|e| usage(e.to_string()))?;
    job_rates(g, job);
    if a.read_data_subset.is_none() && !a.read_data {
        a.read_data_subset = job.check.as_ref().and_then(|c| c.read_data_subset.clone());
    }
    apply_limits(job)?;
    Ok(())
}

/// The job's transfer rates (`limit_upload`, `limit_download`) and index memory
/// (`index_memory`) where the command line gave none.
pub fn job_rates(g: &mut Global, job: &Job) {
    if g.index_memory.is_none() {
        g.index_memory = job.limits.index_memory;
    }
    if g.limit_upload.is_none() {
        g.limit_upload = job.limits.upload;
    }
    if g.limit_download.is_none() {
        g.limit_download = job.limits.download;
    }
}

/// The job's CPU and I/O priority, for this process and the threads it starts after.
pub fn apply_limits(job: &Job) -> Result<()> {
    if let Some(mut n) = job.limits.nice {
        // a managed job's niceness only lowers the priority the agent runs at (a server's
        // nice = 0 must not undo a unit's Nice=10)
        if job.managed {
            n = n.max(rustix::process::getpriority_process(None).unwrap_or(n));
        }
        rustix::process::setpriority_process(None, n)
            .map_err(|e| anyhow::anyhow!("job {}: cannot set nice {n}: {e}", job.name))?;
    }
    if let Some(mut class) = job.limits.ionice {
        // ... and its I/O class only lowers the agent's own (idle stays idle)
        if job.managed {
            class = match (current_io_class(), class) {
                (Some(IoClass::Idle), _) => IoClass::Idle,
                (Some(IoClass::BestEffort(now)), IoClass::BestEffort(n)) => IoClass::BestEffort(n.max(now)),
                (_, c) => c,
            };
        }
        set_io_class(class)
            .map_err(|e| anyhow::anyhow!("job {}: cannot set ionice {class}: {e}", job.name))?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_io_class(class: IoClass) -> std::io::Result<()> {
    // linux/ioprio.h: the class in the top 3 of 16 bits, the level below
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    let value: libc::c_long = match class {
        IoClass::Idle => 3 << 13,
        IoClass::BestEffort(n) => (2 << 13) | libc::c_long::from(n),
    };
    // SAFETY: ioprio_set takes three integers (who, which = 0 for the calling thread, the
    // priority) and touches no memory of this process. Threads started later inherit it.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0 as libc::c_long, value) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// This process's I/O class, if one is set (none: the default, best-effort at a level from
/// its niceness; realtime counts as best-effort:0).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn current_io_class() -> Option<IoClass> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: ioprio_get takes two integers and touches no memory of this process.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0 as libc::c_long) };
    match (r >> 13, r & 0xff) {
        _ if r < 0 => None,
        (1, _) => Some(IoClass::BestEffort(0)),
        (2, n) => Some(IoClass::BestEffort(u8::try_from(n.min(7)).unwrap_or(7))),
        (3, _) => Some(IoClass::Idle),
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn current_io_class() -> Option<IoClass> {
    None
}

#[cfg(not(target_os = "linux"))]
fn set_io_class(_: IoClass) -> std::io::Result<()> {
    Err(std::io::Error::other("I/O classes exist on Linux only"))
}
