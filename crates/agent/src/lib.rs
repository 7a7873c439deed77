//! coffer's job configuration (`/etc/coffer/coffer.toml`), schedules, and what the agent
//! remembers between runs. The binary turns a job into the `coffer backup`, `forget` and
//! `check` runs it stands for; this crate says what they are and when they are due.

mod config;
mod managed;
mod schedule;
mod state;

pub use config::{
    database_name_ok, default_state_dir, Check, Config, ConfigError, Databases, DbConnection, Drill, IoClass,
    Job, Limits, Managed, Repository, RestorePolicy, Retention, Site, DEFAULT_PATH,
};
pub use managed::{screen, through_symlink, Screened};
pub use schedule::{show, utc, Schedule, Zone};
pub use state::{JobLock, JobState, LastRun, LockError, StateDir};
