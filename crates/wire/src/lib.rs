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
    /// CPU niceness, 0 to 19: the server may lower a run's priority, not raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i32>,
    /// I/O class ([`IoClass`] as text: `idle`, `best-effort:N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ionice: Option<String>,
    /// Compression threads (none: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
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

/// The server's answer to a poll: the client's managed jobs (all of them, as of
/// `generation`; each left as JSON so that the agent refuses a bad one alone) and the runs
/// asked for since the last poll.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPoll {
    /// Grows with every change of the client's jobs; the agent sends the one it has.
    pub generation: i64,
    pub jobs: Vec<serde_json::Value>,
    #[serde(default)]
    pub run: Vec<RunRequest>,
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
    fn job_names() {
        assert!(valid_job_name("nightly-files_2.x"));
        for bad in ["", ".hidden", "a/b", "a b", "x\n", &"n".repeat(65)] {
            assert!(!valid_job_name(bad), "{bad:?}");
        }
    }
}
