//! What the agent remembers between restarts, in its state directory: per job, the last
//! scheduled run it started (so a run missed while the machine was down is caught up once),
//! and how the last run ended. And the job locks: one run of a job at a time, whether the
//! agent or `coffer run` started it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the agent remembers of a job's schedule (`jobs/JOB.json`, written by the agent only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The scheduled time (unix seconds) of the last backup run the agent started: a later
    /// scheduled time that has passed was missed.
    #[serde(default)]
    pub backup_due: Option<i64>,
    /// The same for the job's check.
    #[serde(default)]
    pub check_due: Option<i64>,
    /// The scheduled time of the last backup run that ended (a started one that did not end
    /// was cut short by the agent's stop or death: it is caught up).
    #[serde(default)]
    pub backup_done: Option<i64>,
    #[serde(default)]
    pub check_done: Option<i64>,
    /// The same for the job's restore drill.
    #[serde(default)]
    pub drill_due: Option<i64>,
    #[serde(default)]
    pub drill_done: Option<i64>,
}

/// How a job's last run went (`jobs/JOB.last.json`, written by `coffer run` only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// backup, check or drill
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub started: Option<i64>,
    #[serde(default)]
    pub finished: Option<i64>,
    /// running, ok, warning, failed or interrupted.
    #[serde(default)]
    pub result: Option<String>,
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

    fn read<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T, String> {
        let path = self.jobs().join(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Replace a file atomically (a crash leaves the old or the new), through a temporary
    /// file of a name no one else uses, created new (never through a planted link).
    fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.jobs();
        std::fs::create_dir_all(&dir)?;
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
        let tmp = dir.join(format!(
            ".{name}.{}.{:016x}",
            std::process::id(),
            u64::from_le_bytes(rnd)
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    }

    /// The job's schedule state; a missing file is a job never seen.
    pub fn load(&self, job: &str) -> Result<JobState, String> {
        self.read(&format!("{job}.json"))
    }

    pub fn save(&self, job: &str, state: &JobState) -> std::io::Result<()> {
        self.write(
            &format!("{job}.json"),
            &serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?,
        )
    }

    /// How the job's last run went.
    pub fn load_last(&self, job: &str) -> Result<LastRun, String> {
        self.read(&format!("{job}.last.json"))
    }

    pub fn save_last(&self, job: &str, last: &LastRun) -> std::io::Result<()> {
        self.write(
            &format!("{job}.last.json"),
            &serde_json::to_vec_pretty(last).map_err(std::io::Error::other)?,
        )
    }

    /// Fail now, with the reason, if the state cannot be written (rather than at each run).
    pub fn check_writable(&self) -> std::io::Result<()> {
        self.write(".probe", b"")?;
        std::fs::remove_file(self.jobs().join(".probe"))
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
            ..Default::default()
        };
        s.save("nightly", &st).unwrap();
        assert_eq!(s.load("nightly").unwrap(), st);
        let last = LastRun {
            kind: "backup".into(),
            result: Some("ok".into()),
            ..Default::default()
        };
        s.save_last("nightly", &last).unwrap();
        assert_eq!(s.load_last("nightly").unwrap(), last);
        assert_eq!(s.load("nightly").unwrap(), st, "the two files are apart");
        s.check_writable().unwrap();
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
