//! The configuration file (`/etc/coffer/coffer.toml`): repositories by name, and jobs that
//! say what to back up, where to, when, and what to keep.
//!
//! Every key is checked: an unknown key, a value of the wrong kind, a cron expression, time
//! zone, duration, glob or compression that does not parse, a job naming a repository that is
//! not declared, a relative path: each is one error naming the file, line and column. Nothing
//! in the file is a secret: passwords and tokens are read from the files it names (or from a
//! password command's output), never written in it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

pub use coffer_wire::IoClass;

use crate::schedule::{Schedule, Zone};

/// Where the configuration is read from when neither `--config` nor `COFFER_CONFIG` says.
pub const DEFAULT_PATH: &str = "/etc/coffer/coffer.toml";

/// A configuration that cannot be used, with where in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `FILE:LINE:COLUMN: message`
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A problem with no one place in the file.
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// The configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The host name snapshots are recorded under (default: the machine's).
    pub host: Option<String>,
    /// Where the agent keeps its state (last runs, locks).
    pub state_dir: PathBuf,
    pub repositories: BTreeMap<String, Repository>,
    pub jobs: BTreeMap<String, Job>,
    /// Jobs set on a coffer server, and what they may do here (`[managed]`).
    pub managed: Option<Managed>,
    /// Sites: what `coffer restore-site` restores as one unit.
    pub sites: BTreeMap<String, Site>,
}

pub use coffer_wire::database_name_ok;

/// `[site.NAME]`: a named set of paths and databases restored together from one snapshot
/// (`coffer restore-site SNAPSHOT NAME`): a web site's document root and its databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub paths: Vec<PathBuf>,
    /// MySQL/MariaDB database names.
    pub mysql: Vec<String>,
    /// PostgreSQL database names.
    pub postgres: Vec<String>,
}

/// `[managed]`: the agent takes job definitions from a coffer server, within these bounds.
/// Hooks, commands, password sources and database connections never come from the server:
/// they have no place in a managed job (see `coffer_wire::JobSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The repository (on a coffer server) whose server sets the jobs; its token is the
    /// agent's credential there.
    pub server: String,
    /// The repositories managed jobs may back up to (default: `server` only).
    pub to: Vec<String>,
    /// What managed jobs may back up: each of their paths must be one of these or below one.
    pub paths: Vec<PathBuf>,
    /// Whether managed jobs may dump databases (with this file's connection settings: none
    /// come from the server).
    pub databases: bool,
    /// Whether managed jobs may apply retention (forget) where the client prunes: off by
    /// default, since a server that sets `keep_last = 1` and asks for runs could otherwise
    /// empty an off-site repository's history.
    pub retention: bool,
    /// At most this many managed jobs are taken (the rest are refused).
    pub max_jobs: usize,
    /// No managed schedule may run more often than this.
    pub min_interval: Duration,
    /// What restores asked for on the server may do here.
    pub restore: RestorePolicy,
    /// Where those restores put files (default: `STATE_DIR/restores`), each in a folder named
    /// after its request; made mode 0700.
    pub quarantine: PathBuf,
    /// Whether the server may ask for listings of snapshots (file names then pass through it).
    pub browse: bool,
}

/// `[managed] restore`: what a restore asked for on the server may do here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePolicy {
    /// None is run.
    Off,
    /// Files into the quarantine directory, databases under a new name (the default).
    Quarantine,
    /// Also in place: files overwritten, databases replaced (saved first where `restore-site`
    /// does that).
    InPlace,
}

/// A repository and how to open it.
#[derive(Clone, PartialEq, Eq)]
pub struct Repository {
    pub name: String,
    pub location: String,
    pub password_file: Option<PathBuf>,
    /// Run with `sh -c`; its first line of output is the password.
    pub password_command: Option<String>,
    pub token_file: Option<PathBuf>,
    pub cacert: Option<PathBuf>,
    /// Where run reports go when the repository is not a coffer server.
    pub report_to: Option<String>,
    /// S3: the profile in the credentials file, the file, and the region.
    pub aws_profile: Option<String>,
    pub aws_credentials_file: Option<PathBuf>,
    pub aws_region: Option<String>,
    /// SFTP: the ssh command line (`ssh -i /etc/coffer/id_backup`).
    pub ssh_command: Option<String>,
}

impl std::fmt::Debug for Repository {
    // (a password command may carry a secret on its own command line: not shown)
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("password_file", &self.password_file)
            .field(
                "password_command",
                &self.password_command.as_ref().map(|_| "<set>"),
            )
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Whether the repository is on a coffer server (which applies its own retention: a
    /// client's append token cannot remove snapshots).
    pub fn is_server(&self) -> bool {
        self.location.starts_with("https://")
    }
}

/// Which databases of a server to dump: `all` or a list of names (the CLI's `all|DB,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Databases {
    All,
    Named(Vec<String>),
}

impl Databases {
    /// As `backup --mysql/--postgres` takes it.
    pub fn as_arg(&self) -> String {
        match self {
            Databases::All => "all".into(),
            Databases::Named(n) => n.join(","),
        }
    }
}

/// Database connection settings (passwords come from the tools' own option files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbConnection {
    pub mysql_host: Option<String>,
    pub mysql_port: Option<u16>,
    pub mysql_socket: Option<PathBuf>,
    pub mysql_user: Option<String>,
    pub mysql_defaults_file: Option<PathBuf>,
    pub pg_host: Option<String>,
    pub pg_port: Option<u16>,
    pub pg_user: Option<String>,
}

/// How much of the machine a run may take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Compression threads (0: one per core).
    pub threads: usize,
    /// CPU niceness, -20 to 19.
    pub nice: Option<i32>,
    pub ionice: Option<IoClass>,
    /// Uploads keep under this many bytes per second (`limit_upload = "10M"`).
    pub upload: Option<u64>,
    /// Reads from the repositories (the job's checks and restore drills) keep under this many
    /// bytes per second (`limit_download = "10M"`).
    pub download: Option<u64>,
    /// The memory each command's index may take before it goes to files
    /// (`index_memory = "64M"`, `--index-memory`).
    pub index_memory: Option<u64>,
}

/// What to keep in the repositories a job prunes (`forget --keep-*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// As written (the one duration grammar; a bare `m` is refused).
    pub keep_within: Option<String>,
    /// Run prune after forget (default true).
    pub prune: bool,
    /// The repositories it applies to.
    pub on: Vec<String>,
}

/// A scheduled verification.
#[derive(Debug, Clone)]
pub struct Check {
    pub schedule: Schedule,
    /// `N/M` or `P%`, as `check --read-data-subset` takes it; none: structure only.
    pub read_data_subset: Option<String>,
    pub on: Vec<String>,
}

/// A scheduled restore drill (`coffer drill --job`): a sample of files and every database of
/// the job's newest snapshot restored into scratch places and compared.
#[derive(Debug, Clone)]
pub struct Drill {
    pub schedule: Schedule,
    /// Files to sample (default 20).
    pub files: u64,
    pub on: Vec<String>,
}

/// A backup job.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub exclude_file: Vec<PathBuf>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    pub tags: Vec<String>,
    pub mysql: Option<Databases>,
    pub mysql_users: bool,
    pub postgres: Option<Databases>,
    pub sqlite: Vec<PathBuf>,
    pub db: DbConnection,
    /// The repositories each run backs up to, in order (each gets its own snapshot and run
    /// report).
    pub to: Vec<String>,
    /// None: the job runs only when asked (`coffer run JOB`).
    pub schedule: Option<Schedule>,
    pub compression: Option<String>,
    pub limits: Limits,
    /// Hooks (`sh -c`), from this file only: before the backups (a failure stops the run) and
    /// after them (told the outcome in COFFER_RESULT).
    pub before: Option<String>,
    pub after: Option<String>,
    pub retention: Option<Retention>,
    pub check: Option<Check>,
    pub drill: Option<Drill>,
    /// Set on the server (`[managed]`): its paths are checked for symlinks before each run.
    pub managed: bool,
}

impl Job {
    /// The tag every snapshot of this job carries (retention of the job touches only these).
    pub fn tag(&self) -> String {
        format!("job:{}", self.name)
    }
}

// ---------------------------------------------------------------------------------------
// The file as written. Every table refuses keys it does not know.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: Option<Spanned<RawAgent>>,
    #[serde(default)]
    repository: BTreeMap<Spanned<String>, Spanned<RawRepository>>,
    #[serde(default)]
    job: BTreeMap<Spanned<String>, Spanned<RawJob>>,
    managed: Option<Spanned<RawManaged>>,
    #[serde(default)]
    site: BTreeMap<Spanned<String>, Spanned<RawSite>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    #[serde(default)]
    paths: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    mysql: Vec<Spanned<String>>,
    #[serde(default)]
    postgres: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManaged {
    server: Spanned<String>,
    to: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    paths: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    databases: bool,
    #[serde(default)]
    retention: bool,
    max_jobs: Option<usize>,
    min_interval: Option<Spanned<String>>,
    restore: Option<Spanned<String>>,
    quarantine: Option<Spanned<PathBuf>>,
    browse: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    host: Option<Spanned<String>>,
    state_dir: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    location: Spanned<String>,
    password_file: Option<Spanned<PathBuf>>,
    password_command: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    cacert: Option<Spanned<PathBuf>>,
    report_to: Option<Spanned<String>>,
    aws_profile: Option<String>,
    aws_credentials_file: Option<Spanned<PathBuf>>,
    aws_region: Option<String>,
    ssh_command: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    #[serde(default)]
    paths: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    #[serde(default)]
    exclude_file: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    exclude_caches: bool,
    #[serde(default)]
    one_file_system: bool,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    mysql: Option<Spanned<RawDatabases>>,
    #[serde(default)]
    mysql_users: bool,
    postgres: Option<Spanned<RawDatabases>>,
    #[serde(default)]
    sqlite: Vec<Spanned<PathBuf>>,
    mysql_host: Option<String>,
    mysql_port: Option<u16>,
    mysql_socket: Option<Spanned<PathBuf>>,
    mysql_user: Option<String>,
    mysql_defaults_file: Option<Spanned<PathBuf>>,
    pg_host: Option<String>,
    pg_port: Option<u16>,
    pg_user: Option<String>,
    to: Spanned<Vec<Spanned<String>>>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    random_delay: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
    #[serde(default)]
    threads: usize,
    nice: Option<Spanned<i32>>,
    ionice: Option<Spanned<String>>,
    limit_upload: Option<Spanned<String>>,
    limit_download: Option<Spanned<String>>,
    index_memory: Option<Spanned<String>>,
    before: Option<String>,
    after: Option<String>,
    retention: Option<Spanned<RawRetention>>,
    check: Option<Spanned<RawCheck>>,
    drill: Option<Spanned<RawDrill>>,
    #[serde(default)]
    managed: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within: Option<Spanned<String>>,
    prune: Option<bool>,
    on: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    schedule: Spanned<String>,
    timezone: Option<Spanned<String>>,
    files: Option<u64>,
    on: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    schedule: Spanned<String>,
    timezone: Option<Spanned<String>>,
    read_data_subset: Option<Spanned<String>>,
    on: Option<Vec<Spanned<String>>>,
}

/// `"all"` or `["shop", "blog"]`.
struct RawDatabases(Databases);

impl<'de> Deserialize<'de> for RawDatabases {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawDatabases;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"all\" or a list of database names")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawDatabases, E> {
                if s == "all" {
                    Ok(RawDatabases(Databases::All))
                } else {
                    Err(E::custom(format!(
                        "{s:?}: write \"all\", or the names as a list: [\"{s}\"]"
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawDatabases, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    if n.is_empty() || n.contains(',') || n == "all" {
                        return Err(serde::de::Error::custom(format!(
                            "{n:?} is not a database name (for every database write \"all\" alone)"
                        )));
                    }
                    names.push(n);
                }
                if names.is_empty() {
                    return Err(serde::de::Error::custom(
                        "an empty list: leave the key out, or name databases",
                    ));
                }
                Ok(RawDatabases(Databases::Named(names)))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------

/// Line and column (both from 1) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// serde's words for number types, as a sysadmin would say them.
fn plain_words(msg: &str) -> String {
    msg.replace("expected u32", "expected a whole number, 0 or more")
        .replace("expected u16", "expected a whole number from 0 to 65535")
        .replace("expected usize", "expected a whole number, 0 or more")
        .replace("expected i32", "expected a whole number")
}

/// Reads and checks configuration text, remembering where each error is.
struct Checker<'t> {
    path: &'t Path,
    text: &'t str,
}

type Checked<T> = Result<T, ConfigError>;

impl Checker<'_> {
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::At {
            path: self.path.display().to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    fn absolute(&self, what: &str, p: &Spanned<PathBuf>) -> Checked<PathBuf> {
        let path = p.get_ref();
        if !path.is_absolute() {
            return Err(self.at(
                p.span(),
                format!(
                    "{what} {:?} is relative: write the whole path (the agent's working directory is not yours)",
                    path.display().to_string()
                ),
            ));
        }
        Ok(path.clone())
    }

    fn absolute_opt(&self, what: &str, p: &Option<Spanned<PathBuf>>) -> Checked<Option<PathBuf>> {
        p.as_ref().map(|p| self.absolute(what, p)).transpose()
    }

    fn duration(&self, what: &str, s: &Spanned<String>) -> Checked<Duration> {
        coffer_core::duration::parse(s.get_ref(), what).map_err(|e| self.at(s.span(), e.to_string()))
    }

    fn zone(&self, tz: Option<&Spanned<String>>) -> Checked<Zone> {
        match tz {
            None => Ok(Zone::Local),
            Some(t) => t.get_ref().parse::<Zone>().map_err(|e| self.at(t.span(), e)),
        }
    }

    fn schedule(
        &self,
        what: &str,
        cron: &Spanned<String>,
        tz: Option<&Spanned<String>>,
        delay: Option<&Spanned<String>>,
    ) -> Checked<Schedule> {
        let zone = self.zone(tz)?;
        let delay = delay
            .map(|d| self.duration(&format!("{what} random_delay"), d))
            .transpose()?
            .unwrap_or_default();
        Schedule::new(cron.get_ref(), zone, delay).map_err(|e| self.at(cron.span(), format!("{what}: {e}")))
    }

    fn repo_names(
        &self,
        what: &str,
        names: &[Spanned<String>],
        declared: &BTreeMap<String, Repository>,
    ) -> Checked<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for n in names {
            if !declared.contains_key(n.get_ref()) {
                let known: Vec<&str> = declared.keys().map(String::as_str).collect();
                return Err(self.at(
                    n.span(),
                    format!(
                        "{what}: no repository {:?} is declared (declared: {}); add a [repository.{}] table",
                        n.get_ref(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        },
                        n.get_ref()
                    ),
                ));
            }
            if out.contains(n.get_ref()) {
                return Err(self.at(n.span(), format!("{what}: {:?} is named twice", n.get_ref())));
            }
            out.push(n.get_ref().clone());
        }
        Ok(out)
    }

    fn name(&self, what: &str, n: &Spanned<String>) -> Checked<String> {
        let s = n.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.');
        if !ok {
            return Err(self.at(
                n.span(),
                format!("{what} name {s:?}: use letters, digits, '-', '_' and '.' (at most 64)"),
            ));
        }
        Ok(s.clone())
    }

    fn repository(&self, name: String, r: &RawRepository) -> Checked<Repository> {
        let loc = r.location.get_ref();
        let remote = ["s3:", "sftp:", "https://"].iter().any(|p| loc.starts_with(p));
        if !remote && !Path::new(loc).is_absolute() {
            return Err(self.at(
                r.location.span(),
                format!(
                    "repository {name}: location {loc:?} must be an absolute path, s3:..., sftp:... or https://... (a coffer server)"
                ),
            ));
        }
        if let (Some(_), Some(c)) = (&r.password_file, &r.password_command) {
            return Err(self.at(
                c.span(),
                format!("repository {name}: give password_file or password_command, not both"),
            ));
        }
        if r.password_file.is_none() && r.password_command.is_none() {
            return Err(self.at(
                r.location.span(),
                format!(
                    "repository {name}: no password_file or password_command (a job runs unattended: \
                     `coffer key generate -o /etc/coffer/{name}.key` makes a key file)"
                ),
            ));
        }
        if let Some(t) = &r.report_to {
            if !t.get_ref().starts_with("https://") {
                return Err(self.at(
                    t.span(),
                    format!("repository {name}: report_to must be a coffer server repository, https://HOST:PORT/REPO"),
                ));
            }
        }
        Ok(Repository {
            location: loc.clone(),
            password_file: self.absolute_opt("password_file", &r.password_file)?,
            password_command: r.password_command.as_ref().map(|c| c.get_ref().clone()),
            token_file: self.absolute_opt("token_file", &r.token_file)?,
            cacert: self.absolute_opt("cacert", &r.cacert)?,
            report_to: r.report_to.as_ref().map(|t| t.get_ref().clone()),
            aws_profile: r.aws_profile.clone(),
            aws_credentials_file: self.absolute_opt("aws_credentials_file", &r.aws_credentials_file)?,
            aws_region: r.aws_region.clone(),
            ssh_command: r.ssh_command.clone(),
            name,
        })
    }

    fn job(
        &self,
        name: String,
        span: Range<usize>,
        j: &RawJob,
        repos: &BTreeMap<String, Repository>,
    ) -> Checked<Job> {
        let what = format!("job {name}");
        let paths = j
            .paths
            .iter()
            .map(|p| self.absolute("path", p))
            .collect::<Checked<Vec<_>>>()?;
        if paths.is_empty() && j.mysql.is_none() && j.postgres.is_none() && j.sqlite.is_empty() {
            return Err(self.at(
                span,
                format!("{what} backs up nothing: give paths, mysql, postgres or sqlite"),
            ));
        }
        for e in &j.exclude {
            coffer_core::filter::PathMatcher::new(std::slice::from_ref(e.get_ref()))
                .map_err(|err| self.at(e.span(), format!("{what}: exclude {:?}: {err}", e.get_ref())))?;
        }
        if j.to.get_ref().is_empty() {
            return Err(self.at(j.to.span(), format!("{what}: `to` names no repository")));
        }
        let to = self.repo_names(&format!("{what} to"), j.to.get_ref(), repos)?;
        let schedule = match &j.schedule {
            Some(s) => Some(self.schedule(
                &format!("{what} schedule"),
                s,
                j.timezone.as_ref(),
                j.random_delay.as_ref(),
            )?),
            None => {
                if let Some(t) = j.timezone.as_ref().or(j.random_delay.as_ref()) {
                    return Err(self.at(
                        t.span(),
                        format!("{what}: timezone and random_delay need a schedule"),
                    ));
                }
                None
            }
        };
        if let Some(c) = &j.compression {
            let algo = c.get_ref().split(':').next().unwrap_or_default();
            let level_ok = c
                .get_ref()
                .split_once(':')
                .is_none_or(|(_, l)| l.parse::<i32>().is_ok());
            if !["zstd", "lz4", "zlib", "lzma", "none"].contains(&algo) || !level_ok {
                return Err(self.at(
                    c.span(),
                    format!(
                        "{what}: compression {:?}: use zstd, lz4, zlib, lzma or none, with an optional :LEVEL",
                        c.get_ref()
                    ),
                ));
            }
        }
        let nice = match &j.nice {
            Some(n) if !(-20..=19).contains(n.get_ref()) => {
                return Err(self.at(
                    n.span(),
                    format!("{what}: nice {} must be -20 to 19", n.get_ref()),
                ))
            }
            n => n.as_ref().map(|n| *n.get_ref()),
        };
        let ionice = j
            .ionice
            .as_ref()
            .map(|c| {
                c.get_ref()
                    .parse::<IoClass>()
                    .map_err(|e| self.at(c.span(), format!("{what}: ionice {e}")))
            })
            .transpose()?;
        let rate = |r: &Option<Spanned<String>>, key: &str| {
            r.as_ref()
                .map(|r| {
                    coffer_core::limit::parse_rate(r.get_ref(), key)
                        .map_err(|e| self.at(r.span(), format!("{what}: {e}")))
                })
                .transpose()
        };
        let upload = rate(&j.limit_upload, "limit_upload")?;
        let download = rate(&j.limit_download, "limit_download")?;
        let index_memory = j
            .index_memory
            .as_ref()
            .map(|m| {
                coffer_core::limit::parse_memory(m.get_ref(), "index_memory")
                    .map_err(|e| self.at(m.span(), format!("{what}: {e}")))
            })
            .transpose()?;
        let mut tags = Vec::new();
        for t in &j.tags {
            if t.get_ref().is_empty() || t.get_ref().contains(',') || t.get_ref().starts_with("job:") {
                return Err(self.at(
                    t.span(),
                    format!(
                        "{what}: tag {:?}: not empty, no commas, and not job:... (coffer adds job:{name} itself)",
                        t.get_ref()
                    ),
                ));
            }
            tags.push(t.get_ref().clone());
        }
        let retention = match &j.retention {
            None => None,
            Some(r) => {
                let raw = r.get_ref();
                let keep_within = match &raw.keep_within {
                    Some(k) => {
                        coffer_core::duration::parse_retention(k.get_ref(), "keep_within")
                            .map_err(|e| self.at(k.span(), format!("{what} retention: {e}")))?;
                        Some(k.get_ref().clone())
                    }
                    None => None,
                };
                let ret = Retention {
                    keep_last: raw.keep_last,
                    keep_hourly: raw.keep_hourly,
                    keep_daily: raw.keep_daily,
                    keep_weekly: raw.keep_weekly,
                    keep_monthly: raw.keep_monthly,
                    keep_yearly: raw.keep_yearly,
                    keep_within,
                    prune: raw.prune.unwrap_or(true),
                    on: match &raw.on {
                        Some(on) => {
                            let on = self.repo_names(&format!("{what} retention on"), on, repos)?;
                            for (n, s) in on.iter().zip(raw.on.iter().flatten()) {
                                if !to.contains(n) {
                                    return Err(self.at(
                                        s.span(),
                                        format!("{what} retention: {n:?} is not one of the job's `to`"),
                                    ));
                                }
                            }
                            on
                        }
                        // a coffer server applies its own retention (append tokens cannot forget)
                        None => to.iter().filter(|n| !repos[*n].is_server()).cloned().collect(),
                    },
                };
                let keeps_nothing = [
                    ret.keep_last,
                    ret.keep_hourly,
                    ret.keep_daily,
                    ret.keep_weekly,
                    ret.keep_monthly,
                    ret.keep_yearly,
                ]
                .iter()
                .all(|k| k.unwrap_or(0) == 0)
                    && ret.keep_within.is_none();
                if keeps_nothing {
                    return Err(self.at(
                        r.span(),
                        format!(
                            "{what} retention keeps nothing: set keep_last, keep_daily, ... or keep_within \
                             (a policy that keeps nothing would remove every snapshot)"
                        ),
                    ));
                }
                Some(ret)
            }
        };
        let check = match &j.check {
            None => None,
            Some(c) => {
                let raw = c.get_ref();
                if let Some(s) = &raw.read_data_subset {
                    s.get_ref()
                        .parse::<coffer_core::check::ReadData>()
                        .map_err(|e| self.at(s.span(), format!("{what} check: read_data_subset: {e}")))?;
                }
                Some(Check {
                    schedule: self.schedule(
                        &format!("{what} check schedule"),
                        &raw.schedule,
                        raw.timezone.as_ref(),
                        None,
                    )?,
                    read_data_subset: raw.read_data_subset.as_ref().map(|s| s.get_ref().clone()),
                    on: match &raw.on {
                        Some(on) => self.repo_names(&format!("{what} check on"), on, repos)?,
                        None => to.clone(),
                    },
                })
            }
        };
        let drill = match &j.drill {
            None => None,
            Some(d) => {
                let raw = d.get_ref();
                let files = raw.files.unwrap_or(20);
                if files > 100_000 {
                    return Err(self.at(d.span(), format!("{what} drill: files = {files}: at most 100000")));
                }
                Some(Drill {
                    schedule: self.schedule(
                        &format!("{what} drill schedule"),
                        &raw.schedule,
                        raw.timezone.as_ref(),
                        None,
                    )?,
                    files,
                    on: match &raw.on {
                        Some(on) => self.repo_names(&format!("{what} drill on"), on, repos)?,
                        None => to.clone(),
                    },
                })
            }
        };
        if j.postgres.is_none() && (j.pg_host.is_some() || j.pg_port.is_some() || j.pg_user.is_some()) {
            return Err(self.at(
                span.clone(),
                format!("{what}: pg_* settings without postgres = ..."),
            ));
        }
        if j.mysql.is_none() {
            let mysql_only = [
                j.mysql_host.is_some(),
                j.mysql_port.is_some(),
                j.mysql_socket.is_some(),
                j.mysql_user.is_some(),
                j.mysql_defaults_file.is_some(),
                j.mysql_users,
            ];
            if mysql_only.iter().any(|x| *x) {
                return Err(self.at(span, format!("{what}: mysql_* settings without mysql = ...")));
            }
        }
        Ok(Job {
            paths,
            exclude: j.exclude.iter().map(|e| e.get_ref().clone()).collect(),
            exclude_file: j
                .exclude_file
                .iter()
                .map(|p| self.absolute("exclude_file", p))
                .collect::<Checked<_>>()?,
            exclude_caches: j.exclude_caches,
            one_file_system: j.one_file_system,
            tags,
            mysql: j.mysql.as_ref().map(|m| m.get_ref().0.clone()),
            mysql_users: j.mysql_users,
            postgres: j.postgres.as_ref().map(|m| m.get_ref().0.clone()),
            sqlite: j
                .sqlite
                .iter()
                .map(|p| self.absolute("sqlite", p))
                .collect::<Checked<_>>()?,
            db: DbConnection {
                mysql_host: j.mysql_host.clone(),
                mysql_port: j.mysql_port,
                mysql_socket: self.absolute_opt("mysql_socket", &j.mysql_socket)?,
                mysql_user: j.mysql_user.clone(),
                mysql_defaults_file: self.absolute_opt("mysql_defaults_file", &j.mysql_defaults_file)?,
                pg_host: j.pg_host.clone(),
                pg_port: j.pg_port,
                pg_user: j.pg_user.clone(),
            },
            to,
            schedule,
            compression: j.compression.as_ref().map(|c| c.get_ref().clone()),
            limits: Limits {
                threads: j.threads,
                nice,
                ionice,
                upload,
                download,
                index_memory,
            },
            before: j.before.clone(),
            after: j.after.clone(),
            retention,
            check,
            drill,
            managed: j.managed,
            name,
        })
    }
}

/// The state directory when the file does not name one: /var/lib/coffer for root, else
/// $XDG_STATE_HOME/coffer or ~/.local/state/coffer.
pub fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/coffer");
    }
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"));
    xdg.or(home)
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("coffer")
}

impl Config {
    /// Read and check the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Check configuration `text` (read from `path`, which messages name).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let c = Checker { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = plain_words(e.message().trim_end()).replace('\n', "; ");
            match e.span() {
                Some(span) => {
                    // name the key whose value is wrong (`keep_weekly: ...`)
                    let line = text[..span.start.min(text.len())]
                        .rsplit('\n')
                        .next()
                        .unwrap_or_default();
                    let message = match line.split_once('=') {
                        Some((key, _)) if !message.contains(key.trim()) && !key.trim().starts_with('[') => {
                            format!("{}: {message}", key.trim())
                        }
                        _ => message,
                    };
                    c.at(span, message)
                }
                None => ConfigError::File {
                    path: path.display().to_string(),
                    message,
                },
            }
        })?;
        let agent = raw.agent.as_ref().map(|a| a.get_ref());
        let host = match agent.and_then(|a| a.host.as_ref()) {
            Some(h) if h.get_ref().trim().is_empty() || h.get_ref().contains(['/', '\n']) => {
                return Err(c.at(
                    h.span(),
                    format!("agent host {:?} is not a host name", h.get_ref()),
                ))
            }
            h => h.map(|h| h.get_ref().clone()),
        };
        let state_dir = match agent.and_then(|a| a.state_dir.as_ref()) {
            Some(d) => c.absolute("state_dir", d)?,
            None => default_state_dir(),
        };
        let mut repositories = BTreeMap::new();
        for (name, r) in &raw.repository {
            let name = c.name("repository", name)?;
            let repo = c.repository(name.clone(), r.get_ref())?;
            repositories.insert(name, repo);
        }
        let mut jobs = BTreeMap::new();
        for (name, j) in &raw.job {
            let name = c.name("job", name)?;
            let job = c.job(name.clone(), j.span(), j.get_ref(), &repositories)?;
            jobs.insert(name, job);
        }
        let managed = match &raw.managed {
            None => None,
            Some(m) => {
                let m = m.get_ref();
                let server =
                    c.repo_names("managed server", std::slice::from_ref(&m.server), &repositories)?;
                let server = server.into_iter().next().unwrap_or_default();
                if !repositories[&server].is_server() {
                    return Err(c.at(
                        m.server.span(),
                        format!(
                            "managed server: repository {server:?} is not on a coffer server (https://...)"
                        ),
                    ));
                }
                let to = match &m.to {
                    Some(to) => c.repo_names("managed to", to, &repositories)?,
                    None => vec![server.clone()],
                };
                let mut paths = Vec::new();
                for p in &m.paths {
                    let abs = c.absolute("managed path", p)?;
                    if abs
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir))
                    {
                        return Err(c.at(p.span(), "managed path: no . or .. in it"));
                    }
                    paths.push(abs);
                }
                Some(Managed {
                    server,
                    to,
                    paths,
                    databases: m.databases,
                    retention: m.retention,
                    max_jobs: m.max_jobs.unwrap_or(16),
                    min_interval: match &m.min_interval {
                        Some(d) => c.duration("managed min_interval", d)?,
                        None => Duration::from_secs(300),
                    },
                    restore: match m.restore.as_ref().map(|r| (r, r.get_ref().as_str())) {
                        None | Some((_, "quarantine")) => RestorePolicy::Quarantine,
                        Some((_, "off")) => RestorePolicy::Off,
                        Some((_, "in-place")) => RestorePolicy::InPlace,
                        Some((r, other)) => {
                            return Err(c.at(
                                r.span(),
                                format!("managed restore {other:?}: \"off\", \"quarantine\" or \"in-place\""),
                            ))
                        }
                    },
                    quarantine: match &m.quarantine {
                        Some(q) => c.absolute("managed quarantine", q)?,
                        None => state_dir.join("restores"),
                    },
                    browse: m.browse.unwrap_or(true),
                })
            }
        };
        let mut sites = BTreeMap::new();
        for (name, raw) in &raw.site {
            let name = c.name("site", name)?;
            let r = raw.get_ref();
            let what = format!("site {name}");
            let mut paths = Vec::new();
            for p in &r.paths {
                let abs = c.absolute(&format!("{what} path"), p)?;
                if abs
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir))
                    || abs == Path::new("/")
                {
                    return Err(c.at(p.span(), format!("{what} path: not `/`, and no . or .. in it")));
                }
                paths.push(abs);
            }
            let names = |list: &[Spanned<String>], engine: &str| -> Checked<Vec<String>> {
                list.iter()
                    .map(|d| {
                        let n = d.get_ref();
                        if !database_name_ok(n) || n == "all" {
                            Err(c.at(
                                d.span(),
                                format!("{what} {engine}: {n:?} is not one database name"),
                            ))
                        } else {
                            Ok(n.clone())
                        }
                    })
                    .collect()
            };
            let mysql = names(&r.mysql, "mysql")?;
            let postgres = names(&r.postgres, "postgres")?;
            if paths.is_empty() && mysql.is_empty() && postgres.is_empty() {
                return Err(c.at(
                    raw.span(),
                    format!("{what} holds nothing: give paths, mysql or postgres"),
                ));
            }
            sites.insert(
                name.clone(),
                Site {
                    name,
                    paths,
                    mysql,
                    postgres,
                },
            );
        }
        Ok(Config {
            path: path.to_path_buf(),
            host,
            state_dir,
            repositories,
            jobs,
            managed,
            sites,
        })
    }

    /// The job called `name`, or an error listing the jobs there are.
    pub fn job(&self, name: &str) -> Result<&Job, ConfigError> {
        self.jobs.get(name).ok_or_else(|| ConfigError::File {
            path: self.path.display().to_string(),
            message: format!(
                "no job {name:?} (jobs: {})",
                if self.jobs.is_empty() {
                    "none".to_string()
                } else {
                    self.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        })
    }

    /// The repository called `name`, or an error listing the repositories there are.
    pub fn repository(&self, name: &str) -> Result<&Repository, ConfigError> {
        self.repositories.get(name).ok_or_else(|| ConfigError::File {
            path: self.path.display().to_string(),
            message: format!(
                "no repository {name:?} (repositories: {})",
                if self.repositories.is_empty() {
                    "none".to_string()
                } else {
                    self.repositories.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        })
    }
}
