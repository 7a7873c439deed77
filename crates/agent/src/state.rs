//! What the agent remembers between restarts, in its state directory: per job, the last
//! scheduled run it started (so a run missed while the machine was down is caught up once),
//! and how the last run ended. And the job locks: one run of a job at a time, whether the
//! agent or `coffer run` started it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One job's remembered state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The scheduled time (unix seconds) of the last backup run the agent started: a later
    /// scheduled time that has passed was missed.
    #[serde(default)]
    pub backup_due: Option<i64>,
    /// The same for the job's check.
    #[serde(default)]
    pub check_due: Option<i64>,
    #[serde(default)]
    pub last_started: Option<i64>,
    #[serde(default)]
    pub last_finished: Option<i64>,
    /// ok, warning, failed or interrupted.
    #[serde(default)]
    pub last_result: Option<String>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// A job's lock, held while it runs (released when dropped, or when the process ends).
#[derive(Debug)]
pub struct JobLock {
    _file: std::fs::File,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("job {job} is already running (pid {pid})")]
    Busy { job: String, pid: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// The job's state; a missing or unreadable file is a job never run (the caller may warn).
    pub fn load(&self, job: &str) -> Result<JobState, String> {
        let path = self.jobs().join(format!("{job}.json"));
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JobState::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Replace the job's state (atomically: a crash leaves the old or the new).
    pub fn save(&self, job: &str, state: &JobState) -> std::io::Result<()> {
        let dir = self.jobs();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{job}.json.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{job}.json")))
    }

    /// Take the job's lock without waiting.
    pub fn lock(&self, job: &str) -> Result<JobLock, LockError> {
        let dir = self.jobs();
        let path = dir.join(format!("{job}.lock"));
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(LockError::Busy {
                    job: job.to_string(),
                    pid: pid.trim().to_string(),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        f.set_len(0).map_err(io)?;
        writeln!(f, "{}", std::process::id()).map_err(io)?;
        Ok(JobLock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn state_survives_and_locks_exclude() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        assert_eq!(s.load("nightly").unwrap(), JobState::default());
        let st = JobState {
            backup_due: Some(1_700_000_000),
            last_result: Some("ok".into()),
            ..Default::default()
        };
        s.save("nightly", &st).unwrap();
        assert_eq!(s.load("nightly").unwrap(), st);
        std::fs::write(dir.path().join("jobs/broken.json"), b"{").unwrap();
        assert!(s.load("broken").is_err());

        let held = s.lock("nightly").unwrap();
        match s.lock("nightly") {
            Err(LockError::Busy { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        // another job is not blocked
        let _other = s.lock("hourly").unwrap();
        drop(held);
        s.lock("nightly").unwrap();
    }
}
