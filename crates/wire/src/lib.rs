//! The agent ↔ server contract for managed jobs (`GET /REPO/agent`): the job definitions an
//! operator sets on the server, the runs asked for from there, and the answer that carries
//! both, and the progress a running command posts. Types only, no I/O: the server, the
//! agent and the client agree by sharing this crate.
//!
//! Trust: a job from the server can say only what these types hold. Hooks, commands, password
//! sources and database connections have no field here; every struct refuses unknown fields,
//! so a server that sends one (a compromised server, an older or newer one) has the job
//! refused by the agent, which also checks each job against what its own configuration allows
//! (`[managed]`: destinations, paths, databases). See docs/ARCHITECTURE.md, "Managed jobs".

use serde::{Deserialize, Serialize};

/// The longest an agent's poll waits on the server for a change, in seconds.
pub const POLL_WAIT_MAX_SECS: u64 = 60;

/// The path of the agent's poll below a repository: `GET /REPO/agent?since=G&wait=S`.
pub const AGENT_PATH: &str = "agent";

/// One managed job, as the operator set it on the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// Absolute paths to back up.
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub exclude_caches: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub one_file_system: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// MariaDB/MySQL databases: `["all"]` or names (connection settings are the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<Vec<String>>,
    /// Destinations: repository names of the client's own configuration.
    pub to: Vec<String>,
    /// Cron expression; none: the job runs only when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// Uploads keep under this rate (`10M`: the grammar of `--limit-upload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_upload: Option<String>,
    /// Reads from the repositories (the job's checks and drills) keep under this rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_download: Option<String>,
    /// CPU niceness, 0 to 19: the server may lower a run's priority, not raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i32>,
    /// I/O class ([`IoClass`] as text: `idle`, `best-effort:N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ionice: Option<String>,
    /// Compression threads (none: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// The index's memory budget (`64M`: the grammar of `--index-memory`, at least 1 MiB).
    /// A cap, not a reservation: the index takes only what the repository's blobs need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_memory: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a managed job keeps where the client may prune.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

/// A managed job's scheduled check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data_subset: Option<String>,
}

/// A run asked for on the server ("back up now").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub id: i64,
    pub job: String,
    /// The job's check instead of its backup.
    #[serde(default)]
    pub check: bool,
}

/// What a restore asked for on the server brings back: `{"path": "/var/www/shop"}`,
/// `{"mysql": "shop"}`, `{"postgres": "app"}` or `{"site": "shop"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RestoreItem {
    /// A file or a directory, by its absolute path in the snapshot.
    Path(String),
    /// A MariaDB/MySQL database the snapshot holds a dump of.
    Mysql(String),
    /// A PostgreSQL database the snapshot holds a dump of.
    Postgres(String),
    /// A `[site.NAME]` of the client's configuration, or a cPanel account.
    Site(String),
}

impl RestoreItem {
    /// Whether it is one the agent can be asked for: an absolute path without `.`/`..`, or one
    /// database or site name (what a command line would split on or a path would hold, no).
    pub fn valid(&self) -> Result<(), String> {
        match self {
            RestoreItem::Path(p) => {
                if valid_path(p) {
                    Ok(())
                } else {
                    Err(format!(
                        "{:?}: an absolute path without . or .. is needed",
                        p.escape_debug().to_string()
                    ))
                }
            }
            // (a name starting with '-' would read as a flag on the agent's command line)
            RestoreItem::Mysql(n) | RestoreItem::Postgres(n) | RestoreItem::Site(n) if n.starts_with('-') => {
                Err(format!(
                    "{:?}: a name does not start with '-'",
                    n.escape_debug().to_string()
                ))
            }
            RestoreItem::Mysql(n) | RestoreItem::Postgres(n) if !database_name_ok(n) => Err(format!(
                "{:?} is not one database name",
                n.escape_debug().to_string()
            )),
            RestoreItem::Site(n) if !valid_job_name(n) => Err(format!(
                "{:?} is not a site name (letters, digits, '-', '_' and '.')",
                n.escape_debug().to_string()
            )),
            _ => Ok(()),
        }
    }

    /// As the console and the logs say it: `path /var/www`, `mysql shop`, `site shop`.
    pub fn describe(&self) -> String {
        match self {
            RestoreItem::Path(p) => format!("path {p}"),
            RestoreItem::Mysql(n) => format!("mysql {n}"),
            RestoreItem::Postgres(n) => format!("postgres {n}"),
            RestoreItem::Site(n) => format!("site {n}"),
        }
    }
}

/// A restore asked for on the server (the console's Restore form): the client's agent runs it
/// with its own key, into its quarantine directory (files) or under a new name (databases),
/// or in place when its configuration allows that (`[managed] restore = "in-place"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub id: i64,
    /// A snapshot id (or a unique prefix of at least 8 hex digits), or `latest` (this
    /// client's newest).
    pub snapshot: String,
    pub item: RestoreItem,
    /// Where it was: files overwritten, databases replaced (saved first in a before-restore
    /// snapshot where `restore-site` does that). Refused unless the client allows it.
    #[serde(default)]
    pub in_place: bool,
}

/// A listing asked for on the server (the console's snapshot browser): the agent, which holds
/// the key, lists one directory of a snapshot and posts it back ([`BrowseAnswer`]). File
/// names then pass through the server; `[managed] browse = false` refuses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowseRequest {
    pub id: i64,
    pub snapshot: String,
    /// An absolute path in the snapshot (`/` for its top).
    pub path: String,
}

/// The path below a repository where an agent posts a listing: `POST /REPO/browse`.
pub const BROWSE_PATH: &str = "browse";

/// A listing holds at most this many entries (the rest are counted, not sent).
pub const BROWSE_MAX_ENTRIES: usize = 2000;

/// The largest listing a server takes, in bytes.
pub const BROWSE_MAX_BYTES: usize = 2 << 20;

/// One entry of a listed directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowseEntry {
    pub name: String,
    /// `dir`, `file`, `symlink` or `other`.
    pub kind: String,
    #[serde(default)]
    pub size: u64,
    /// Modification time (Unix seconds).
    #[serde(default)]
    pub mtime: i64,
}

/// An agent's answer to a [`BrowseRequest`]: the entries, or why there are none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowseAnswer {
    pub id: i64,
    #[serde(default)]
    pub entries: Vec<BrowseEntry>,
    /// Entries left out past [`BROWSE_MAX_ENTRIES`].
    #[serde(default)]
    pub more: u64,
    /// The snapshot it listed (its full id).
    #[serde(default)]
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The server's answer to a poll: the client's managed jobs (all of them, as of
/// `generation`; each left as JSON so that the agent refuses a bad one alone), the runs
/// asked for since the last poll, and the restores and listings asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPoll {
    /// Grows with every change of the client's jobs; the agent sends the one it has.
    pub generation: i64,
    pub jobs: Vec<serde_json::Value>,
    #[serde(default)]
    pub run: Vec<RunRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore: Vec<RestoreRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub browse: Vec<BrowseRequest>,
}

/// An absolute path without `.` or `..` components or NUL, at most 4096 bytes.
pub fn valid_path(p: &str) -> bool {
    p.starts_with('/') && p.len() <= 4096 && !p.contains('\0') && p.split('/').all(|c| c != "." && c != "..")
}

/// A snapshot as a request may name it: `latest`, or 8 to 64 hex digits.
pub fn valid_snapshot(s: &str) -> bool {
    s == "latest" || ((8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A database name as a site or a request may give it: one name, without what a list would
/// split on or a path would hold.
pub fn database_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.contains([',', '/', '\0', '`', '"'])
        && !n.contains(char::is_whitespace)
}

/// The path below a repository where a running command posts its progress.
pub const PROGRESS_PATH: &str = "progress";

/// How often a running command posts its progress (seconds).
pub const PROGRESS_EVERY_SECS: u64 = 5;

/// What a run in progress has done so far (`POST /REPO/progress`), sent by the running command
/// every [`PROGRESS_EVERY_SECS`] until its run report ends it. Counts only: no path, no name
/// of a file (the server holds no key and learns no more than a run report tells it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunProgress {
    /// The command: backup, check, restore, restore-db, copy, forget, prune.
    pub kind: String,
    /// The configured job it runs for ("" for a command typed by hand).
    #[serde(default)]
    pub job: String,
    /// When it started (the client's clock, Unix seconds).
    pub started: i64,
    /// Files processed so far.
    pub files: u64,
    /// Bytes read (backup) or written (restore) so far.
    pub bytes: u64,
}

/// The kinds of run a client reports (and shows progress of, `config` excepted).
pub const RUN_KINDS: &[&str] = &[
    "backup",
    "check",
    "forget",
    "prune",
    "restore",
    "restore-db",
    "restore-site",
    "restore-host",
    "drill",
    "copy",
    // an agent taking (or refusing) the managed jobs set on the server
    "config",
];

impl RunProgress {
    /// What a server accepts: a known kind and a job name (or none).
    pub fn valid(&self) -> Result<(), String> {
        if self.kind == "config" || !RUN_KINDS.contains(&self.kind.as_str()) {
            return Err(format!("progress of an unknown kind of run {:?}", self.kind));
        }
        if !self.job.is_empty() && !valid_job_name(&self.job) {
            return Err("progress of a job whose name is not one".into());
        }
        Ok(())
    }
}

/// The path below a repository where a client asks whether its retention is held.
pub const HOLD_PATH: &str = "hold";

/// The answer to `GET /REPO/hold`: whether the client's own retention (`forget --job`, the
/// agent's and `coffer run`'s) must wait, because the server has an ANOMALY for the client
/// that no operator has acknowledged (files encrypted in place: every night that retention
/// runs pushes a good version out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionHold {
    pub held: bool,
    /// When the oldest open anomaly was raised (server clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// What the server saw.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A job name: letters, digits, `-`, `_`, `.`, at most 64, not starting with `.`.
pub fn valid_job_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An I/O scheduling class (as `ionice -c`): a job's `ionice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// Only when no other process wants the disk.
    Idle,
    /// The normal class, at a level from 0 (first) to 7 (last).
    BestEffort(u8),
}

impl std::str::FromStr for IoClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "idle" => Ok(IoClass::Idle),
            None if s == "best-effort" => Ok(IoClass::BestEffort(4)),
            Some(("best-effort", n)) => match n.parse::<u8>() {
                Ok(n) if n <= 7 => Ok(IoClass::BestEffort(n)),
                _ => Err(format!("best-effort level {n:?} must be 0 to 7")),
            },
            _ => Err(format!(
                "{s:?} is not an I/O class; use idle, best-effort or best-effort:0 to 7"
            )),
        }
    }
}

impl std::fmt::Display for IoClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoClass::Idle => write!(f, "idle"),
            IoClass::BestEffort(n) => write!(f, "best-effort:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_job_with_a_field_it_does_not_know_is_refused() {
        let good = serde_json::json!({"name": "files", "paths": ["/srv"], "to": ["company"]});
        let spec: JobSpec = serde_json::from_value(good).unwrap();
        assert_eq!(spec.paths, ["/srv"]);
        for evil in [
            "before",
            "after",
            "password_command",
            "mysql_defaults_file",
            "sqlite",
        ] {
            let mut v = serde_json::json!({"name": "files", "paths": ["/srv"], "to": ["company"]});
            v[evil] = serde_json::json!("touch /tmp/pwned");
            let e = serde_json::from_value::<JobSpec>(v).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{evil}: {e}");
        }
    }

    #[test]
    fn restore_requests_name_one_thing() {
        let r: RestoreRequest = serde_json::from_value(serde_json::json!(
            {"id": 3, "snapshot": "latest", "item": {"mysql": "shop"}}
        ))
        .unwrap();
        assert_eq!(
            (r.item.clone(), r.in_place),
            (RestoreItem::Mysql("shop".into()), false)
        );
        r.item.valid().unwrap();
        for bad in [
            RestoreItem::Path("var/www".into()),
            RestoreItem::Path("/var/../etc".into()),
            RestoreItem::Path("/a\0b".into()),
            RestoreItem::Mysql("a,b".into()),
            RestoreItem::Postgres("x y".into()),
            RestoreItem::Site("../x".into()),
            RestoreItem::Site("--in-place".into()),
            RestoreItem::Mysql("-x".into()),
        ] {
            assert!(bad.valid().is_err(), "{bad:?}");
        }
        // a field the agent does not know (a command, a target) refuses the whole request
        let e = serde_json::from_value::<RestoreRequest>(serde_json::json!(
            {"id": 3, "snapshot": "latest", "item": {"path": "/srv"}, "target": "/etc"}
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(valid_snapshot("latest") && valid_snapshot("0123abcd"));
        assert!(!valid_snapshot("0123abc") && !valid_snapshot("latest~1") && !valid_snapshot("zzzzzzzz"));
    }

    #[test]
    fn job_names() {
        assert!(valid_job_name("nightly-files_2.x"));
        for bad in ["", ".hidden", "a/b", "a b", "x\n", &"n".repeat(65)] {
            assert!(!valid_job_name(bad), "{bad:?}");
        }
    }
}
